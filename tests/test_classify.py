import re

import numpy as np
import polars as pl
import pytest

from emonn import EmonnError, classify, corpus, stats
from emonn import textmetrics as tm
from conftest import WORDS, tiny_tokenizer

# Emotion words carry the label; topic words are shared by both emotions (the held-out topic is unseen).
CUES = {"happy": "happy sun friend", "sad": "sad rain night"}


def _frame() -> pl.DataFrame:
    rows, rng = [], np.random.default_rng(0)
    for topic in ("house", "river", "tree", "letter"):
        for emotion, cue in CUES.items():
            for k in range(3):
                noise = " ".join(rng.choice(WORDS, 4))
                words = cue.split()[: 1 + k % 3]
                rows.append({"id": f"{topic}-{emotion}-{k}", "emotion": emotion, "lang": "en", "topic": topic,
                             "text": f"{topic} {' '.join(words)} {noise}"})
    return pl.DataFrame(rows)


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in encoder: word counts over WORDS, unit length."""
    x = np.array([[re.findall(r"\w+", text).count(w) for w in WORDS] for text in texts], dtype=float) + 1e-3
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_centroid_classifier_accuracy_matches_stats_and_scores_are_probabilities():
    frame = _frame()
    clf = classify.centroid_classifier(frame, encoder=bag_of_words, template=None)
    x = bag_of_words(frame["text"].to_list())
    expected = stats.nearest_centroid_accuracy(x, frame["emotion"].to_numpy(), frame["topic"].to_numpy())
    assert clf.accuracy == pytest.approx(expected) and clf.accuracy > 0.8
    assert clf.labels == ("happy", "sad")
    assert "leave-one-topic-out over 24 stories of 2 emotions in 4 topics" in clf.accuracy_note
    scores = clf.scores(["happy sun", "rain night sad", "cat"])
    assert scores.shape == (3, 2) and np.allclose(scores.sum(1), 1)
    assert scores[0, 0] > 0.5 > scores[1, 0]
    assert clf.scores([]).shape == (0, 2)


def test_prototype_sentences_add_the_emotion_word():
    frame = _frame()
    plain = classify.centroid_classifier(frame, encoder=bag_of_words, template=None)
    worded = classify.centroid_classifier(frame, encoder=bag_of_words)
    assert "prototype 'I feel {}.'" in worded.accuracy_note and "prototype" not in plain.accuracy_note
    # "happy" alone: the prototype "I feel happy." raises its evidence for happy beyond the centroid's
    assert worded.scores(["happy"])[0, 0] > plain.scores(["happy"])[0, 0] > 0.5


def test_centroid_cosines_mark_labels_without_training_rows():
    x = np.eye(3)
    cos = classify.centroid_cosines(x[:2], np.array(["a", "b"]), x, ["a", "b", "c"])
    assert cos.shape == (3, 3) and np.isneginf(cos[:, 2]).all()
    assert cos[0, 0] == pytest.approx(1.0) and cos[1, 1] == pytest.approx(1.0)


def test_columns_take_the_named_labels_and_require_names_a_missing_one():
    clf = classify.centroid_classifier(_frame(), encoder=bag_of_words, template=None)
    texts = ["happy sun", "rain night sad", "cat"]
    columns = clf.columns(texts, ["sad", "happy"])
    assert list(columns) == ["p_sad", "p_happy"]
    assert np.array_equal(columns["p_sad"], clf.scores(texts)[:, 1])
    assert np.array_equal(columns["p_happy"], clf.scores(texts)[:, 0])
    clf.require(["happy"])  # a known label passes
    with pytest.raises(EmonnError, match="has no label for 'calm' \\(labels: happy, sad\\)"):
        clf.columns(texts, ["happy", "calm"])


def test_measure_gives_the_textmetrics_of_a_text():
    text = "the cat sat on the mat 猫"
    pieces = text.split(" ")
    decode = lambda ids: " ".join(pieces[: len(ids)])  # noqa: E731 - one word per token
    metrics = classify.measure(text, list(range(len(pieces))), decode, "en")
    assert list(metrics) == ["n_units", "distinct1", "distinct2", "repeat", "compression", "foreign_letters",
                             "letters", "foreign_tokens", "lettered_tokens"]
    assert metrics["n_units"] == len(tm.units(text)) and metrics["distinct2"] == tm.distinct(text, 2)
    assert (metrics["foreign_letters"], metrics["letters"]) == (1, 18)
    assert (metrics["foreign_tokens"], metrics["lettered_tokens"]) == (1, 7)


def _generations() -> pl.DataFrame:
    """Two prompts x (baseline, steered towards happy, random direction); prompt 1's happy row loops."""
    texts = {(0, "none"): "rain night river old", (0, "happy"): "happy sun friend", (0, "random-0"): "tree letter",
             (1, "none"): "sad rain night", (1, "happy"): "happy sun " * 8, (1, "random-0"): "house river"}
    rows = []
    for (prompt_id, vector), text in texts.items():
        condition = {"none": "baseline", "happy": "emotion"}.get(vector, "random")
        ppl = 60.0 if vector == "random-0" and prompt_id == 0 else 10.0  # 6 x the baseline's: explosive
        rows.append({"decoding": "greedy", "prompt_id": prompt_id, "condition": condition, "vector": vector,
                     "text": text, "ppl": ppl, **classify.measure(text, text.split(), lambda ids: " ".join(ids), "en")})
    return pl.DataFrame(rows)


