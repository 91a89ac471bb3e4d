"""Grow the corpus with an instruct model: topic × emotion × language prompts, filtered before saving.

Each cell (lang, emotion, topic) asks the model, through its chat template, for a short story in which a
character feels the emotion, conveyed by situation, thoughts, body and actions and never named (the
prompt style of emotion-concept studies; Japanese cells are asked in Japanese). A story is kept only if
it passes every filter: no forbidden word of its emotion, length within bounds, and no near-duplicate of
the existing corpus or of a story kept before (`corpus.NearDuplicates`). Kept rows are appended to the
output JSONL atomically after every batch, so an interrupted run resumes with the cells still missing.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from emonn import EmonnError, corpus, steer
from emonn.models import Model
from emonn.runs import atomic_write

PROMPTS = {
    "en": ("Write a short story of {low} to {high} words about {topic}, in which a character feels {emotion}. "
           "Convey the feeling only through the situation, the character's thoughts, body sensations and "
           "actions. Never use the word \"{emotion}\" or any synonym of it. Give the character a name and "
           "begin directly with the story, without a title."),
    "ja": ("「{topic}」を題材に、登場人物が「{emotion}」を感じている短い物語を日本語で書いてください"
           "（{low}〜{high}字）。その気持ちは状況、心の中の考え、体の感覚、行動だけで伝え、「{emotion}」という"
           "言葉やその類義語は決して使わないでください。登場人物に名前を付け、題名を付けずに本文から書き始めてください。"),
}
FILTERS = ("forbidden word", "length", "near-duplicate")
# The text up to its last sentence end, closing quotes included (a closing 」 ends a Japanese sentence too):
# a story cut by max_new_tokens loses its unfinished last sentence.
_COMPLETE = re.compile(r".*([.!?。！？…][\"'”’)）]*|[」』])", re.DOTALL)
_TITLE = re.compile(r"(title|タイトル|題名)\s*[:：]|#|\*\*", re.IGNORECASE)


@dataclass(frozen=True)
class Cell:
    lang: str
    emotion: str
    topic: str

    def id(self, number: int) -> str:
        return f"gen-{self.lang}-{self.emotion}-{self.topic}-{number:02d}"


@dataclass(frozen=True)
class Outcome:
    """`counts`: stories generated, failing each filter (a story can fail several) and kept;
    `missing`: cells that still lack stories after the bounded attempts (rerun to resume)."""

    counts: dict[str, int]
    missing: dict[Cell, int]


def cells(langs: list[str], emotions: list[str] | None = None, topics: list[str] | None = None) -> list[Cell]:
    """Every (lang, emotion, topic) combination; emotions and topics default to all of the corpus's."""
    known = {"lang": list(PROMPTS), "emotion": corpus.emotion_names(), "topic": corpus.topics()["topic"].to_list()}
    chosen = {"lang": langs, "emotion": emotions or known["emotion"], "topic": topics or known["topic"]}
    for kind, names in chosen.items():
        unknown = [name for name in names if name not in known[kind]]
        if unknown:
            raise EmonnError(f"unknown {kind} '{unknown[0]}': use one of {', '.join(known[kind])}")
    return [Cell(lang, emotion, topic) for lang in chosen["lang"] for emotion in chosen["emotion"]
            for topic in chosen["topic"]]


def parse_bounds(specs: list[str]) -> dict[str, tuple[int, int]]:
    """Length bounds per language: the corpus's (`corpus.BOUNDS`), overridden by specs like `en=30-160`."""
    bounds = {lang: (low, high) for lang, (_, low, high) in corpus.BOUNDS.items()}
    for spec in specs:
        match = re.fullmatch(r"(\w+)=(\d+)-(\d+)", spec.strip())
        if not match or match[1] not in bounds or int(match[2]) > int(match[3]):
            raise EmonnError(f"--bounds '{spec}' must look like en=70-160 (languages: {', '.join(bounds)})")
        bounds[match[1]] = (int(match[2]), int(match[3]))
    return bounds


def prompt(cell: Cell, bounds: dict[str, tuple[int, int]]) -> str:
    """The user message asking for one story of `cell`."""
    topic = corpus.topics().row(by_predicate=pl.col("topic") == cell.topic, named=True)[cell.lang]
    emotion = cell.emotion if cell.lang == "en" else corpus.emotions().row(
        by_predicate=pl.col("emotion") == cell.emotion, named=True)[cell.lang]
    low, high = bounds[cell.lang]
    return PROMPTS[cell.lang].format(topic=topic, emotion=emotion, low=low, high=high)


