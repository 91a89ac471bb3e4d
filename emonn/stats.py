"""Statistics for emotion-representation analyses: RSA, permutation and bootstrap inference,
effect sizes, label separation, Procrustes alignment, manifold distances, clustering, PCA
correlations, quadratic depth profiles and pairwise-preference models.

All functions are pure: numpy in, numpy (or small frozen dataclasses) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from scipy import stats
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.linalg import orthogonal_procrustes
from scipy.optimize import minimize
from scipy.sparse.csgraph import shortest_path
from scipy.spatial.distance import pdist, squareform
from scipy.special import expit, log_expit
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.neighbors import kneighbors_graph
from statsmodels.stats.multitest import multipletests

Alternative = Literal["greater", "less", "two-sided"]
Method = Literal["spearman", "pearson"]


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


@dataclass(frozen=True)
class Separation:
    within: float  # mean cosine over same-label pairs
    between: float  # mean cosine over different-label pairs
    difference: float  # within - between
    ratio: float  # within / between


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


# ---------------------------------------------------------------- helpers
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


# ---------------------------------------------------------------- RSA and permutation tests
def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """Cosine similarities between the rows of x `(n, d)` -> `(n, n)` float64."""
    norms = np.linalg.norm(x := _matrix(x), axis=1)
    if np.any(norms == 0):
        raise ValueError(f"x has zero-norm rows at indices {np.flatnonzero(norms == 0).tolist()}")
    u = x / norms[:, None]
    return u @ u.T


def upper(m: np.ndarray) -> np.ndarray:
    """Strict upper triangle of square m `(n, n)` as a vector `(n*(n-1)/2,)`, row-major."""
    m = _matrix(m, "m", square=True)
    return m[np.triu_indices(m.shape[0], k=1)]


def rsa(a: np.ndarray, b: np.ndarray, *, method: Method = "spearman") -> float:
    """Correlation between the strict upper triangles of two `(n, n)` similarity matrices."""
    a, b = _same_square(a, b)
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    corr = stats.spearmanr if method == "spearman" else stats.pearsonr
    return float(corr(upper(a), upper(b)).statistic)


def rsa_stack(a: np.ndarray, b: np.ndarray, *, method: Method = "spearman") -> np.ndarray:
    """`rsa` of matching matrices in two stacks `(k, n, n)` (e.g. one per layer), vectorised: `(k,)`."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"need two stacks of square matrices of one shape, got {a.shape} and {b.shape}")
    iu, ju = np.triu_indices(a.shape[1], k=1)
    va, vb = a[:, iu, ju], b[:, iu, ju]
    if method == "spearman":
        va, vb = stats.rankdata(va, axis=1), stats.rankdata(vb, axis=1)
    elif method != "pearson":
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    va, vb = va - va.mean(1, keepdims=True), vb - vb.mean(1, keepdims=True)
    return (va * vb).sum(1) / np.sqrt((va**2).sum(1) * (vb**2).sum(1))


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


