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
    ci: float = 0.95, method: str = "percentile", vectorized: bool = False,
) -> BootstrapResult:
    """Stratified percentile bootstrap over items, labels `(n_items,)`.

    Each replicate resamples item indices with replacement within every label group (group
    sizes are kept) and calls `stat(indices)`, indices an int array `(n_items,)`. `stat` may return
    a scalar or an array `(k,)` (e.g. one value per layer): then estimate/low/high are `(k,)`.
    estimate = stat(arange(n_items)); samples `(n_boot,)` or `(n_boot, k)`.

    method "percentile" gives the replicates' quantiles; "basic" (reverse percentile, Davison & Hinkley
    1997) gives [2·estimate − q_high, 2·estimate − q_low], which corrects a shift of the replicates: e.g.
    an RSA over resampled stories is biased low, as duplicated stories make noisier emotion means.
    "centred" shifts the percentile interval by the replicates' mean offset from the estimate (the
    replicates' spread around the estimate): for a shift that comes from resampling itself and that the
    real sample lacks, e.g. repeated items make class centroids noisier, which lowers a nearest-centroid
    accuracy in every replicate (where "basic" would move the interval above the estimate instead).

    vectorized=True calls `stat` once with all resamples stacked, indices `(1 + n_boot, n_items)` (row 0 is
    `arange(n_items)`, for the estimate), and takes back `(1 + n_boot,)` or `(1 + n_boot, k)`: for statistics
    that vectorise over resamples (e.g. `separation_scores(..., resamples=...)`). The resamples are the same.
    """
    if method not in ("percentile", "basic", "centred"):
        raise ValueError(f"method must be 'percentile', 'basic' or 'centred', got {method!r}")
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
    if method == "basic":
        low, high = 2 * estimate - high, 2 * estimate - low
    elif method == "centred":
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


# ---------------------------------------------------------------- per-layer separation, vectorised over resamples
@dataclass(frozen=True)
class SeparationScores:
    """Label separation per layer: each field `(n_layers,)`, or `(n_resamples, n_layers)` given resamples."""

    within: np.ndarray  # mean cosine over same-label pairs of distinct items
    between: np.ndarray  # mean cosine over different-label pairs
    distance_ratio: np.ndarray  # (1 - between) / (1 - within): between/within cosine-distance ratio; > 1 separates
    accuracy: np.ndarray  # leave-one-group-out nearest-centroid accuracy
    silhouette: np.ndarray  # mean silhouette on cosine distance


@dataclass(frozen=True)
class LayerTest:
    """One test per layer: statistic and p `(n_layers,)`, null `(n_draws, n_layers)`."""

    statistic: np.ndarray
    p: np.ndarray
    null: np.ndarray


def _layered(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (n_items, n_layers, d), got shape {x.shape}")
    if np.any(np.linalg.norm(x, axis=-1) == 0):
        raise ValueError("x has zero-norm items")
    return x


def resample_counts(resamples: np.ndarray, n_items: int) -> np.ndarray:
    """How often each item occurs in each resample: indices `(n_resamples, m)` -> counts `(n_resamples, n_items)`."""
    resamples = np.atleast_2d(np.asarray(resamples, dtype=np.int64))
    rows = np.repeat(np.arange(len(resamples)), resamples.shape[1])
    return np.bincount(rows * n_items + resamples.ravel(), minlength=len(resamples) * n_items).reshape(-1, n_items)


def mean_pairwise_cosine(x: np.ndarray, *, resamples: np.ndarray | None = None) -> np.ndarray:
    """Mean cosine over all pairs of distinct items at each layer of x `(n_items, n_layers, d)`: `(n_layers,)`.

    resamples `(n_resamples, m)` of item indices (e.g. what `bootstrap_ci(..., vectorized=True)` passes) give
    `(n_resamples, n_layers)`; an item is never paired with its own copies.
    """
    x = _layered(x)
    u = x / np.linalg.norm(x, axis=-1, keepdims=True)
    counts = np.ones((1, len(u))) if resamples is None else resample_counts(resamples, len(u)).astype(float)
    s = np.einsum("ri,ild->rld", counts, u)
    self_pairs = (counts**2).sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.einsum("rld,rld->rl", s, s) - self_pairs) / (counts.sum(1, keepdims=True) ** 2 - self_pairs)
    return out[0] if resamples is None else out


