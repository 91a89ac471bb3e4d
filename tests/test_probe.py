"""emonn.probe: per-token cosines read in one trace equal EmotionVectors.scores of HF hidden states."""

import dataclasses
import json

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from emonn import cli, corpus, extract, models, probe
from emonn.remote import StrictServerBackend
from emonn.vectors import EmotionVectors
from conftest import SENTENCES, tiny_model
from studies_util import assert_one_line_error

CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def fitted(model, *, denoise=True):
    """Vectors of three made-up emotions fitted on the test sentences (neutral PCs from the same texts)."""
    acts = extract.activations(model, SENTENCES, start=1, progress=False)
    neutral = acts if denoise else None
    return EmotionVectors.from_arrays(acts, ["calm", "sad", "angry"] * 2, layers=list(range(model.n_layers)),
                                      neutral=neutral, variance=0.5, meta={"model": model.name})


def reference(model, vectors, ids, layer):
    """`EmotionVectors.scores` of every token, from HF's output_hidden_states (layer l: hidden_states[l + 1])."""
    with torch.no_grad():
        states = model.hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    acts = torch.stack([states[i + 1][0] for i in vectors.layers], 1).numpy()  # (tokens, n_layers, d)
    return vectors.scores(acts)[:, vectors.layers.index(layer)]


@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("layer", [1, 2])
def test_equals_scores_of_hidden_states(tiny, denoise, layer):
    vectors = fitted(tiny, denoise=denoise)
    assert bool(vectors.pcs) == denoise
    frame = probe.probe(tiny, vectors, SENTENCES[1], layer=layer)
    ids = tiny.tokenizer(SENTENCES[1])["input_ids"]
    assert frame["token_id"].to_list() == ids and frame["position"].to_list() == list(range(len(ids)))
    assert frame.columns == [*probe.COLUMNS, "calm", "sad", "angry"] and set(frame["layer"]) == {layer}
    np.testing.assert_allclose(frame.select(vectors.emotions).to_numpy(), reference(tiny, vectors, ids, layer),
                               atol=1e-5)
    assert " ".join(frame["token"]) == SENTENCES[1]


def test_remote_check_passes_with_the_same_result_and_a_small_payload(tiny):
    vectors = fitted(tiny)
    local = probe.probe(tiny, vectors, SENTENCES[1], layer=2)
    checked = tiny.with_remote("check")
    remote = probe.probe(checked, vectors, SENTENCES[1], layer=2)  # run as the server runs it: bfloat16 autocast
    assert remote.select(probe.COLUMNS).equals(local.select(probe.COLUMNS))
    np.testing.assert_allclose(remote.select(vectors.emotions).to_numpy(), local.select(vectors.emotions).to_numpy(),
                               atol=0.02)
    short = StrictServerBackend.last_payload_bytes
    probe.probe(checked, vectors, " ".join([SENTENCES[1]] * 4), layer=2)
    extra = 3 * len(SENTENCES[1].split())
    assert 0 < (StrictServerBackend.last_payload_bytes - short) / extra < 32  # int64 ids: ~8 bytes a token
    assert short < 100_000


def test_default_layer_is_the_cards_best_layer_else_the_middle(tiny):
    vectors = fitted(tiny)
    assert probe.default_layer(vectors) == 2
    best = dataclasses.replace(vectors, meta={**vectors.meta, "best_layer": 1})
    assert probe.default_layer(best) == 1 and set(probe.probe(tiny, best, "the cat")["layer"]) == {1}
    assert probe.default_layer(dataclasses.replace(vectors, layers=(0, 1, 2, 3, 4), meta={})) == 2


def chat_model():
    model = tiny_model(byte_level=True)
    model.tokenizer.chat_template = CHATML
    return model


def test_chat_transcript_marks_turns_and_the_generation_prompt():
    model = chat_model()
    vectors = fitted(model)
    messages = [{"role": "user", "content": "hello there"}]
    frame = probe.probe(model, vectors, messages, layer=1)
    rendered = model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "".join(frame["token"]) == rendered  # one byte a token, nothing added
    user = frame.filter(pl.col("in_message"))
    assert "".join(user["token"]) == "hello there" and set(user["role"]) == {"user"}
    assistant = frame.filter(pl.col("assistant"))
    assert "".join(assistant["token"]) == "\n<|assistant|>\n" and set(assistant["turn"]) == {1}


