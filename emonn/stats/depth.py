"""Where along depth a profile (a score per layer) peaks: a quadratic fit of score against depth with its
vertex (`quadratic_vertex`), and the position of the maximum (`peak`), each with a percentile CI over
bootstrap replicates of the profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import _labels, _matrix, _vec, _z


@dataclass(frozen=True)
class QuadraticFit:
    a: float
    b: float
    c: float
    vertex: float
    vertex_low: float
    vertex_high: float
    a_low: float
    a_high: float


def quadratic_vertex(
    depth: np.ndarray, score: np.ndarray, *, samples: np.ndarray | None = None, ci: float = 0.95
) -> QuadraticFit:
    """Fit score ≈ a·depth² + b·depth + c over layers (numpy polyfit); vertex = -b / (2a).

    depth, score `(n_layers,)`; samples `(n_boot, n_layers)` are per-layer bootstrap replicates,
    each fitted the same way for percentile CIs of vertex and a (NaN when samples is None).
    """
    (depth,) = _vec(depth)
    score = _labels(_vec(score)[0], depth.size, "score")
    if depth.size < 3:
        raise ValueError(f"need at least 3 layers for a quadratic fit, got {depth.size}")
    a, b, c = np.polyfit(depth, score, 2)
    v_lo = v_hi = a_lo = a_hi = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = -b / (2 * a)
        if samples is not None:
            if (samples := _matrix(samples, "samples")).shape[1] != depth.size:
                raise ValueError(f"samples must have shape (n_boot, {depth.size}), got {samples.shape}")
            coef = np.polyfit(depth, samples.T, 2)  # (3, n_boot)
            q = [(1 - ci) / 2, (1 + ci) / 2]
            (v_lo, v_hi), (a_lo, a_hi) = np.quantile(-coef[1] / (2 * coef[0]), q), np.quantile(coef[0], q)
    return QuadraticFit(*(float(v) for v in (a, b, c, vertex, v_lo, v_hi, a_lo, a_hi)))


@dataclass(frozen=True)
class Peak:
    index: int  # where score is highest
    position: float  # positions[index]
    low: float  # percentile CI of the argmax position over bootstrap replicates (NaN without samples)
    high: float


def peak(positions: np.ndarray, score: np.ndarray, *, samples: np.ndarray | None = None, ci: float = 0.95) -> Peak:
    """The position of a profile's maximum, score and positions `(n,)` (e.g. per layer, at relative depth),
    with a percentile CI of the maximum's position over bootstrap replicates samples `(n_boot, n)`."""
    (positions,) = _vec(positions)
    score = _labels(_vec(score)[0], positions.size, "score")
    index = int(np.argmax(score))
    low = high = np.nan
    if samples is not None:
        if (samples := _matrix(samples, "samples")).shape[1] != positions.size:
            raise ValueError(f"samples must have shape (n_boot, {positions.size}), got {samples.shape}")
        _z(ci)
        low, high = np.quantile(positions[np.argmax(samples, axis=1)], [(1 - ci) / 2, (1 + ci) / 2])
    return Peak(index, float(positions[index]), float(low), float(high))
