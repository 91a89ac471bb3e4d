"""`python -m emonn.corpus validate [PATH...]` and `python -m emonn.corpus generate ...`."""

from __future__ import annotations

from pathlib import Path

import click

from emonn import corpus, models
from emonn.corpus import generate as gen
from emonn.runs import Command

SHIPPED = (corpus.HERE / "stories.jsonl", corpus.HERE / "neutral.jsonl")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


@click.group()
def cli() -> None:
    """Validate and grow the emotion-story corpus."""


@cli.command(cls=Command)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Print every problem of corpus files (default: the shipped stories and neutral texts), one per line
    with its row id, then the count; exit 1 if there is any."""
    paths = paths or SHIPPED
    total, sizes = 0, []
    for path in paths:
        frame = corpus.read(path)
        problems = corpus.validate(frame)
        for problem in problems:
            click.echo(f"{path.name}: {problem}")
        total += len(problems)
        sizes.append(f"{path.name} ({len(frame)} rows)")
    click.echo(f"{total} problem(s) in {', '.join(sizes)}")
    if total:
        raise SystemExit(1)


@cli.command(cls=Command)
@click.option("--model", default=models.DEFAULT_MODEL, show_default=True, help="an instruct model with a chat template")
@click.option("--remote", is_flag=True, help="generate on NDIF (pass a hosted repo id as --model)")
@click.option("--langs", default="en", show_default=True, help="comma-separated: en, ja")
@click.option("--emotions", default="", help="comma-separated emotions (default: all 30)")
@click.option("--topics", default="", help="comma-separated topics of topics.csv (default: all)")
@click.option("--per-cell", default=1, show_default=True, help="stories wanted per language × emotion × topic")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSONL to append to (default outputs/corpus/generated-<model>.jsonl); rerun to resume")
@click.option("--seed", default=0, show_default=True)
@click.option("--max-new-tokens", default=220, show_default=True)
@click.option("--temperature", default=0.9, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--attempts", default=4, show_default=True, help="generations per wanted story before a cell gives up")
@click.option("--bounds", multiple=True, help="length bounds, e.g. en=30-160 (default: the corpus's, "
              + ", ".join(f"{lang}={low}-{high} {unit}" for lang, (unit, low, high) in corpus.BOUNDS.items()) + ")")
def generate(model: str, remote: bool, langs: str, emotions: str, topics: str, per_cell: int, out: Path | None,
             seed: int, max_new_tokens: int, temperature: float, batch_size: int, attempts: int,
             bounds: tuple[str, ...]) -> None:
    """Write new stories with an instruct model; forbidden words, lengths out of bounds and near-duplicates
    (of the shipped corpus and of each other) are dropped before anything is saved."""
    todo = gen.cells(_names(langs), _names(emotions), _names(topics))
    limits = gen.parse_bounds(list(bounds))
    lm = models.load(model, remote=remote)
    out = out or Path("outputs") / "corpus" / f"generated-{lm.slug}.jsonl"
    shipped = corpus.read(SHIPPED[0]) if SHIPPED[0].exists() else None
    outcome = gen.run(lm, todo, per_cell=per_cell, out=out, bounds=limits, against=shipped, attempts=attempts,
                      batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    counts = outcome.counts
    click.echo(f"generated {counts['generated']} stories:")
    for name in gen.FILTERS:
        click.echo(f"  {name:<15} passed {counts['generated'] - counts[name]:>4}  failed {counts[name]:>4}")
    click.echo(f"  {'all filters':<15} kept   {counts['kept']:>4}")
    click.echo(f"{len(todo) - len(outcome.missing)}/{len(todo)} cells complete; stories in {out}")
    if outcome.missing:
        click.echo(f"{sum(outcome.missing.values())} stories still missing in {len(outcome.missing)} cells "
                   "(out of attempts): rerun the same command to resume")


if __name__ == "__main__":
    cli()
