"""Build, save and share `EmotionVectors`: one folder per model and language, readable by people and code.

    outputs/vectors/<model-slug>-<lang>/
        vectors.safetensors, vectors.json   the vectors (`EmotionVectors.save`; `EmotionVectors.load(folder)`)
        README.md                           the model card: model, corpus digest, layers, reducer, start
                                            token, PCs removed, best layer, how to load and use them
        <emotion>.gguf                      (after `export_gguf`) a llama.cpp control vector

`build` fits comprehension-based vectors for a model and language (shipped or user corpus, neutral-PC
denoised by default) through the shared activation cache and records the best layer; `save` writes any
vectors that way (every study's `Run.save_vectors` does); `export_gguf` writes one emotion as a llama.cpp
control vector; `push` / `pull` move a folder to and from the Hugging Face Hub (or copy a local one).
Heavy modules (torch, the models) load inside `build` only, so the `emonn` command starts fast.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from emonn import EmonnError, runs
from emonn.vectors import EmotionVectors

if TYPE_CHECKING:
    from emonn.models import Model
    from emonn.readings import Readings

#: The stem of the vectors' files inside a folder: `vectors.safetensors`, `vectors.json`.
STEM = "vectors"
#: A Hugging Face repo id: `user/name`.
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
#: What `choose_layer` measures, as the card and `meta["layer_choice"]` state it.
CHOICE = ("leave-one-topic-out nearest-centroid accuracy (cosine) of the stories' readings in the vectors' "
          "space (centered, neutral PCs removed), chosen on the same stories the vectors were fitted on")


def folder_for(model: Model | str, lang: str, out: Path | str = runs.OUT) -> Path:
    """The default folder of `model`'s vectors of `lang`: `out/vectors/<model-slug>-<lang>/`."""
    from emonn.models import slugify

    return Path(out) / "vectors" / f"{slugify(model) if isinstance(model, str) else model.slug}-{lang}"


# ---------------------------------------------------------------- the best layer
@dataclass(frozen=True)
class LayerChoice:
    """The layer whose readings classify the stories best: `accuracy` `(n_layers,)` per layer of the vectors
    (leave-one-topic-out nearest centroid), `chance` the share of the most frequent emotion (what always
    guessing it scores), `n_topics` the folds."""

    layer: int
    accuracy: np.ndarray
    chance: float
    n_topics: int

    @property
    def best(self) -> float:
        return float(self.accuracy.max())


def choose_layer(vectors: EmotionVectors, readings: Readings) -> LayerChoice:
    """The best layer of `vectors` for `readings` (the stories they were fitted on, acts `(n, n_layers, d)`):
    the highest leave-one-topic-out nearest-centroid accuracy of `vectors.transform(acts)` (centered, neutral
    PCs removed) at each layer. Chosen and scored on the same stories, so the best accuracy is optimistic
    (a maximum over layers); ties go to the earliest layer."""
    from emonn import stats

    if tuple(readings.layers) != tuple(vectors.layers):
        raise EmonnError(f"readings of layers {readings.layers} do not match the vectors' layers {vectors.layers}")
    topics = readings.topic
    if len(set(topics.tolist())) < 2:
        raise EmonnError("the best layer is chosen by leave-one-topic-out accuracy: the stories need at least "
                         "two topics (column 'topic')")
    x = vectors.transform(readings.acts)
    accuracy = np.array([stats.nearest_centroid_accuracy(x[:, i], readings.emotion, topics)
                         for i in range(len(vectors.layers))])
    _, counts = np.unique(readings.emotion, return_counts=True)
    return LayerChoice(int(vectors.layers[int(np.argmax(accuracy))]), accuracy, float(counts.max() / counts.sum()),
                       len(set(topics.tolist())))


# ---------------------------------------------------------------- build
@dataclass(frozen=True)
class Built:
    """What `build` wrote: the folder, the vectors (their `meta` holds the choice of layer) and the time."""

    folder: Path
    vectors: EmotionVectors
    choice: LayerChoice
    seconds: float


