"""Similarity matrices and representational similarity analysis (RSA): cosine matrices and their upper
triangles, RSA between two matrices, two stacks of them or every pair of matrices of two stacks (a grid,
e.g. layer by layer across two models), label-permutation tests of a single RSA and of a whole grid, and the
cosines of centered class means computed exactly from the items' Gram matrices (so cross-model RSA never
needs the items' width).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ._common import Alternative, Method, _matrix, _same_square
from .inference import PermutationResult, permutation_p, resample_counts


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


def rsa_test(
    a: np.ndarray, b: np.ndarray, *, n_permutations: int = 10_000, seed: int = 0, method: Method = "spearman",
    alternative: Alternative = "greater", permutations: np.ndarray | None = None,
) -> PermutationResult:
    """Label-permutation test of RSA between `(n, n)` matrices a and b (b symmetric).

    Each permutation relabels b's items (rows and columns jointly). Vectorised: b's upper
    values are ranked once (spearman) and centered, the permuted upper triangles are gathered
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
    full += full.T  # symmetric matrix of centered (ranked) b values
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
    """Strict upper triangles of square matrices `(..., n, n)`, ranked (spearman) within each matrix, centered
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