def complete(model: Model, messages: list[str], *, max_new_tokens: int, temperature: float, seed: int
             ) -> list[str]:
    """One sampled answer per message (unsteered `steer.generate`, so `--remote` and the strict check route)."""
    prompts = [model.chat(message) for message in messages]
    return steer.generate(model, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                          temperature=temperature, seed=seed).texts


def clean(text: str, lang: str) -> str:
    """A generated story as one paragraph: a title line dropped, cut after its last complete sentence."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and _TITLE.match(lines[0]):
        lines = lines[1:]
    text = (" " if lang == "en" else "").join(lines)
    match = _COMPLETE.match(text)
    return match[0].strip() if match else text


def failures(text: str, cell: Cell, bounds: dict[str, tuple[int, int]], seen: corpus.NearDuplicates) -> list[str]:
    """The FILTERS that `text` fails (none: keep it)."""
    low, high = bounds[cell.lang]
    failed = [corpus.forbidden_hit(text, cell.lang, cell.emotion) is not None,
              not low <= corpus.length(text, cell.lang) <= high, bool(seen.repeats(text))]
    return [name for name, fail in zip(FILTERS, failed) if fail]


def _append(out: Path, rows: list[dict]) -> None:
    before = out.read_bytes() if out.exists() else b""
    if before and not before.endswith(b"\n"):
        before += b"\n"
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(out, before + lines.encode())


def run(model: Model, todo: list[Cell], *, per_cell: int, out: Path, bounds: dict[str, tuple[int, int]],
        against: pl.DataFrame | None = None, attempts: int = 4, batch_size: int = 8, max_new_tokens: int = 220,
        temperature: float = 0.9, seed: int = 0, progress: bool = True) -> Outcome:
    """Generate until every cell of `todo` has `per_cell` stories in `out`, trying at most `attempts` ×
    `per_cell` generations per cell in this call. Rows already in `out` count (resume); stories are
    de-duplicated against `against` (e.g. the shipped corpus), `out` and each other."""
    other = sorted({cell.lang for cell in todo} - set(model.langs))
    if other:
        raise EmonnError(f"{model.name} writes only {', '.join(model.langs)}, not {', '.join(other)}: "
                         "drop those --langs or use a multilingual instruct model")
    out = Path(out)
    if out.suffix != ".jsonl":
        raise EmonnError(f"--out {out.name} must be a .jsonl file")
    rows = corpus.read(out).to_dicts() if out.exists() else []
    have = Counter(Cell(row["lang"], row["emotion"], row["topic"]) for row in rows)
    seen = {lang: corpus.NearDuplicates(lang) for lang in {cell.lang for cell in todo}}
    for row in (against.to_dicts() if against is not None else []) + rows:
        if row["lang"] in seen:
            seen[row["lang"]].add(row["id"], row["text"])
    tries: Counter[Cell] = Counter()
    counts = Counter({name: 0 for name in ("generated", *FILTERS, "kept")})
    bar = tqdm(total=sum(max(per_cell - have[cell], 0) for cell in todo), desc="stories kept", unit="story",
               disable=not progress)
    while True:
        # One prompt per missing story, cell after cell, within each cell's budget of attempts.
        batch = [cell for cell in todo for _ in range(min(per_cell - have[cell], attempts * per_cell - tries[cell]))]
        batch = batch[:batch_size]
        if not batch:
            break
        batch_seed = zlib.crc32(repr((seed, [(cell, tries[cell]) for cell in batch])).encode())
        texts = complete(model, [prompt(cell, bounds) for cell in batch], max_new_tokens=max_new_tokens,
                         temperature=temperature, seed=batch_seed)
        kept = []
        for cell, raw in zip(batch, texts):
            tries[cell] += 1
            text = clean(raw, cell.lang)
            failed = failures(text, cell, bounds, seen[cell.lang])
            counts.update(["generated", *failed])
            if not failed:  # the batch holds no more prompts of a cell than it misses
                have[cell] += 1
                row = {"id": cell.id(have[cell]), "emotion": cell.emotion, "lang": cell.lang, "topic": cell.topic,
                       "text": text}
                seen[cell.lang].add(row["id"], text)
                kept.append(row)
        if kept:
            _append(out, kept)
            counts["kept"] += len(kept)
            bar.update(len(kept))
    bar.close()
    return Outcome(dict(counts), {cell: per_cell - have[cell] for cell in todo if have[cell] < per_cell})