def test_judge_scores_each_text_against_its_own_baseline():
    clf = classify.centroid_classifier(_frame(), encoder=bag_of_words, template=None)
    frame = _generations()
    judged = classify.judge(frame, clf, ["happy", "sad"], tm.Thresholds(margin=0.1))
    assert judged.height == frame.height
    scores = clf.scores(frame["text"].to_list())
    assert np.allclose(judged["p_happy"], scores[:, 0]) and np.allclose(judged["p_sad"], scores[:, 1])
    by = {(r["prompt_id"], r["vector"]): r for r in judged.iter_rows(named=True)}
    for prompt_id in (0, 1):
        base, steered = by[prompt_id, "none"], by[prompt_id, "happy"]
        assert base["ppl_ratio"] == 1 and base["shift"] is None and by[prompt_id, "random-0"]["shift"] is None
        assert steered["shift"] == pytest.approx(steered["p_happy"] - base["p_happy"])
    assert by[0, "happy"]["shift"] > 0.1 and by[0, "happy"]["regime"] == "surgical"
    assert by[1, "happy"]["regime"] == "repetitive" and by[0, "random-0"]["regime"] == "explosive"
    assert by[0, "random-0"]["ppl_ratio"] == pytest.approx(6.0)
    assert set(judged.filter(pl.col("condition") == "baseline")["regime"]) <= {"inert", "repetitive", "explosive"}


def test_regime_shares_and_leakage_pool_each_cell():
    frame = pl.DataFrame({"cell": ["a", "a", "a", "b"], "regime": ["inert", "surgical", "inert", "explosive"],
                          "lettered_tokens": [4, 6, 0, 10], "foreign_tokens": [1, 2, 0, 0],
                          "letters": [10, 20, 0, 30], "foreign_letters": [0, 5, 0, 0]})
    shares = classify.regime_shares(frame, ["cell"])
    assert shares.columns == ["cell", *tm.REGIMES, "n", "dominant", "label"]
    a = shares.row(0, named=True)
    assert (a["inert"], a["surgical"], a["n"], a["dominant"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 3,
                                                                   "inert")
    assert a["label"] == "S 33%\nI 67%\nR 0%\nE 0%" and shares.row(1, named=True)["dominant"] == "explosive"
    leaks = classify.leakage(frame, ["cell"]).row(0, named=True)
    assert leaks["generations"] == 3 and leaks["foreign_token_share"] == pytest.approx(3 / 10)
    assert leaks["foreign_letter_share"] == pytest.approx(5 / 30) and leaks["with_foreign"] == 1


def test_centroid_classifier_needs_two_topics():
    with pytest.raises(EmonnError, match="at least two topics"):
        classify.centroid_classifier(_frame().with_columns(topic=pl.lit("one")), encoder=bag_of_words)


def test_hugging_face_classifier_from_a_folder(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    tok = tiny_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3, id2label={0: "joy", 1: "sadness", 2: "neutral"},
                        label2id={"joy": 0, "sadness": 1, "neutral": 2})
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    frame = _frame().with_columns(emotion=pl.col("emotion").replace({"happy": "joyful"}))
    clf = classify.load(str(tmp_path), frame)
    assert clf.labels == ("joyful", "sad", "neutral")
    assert clf.scores(["the cat", "a dog ran"]).shape == (2, 3)
    assert np.allclose(clf.scores(["the cat"]).sum(1), 1)
    assert 0 <= clf.accuracy <= 1 and clf.accuracy_note.startswith("24 stories of the 2 corpus emotions")


def test_unknown_classifier_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmonnError, match="could not load classifier 'nobody/no-such-classifier'"):
        classify.load("nobody/no-such-classifier", _frame())


@pytest.mark.real
def test_minilm_judge_beats_chance_on_the_corpus_and_reads_explicit_emotion():
    emotions = ["joyful", "sad", "angry", "afraid", "calm", "disgusted"]
    clf = classify.load(classify.DEFAULT, corpus.load(langs=["en"], emotions=emotions))
    assert clf.accuracy > 2 / len(emotions)
    probes = {"joyful": "I am so happy today! Everything is wonderful and I can't stop smiling.",
              "sad": "I'm so sad. I miss her every day and I cry myself to sleep.",
              "angry": "I'm furious with you! How dare you lie to me again!",
              "afraid": "I'm terrified. Something is moving in the dark and I can't breathe.",
              "calm": "I feel calm and relaxed, breathing slowly by the quiet lake.",
              "disgusted": "That's disgusting. The meat is rotten and covered in maggots."}
    predicted = np.asarray(clf.labels)[clf.scores(list(probes.values())).argmax(1)]
    assert np.sum(predicted == np.asarray(list(probes))) >= 5, predicted
