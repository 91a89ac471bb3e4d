import json
import os
import time
import uuid

import gguf
import numpy as np
import polars as pl
import pytest

from emonn import EmonnError, corpus, extract, models, readings, share
from emonn.cli import main
from emonn.vectors import EmotionVectors
from studies_util import assert_one_line_error, corpus_slice, invoke, neutral_slice


def _synthetic_readings(per_cell=3, topics=4, d=16, seed=0, emotions=("joy", "fear", "calm")):
    """Layer 0: noise only; layer 1: each emotion has its own direction (separable in every topic)."""
    rng = np.random.default_rng(seed)
    rows = [(e, f"t{t}") for e in emotions for t in range(topics) for _ in range(per_cell)]
    frame = pl.DataFrame({"id": [str(i) for i in range(len(rows))], "emotion": [e for e, _ in rows],
                          "lang": ["en"] * len(rows), "topic": [t for _, t in rows]})
    centres = rng.normal(size=(len(emotions), d)) * 3
    acts = rng.normal(size=(len(rows), 2, d))
    acts[:, 1] += centres[[emotions.index(e) for e, _ in rows]]
    return readings.of(acts, frame, layers=[0, 1])


def test_choose_layer_picks_the_informative_layer():
    r = _synthetic_readings()
    choice = share.choose_layer(EmotionVectors.fit(r), r)
    assert choice.layer == 1 and choice.accuracy[1] == 1.0 and choice.accuracy[0] < 0.7
    assert choice.chance == pytest.approx(1 / 3) and choice.n_topics == 4
    unbalanced = r.where(~((r.emotion == "calm") & (r.topic != "t0")))  # calm only in one topic
    assert share.choose_layer(EmotionVectors.fit(unbalanced), unbalanced).chance == pytest.approx(12 / 27)
    one_topic = r.where(r.topic == "t0")
    with pytest.raises(EmonnError, match="at least two topics"):
        share.choose_layer(EmotionVectors.fit(one_topic), one_topic)


@pytest.fixture
def files(tmp_path):
    return corpus_slice(tmp_path / "stories.jsonl", langs=("en", "ja")), neutral_slice(tmp_path / "neutral.jsonl")


def test_build_saves_vectors_and_a_card(tmp_path, tiny, files, monkeypatch):
    stories, neutral = files
    built = share.build(tiny, "en", corpus=stories, neutral=neutral, out=tmp_path / "out", progress=False)
    assert built.folder == tmp_path / "out" / "vectors" / "tiny-llama-en"
    assert {p.name for p in built.folder.iterdir()} == {"vectors.safetensors", "vectors.json", "README.md"}
    v = EmotionVectors.load(built.folder)
    assert np.array_equal(v.vectors, built.vectors.vectors) and v.vectors.shape == (6, 4, 32)
    assert v.pcs and v.meta["best_layer"] == built.choice.layer == v.layers[int(np.argmax(v.meta["accuracy"]))]
    assert v.meta["lang"] == "en" and v.meta["model_type"] == "llama" and v.meta["start"] == extract.START
    card = (built.folder / "README.md").read_text()
    digest = corpus.digest(corpus.load(stories, langs=["en"]))
    assert v.meta["corpus"] == digest and f"corpus digest `{digest}`" in card
    assert "| start token | 20 |" in card and "chosen on the same stories" in card
    assert f"| {v.meta['best_layer']} (best) |" in card and 'EmotionVectors.load("' in card
    assert f"--vectors {built.folder.as_posix()}" in card
    for layer, pcs in zip(v.layers, v.n_pcs):  # the PCs removed per layer, as the card's table states them
        assert any(line.startswith(f"| {layer}") and f"| {pcs} |" in line for line in card.splitlines())
    # a rebuild reads every activation from the shared cache: no forward pass at all
    monkeypatch.setattr(extract, "forward_pooled", lambda *a, **k: pytest.fail("recomputed cached activations"))
    again = share.build(tiny, "en", corpus=stories, neutral=neutral, out=tmp_path / "out", progress=False)
    assert np.array_equal(again.vectors.vectors, v.vectors)
    assert (tmp_path / "out" / "cache" / "tiny-llama" / f"mean-k20-float32-{tiny.fingerprint}").is_dir()


