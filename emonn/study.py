"""The study harness: one decorator owns what every study shares, so a study script is only its science.

    @study.command("localization", models=(models.DEFAULT_MODEL, models.MULTILINGUAL_MODEL), many=True)
    @click.option("--bootstrap", default=1000, show_default=True)
    def main(run: study.Run, bootstrap: int) -> None:
        for model in run.models:
            for lang in model.reads(run.langs):
                readings = run.read(model, run.stories(lang))
                ...
        run.table("separation", frame)
        run.figure("separation_by_depth", chart)
        run.report(separation=frame)            # fills studies/localization.md
        run.done("best layer ...")

`command` adds the shared options (`--model` (repeatable with `many=True`), `--remote`, `--device`, `--dtype`, `--langs`,
`--layers`, `--start-token`, `--corpus`, `--neutral`, `--batch-tokens`, `--seed`, `--out`), loads the
models, writes `config.json`, turns an `EmonnError` into one line, and hands the study a `Run`: the
output folder `outputs/<study>/<model[__model...]>/`, the shared activation cache, cached units of work
(`run.unit`), tables, figures, the report (a Jinja template beside the study script) and the summary.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import polars as pl

from emonn import EmonnError, corpus, extract, models, runs
from emonn.readings import Readings
from emonn.vectors import EmotionVectors

#: The options `command` adds to every study, in the order `--help` lists them.
SHARED = ("model", "remote", "device", "dtype", "langs", "layers", "start_token", "corpus", "neutral", "batch_tokens",
          "seed", "out")


def _shared_options(models_default: tuple[str, ...] | Callable[[], tuple[str, ...]], many: bool, langs: str,
                    neutral: bool) -> list[click.Option]:
    model_help = "Embedded alias, HF repo id, model folder or .gguf file" + ("; repeat to compare." if many else ".")
    default = models_default if callable(models_default) else (models_default if many else models_default[0])
    options = [
        click.Option(["--model"], multiple=many, default=default, show_default=not callable(default),
                     help=model_help + (" Default: every installed embedded model." if callable(default) else "")),
        click.Option(["--remote"], is_flag=True, help="Run the traces on NDIF (needs NDIF_API_KEY)."),
        click.Option(["--device"], default="auto", show_default=True, help=models.DEVICE_HELP),
        click.Option(["--dtype"], type=click.Choice(["auto", *models.DTYPES]), default="auto", show_default=True,
                     help=models.DTYPE_HELP),
        click.Option(["--langs"], default=langs, show_default=True,
                     help="Corpus languages; each model reads those it supports (SmolLM2: en only)."),
        click.Option(["--layers"], default="", help="Layers to analyse, e.g. '2-10' or '0,5,-1' (default: all)."),
        click.Option(["--start-token"], default=extract.START, show_default=True,
                     help="Average each text's residual stream from this token on."),
        click.Option(["--corpus"], type=click.Path(), default=None, help="A stories file instead of the shipped one."),
        click.Option(["--batch-tokens"], type=int, default=None, help="Padded tokens per forward pass (extraction, "
                     "log-probs, norms); default: 2048 on a CPU or NDIF, 16384 on a GPU (runs.BATCH_TOKENS)."),
        click.Option(["--seed"], default=0, show_default=True),
        click.Option(["--out"], default="outputs", show_default=True, type=click.Path()),
    ]
    if neutral:
        options.insert(8, click.Option(["--neutral"], type=click.Path(), default=None,
                                       help="A neutral-texts file instead of the shipped one."))
    return options


def command(name: str, *, models: tuple[str, ...] | Callable[[], tuple[str, ...]] = (models.DEFAULT_MODEL,),
            many: bool = False, langs: str = "en,ja", neutral: bool = True) -> Callable:
    """Make `fn(run, **own_options)` a click command named `name` with the shared options (see the module
    docstring). `models`: the default model(s), or a function returning them; `many`: `--model` repeats."""

    def decorate(fn: Callable) -> click.Command:
        script = Path(inspect.getfile(fn))
        own = list(reversed(getattr(fn, "__click_params__", [])))

        def cli(**options: Any) -> None:
            shared = {key: options.pop(key, None) for key in SHARED}
            fn(Run.begin(name, script, shared, options), **options)

        doc = inspect.getmodule(fn).__doc__ or fn.__doc__
        return runs.Command(name, callback=cli, params=_shared_options(models, many, langs, neutral) + own,
                            help=doc)

    return decorate


# ---------------------------------------------------------------- report templates
def _missing(x: Any) -> bool:
    """None or NaN: printed as `n/a` by every number filter."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def _fixed(x: Any, digits: int = 3) -> str:
    if _missing(x):
        return "n/a"
    return f"{x:.{digits}f}"


