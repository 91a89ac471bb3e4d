"""Generic inference: permutation p-values and a paired permutation test, the stratified bootstrap
("percentile" or "centered" intervals; and the per-resample item counts that vectorised statistics
take), Cohen's d with a normal CI, Mann-Whitney and Wilcoxon rank tests with rank-biserial effects, and
multiple-comparison correction; with their frozen result dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from ._common import Alternative, _vec, _z


@dataclass(frozen=True)
class PermutationResult:
    statistic: float
    p: float
    null: np.ndarray  # (n_permutations,)


@dataclass(frozen=True)
class BootstrapResult:
    estimate: float
    low: float
    high: float
    samples: np.ndarray  # (n_boot,)


@dataclass(frozen=True)
class EffectSize:
    d: float
    low: float
    high: float


@dataclass(frozen=True)
class RankTest:
    statistic: float
    p: float
    effect: float  # rank-biserial correlation in [-1, 1]; > 0 means a tends to exceed b


@dataclass(frozen=True)
class Corrected:
    p_adjusted: np.ndarray  # (n_tests,)
    reject: np.ndarray  # (n_tests,) bool


def permutation_p(observed: float, null: np.ndarray, *, alternative: Alternative = "greater") -> float:
    """Permutation p-value (k + 1) / (n + 1), k = #null values at least as extreme as observed.

    "two-sided" compares absolute values. Null values equal to observed up to a relative
    1e-12 rounding tolerance count as at least as extreme.
    """
    (null,) = _vec(null)
    tol = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        k = np.sum(null >= observed - tol)
    elif alternative == "less":
        k = np.sum(null <= observed + tol)
    elif alternative == "two-sided":
        k = np.sum(np.abs(null) >= abs(observed) - tol)
    else:
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    return float((k + 1) / (null.size + 1))


def bootstrap_ci(
    stat: Callable[[np.ndarray], float | np.ndarray], labels: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
    ci: float = 0.95, method: str = "percentile", vectorized: bool = False,
) -> BootstrapResult:
    """Stratified percentile bootstrap over items, labels `(n_items,)`.

    Each replicate resamples item indices with replacement within every label group (group
    sizes are kept) and calls `stat(indices)`, indices an int array `(n_items,)`. `stat` may return
    a scalar or an array `(k,)` (e.g. one value per layer): then estimate/low/high are `(k,)`.
    estimate = stat(arange(n_items)); samples `(n_boot,)` or `(n_boot, k)`.

    method "percentile" gives the replicates' quantiles. "centered" shifts the percentile interval by the
    replicates' mean offset from the estimate (the replicates' spread around the estimate): for a shift that
    comes from resampling itself and that the real sample lacks, e.g. repeated items make class centroids
    noisier, which lowers a nearest-centroid accuracy in every replicate. (No "basic" interval: as a bias fix
    it under-corrects and need not contain the estimate; a statistic attenuated by noise gets a corrected
    estimate of its own, `noise_corrected`.)

    vectorized=True calls `stat` once with all resamples stacked, indices `(1 + n_boot, n_items)` (row 0 is
    `arange(n_items)`, for the estimate), and takes back `(1 + n_boot,)` or `(1 + n_boot, k)`: for statistics
    that vectorise over resamples (e.g. `separation_scores(..., resamples=...)`). The resamples are the same.
    """
    if method not in ("percentile", "centered"):
        raise ValueError(f"method must be 'percentile' or 'centered', got {method!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    _z(ci)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    resamples = np.array([np.concatenate([rng.choice(g, size=g.size) for g in groups]) for _ in range(n_boot)])
    if vectorized:
        values = np.asarray(stat(np.vstack([np.arange(labels.size), resamples.reshape(n_boot, -1)])), dtype=float)
        estimate, samples = values[0], values[1:]
    else:
        samples = np.array([stat(idx) for idx in resamples], dtype=float)
        estimate = np.asarray(stat(np.arange(labels.size)), dtype=float)
    low, high = np.quantile(samples, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    if method == "centered":
        shift = samples.mean(axis=0) - estimate
        low, high = low - shift, high - shift
    return BootstrapResult(*(v.item() if v.ndim == 0 else v for v in (estimate, low, high)), samples)


def cohens_d(a: np.ndarray, b: np.ndarray, *, paired: bool = False, ci: float = 0.95) -> EffectSize:
    """Cohen's d of a `(n1,)` vs b `(n2,)` with a large-sample normal CI.

    Independent: (mean a - mean b) / pooled SD, var(d) = (n1+n2)/(n1 n2) + d²/(2(n1+n2))
    (Hedges & Olkin). Paired (n1 == n2): d_z = mean(a-b) / SD(a-b), var = 1/n + d_z²/(2n).
    """
    a, b = _vec(a, b)
    z = _z(ci)
    if paired:
        if a.size != b.size:
            raise ValueError(f"paired samples must have equal length, got {a.size} and {b.size}")
        diff, n = a - b, a.size
        d = diff.mean() / diff.std(ddof=1)
        se = np.sqrt(1 / n + d**2 / (2 * n))
    else:
        n1, n2 = a.size, b.size
        if n1 < 2 or n2 < 2:
            raise ValueError(f"each sample needs at least 2 values, got {n1} and {n2}")
        pooled = np.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
        d = (a.mean() - b.mean()) / pooled
        se = np.sqrt((n1 + n2) / (n1 * n2) + d**2 / (2 * (n1 + n2)))
    return EffectSize(float(d), float(d - z * se), float(d + z * se))


def mann_whitney(a: np.ndarray, b: np.ndarray, *, alternative: Alternative = "two-sided") -> RankTest:
    """scipy Mann-Whitney U of a `(n1,)` vs b `(n2,)` (statistic = U of a); r = 2U/(n1 n2) - 1."""
    a, b = _vec(a, b)
    res = stats.mannwhitneyu(a, b, alternative=alternative)
    return RankTest(float(res.statistic), float(res.pvalue), float(2 * res.statistic / (a.size * b.size) - 1))


def wilcoxon(a: np.ndarray, b: np.ndarray, *, alternative: Alternative = "two-sided") -> RankTest:
    """scipy Wilcoxon signed-rank test of a - b `(n,)`; r = (W+ - W-)/(W+ + W-).

    Zero differences are dropped (scipy's default zero_method="wilcox").
    """
    a, b = _vec(a, b)
    if a.size != b.size:
        raise ValueError(f"paired samples must have equal length, got {a.size} and {b.size}")
    res = stats.wilcoxon(a, b, alternative=alternative)
    diff = (a - b)[a != b]
    ranks = stats.rankdata(np.abs(diff))
    w_plus, w_minus = ranks[diff > 0].sum(), ranks[diff < 0].sum()
    return RankTest(float(res.statistic), float(res.pvalue), float((w_plus - w_minus) / (w_plus + w_minus)))


def correct(pvalues: np.ndarray, *, method: str = "fdr_bh", fdr: float = 0.05) -> Corrected:
    """Multiple-comparison correction of pvalues `(n_tests,)` via statsmodels multipletests.

    `fdr` is the level at which `reject` is decided (multipletests' alpha: the false discovery rate for the
    fdr_* methods, the family-wise error rate for e.g. bonferroni or holm); p_adjusted does not depend on it.
    """
    reject, p_adjusted, _, _ = multipletests(_vec(pvalues)[0], alpha=fdr, method=method)
    return Corrected(p_adjusted, reject)


def paired_permutation_test(
    stat: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, *,
    n_permutations: int = 1000, seed: int = 0, alternative: Alternative = "two-sided",
) -> PermutationResult:
    """Permutation test of two paired conditions: under H0 the two observations of a pair are exchangeable,
    so each permutation swaps x[i] and y[i] for a random half of the pairs (condition labels permuted
    within pairs).

    x, y `(n_pairs, ...)`; `stat(xs, ys)` takes stacks `(n_stack, n_pairs, ...)` and returns `(n_stack,)` or
    `(n_stack, k)` (vectorised: it is called once for the observed data and once for all permutations).
    Returns statistic `()` or `(k,)`, p (k+1)/(n+1) per component (`permutation_p`), null `(n_permutations[, k])`.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim == 0:
        raise ValueError(f"x and y must have the same shape (n_pairs, ...), got {x.shape} and {y.shape}")
    swap = np.random.default_rng(seed).random((n_permutations, x.shape[0])) < 0.5
    swap = swap.reshape(swap.shape + (1,) * (x.ndim - 1))
    null = np.asarray(stat(np.where(swap, y, x), np.where(swap, x, y)), dtype=float)
    observed = np.asarray(stat(x[None], y[None]), dtype=float)[0]
    if observed.ndim == 0:
        return PermutationResult(float(observed), permutation_p(observed, null, alternative=alternative), null)
    p = np.array([permutation_p(observed[j], null[:, j], alternative=alternative) for j in range(observed.size)])
    return PermutationResult(observed, p, null)


def resample_counts(resamples: np.ndarray, n_items: int) -> np.ndarray:
    """How often each item occurs in each resample: indices `(n_resamples, m)` -> counts `(n_resamples, n_items)`."""
    resamples = np.atleast_2d(np.asarray(resamples, dtype=np.int64))
    rows = np.repeat(np.arange(len(resamples)), resamples.shape[1])
    return np.bincount(rows * n_items + resamples.ravel(), minlength=len(resamples) * n_items).reshape(-1, n_items)