def test_build_without_denoising(tmp_path, tiny, files):
    built = share.build(tiny, "en", corpus=files[0], denoise=False, start=5, layers=[1, 2], out=tmp_path,
                        progress=False)
    v = EmotionVectors.load(built.folder)
    assert v.pcs == () and v.layers == (1, 2) and v.meta["start"] == 5 and v.meta["best_layer"] in (1, 2)
    assert "none (vectors not denoised)" in (built.folder / "README.md").read_text()


def test_save_writes_any_vectors_with_a_card(tmp_path):
    r = _synthetic_readings()
    v = EmotionVectors.fit(r, neutral=r)  # a study's vectors: no best layer recorded
    folder = share.save(v, tmp_path / "study" / "vectors" / "en")
    w = EmotionVectors.load(folder)
    assert np.array_equal(w.vectors, v.vectors) and w.meta == json.loads(json.dumps(v.meta, default=str))
    card = (folder / "README.md").read_text()
    assert "## Best layer" not in card and "| best layer |" not in card
    rows = [line for line in card.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert [row.split(" | ")[1] for row in rows] == [str(n) for n in v.n_pcs]  # PCs removed per layer


@pytest.fixture
def tiny_cli(monkeypatch, tiny):
    monkeypatch.setattr(models, "load", lambda name, remote=False, **kw: tiny)
    return tiny


def _read_gguf(path):
    reader = gguf.GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    return fields, {t.name: np.array(t.data) for t in reader.tensors}


def test_cli_build_export_and_read_back(tmp_path, tiny_cli, files):
    stories, neutral = files
    result = invoke(main, ["vectors", "build", "--model", "tiny", "--corpus", str(stories), "--neutral",
                           str(neutral), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "vectors" / "tiny-llama-en"
    assert "best layer" in result.output and str(folder) in result.output
    v = EmotionVectors.load(folder)
    emotion = v.emotions[2]
    result = invoke(main, ["vectors", "export", str(folder), "--format", "gguf", "--emotion", emotion])
    assert result.exit_code == 0, result.output
    fields, tensors = _read_gguf(folder / f"{emotion}.gguf")
    assert fields["general.architecture"] == "controlvector" and fields["controlvector.model_hint"] == "llama"
    assert fields["controlvector.layer_count"] == 3 and fields["emonn.emotion"] == emotion
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]  # layer 0: llama.cpp rejects it
    for layer in (1, 2, 3):
        assert tensors[f"direction.{layer}"].dtype == np.float32
        assert np.array_equal(tensors[f"direction.{layer}"], v.at(layer)[2])


def test_export_gguf_layers_and_hint(tmp_path):
    v = EmotionVectors.fit(_synthetic_readings())
    path = share.export_gguf(v, tmp_path / "a" / "fear.gguf", emotion="fear", model_hint="gemma3_text",
                             layers=[1])
    fields, tensors = _read_gguf(path)
    assert fields["controlvector.model_hint"] == "gemma3_text" and list(tensors) == ["direction.1"]
    assert tensors["direction.1"].shape == (16,) and np.array_equal(tensors["direction.1"], v.at(1)[v.emotions.index("fear")])
    assert [p.name for p in path.parent.iterdir()] == ["fear.gguf"]  # written atomically: no temp file left
    with pytest.raises(EmonnError, match="cannot steer layer 0"):
        share.export_gguf(v, tmp_path / "b.gguf", emotion="fear", model_hint="x", layers=[0])
    assert share.model_hint(v) == "unknown"


@pytest.mark.parametrize("args, message", [
    (["build", "--lang", "fr"], "unknown language 'fr'"),
    (["build", "--lang", "ja"], "tiny-llama reads en, none of the languages ja"),
    (["build", "--layers", "99"], "layer 99 out of range"),
    (["build", "--lang", "en,ja"], "--lang takes one language"),
    (["export", "{folder}", "--emotion", "elated"], "no emotion 'elated' in these vectors"),
    (["export", "{empty}", "--emotion", "afraid"], "no saved EmotionVectors"),
    (["export", "{empty}/absent", "--emotion", "afraid"], "build them with `emonn vectors build`"),
    (["pull", "{empty}/nothing/here", "{empty}/x"], "neither a vectors folder nor a Hugging Face repo id"),
    (["push", "{folder}", "not a repo"], "is not a Hugging Face repo id"),
])
def test_bad_input_ends_in_one_line(tmp_path, tiny_cli, files, args, message):
    folder = share.save(EmotionVectors.fit(_synthetic_readings()), tmp_path / "v")
    (tmp_path / "empty").mkdir()
    args = [a.format(folder=folder, empty=tmp_path / "empty") for a in args]
    if args[0] == "build":
        args += ["--corpus", str(files[0]), "--out", str(tmp_path)]
    assert_one_line_error(invoke(main, ["vectors", *args]), message)


def test_pull_from_a_local_folder_copies_and_checks(tmp_path):
    v = EmotionVectors.fit(_synthetic_readings())
    source = share.save(v, tmp_path / "source")
    share.export_gguf(v, source / "joy.gguf", emotion="joy", model_hint="llama")
    dest = share.pull(source, tmp_path / "copy")
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "joy.gguf", "vectors.json", "vectors.safetensors"]
    assert np.array_equal(EmotionVectors.load(dest).vectors, v.vectors)
    assert invoke(main, ["vectors", "pull", str(source), str(tmp_path / "cli")]).exit_code == 0
    # a damaged folder is refused before anything is copied
    info = json.loads((source / "vectors.json").read_text())
    (source / "vectors.json").write_text(json.dumps({**info, "layers": info["layers"][:1]}))
    result = invoke(main, ["vectors", "pull", str(source), str(tmp_path / "bad")])
    assert_one_line_error(result, "are damaged: vectors, means, center do not match 3 emotions x 1 layers")
    assert not (tmp_path / "bad").exists()


def test_push_without_a_token_ends_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    folder = share.save(EmotionVectors.fit(_synthetic_readings()), tmp_path / "v")
    assert_one_line_error(invoke(main, ["vectors", "push", str(folder), "someone/emotions"]), "no Hugging Face token")


@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="live Hub test: needs HF_TOKEN (write access) and network")
def test_push_and_pull_through_the_hub(tmp_path):
    import huggingface_hub

    api = huggingface_hub.HfApi()
    repo = f"{api.whoami()['name']}/emonn-test-vectors-{uuid.uuid4().hex[:8]}"
    v = EmotionVectors.fit(_synthetic_readings())
    folder = share.save(v, tmp_path / "v")
    try:
        assert repo in share.push(folder, repo, private=True)
        dest = share.pull(repo, tmp_path / "back")
        assert np.array_equal(EmotionVectors.load(dest).vectors, v.vectors)
        assert (dest / "README.md").read_text() == (folder / "README.md").read_text()
    finally:
        api.delete_repo(repo, missing_ok=True)


