"""`EmotionVectors`: a frozen value (emotions x layers x d) built once from activations, saved, loaded, used.

Built from per-text activations and their emotion labels: the mean activation per (emotion, layer), minus
the mean over emotions (centering), optionally with the top principal components of *neutral* texts'
activations projected out (as many as explain `variance` of their variance, per layer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emonn import EmonnError

if TYPE_CHECKING:
    from emonn.readings import Readings


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def neutral_pcs(neutral: np.ndarray, variance: float) -> list[np.ndarray]:
    """Per layer, the top principal directions `(n_pcs, d)` of `neutral` `(n, n_layers, d)` that together
    explain at least `variance` of its variance."""
    if not 0 < variance <= 1:
        raise EmonnError(f"neutral-PC variance fraction must be in (0, 1], got {variance}")
    pcs = []
    for layer in range(neutral.shape[1]):
        x = neutral[:, layer].astype(np.float64)
        _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
        explained = np.cumsum(s**2) / np.sum(s**2)
        pcs.append(vt[: int(np.searchsorted(explained, variance - 1e-12)) + 1])
    return pcs


@dataclass(frozen=True)
class EmotionVectors:
    """Emotion vectors for `emotions` at `layers`.

    vectors: `(n_emotions, n_layers, d)` centered (and denoised, if `pcs`) mean activations.
    means:   `(n_emotions, n_layers, d)` raw mean activations per emotion.
    center:  `(n_layers, d)` the mean over emotions that was subtracted.
    pcs:     per layer `(n_pcs, d)` neutral directions projected out (empty tuple: none).
    meta:    provenance (model, corpus hash, reducer, start token, language, ...).
    """

    emotions: tuple[str, ...]
    layers: tuple[int, ...]
    vectors: np.ndarray
    means: np.ndarray
    center: np.ndarray
    pcs: tuple[np.ndarray, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, readings: Readings, *, neutral: Readings | None = None, emotions: list[str] | None = None,
            variance: float = 0.5, pcs: tuple[np.ndarray, ...] | None = None) -> EmotionVectors:
        """Vectors of the emotions of `readings` (default: all present, in the corpus order), with the top PCs
        of `neutral`'s activations projected out (or `pcs` already found, e.g. `other.pcs`, to refit a
        bootstrap resample fast). The provenance of `readings` (and of `neutral`) goes into `meta`."""
        meta = {**readings.meta, "langs": readings.langs, "n_texts": len(readings),
                "neutral": neutral.corpus if neutral is not None else None}
        return cls.from_arrays(readings.acts, readings.emotion, layers=list(readings.layers),
                               emotions=list(readings.emotions if emotions is None else emotions),
                               neutral=None if neutral is None else neutral.acts, variance=variance, pcs=pcs,
                               meta=meta)

    @classmethod
    def from_arrays(cls, acts: np.ndarray, labels: list[str] | np.ndarray, *, layers: list[int],
                    emotions: list[str] | None = None, neutral: np.ndarray | None = None, variance: float = 0.5,
                    pcs: tuple[np.ndarray, ...] | None = None, meta: dict[str, Any] | None = None
                    ) -> EmotionVectors:
        """acts `(n_texts, n_layers, d)` with one emotion label per text; `neutral` `(m, n_layers, d)` (its PCs
        are projected out), or `pcs` already found."""
        labels = np.asarray(labels)
        if acts.ndim != 3 or len(acts) != len(labels) or acts.shape[1] != len(layers):
            raise EmonnError(f"activations {acts.shape} do not match {len(labels)} labels x {len(layers)} layers")
        emotions = list(dict.fromkeys(labels.tolist())) if emotions is None else list(emotions)
        missing = [e for e in emotions if not np.any(labels == e)]
        if missing:
            raise EmonnError(f"no texts for emotion '{missing[0]}'")
        onehot = (labels[None, :] == np.asarray(emotions)[:, None]).astype(np.float32)
        means = (onehot @ acts.reshape(len(acts), -1)).reshape(len(emotions), *acts.shape[1:]).astype(np.float64)
        means /= onehot.sum(1)[:, None, None]
        center = means.mean(0)
        if pcs is None:
            pcs = tuple(neutral_pcs(neutral, variance)) if neutral is not None else ()
        vectors = cls._project(means - center, pcs)
        return cls(tuple(emotions), tuple(layers), vectors.astype(np.float32), means.astype(np.float32),
                   center.astype(np.float32), tuple(p.astype(np.float32) for p in pcs), dict(meta or {}))

    @staticmethod
    def _project(x: np.ndarray, pcs: tuple[np.ndarray, ...]) -> np.ndarray:
        """Remove the neutral directions from `x` `(..., n_layers, d)` layer by layer."""
        if not pcs:
            return x
        x = x.copy()
        for i, p in enumerate(pcs):
            x[..., i, :] -= (x[..., i, :] @ p.T) @ p
        return x

    @property
    def n_pcs(self) -> list[int]:
        """How many neutral PCs were removed per layer."""
        return [len(p) for p in self.pcs]

    def at(self, layer: int) -> np.ndarray:
        """Vectors at model layer `layer`: `(n_emotions, d)`."""
        if layer not in self.layers:
            raise EmonnError(f"layer {layer} not in these vectors (layers {self.layers[0]}..{self.layers[-1]})")
        return self.vectors[:, self.layers.index(layer)]

    def cosine(self) -> np.ndarray:
        """Cosine similarity between emotions, per layer: `(n_layers, n_emotions, n_emotions)`."""
        unit = _unit(self.vectors.transpose(1, 0, 2).astype(np.float64))
        return unit @ unit.transpose(0, 2, 1)

    def transform(self, acts: np.ndarray) -> np.ndarray:
        """New texts' activations `(n, n_layers, d)` in the vectors' space (centered, denoised)."""
        return self._project(acts - self.center, self.pcs)

    def scores(self, acts: np.ndarray) -> np.ndarray:
        """Cosine of each text with each emotion vector: `(n, n_layers, n_emotions)`."""
        return np.einsum("nld,eld->nle", _unit(self.transform(acts)), _unit(self.vectors))

    def classify(self, acts: np.ndarray) -> np.ndarray:
        """Nearest emotion vector (cosine) per text and layer: emotion names `(n, n_layers)`."""
        return np.asarray(self.emotions)[self.scores(acts).argmax(-1)]

    def save(self, path: Path | str) -> Path:
        """Write `<path>.safetensors` (arrays) and `<path>.json` (labels, layers, metadata)."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"vectors": self.vectors, "means": self.means, "center": self.center}
        arrays.update({f"pcs.{i}": p for i, p in enumerate(self.pcs)})
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path.with_suffix(".safetensors")))
        info = {"emotions": self.emotions, "layers": self.layers, "denoised": bool(self.pcs), "meta": self.meta}
        path.with_suffix(".json").write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str))
        return path

    @classmethod
    def load(cls, path: Path | str) -> EmotionVectors:
        """Vectors saved by `save(path)`, or a vectors folder (`emonn.share.save`: `<folder>/vectors.*`)."""
        from safetensors.numpy import load_file

        path = Path(path)
        if path.is_dir():
            path = path / "vectors"
        if not path.with_suffix(".json").exists():
            raise EmonnError(f"no saved EmotionVectors at {path} (expected {path.with_suffix('.json').name})")
        info = json.loads(path.with_suffix(".json").read_text())
        arrays = load_file(str(path.with_suffix(".safetensors")))
        pcs = tuple(arrays[f"pcs.{i}"] for i in range(len(info["layers"]))) if info["denoised"] else ()
        return cls(tuple(info["emotions"]), tuple(info["layers"]), arrays["vectors"], arrays["means"],
                   arrays["center"], pcs, info["meta"])
