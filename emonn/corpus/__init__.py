"""The shipped corpus: emotion stories (EN/JA), neutral texts, emotion metadata, behaviours; load + validate.

Files beside this module: `stories.jsonl` and `neutral.jsonl` (rows: id, emotion, lang, topic, text),
`emotions.csv` (emotion, ja, valence, arousal), `forbidden.json` ({lang: {emotion: [stem, ...]}}),
`topics.csv`, `behaviours.csv`. A user corpus in JSONL, CSV or parquet with the same columns loads and
validates the same way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from emonn import EmonnError

HERE = Path(__file__).parent
COLUMNS = ("id", "emotion", "lang", "topic", "text")
#: Length bounds per language: (unit, min, max). English counts words, Japanese characters.
BOUNDS = {"en": ("words", 70, 160), "ja": ("characters", 140, 320)}
#: Near-duplicate detection: a shared run of this many words (en) / characters (ja), or the same opening.
SHARED_RUN = {"en": 8, "ja": 20}
OPENING = {"en": 3, "ja": 6}


@functools.cache
def emotions() -> pl.DataFrame:
    """Metadata of the 30 emotions: emotion, ja (Japanese name), valence, arousal (see SOURCES.md)."""
    return pl.read_csv(HERE / "emotions.csv")


def emotion_names() -> list[str]:
    return emotions()["emotion"].to_list()


@functools.cache
def forbidden() -> dict[str, dict[str, list[str]]]:
    """{lang: {emotion: words}}: English entries are word stems (matched at a word start, any ending),
    Japanese entries are substrings."""
    return json.loads((HERE / "forbidden.json").read_text())


def topics() -> pl.DataFrame:
    return pl.read_csv(HERE / "topics.csv")


#: The shipped corpus's design: per language, each emotion gets TOPICS_PER_EMOTION of the 60 topics at random
#: (balanced: every topic serves the same number of emotions), STORIES_PER_TOPIC stories on each.
TOPICS_PER_EMOTION, STORIES_PER_TOPIC, DESIGN_SEED = 12, 2, 0


def design(seed: int = DESIGN_SEED, langs: tuple[str, ...] = ("en", "ja")) -> pl.DataFrame:
    """The topic assignment (lang, emotion, topic, stories): drawn for each language independently, except
    that the stories of one emotion in two languages never share a topic, so a language's emotion × emotion
    topic-overlap pattern carries no information about another's (`topic_similarity`)."""
    names, pool = emotion_names(), topics()["topic"].to_list()
    rng, taken = np.random.default_rng(seed), np.zeros((len(names), len(pool)), bool)
    rows = []
    for lang in langs:
        while True:  # least-used topics first with random ties; redrawn until every topic serves equally many
            chosen, load = np.zeros_like(taken), np.zeros(len(pool))
            for e in rng.permutation(len(names)):
                free = np.flatnonzero(~taken[e])
                pick = free[np.argsort(load[free] + rng.random(free.size))[:TOPICS_PER_EMOTION]]
                chosen[e, pick], load[pick] = True, load[pick] + 1
            if load.min() == load.max():
                break
        taken |= chosen
        rows += [(lang, names[e], pool[t], STORIES_PER_TOPIC) for e, t in zip(*np.nonzero(chosen))]
    return pl.DataFrame(rows, schema=["lang", "emotion", "topic", "stories"], orient="row")


def behaviours() -> pl.DataFrame:
    """Activities for the A/B preference (Elo) study: category, activity."""
    return check_behaviours(pl.read_csv(HERE / "behaviours.csv"), "behaviours.csv")