def _general(x: Any, digits: int = 2) -> str:
    return "n/a" if _missing(x) else f"{x:.{digits}g}"


def _percent(x: Any, digits: int = 0) -> str:
    return "n/a" if _missing(x) else f"{x:.{digits}%}"


def markdown_table(frame: pl.DataFrame | list[dict], digits: int = 3) -> str:
    """A polars frame (or a list of row dicts) as a markdown table; floats to `digits` decimals."""
    frame = pl.DataFrame(frame) if isinstance(frame, list) else frame

    def cell(value: Any) -> str:
        text = _fixed(value, digits) if isinstance(value, float) else "" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns)
    return "\n".join([head, *("| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows())])


@functools.cache
def _environment(folder: Path) -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters.update(f=_fixed, g=_general, pct=_percent, table=markdown_table)
    return env


def render(template: Path, **facts: Any) -> str:
    """Fill the Jinja template `template` (a markdown file) with `facts`; filters `f` (fixed decimals),
    `g` (significant digits), `pct` (percent) and `table` (a frame as a markdown table)."""
    return _environment(template.parent).get_template(template.name).render(**facts)


# ---------------------------------------------------------------- the run
@dataclass
class Run:
    """One study run: its options, its models and its output folder (created on the first write)."""

    study: str
    script: Path
    options: dict[str, Any]
    models: list[models.Model]
    langs: list[str]
    seed: int
    start: int
    batch_tokens: int
    out: Path
    started: float = field(default_factory=time.perf_counter)
    facts: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    _frames: dict[tuple, pl.DataFrame] = field(default_factory=dict, repr=False)

    @classmethod
    def begin(cls, study: str, script: Path, shared: dict[str, Any], own: dict[str, Any]) -> Run:
        langs = corpus.parse_langs(shared["langs"])
        names = shared["model"]
        names = list(dict.fromkeys([names] if isinstance(names, str) else names() if callable(names) else names))
        if not names:
            raise EmonnError("no model to run: pass --model")
        runs.parse_layers(shared["layers"])  # a bad --layers fails before any model loads
        loaded = [models.load(name, remote=shared["remote"], device=shared["device"], dtype=shared["dtype"])
                  for name in names]
        budget = shared["batch_tokens"] or runs.batch_tokens_for(loaded[0])  # config.json records the one used
        run = cls(study, script, {**shared, "model": names, "batch_tokens": budget, **own}, loaded, langs,
                  shared["seed"], shared["start_token"], budget, Path(shared["out"]))
        run.clear_stale()
        run.note()
        return run

    def clear_stale(self) -> None:
        """If the folder holds a run with other options, remove its outputs (not its cached `units/`, which are
        keyed by what they computed), so `config.json` always describes the files beside it."""
        try:  # no folder: nothing to clear; a config without a digest (older emonn) or unreadable: clear
            before = json.loads((self.folder / "config.json").read_text()).get("options_digest", "")
        except (OSError, ValueError):
            before = None if not self.folder.exists() else ""
        if before is not None and before != self._options_digest():
            for path in self.folder.iterdir():
                if path.name != "units":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            click.echo(f"[emonn] {self.folder} held a run with other options: its outputs were removed "
                       "(cached units kept)", err=True)

    def _dtypes(self) -> dict[str, str]:
        return {m.name: runs.dtype_name(m.dtype) for m in self.models}

    def _options_digest(self) -> str:
        """A digest of the options that change results and the models' dtypes: what makes two runs' outputs
        comparable (facts a study notes may share an option's name in config.json, e.g. resolved layers)."""
        same = {k: v for k, v in self.options.items() if k not in ("out", "device", "batch_tokens")}  # no effect
        text = json.dumps({"options": same, "dtypes": self._dtypes()}, default=str, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def model(self) -> models.Model:
        """The run's one model (studies of a single model)."""
        return self.models[0]

    @property
    def folder(self) -> Path:
        return self.out / self.study / "__".join(model.slug for model in self.models)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def note(self, **facts: Any) -> None:
        """Record facts of the run (resolved layers, corpus digest, ...) in `config.json` beside its options."""
        self.facts.update(facts)
        config = {**self.options, "model_dtypes": self._dtypes(), **self.facts,
                  "options_digest": self._options_digest()}
        runs.atomic_write(self.folder / "config.json", json.dumps(config, indent=2, default=str, ensure_ascii=False))

    # ---------------------------------------------------------------- inputs
    def stories(self, langs: str | list[str] | None = None, *, emotions: list[str] | None = None) -> pl.DataFrame:
        """The stories (`--corpus` or the shipped ones) of `langs` (default: `--langs`)."""
        return self._load(False, langs, emotions)

    def neutral(self, langs: str | list[str] | None = None) -> pl.DataFrame:
        """The neutral texts (`--neutral` or the shipped ones) of `langs` (default: `--langs`)."""
        return self._load(True, langs, None)

    def _load(self, neutral: bool, langs: str | list[str] | None, emotions: list[str] | None) -> pl.DataFrame:
        langs = self.langs if langs is None else [langs] if isinstance(langs, str) else list(langs)
        key = (neutral, tuple(langs), tuple(emotions or ()))
        if key not in self._frames:
            path = self.options.get("neutral" if neutral else "corpus")
            self._frames[key] = corpus.load(path, neutral=neutral, langs=langs, emotions=emotions)
        return self._frames[key]

    def layers(self, model: models.Model, default: list[int] | None = None) -> list[int]:
        """`--layers` resolved for `model` (default: `default`, else every layer)."""
        return model.check_layers(runs.parse_layers(self.options["layers"]) or default)

    # ---------------------------------------------------------------- reading (cached per text)
    def cache(self, model: models.Model, reducer: str = "mean", start: int | None = None, *,
              suffix: str = "") -> runs.ActivationCache:
        """The activation cache every study shares for `model` read with `reducer` from token `start`;
        `suffix` names a variant of the arithmetic in the folder (e.g. `-q8act`: `mean-k20-float32-q8act`)."""
        cache = runs.activation_cache(self.out, model, reducer, self.start if start is None else start)
        return runs.ActivationCache(cache.folder.with_name(cache.folder.name + suffix)) if suffix else cache

    def generation_cache(self, model: models.Model) -> runs.GenerationCache:
        return runs.generation_cache(self.out, model)

    def read(self, model: models.Model, frame: pl.DataFrame, *, reducer: str = "mean", start: int | None = None,
             layers: list[int] | None = None) -> Readings:
        """`extract.read` of `frame` with the run's cache, start token, layers and token budget."""
        start = self.start if start is None else start
        return extract.read(model, frame, reducer=reducer, start=start,
                            layers=self.layers(model) if layers is None else layers,
                            batch_tokens=self.batch_tokens, cache=self.cache(model, reducer, start))

    def vectors(self, model: models.Model, lang: str, *, denoise: bool = True, layers: list[int] | None = None,
                emotions: list[str] | None = None) -> tuple[EmotionVectors, Readings]:
        """Comprehension-based vectors of `lang` (denoised by the neutral texts' top PCs by default) and the
        stories' readings they were fitted on."""
        readings = self.read(model, self.stories(lang, emotions=emotions), layers=layers)
        neutral = self.read(model, self.neutral(lang), layers=layers) if denoise else None
        return EmotionVectors.fit(readings, neutral=neutral), readings

    def embeddings(self, model: models.Model, frame: pl.DataFrame, *, reducer: str = "mean",
                   start: int | None = None) -> Readings:
        """The input embeddings of `frame`'s texts reduced over the tokens `read` averages (what the tokens
        alone carry: a lexical baseline), cached beside the activations (`embedding-mean-k20-float32`):
        `Readings` with acts `(n, 1, d)` at one pseudo-layer 0 (depth 0)."""
        from emonn import readings

        start = self.start if start is None else start
        acts = extract.embeddings(model, frame["text"].to_list(), reducer=reducer, start=start,
                                  cache=runs.activation_cache(self.out, model, reducer, start, embedding=True))
        meta = {"model": model.name, "reducer": reducer, "start": start, "dtype": runs.dtype_name(model.dtype)}
        return readings.of(acts[:, None], frame, layers=[0], n_layers=1, meta={**meta, "input": "embedding"})

    def unit(self, key: Any, compute: Callable[[], pl.DataFrame], *, name: str = "unit") -> pl.DataFrame:
        """A cached unit of work: `compute()` once per `key` (anything JSON can write), stored in
        `units/<name>-<hash>.parquet`, so an interrupted run resumes at the first missing unit. A damaged
        file is set aside (`<name>.broken`) with a warning and the unit is computed again."""
        digest = hashlib.sha1(json.dumps(key, default=str, sort_keys=True).encode()).hexdigest()[:12]
        path = self.folder / "units" / f"{name}-{digest}.parquet"
        if path.exists():
            try:
                return pl.read_parquet(path)
            except Exception as error:  # noqa: BLE001 - any unreadable file is recomputed
                runs.set_aside(path, error)
        frame = compute()
        runs.write_parquet(path, frame)
        return frame

    # ---------------------------------------------------------------- outputs
    def table(self, name: str, frame: pl.DataFrame) -> Path:
        """Save a polars frame as `results/<name>.parquet`."""
        return runs.write_parquet(self.folder / "results" / f"{name}.parquet", frame)

    def figure(self, name: str, chart: Any) -> Path:
        """Save an altair chart as `figures/<name>.html` (self-contained) and `.png`; the report links it."""
        self.figures.append(name)
        return runs.Run(self.folder).figure(name, chart)

    def save_vectors(self, name: str, vectors: EmotionVectors) -> Path:
        """Save `vectors` as `emonn vectors build` does (`share.save`): the folder `vectors/<name>/` with
        `vectors.safetensors|json` and a model card; `EmotionVectors.load(that folder)` reads them."""
        from emonn import share

        return share.save(vectors, self.folder / "vectors" / name)

    def write(self, name: str, text: str) -> Path:
        return runs.atomic_write(self.folder / name, text)

    def report(self, template: str | None = None, *, to: str = "report.md", **facts: Any) -> Path:
        """Fill `studies/<template>` (default: the study script's name with `.md`) with `facts`, the run's
        options (`options`), models, elapsed seconds, and a list of the figures with relative links."""
        path = self.script.with_name(template) if template else self.script.with_suffix(".md")
        # a fact given here overrides one noted earlier (two ** would make a shared name a TypeError)
        text = render(path, options=self.options, models=self.models, elapsed=self.elapsed, **{**self.facts, **facts})
        if self.figures and to == "report.md":
            text = text.rstrip("\n") + "\n\n## Figures\n\n" + "\n".join(
                f"- [{name}](figures/{name}.html) ([PNG](figures/{name}.png))" for name in dict.fromkeys(self.figures))
            text += "\n\nTables: `results/*.parquet`. Options and resolved settings: `config.json`.\n"
        return self.write(to, text)

    def done(self, *lines: str) -> None:
        """Print the study's summary lines, the run time and where the outputs went."""
        for line in lines:
            click.echo(line)
        click.echo(f"{self.elapsed:.0f} s; wrote {self.folder}/")


__all__ = ["Run", "command", "markdown_table", "render"]
