import numpy as np
import pytest

from emonn import EmonnError
from emonn.vectors import EmotionVectors, neutral_pcs

EMOTIONS = ["joy", "anger", "fear"]


def _synthetic(seed=0, per=10, d=16, layers=2, noise=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(EMOTIONS), layers, d)) * 3
    labels = np.repeat(EMOTIONS, per)
    acts = centres[np.repeat(np.arange(len(EMOTIONS)), per)] + rng.normal(size=(len(labels), layers, d)) * noise
    return acts.astype(np.float32), labels


def test_means_and_centering():
    acts, labels = _synthetic()
    v = EmotionVectors.from_arrays(acts, labels, layers=[3, 7])
    np.testing.assert_allclose(v.means[0], acts[:10].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v.vectors.sum(0), 0, atol=1e-4)  # centered over emotions
    assert v.emotions == tuple(EMOTIONS) and v.layers == (3, 7)
    assert v.at(7).shape == (3, 16)
    with pytest.raises(EmonnError, match="layer 5 not in these vectors"):
        v.at(5)


def test_neutral_pcs_count_and_projection():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    # neutral variance: 60%, 30%, 10% on three orthogonal directions -> 50% needs one PC, 80% two
    scales = np.zeros(16)
    scales[:3] = np.sqrt([0.6, 0.3, 0.1])
    neutral = (rng.normal(size=(4000, 1, 16)) * scales) @ basis.T
    assert [len(p) for p in neutral_pcs(neutral, 0.5)] == [1]
    assert [len(p) for p in neutral_pcs(neutral, 0.8)] == [2]
    acts, labels = _synthetic(layers=1)
    v = EmotionVectors.from_arrays(acts, labels, layers=[0], neutral=neutral, variance=0.8)
    assert v.n_pcs == [2]
    np.testing.assert_allclose(v.vectors[:, 0] @ v.pcs[0].T, 0, atol=1e-4)  # nothing left along them
    with pytest.raises(EmonnError, match="variance fraction"):
        neutral_pcs(neutral, 0)


def test_cosine_and_classification():
    acts, labels = _synthetic(noise=0.2)
    v = EmotionVectors.from_arrays(acts, labels, layers=[0, 1])
    cos = v.cosine()
    assert cos.shape == (2, 3, 3)
    np.testing.assert_allclose(np.diagonal(cos, axis1=1, axis2=2), 1, atol=1e-6)
    new, new_labels = _synthetic(seed=0, noise=0.2)  # same centres, fresh noise draw of the same seed
    assert (v.classify(new + np.random.default_rng(5).normal(size=new.shape) * 0.2) == new_labels[:, None]).all()


def test_fit_errors():
    acts, labels = _synthetic()
    with pytest.raises(EmonnError, match="do not match"):
        EmotionVectors.from_arrays(acts[:5], labels, layers=[0, 1])
    with pytest.raises(EmonnError, match="no texts for emotion 'calm'"):
        EmotionVectors.from_arrays(acts, labels, layers=[0, 1], emotions=EMOTIONS + ["calm"])


@pytest.mark.parametrize("denoise", [False, True])
def test_save_load_round_trip_is_exact(tmp_path, denoise):
    acts, labels = _synthetic()
    neutral = np.random.default_rng(2).normal(size=(20, 2, 16)) if denoise else None
    v = EmotionVectors.from_arrays(acts, labels, layers=[3, 7], neutral=neutral, meta={"model": "m", "start": 20})
    w = EmotionVectors.load(v.save(tmp_path / "vectors" / "en"))
    for name in ("vectors", "means", "center"):
        assert np.array_equal(getattr(v, name), getattr(w, name))
    assert len(w.pcs) == len(v.pcs) and all(np.array_equal(a, b) for a, b in zip(v.pcs, w.pcs))
    assert (w.emotions, w.layers, w.meta) == (v.emotions, v.layers, v.meta)
    with pytest.raises(EmonnError, match="no saved EmotionVectors"):
        EmotionVectors.load(tmp_path / "nothing")