def build(model: Model | str, lang: str = "en", *, corpus: Path | str | None = None,
          neutral: Path | str | None = None, denoise: bool = True, start: int | None = None,
          layers: list[int] | None = None, variance: float = 0.5, batch_tokens: int = 2048,
          out: Path | str = runs.OUT, folder: Path | str | None = None, progress: bool = True) -> Built:
    """Fit comprehension-based `EmotionVectors` of `model` (a `Model` or a name for `models.load`) reading the
    stories of `lang` (`corpus`: a user stories file instead of the shipped one), denoised by the top PCs
    (explaining `variance`) of the neutral texts of `lang` (`neutral`: a user file) unless `denoise=False`,
    each text's residual stream averaged from token `start` (default `extract.START`) at `layers` (default
    all). Activations go through the shared cache `out/cache/<slug>/mean-k<start>-<dtype>/`, so a study
    that read the same texts already makes this free. Records the best layer (`choose_layer`) in
    `meta["best_layer"]` and saves to `folder` (default `out/vectors/<slug>-<lang>/`) with a model card."""
    from emonn import corpus as shipped, extract, models

    began = time.perf_counter()
    model = models.load(model) if isinstance(model, str) else model
    model.reads([lang])
    start = extract.START if start is None else start
    stories = shipped.load(corpus, langs=[lang])
    texts = shipped.load(neutral, neutral=True, langs=[lang]) if denoise else None
    cache = runs.activation_cache(Path(out), model, "mean", start)
    read = dict(reducer="mean", start=start, layers=layers, batch_tokens=batch_tokens, cache=cache,
                progress=progress)
    readings = extract.read(model, stories, **read)
    neutral_readings = extract.read(model, texts, **read) if texts is not None else None
    vectors = EmotionVectors.fit(readings, neutral=neutral_readings, variance=variance)
    choice = choose_layer(vectors, readings)
    neutral_file = (str(neutral) if neutral else "shipped") if denoise else None
    meta = {**vectors.meta, "lang": lang, "model_type": getattr(model.hf.config, "model_type", None),
            "n_layers": model.n_layers, "d_model": model.d_model, "corpus_file": str(corpus) if corpus else "shipped",
            "neutral_file": neutral_file, "neutral_variance": variance if denoise else None, "best_layer": choice.layer,
            "best_accuracy": choice.best, "chance": choice.chance, "accuracy": choice.accuracy.tolist(),
            "n_topics": choice.n_topics, "layer_choice": CHOICE, "emonn": _version()}
    vectors = dataclasses.replace(vectors, meta=meta)
    target = Path(folder) if folder else folder_for(model, lang, out)
    save(vectors, target)
    return Built(target, vectors, choice, time.perf_counter() - began)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("emonn")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- save, load, check
def save(vectors: EmotionVectors, folder: Path | str) -> Path:
    """Write `vectors` to `folder`: `vectors.safetensors` + `vectors.json` (`EmotionVectors.save`) and a
    `README.md` model card made from their `meta`. `EmotionVectors.load(folder)` reads them back."""
    folder = Path(folder)
    vectors.save(folder / STEM)
    runs.atomic_write(folder / "README.md", card(vectors, folder))
    return folder


def load(folder: Path | str) -> EmotionVectors:
    """The vectors of `folder`, checked: arrays of the shapes their labels and layers say (else an error)."""
    if not Path(folder).exists() and not Path(folder).with_suffix(".json").exists():
        raise EmonnError(f"no vectors at {folder}: build them with `emonn vectors build` (or pull them)")
    vectors = EmotionVectors.load(folder)
    n, k = len(vectors.emotions), len(vectors.layers)
    d = vectors.vectors.shape[-1] if vectors.vectors.ndim == 3 else -1
    shapes = {"vectors": (n, k, d), "means": (n, k, d), "center": (k, d)}
    bad = [name for name, shape in shapes.items() if getattr(vectors, name).shape != shape]
    if bad or (vectors.pcs and (len(vectors.pcs) != k or any(p.shape[-1] != d for p in vectors.pcs))):
        raise EmonnError(f"vectors in {folder} are damaged: {', '.join(bad) or 'pcs'} do not match "
                         f"{n} emotions x {k} layers x d={d}")
    return vectors


