import json
import re

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import tiny_model, tiny_tokenizer

from emonn import EmonnError, corpus, models
from emonn.corpus import generate as gen
from emonn.corpus.__main__ import cli

TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
LOOSE = {"en": (5, 160), "ja": (5, 320)}


def story(seed: int, words: int = 20) -> str:
    """A distinct 'story' of consonant words (no forbidden word, no shared run with another seed)."""
    rng = np.random.default_rng(seed)
    return " ".join("".join(rng.choice(list("bcdfghjklmnpqrstvwxz"), 6)) for _ in range(words)) + "."


def chatty(model):
    model.tokenizer.chat_template = TEMPLATE
    return model


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prompts_name_the_emotion_and_topic_in_the_cells_language():
    en = gen.prompt(gen.Cell("en", "afraid", "commute"), gen.parse_bounds([]))
    assert "feels afraid" in en and "a morning commute to work or school" in en and "70 to 160 words" in en
    ja = gen.prompt(gen.Cell("ja", "afraid", "commute"), gen.parse_bounds(["ja=100-200"]))
    assert "「恐れ」" in ja and "通勤・通学の朝" in ja and "100〜200字" in ja


def test_cells_cover_the_product_and_reject_unknown_names():
    cells = gen.cells(["en", "ja"], ["afraid", "calm"], ["commute", "pet", "exam"])
    assert len(cells) == 12 and len(set(cells)) == 12
    assert len(gen.cells(["en"])) == 30 * corpus.topics().height
    for args, kind in ((["fr"], "lang"), (["en"], "emotion"), (["en"], "topic")):
        with pytest.raises(EmonnError, match=f"unknown {kind}"):
            gen.cells(args, ["glee"] if kind == "emotion" else None, ["space"] if kind == "topic" else None)


def test_parse_bounds():
    assert gen.parse_bounds([]) == {"en": (70, 160), "ja": (140, 320)}
    assert gen.parse_bounds(["en=10-20"])["en"] == (10, 20)
    for bad in ("en=20-10", "fr=1-2", "en:1-2"):
        with pytest.raises(EmonnError, match="--bounds"):
            gen.parse_bounds([bad])


def test_clean_drops_a_title_and_the_unfinished_last_sentence():
    raw = "Title: The Bus\n\nMara ran. She missed it!\nThe doors shut and she"
    assert gen.clean(raw, "en") == "Mara ran. She missed it!"
    assert gen.clean("ミカは走った。「待って」\nドアが閉まり", "ja") == "ミカは走った。「待って」"
    assert gen.clean("no sentence end at all", "en") == "no sentence end at all"


def test_chat_needs_a_template_and_does_not_double_bos():
    model = tiny_model(bos=True)
    tokenizer = model.tokenizer
    with pytest.raises(EmonnError, match="chat template"):
        model.chat("the cat")
    tokenizer.chat_template = TEMPLATE
    text = model.chat("the cat")
    assert tokenizer(text)["input_ids"] == [3, tokenizer.convert_tokens_to_ids("the"),
                                            tokenizer.convert_tokens_to_ids("cat")]


def test_generation_passes_the_strict_remote_check():
    model = chatty(tiny_model())
    options = dict(max_new_tokens=6, temperature=1.0, seed=3)
    local = gen.complete(model, ["the cat", "a dog ran"], **options)
    assert gen.complete(model.with_remote("check"), ["the cat", "a dog ran"], **options) == local


def test_run_refuses_a_language_the_model_does_not_write(tmp_path):
    with pytest.raises(EmonnError, match="writes only en, not ja"):
        gen.run(tiny_model(), gen.cells(["ja"], ["afraid"], ["pet"]), per_cell=1, out=tmp_path / "g.jsonl",
                bounds=LOOSE)


