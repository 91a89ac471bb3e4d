import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from emonn import EmonnError, corpus, extract, stats
from emonn.corpus.__main__ import cli

STORIES = corpus.HERE / "stories.jsonl"
NEUTRAL = corpus.HERE / "neutral.jsonl"
shipped = pytest.mark.skipif(not STORIES.exists(), reason="emonn/corpus/stories.jsonl is not merged yet")


def gibberish(rng: np.random.Generator, lang: str) -> str:
    """A random text of valid length that shares no opening or long run with another: English 'words' of
    consonants only and Japanese hiragana, so no forbidden word can occur by chance."""
    if lang == "en":
        return " ".join("".join(rng.choice(list("bcdfghjklmnpqrstvwxz"), 5)) for _ in range(90))
    return "".join(rng.choice(list("あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよ"), 200))


def frame(seed: int = 0) -> pl.DataFrame:
    """A valid corpus: two stories per emotion (afraid, calm) and language, on two topics."""
    rng = np.random.default_rng(seed)
    rows = [{"id": f"{lang}-{emotion}-{i}", "emotion": emotion, "lang": lang, "topic": ("commute", "cooking")[i],
             "text": gibberish(rng, lang)} for lang in ("en", "ja") for emotion in ("afraid", "calm") for i in (0, 1)]
    return pl.DataFrame(rows)


def edit(base: pl.DataFrame, row_id: str, **values) -> pl.DataFrame:
    return base.with_columns(pl.when(pl.col("id") == row_id).then(pl.lit(value)).otherwise(pl.col(name)).alias(name)
                             for name, value in values.items())


def text_of(base: pl.DataFrame, row_id: str) -> str:
    return base.filter(pl.col("id") == row_id)["text"][0]


def found(problems: list[corpus.Problem]) -> set[tuple[str, str]]:
    return {(problem.id, problem.kind) for problem in problems}


def test_the_synthetic_corpus_is_valid():
    assert corpus.validate(frame()) == []


@shipped
def test_shipped_corpus_passes_validation():
    for path in (STORIES, NEUTRAL):
        problems = corpus.validate(corpus.read(path))
        assert problems == [], f"{path.name}: {len(problems)} problems, e.g. {problems[:3]}"


@shipped
def test_shipped_corpus_follows_its_design():
    """>= 24 stories per emotion and language on the seeded design's topics; >= 60 neutral texts per language."""
    stories, neutral = corpus.read(STORIES), corpus.read(NEUTRAL)
    counts = stories.group_by("lang", "emotion", "topic").len().rename({"len": "stories"})
    design = corpus.design()
    assert counts.join(design, on=["lang", "emotion", "topic", "stories"], how="anti").is_empty()
    assert design.join(counts, on=["lang", "emotion", "topic", "stories"], how="anti").is_empty()
    per = stories.group_by("lang", "emotion").len()
    assert per.height == 60 and per["len"].min() >= 24 and stories.height >= 1440
    assert all(neutral.filter(pl.col("lang") == lang).height >= 60 for lang in ("en", "ja"))


def test_design_is_balanced_seeded_and_shares_no_topic_pattern_across_languages():
    from emonn import baselines

    design = corpus.design()
    assert design.equals(corpus.design()) and not design.equals(corpus.design(seed=1))
    for lang in ("en", "ja"):  # every topic serves equally many emotions, every emotion has the same topic count
        part = design.filter(pl.col("lang") == lang)
        assert part.group_by("topic").len()["len"].n_unique() == 1
        assert part.group_by("emotion").len()["len"].unique().to_list() == [corpus.TOPICS_PER_EMOTION]
    # the stories of one emotion in the two languages never share a topic
    assert design.filter(pl.col("lang") == "en").join(design.filter(pl.col("lang") == "ja"),
                                                      on=["emotion", "topic"]).is_empty()
    # the emotion x emotion topic-overlap patterns of the languages are unrelated (|Spearman| < 0.2)
    rows = design.select("lang", "emotion", "topic", pl.int_ranges("stories").alias("copy")).explode("copy")
    names = corpus.emotion_names()
    sims = [baselines.topic_similarity(rows.filter(pl.col("lang") == lang), names) for lang in ("en", "ja")]
    assert abs(stats.rsa(*sims)) < 0.2


@shipped
def test_cli_validates_the_shipped_files_by_default():
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("0 problem(s) in stories.jsonl")