# ---------------------------------------------------------------- the model card
CARD = """---
library_name: emonn
tags: [emonn, emotion-vectors, steering-vectors, control-vector, interpretability]
{% if base_model %}
base_model: {{ base_model }}
{% endif %}
---

# Emotion vectors: {{ m.model }}{% if lang %} ({{ lang }}){% endif %}


{{ v.emotions | length }} emotion vectors for **{{ m.model }}** at {{ v.layers | length }} layers (d = {{ d }}),
found with emonn by reading emotion stories: one vector per emotion and layer.

| | |
|---|---|
| model | `{{ m.model }}`{% if m.model_type %} ({{ m.model_type }}){% endif %}{% if m.n_layers %}, {{ m.n_layers }} layers{% endif %}, read in {{ m.dtype or "?" }} |
| language | {{ lang or "?" }} |
| stories | {{ m.corpus_file or "(file not recorded)" }}, {{ m.n_texts or "?" }} texts, corpus digest `{{ m.corpus or "?" }}` |
| neutral texts | {% if v.pcs %}{{ m.neutral_file or "given" }}, digest `{{ m.neutral or "?" }}`; top PCs explaining {{ variance }} of their variance removed per layer{% else %}none (vectors not denoised){% endif %} |
| reducer | {{ m.reducer or "?" }}{% if m.reducer == "mean" %} of each text's residual stream from token {{ m.start }} on{% endif %} |
| start token | {{ m.start }} |
| layers | {{ v.layers[0] }}..{{ v.layers[-1] }} ({{ v.layers | length }} layers; 0-based decoder block index, the block's output) |
{% if best is not none %}
| best layer | **{{ best }}**{% if m.n_layers %} (depth {{ "%.2f" | format(best / (m.n_layers - 1)) }}){% endif %}: accuracy {{ "%.3f" | format(m.best_accuracy) }}, chance {{ "%.3f" | format(m.chance) }} |
{% endif %}
| emotions | {{ v.emotions | join(", ") }} |
| stored as | float32 safetensors; made by emonn{% if m.emonn %} {{ m.emonn }}{% endif %} |

## How they were made

Each story was read by the model; at every layer its residual stream (the decoder block's output) was
{% if m.reducer == "mean" %}averaged over its tokens from position {{ m.start }} on{% else %}reduced with `{{ m.reducer }}`{% endif %}.
An emotion's vector is the mean over its stories minus the mean over all emotions (centering){% if v.pcs %},
with the top principal components of the neutral texts' activations at that layer projected out (as many
as explain {{ variance }} of their variance: the "PCs removed" column){% endif %}.
{% if best is not none %}

## Best layer

Layer {{ best }}: the highest {{ choice }}. Accuracy {{ "%.3f" | format(m.best_accuracy) }} over
{{ m.n_topics }} topic folds, chance {{ "%.3f" | format(m.chance) }} (always the most frequent emotion).
Because the layer was chosen on the same stories it is scored on, that accuracy is optimistic (a maximum
over {{ v.layers | length }} layers); for an unbiased number, choose on some topics and score on others.
{% endif %}

| layer | {% if m.n_layers %}depth | {% endif %}PCs removed | mean norm |{% if accuracy %} accuracy |{% endif %}

|---|{% if m.n_layers %}---|{% endif %}---|---|{% if accuracy %}---|{% endif %}

{% for layer in v.layers %}
| {{ layer }}{% if layer == best %} (best){% endif %} | {% if m.n_layers %}{{ "%.2f" | format(layer / (m.n_layers - 1)) }} | {% endif %}{{ pcs[loop.index0] }} | {{ "%.3g" | format(norms[loop.index0]) }} |{% if accuracy %} {{ "%.3f" | format(accuracy[loop.index0]) }} |{% endif %}

{% endfor %}

## Load in Python

```python
from emonn.vectors import EmotionVectors

v = EmotionVectors.load("{{ path }}")   # this folder
v.emotions, v.layers                     # labels, model layers
v.at({{ best if best is not none else v.layers[-1] }})                                # (n_emotions, d) vectors at a layer
v.scores(acts)                           # acts (n, n_layers, d) -> cosine with each emotion (n, n_layers, n_emotions)
v.meta                                   # everything in this card
```

Without emonn: `vectors.safetensors` holds `vectors` and `means` `(n_emotions, n_layers, d)`, `center`
`(n_layers, d)` and the neutral PCs `pcs.<i>` `(n_pcs, d)` per layer; `vectors.json` the emotions, layers
and provenance.

## Use with `emonn probe`

```bash
emonn probe "I just took 500 mg of Tylenol for my back pain" --vectors {{ path }}
```

reads the text (or a chat transcript) with the same model and colours every token by its cosine with each
emotion vector{% if best is not none %}, at layer {{ best }} by default (the best layer above){% endif %}.

## Use with llama.cpp

```bash
emonn vectors export {{ path }} --format gguf --emotion {{ v.emotions[0] }}   # writes {{ v.emotions[0] }}.gguf here
llama-cli -m <the model>.gguf --control-vector-scaled {{ path }}/{{ v.emotions[0] }}.gguf 0.5
```

The control vector adds the raw (unnormalised) vector, times the strength, to the output of each block
(strength 1 adds it at its own norm: the "mean norm" column); layer 0 is left out (llama.cpp cannot steer it).
"""