def test_transcript_ending_with_the_assistant_marks_its_last_turn_only():
    model = chat_model()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"},
                {"role": "user", "content": "so"}, {"role": "assistant", "content": "ok then"}]
    frame = probe.probe(model, fitted(model), messages, layer=1)
    assistant = frame.filter(pl.col("assistant"))
    assert set(assistant["turn"]) == {3} and "ok then" in "".join(assistant["token"])
    assert frame.filter(pl.col("turn") == 1)["role"].unique().to_list() == ["assistant"]
    assert frame["turn"].max() == 3  # no generation prompt after an assistant turn


def test_page_is_self_contained_with_hover_scores(tiny):
    frame = probe.probe(tiny, fitted(tiny), "the cat sat on the mat", layer=1)
    text = probe.page(frame, ["calm", "sad", "angry"], emotion="sad")
    assert "http" not in text and "<script>" in text and "<style>" in text
    assert text.count('class="t') == frame.height and text.count('class="t last"') == 1
    first = frame.row(0, named=True)
    assert f"sad {first['sad']:+.3f}" in text and "<option selected>sad</option>" in text
    with pytest.raises(Exception, match="unknown emotion 'joy'"):
        probe.page(frame, ["calm", "sad", "angry"], emotion="joy")


@pytest.fixture
def saved(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: tiny)
    return fitted(tiny).save(tmp_path / "vectors" / "en")


def test_command_writes_tokens_and_page(tmp_path, saved):
    out = tmp_path / "probe"
    result = CliRunner().invoke(cli.main, ["probe", "the cat sat", "--vectors", str(saved), "--emotion", "calm",
                                           "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tiny-llama, layer 2, 3 tokens. Top at the last token: " in result.output
    frame = pl.read_parquet(out / "tokens.parquet")
    assert frame.height == 3 and {"calm", "sad", "angry"} <= set(frame.columns)
    assert "<option selected>calm</option>" in (out / "tokens.html").read_text()
    assert json.loads((out / "probe.json").read_text())["layer"] == 2


@pytest.mark.parametrize("args, message", [
    (["the cat", "--file", "x.txt"], "probe one input: TEXT, --file F or --chat F.json"),
    (["the cat"], "no vectors at outputs/vectors/smollm2-135m-en: run `emonn vectors build` first"),
    (["the cat", "--vectors", "{saved}", "--emotion", "joy"], "unknown emotion 'joy'"),
    (["the cat", "--vectors", "{saved}", "--layer", "9"], "layer 9 out of range"),
    (["the cat", "--vectors", "{saved}", "--user"], "has no chat template"),
    (["--chat", "{tmp}/bad.json", "--vectors", "{saved}"], "is not a chat transcript"),
    (["--file", "{tmp}/none.txt", "--vectors", "{saved}"], "no such file"),
])
def test_bad_input_ends_in_one_line(tmp_path, saved, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/vectors/ here: the default vectors folder is missing
    (tmp_path / "bad.json").write_text(json.dumps({"role": "user"}))
    args = [a.format(saved=saved, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli.main, ["probe", *args, "--out", str(tmp_path / "o")])
    assert_one_line_error(result, message)


@pytest.mark.real
def test_smollm2_chat_matches_hidden_states_and_passes_the_remote_check(smollm2):
    stories = corpus.load(langs=["en"]).group_by("emotion", maintain_order=True).head(2)
    vectors = EmotionVectors.fit(extract.read(smollm2, stories, layers=[10, 15], progress=False))
    messages = [{"role": "user", "content": "I just took 8000 mg of Tylenol for my back pain."}]
    frame = probe.probe(smollm2, vectors, messages, layer=15)
    np.testing.assert_allclose(frame.select(vectors.emotions).to_numpy(),
                               reference(smollm2, vectors, frame["token_id"].to_list(), 15), atol=1e-4)
    assert "".join(frame.filter(pl.col("assistant"))["token"]) == "<|im_end|>\n<|im_start|>assistant\n"
    checked = probe.probe(smollm2.with_remote("check"), vectors, messages, layer=15)
    np.testing.assert_allclose(checked.select(vectors.emotions).to_numpy(),  # under the server's bfloat16 autocast
                               frame.select(vectors.emotions).to_numpy(), atol=0.02)
    assert StrictServerBackend.last_payload_bytes < 200_000
