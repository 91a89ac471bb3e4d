import numpy as np
import polars as pl
import pytest

from emonn import EmonnError, readings
from emonn.vectors import EmotionVectors


def make(n_per: int = 3, seed: int = 0) -> readings.Readings:
    rng = np.random.default_rng(seed)
    emotions, langs = ["sad", "joyful", "afraid"], ["en", "ja"]
    rows = [{"id": f"{lang}-{e}-{i}", "emotion": e, "lang": lang, "topic": f"t{i}", "text": f"{lang} {e} {i}"}
            for lang in langs for e in emotions for i in range(n_per)]
    frame = pl.DataFrame(rows)
    return readings.of(rng.standard_normal((len(rows), 2, 5)).astype(np.float32), frame, layers=[1, 3],
                       n_layers=4, meta={"model": "m"})


def test_labels_order_and_provenance():
    r = make()
    assert r.emotions == ("afraid", "sad", "joyful")  # the corpus order (emotions.csv), not first appearance
    assert r.langs == ["en", "ja"] and len(r) == 18
    assert r.depth.tolist() == [1 / 3, 1.0] and r.meta["model"] == "m" and len(r.corpus) == 12
    assert np.array_equal(r.at(3), r.acts[:, 1])
    with pytest.raises(EmonnError, match="layer 2 was not read"):
        r.at(2)


def test_select_take_and_layers():
    r = make()
    ja = r.select(lang="ja", emotions=["sad"])
    assert len(ja) == 3 and set(ja.lang) == {"ja"} and set(ja.emotion) == {"sad"}
    assert np.array_equal(ja.acts, r.acts[(r.lang == "ja") & (r.emotion == "sad")])
    taken = r.take([2, 2, 0])
    assert taken.rows["id"].to_list() == [r.rows["id"][2]] * 2 + [r.rows["id"][0]]
    assert np.array_equal(r.layers_at([3]).acts[:, 0], r.acts[:, 1]) and r.layers_at([3]).layers == (3,)
    with pytest.raises(EmonnError, match="language 'fr'"):
        r.select(lang="fr")
    with pytest.raises(EmonnError, match="emotion 'calm'"):
        r.select(emotions=["calm"])


def test_resample_keeps_every_stratum_and_is_seeded():
    r = make(n_per=4)
    index = r.resample(np.random.default_rng(1))
    assert np.array_equal(r.strata()[index], r.strata())  # each row replaced by one of its own stratum
    assert len(set(index.tolist())) < len(r)  # with replacement
    assert np.array_equal(index, r.resample(np.random.default_rng(1)))


def test_halves_split_every_stratum_in_two():
    r = make(n_per=5)
    first, second = r.halves(np.random.default_rng(2))
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(len(r)))  # a partition
    for label in np.unique(r.strata()):
        assert (r.strata()[first] == label).sum() == 2 and (r.strata()[second] == label).sum() == 3
    assert not np.array_equal(first, r.halves(np.random.default_rng(3))[0])


def test_centering_matches_the_emotion_vectors():
    r = make().select(lang="en")
    vectors = EmotionVectors.fit(r)
    means = r.emotion_means()
    assert np.allclose(means, vectors.means, atol=1e-6)
    centered = r.centered()
    assert np.allclose(centered.emotion_means().mean(0), 0, atol=1e-5)
    assert np.allclose(centered.emotion_means(vectors.emotions), vectors.vectors, atol=1e-5)
    assert vectors.meta["model"] == "m" and vectors.meta["langs"] == ["en"] and vectors.meta["n_texts"] == 9


def test_fit_with_neutral_readings_projects_their_pcs():
    r = make().select(lang="en")
    neutral = make(seed=1).select(lang="en")
    with_pcs = EmotionVectors.fit(r, neutral=neutral)
    same = EmotionVectors.from_arrays(r.acts, r.emotion, layers=[1, 3], emotions=list(r.emotions),
                                      neutral=neutral.acts)
    assert np.allclose(with_pcs.vectors, same.vectors) and with_pcs.meta["neutral"] == neutral.corpus


def test_shape_mismatch_is_an_error():
    r = make()
    with pytest.raises(EmonnError, match="do not match"):
        readings.Readings(r.acts[:3], r.rows, r.layers, r.depth)


def test_a_frame_without_labels_gets_null_labels_per_row():
    frame = pl.DataFrame({"text": ["a", "b", "c"]})
    r = readings.of(np.zeros((3, 1, 2), np.float32), frame, layers=[0])
    assert r.rows.height == 3 and r.rows["emotion"].null_count() == 3 and r.rows.columns == list(readings.LABELS)
