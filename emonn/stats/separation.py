"""How well labels separate items: within- vs between-label mean cosine, nearest-centroid accuracy
(train-to-test transfer and leave-one-group-out), silhouette, and their per-layer forms vectorised over
bootstrap resamples (`separation_scores`, `mean_pairwise_cosine`), with a label-shuffling test and a
random-direction baseline at each layer (`separation_permutation_test`, `direction_test`). The one-layer
`between_within_ratio` and `silhouette` are test references for the vectorised scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import silhouette_score

from ._common import _labels, _matrix, _unit_rows
from .inference import permutation_p, resample_counts
from .similarity import cosine_matrix


@dataclass(frozen=True)
class Separation:
    within: float  # mean cosine over same-label pairs
    between: float  # mean cosine over different-label pairs
    difference: float  # within - between
    ratio: float  # within / between


def between_within_ratio(x: np.ndarray, labels: np.ndarray) -> Separation:
    """Mean pairwise cosine of same-label pairs (within) vs different-label pairs (between).

    x `(n, d)`, labels `(n,)`, pairs i < j. Returns within, between, difference
    (within - between) and ratio (within / between; unstable when between is near 0).

    Reference implementation: kept for tests that compare `separation_scores` and
    `separation_permutation_test` against it.
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
    """Mean silhouette coefficient of labels `(n,)` for x `(n, d)` (sklearn).

    Reference implementation: kept for tests that compare `separation_scores` against it.
    """
    return float(silhouette_score(x := _matrix(x), _labels(labels, x.shape[0]), metric=metric))


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
    `nearest_centroid_accuracy(..., center=False)` (leave-one-group-out; center x beforehand) and
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