def separation_scores(x: np.ndarray, labels: np.ndarray, groups: np.ndarray, *,
                      resamples: np.ndarray | None = None) -> SeparationScores:
    """Label separation at every layer of x `(n_items, n_layers, d)`, labels and groups `(n_items,)`.

    Without resamples, per layer: within/between as `between_within_ratio`, accuracy as
    `nearest_centroid_accuracy(..., center=False)` (leave-one-group-out; centre x beforehand) and
    `silhouette` (cosine). With resamples `(n_resamples, m)` of item indices (a bootstrap): the scores of each
    resampled set, except that an item is never paired with its own copies (a duplicated story is no
    evidence of similarity): within/between average over pairs of distinct items and a silhouette's
    own-label distance is to the other distinct items (accuracy needs no such rule: copies share a group).

    Vectorised: per-layer Gram matrices are formed once; a resample only reweights items, so every score
    reduces to weighted class sums of Gram rows, computed for a chunk of resamples at once (in float32:
    plenty for bootstrap replicates). 1000 resamples of 360 items x 30 layers take seconds, not minutes.
    """
    x = _layered(x)
    n, n_layers, _ = x.shape
    names, y = np.unique(_labels(labels, n), return_inverse=True)
    _, g = np.unique(_labels(groups, n, "groups"), return_inverse=True)
    n_classes, n_groups = names.size, int(g.max()) + 1
    if n_classes < 2 or n_groups < 2:
        raise ValueError("need at least two labels and two groups")
    counts = np.ones((1, n)) if resamples is None else resample_counts(resamples, n).astype(float)
    dtype = np.float64 if resamples is None else np.float32
    order = np.lexsort((y, g))  # items sorted by (group, label): cells (group x label) and groups are contiguous
    x, y, g, counts = x[order], y[order], g[order], counts[:, order]
    cell_start = np.flatnonzero(np.r_[True, (np.diff(g) != 0) | (np.diff(y) != 0)])
    cell_group, cell_label = g[cell_start], y[cell_start]
    group_size = np.bincount(g)

    xl = x.transpose(1, 0, 2)
    gram = xl @ xl.transpose(0, 2, 1)  # (L, n, n)
    norms = np.sqrt(np.einsum("lii->li", gram))
    cos = gram / norms[:, :, None] / norms[:, None, :]
    width = np.bincount(y).max()  # each class's items, padded with a dummy item n to one width
    members = np.full((n_classes, width), n)
    for k in range(n_classes):
        members[k, : np.sum(y == k)] = np.flatnonzero(y == k)
    own = members[y]  # (n, width): the items of each item's class

    def padded(m: np.ndarray) -> np.ndarray:
        return np.concatenate([m, np.zeros((n_layers, n, 1))], axis=2)

    def by_class(m: np.ndarray) -> np.ndarray:  # (L, n, n) -> (K, L*n, width): columns of each class
        return np.ascontiguousarray(padded(m)[:, :, members].transpose(2, 0, 1, 3).reshape(n_classes, -1, width),
                                    dtype=dtype)

    def by_own(m: np.ndarray) -> np.ndarray:  # (L, n, n) -> (L, n, width): columns of the item's own class
        return padded(m)[:, np.arange(n)[:, None], own].astype(dtype)

    same_group = g[:, None] == g[None, :]
    class_cos, class_other = by_class(cos), by_class(gram * ~same_group)
    own_cos, own_gram, own_same = by_own(cos), by_own(gram), by_own(gram * same_group)
    onehot = np.eye(n_classes, dtype=dtype)[y]
    chunk = max(1, int(1e7 // (n_classes * n_layers * n)))
    parts: dict[str, list[np.ndarray]] = {"within": [], "between": [], "accuracy": [], "silhouette": []}
    for start in range(0, len(counts), chunk):
        c = counts[start : start + chunk].T.astype(dtype)  # (n, b) item weights of b resamples
        b = c.shape[1]
        c_pad = np.concatenate([c, np.zeros((1, b), dtype)])
        # sums over class k's items j of c_j * cos_ij (resp. gram_ij for j outside i's group): (K, L, n, b)
        a_cos = np.einsum("kiw,kwb->kib", class_cos, c_pad[members]).reshape(n_classes, n_layers, n, b)
        a_other = np.einsum("kiw,kwb->kib", class_other, c_pad[members]).reshape(n_classes, n_layers, n, b)
        o_cos, o_gram, o_same = (np.einsum("liw,iwb->lib", m, c_pad[own]) for m in (own_cos, own_gram, own_same))
        n_class = onehot.T @ c  # (K, b)
        total, self_pairs = c.sum(0), (c**2).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            # within / between: ordered pairs of distinct items, weighted c_i c_j
            same = np.einsum("lib,ib->lb", o_cos, c) - self_pairs
            every = np.einsum("lib,ib->lb", a_cos.sum(0), c) - self_pairs
            n_same = (n_class**2).sum(0) - self_pairs
            parts["within"].append(same / n_same)
            parts["between"].append((every - same) / (total**2 - self_pairs - n_same))

            # silhouette on cosine distance: a = mean distance to the other distinct items of the own class,
            # b = least mean distance to another class, s = (b - a) / max(a, b); 0 for a lone item
            a_den = n_class[y] - c  # (n, b)
            a = (n_class[y] - o_cos) / a_den
            mean_cos = a_cos  # (reused in place) mean cosine to each other class; -inf for the own or an empty class
            mean_cos *= np.where(n_class > 0, 1 / np.maximum(n_class, 1), 0)[:, None, None]
            if (n_class == 0).any():  # a class missing from a resample
                mean_cos[np.broadcast_to((n_class == 0)[:, None, None], mean_cos.shape)] = -np.inf
            mean_cos[y, :, np.arange(n)] = -np.inf
            nearest = 1 - mean_cos.max(0)  # (L, n, b)
            s = np.where((a_den > 0) & (c > 0), (nearest - a) / np.maximum(a, nearest), 0.0)
        parts["silhouette"].append(np.einsum("lib,ib->lb", np.nan_to_num(s), c) / total)

        # nearest centroid leaving group t out: class k's centroid is v_kt / n_kt, v_kt = s_k - u_kt (s_k the
        # class sum, u_kt the sum over the class's items in t); item i picks argmax_k x_i . v_kt / |v_kt|.
        # |v_kt|^2 = s_k.s_k - 2 s_k.u_kt + u_kt.u_kt, each a weighted sum of own-class Gram sums.
        in_cell = np.zeros((n_groups, n_classes, b), dtype)
        in_cell[cell_group, cell_label] = np.add.reduceat(c, cell_start, axis=0)
        absent = n_class[None] - in_cell <= 0  # (T, K, b): classes with no training items

        def per_cell(v: np.ndarray) -> np.ndarray:  # (L, n, b) item values -> (L, T, K, b) cell sums
            out = np.zeros((n_layers, n_groups, n_classes, b), dtype)
            out[:, cell_group, cell_label] = np.add.reduceat(v * c, cell_start, axis=1)
            return out

        s_sq = np.einsum("lib,ib,ik->lkb", o_gram, c, onehot)  # (L, K, b)
        v_sq = s_sq[:, None] - 2 * per_cell(o_gram) + per_cell(o_same)
        with np.errstate(invalid="ignore", divide="ignore"):
            inv_norm = np.where(v_sq > 0, 1 / np.sqrt(np.maximum(v_sq, 0)), 0.0)
        score = a_other  # (reused in place) x_i . v_kt / |v_kt|  (K, L, n, b)
        score *= np.repeat(inv_norm.transpose(2, 0, 1, 3), group_size, axis=2)
        if absent.any():
            score[np.repeat(absent.transpose(1, 0, 2)[:, None], group_size, axis=2)
                  .repeat(n_layers, axis=1)] = -np.inf
        hits = score.argmax(0) == y[None, :, None]  # (L, n, b)
        parts["accuracy"].append(np.einsum("lib,ib->lb", hits.astype(dtype), c) / total)

    scores = {name: np.concatenate(v, axis=1).T.astype(np.float64) for name, v in parts.items()}  # (n_resamples, L)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores["distance_ratio"] = (1 - scores["between"]) / (1 - scores["within"])
    return SeparationScores(**{k: v[0] if resamples is None else v for k, v in scores.items()})


def separation_permutation_test(x: np.ndarray, labels: np.ndarray, *, n_permutations: int = 1000,
                                seed: int = 0) -> LayerTest:
    """Label-shuffling test of within - between mean cosine (as `between_within_ratio`) at each layer of
    x `(n_items, n_layers, d)`, labels `(n_items,)`; p = (k + 1) / (n + 1), one-sided (greater).

    Vectorised: the cosine matrices are formed once; shuffling labels only moves which pairs count as
    same-label, so each shuffle's within sum is a gather of those pairs.
    """
    x = _layered(x)
    n, n_layers, _ = x.shape
    labels = _labels(labels, n)
    u = x / np.linalg.norm(x, axis=-1, keepdims=True)
    ul = u.transpose(1, 0, 2)
    cos = (ul @ ul.transpose(0, 2, 1)).reshape(n_layers, n * n)
    first, second = np.triu_indices(n, k=1)
    same = labels[first] == labels[second]
    first, second = first[same], second[same]
    n_pairs, n_same = n * (n - 1) / 2, same.sum()
    if n_same == 0 or n_same == n_pairs:
        raise ValueError("need at least one same-label pair and one different-label pair")
    total = (cos.sum(1) - n) / 2  # sum over unordered pairs of distinct items

    def difference(within_sum: np.ndarray) -> np.ndarray:
        return within_sum / n_same - (total - within_sum) / (n_pairs - n_same)

    observed = difference(cos[:, first * n + second].sum(1))
    shuffles = np.random.default_rng(seed).permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    null = np.empty((n_permutations, n_layers))
    step = max(1, int(2e7 // (n_layers * n_same)))
    for start in range(0, n_permutations, step):
        p = shuffles[start : start + step]
        null[start : start + len(p)] = difference(cos[:, p[:, first] * n + p[:, second]].sum(-1).T)
    p_values = np.array([permutation_p(observed[l], null[:, l]) for l in range(n_layers)])
    return LayerTest(observed, p_values, null)


def _one_vs_rest_d(proj: np.ndarray, labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Cohen's d (pooled SD) of projections of items labelled target[j] vs the rest, for every direction j:
    proj `(n, n_layers, n_dirs)`, labels `(n,)`, target `(n_dirs,)` -> `(n_layers, n_dirs)`."""
    mask = (labels[:, None] == target[None, :]).astype(proj.dtype)  # (n, n_dirs)
    n1 = mask.sum(0)
    n2 = len(labels) - n1
    s1, ss1 = np.einsum("nlj,nj->lj", proj, mask), np.einsum("nlj,nj->lj", proj**2, mask)
    s, ss = proj.sum(0), (proj**2).sum(0)
    m1, m2 = s1 / n1, (s - s1) / n2
    pooled = (ss1 - n1 * m1**2 + (ss - ss1) - n2 * m2**2) / (n1 + n2 - 2)
    return (m1 - m2) / np.sqrt(pooled)


def direction_test(x: np.ndarray, labels: np.ndarray, folds: np.ndarray, *, n_random: int = 200,
                   seed: int = 0) -> LayerTest:
    """Held-out separation along class directions against random directions, at each layer of x
    `(n_items, n_layers, d)`, labels `(n_items,)`, folds `(n_items,)` with two values (e.g. halves of the topics).

    Fit on one fold, test on the other, both ways: a class's direction is its mean minus the mean of the
    class means on the fit fold; the statistic is the mean over classes and both ways of the one-vs-rest
    Cohen's d (pooled SD) of the test fold's projections onto the class's own direction. Null: the same
    with each class's direction replaced by an isotropic random unit direction, signed so that its d on
    the fit fold is positive (n_random draws of one direction per class). p = (k + 1) / (n + 1) per layer.
    """
    x = _layered(x)
    n, n_layers, d = x.shape
    labels, folds = _labels(labels, n), _labels(folds, n, "folds")
    names, y = np.unique(labels, return_inverse=True)
    fold_ids = np.unique(folds)
    if fold_ids.size != 2:
        raise ValueError(f"folds must take exactly two values, got {fold_ids.size}")
    halves = [folds == f for f in fold_ids]
    for half in halves:
        if np.unique(y[half]).size != names.size or np.bincount(y[half]).min() < 2:
            raise ValueError("every label needs at least two items in each fold")
    x = x - x.mean(0)  # projections' effect sizes do not change; their sums of squares stay well-conditioned
    k_ids = np.arange(names.size)
    observed = np.zeros(n_layers)
    for fit, test in ((halves[0], halves[1]), (halves[1], halves[0])):
        means = np.stack([x[fit & (y == k)].mean(0) for k in k_ids])  # (K, L, d)
        directions = means - means.mean(0)
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
        proj = np.einsum("nld,kld->nlk", x[test], directions)
        observed += _one_vs_rest_d(proj, y[test], k_ids).mean(1) / 2
    rng = np.random.default_rng(seed)
    null = np.zeros((n_random, n_layers))
    xf = x.astype(np.float32).reshape(n * n_layers, d)
    step = max(1, int(4e6 // (n * n_layers * names.size)))
    for start in range(0, n_random, step):
        m = min(step, n_random - start)
        u = rng.standard_normal((d, m * names.size)).astype(np.float32)
        u /= np.linalg.norm(u, axis=0)
        proj = (xf @ u).reshape(n, n_layers, m * names.size).astype(np.float64)
        target = np.tile(k_ids, m)
        d_half = [_one_vs_rest_d(proj[half], y[half], target) for half in halves]  # (L, m*K) each
        oriented = (np.sign(d_half[0]) * d_half[1] + np.sign(d_half[1]) * d_half[0]) / 2
        null[start : start + m] = oriented.reshape(n_layers, m, names.size).mean(2).T
    p_values = np.array([permutation_p(observed[l], null[:, l]) for l in range(n_layers)])
    return LayerTest(observed, p_values, null)


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


# ---------------------------------------------------------------- cross-model RSA: class means from Gram matrices, RSA grids
def class_mean_cosines(gram: np.ndarray, labels: np.ndarray, *, resamples: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarities of the centered class means of items, computed from the items' Gram matrices.

    gram `(n_layers, n_items, n_items)` holds x_i . x_j per layer (e.g. stories' activations, after any fixed
    linear map such as a projection), labels `(n_items,)`: per layer, the class means m_k (classes in
    `np.unique` order), centered over classes (m_k - mean_j m_j), and their cosines `(n_layers, K, K)`. Exact:
    every inner product of (centered) means is a weighted sum of Gram entries, so the items' width never
    enters. labels `(n_labelings, n_items)` (e.g. shuffled labels; every row with the same classes) give
    `(n_labelings, n_layers, K, K)`. resamples `(n_resamples, m)` of item indices (a bootstrap, e.g. what
    `bootstrap_ci(..., vectorized=True)` passes) give the matrices of each resampled item set
    `(n_resamples, n_layers, K, K)`; a resample that lacks a class gives NaN (the center needs them all).
    Several labelings or resamples are computed in float32 with torch, in chunks. A labeling costs
    K·n_items² per layer (one-hot weights, a matrix product); a resample n_items² (each pair of classes: the
    Gram block of their items against the outer product of the items' weights, i.e. their counts).
    """
    import torch

    gram = np.asarray(gram)
    if gram.ndim != 3 or gram.shape[1] != gram.shape[2]:
        raise ValueError(f"gram must be (n_layers, n_items, n_items), got shape {gram.shape}")
    n_layers, n, _ = gram.shape
    labels = np.asarray(labels)
    if labels.ndim == 2 and resamples is not None:
        raise ValueError("give several labelings or resamples, not both")
    rows = labels if labels.ndim == 2 else labels[None]
    if rows.shape[1] != n:
        raise ValueError(f"labels must have {n} items per row, got shape {labels.shape}")
    names = np.unique(rows[0])
    k_classes = names.size
    if k_classes < 2:
        raise ValueError("need at least two classes")
    if any(not np.array_equal(np.unique(row), names) for row in rows[1:]):
        raise ValueError("every labeling must have the same classes")
    single = labels.ndim == 1 and resamples is None
    dtype = torch.float64 if single else torch.float32
    g = torch.from_numpy(gram).to(dtype)
    if resamples is None:  # one-hot weights: one matrix product per chunk of labelings
        out = []
        for start in range(0, len(rows), 32):
            y = torch.from_numpy(np.searchsorted(names, rows[start : start + 32]))  # (b, n)
            onehot = torch.nn.functional.one_hot(y, k_classes).to(dtype)
            weight = onehot / onehot.sum(1, keepdim=True)  # (b, n, K)
            half = (g.reshape(-1, n) @ weight.permute(1, 0, 2).reshape(n, -1)).reshape(n_layers, n, len(y), k_classes)
            out.append(torch.einsum("bik,libj->blkj", weight, half))
        means = torch.cat(out)
    else:
        y = np.searchsorted(names, rows[0])
        width = np.bincount(y).max()  # each class's items, padded with a dummy item n (weight 0) to one width
        members = np.full((k_classes, width), n)
        for k in range(k_classes):
            members[k, : np.sum(y == k)] = np.flatnonzero(y == k)
        index = torch.from_numpy(members)
        padded = torch.nn.functional.pad(g, (0, 1, 0, 1))
        blocks = padded[:, index[:, :, None, None], index[None, None]]  # (L, K, w, K, w)
        blocks = blocks.permute(1, 3, 2, 4, 0).reshape(k_classes**2, width**2, n_layers)  # (K*K, w*w, L)
        counts = torch.from_numpy(resample_counts(resamples, n)).to(dtype)
        totals = counts @ torch.nn.functional.one_hot(torch.from_numpy(y), k_classes).to(dtype)
        weight = counts / totals[:, torch.from_numpy(y)]  # each item's weight in its class mean
        weight = torch.nn.functional.pad(weight, (0, 1))[:, index]  # (R, K, w)
        out = []
        for w in weight.split(max(1, int(2e7 // (k_classes * width) ** 2))):
            outer = (w[:, :, None, :, None] * w[:, None, :, None, :]).reshape(len(w), -1, width**2)  # (b, K*K, w*w)
            out.append(torch.bmm(outer.transpose(0, 1), blocks).permute(1, 2, 0))  # (b, L, K*K)
        means = torch.cat(out).reshape(len(weight), n_layers, k_classes, k_classes)
    means = means - means.mean(-1, keepdim=True) - means.mean(-2, keepdim=True) + means.mean((-2, -1), keepdim=True)
    means = (means + means.transpose(-1, -2)) / 2  # exactly symmetric despite rounding
    norms = torch.diagonal(means, dim1=-2, dim2=-1).clamp_min(torch.finfo(dtype).tiny).sqrt()
    cos = (means / (norms[..., :, None] * norms[..., None, :])).numpy()
    return cos[0] if single else cos


def rsa_vectors(matrices: np.ndarray, *, method: Method = "spearman") -> np.ndarray:
    """Strict upper triangles of square matrices `(..., n, n)`, ranked (spearman) within each matrix, centred
    and scaled to unit norm, float32 if the matrices are: `(..., n*(n-1)/2)`. The dot product of two of them
    is their `rsa`, so a whole grid of RSA values is one matrix product."""
    import torch

    m = np.asarray(matrices)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"need square matrices (..., n, n), got shape {m.shape}")
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    iu, ju = np.triu_indices(m.shape[-1], k=1)
    v = torch.from_numpy(np.ascontiguousarray(m[..., iu, ju]))
    v = v.double() if v.dtype != torch.float32 else v
    if method == "spearman":  # ranks from one sort; rows with ties (rare for cosines) get average ranks
        ordered, order = torch.sort(v, dim=-1)
        ranks = torch.empty_like(v).scatter_(-1, order, torch.arange(1, iu.size + 1, dtype=v.dtype).expand_as(v))
        tied = (ordered.diff(dim=-1) == 0).any(-1)
        if tied.any():
            ranks[tied] = torch.from_numpy(stats.rankdata(v[tied].numpy(), axis=-1)).to(v.dtype)
        v = ranks
    v = v - v.mean(-1, keepdim=True)
    return (v / v.norm(dim=-1, keepdim=True)).numpy()  # NaN for a constant upper triangle: r is undefined


def rsa_grid(a: np.ndarray, b: np.ndarray, *, method: Method = "spearman") -> np.ndarray:
    """`rsa` of every matrix in stack a `(k1, n, n)` with every matrix in stack b `(k2, n, n)` (e.g. every
    layer of one model against every layer of another): `(k1, k2)`."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"need two stacks of (n, n) matrices, got {a.shape} and {b.shape}")
    return rsa_vectors(a, method=method) @ rsa_vectors(b, method=method).T


@dataclass(frozen=True)
class GridTest:
    grid: np.ndarray  # (k1, k2) observed RSA
    null: np.ndarray  # (n_permutations, k1, k2) RSA after relabelling b's items


def rsa_grid_test(a: np.ndarray, b: np.ndarray, *, n_permutations: int = 10_000, seed: int = 0,
                  method: Method = "spearman", permutations: np.ndarray | None = None) -> GridTest:
    """Label-permutation null of a whole RSA grid between stacks a `(k1, n, n)` and b `(k2, n, n)` (b symmetric).

    Each permutation relabels the items of every matrix of b jointly (rows and columns), so any statistic of
    the grid, such as its maximum over layer pairs or its mean along matched depths, has a null that includes
    how it was picked: p = permutation_p(stat(grid), stat(null)). For a seed the permutations are those of
    `rsa_test` (a 1 x 1 grid gives its null); `permutations` `(n_perm, n)` replaces them.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    grid = rsa_grid(a, b, method=method)
    if not np.allclose(b, b.transpose(0, 2, 1)):
        raise ValueError("b must be symmetric for a label-permutation test")
    n = a.shape[1]
    if permutations is None:
        permutations = np.random.default_rng(seed).permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    permutations = np.asarray(permutations)
    if permutations.ndim != 2 or permutations.shape[1] != n:
        raise ValueError(f"permutations must have shape (n_permutations, {n}), got {permutations.shape}")
    va = rsa_vectors(a, method=method)
    iu, ju = np.triu_indices(n, k=1)
    full = np.zeros((b.shape[0], n, n))
    full[:, iu, ju] = rsa_vectors(b, method=method)  # relabelling permutes b's upper values: ranks need no redo
    full += full.transpose(0, 2, 1)
    chunk = max(1, int(1e7 // (b.shape[0] * iu.size)))
    null = np.concatenate([full[:, p[:, iu], p[:, ju]].transpose(1, 0, 2) @ va.T
                           for p in (permutations[i : i + chunk] for i in range(0, len(permutations), chunk))])
    return GridTest(grid, null.transpose(0, 2, 1))
