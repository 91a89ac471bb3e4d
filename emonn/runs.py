"""Output folders, the activation cache and the study CLI plumbing.

A study writes `outputs/<study>/<model-slug>/`: `config.json`, `results/*.parquet`, `figures/*.html|png`,
`report.md`. Activations are cached per model under `outputs/cache/<model-slug>/<reducer>/`, keyed by the
text itself, so every study that reads the same texts the same way shares them, and an interrupted
extraction resumes from its last finished chunk. Every write is atomic (temp file, then rename).
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from emonn import EmonnError

if TYPE_CHECKING:
    import torch

OUT = Path("outputs")


def atomic_write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    partial.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(partial, path)
    return path


def write_parquet(path: Path, frame: Any) -> Path:
    """Write a polars frame as parquet, atomically."""
    import io

    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return atomic_write(path, buffer.getvalue())


#: What reading a damaged (truncated, overwritten) `.npz` raises.
DAMAGED = (ValueError, KeyError, EOFError, zipfile.BadZipFile)


def set_aside(path: Path, error: Exception) -> None:
    """Rename a damaged cache file to `<name>.broken` (kept for inspection, never read again) and warn in one
    line: what it held is computed again."""
    import warnings

    try:
        path.replace(path.with_name(path.name + ".broken"))
    except FileNotFoundError:  # another run set it aside first
        return
    warnings.warn(f"damaged cache file {path} set aside as {path.name}.broken ({type(error).__name__}); "
                  "what it held is computed again", stacklevel=3)


@dataclass(frozen=True)
class ActivationCache:
    """Reduced activations `(n_layers, d)` per text, stored in chunks of `.npz` (keys + array). A lookup reads
    each chunk's keys and only the activations of chunks that hold a wanted text; a damaged chunk is set
    aside (`set_aside`) and its texts count as not cached."""

    folder: Path

    def lookup(self, keys: list[str]) -> dict[str, np.ndarray]:
        wanted, found = set(keys), {}
        for chunk in sorted(self.folder.glob("*.npz")) if self.folder.exists() else []:
            try:
                with np.load(chunk) as data:
                    hits = [i for i, key in enumerate(data["keys"]) if key in wanted]
                    if hits:
                        acts = data["acts"]
                        found.update({str(data["keys"][i]): acts[i] for i in hits})
            except DAMAGED as error:
                set_aside(chunk, error)
        return found

    def store(self, rows: dict[str, np.ndarray]) -> None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(list(rows)), acts=np.stack(list(rows.values())).astype(np.float32))
        atomic_write(self.folder / f"{uuid.uuid4().hex}.npz", buffer.getvalue())


#: The default token budget of one forward pass per device kind: what bounds a batch's memory.
BATCH_TOKENS = {"cpu": 2048, "cuda": 16384, "remote": 2048}


def batch_tokens_for(model: Any) -> int:
    """The default `--batch-tokens` for `model`: by its device kind, or NDIF's (a request's result stays small)."""
    return BATCH_TOKENS["remote" if model.remote else model.device.type if model.device.type in BATCH_TOKENS
                        else "cpu"]


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `float32`: how cache folders and reports name a dtype."""
    return str(dtype).removeprefix("torch.")


def cache_name(reducer: str, start: int, dtype: torch.dtype) -> str:
    """The folder of a model's activations under one reducer and dtype, e.g. `mean-k20-float32`."""
    return f"{reducer}-k{start}-{dtype_name(dtype)}" if reducer == "mean" else f"{reducer}-{dtype_name(dtype)}"


def activation_cache(out: Path, model: Any, reducer: str, start: int, *, embedding: bool = False
                     ) -> ActivationCache:
    """`model`'s activations under `out/cache/<model slug>/`, in a folder named by the reading and the model's
    fingerprint (e.g. `mean-k20-float32-8fc22632c3a9`), so two different models under one name never share
    activations; `embedding=True`: its input embeddings reduced the same way, beside them
    (`embedding-mean-k20-float32-...`). A random-init twin (`models.random_init`) has a slug, hence a cache,
    of its own."""
    name = ("embedding-" if embedding else "") + cache_name(reducer, start, model.dtype)
    return ActivationCache(Path(out) / "cache" / model.slug / f"{name}-{model.fingerprint}")


@dataclass(frozen=True)
class GenerationCache:
    """Finished units of generation-based extraction (`extract.generated_activations`), one `.npz` per unit
    key: the reduced activations `(batch, n_layers, d)`, the generated token ids and their text."""

    folder: Path

    def load(self, key: str) -> tuple[np.ndarray, list[list[int]], list[str]] | None:
        path = self.folder / f"{key}.npz"
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                ids = np.split(data["ids"], np.cumsum(data["lengths"])[:-1])
                return data["acts"], [row.tolist() for row in ids], data["texts"].tolist()
        except DAMAGED as error:
            set_aside(path, error)
            return None

    def store(self, key: str, acts: np.ndarray, ids: list[list[int]], texts: list[str]) -> None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, acts=acts.astype(np.float32), ids=np.array([t for row in ids for t in row], dtype=np.int64),
                 lengths=np.array([len(row) for row in ids]), texts=np.array(texts, dtype=str))
        atomic_write(self.folder / f"{key}.npz", buffer.getvalue())


def generation_cache(out: Path, model: Any) -> GenerationCache:
    dtype = dtype_name(model.dtype)
    return GenerationCache(Path(out) / "cache" / model.slug / f"generated-{dtype}-{model.fingerprint}")


@dataclass(frozen=True)
class Run:
    """One study's output folder for one model (or one set of models)."""

    folder: Path

    @classmethod
    def create(cls, out: Path | str, study: str, name: str, config: dict[str, Any]) -> Run:
        run = cls(Path(out) / study / name)
        atomic_write(run.folder / "config.json", json.dumps(config, indent=2, default=str, ensure_ascii=False))
        return run

    def table(self, name: str, frame: Any) -> Path:
        """Save a polars frame as `results/<name>.parquet`."""
        import io

        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        return atomic_write(self.folder / "results" / f"{name}.parquet", buffer.getvalue())

    def figure(self, name: str, chart: Any) -> Path:
        """Save an altair chart as `figures/<name>.html` (self-contained) and `.png`."""
        from emonn.plots import save

        return save(chart, self.folder / "figures" / name)

    def report(self, markdown: str) -> Path:
        return atomic_write(self.folder / "report.md", markdown)


class Command(click.Command):
    """A click command that prints an `EmonnError` on one line (`Error: ...`) and exits 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EmonnError as error:
            raise click.ClickException(str(error)) from None


def parse_layers(text: str | None) -> list[int] | None:
    """`--layers` syntax: `3,5,-1` or a range `2-10`; empty means all."""
    if not text:
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-") if not part.strip().startswith("-") else (part, "", "")
            layers += list(range(int(first), int(last) + 1)) if dash else [int(first)]
    except ValueError:
        raise EmonnError(f"--layers '{text}' is not a list like 3,5,-1 or a range like 2-10") from None
    return layers