def card(vectors: EmotionVectors, folder: Path | str) -> str:
    """The model card (markdown with Hub front matter) of `vectors` saved in `folder`, from their `meta`."""
    import jinja2

    meta = vectors.meta
    model = str(meta.get("model", "?"))
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    langs = meta.get("langs") or []
    return env.from_string(CARD).render(
        v=vectors, m=_Meta(meta), d=vectors.vectors.shape[-1], lang=meta.get("lang") or ",".join(langs),
        best=meta.get("best_layer"), accuracy=meta.get("accuracy"), pcs=vectors.n_pcs or [0] * len(vectors.layers),
        variance=f"{meta['neutral_variance']:.0%}" if meta.get("neutral_variance") else "50% (the default)",
        choice=CHOICE, path=Path(folder).as_posix(), norms=np.linalg.norm(vectors.vectors, axis=-1).mean(0).tolist(),
        base_model=model if REPO_ID.fullmatch(model) else None)


class _Meta(dict):
    """`meta` for the template: a missing key reads as None (a study's vectors carry fewer facts)."""

    def __getattr__(self, name: str) -> Any:
        return self.get(name)


# ---------------------------------------------------------------- llama.cpp
def export_gguf(vectors: EmotionVectors, path: Path | str, *, emotion: str, model_hint: str,
                layers: list[int] | None = None) -> Path:
    """Write the vectors of `emotion` as a llama.cpp control vector, in the layout repeng's
    `ControlVector.export_gguf` writes: architecture `controlvector`, `controlvector.model_hint`
    (`model_hint`; repeng writes the HF `config.model_type`, e.g. `llama`), `controlvector.layer_count` (the
    number of direction tensors), and one float32 tensor `direction.<layer>` `(d,)` per layer: the raw
    vector (`vectors.at(layer)` of that emotion, not normalised; llama.cpp scales it by the strength given).

    Layer numbering: `<layer>` is emonn's 0-based decoder block index, unchanged. repeng keys its directions
    the same way (the output of block `layer`, its `hidden_states[layer + 1]`), and llama.cpp adds
    `direction.k` to the output of block k (0-based) and rejects k = 0, so layer 0 is left out (repeng's
    default layers leave it out too). `layers` (default: all of the vectors') picks a subset. A few
    `emonn.*` keys (emotion, model, language, corpus digest) are added; llama.cpp ignores metadata."""
    import gguf

    if emotion not in vectors.emotions:
        raise EmonnError(f"no emotion '{emotion}' in these vectors (they have: {', '.join(vectors.emotions)})")
    chosen = list(vectors.layers) if layers is None else layers
    absent = [layer for layer in chosen if layer not in vectors.layers]
    if absent:
        raise EmonnError(f"layer {absent[0]} not in these vectors (layers {vectors.layers[0]}..{vectors.layers[-1]})")
    chosen = [layer for layer in chosen if layer != 0]
    if not chosen:
        raise EmonnError("no layer to export: llama.cpp cannot steer layer 0, and no other layer was given")
    index = vectors.emotions.index(emotion)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    arch = "controlvector"
    writer = gguf.GGUFWriter(str(partial), arch)
    writer.add_string(f"{arch}.model_hint", model_hint)
    writer.add_uint32(f"{arch}.layer_count", len(chosen))
    for key, value in (("emotion", emotion), ("model", vectors.meta.get("model")),
                       ("lang", vectors.meta.get("lang")), ("corpus", vectors.meta.get("corpus"))):
        if value:
            writer.add_string(f"emonn.{key}", str(value))
    for layer in chosen:
        writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(vectors.at(layer)[index], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, path)
    return path


