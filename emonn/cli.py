"""The `emonn` command: build, probe with and share emotion vectors, and browse every study's results.

    emonn vectors build --model gemma3-270m --lang en      # fit and save vectors with a model card
    emonn probe "I just took 500 mg of Tylenol" --vectors outputs/vectors/smollm2-135m-en
    emonn report outputs                                   # one index.html over every study and model

Every subcommand has `--help`; an `EmonnError` ends it with one line (`Error: ...`) and exit code 1.
"""

from __future__ import annotations

import click

from emonn import runs


class Group(click.Group):
    """A click group whose subcommands print an `EmonnError` on one line and exit 1."""

    command_class = runs.Command


@click.group(cls=Group)
def main() -> None:
    """Find, measure and steer emotion representations in language models."""


from emonn.probe import command as _probe  # noqa: E402 - the command lives beside its code (torch loads lazily)

main.add_command(_probe)

from emonn.share import vectors as _vectors  # noqa: E402 - `emonn vectors build|export|push|pull`, beside its code

main.add_command(_vectors)


@main.command("report")
@click.argument("out", default="outputs", type=click.Path(file_okay=False))
def report(out: str) -> None:
    """Write OUT/index.html (default outputs/): every study x model folder, its headline, figure
    thumbnails and the report rendered to HTML. Opens from disk, no network."""
    from emonn import index

    path = index.build_index(out)
    click.echo(f"{len(index.run_folders(out))} runs indexed: {path.resolve().as_uri()}")


if __name__ == "__main__":
    main()