def test_filters_drop_stories_before_they_are_saved(tmp_path, monkeypatch):
    shipped = pl.DataFrame([{"id": "old-1", "emotion": "calm", "lang": "en", "topic": "pet", "text": story(99)}])
    afraid = corpus.forbidden()["en"]["afraid"][0]
    answers = iter([
        # afraid, afraid, calm, calm: a forbidden word, too short, a copy of the shipped story, kept
        [story(1)[:-1] + f" {afraid}.", "too short.", story(99), story(2)],
        # afraid, afraid, calm: repeats the opening of the story kept just before, kept, kept
        [story(2, 25), story(3), story(5)],
        [story(4)],  # afraid: kept
    ])
    prompts = []

    def fake(model, messages, **kwargs):
        prompts.append(messages)
        return next(answers)[:len(messages)]

    monkeypatch.setattr(gen, "complete", fake)
    cells = gen.cells(["en"], ["afraid", "calm"], ["pet"])
    outcome = gen.run(chatty(tiny_model()), cells, per_cell=2, out=tmp_path / "g.jsonl", bounds=LOOSE,
                      against=shipped, batch_size=4, progress=False)
    assert outcome.counts == {"generated": 8, "forbidden word": 1, "length": 1, "near-duplicate": 2, "kept": 4}
    assert outcome.missing == {}
    assert [len(batch) for batch in prompts] == [4, 3, 1]  # one prompt per missing story
    rows = read(tmp_path / "g.jsonl")
    assert [row["id"] for row in rows] == ["gen-en-calm-pet-01", "gen-en-afraid-pet-01", "gen-en-calm-pet-02",
                                           "gen-en-afraid-pet-02"]
    assert [row["text"] for row in rows] == [story(2), story(3), story(5), story(4)]
    assert corpus.read(tmp_path / "g.jsonl").columns == list(corpus.COLUMNS)


def test_attempts_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "complete", lambda model, messages, **kwargs: ["short."] * len(messages))
    cells = gen.cells(["en"], ["afraid"], ["pet", "exam"])
    outcome = gen.run(chatty(tiny_model()), cells, per_cell=2, out=tmp_path / "g.jsonl", bounds=LOOSE, attempts=3,
                      progress=False)
    assert outcome.counts["generated"] == 2 * 2 * 3 and outcome.counts["kept"] == 0
    assert outcome.missing == {cell: 2 for cell in cells}
    assert not (tmp_path / "g.jsonl").exists()


def test_an_interrupted_run_resumes_without_regenerating_finished_cells(tmp_path, monkeypatch):
    cells = gen.cells(["en"], ["afraid", "calm"], ["pet", "exam"])
    asked, seeds = [], iter(range(100))

    def fake(model, messages, **kwargs):
        if len(asked) == 2:
            raise KeyboardInterrupt  # killed during the third batch
        asked.append(messages)
        return [story(next(seeds)) for _ in messages]

    monkeypatch.setattr(gen, "complete", fake)
    model, out = chatty(tiny_model()), tmp_path / "g.jsonl"
    with pytest.raises(KeyboardInterrupt):
        gen.run(model, cells, per_cell=1, out=out, bounds=LOOSE, batch_size=1, progress=False)
    assert [row["id"] for row in read(out)] == ["gen-en-afraid-pet-01", "gen-en-afraid-exam-01"]

    def fake_again(model, messages, **kwargs):
        asked.append(messages)
        return [story(next(seeds)) for _ in messages]

    asked.clear()
    monkeypatch.setattr(gen, "complete", fake_again)
    outcome = gen.run(model, cells, per_cell=1, out=out, bounds=LOOSE, batch_size=1, progress=False)
    assert outcome.counts["generated"] == 2 and outcome.missing == {}
    assert [message for batch in asked for message in batch] == [gen.prompt(cell, LOOSE) for cell in cells[2:]]
    rows = read(out)
    assert len({row["id"] for row in rows}) == 4 and len({row["text"] for row in rows}) == 4


def test_cli_generates_with_a_tiny_model_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "load", lambda name, remote=False: chatty(tiny_model()))
    out = tmp_path / "g.jsonl"
    args = ["generate", "--emotions", "afraid,calm", "--topics", "pet,exam", "--per-cell", "2", "--out", str(out),
            "--max-new-tokens", "12", "--bounds", "en=1-160", "--batch-size", "4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = corpus.read(out)
    assert len(rows) == 8 and rows["id"].is_unique().all() and "4/4 cells complete" in result.output
    assert re.search(r"all filters +kept +8\n", result.output)
    again = CliRunner().invoke(cli, args)  # complete: resumes with nothing to do
    assert "generated 0 stories" in again.output and corpus.read(out).equals(rows)


@pytest.mark.real
def test_generate_on_smollm2(smollm2, tmp_path):
    out = tmp_path / "g.jsonl"
    cells = gen.cells(["en"], ["joyful"], ["pet", "garden"])  # one batch of two short stories
    outcome = gen.run(smollm2, cells, per_cell=1, out=out, bounds={"en": (5, 160)}, attempts=1, max_new_tokens=32,
                      progress=False)
    assert outcome.counts["generated"] == 2
    rows = read(out) if out.exists() else []
    assert len(rows) == outcome.counts["kept"] == 2 - len(outcome.missing)
    for row in rows:
        assert row["id"] in ("gen-en-joyful-pet-01", "gen-en-joyful-garden-01")
        assert len(row["text"].split()) >= 5 and corpus.forbidden_hit(row["text"], "en", "joyful") is None
