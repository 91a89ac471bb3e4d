"""Read the emotion in any text: every token's residual stream against each emotion vector.

    emonn probe "I just took 8000 mg of Tylenol." --user --vectors outputs/vectors/smollm2-135m-en
    emonn probe --chat talk.json --vectors outputs/vectors/smollm2-135m-en --emotion afraid

`probe(model, vectors, text_or_messages)` reads a text (or a chat transcript rendered with the model's chat
template) in one trace and reduces it there to `(tokens, n_emotions)` cosines at one layer
(`reducers.token_cosines`), so only that leaves the model: the same on NDIF (`--remote`) at a small payload.
The result is one row per token; `page` draws it as a self-contained HTML file (no network).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import polars as pl

from emonn import EmonnError, runs
from emonn.vectors import EmotionVectors

if TYPE_CHECKING:
    from emonn.models import Model

#: The columns before the emotions' in a probe's frame.
COLUMNS = ("position", "token_id", "token", "role", "turn", "in_message", "assistant", "layer")


def default_layer(vectors: EmotionVectors) -> int:
    """The layer to read: the best layer in the vectors' card (`meta["best_layer"]`), else their middle one."""
    best = vectors.meta.get("best_layer")
    return int(best) if best is not None and int(best) in vectors.layers else vectors.layers[len(vectors.layers) // 2]


def load_chat(path: Path | str) -> list[dict[str, str]]:
    """A chat transcript: a JSON list of `{"role": ..., "content": ...}` messages."""
    try:
        messages = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EmonnError(f"cannot read the chat transcript {path}: {error}") from None
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise EmonnError(f"{path} is not a chat transcript: expected a JSON list of {{role, content}} messages")
    return messages


def _spans(rendered: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Character span of each message's content in the rendered chat, searched in order (templates may trim)."""
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        content = message["content"]
        start = rendered.find(content, cursor)
        if start < 0:
            content = content.strip()
            start = rendered.find(content, cursor)
        if start < 0:
            raise EmonnError(f"message {i}'s content is not in the chat template's rendering: cannot mark the turns")
        spans.append((start, start + len(content)))
        cursor = start + len(content)
    return spans


def tokens(model: Model, text_or_messages: str | list[dict[str, str]]) -> pl.DataFrame:
    """The tokens the model reads, one row each: position, token_id, token (its decoded text), and for a chat
    transcript role, turn (the message index), in_message (inside the message's text) and assistant (in the last
    assistant turn). Markup between two messages' contents (the closing of one, the header of the next) belongs
    to the later turn. A transcript that does not end with the assistant gets the template's generation prompt:
    those tokens are the assistant's turn, where it is about to answer."""
    tok = model.tokenizer
    if isinstance(text_or_messages, str):
        if not text_or_messages.strip():
            raise EmonnError("nothing to probe: the text is empty")
        ids = tok(text_or_messages)["input_ids"]
        n = len(ids)
        info = {"role": [None] * n, "turn": [None] * n, "in_message": [None] * n, "assistant": [False] * n}
    else:
        messages = list(text_or_messages)
        if not model.has_chat:
            raise EmonnError(f"{model.name} has no chat template: probe the text itself instead of a transcript")
        prompt = messages[-1]["role"] != "assistant"
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        spans = _spans(rendered, messages)
        bos = tok.bos_token
        enc = tok(rendered, add_special_tokens=not (bos and rendered.startswith(bos)), return_offsets_mapping=True)
        ids, starts = enc["input_ids"], [start for start, _ in enc["offset_mapping"]]
        turns = [min(sum(end <= s for _, end in spans), len(messages) - (not prompt)) for s in starts]
        roles = [m["role"] for m in messages] + ["assistant"]
        last = max((i for i, role in enumerate(roles[:len(messages) + prompt]) if role == "assistant"), default=None)
        info = {"role": [roles[t] for t in turns], "turn": turns,
                "in_message": [any(a <= s < b for a, b in spans) for s in starts],
                "assistant": [t == last for t in turns]}
    return pl.DataFrame({"position": range(len(ids)), "token_id": ids, "token": [tok.decode([i]) for i in ids],
                         **info}, schema_overrides={"role": pl.String, "turn": pl.Int64, "in_message": pl.Boolean})


def scores(model: Model, vectors: EmotionVectors, input_ids: list[int], layer: int) -> np.ndarray:
    """Cosine of every token's residual stream at `layer` with each emotion vector (centered and denoised as
    the vectors were): float32 `(tokens, n_emotions)`, computed in one trace and reduced there."""
    import torch

    from emonn.reducers import token_cosines

    index = vectors.layers.index(layer)
    units = torch.nn.functional.normalize(torch.tensor(vectors.at(layer), dtype=torch.float32), dim=-1)
    center = torch.tensor(vectors.center[index], dtype=torch.float32)
    pcs = torch.tensor(vectors.pcs[index] if vectors.pcs else np.zeros((0, model.d_model)), dtype=torch.float32)
    enc = {"input_ids": torch.tensor([input_ids]), "attention_mask": torch.ones(1, len(input_ids), dtype=torch.long)}
    block = model.layer(layer)
    # IN-TRACE CODE RULE: only the envoy resolved above, tensors and emonn.reducers (it may run on NDIF)
    with torch.no_grad(), model.trace(enc) as tracer:
        cosines = token_cosines(block.output, center, pcs, units).save()
        tracer.stop()  # nothing after this layer is read
    return cosines[0].float().cpu().numpy()


def probe(model: Model, vectors: EmotionVectors, text_or_messages: str | list[dict[str, str]], *,
          layer: int | None = None) -> pl.DataFrame:
    """One row per token of `text_or_messages` (a text, or a chat transcript of `{role, content}` messages):
    the `tokens` columns, the layer, and one cosine column per emotion (in `vectors.emotions` order), read at
    `layer` (default: `default_layer(vectors)`)."""
    layer = default_layer(vectors) if layer is None else model.check_layers([layer])[0]
    if layer not in vectors.layers:
        raise EmonnError(f"layer {layer} not in these vectors (layers {vectors.layers[0]}..{vectors.layers[-1]})")
    if vectors.vectors.shape[-1] != model.d_model:
        raise EmonnError(f"the vectors are {vectors.vectors.shape[-1]}-dimensional ({vectors.meta.get('model')}), "
                         f"{model.name}'s residual stream is {model.d_model}: use the vectors of this model")
    clash = set(vectors.emotions) & set(COLUMNS)
    if clash:
        raise EmonnError(f"emotion name '{sorted(clash)[0]}' clashes with a probe column: rename it")
    frame = tokens(model, text_or_messages)
    cos = scores(model, vectors, frame["token_id"].to_list(), layer)
    return frame.with_columns(layer=pl.lit(layer, pl.Int64)).hstack(
        pl.DataFrame(cos, schema=list(vectors.emotions)))


# ---------------------------------------------------------------- the HTML view
def focus(frame: pl.DataFrame) -> tuple[str, pl.DataFrame]:
    """What the view highlights: the assistant turn (where there is one) or the last token."""
    turn = frame.filter(pl.col("assistant"))
    return ("the assistant turn (mean)", turn) if turn.height else ("the last token", frame.tail(1))


def top(frame: pl.DataFrame, emotions: list[str], n: int = 5) -> list[tuple[str, float]]:
    """The `n` emotions with the highest mean cosine over the rows of `frame`."""
    means = {e: float(frame[e].mean()) for e in emotions}
    return sorted(means.items(), key=lambda item: -item[1])[:n]


def _colour(score: float, scale: float) -> str:
    """Red for a positive cosine, blue for a negative one, opacity |score| / scale."""
    alpha = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    return f"rgba({'214,39,40' if score >= 0 else '31,119,180'},{alpha:.2f})"


STYLE = """body{font:15px/1.6 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
#text{white-space:pre-wrap;font-family:ui-monospace,monospace;border:1px solid #ddd;padding:1em;border-radius:6px}
.t{border-radius:3px;cursor:default}.a{border-bottom:3px solid #2ca02c}.last{outline:2px solid #000}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.15em .8em;text-align:left}.note{color:#666}"""

SCRIPT = """const pick=document.getElementById('emotion'),spans=document.querySelectorAll('.t');
function paint(){const e=E.indexOf(pick.value);let m=0;for(const r of S)m=Math.max(m,Math.abs(r[e]));
spans.forEach((s,i)=>{const v=S[i][e],a=m>0?Math.min(Math.abs(v)/m,1):0;
s.style.background=`rgba(${v>=0?'214,39,40':'31,119,180'},${a.toFixed(2)})`;});}
pick.addEventListener('change',paint);"""


def page(frame: pl.DataFrame, emotions: list[str], *, emotion: str | None = None, title: str = "emonn probe"
         ) -> str:
    """A self-contained HTML page of a probe's frame: tokens coloured by `emotion`'s cosine (default: the top
    emotion at the highlighted turn or token), a menu to switch the emotion, every score on hover, the
    assistant turn underlined and the last token outlined, and the top emotions there."""
    label, focused = focus(frame)
    emotion = emotion or top(focused, emotions, 1)[0][0]
    if emotion not in emotions:
        raise EmonnError(f"unknown emotion '{emotion}': the vectors have {', '.join(emotions)}")
    values = frame.select(emotions).to_numpy()
    scale = float(np.abs(values[:, emotions.index(emotion)]).max())
    spans = []
    for i, row in enumerate(frame.iter_rows(named=True)):
        hover = "\n".join(f"{e} {v:+.3f}" for e, v in sorted(zip(emotions, values[i]), key=lambda x: -x[1]))
        where = f"#{row['position']}" + (f" {row['role']} (turn {row['turn']})" if row["role"] else "")
        classes = "t" + (" a" if row["assistant"] else "") + (" last" if i == frame.height - 1 else "")
        spans.append(f'<span class="{classes}" style="background:{_colour(values[i, emotions.index(emotion)], scale)}"'
                     f' title="{html.escape(where + chr(10) + hover)}">{html.escape(row["token"])}</span>')
    summary = "".join(f"<tr><td>{html.escape(e)}</td><td>{v:+.3f}</td></tr>" for e, v in top(focused, emotions))
    options = "".join(f'<option{" selected" if e == emotion else ""}>{html.escape(e)}</option>' for e in emotions)
    data = json.dumps(np.round(values, 4).tolist())
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p>Colour: <select id="emotion">{options}</select> <span class="note">red: positive cosine, blue: '
            f"negative, scaled to the largest |cosine| of that emotion; hover a token for every score; underlined: "
            f"the assistant turn; outlined: the last token.</span></p>"
            f"<p>Top emotions at {html.escape(label)}:</p><table>{summary}</table>"
            f'<div id="text">{"".join(spans)}</div>'
            f"<script>const E={json.dumps(emotions)},S={data};\n{SCRIPT}</script></body></html>\n")


def write(frame: pl.DataFrame, emotions: list[str], out: Path, *, emotion: str | None = None,
          info: dict[str, Any] | None = None) -> Path:
    """Write `out/tokens.parquet`, `out/tokens.html` and `out/probe.json` (model, layer, input, ...)."""
    info = info or {}
    title = f"emonn probe · {info.get('model', '')} · layer {frame['layer'][0]}"
    runs.write_parquet(out / "tokens.parquet", frame)
    runs.atomic_write(out / "tokens.html", page(frame, emotions, emotion=emotion, title=title))
    runs.atomic_write(out / "probe.json", json.dumps(info, indent=2, ensure_ascii=False, default=str))
    return out


# ---------------------------------------------------------------- the command
@click.command("probe", cls=runs.Command)
@click.argument("text", required=False)
@click.option("--file", "file", type=click.Path(), default=None, help="Probe the text of this file.")
@click.option("--chat", type=click.Path(), default=None,
              help="A chat transcript: JSON list of {role, content}, rendered with the model's chat template.")
@click.option("--user", is_flag=True, help="Render TEXT (or --file) as one user turn, ready for the assistant.")
@click.option("--vectors", "vectors_path", type=click.Path(), default=None,
              help="Saved EmotionVectors (a folder or a path stem); default: what `emonn vectors build` writes, outputs/vectors/smollm2-135m-en.")
@click.option("--model", default=None, help="Model to read with (default: the one the vectors were fitted on).")
@click.option("--layer", type=int, default=None, help="Layer to read (default: the vectors' best layer, or middle).")
@click.option("--emotion", default=None, help="Emotion to colour by (default: the top one at the end).")
@click.option("--out", type=click.Path(), default=None, help="Output folder (default: outputs/probe/<model>).")
@click.option("--remote", is_flag=True, help="Run the trace on NDIF (needs NDIF_API_KEY).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="auto: bfloat16 on a GPU, or on a CPU where it is native and measured equal.")
def command(text: str | None, file: str | None, chat: str | None, user: bool, vectors_path: str | None,
            model: str | None, layer: int | None, emotion: str | None, out: str | None, remote: bool, device: str,
            dtype: str) -> None:
    """Per-token cosine of a text (TEXT, --file or --chat) with each emotion vector at one layer: writes
    tokens.parquet and a self-contained tokens.html (coloured tokens, every score on hover)."""
    from emonn import models, share

    if sum(x is not None for x in (text, file, chat)) != 1:
        raise EmonnError("probe one input: TEXT, --file F or --chat F.json")
    if vectors_path is None:  # what a plain `emonn vectors build` writes
        vectors_path = share.folder_for(models.DEFAULT_MODEL, "en")
        if not Path(vectors_path).exists():
            raise EmonnError(f"no vectors at {vectors_path}: run `emonn vectors build` first, or pass --vectors "
                             "FOLDER (vectors saved by `emonn vectors build` or a study)")
    if file is not None and not Path(file).is_file():
        raise EmonnError(f"no such file: {file}")
    vectors = share.load(vectors_path)
    if emotion is not None and emotion not in vectors.emotions:
        raise EmonnError(f"unknown emotion '{emotion}': the vectors have {', '.join(vectors.emotions)}")
    name = model or vectors.meta.get("model")
    if not name:
        raise EmonnError("the vectors do not record their model: pass --model")
    loaded = models.load(name, remote=remote, device=device, dtype=dtype)
    source: str | list[dict[str, str]] = load_chat(chat) if chat else Path(file).read_text() if file else text
    if user:
        if chat:
            raise EmonnError("--user renders a text as a user turn; a --chat transcript has its turns already")
        source = [{"role": "user", "content": source}]
    frame = probe(loaded, vectors, source, layer=layer)
    folder = Path(out) if out else runs.OUT / "probe" / loaded.slug
    emotions = list(vectors.emotions)
    write(frame, emotions, folder, emotion=emotion,
          info={"model": loaded.name, "vectors": str(vectors_path), "layer": int(frame["layer"][0]),
                "file": chat or file, "input": source, "tokens": frame.height, "remote": remote})
    label, focused = focus(frame)
    click.echo(f"{loaded.name}, layer {frame['layer'][0]}, {frame.height} tokens. Top at {label}: "
               + ", ".join(f"{e} {v:+.3f}" for e, v in top(focused, emotions)))
    click.echo(f"wrote {folder}/ (tokens.parquet, tokens.html)")
