"""RSA inference with the conditions (emotions) as the unit: RSA and partial RSA of two stacks of similarity
matrices over resampled or relabelled conditions, the bootstrap over conditions (rsatoolbox-style: a
resampled emotion's pairs with its own copies are dropped) with scipy's percentile interval, split-half
reliability with the Spearman-Brown step-up and the noise-corrected RSA, and permutation p-values of each
layer and of the best one (a max over layers, so picking the best costs what it should).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ._common import Method
from .inference import permutation_p


def _stack(m: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    m = m[None] if m.ndim == 2 else m
    if m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise ValueError(f"{name} must be (n, n) or a stack (k, n, n), got shape {m.shape}")
    return m


def rsa_samples(a: np.ndarray, b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray | None = None, *,
                controls_a: np.ndarray | None = None, controls_b: np.ndarray | None = None,
                method: Method = "spearman", chunk: int = 200) -> np.ndarray:
    """RSA (or partial RSA) of matching matrices of stacks a and b `(k, n, n)` over conditions re-indexed by
    rows_a `(R, n)` and rows_b `(R, n)` (default rows_a): replicate r compares a[:, rows_a[r]][:, :, rows_a[r]]
    with b's matrix under rows_b[r]. The bootstrap passes one resample as both; a permutation test passes the
    identity and a relabelling. A pair of positions (i, j) counts only if it joins two different conditions on
    both sides (a resampled emotion against its own copy is dropped). controls_a `(c, n, n)` travel with a's
    rows and controls_b with b's: then the result is the partial correlation of a and b given all controls
    (spearman: of their ranks; the controls and an intercept are regressed out of both). `(R, k)`."""
    a, b = _stack(a, "a"), _stack(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {a.shape} and {b.shape}")
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    rows_a = np.atleast_2d(rows_a)
    rows_b = rows_a if rows_b is None else np.atleast_2d(rows_b)
    n = a.shape[1]
    ca = np.zeros((0, n, n)) if controls_a is None else _stack(controls_a, "controls_a")
    cb = np.zeros((0, n, n)) if controls_b is None else _stack(controls_b, "controls_b")
    iu, ju = np.triu_indices(n, k=1)
    out = []
    for start in range(0, len(rows_a), chunk):
        ra, rb = rows_a[start: start + chunk], rows_b[start: start + chunk]
        left = np.concatenate([a, ca])[:, ra[:, iu], ra[:, ju]].transpose(1, 0, 2)  # (R, k + ca, m)
        right = np.concatenate([b, cb])[:, rb[:, iu], rb[:, ju]].transpose(1, 0, 2)
        valid = (ra[:, iu] != ra[:, ju]) & (rb[:, iu] != rb[:, ju])  # (R, m)
        values = _ranked(np.concatenate([left, right], axis=1), valid, method)
        k = a.shape[0]
        x, y = values[:, :k], values[:, k + len(ca): 2 * k + len(ca)]
        controls = np.concatenate([values[:, k: k + len(ca)], values[:, 2 * k + len(ca):]], axis=1)
        x, y = _residuals(x, controls), _residuals(y, controls)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1)))
    return np.concatenate(out)


def _ranked(values: np.ndarray, valid: np.ndarray, method: Method) -> np.ndarray:
    """values `(R, k, m)` ranked (spearman) among the valid pairs `(R, m)`, centered over them, 0 elsewhere."""
    if method == "spearman":  # invalid pairs rank last and are then zeroed
        values = stats.rankdata(np.where(valid[:, None], values, np.inf), axis=-1)
    w = valid[:, None].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):  # no valid pair (<= 2 distinct emotions): NaN
        return (values - (values * w).sum(-1, keepdims=True) / w.sum(-1, keepdims=True)) * w


def _residuals(x: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """x `(R, k, m)` less its least-squares fit on controls `(R, c, m)` (both centered): partial-correlation
    residuals."""
    if not controls.shape[1]:
        return x
    # an orthonormal basis of the controls' span from an SVD, without the directions of (near) zero singular
    # value: collinear or constant controls (e.g. two identical lexical RDMs) add nothing and remove nothing
    basis, singular, _ = np.linalg.svd(controls.transpose(0, 2, 1), full_matrices=False)  # (R, m, c), (R, c)
    basis = basis * (singular > 1e-10 * singular.max(-1, keepdims=True).clip(min=1e-300))[:, None, :]
    return x - np.einsum("rmc,rkc->rkm", basis, np.einsum("rmc,rkm->rkc", basis, x))


def rsa_grid_samples(a: np.ndarray, b: np.ndarray, rows: np.ndarray, *, controls: np.ndarray | None = None,
                     method: Method = "spearman", chunk: int = 50) -> np.ndarray:
    """RSA of every matrix of stack a `(ka, n, n)` with every matrix of stack b `(kb, n, n)` (e.g. every layer of
    one model against every layer of another) over the conditions re-indexed by rows `(R, n)`, the same for
    both stacks and the controls (a bootstrap over conditions; a condition's pairs with its own copies are
    dropped). controls `(c, n, n)` shared by both sides (e.g. stimulus baselines) make it the partial RSA of
    each pair given all of them. `(R, ka, kb)`."""
    a, b = _stack(a, "a"), _stack(b, "b")
    n = a.shape[1]
    cc = np.zeros((0, n, n)) if controls is None else _stack(controls, "controls")
    rows = np.atleast_2d(rows)
    iu, ju = np.triu_indices(n, k=1)
    out = []
    for start in range(0, len(rows), chunk):
        r = rows[start: start + chunk]
        valid = r[:, iu] != r[:, ju]
        values = _ranked(np.concatenate([a, b, cc])[:, r[:, iu], r[:, ju]].transpose(1, 0, 2), valid, method)
        x = _residuals(values[:, : len(a) + len(b)], values[:, len(a) + len(b):])
        with np.errstate(invalid="ignore", divide="ignore"):
            x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        out.append(np.einsum("rim,rjm->rij", x[:, : len(a)], x[:, len(a):]))
    return np.concatenate(out)


def condition_bootstrap(statistic, n: int, *, n_boot: int = 1000, seed: int = 0,
                        ci: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile CI (low `(k,)`, high `(k,)`) and replicates `(n_boot, k)` of `statistic(rows)` over bootstrap
    resamples of n conditions, by `scipy.stats.bootstrap`: statistic takes rows `(R, n)` of condition
    indices and returns `(R, k)` (e.g. `rsa_samples` of some matrices). Replicates where the statistic is
    undefined (NaN: e.g. a resample of few emotions with almost no distinct pairs) are left out of the
    percentiles; a component with fewer than half its replicates defined gets NaN bounds."""
    def vectorised(rows: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = np.asarray(rows)
        return np.asarray(statistic(rows.reshape(-1, n))).T.reshape((-1,) + rows.shape[:-1])

    with warnings.catch_warnings():  # a NaN replicate (e.g. no reliability to correct with) gives a NaN bound
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        boot = stats.bootstrap((np.arange(n),), vectorised, n_resamples=n_boot, vectorized=True,
                               method="percentile", confidence_level=ci, rng=np.random.default_rng(seed))
    samples = np.atleast_2d(np.asarray(boot.bootstrap_distribution)).T  # (n_boot, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN component
        low, high = np.nanquantile(samples, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    enough = np.isfinite(samples).mean(0) >= 0.5
    return np.where(enough, low, np.nan), np.where(enough, high, np.nan), samples


@dataclass(frozen=True)
class ConditionTest:
    estimate: np.ndarray  # (k,) RSA (or partial RSA) of the observed matrices
    low: np.ndarray  # (k,) percentile CI from the bootstrap over conditions
    high: np.ndarray
    p: np.ndarray  # (k,) label-permutation p of each matrix pair (one-sided, greater)
    p_best: float  # p of the largest estimate against the null of the largest over all k
    best: int  # index of the largest estimate
    samples: np.ndarray  # (n_boot, k) bootstrap replicates
    null: np.ndarray  # (n_permutations, k) relabelled


def condition_test(a: np.ndarray, b: np.ndarray, *, controls_a: np.ndarray | None = None,
                   controls_b: np.ndarray | None = None, n_boot: int = 1000, n_permutations: int = 10_000,
                   seed: int = 0, method: Method = "spearman", ci: float = 0.95) -> ConditionTest:
    """RSA (partial RSA, with controls) of each matrix pair of stacks a and b `(k, n, n)` with the conditions as
    the unit: a percentile CI from `scipy.stats.bootstrap` over conditions (duplicate pairs dropped), which
    contains the estimate's own sampling variation over a draw of n conditions (not a correction for noise:
    see `noise_corrected`); a label-permutation p per pair (b's conditions and its controls relabelled
    jointly); and p_best for the largest of the k estimates, from the max over k of each relabelling."""
    a, b = _stack(a, "a"), _stack(b, "b")
    n = a.shape[1]
    kw = dict(controls_a=controls_a, controls_b=controls_b, method=method)
    estimate = rsa_samples(a, b, np.arange(n), **kw)[0]
    low, high, samples = condition_bootstrap(lambda rows: rsa_samples(a, b, rows, **kw), n, n_boot=n_boot,
                                             seed=seed, ci=ci)
    permutations = np.random.default_rng(seed + 1).permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    null = rsa_samples(a, b, np.tile(np.arange(n), (n_permutations, 1)), permutations, **kw)
    p = np.array([permutation_p(estimate[j], null[:, j]) if np.isfinite(estimate[j]) else np.nan
                  for j in range(len(estimate))])
    best = int(np.nanargmax(estimate)) if np.isfinite(estimate).any() else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_best = permutation_p(float(estimate[best]), np.nanmax(null, axis=1)) if np.isfinite(estimate[best]) \
            else float("nan")
    return ConditionTest(estimate, low, high, p, p_best, best, samples, null)


def split_halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Item indices of a random split into two halves within each label `(n,)` (a label with an odd count
    gives its extra item to the second half), each sorted: the two samples of a split-half reliability."""
    labels = np.asarray(labels)
    first, second = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        first.append(members[: len(members) // 2])
        second.append(members[len(members) // 2:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def spearman_brown(r: np.ndarray | float, factor: float = 2.0) -> np.ndarray:
    """The reliability of a measure `factor` times as long as one of reliability r (split-half: factor 2)."""
    r = np.asarray(r, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return factor * r / (1 + (factor - 1) * r)


def reliability(halves: np.ndarray, rows: np.ndarray, *, method: Method = "spearman") -> np.ndarray:
    """The split-half reliability of a stack of matrices over condition rows `(R, n)`: the RSA of the two
    halves of each random split, halves `(n_splits, 2, k, n, n)`, averaged over splits and stepped up by
    Spearman-Brown: `(R, k)`."""
    return spearman_brown(np.mean([rsa_samples(h[0], h[1], rows, method=method) for h in halves], axis=0))


def disattenuate(r: np.ndarray, reliability_a: np.ndarray, reliability_b: np.ndarray) -> np.ndarray:
    """Spearman's correction r / sqrt(rel_a rel_b) (shapes broadcast); NaN where a reliability is <= 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((reliability_a > 0) & (reliability_b > 0), r / np.sqrt(reliability_a * reliability_b), np.nan)


def grid_summaries(a: np.ndarray, b: np.ndarray, rows: np.ndarray, *, cells: tuple[np.ndarray, np.ndarray],
                   controls: np.ndarray, halves: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Two summaries of three RSA grids of stacks a `(ka, n, n)` and b `(kb, n, n)` (e.g. the layers of two
    models) over condition rows `(R, n)`: the raw grid, the partial grid given `controls`, and that over the
    noise ceilings from `halves` (each `(n_splits, 2, k, n, n)`, see `reliability`). Returns `(R, 6)`: the
    largest cell of each grid (the best pair, chosen anew in every replicate), then the mean over `cells`
    (index arrays, e.g. the layer pairs at matched depth). NaN where a grid has no defined cell."""
    raw = rsa_grid_samples(a, b, rows)
    partial = rsa_grid_samples(a, b, rows, controls=controls)
    rel_a, rel_b = (reliability(h, rows) for h in halves)
    corrected = disattenuate(partial, rel_a[:, :, None], rel_b[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate with no defined cell: NaN
        return np.stack([f(g) for f in (lambda g: np.fmax.reduce(g.reshape(len(g), -1), axis=1),
                                        lambda g: np.nanmean(g[:, cells[0], cells[1]], 1))
                         for g in (raw, partial, corrected)], 1)


@dataclass(frozen=True)
class NoiseCorrected:
    estimate: np.ndarray  # (k,) RSA / sqrt(reliability_a * reliability_b)
    low: np.ndarray  # (k,) percentile CI, bootstrap over conditions
    high: np.ndarray
    reliability_a: np.ndarray  # (k,) split-half RSA stepped up by Spearman-Brown
    reliability_b: np.ndarray


def noise_corrected(a: np.ndarray, b: np.ndarray, halves_a: np.ndarray, halves_b: np.ndarray, *,
                    n_boot: int = 1000, seed: int = 0, method: Method = "spearman", ci: float = 0.95) -> NoiseCorrected:
    """The RSA of a and b `(k, n, n)` corrected for the noise of each: r_ab / sqrt(rel_a rel_b) (Spearman's
    disattenuation), where rel is the Spearman-Brown stepped-up RSA between the two halves of a random
    split of each condition's items, averaged over splits: halves `(n_splits, 2, k, n, n)`. The estimate of
    the noise-free agreement, with a percentile CI from the bootstrap over conditions that resamples the
    numerator and both reliabilities together. A reliability <= 0 gives NaN (no signal to correct)."""
    a, b = _stack(a, "a"), _stack(b, "b")
    halves_a, halves_b = (np.asarray(h, dtype=np.float64) for h in (halves_a, halves_b))
    k, n = a.shape[0], a.shape[1]

    def statistic(rows: np.ndarray) -> np.ndarray:  # (R, 3k): corrected, reliability a, reliability b
        rel = [reliability(halves, rows, method=method) for halves in (halves_a, halves_b)]
        return np.concatenate([disattenuate(rsa_samples(a, b, rows, method=method), *rel), *rel], axis=1)

    values = statistic(np.arange(n)[None])[0]
    low, high, _ = condition_bootstrap(lambda rows: statistic(rows)[:, :k], n, n_boot=n_boot, seed=seed, ci=ci)
    return NoiseCorrected(values[:k], low, high, values[k: 2 * k], values[2 * k:])