def check_behaviours(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """A behaviours table (category, activity) as strings, or an `EmonnError` naming every problem: a missing
    column, an empty, duplicate or multi-line activity, one over 15 words (they are read inside a one-line
    question), fewer than 2 categories, or a category with fewer than 2 activities."""
    missing = [c for c in ("category", "activity") if c not in frame.columns]
    if missing:
        raise EmonnError(f"behaviours {source} lacks column(s) {', '.join(missing)} (needs category, activity)")
    frame = frame.select(pl.col("category", "activity").cast(pl.String).fill_null("").str.strip_chars())
    problems = [f"row {i + 1}: empty {name}" for i, row in enumerate(frame.iter_rows(named=True))
                for name in ("category", "activity") if not row[name]]
    problems += [f"'{a}' appears more than once" for a in frame.filter(pl.col("activity").is_duplicated())
                 ["activity"].unique(maintain_order=True).to_list() if a]
    problems += [f"'{a[:40]}' spans several lines" for a in frame["activity"] if "\n" in a]
    problems += [f"'{a[:40]}...' has {len(a.split())} words (at most 15)" for a in frame["activity"] if len(a.split()) > 15]
    counts = frame.filter(pl.col("category") != "").group_by("category", maintain_order=True).len()
    if counts.height < 2:
        problems.append(f"{counts.height} category (need at least 2)")
    problems += [f"category '{c}' has {n} activity (need at least 2)" for c, n in counts.iter_rows() if n < 2]
    if problems:
        raise EmonnError(f"behaviours {source} has {len(problems)} problem(s): {'; '.join(problems[:5])}")
    return frame


def read(path: Path | str) -> pl.DataFrame:
    """A corpus file (.jsonl, .csv or .parquet) with columns id, emotion, lang, topic, text."""
    path = Path(path)
    if not path.exists():
        raise EmonnError(f"corpus file not found: {path}")
    readers = {".jsonl": pl.read_ndjson, ".csv": pl.read_csv, ".parquet": pl.read_parquet}
    if path.suffix not in readers:
        raise EmonnError(f"corpus file {path.name} must be .jsonl, .csv or .parquet")
    try:
        frame = readers[path.suffix](path)
    except Exception as error:  # noqa: BLE001 - polars raises several types for malformed files
        raise EmonnError(f"cannot read corpus file {path}: {str(error).splitlines()[0]}") from error
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise EmonnError(f"corpus file {path.name} lacks column(s) {', '.join(missing)} (needs {', '.join(COLUMNS)})")
    return frame.select(pl.col(c).cast(pl.String) for c in COLUMNS)


@dataclass(frozen=True)
class Problem:
    id: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.id}: {self.kind} ({self.detail})"


def parse_langs(text: str) -> list[str]:
    """A `--langs` value such as 'en,ja' as a list of language codes; an unknown or missing one is an error."""
    langs = list(dict.fromkeys(lang.strip() for lang in text.split(",") if lang.strip()))
    unknown = [lang for lang in langs if lang not in BOUNDS] or ([] if langs else [text])
    if unknown:
        raise EmonnError(f"unknown language '{unknown[0]}': known languages are {', '.join(BOUNDS)}")
    return langs


def length(text: str, lang: str) -> int:
    """A text's length in its language's unit (BOUNDS): English words, Japanese characters."""
    return len(text.split()) if BOUNDS[lang][0] == "words" else len(text)


def forbidden_hit(text: str, lang: str, emotion: str) -> str | None:
    """The first forbidden word of `emotion` that `text` contains, if any."""
    for word in forbidden().get(lang, {}).get(emotion, []):
        if lang == "en" and re.search(rf"\b{re.escape(word)}", text, re.IGNORECASE):
            return word
        if lang != "en" and word in text:
            return word
    return None


def _units(text: str, lang: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower()) if lang == "en" else list(re.sub(r"\s", "", text))


class NearDuplicates:
    """The openings and long runs (SHARED_RUN words/characters) of the texts of one language seen so far:
    `repeats` names what a new text shares with an earlier one, which is how templated stories show."""

    def __init__(self, lang: str) -> None:
        self.lang, self.run = lang, SHARED_RUN.get(lang, 8)
        self.openings: dict[str, str] = {}
        self.runs: dict[str, str] = {}

    def _split(self, text: str) -> tuple[str, list[str]]:
        units = _units(text, self.lang)
        runs = [" ".join(units[i: i + self.run]) for i in range(len(units) - self.run + 1)]
        return " ".join(units[: OPENING.get(self.lang, 3)]), runs

    def repeats(self, text: str) -> list[str]:
        """What `text` shares with the texts added so far: the same opening, the first shared run."""
        opening, runs = self._split(text)
        found = [f"same opening as {self.openings[opening]}"] if opening in self.openings else []
        shared = next((run for run in runs if run in self.runs), None)
        return found + ([f"shares '{shared}' with {self.runs[shared]}"] if shared else [])

    def add(self, id: str, text: str) -> None:
        opening, runs = self._split(text)
        self.openings.setdefault(opening, id)
        for run in runs:
            self.runs.setdefault(run, id)