def rsa_test(
    a: np.ndarray, b: np.ndarray, *, n_permutations: int = 10_000, seed: int = 0, method: Method = "spearman",
    alternative: Alternative = "greater", permutations: np.ndarray | None = None,
) -> PermutationResult:
    """Label-permutation test of RSA between `(n, n)` matrices a and b (b symmetric).

    Each permutation relabels b's items (rows and columns jointly). Vectorised: b's upper
    values are ranked once (spearman) and centred, the permuted upper triangles are gathered
    as an `(n_perm, n_pairs)` array, and all correlations are one matrix-vector product
    (relabelling permutes the pair values, so their mean and norm do not change).
    `permutations` `(n_perm, n)` replaces the random ones (e.g. exact enumeration).
    """
    a, b = _same_square(a, b)
    if not np.allclose(b, b.T):
        raise ValueError("b must be symmetric for a label-permutation test")
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    n = a.shape[0]
    iu, ju = np.triu_indices(n, k=1)
    va, vb = a[iu, ju], b[iu, ju]
    if method == "spearman":
        va, vb = stats.rankdata(va), stats.rankdata(vb)
    va, vb = va - va.mean(), vb - vb.mean()
    denom = np.linalg.norm(va) * np.linalg.norm(vb)
    if denom == 0:
        raise ValueError("a or b has a constant upper triangle; correlation undefined")
    full = np.zeros((n, n))
    full[iu, ju] = vb
    full += full.T  # symmetric matrix of centred (ranked) b values
    if permutations is None:
        permutations = np.random.default_rng(seed).permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    permutations = np.asarray(permutations)
    if permutations.ndim != 2 or permutations.shape[1] != n:
        raise ValueError(f"permutations must have shape (n_perm, {n}), got {permutations.shape}")
    null = np.empty(len(permutations))
    for start in range(0, len(null), 2048):  # chunks bound memory for large n
        p = permutations[start : start + 2048]
        null[start : start + len(p)] = full[p[:, iu], p[:, ju]] @ va / denom
    observed = float(full[iu, ju] @ va / denom)
    return PermutationResult(observed, permutation_p(observed, null, alternative=alternative), null)


