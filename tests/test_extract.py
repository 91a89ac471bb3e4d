import numpy as np
import pytest
import torch
from nnsight.modeling.processing import positions

from emonn import EmonnError, extract
from emonn.extract import activations, batches
from emonn.reducers import mean_from
from emonn.runs import ActivationCache
from conftest import SENTENCES, crash_after, tiny_model

STORIES = [
    "The train was late again, and Mira counted the cracks in the platform tiles while the board blinked.",
    "He set the table for four, then took one plate away and sat looking at the empty chair.",
    "Rain hammered the tin roof all night; by morning the garden path had turned into a small brown river.",
    "She folded the letter twice, put it in her coat pocket, and walked the long way round the park.",
    "The kettle clicked off. Outside, a dog barked at a delivery van that had stopped in the wrong street.",
    "Two goals down at half time, the team sat in silence while the coach drew arrows on the whiteboard.",
    "Grandma's recipe card was stained with butter, and the handwriting slanted more on every line.",
    "The interview room smelled of new carpet; a clock on the wall ticked louder than it had any right to.",
    "Kenji taped the last box shut and wrote KITCHEN on it in letters much bigger than necessary.",
    "A moth circled the lamp above the bookshop door long after the shutters had come down.",
    "At the clinic the numbers on the screen moved slowly, and nobody in the waiting room spoke.",
    "The violin case sat open on the bed, its velvet lining worn pale where the bow usually rested.",
    "Fireworks popped over the harbour as the crowd surged toward the stalls selling grilled squid.",
    "He read the electricity bill three times, then opened the window although the evening was cold.",
    "The bus climbed into the hills, and the phone signal dropped to one bar, then none at all.",
    "Her sister's voice on the phone sounded thin, as if it came from the bottom of a well.",
]


def _hf_mean(model, texts, start):
    """The same mean from plain HF `output_hidden_states` (no nnsight)."""
    enc = model.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.hf(**enc, position_ids=positions(enc["attention_mask"]), output_hidden_states=True)
    w = mean_from(enc["attention_mask"], start)
    return torch.stack([torch.bmm(w[:, None], h).squeeze(1) for h in out.hidden_states[1:]], 1).numpy()


def _assert_close_to_scale(a, b, rtol=1e-5):
    """Equal up to float32 rounding at each layer's scale (residual streams reach ~1e4, where one float32
    step is ~1e-3: an absolute tolerance alone would test the rounding, not the code)."""
    scale = np.abs(b).max(axis=(0, 2), keepdims=True)
    assert np.abs(a - b).max() <= 1e-4 + rtol * scale.max(), np.abs(a - b).max()
    np.testing.assert_allclose(a, b, atol=1e-4 + float(rtol * scale.max()))


def test_batches_are_length_sorted_under_the_token_budget():
    groups = batches([5, 1, 9, 3, 3], batch_tokens=10)
    assert [i for g in groups for i in g] == [1, 3, 4, 0, 2]
    assert all(len(g) * max([5, 1, 9, 3, 3][i] for i in g) <= 10 or len(g) == 1 for g in groups)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_tiny_batched_equals_single_and_hf(arch):
    model = tiny_model(arch, bos=arch == "gemma3_text")
    batched = activations(model, SENTENCES, start=2, progress=False)
    single = np.concatenate([activations(model, [t], start=2, progress=False) for t in SENTENCES])
    _assert_close_to_scale(batched, single)
    hf = _hf_mean(model, SENTENCES, start=2)
    _assert_close_to_scale(batched[:, :-1], hf[:, :-1])  # HF's last hidden state has the final norm applied


def test_layers_select_and_last_reducer(tiny):
    every = activations(tiny, SENTENCES, start=0, progress=False)
    assert np.array_equal(activations(tiny, SENTENCES, start=0, layers=[1, -1], progress=False), every[:, [1, 3]])
    last = activations(tiny, SENTENCES, reducer="last", progress=False)
    assert last.shape == (len(SENTENCES), 4, 32) and not np.allclose(last, every)