def test_cli_prints_every_problem_with_row_ids_then_a_count(tmp_path):
    base = frame()
    bad = edit(edit(base, "en-afraid-0", text="too short"), "ja-calm-1", emotion="glee")
    bad.write_ndjson(tmp_path / "bad.jsonl")
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "bad.jsonl")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.startswith("bad.jsonl: en-afraid-0: length") for line in lines)
    assert any(line.startswith("bad.jsonl: ja-calm-1: unknown emotion") for line in lines)
    assert lines[-1] == f"{len(corpus.validate(bad))} problem(s) in bad.jsonl (8 rows)"


def test_cli_reports_an_unreadable_file_on_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 1 and "corpus file not found" in result.output


# ---------------------------------------------------------------- each kind of violation, one case each
def test_missing_columns(tmp_path):
    frame().drop("topic", "lang").write_ndjson(tmp_path / "c.jsonl")
    with pytest.raises(EmonnError, match="lacks column"):
        corpus.read(tmp_path / "c.jsonl")


def test_empty_text():
    assert found(corpus.validate(edit(frame(), "en-calm-1", text="  "))) == {("en-calm-1", "empty text")}


def test_duplicate_text():
    base = frame()
    problems = corpus.validate(edit(base, "en-calm-1", text=text_of(base, "en-calm-0")))
    assert ("duplicate text", "appears more than once") in {(p.kind, p.detail) for p in problems}


def test_duplicate_id():
    assert found(corpus.validate(edit(frame(), "en-calm-1", id="en-calm-0"))) == {("en-calm-0", "duplicate id")}


def test_unknown_emotion():
    # calm keeps one story in English: that is also reported as unbalanced
    assert ("en-calm-1", "unknown emotion") in found(corpus.validate(edit(frame(), "en-calm-1", emotion="glee")))


def test_unknown_language():
    problems = corpus.validate(edit(frame(), "en-calm-1", lang="fr"))
    assert ("en-calm-1", "unknown language") in found(problems)


@pytest.mark.parametrize("lang, count", [("en", 69), ("en", 161), ("ja", 139), ("ja", 321)])
def test_length_out_of_bounds(lang, count):
    base = frame()
    row_id = f"{lang}-afraid-1"
    units = text_of(base, row_id).split() if lang == "en" else list(text_of(base, row_id))
    units = (units * 3)[:count]
    text = " ".join(units) if lang == "en" else "".join(units)
    problems = corpus.validate(edit(base, row_id, text=text))
    assert (row_id, "length") in found(problems)
    assert corpus.length(text, lang) == count


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_forbidden_word(lang):
    base = frame()
    word = corpus.forbidden()[lang]["afraid"][0]
    text = text_of(base, f"{lang}-afraid-1")
    text = f"{text[:-8]} {word}" if lang == "en" else text[:-len(word)] + word
    assert found(corpus.validate(edit(base, f"{lang}-afraid-1", text=text))) == {(f"{lang}-afraid-1", "forbidden word")}


def test_forbidden_word_matches_english_derivations_case_insensitively():
    stem = corpus.forbidden()["en"]["afraid"][0]
    assert corpus.forbidden_hit(f"Suddenly {stem.capitalize()}ing things", "en", "afraid") == stem
    assert corpus.forbidden_hit(f"un{stem}", "en", "afraid") is None  # a word start, not any substring


def test_unbalanced_counts():
    base = frame()
    rng = np.random.default_rng(1)
    extra = pl.DataFrame([{"id": f"en-afraid-x{i}", "emotion": "afraid", "lang": "en", "topic": "garden",
                           "text": gibberish(rng, "en")} for i in range(2)])
    assert found(corpus.validate(pl.concat([base, extra]))) == {("en/calm", "unbalanced")}  # 2 vs 4
    assert ("ja/calm", "unbalanced") in found(corpus.validate(base.filter(pl.col("id") != "ja-calm-1")))  # 1 story


def test_near_duplicate_opening():
    base = frame()
    opening = " ".join(text_of(base, "en-afraid-0").split()[:3])
    text = f"{opening} {' '.join(text_of(base, 'en-calm-1').split()[3:])}"
    assert found(corpus.validate(edit(base, "en-calm-1", text=text))) == {("en-calm-1", "near-duplicate")}


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_shared_long_ngram(lang):
    base = frame()
    n = corpus.SHARED_RUN[lang]
    source, target = text_of(base, f"{lang}-afraid-0"), text_of(base, f"{lang}-calm-1")
    if lang == "en":
        words = target.split()
        text = " ".join(words[:40] + source.split()[30:30 + n] + words[40 + n:])
    else:
        text = target[:100] + source[50:50 + n] + target[100 + n:]
    problems = corpus.validate(edit(base, f"{lang}-calm-1", text=text))
    assert found(problems) == {(f"{lang}-calm-1", "near-duplicate")}
    assert "shares" in problems[0].detail and f"{lang}-afraid-0" in problems[0].detail
    shorter = text.replace(source[50:50 + n], source[50:50 + n - 1] + "ん") if lang == "ja" else None
    if shorter:  # one character less than the shared run is not a near-duplicate
        assert corpus.validate(edit(base, f"{lang}-calm-1", text=shorter)) == []


