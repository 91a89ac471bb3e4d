"""Metrics of generated text that need no model: perplexity from log-probabilities, repetition (distinct-n,
longest repeated n-gram, zlib compression ratio), writing-script detection (cross-lingual leakage), and a
regime label from documented thresholds.

Repetition is measured on *units*: lower-cased words for alphabetic text, single characters for Japanese
and Chinese (which have no spaces). Every function returns NaN where its quantity is undefined (an empty
text has no perplexity and no bigrams), never raises on odd text.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# Hiragana, katakana and CJK ideographs count one unit per character; other letters/digits form words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNIT = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:'[^\W_{_CJK}]+)*")


def units(text: str) -> list[str]:
    """Lower-cased words (apostrophes kept inside: "don't"), and each CJK character as its own unit."""
    return _UNIT.findall(text.lower())


def perplexity(logprobs: Sequence[float]) -> float:
    """exp(-mean log-probability) of a text's tokens `(n_tokens,)`; NaN for no tokens."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    return float(np.exp(-logprobs.mean())) if logprobs.size else math.nan


def ngrams(items: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]


def distinct(text: str, n: int) -> float:
    """distinct-n: distinct n-grams / all n-grams of the text's units (1 = no repeats); NaN if none."""
    grams = ngrams(units(text), n)
    return len(set(grams)) / len(grams) if grams else math.nan


def longest_repeat(text: str) -> int:
    """Length (in units) of the longest n-gram that occurs at least twice (occurrences may overlap: "a a a"
    repeats "a a"); 0 if no unit repeats. Every prefix of a repeated n-gram repeats, so n grows until none."""
    items, n = units(text), 0
    while len(set(ngrams(items, n + 1))) < len(ngrams(items, n + 1)):
        n += 1
    return n


def compression_ratio(text: str) -> float:
    """UTF-8 bytes / zlib-compressed bytes (level 9). Higher = more repetitive; short ordinary text is near 1
    (zlib's header makes a 150-byte text barely compressible), a loop of one phrase reaches 3+. NaN if empty."""
    raw = text.encode()
    return len(raw) / len(zlib.compress(raw, 9)) if raw else math.nan


# ---------------------------------------------------------------- writing scripts and leakage
#: The scripts that belong to a language; a letter in any other script is leakage.
LANG_SCRIPTS = {"en": frozenset({"Latin"}), "ja": frozenset({"Han", "Hiragana", "Katakana"})}
_SCRIPT_NAMES = {"CJK": "Han", "HIRAGANA": "Hiragana", "KATAKANA": "Katakana", "KATAKANA-HIRAGANA": "Katakana"}


def script(char: str) -> str | None:
    """The writing script of a letter (`Latin`, `Han`, `Hiragana`, `Katakana`, `Hangul`, `Cyrillic`,
    `Greek`, `Arabic`, ...; from its Unicode name), or None for a non-letter (digit, space, punctuation,
    symbol, emoji, the U+FFFD of a split multi-byte character). Full/half-width forms keep their script."""
    if not unicodedata.category(char).startswith("L"):
        return None
    words = unicodedata.name(char, "UNKNOWN").split()
    first = words[1] if words[0] in {"FULLWIDTH", "HALFWIDTH"} and len(words) > 1 else words[0]
    return _SCRIPT_NAMES.get(first, first.title())


def token_script(token: str) -> str | None:
    """The script of most of a token's letters (`script` of each; a tie goes to the script seen first), or
    None for a token without letters (spaces, digits, punctuation, a U+FFFD byte piece)."""
    scripts = [s for s in map(script, token) if s is not None]
    return max(dict.fromkeys(scripts), key=scripts.count) if scripts else None


def _scripts(lang: str) -> frozenset[str]:
    if lang not in LANG_SCRIPTS:
        raise ValueError(f"no script list for language '{lang}' (known: {', '.join(LANG_SCRIPTS)})")
    return LANG_SCRIPTS[lang]


def foreign_letters(text: str, lang: str) -> tuple[int, int]:
    """(letters in a script foreign to `lang`, all letters) of `text`. Share = first / second."""
    scripts = [s for s in map(script, text) if s is not None]
    own = _scripts(lang)
    return sum(s not in own for s in scripts), len(scripts)


def foreign_tokens(pieces: Sequence[str], lang: str) -> tuple[int, int]:
    """(tokens containing a letter foreign to `lang`, tokens containing any letter). `pieces`: the text
    each token produced (see `token_pieces`); tokens without letters (spaces, digits, punctuation) count
    in neither."""
    own, foreign, lettered = _scripts(lang), 0, 0
    for piece in pieces:
        scripts = {s for s in map(script, piece) if s is not None}
        lettered += bool(scripts)
        foreign += bool(scripts - own)
    return foreign, lettered


def share(part: float, whole: float) -> float:
    """part / whole, NaN when whole is 0."""
    return part / whole if whole else math.nan


def token_pieces(ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[str]:
    """The text each token adds to the decoded string. A byte-level tokenizer can split one character over
    several tokens (each alone decodes to U+FFFD); those tokens all get the character they complete, so a
    Han character spread over three tokens counts as three Han tokens. `decode(list_of_ids) -> str`."""
    pieces: list[str] = []
    done, pending = "", 0
    for end in range(1, len(ids) + 1):
        text = decode(list(ids[:end]))
        if text.endswith("\ufffd"):
            pending += 1
            continue
        new = text[len(done):] if text.startswith(done) else text
        pieces += [new] * (pending + 1)
        done, pending = text, 0
    return pieces + ["\ufffd"] * pending  # bytes never completed


# ---------------------------------------------------------------- regimes
REGIMES = ("surgical", "inert", "repetitive", "explosive")


@dataclass(frozen=True)
class Thresholds:
    """When a steered generation counts as which regime (checked in this order):

    - `repetitive` (repetitive collapse): distinct-2 < `distinct2`, or a run of `repeat` units occurs
      twice, or the zlib compression ratio exceeds `compression`. Checked first, because a collapsed text
      has a *low* perplexity (a loop is easy to predict) and would otherwise pass as fluent.
    - `explosive` (degraded): perplexity under the unsteered model more than `ppl_ratio` times that of
      the unsteered (baseline) text for the same prompt and decoding, or more than `foreign` of its letters
      in a script foreign to the prompt's language.
    - `surgical`: neither, and the external classifier's score of the steered emotion rose by more than
      `margin` over the baseline text's.
    - `inert`: neither, and no such rise (fluent but not shifted).
    The defaults were set before looking at the sweep's results, from what ordinary 30-40-token model
    text shows: distinct-2 ≥ 0.8 and no repeated 5-gram in most unsteered samples.
    """

    distinct2: float = 0.6
    repeat: int = 6
    compression: float = 2.5
    ppl_ratio: float = 5.0
    foreign: float = 0.5
    margin: float = 0.1


def regime(*, n_units: int, distinct2: float, repeat: int, compression: float, ppl_ratio: float,
           foreign: float, shift: float, thresholds: Thresholds = Thresholds()) -> str:
    """The regime of one steered generation (see `Thresholds`); `n_units` = len(units(text)). A text
    without a single word (empty, or only punctuation/whitespace that is not repetitive) is `explosive`.
    NaN metrics never trigger a threshold."""
    t = thresholds
    if distinct2 < t.distinct2 or repeat >= t.repeat or compression > t.compression:
        return "repetitive"
    if n_units == 0 or ppl_ratio > t.ppl_ratio or foreign > t.foreign:
        return "explosive"
    return "surgical" if shift > t.margin else "inert"