def model_hint(vectors: EmotionVectors) -> str:
    """What `export_gguf` records as `controlvector.model_hint` by default: the architecture (HF
    `model_type`, as repeng writes) where `build` recorded it, else the model's name."""
    return str(vectors.meta.get("model_type") or vectors.meta.get("model") or "unknown")


# ---------------------------------------------------------------- the Hugging Face Hub
def _hub_error(action: str, error: Exception) -> EmonnError:
    first = (str(error).strip().splitlines() or [""])[0]
    return EmonnError(f"{action} failed: {type(error).__name__}: {first}")


def push(folder: Path | str, repo_id: str, *, token: str | None = None, private: bool = False) -> str:
    """Upload the vectors folder `folder` (checked first: it must load) to the Hub model repo `repo_id`
    (created if absent; `private` for a new one), with `upload_folder`. `token`: default `HF_TOKEN` or the
    saved login. Returns the repo's URL."""
    import huggingface_hub

    vectors = load(folder)
    if not REPO_ID.fullmatch(repo_id):
        raise EmonnError(f"'{repo_id}' is not a Hugging Face repo id (user/name)")
    token = token or huggingface_hub.get_token()
    if not token:
        raise EmonnError("no Hugging Face token: set HF_TOKEN, log in with `hf auth login`, or pass --token")
    api = huggingface_hub.HfApi(token=token)
    try:
        url = api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=f"emonn vectors: {vectors.meta.get('model', '?')} "
                                         f"{vectors.meta.get('lang', '')}".strip())
    except Exception as error:  # noqa: BLE001 - network, auth and HTTP errors all end in one line
        raise _hub_error(f"push to {repo_id}", error) from error
    return str(url)


def pull(source: Path | str, dest: Path | str, *, token: str | None = None) -> Path:
    """Vectors into the folder `dest`: from a local vectors folder `source` (copied, after checking that it
    loads) or from the Hub model repo `source` (`snapshot_download`); then checked again in `dest` (it must
    load: `load`). Returns `dest`."""
    src, dest = Path(source).expanduser(), Path(dest)
    if src.is_dir():
        load(src)
        if src.resolve() != dest.resolve():
            if dest.resolve().is_relative_to(src.resolve()):
                raise EmonnError(f"cannot pull {src} into a folder inside it ({dest})")
            shutil.copytree(src, dest, dirs_exist_ok=True)
    elif REPO_ID.fullmatch(str(source)):
        import huggingface_hub

        try:
            huggingface_hub.snapshot_download(str(source), repo_type="model", local_dir=str(dest), token=token)
        except Exception as error:  # noqa: BLE001 - network, auth and HTTP errors all end in one line
            raise _hub_error(f"pull of {source}", error) from error
    else:
        raise EmonnError(f"'{source}' is neither a vectors folder nor a Hugging Face repo id (user/name)")
    load(dest)
    return dest


# ---------------------------------------------------------------- the `emonn vectors` commands
@click.group("vectors")
def vectors() -> None:
    """Build emotion vectors with a model card, export them for llama.cpp, share them on the Hugging Face Hub."""


@vectors.command("build", cls=runs.Command)
@click.option("--model", default=None, help="Embedded alias, HF repo id, model folder or .gguf file. "
              "Default: the embedded default model (smollm2-135m).")
@click.option("--lang", default="en", show_default=True, help="Language of the stories (en, ja).")
@click.option("--corpus", type=click.Path(), default=None, help="A stories file instead of the shipped one.")
@click.option("--neutral", type=click.Path(), default=None, help="A neutral-texts file instead of the shipped one.")
@click.option("--denoise/--no-denoise", default=True, show_default=True,
              help="Project out the neutral texts' top principal components (50% of their variance).")
@click.option("--start-token", type=int, default=None,
              help="Average each text's residual stream from this token on (default: 20, as the studies).")
