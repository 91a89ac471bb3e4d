"""Shared input checks and small helpers of the `emonn.stats` modules (private to the package): shape
validation of matrices, vectors and label arrays (`_matrix`, `_same_square`, `_vec`, `_labels`), unit-norm
rows, the normal quantile of a confidence level (`_z`), and the `Method` and `Alternative` literal types
that the public functions take.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats


Alternative = Literal["greater", "less", "two-sided"]
Method = Literal["spearman", "pearson"]


def _matrix(x: np.ndarray, name: str = "x", *, square: bool = False) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {x.shape}")
    if square and x.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must be square, got shape {x.shape}")
    return x


def _same_square(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _matrix(a, "a", square=True), _matrix(b, "b", square=True)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _vec(*arrays: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64).ravel() for a in arrays]


def _labels(labels: np.ndarray, n: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
    return labels


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float64).tiny)


def _z(ci: float) -> float:
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    return float(stats.norm.ppf(0.5 + ci / 2))
