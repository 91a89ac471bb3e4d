"""Geometry of a set of representations beyond pairwise cosines: leave-one-out orthogonal (Procrustes)
alignment between two row-matched sets with a permutation test, Euclidean and Isomap-style geodesic
distances, k-means labels and the adjusted Rand index (and the agreement of two clusterings against a
permutation null, with their stability over seeds), the leaf order of average-linkage clustering, and
principal-component scores and their correlations with targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.linalg import orthogonal_procrustes
from scipy.sparse.csgraph import shortest_path
from scipy.spatial.distance import pdist, squareform
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import kneighbors_graph

from ._common import _labels, _matrix, _unit_rows
from .inference import PermutationResult, permutation_p


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
    y_i is its cosine-nearest row among all of y. Each fold centers x and y on the mean of its
    n-1 training rows: rows centered over all n (e.g. emotion vectors centered over emotions) sum to
    zero, so x_i = -sum of the others and a map fitted on them would retrieve y_i by construction.
    Only the part of x_i in the span of the other (centered) x rows is mapped (the rest is
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
        centered = others - others.mean(axis=0)
        x_train.append(centered)
        x_query[i] = np.linalg.lstsq(centered.T, x[i] - others.mean(axis=0), rcond=None)[0] @ centered
    observed = _loo_retrieval(x_train, x_query, y)
    rng = np.random.default_rng(seed)
    null = np.array([_loo_retrieval(x_train, x_query, y[rng.permutation(n)]) for _ in range(n_permutations)])
    return PermutationResult(observed, permutation_p(observed, null), null)


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


@dataclass(frozen=True)
class ClusterAgreement:
    ari: float  # mean over k-means seeds of the adjusted Rand index between the two clusterings
    p: float  # permutation p: b's items relabelled (the same relabelling for every seed)
    null_high: float  # 95th percentile of the null mean ARI
    stability_a: float  # mean ARI between the clusterings of a under different seeds (1 = always the same)
    stability_b: float
    seeds_range: tuple[float, float]  # lowest and highest ARI between a and b over the seeds


def _adjusted_rand_many(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Adjusted Rand index of labels a `(n,)` against each row of b `(P, n)` (ints from 0), from the
    contingency tables: `(P,)`, equal to sklearn's."""
    ta = np.eye(a.max() + 1)[a]  # (n, ka)
    tb = np.eye(b.max() + 1)[b]  # (P, n, kb)
    table = np.einsum("ni,pnj->pij", ta, tb)
    pairs = lambda m: (m * (m - 1) / 2).sum(axis=tuple(range(1, m.ndim)))  # noqa: E731
    index, rows, cols = pairs(table), pairs(table.sum(2)), pairs(table.sum(1))
    expected = rows * cols / (len(a) * (len(a) - 1) / 2)
    top = (rows + cols) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(top == expected, 1.0, (index - expected) / (top - expected))


def cluster_agreement(x_a: np.ndarray, x_b: np.ndarray, *, k: int = 4, seeds: int = 10,
                      n_permutations: int = 1000, seed: int = 0) -> ClusterAgreement:
    """Agreement of the k-means clusterings of the same items in two spaces x_a `(n, d_a)` and x_b `(n, d_b)`:
    the adjusted Rand index averaged over `seeds` k-means runs (different seeds for the two spaces: one seed
    starts both from the same items, which alone makes unrelated clusterings agree), against a permutation
    null (ARI is 0 only in expectation; with few items its null spread is wide), with each space's
    stability over seeds."""
    la = np.array([kmeans_labels(x_a, k=k, seed=seed + s) for s in range(seeds)])
    lb = np.array([kmeans_labels(x_b, k=k, seed=seed + seeds + s) for s in range(seeds)])
    cross = np.array([_adjusted_rand_many(a, b[None])[0] for a, b in zip(la, lb)])
    perms = np.random.default_rng(seed).permuted(np.tile(np.arange(la.shape[1]), (n_permutations, 1)), axis=1)
    null = np.mean([_adjusted_rand_many(a, b[perms]) for a, b in zip(la, lb)], axis=0)
    within = [np.mean([_adjusted_rand_many(ls[i], ls[i + 1:]).mean() for i in range(seeds - 1)])
              if seeds > 1 else 1.0 for ls in (la, lb)]
    mean = float(cross.mean())
    return ClusterAgreement(mean, permutation_p(mean, null), float(np.quantile(null, 0.95)), float(within[0]),
                            float(within[1]), (float(cross.min()), float(cross.max())))


def hierarchical_order(sim: np.ndarray) -> np.ndarray:
    """Leaf order `(n,)` of average-linkage clustering on distance 1 - sim, sim `(n, n)`."""
    sim = _matrix(sim, "sim", square=True)
    dist = np.clip(1 - (sim + sim.T) / 2, 0, None)
    np.fill_diagonal(dist, 0)
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


def pc_scores(x: np.ndarray, *, n_pcs: int = 2, sign_by: np.ndarray | None = None) -> np.ndarray:
    """Scores `(n, n_pcs)` on the first principal components of x `(n, d)` (SVD of the centered x). A PC's sign
    is arbitrary; it is fixed so that the scores correlate non-negatively with sign_by `(n,)` (e.g. valence,
    which makes PCs of two languages or models comparable), or else so that its largest-|loading| entry is
    positive."""
    if not 1 <= n_pcs <= min((x := _matrix(x)).shape):
        raise ValueError(f"n_pcs must be in [1, {min(x.shape)}], got {n_pcs}")
    u, s, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    scores = u[:, :n_pcs] * s[:n_pcs]
    if sign_by is None:
        return scores * np.sign(vt[np.arange(n_pcs), np.argmax(np.abs(vt[:n_pcs]), axis=1)])
    sign_by = _labels(sign_by, x.shape[0], "sign_by")
    return scores * np.where((scores * (sign_by - sign_by.mean())[:, None]).sum(0) < 0, -1.0, 1.0)


def pc_correlations(x: np.ndarray, targets: dict[str, np.ndarray], *, n_pcs: int = 2,
                    sign_by: np.ndarray | None = None) -> list[dict]:
    """Pearson r and p between the first n_pcs PC scores of x `(n, d)` (see `pc_scores`, sign_by fixes the
    signs) and each target `(n,)`. The targets must not be computed from x itself (a projection of x on a
    direction of x correlates with its PCs by construction; its p would mean nothing).

    Returns rows {"pc": 1-based int, "target": name, "r": float, "p": float}.
    """
    scores, rows = pc_scores(x, n_pcs=n_pcs, sign_by=sign_by), []
    for pc in range(n_pcs):
        for name, target in targets.items():
            res = stats.pearsonr(scores[:, pc], _labels(target, scores.shape[0], f"target {name!r}"))
            rows.append({"pc": pc + 1, "target": name, "r": float(res.statistic), "p": float(res.pvalue)})
    return rows