def test_neutral_text_with_an_emotion_word():
    base = frame()
    word = corpus.forbidden()["en"]["calm"][0]
    neutral = edit(base, "en-afraid-0", emotion="neutral", text=f"{text_of(base, 'en-afraid-0')[:-8]} {word}")
    problems = corpus.validate(neutral.filter(pl.col("emotion") == "neutral"))
    assert {(p.id, p.kind) for p in problems} == {("en-afraid-0", "forbidden word")}
    assert any("(calm)" in p.detail for p in problems)  # the word may belong to several emotions' lists


def test_every_problem_is_reported_at_once():
    base = frame()
    bad = edit(edit(edit(base, "en-afraid-0", text="short"), "ja-calm-0", lang="fr"), "en-calm-1", emotion="glee")
    assert {("en-afraid-0", "length"), ("ja-calm-0", "unknown language"),
            ("en-calm-1", "unknown emotion")} <= found(corpus.validate(bad))


# ---------------------------------------------------------------- loader
def test_load_filters_by_language_and_emotion(tmp_path):
    frame().write_ndjson(tmp_path / "c.jsonl")
    loaded = corpus.load(tmp_path / "c.jsonl", langs=["ja"], emotions=["calm"])
    assert loaded["id"].to_list() == ["ja-calm-0", "ja-calm-1"]
    assert loaded.columns == list(corpus.COLUMNS)


def test_load_errors_on_an_absent_emotion_or_language(tmp_path):
    frame().write_ndjson(tmp_path / "c.jsonl")
    with pytest.raises(EmonnError, match="emotion 'sad' not in corpus c.jsonl"):
        corpus.load(tmp_path / "c.jsonl", emotions=["sad"])
    with pytest.raises(EmonnError, match="lang 'fr' not in corpus"):
        corpus.load(tmp_path / "c.jsonl", langs=["en", "fr"])


def test_load_validates_the_file(tmp_path):
    edit(frame(), "en-afraid-0", text="short").write_ndjson(tmp_path / "c.jsonl")
    with pytest.raises(EmonnError, match="1 problem.*en-afraid-0: length"):
        corpus.load(tmp_path / "c.jsonl")


def test_load_errors_on_malformed_files(tmp_path):
    lines = [json.dumps(row) for row in frame().to_dicts()]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines[:3] + ['{"id": "x", "text": '] + lines[3:]) + "\n")
    with pytest.raises(EmonnError, match="cannot read corpus file"):
        corpus.load(tmp_path / "bad.jsonl")
    with pytest.raises(EmonnError, match="not found"):
        corpus.load(tmp_path / "missing.jsonl")
    frame().write_ndjson(tmp_path / "c.json")
    with pytest.raises(EmonnError, match="must be .jsonl, .csv or .parquet"):
        corpus.load(tmp_path / "c.json")


def test_jsonl_csv_and_parquet_load_identically(tmp_path):
    base = frame()
    base.write_ndjson(tmp_path / "c.jsonl")
    base.write_csv(tmp_path / "c.csv")
    base.write_parquet(tmp_path / "c.parquet")
    loaded = [corpus.load(tmp_path / f"c.{ext}") for ext in ("jsonl", "csv", "parquet")]
    assert loaded[0].equals(base) and loaded[1].equals(base) and loaded[2].equals(base)


@shipped
def test_load_shipped_stories_and_neutral_texts():
    stories = corpus.load(langs=["en"], emotions=["afraid", "calm"])
    assert set(stories["emotion"]) == {"afraid", "calm"} and set(stories["lang"]) == {"en"}
    neutral = corpus.load(neutral=True)
    assert set(neutral["emotion"]) == {"neutral"}


@shipped
@pytest.mark.real
def test_stories_carry_emotion_signal_across_topics(smollm2):
    """Leave-one-topic-out: centered emotion centroids from the other topics classify a topic's stories far
    above chance (1/30) at SmolLM2's best layer (bench/corpus_signal.py reports every layer)."""
    stories = corpus.load(langs=["en"])
    acts = extract.activations(smollm2, stories["text"].to_list(), progress=False)
    labels, topics = stories["emotion"].to_numpy(), stories["topic"].to_numpy()
    best = max(stats.nearest_centroid_accuracy(acts[:, layer], labels, topics) for layer in range(acts.shape[1]))
    assert best > 0.3