@click.option("--layers", default="", help="Layers to fit, e.g. '2-10' or '0,5,-1' (default: all).")
@click.option("--remote", is_flag=True, help="Run the traces on NDIF (needs NDIF_API_KEY).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="auto: bfloat16 on a GPU, or on a CPU where it is native and measured equal.")
@click.option("--out", default=str(runs.OUT), show_default=True, type=click.Path(),
              help="Outputs root: the vectors go to OUT/vectors/<model>-<lang>/, activations to OUT/cache/.")
def build_command(model: str | None, lang: str, corpus: str | None, neutral: str | None, denoise: bool,
                  start_token: int | None, layers: str, remote: bool, device: str, dtype: str, out: str) -> None:
    """Fit and save emotion vectors for a model and language, with a readable model card (README.md)."""
    from emonn import corpus as shipped, models

    if len(shipped.parse_langs(lang)) != 1:
        raise EmonnError(f"--lang takes one language, got '{lang}': build each language on its own")
    wanted = runs.parse_layers(layers)  # a bad --layers fails before the model loads
    loaded = models.load(model or models.DEFAULT_MODEL, remote=remote, device=device, dtype=dtype)
    built = build(loaded, lang, corpus=corpus, neutral=neutral, denoise=denoise, start=start_token,
                  layers=wanted, out=out)
    v, choice = built.vectors, built.choice
    removed = f"; {v.n_pcs[v.layers.index(choice.layer)]} neutral PCs removed there" if v.pcs else ""
    click.echo(f"{len(v.emotions)} emotions x {len(v.layers)} layers (d={v.vectors.shape[-1]}) of {loaded.name} "
               f"({lang}); best layer {choice.layer}: accuracy {choice.best:.3f}, chance {choice.chance:.3f}"
               f"{removed}")
    click.echo(f"{built.seconds:.0f} s; wrote {built.folder}/ (README.md is the card)")


@vectors.command("export", cls=runs.Command)
@click.argument("folder", required=False, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["gguf"]), default="gguf", show_default=True,
              help="gguf: a llama.cpp control vector (the layout repeng exports).")
@click.option("--emotion", required=True, help="The emotion to export (one direction per file).")
@click.option("--output", type=click.Path(), default=None, help="The file to write (default: FOLDER/<emotion>.gguf).")
@click.option("--model-hint", "hint", default=None,
              help="controlvector.model_hint (default: the architecture recorded by `build`, e.g. llama).")
def export_command(folder: str | None, fmt: str, emotion: str, output: str | None, hint: str | None) -> None:
    """Write one emotion's vectors from FOLDER (default: the embedded default model's English vectors,
    outputs/vectors/smollm2-135m-en) as a llama.cpp control vector."""
    if folder is None:
        from emonn import models

        folder = folder_for(models.DEFAULT_MODEL, "en")
    source = Path(folder)
    v = load(source)
    hint = hint or model_hint(v)
    path = export_gguf(v, Path(output) if output else (source if source.is_dir() else source.parent) /
                       f"{emotion}.gguf", emotion=emotion, model_hint=hint)
    click.echo(f"wrote {path} ({fmt}): '{emotion}' at {len([x for x in v.layers if x != 0])} layers, "
               f"model hint {hint}")


@vectors.command("push", cls=runs.Command)
@click.argument("folder", type=click.Path())
@click.argument("repo_id")
@click.option("--token", default=None, help="Hugging Face token (default: HF_TOKEN or the saved login).")
@click.option("--private", is_flag=True, help="Create the repo private (if it does not exist yet).")
def push_command(folder: str, repo_id: str, token: str | None, private: bool) -> None:
    """Upload a vectors FOLDER (vectors + card, and any exported .gguf) to the Hub model repo REPO_ID."""
    click.echo(f"pushed {folder} to {push(folder, repo_id, token=token, private=private)}")


@vectors.command("pull", cls=runs.Command)
@click.argument("source")
@click.argument("dest", required=False, type=click.Path())
@click.option("--token", default=None, help="Hugging Face token for a private repo (default: HF_TOKEN or login).")
def pull_command(source: str, dest: str | None, token: str | None) -> None:
    """Fetch vectors from the Hub repo SOURCE (user/name) or copy the local folder SOURCE into DEST
    (default: outputs/vectors/<name>), checking that they load."""
    target = Path(dest) if dest else runs.OUT / "vectors" / Path(source.rstrip("/")).name
    v = load(pull(source, target, token=token))
    click.echo(f"pulled {len(v.emotions)} emotions x {len(v.layers)} layers of {v.meta.get('model', '?')} "
               f"into {target}/")


__all__ = ["Built", "LayerChoice", "build", "card", "choose_layer", "export_gguf", "folder_for", "load",
           "model_hint", "pull", "push", "save", "vectors"]