def _near_duplicates(frame: pl.DataFrame) -> list[Problem]:
    problems: list[Problem] = []
    for (lang,), part in frame.group_by("lang", maintain_order=True):
        seen = NearDuplicates(lang)
        for row in part.iter_rows(named=True):
            problems += [Problem(row["id"], "near-duplicate", detail) for detail in seen.repeats(row["text"] or "")]
            seen.add(row["id"], row["text"] or "")
    return problems


def validate(frame: pl.DataFrame) -> list[Problem]:
    """Every problem of a corpus at once: empty or duplicate text/id, unknown emotion or language, length
    out of bounds, forbidden word, unbalanced counts, near-duplicates. Neutral rows (emotion `neutral`)
    must contain no emotion's forbidden word."""
    known = set(emotion_names())
    problems: list[Problem] = []
    for column in ("id", "text"):
        for value in frame.filter(pl.col(column).is_duplicated())[column].unique().to_list():
            problems.append(Problem(str(value)[:40], f"duplicate {column}", "appears more than once"))
    for row in frame.iter_rows(named=True):
        text, lang, emotion = row["text"] or "", row["lang"], row["emotion"]
        if not text.strip():
            problems.append(Problem(row["id"], "empty text", "no text"))
            continue
        if emotion != "neutral" and emotion not in known:
            problems.append(Problem(row["id"], "unknown emotion", f"'{emotion}' is not one of the 30"))
        if lang not in BOUNDS:
            problems.append(Problem(row["id"], "unknown language", f"'{lang}' (known: {', '.join(BOUNDS)})"))
            continue
        unit, low, high = BOUNDS[lang]
        if not low <= length(text, lang) <= high:
            problems.append(Problem(row["id"], "length", f"{length(text, lang)} {unit}, allowed {low}-{high}"))
        for name in (known if emotion == "neutral" else [emotion]):
            hit = forbidden_hit(text, lang, name)
            if hit:
                problems.append(Problem(row["id"], "forbidden word", f"'{hit}' ({name})"))
    counts = frame.filter(pl.col("emotion") != "neutral").group_by("lang", "emotion").len()
    for (lang,), part in counts.group_by("lang"):
        most = part["len"].max()
        for emotion, count in part.select("emotion", "len").iter_rows():
            if count < 2 or count * 1.5 < most:
                problems.append(Problem(f"{lang}/{emotion}", "unbalanced", f"{count} stories vs up to {most}"))
    return problems + _near_duplicates(frame)


def check(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    problems = validate(frame)
    if problems:
        shown = "; ".join(map(str, problems[:5]))
        more = f"; and {len(problems) - 5} more (python -m emonn.corpus validate {source})" if len(problems) > 5 else ""
        raise EmonnError(f"corpus {source} has {len(problems)} problem(s): {shown}{more}")
    return frame


def load(path: Path | str | None = None, *, langs: list[str] | None = None, emotions: list[str] | None = None,
         neutral: bool = False) -> pl.DataFrame:
    """Stories (or, with `neutral=True`, neutral texts) as a frame (id, emotion, lang, topic, text),
    validated, then filtered by language and emotion. `path`: a user corpus instead of the shipped one."""
    source = Path(path) if path else HERE / ("neutral.jsonl" if neutral else "stories.jsonl")
    frame = check(read(source), str(source))
    for column, wanted in (("lang", langs), ("emotion", emotions)):
        if wanted:
            absent = sorted(set(wanted) - set(frame[column].unique().to_list()))
            if absent:
                raise EmonnError(f"{column} '{absent[0]}' not in corpus {source.name} "
                                 f"(has: {', '.join(sorted(frame[column].unique().to_list()))})")
            frame = frame.filter(pl.col(column).is_in(wanted))
    return frame


def digest(frame: pl.DataFrame) -> str:
    """A short hash of a corpus frame's ids and texts (recorded with vectors and results)."""
    joined = "\n".join(f"{i}\t{t}" for i, t in frame.select("id", "text").sort("id").iter_rows())
    return hashlib.sha1(joined.encode()).hexdigest()[:12]
