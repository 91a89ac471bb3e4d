"""Pairwise-preference models: Bradley–Terry strengths by maximum likelihood and Elo ratings averaged
over random orders of the matches, for one comparison set (`bradley_terry`, `elo`) and vectorised over
many sets at once, e.g. bootstrap resamples or permutations (`bradley_terry_batch`, `elo_batch`). The studies
use the batched forms; the one-set forms are their test references.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from ._common import _vec


def _pairs(first: np.ndarray, second: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.asarray(first, dtype=np.int64).ravel(), np.asarray(second, dtype=np.int64).ravel()
    if first.shape != second.shape:
        raise ValueError(f"first and second must have equal length, got {first.size} and {second.size}")
    if first.size and (min(first.min(), second.min()) < 0 or max(first.max(), second.max()) >= n_items):
        raise ValueError(f"item indices must be in [0, {n_items})")
    return first, second


def bradley_terry(
    first_idx: np.ndarray, second_idx: np.ndarray, n_items: int, *, weight: np.ndarray | None = None,
    ridge: float = 1e-6,
) -> np.ndarray:
    """Bradley–Terry strengths `(n_items,)` (log scale, mean 0) by maximum likelihood.

    Comparison m `(n_comparisons,)` pits first_idx[m] against second_idx[m]; weight[m] in [0, 1]
    is the probability (or observed fraction) that first wins (default 1: first is the winner).
    P(i beats j) = sigmoid(s_i - s_j). An L2 ridge (ridge * |s|²) makes the fit identifiable
    and keeps never-losing items finite (but large).

    Reference implementation: kept for tests that compare `bradley_terry_batch` against it.
    """
    first, second = _pairs(first_idx, second_idx, n_items)
    w = np.ones(first.size) if weight is None else _vec(weight)[0]
    if w.shape != first.shape or np.any((w < 0) | (w > 1)):
        raise ValueError(f"weight must have shape {first.shape} with values in [0, 1]")

    def objective(s: np.ndarray) -> tuple[float, np.ndarray]:
        diff = s[first] - s[second]
        nll = -np.sum(w * log_expit(diff) + (1 - w) * log_expit(-diff)) + ridge * s @ s
        g = expit(diff) - w  # d nll / d diff
        return float(nll), np.bincount(first, g, n_items) - np.bincount(second, g, n_items) + 2 * ridge * s

    s = minimize(objective, np.zeros(n_items), jac=True, method="L-BFGS-B", options={"gtol": 1e-10}).x
    return s - s.mean()


def elo(
    first_idx: np.ndarray, second_idx: np.ndarray, score_first: np.ndarray, n_items: int, *, k: float = 16,
    n_orderings: int = 100, seed: int = 0, base: float = 1000, shuffle: bool = True,
) -> np.ndarray:
    """Classic Elo ratings `(n_items,)` averaged over n_orderings random orders of the matches.

    score_first `(n_matches,)` in [0, 1] (1 = first wins, 0.5 = draw). With shuffle=False the
    matches are played once, in the given order. Orderings are updated in parallel.

    Reference implementation: kept for tests that compare `elo_batch` against it.
    """
    first, second = _pairs(first_idx, second_idx, n_items)
    (score,) = _vec(score_first)
    if score.shape != first.shape or np.any((score < 0) | (score > 1)):
        raise ValueError(f"score_first must have shape {first.shape} with values in [0, 1]")
    rng, m = np.random.default_rng(seed), first.size
    orders = np.stack([rng.permutation(m) for _ in range(n_orderings)]) if shuffle else np.arange(m)[None]
    ratings = np.full((orders.shape[0], n_items), float(base))
    rows = np.arange(orders.shape[0])
    for match in orders.T:  # match: (n_orderings,) index of the t-th match in each ordering
        f, s = first[match], second[match]
        delta = k * (score[match] - 1 / (1 + 10 ** ((ratings[rows, s] - ratings[rows, f]) / 400)))
        ratings[rows, f] += delta
        ratings[rows, s] -= delta
    return ratings.mean(axis=0)


def _comparison_sets(first_idx: np.ndarray, second_idx: np.ndarray, values: np.ndarray, n_items: int,
                     name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated `(n_sets, n)` first, second (int64, broadcast from `(n,)`) and values in [0, 1] (float64)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_sets, n_comparisons), got shape {values.shape}")
    try:
        first, second = (np.broadcast_to(np.asarray(i, dtype=np.int64), values.shape) for i in (first_idx, second_idx))
    except ValueError:
        raise ValueError(f"first_idx and second_idx must have shape {values.shape} or ({values.shape[1]},)") from None
    _pairs(first, second, n_items)
    if np.any((values < 0) | (values > 1)):
        raise ValueError(f"{name} values must be in [0, 1]")
    return first, second, values


def bradley_terry_batch(
    first_idx: np.ndarray, second_idx: np.ndarray, n_items: int, weight: np.ndarray, *, ridge: float = 1e-6,
    tol: float = 1e-9, max_iter: int = 200,
) -> np.ndarray:
    """`bradley_terry` of many comparison sets at once (e.g. bootstrap resamples, permutations): strengths
    `(n_sets, n_items)`, each row mean 0.

    weight `(n_sets, n_comparisons)`: row r's probability that first wins; first_idx, second_idx are
    `(n_sets, n_comparisons)` or `(n_comparisons,)` (shared by all sets). Damped Newton on all sets together:
    the ridge-penalised negative log-likelihood is strictly convex, its Hessian a weighted graph Laplacian
    + 2·ridge·I (built by bincount, solved batched), and each set halves its step until its objective
    does not increase.
    """
    first, second, w = _comparison_sets(first_idx, second_idx, weight, n_items, "weight")
    n_sets, n = w.shape[0], n_items
    rows = np.arange(n_sets)[:, None]
    at_first, at_second = (rows * n + first).ravel(), (rows * n + second).ravel()
    # Hessian = sum over comparisons of v (e_first - e_second)(e_first - e_second)^T: four cells each
    cells = np.concatenate([at_first * n + first.ravel(), at_second * n + second.ravel(),
                            at_first * n + second.ravel(), at_second * n + first.ravel()])
    signs = np.array([1.0, 1.0, -1.0, -1.0])

    def objective(s: np.ndarray) -> np.ndarray:
        diff = s[rows, first] - s[rows, second]  # -w log σ(d) - (1-w) log σ(-d) = -log σ(d) + (1-w) d
        return np.sum((1 - w) * diff - log_expit(diff), axis=1) + ridge * np.sum(s * s, axis=1)

    s, current = np.zeros((n_sets, n)), objective(np.zeros((n_sets, n)))
    for _ in range(max_iter):
        p = expit(s[rows, first] - s[rows, second])
        g, v = (p - w).ravel(), (p * (1 - p)).ravel()
        grad = (np.bincount(at_first, g, n_sets * n) - np.bincount(at_second, g, n_sets * n)).reshape(n_sets, n)
        hessian = np.bincount(cells, (signs[:, None] * v).ravel(), n_sets * n * n).reshape(n_sets, n, n)
        hessian += 2 * ridge * np.eye(n)
        step = np.linalg.solve(hessian, (grad + 2 * ridge * s)[..., None])[..., 0]
        scale = np.ones(n_sets)
        for _ in range(60):  # halve the step of the sets whose objective went up
            trial = objective(s - scale[:, None] * step)
            worse = trial > current + 1e-12 * np.abs(current)
            if not worse.any():
                break
            scale[worse] /= 2
        s, current = s - scale[:, None] * step, trial
        if np.max(np.abs(scale[:, None] * step)) < tol:
            return s - s.mean(axis=1, keepdims=True)
    raise ValueError(f"Bradley-Terry Newton iterations did not converge in {max_iter} steps")


def elo_batch(
    first_idx: np.ndarray, second_idx: np.ndarray, score_first: np.ndarray, n_items: int, *, k: float = 16,
    n_orderings: int = 100, seed: int = 0, base: float = 1000, chunk_rows: int = 4096,
) -> np.ndarray:
    """`elo` of many match sets at once: ratings `(n_sets, n_items)`, row r averaged over n_orderings random
    orders of set r's matches.

    score_first `(n_sets, n_matches)`; first_idx, second_idx `(n_sets, n_matches)` or `(n_matches,)`. Every
    set plays the same orderings (the ones `elo` draws from `seed`), so two sets that differ only in scores
    get the same ordering noise (common random numbers: their difference is less noisy), and a single set
    equals `elo(..., seed=seed)`. Sets x orderings are updated in parallel, `chunk_rows` rows at a time.
    """
    first, second, score = _comparison_sets(first_idx, second_idx, score_first, n_items, "score_first")
    n_sets, m = score.shape
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(m) for _ in range(n_orderings)])  # (n_orderings, m), as in `elo`
    per_chunk = max(1, chunk_rows // n_orderings)
    result, scale = np.empty((n_sets, n_items)), np.log(10) / 400
    for start in range(0, n_sets, per_chunk):
        sets = slice(start, start + per_chunk)
        # (m, rows) per (set, ordering) row: step t's flat index into `ratings` (rows * n_items), its score
        f, s, sc = (a[sets][:, orders].reshape(-1, m).T.copy() for a in (first, second, score))
        offset = np.arange(f.shape[1]) * n_items
        f += offset
        s += offset
        ratings = np.full(f.shape[1] * n_items, float(base))
        for t in range(m):
            rating_f, rating_s = ratings.take(f[t]), ratings.take(s[t])
            delta = k * (sc[t] - 1 / (1 + np.exp((rating_s - rating_f) * scale)))
            ratings[f[t]] = rating_f + delta  # a row meets each item at most once per step: no repeated index
            ratings[s[t]] = rating_s - delta
        result[sets] = ratings.reshape(-1, n_orderings, n_items).mean(axis=1)
    return result