@pytest.mark.real
def test_real_build_and_gguf_on_smollm2(tmp_path, smollm2):
    began = time.perf_counter()
    result = invoke(main, ["vectors", "build", "--model", "smollm2-135m", "--lang", "en", "--out", str(tmp_path)])
    seconds = time.perf_counter() - began
    assert result.exit_code == 0, result.output
    print(f"\nemonn vectors build (smollm2-135m, en, no cache): {seconds:.0f} s\n{result.output}")
    folder = tmp_path / "vectors" / "smollm2-135m-en"
    v = EmotionVectors.load(folder)
    assert v.vectors.shape == (30, 30, 576) and v.meta["n_texts"] == 720 and all(n >= 1 for n in v.n_pcs)
    assert v.meta["best_accuracy"] > 3 * v.meta["chance"]  # 30 emotions: chance 1/30
    assert invoke(main, ["vectors", "export", str(folder), "--emotion", "afraid"]).exit_code == 0
    fields, tensors = _read_gguf(folder / "afraid.gguf")
    assert fields["controlvector.model_hint"] == "llama" and fields["controlvector.layer_count"] == 29
    assert sorted(tensors, key=lambda name: int(name.split(".")[1])) == [f"direction.{i}" for i in range(1, 30)]
    index = v.emotions.index("afraid")
    assert all(np.array_equal(tensors[f"direction.{i}"], v.at(i)[index]) for i in range(1, 30))