# ---------------------------------------------------------------- bootstrap, effect sizes, rank tests
def bootstrap_ci(
    stat: Callable[[np.ndarray], float | np.ndarray], labels: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
    ci: float = 0.95, method: str = "percentile",
) -> BootstrapResult:
    """Stratified percentile bootstrap over items, labels `(n_items,)`.

    Each replicate resamples item indices with replacement within every label group (group
    sizes are kept) and calls `stat(indices)`, indices an int array `(n_items,)`. `stat` may return
    a scalar or an array `(k,)` (e.g. one value per layer): then estimate/low/high are `(k,)`.
    estimate = stat(arange(n_items)); samples `(n_boot,)` or `(n_boot, k)`.

    method "percentile" gives the replicates' quantiles; "basic" (reverse percentile, Davison & Hinkley
    1997) gives [2·estimate − q_high, 2·estimate − q_low], which corrects a shift of the replicates: e.g.
    an RSA over resampled stories is biased low, as duplicated stories make noisier emotion means.
    """
    if method not in ("percentile", "basic"):
        raise ValueError(f"method must be 'percentile' or 'basic', got {method!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    _z(ci)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    samples = np.array(
        [stat(np.concatenate([rng.choice(g, size=g.size) for g in groups])) for _ in range(n_boot)], dtype=float
    )
    low, high = np.quantile(samples, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    estimate = np.asarray(stat(np.arange(labels.size)), dtype=float)
    if method == "basic":
        low, high = 2 * estimate - high, 2 * estimate - low
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


def correct(pvalues: np.ndarray, *, method: str = "fdr_bh", alpha: float = 0.05) -> Corrected:
    """Multiple-comparison correction of pvalues `(n_tests,)` via statsmodels multipletests."""
    reject, p_adjusted, _, _ = multipletests(_vec(pvalues)[0], alpha=alpha, method=method)
    return Corrected(p_adjusted, reject)


# ---------------------------------------------------------------- label separation
def between_within_ratio(x: np.ndarray, labels: np.ndarray) -> Separation:
    """Mean pairwise cosine of same-label pairs (within) vs different-label pairs (between).

    x `(n, d)`, labels `(n,)`, pairs i < j. Returns within, between, difference
    (within - between) and ratio (within / between; unstable when between is near 0).
    """
    labels = _labels(labels, (x := _matrix(x)).shape[0])
    iu, ju = np.triu_indices(x.shape[0], k=1)
    sims, same = cosine_matrix(x)[iu, ju], labels[iu] == labels[ju]
    if same.all() or not same.any():
        raise ValueError("need at least one same-label pair and one different-label pair")
    within, between = float(sims[same].mean()), float(sims[~same].mean())
    return Separation(within, between, within - between, within / between)


def _centroid_predict(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, center: bool) -> np.ndarray:
    classes = np.unique(train_labels)
    centroids = np.stack([train_x[train_labels == c].mean(axis=0) for c in classes])
    if center:
        mu = centroids.mean(axis=0)
        centroids, test_x = centroids - mu, test_x - mu
    return classes[np.argmax(_unit_rows(test_x) @ _unit_rows(centroids).T, axis=1)]


def transfer_accuracy(
    train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, test_labels: np.ndarray, *,
    center: bool = True,
) -> float:
    """Accuracy of max-cosine nearest centroids from train `(n1, d)` on test `(n2, d)`.

    With center=True the mean of the centroids is subtracted from centroids and test points.
    """
    train_x, test_x = _matrix(train_x, "train_x"), _matrix(test_x, "test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x and test_x dims differ: {train_x.shape[1]} vs {test_x.shape[1]}")
    train_labels = _labels(train_labels, train_x.shape[0], "train_labels")
    test_labels = _labels(test_labels, test_x.shape[0], "test_labels")
    return float(np.mean(_centroid_predict(train_x, train_labels, test_x, center) == test_labels))


def nearest_centroid_accuracy(x: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, center: bool = True) -> float:
    """Leave-one-group-out nearest-centroid accuracy over all items of x `(n, d)`.

    labels, groups `(n,)`. For each group (e.g. topic), centroids come from the other groups'
    items (as in transfer_accuracy); held-out items whose label is absent from training are errors.
    """
    x = _matrix(x)
    labels, groups = _labels(labels, x.shape[0]), _labels(groups, x.shape[0], "groups")
    if np.unique(groups).size < 2:
        raise ValueError("need at least two groups for leave-groups-out evaluation")
    hits = 0
    for g in np.unique(groups):
        test = groups == g
        hits += int(np.sum(_centroid_predict(x[~test], labels[~test], x[test], center) == labels[test]))
    return hits / x.shape[0]


def silhouette(x: np.ndarray, labels: np.ndarray, *, metric: str = "cosine") -> float:
    """Mean silhouette coefficient of labels `(n,)` for x `(n, d)` (sklearn)."""
    return float(silhouette_score(x := _matrix(x), _labels(labels, x.shape[0]), metric=metric))


# ---------------------------------------------------------------- Procrustes alignment
def _loo_retrieval(x_train: list[np.ndarray], x_query: np.ndarray, y: np.ndarray) -> float:
    n, hits = y.shape[0], 0
    for i in range(n):
        keep = np.arange(n) != i
        my = y[keep].mean(axis=0)
        r, _ = orthogonal_procrustes(x_train[i], y[keep] - my)
        hits += int(np.argmax(_unit_rows(y - my) @ (x_query[i] @ r)) == i)
    return hits / n


def procrustes_test(x: np.ndarray, y: np.ndarray, *, n_permutations: int = 1000, seed: int = 0) -> PermutationResult:
    """Leave-one-out orthogonal-map retrieval accuracy between row-matched x, y `(n, d)`.

    With few points (e.g. 30 emotions) in high dimension an orthogonal map fits almost any
    pairing in-sample, so an in-sample fit is meaningless. Instead, for each i a map is fit
    (scipy orthogonal_procrustes) on the other n-1 pairs, x_i is mapped, and it is a hit if
    y_i is its cosine-nearest row among all of y. Each fold centres x and y on the mean of its
    n-1 training rows: rows centred over all n (e.g. emotion vectors centred over emotions) sum to
    zero, so x_i = -sum of the others and a map fitted on them would retrieve y_i by construction.
    Only the part of x_i in the span of the other (centred) x rows is mapped (the rest is
    unconstrained by the fit), so retrieval needs shared low-dimensional structure.
    Rows are first written in an orthonormal basis of their own row space (an isometry,
    d -> <= n). Null: the same statistic with y's rows shuffled. statistic in [0, 1].
    Cost: n * (n_permutations + 1) SVDs of at most n x n.
    """
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    if (n := x.shape[0]) < 4:
        raise ValueError(f"need at least 4 matched rows, got {n}")
    x, y = np.linalg.qr(x.T)[1].T, np.linalg.qr(y.T)[1].T  # (n, min(n, d)) row-space coordinates
    x_train, x_query = [], np.empty_like(x)
    for i in range(n):
        others = np.delete(x, i, axis=0)
        centred = others - others.mean(axis=0)
        x_train.append(centred)
        x_query[i] = np.linalg.lstsq(centred.T, x[i] - others.mean(axis=0), rcond=None)[0] @ centred
    observed = _loo_retrieval(x_train, x_query, y)
    rng = np.random.default_rng(seed)
    null = np.array([_loo_retrieval(x_train, x_query, y[rng.permutation(n)]) for _ in range(n_permutations)])
    return PermutationResult(observed, permutation_p(observed, null), null)


# ---------------------------------------------------------------- distances, clustering
def euclidean_distances(x: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances between rows of x `(n, d)` -> `(n, n)`."""
    return squareform(pdist(_matrix(x), metric="euclidean"))


def geodesic_distances(x: np.ndarray, *, k: int = 5) -> np.ndarray:
    """Isomap-style geodesic distances `(n, n)` of x `(n, d)`: shortest paths through the
    symmetrised Euclidean k-nearest-neighbour graph."""
    if not 1 <= k < (x := _matrix(x)).shape[0]:
        raise ValueError(f"k must be in [1, n-1] = [1, {x.shape[0] - 1}], got {k}")
    graph = kneighbors_graph(x, n_neighbors=k, mode="distance", metric="euclidean")
    dist = shortest_path(graph, method="D", directed=False)  # undirected = symmetrised graph
    if np.isinf(dist).any():
        raise ValueError(f"kNN graph with k={k} is disconnected; use a larger k")
    return dist


def kmeans_labels(x: np.ndarray, *, k: int = 4, seed: int = 0) -> np.ndarray:
    """KMeans cluster labels `(n,)` of x `(n, d)` (sklearn, n_init=10)."""
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(_matrix(x))


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index between two labelings `(n,)` (sklearn)."""
    return float(adjusted_rand_score(np.asarray(a), np.asarray(b)))


def hierarchical_order(sim: np.ndarray) -> np.ndarray:
    """Leaf order `(n,)` of average-linkage clustering on distance 1 - sim, sim `(n, n)`."""
    sim = _matrix(sim, "sim", square=True)
    dist = np.clip(1 - (sim + sim.T) / 2, 0, None)
    np.fill_diagonal(dist, 0)
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


# ---------------------------------------------------------------- PCA, depth profiles
def pc_scores(x: np.ndarray, *, n_pcs: int = 2) -> np.ndarray:
    """Scores `(n, n_pcs)` on the first principal components of x `(n, d)` (SVD of the centred x); each PC's
    sign is fixed so that its largest-|loading| entry is positive."""
    if not 1 <= n_pcs <= min((x := _matrix(x)).shape):
        raise ValueError(f"n_pcs must be in [1, {min(x.shape)}], got {n_pcs}")
    u, s, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    return u[:, :n_pcs] * s[:n_pcs] * signs[:n_pcs]


def pc_correlations(x: np.ndarray, targets: dict[str, np.ndarray], *, n_pcs: int = 2) -> list[dict]:
    """Pearson r and p between the first n_pcs PC scores of x `(n, d)` (see `pc_scores`) and each target `(n,)`.

    Returns rows {"pc": 1-based int, "target": name, "r": float, "p": float}.
    """
    scores, rows = pc_scores(x, n_pcs=n_pcs), []
    for pc in range(n_pcs):
        for name, target in targets.items():
            res = stats.pearsonr(scores[:, pc], _labels(target, scores.shape[0], f"target {name!r}"))
            rows.append({"pc": pc + 1, "target": name, "r": float(res.statistic), "p": float(res.pvalue)})
    return rows


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


# ---------------------------------------------------------------- pairwise preferences
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