def test_bad_input(tiny):
    with pytest.raises(EmonnError, match="no texts"):
        activations(tiny, [])
    with pytest.raises(EmonnError, match="text #1 is empty"):
        activations(tiny, ["the cat", "  "])
    with pytest.raises(EmonnError, match="unknown reducer 'max'"):
        activations(tiny, ["the cat"], reducer="max")
    with pytest.raises(EmonnError, match="layer 9 out of range"):
        activations(tiny, ["the cat"], layers=[9])


def test_short_texts_warn(tiny):
    with pytest.warns(UserWarning, match="1 texts have <= 3 tokens"):
        activations(tiny, ["the red house", "the cat sat on the mat"], start=3, progress=False)


def test_cache_resumes_after_a_crash(tiny, tmp_path, monkeypatch):
    cache = ActivationCache(tmp_path)
    texts = [f"{a} {b} {c}" for a in ("the", "a", "it") for b in ("cat", "dog", "sun") for c in ("sat", "ran")] * 1
    texts += [t + " on the mat" for t in texts]  # 36 distinct texts
    monkeypatch.setattr(extract, "CHUNK", 8)
    expected = activations(tiny, texts, start=0, progress=False)
    real = extract.forward_pooled
    monkeypatch.setattr(extract, "forward_pooled", crash_after(2, real))
    with pytest.raises(KeyboardInterrupt):
        activations(tiny, texts, start=0, batch_tokens=40, cache=cache, progress=False)
    saved = len(cache.lookup([extract.text_key(t) for t in texts]))
    assert 8 <= saved < len(texts)
    monkeypatch.setattr(extract, "forward_pooled", real)
    resumed = activations(tiny, texts, start=0, batch_tokens=40, cache=cache, progress=False)
    np.testing.assert_allclose(resumed, expected, atol=1e-5)
    monkeypatch.setattr(extract, "forward_pooled", lambda *a, **k: pytest.fail("recomputed cached activations"))
    assert np.array_equal(activations(tiny, texts, start=0, cache=cache, progress=False), resumed)  # all cached


@pytest.mark.real
def test_real_batch_of_one_equals_padded_batch_of_16(smollm2):
    batched = activations(smollm2, STORIES, start=4, batch_tokens=10_000, progress=False)
    single = np.concatenate([activations(smollm2, [s], start=4, progress=False) for s in STORIES])
    _assert_close_to_scale(batched, single)


@pytest.mark.real
def test_real_nnsight_reading_equals_hf_hidden_states(smollm2):
    ours = activations(smollm2, STORIES[:6], start=4, batch_tokens=10_000, progress=False)
    _assert_close_to_scale(ours[:, :-1], _hf_mean(smollm2, STORIES[:6], start=4)[:, :-1])


@pytest.mark.real
def test_real_remote_check_equals_local(smollm2):
    local = activations(smollm2, STORIES[:4], start=4, progress=False)
    checked = activations(smollm2.with_remote("check"), STORIES[:4], start=4, progress=False)
    # the check runs as the server does, under bfloat16 autocast: float32 out, equal to bfloat16 precision
    cosine = (local * checked).sum(-1) / (np.linalg.norm(local, axis=-1) * np.linalg.norm(checked, axis=-1))
    assert checked.dtype == np.float32 and cosine.min() > 0.999


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_embeddings_equal_hf_input_embeddings_and_cache(arch, tmp_path, monkeypatch):
    model = tiny_model(arch)
    enc = model.tokenizer(SENTENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        h = model.hf.get_input_embeddings()(enc["input_ids"])  # Gemma's scaled embedding included
    w = mean_from(enc["attention_mask"], 2)
    expected = (w.unsqueeze(-1) * h).sum(1).numpy()
    cache = ActivationCache(tmp_path / "emb")
    got = extract.embeddings(model, SENTENCES, start=2, batch_tokens=16, cache=cache, progress=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    checked = extract.embeddings(model.with_remote("check"), SENTENCES, start=2, progress=False)  # NDIF-safe trace
    np.testing.assert_allclose(checked, got, atol=1e-6)
    monkeypatch.setattr(extract, "forward_embedding", lambda *a, **k: pytest.fail("recomputed cached embeddings"))
    np.testing.assert_array_equal(extract.embeddings(model, SENTENCES, start=2, cache=cache, progress=False), got)
