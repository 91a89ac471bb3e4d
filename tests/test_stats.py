import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.metrics.pairwise import cosine_similarity
from statsmodels.stats.multitest import multipletests

from emonn import stats as S

Z95 = 1.959963984540054


def _sym(rng, n):
    m = rng.normal(size=(n, n))
    return (m + m.T) / 2


def _clusters(rng, n_classes=4, per_class=12, d=16, spread=0.1):
    means = rng.normal(size=(n_classes, d))
    labels = np.repeat(np.arange(n_classes), per_class)
    return means[labels] + spread * rng.normal(size=(labels.size, d)), labels


# ---------------------------------------------------------------- RSA
def test_cosine_matrix_matches_sklearn_and_rejects_zero_rows():
    x = np.random.default_rng(0).normal(size=(7, 5))
    m = S.cosine_matrix(x)
    assert m.dtype == np.float64 and m.shape == (7, 7)
    np.testing.assert_allclose(m, cosine_similarity(x), atol=1e-12)
    with pytest.raises(ValueError, match="zero-norm"):
        S.cosine_matrix(np.vstack([x, np.zeros(5)]))


def test_upper_values_and_shape():
    m = np.arange(9.0).reshape(3, 3)
    np.testing.assert_array_equal(S.upper(m), [1, 2, 5])
    assert S.upper(np.zeros((30, 30))).shape == (435,)
    with pytest.raises(ValueError, match="square"):
        S.upper(np.zeros((3, 4)))


def test_rsa_identity_and_against_scipy():
    rng = np.random.default_rng(1)
    a, b = _sym(rng, 10), _sym(rng, 10)
    assert S.rsa(a, a) == pytest.approx(1.0)
    assert S.rsa(a, b) == pytest.approx(sps.spearmanr(S.upper(a), S.upper(b)).statistic)
    assert S.rsa(a, b, method="pearson") == pytest.approx(sps.pearsonr(S.upper(a), S.upper(b)).statistic)
    with pytest.raises(ValueError, match="same shape"):
        S.rsa(a, b[:9, :9])
    with pytest.raises(ValueError, match="method"):
        S.rsa(a, b, method="kendall")


def test_rsa_of_label_shuffled_matrix_is_near_zero_on_average():
    rng = np.random.default_rng(2)
    a = S.cosine_matrix(rng.normal(size=(30, 8)))
    values = []
    for _ in range(300):
        p = rng.permutation(30)
        values.append(S.rsa(a, a[np.ix_(p, p)]))
    assert abs(np.mean(values)) < 0.02


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_rsa_test_null_matches_scipy_per_permutation(method):
    rng = np.random.default_rng(3)
    a, b = _sym(rng, 12), _sym(rng, 12)
    perms = np.stack([rng.permutation(12) for _ in range(5)])
    res = S.rsa_test(a, b, method=method, permutations=perms)
    assert res.statistic == pytest.approx(S.rsa(a, b, method=method), abs=1e-12)
    ref = sps.spearmanr if method == "spearman" else sps.pearsonr
    for p, value in zip(perms, res.null):
        assert value == pytest.approx(ref(S.upper(a), S.upper(b[np.ix_(p, p)])).statistic, abs=1e-12)


def test_rsa_test_spearman_with_ties_matches_scipy():
    rng = np.random.default_rng(4)
    a = np.round(_sym(rng, 9), 1)
    b = np.round(_sym(rng, 9), 0)  # many ties
    p = rng.permutation(9)
    res = S.rsa_test(a, b, permutations=p[None])
    assert res.null[0] == pytest.approx(sps.spearmanr(S.upper(a), S.upper(b[np.ix_(p, p)])).statistic)


def test_rsa_test_exact_enumeration_n5():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 3))
    a = S.cosine_matrix(x)
    b = S.cosine_matrix(x + 0.8 * rng.normal(size=(5, 3)))
    perms = np.array(list(itertools.permutations(range(5))))
    brute = np.array([sps.spearmanr(S.upper(a), S.upper(b[np.ix_(p, p)])).statistic for p in perms])
    observed = sps.spearmanr(S.upper(a), S.upper(b)).statistic
    k = np.sum(brute >= observed - 1e-12)
    exact = S.rsa_test(a, b, permutations=perms)
    np.testing.assert_allclose(np.sort(exact.null), np.sort(brute), atol=1e-12)
    assert exact.p == pytest.approx((k + 1) / (len(perms) + 1))
    sampled = S.rsa_test(a, b, n_permutations=20_000, seed=1)
    assert 0.02 < k / 120 < 0.98  # the case is non-degenerate
    assert sampled.p == pytest.approx(k / 120, abs=0.015)


def test_rsa_test_related_vs_unrelated_and_input_checks():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20, 6))
    a = S.cosine_matrix(x)
    related = S.rsa_test(a, S.cosine_matrix(x + 0.5 * rng.normal(size=x.shape)), n_permutations=999)
    unrelated = S.rsa_test(a, S.cosine_matrix(rng.normal(size=x.shape)), n_permutations=999)
    assert related.p == pytest.approx(1 / 1000)
    assert unrelated.p > 0.05
    assert abs(unrelated.null.mean()) < 0.01 and unrelated.null.shape == (999,)
    with pytest.raises(ValueError, match="symmetric"):
        S.rsa_test(a, rng.normal(size=(20, 20)))
    with pytest.raises(ValueError, match="permutations"):
        S.rsa_test(a, a, permutations=np.zeros((3, 19), dtype=int))


def test_rsa_test_is_calibrated_on_unrelated_matrices():
    rng = np.random.default_rng(7)
    ps = []
    for _ in range(60):
        a, b = S.cosine_matrix(rng.normal(size=(30, 50))), S.cosine_matrix(rng.normal(size=(30, 50)))
        res = S.rsa_test(a, b, n_permutations=1000, seed=len(ps))
        assert abs(res.null.mean()) < 0.02
        ps.append(res.p)
    assert np.mean(np.array(ps) < 0.05) < 0.15 and 0.35 < np.mean(ps) < 0.65


def test_permutation_p_formula():
    null = np.array([0.1, 0.5, 0.7, 0.2, -0.9])
    assert S.permutation_p(0.5, null) == pytest.approx(3 / 6)
    assert S.permutation_p(0.5, null, alternative="less") == pytest.approx(5 / 6)
    assert S.permutation_p(0.5, null, alternative="two-sided") == pytest.approx(4 / 6)
    assert S.permutation_p(2.0, null) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="alternative"):
        S.permutation_p(0.5, null, alternative="both")


# ---------------------------------------------------------------- bootstrap, effect sizes, tests
def test_bootstrap_ci_contains_truth_for_mean():
    rng = np.random.default_rng(8)
    values = rng.normal(loc=3.0, scale=1.0, size=200)
    res = S.bootstrap_ci(lambda idx: values[idx].mean(), np.zeros(200), n_boot=500)
    assert res.estimate == pytest.approx(values.mean())
    assert res.low < 3.0 < res.high
    assert res.high - res.low == pytest.approx(2 * Z95 * values.std() / np.sqrt(200), rel=0.2)
    assert res.samples.shape == (500,) and res.samples.std() > 0


def test_bootstrap_ci_stratification_keeps_label_counts():
    labels = np.array(["joy"] * 3 + ["fear"] * 5 + ["anger"] * 2)
    seen = []

    def stat(idx):
        seen.append(idx)
        return float(np.mean(idx))

    S.bootstrap_ci(stat, labels, n_boot=50)
    assert len(seen) == 51  # 50 replicates + the full-sample estimate
    for idx in seen:
        assert sorted(labels[idx]) == sorted(labels)
    assert sum(len(np.unique(idx)) < 10 for idx in seen) > 40  # really resamples


def test_cohens_d_independent_hand():
    a, b = np.array([1, 2, 3, 4, 5.0]), np.array([3, 4, 5, 6, 7.0])
    d = -2 / math.sqrt(2.5)
    se = math.sqrt(10 / 25 + d**2 / 20)
    res = S.cohens_d(a, b)
    assert res.d == pytest.approx(d)
    assert (res.low, res.high) == pytest.approx((d - Z95 * se, d + Z95 * se))


def test_cohens_d_paired_hand():
    a, b = np.array([2, 4, 6, 8.0]), np.array([1, 1, 2, 3.0])  # diffs 1, 3, 4, 5
    dz = 3.25 / math.sqrt(8.75 / 3)
    se = math.sqrt(1 / 4 + dz**2 / 8)
    res = S.cohens_d(a, b, paired=True, ci=0.9)
    z90 = 1.6448536269514722
    assert res.d == pytest.approx(dz)
    assert (res.low, res.high) == pytest.approx((dz - z90 * se, dz + z90 * se))
    with pytest.raises(ValueError, match="equal length"):
        S.cohens_d(a, b[:3], paired=True)


def test_mann_whitney_vs_scipy_and_rank_biserial_by_hand():
    rng = np.random.default_rng(9)
    a, b = rng.normal(0.5, 1, 15), np.round(rng.normal(0, 1, 11), 1)
    res = S.mann_whitney(a, b)
    ref = sps.mannwhitneyu(a, b, alternative="two-sided")
    assert (res.statistic, res.p) == pytest.approx((ref.statistic, ref.pvalue))
    diff = a[:, None] - b[None, :]
    assert res.effect == pytest.approx((np.sum(diff > 0) - np.sum(diff < 0)) / diff.size)


def test_wilcoxon_vs_scipy_and_rank_biserial_by_hand():
    b = np.array([10.0, 10, 10, 10, 10])
    a = b + np.array([1, -2, 3, 4, -5])  # W+ = 1+3+4 = 8, W- = 2+5 = 7
    res = S.wilcoxon(a, b)
    ref = sps.wilcoxon(a, b)
    assert (res.statistic, res.p) == pytest.approx((ref.statistic, ref.pvalue))
    assert res.effect == pytest.approx(1 / 15)
    assert S.wilcoxon(a + 10, b).effect == pytest.approx(1.0)


def test_correct_vs_statsmodels_and_hand():
    p = np.array([0.01, 0.04, 0.03])
    res = S.correct(p)
    np.testing.assert_allclose(res.p_adjusted, [0.03, 0.04, 0.04])
    np.testing.assert_array_equal(res.reject, [True, True, True])
    pv = np.random.default_rng(10).uniform(0, 0.2, 20)
    for method in ("fdr_bh", "bonferroni", "holm"):
        ref = multipletests(pv, alpha=0.05, method=method)
        res = S.correct(pv, method=method)
        np.testing.assert_allclose(res.p_adjusted, ref[1])
        np.testing.assert_array_equal(res.reject, ref[0])


# ---------------------------------------------------------------- label separation
def test_between_within_hand():
    x = np.array([[1, 0], [1, 0], [1, 1], [1, 1.0]])
    res = S.between_within_ratio(x, np.array([0, 0, 1, 1]))
    assert res.within == pytest.approx(1.0)
    assert res.between == pytest.approx(1 / math.sqrt(2))
    assert res.difference == pytest.approx(1 - 1 / math.sqrt(2))
    assert res.ratio == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="pair"):
        S.between_within_ratio(x, np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        S.between_within_ratio(x, np.zeros(3))


def test_nearest_centroid_separated_is_perfect_random_is_chance():
    rng = np.random.default_rng(11)
    x, labels = _clusters(rng, n_classes=4, per_class=40, d=32, spread=0.3)
    groups = np.tile(np.arange(8), 20)  # each topic holds items of every label
    x = x + 0.3 * rng.normal(size=(8, 32))[groups]  # topic shifts
    assert S.nearest_centroid_accuracy(x, labels, groups) == 1.0
    noise = rng.normal(size=(400, 32))
    random_labels = rng.integers(0, 4, 400)
    acc = S.nearest_centroid_accuracy(noise, random_labels, np.arange(400) % 10)
    assert 0.15 < acc < 0.35


def test_nearest_centroid_unseen_label_counts_as_error():
    x = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [-1, -1.0]])
    labels = np.array(["a", "a", "b", "b", "c"])
    groups = np.array([0, 1, 0, 1, 2])  # label "c" only exists in held-out group 2
    assert S.nearest_centroid_accuracy(x, labels, groups, center=False) == pytest.approx(4 / 5)


def test_transfer_accuracy_centering_changes_hand_case():
    train = np.array([[1, 0], [3, 0], [2, 1], [2, 3.0]])  # centroids A=(2,0), B=(2,2)
    train_labels = np.array(["A", "A", "B", "B"])
    test = np.array([[3, 1.2], [3, 0.8]])
    # uncentered: (3, 1.2) cos A = 0.928 > cos B = 0.919, (3, 0.8) cos A = 0.966 > cos B = 0.865;
    # centered (mean of centroids (2, 1)): A' = (0, -1), B' = (0, 1); points (1, 0.2) -> B, (1, -0.2) -> A
    assert S.transfer_accuracy(train, train_labels, test, np.array(["A", "A"]), center=False) == 1.0
    assert S.transfer_accuracy(train, train_labels, test, np.array(["B", "A"]), center=True) == 1.0
    with pytest.raises(ValueError, match="dims"):
        S.transfer_accuracy(train, train_labels, np.zeros((1, 3)), np.array(["A"]))


def test_silhouette_matches_sklearn():
    rng = np.random.default_rng(12)
    x, labels = _clusters(rng)
    assert S.silhouette(x, labels) == pytest.approx(silhouette_score(x, labels, metric="cosine"))
    assert S.silhouette(x, labels, metric="euclidean") > 0.5


# ---------------------------------------------------------------- Procrustes
def _low_rank(rng, n=20, d=64, rank=6, noise=0.05):
    return rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + noise * rng.normal(size=(n, d))


def test_procrustes_test_rotated_copy_is_retrieved():
    rng = np.random.default_rng(13)
    x = _low_rank(rng)
    y = x @ ortho_group.rvs(64, random_state=1) + 0.05 * rng.normal(size=x.shape)
    res = S.procrustes_test(x, y, n_permutations=99)
    assert res.statistic == 1.0
    assert res.p == pytest.approx(0.01)
    assert res.null.shape == (99,) and res.null.max() < 0.5


def test_procrustes_test_unrelated_is_not_significant():
    ps = []
    for seed in range(20):  # p is uniform-ish under H0 (slightly conservative)
        rng = np.random.default_rng(100 + seed)
        ps.append(S.procrustes_test(_low_rank(rng), _low_rank(rng), n_permutations=49, seed=seed).p)
    assert np.mean(ps) > 0.3 and np.mean(np.array(ps) < 0.05) <= 0.15
    with pytest.raises(ValueError, match="rows"):
        S.procrustes_test(np.zeros((5, 3)), np.zeros((4, 3)))


def test_procrustes_statistic_matches_full_dimensional_reference():
    rng = np.random.default_rng(15)
    x = _low_rank(rng, n=15, d=40, rank=10, noise=0.3)
    y = x @ ortho_group.rvs(40, random_state=2) + 3.0 * rng.normal(size=x.shape)
    hits = 0
    for i in range(15):
        keep = np.arange(15) != i
        mx, my = x[keep].mean(0), y[keep].mean(0)
        r, _ = orthogonal_procrustes(x[keep] - mx, y[keep] - my)
        coef = np.linalg.lstsq((x[keep] - mx).T, x[i] - mx, rcond=None)[0]
        mapped = (coef @ (x[keep] - mx)) @ r
        hits += np.argmax(cosine_similarity(mapped[None], y - my)[0]) == i
    res = S.procrustes_test(x, y, n_permutations=0)
    assert 0 < hits < 15  # informative case
    assert res.statistic == pytest.approx(hits / 15)


def test_procrustes_does_not_leak_through_centering():
    """Rows centered over all items sum to zero: x_i = -(sum of the others). Without per-fold centring a
    map fitted on the others would retrieve every y_i of an UNRELATED centered y."""
    rng = np.random.default_rng(17)
    x, y = _low_rank(rng, n=30, d=64), _low_rank(rng, n=30, d=64)
    x, y = x - x.mean(0), y - y.mean(0)
    res = S.procrustes_test(x, y, n_permutations=49)
    assert res.statistic < 0.3 and res.p > 0.05


# ---------------------------------------------------------------- distances, clustering
def test_euclidean_distances_hand():
    d = S.euclidean_distances(np.array([[0, 0], [3, 4], [6, 8.0]]))
    np.testing.assert_allclose(d, [[0, 5, 10], [5, 0, 5], [10, 5, 0]])


def test_geodesic_on_line_equals_euclidean_and_on_arc_sums_chords():
    rng = np.random.default_rng(16)
    line = np.outer(np.sort(rng.uniform(0, 10, 12)), [1.0, 2.0, -1.0])
    np.testing.assert_allclose(S.geodesic_distances(line, k=2), S.euclidean_distances(line), atol=1e-9)
    theta = np.linspace(0, np.pi, 20)
    arc = np.c_[np.cos(theta), np.sin(theta)]
    geo = S.geodesic_distances(arc, k=2)
    chords = np.linalg.norm(np.diff(arc, axis=0), axis=1)
    # with k=2 the interior points link to both adjacent points, the two end points also
    # to their second neighbour: shortest 0 -> 19 path = 2 skip chords + 15 adjacent chords
    step = np.pi / 19
    assert np.allclose(chords, 2 * np.sin(step / 2))
    assert geo[0, -1] == pytest.approx(2 * 2 * np.sin(step) + 15 * 2 * np.sin(step / 2))
    assert geo[0, -1] < chords.sum()
    assert geo[0, -1] > S.euclidean_distances(arc)[0, -1] + 1


def test_geodesic_disconnected_raises():
    x = np.r_[np.zeros((4, 2)) + np.arange(4)[:, None], 100 + np.arange(4)[:, None] + np.zeros((4, 2))]
    with pytest.raises(ValueError, match="larger k"):
        S.geodesic_distances(x, k=2)
    assert np.isfinite(S.geodesic_distances(x, k=4)).all()


def test_kmeans_and_adjusted_rand():
    rng = np.random.default_rng(17)
    x, labels = _clusters(rng, n_classes=4, per_class=10, spread=0.05)
    found = S.kmeans_labels(x, k=4)
    assert S.adjusted_rand(found, labels) == pytest.approx(1.0)
    a, b = rng.integers(0, 3, 30), rng.integers(0, 3, 30)
    assert S.adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b))
    assert S.adjusted_rand([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0


def test_cluster_agreement_ari_matches_sklearn_and_is_calibrated():
    from emonn.stats.geometry import _adjusted_rand_many

    rng = np.random.default_rng(27)
    a, b = rng.integers(0, 4, 30), rng.integers(0, 3, (5, 30))
    np.testing.assert_allclose(_adjusted_rand_many(a, b), [adjusted_rand_score(a, row) for row in b])
    # unrelated spaces: p <= 0.05 in at most 6% of 100 datasets (one k-means seed for both would inflate it)
    rejected = [S.cluster_agreement(rng.normal(size=(30, 8)), rng.normal(size=(30, 8)), seeds=3,
                                    n_permutations=200, seed=i).p <= 0.05 for i in range(100)]
    assert np.mean(rejected) <= 0.06
    x, _ = _clusters(rng, n_classes=4, per_class=8, spread=0.3)
    same = S.cluster_agreement(x, x @ rng.normal(size=(16, 16)) + 0.1 * rng.normal(size=x.shape), seeds=3)
    assert same.ari > 0.5 and same.p < 0.01 and same.stability_a > 0.5


def test_hierarchical_order_keeps_blocks_contiguous():
    rng = np.random.default_rng(18)
    block = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    sim = np.where(block[:, None] == block[None, :], 0.9, 0.1) + 0.01 * _sym(rng, 9)
    np.fill_diagonal(sim, 1.0)
    order = S.hierarchical_order(sim)
    assert sorted(order) == list(range(9))
    runs = block[order]
    assert np.sum(runs[1:] != runs[:-1]) == 2  # exactly three contiguous blocks


# ---------------------------------------------------------------- PCA, depth
def test_pc_correlations_recovers_targets_and_matches_scipy():
    rng = np.random.default_rng(19)
    n = 40
    valence, arousal = rng.normal(size=n), rng.normal(size=n)
    basis = np.linalg.qr(rng.normal(size=(20, 2)))[0].T
    x = 10 * np.outer(valence, basis[0]) + 3 * np.outer(arousal, basis[1]) + 0.01 * rng.normal(size=(n, 20))
    rows = S.pc_correlations(x, {"valence": valence, "arousal": arousal}, n_pcs=2)
    assert len(rows) == 4
    r = {(row["pc"], row["target"]): row for row in rows}
    assert abs(r[1, "valence"]["r"]) > 0.99 and abs(r[2, "arousal"]["r"]) > 0.99
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    ref = sps.pearsonr(u[:, 1] * s[1], valence)
    assert abs(r[2, "valence"]["r"]) == pytest.approx(abs(ref.statistic))
    assert r[2, "valence"]["p"] == pytest.approx(ref.pvalue)
    # sign convention: the largest-|loading| coordinate of each PC is positive
    top = np.argmax(np.abs(basis[0]))
    assert np.sign(r[1, "valence"]["r"]) == np.sign(basis[0][top])
    flipped = S.pc_correlations(x * np.where(np.arange(20) == top, -1, 1), {"valence": valence}, n_pcs=1)
    assert flipped[0]["r"] == pytest.approx(-r[1, "valence"]["r"])
    with pytest.raises(ValueError, match="shape"):
        S.pc_correlations(x, {"bad": valence[:5]})
    # sign_by fixes each PC's sign by its correlation with a reference: a sign flip of x changes nothing
    signed = S.pc_correlations(-x, {"valence": valence}, n_pcs=2, sign_by=valence)
    assert signed[0]["r"] > 0.99 and signed[1]["r"] >= 0
    same = S.pc_correlations(x, {"valence": valence}, n_pcs=2, sign_by=valence)
    assert [row["r"] for row in same] == pytest.approx([row["r"] for row in signed])


def test_quadratic_vertex_parabola_and_bootstrap_ci():
    rng = np.random.default_rng(20)
    depth = np.linspace(0, 1, 24)
    score = -2 * (depth - 0.6) ** 2 + 1
    res = S.quadratic_vertex(depth, score)
    assert (res.a, res.vertex) == pytest.approx((-2.0, 0.6))
    assert math.isnan(res.vertex_low) and math.isnan(res.a_high)
    samples = score + 0.02 * rng.normal(size=(300, 24))
    res = S.quadratic_vertex(depth, score, samples=samples)
    assert res.vertex_low < 0.6 < res.vertex_high and res.vertex_high - res.vertex_low < 0.1
    assert res.a_low < -2 < res.a_high
    with pytest.raises(ValueError, match="samples"):
        S.quadratic_vertex(depth, score, samples=samples[:, :5])


# ---------------------------------------------------------------- preferences
def test_bradley_terry_two_items_hand():
    s = S.bradley_terry([0, 0, 0, 1], [1, 1, 1, 0], 2)
    assert s[0] - s[1] == pytest.approx(math.log(3), abs=1e-4)
    assert s.sum() == pytest.approx(0, abs=1e-12)
    soft = S.bradley_terry([0], [1], 2, weight=[0.75])
    assert soft[0] - soft[1] == pytest.approx(math.log(3), abs=1e-4)


def test_bradley_terry_ridge_keeps_unbeaten_item_finite():
    from scipy.optimize import brentq

    ridge = 0.01
    s = S.bradley_terry([0, 0], [1, 1], 2, ridge=ridge)
    # optimum of 2 log(1 + exp(-d)) + ridge d^2 / 2 with d = s0 - s1: 2 / (1 + e^d) = ridge d
    d = brentq(lambda d: 2 / (1 + np.exp(d)) - ridge * d, 0, 100)
    assert s[0] - s[1] == pytest.approx(d, rel=1e-5)


def test_bradley_terry_recovers_synthetic_strengths():
    rng = np.random.default_rng(21)
    true = rng.normal(size=12)
    first, second = rng.integers(0, 12, (2, 3000))
    keep = first != second
    first, second = first[keep], second[keep]
    first_wins = rng.random(first.size) < 1 / (1 + np.exp(-(true[first] - true[second])))
    s = S.bradley_terry(first, second, 12, weight=first_wins.astype(float))
    assert np.corrcoef(s, true)[0, 1] > 0.95
    with pytest.raises(ValueError, match="weight"):
        S.bradley_terry([0], [1], 2, weight=[1.5])


def test_elo_hand_two_matches():
    e1 = 1 / (1 + 10**0.02)  # item 1 at 992 vs item 2 at 1000
    in_order = np.array([1008, 992 + 16 * (0.5 - e1), 1000 - 16 * (0.5 - e1)])
    r = S.elo([0, 1], [1, 2], [1.0, 0.5], 3, shuffle=False)
    np.testing.assert_allclose(r, in_order)
    # reversed order: draw 1 vs 2 at equal ratings (no change), then 0 beats 1 at 1000 vs 1000
    reversed_order = np.array([1008, 992, 1000])
    single = S.elo([0, 1], [1, 2], [1.0, 0.5], 3, n_orderings=1, seed=3)
    assert np.allclose(single, in_order) or np.allclose(single, reversed_order)
    averaged = S.elo([0, 1], [1, 2], [1.0, 0.5], 3, n_orderings=4000)
    np.testing.assert_allclose(averaged, (in_order + reversed_order) / 2, atol=0.01)
    assert averaged.sum() == pytest.approx(3000)
    with pytest.raises(ValueError, match="indices"):
        S.elo([0], [3], [1.0], 3)


def test_bootstrap_ci_vector_statistic_matches_per_component_runs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    labels = np.repeat([0, 1], 20)
    both = S.bootstrap_ci(lambda idx: x[idx].mean(0), labels, n_boot=200, seed=1)
    assert both.samples.shape == (200, 3) and both.low.shape == (3,)
    for k in range(3):
        one = S.bootstrap_ci(lambda idx: x[idx, k].mean(), labels, n_boot=200, seed=1)
        assert np.isclose(one.low, both.low[k]) and np.isclose(one.high, both.high[k])
        assert np.isclose(one.estimate, both.estimate[k])


def test_bootstrap_offers_no_basic_interval():
    labels = np.zeros(10)
    for method in ("basic", "bca"):
        with pytest.raises(ValueError, match="method"):
            S.bootstrap_ci(lambda idx: 0.0, labels, method=method)


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_rsa_stack_equals_rsa_per_matrix(method):
    rng = np.random.default_rng(8)
    a = np.stack([_sym(rng, 9) for _ in range(4)])
    b = np.stack([_sym(rng, 9) for _ in range(4)])
    b[0] = a[0]
    expected = [S.rsa(a[k], b[k], method=method) for k in range(4)]
    np.testing.assert_allclose(S.rsa_stack(a, b, method=method), expected, atol=1e-12)
    assert np.isclose(S.rsa_stack(a, b, method=method)[0], 1.0)
    with pytest.raises(ValueError, match="stacks"):
        S.rsa_stack(a, b[:, :3])


# ---------------------------------------------------------------- per-layer separation, vectorised over resamples
def _layered_clusters(rng, n_classes=4, per_class=10, n_layers=3, d=6, n_groups=5):
    labels = np.repeat(np.arange(n_classes), per_class)
    groups = rng.integers(0, n_groups, labels.size)
    x = rng.normal(size=(labels.size, n_layers, d)) + 0.7 * rng.normal(size=(n_classes, 1, d))[labels]
    return x, labels, groups


def _separation_by_brute_force(x, labels, groups, idx):
    """Scores of the resampled items x[idx], pairing no item with its own copies (loops, no algebra)."""
    xs, ys, gs = x[idx], labels[idx], groups[idx]
    rows = []
    for layer in range(x.shape[1]):
        cos = cosine_similarity(xs[:, layer])
        same, different, sil = [], [], []
        for a, b in itertools.combinations(range(len(idx)), 2):
            if idx[a] != idx[b]:
                (same if ys[a] == ys[b] else different).append(cos[a, b])
        for a in range(len(idx)):
            own = [1 - cos[a, b] for b in range(len(idx)) if ys[b] == ys[a] and idx[b] != idx[a]]
            if not own:
                sil.append(0.0)
                continue
            nearest = min(np.mean(1 - cos[a, ys == k]) for k in set(ys) - {ys[a]})
            sil.append((nearest - np.mean(own)) / max(np.mean(own), nearest))
        accuracy = S.nearest_centroid_accuracy(xs[:, layer], ys, gs, center=False)
        rows.append((np.mean(same), np.mean(different), accuracy, np.mean(sil)))
    return np.array(rows)


def test_separation_scores_equal_the_per_layer_functions():
    rng = np.random.default_rng(30)
    x, labels, groups = _layered_clusters(rng)
    res = S.separation_scores(x, labels.astype(str), groups)
    for layer in range(3):
        sep = S.between_within_ratio(x[:, layer], labels)
        assert res.within[layer] == pytest.approx(sep.within, abs=1e-12)
        assert res.between[layer] == pytest.approx(sep.between, abs=1e-12)
        assert res.distance_ratio[layer] == pytest.approx((1 - sep.between) / (1 - sep.within))
        assert res.accuracy[layer] == S.nearest_centroid_accuracy(x[:, layer], labels, groups, center=False)
        assert res.silhouette[layer] == pytest.approx(silhouette_score(x[:, layer], labels, metric="cosine"))
    with pytest.raises(ValueError, match="3-D"):
        S.separation_scores(x[:, 0], labels, groups)
    with pytest.raises(ValueError, match="two groups"):
        S.separation_scores(x, labels, np.zeros(40))


def test_separation_scores_of_resamples_match_brute_force():
    rng = np.random.default_rng(31)
    x, labels, groups = _layered_clusters(rng)
    resamples = np.stack([np.concatenate([rng.choice(np.flatnonzero(labels == k), 10) for k in range(4)])
                          for _ in range(6)])
    res = S.separation_scores(x, labels, groups, resamples=resamples)
    assert res.within.shape == (6, 3)
    for r, idx in enumerate(resamples):
        expected = _separation_by_brute_force(x, labels, groups, idx)
        got = np.stack([res.within[r], res.between[r], res.accuracy[r], res.silhouette[r]], axis=1)
        np.testing.assert_allclose(got, expected, atol=1e-5)  # float32 for resamples


def test_separation_scores_lone_item_and_missing_class_in_a_fold():
    x = np.array([[[1.0, 0.1]], [[0.9, 0.0]], [[0.0, 1.0]], [[0.1, 0.8]], [[-1.0, 0.2]]])
    labels, groups = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 0])
    res = S.separation_scores(x, labels, groups)  # label 2 has one item (silhouette 0) and no training items in fold 0
    assert res.silhouette[0] == pytest.approx(silhouette_score(x[:, 0], labels, metric="cosine"))
    assert res.accuracy[0] == S.nearest_centroid_accuracy(x[:, 0], labels, groups, center=False) == 0.8
    copies = S.separation_scores(x, labels, groups, resamples=[[0, 0, 2, 3, 4]])  # item 0 twice, item 1 never
    assert copies.silhouette[0, 0] == pytest.approx(_separation_by_brute_force(x, labels, groups,
                                                                                np.array([0, 0, 2, 3, 4]))[0, 3])


def test_resample_counts_and_mean_pairwise_cosine_hand():
    np.testing.assert_array_equal(S.resample_counts([[0, 0, 2], [1, 2, 2]], 3), [[2, 0, 1], [0, 1, 2]])
    x = np.array([[1, 0], [0, 1], [1, 1.0]])[:, None]  # cosines: (0,1) 0, (0,2) and (1,2) 1/sqrt(2)
    assert S.mean_pairwise_cosine(x)[0] == pytest.approx(math.sqrt(2) / 3)
    # a copy of item 0 is not a pair: [0, 0, 1] has two (0, 1) pairs, [0, 2, 2] two (0, 2) pairs
    np.testing.assert_allclose(S.mean_pairwise_cosine(x, resamples=[[0, 0, 1], [0, 2, 2]])[:, 0],
                               [0, 1 / math.sqrt(2)], atol=1e-12)


def test_bootstrap_ci_vectorized_equals_the_loop():
    rng = np.random.default_rng(32)
    x, labels = rng.normal(size=(30, 2)), np.repeat([0, 1, 2], 10)
    loop = S.bootstrap_ci(lambda idx: x[idx].mean(0), labels, n_boot=100, seed=5)
    seen = []
    vec = S.bootstrap_ci(lambda idx: seen.append(idx.shape) or x[idx].mean(1), labels, n_boot=100, seed=5,
                         vectorized=True)
    assert seen == [(101, 30)]
    np.testing.assert_allclose(vec.samples, loop.samples)
    np.testing.assert_allclose([vec.estimate, vec.low, vec.high], [loop.estimate, loop.low, loop.high])


def test_separation_permutation_test_statistic_null_and_power():
    rng = np.random.default_rng(33)
    labels = np.repeat(np.arange(5), 12)
    x = rng.normal(size=(60, 2, 8)) + 3.0  # a shared offset, as in anisotropic activations
    x[:, 1] += 0.6 * rng.normal(size=(5, 8))[labels]  # only layer 1 separates the labels
    res = S.separation_permutation_test(x, labels, n_permutations=300, seed=4)
    for layer in range(2):
        assert res.statistic[layer] == pytest.approx(S.between_within_ratio(x[:, layer], labels).difference)
    shuffle = np.random.default_rng(4).permuted(np.tile(np.arange(60), (300, 1)), axis=1)[0]
    relabelled = np.empty(60, int)
    relabelled[shuffle] = labels  # the item at slot a of the shuffle takes label a's
    assert res.null[0, 0] == pytest.approx(S.between_within_ratio(x[:, 0], relabelled).difference)
    assert res.p[1] == pytest.approx(1 / 301) and res.p[0] > 0.05
    assert res.p[0] == S.permutation_p(res.statistic[0], res.null[:, 0])


def test_separation_permutation_test_is_calibrated_on_noise():
    rng = np.random.default_rng(34)
    labels = np.repeat(np.arange(4), 6)
    ps = S.separation_permutation_test(rng.normal(size=(24, 200, 5)), labels, n_permutations=99, seed=1).p
    assert 0.02 < np.mean(ps < 0.1) < 0.2  # 200 null layers: about 10% below 0.1


def test_direction_test_statistic_by_hand_and_baseline():
    rng = np.random.default_rng(35)
    labels = np.repeat(np.arange(4), 10)
    folds = np.tile([0, 1], 20)
    x = rng.normal(size=(40, 2, 16))
    x[:, 1] += 1.5 * rng.normal(size=(4, 16))[labels]
    res = S.direction_test(x, labels, folds, n_random=100, seed=2)
    expected = []
    for layer in range(2):
        total = 0.0
        for fit, test in ((folds == 0, folds == 1), (folds == 1, folds == 0)):
            means = np.stack([x[fit & (labels == k), layer].mean(0) for k in range(4)])
            for k in range(4):
                direction = means[k] - means.mean(0)
                proj = x[test, layer] @ direction / np.linalg.norm(direction)
                total += S.cohens_d(proj[labels[test] == k], proj[labels[test] != k]).d
        expected.append(total / 8)
    np.testing.assert_allclose(res.statistic, expected, atol=1e-10)
    assert res.null.shape == (100, 2)
    assert res.p[1] == pytest.approx(1 / 101) and res.statistic[1] > 3 * res.null[:, 1].mean()
    assert res.p[0] > 0.05
    with pytest.raises(ValueError, match="two values"):
        S.direction_test(x, labels, np.arange(40) % 3)


def test_peak_position_and_bootstrap_ci():
    depth = np.linspace(0, 1, 5)
    res = S.peak(depth, [0, 1, 3, 2, 0])
    assert (res.index, res.position) == (2, 0.5) and math.isnan(res.low)
    samples = np.array([[0, 3, 1, 0, 0]] * 10 + [[0, 0, 1, 3, 0]] * 10)  # argmax at 0.25 or 0.75, half each
    res = S.peak(depth, [0, 1, 3, 2, 0], samples=samples)
    assert (res.low, res.high) == (0.25, 0.75)
    with pytest.raises(ValueError, match="samples"):
        S.peak(depth, [0, 1, 3, 2, 0], samples=samples[:, :3])


# ---------------------------------------------------------------- cross-model RSA: class means from Gram matrices, grids
def _class_mean_cosines_direct(x, labels):
    means = np.stack([x[labels == k].mean(0) for k in np.unique(labels)])
    return S.cosine_matrix(means - means.mean(0))


def test_class_mean_cosines_equal_direct_means_unbalanced_and_resampled():
    rng = np.random.default_rng(40)
    labels = np.array(list("bacab") * 4 + ["c", "c", "d"])  # unbalanced, unsorted
    x = rng.normal(size=(labels.size, 3, 7))
    gram = np.einsum("ild,jld->lij", x, x)
    cos = S.class_mean_cosines(gram, labels)
    for layer in range(3):
        np.testing.assert_allclose(cos[layer], _class_mean_cosines_direct(x[:, layer], labels), atol=1e-12)
    resamples = np.stack([rng.choice(labels.size, labels.size) for _ in range(5)])
    resamples[0] = np.arange(labels.size)
    resampled = S.class_mean_cosines(gram, labels, resamples=resamples)
    assert resampled.shape == (5, 3, 4, 4) and resampled.dtype == np.float32
    for r, idx in enumerate(resamples):
        if len(np.unique(labels[idx])) == 4:
            np.testing.assert_allclose(resampled[r, 1], _class_mean_cosines_direct(x[idx, 1], labels[idx]), atol=1e-5)
    np.testing.assert_allclose(resampled[0], cos, atol=1e-5)
    missing = S.class_mean_cosines(gram, labels, resamples=np.flatnonzero(labels != "d")[None])
    assert np.isnan(missing).all()  # the center over classes needs every class
    with pytest.raises(ValueError, match="two classes"):
        S.class_mean_cosines(gram, np.zeros(labels.size))


def test_rsa_grid_matches_scipy_per_cell():
    rng = np.random.default_rng(41)
    a = np.stack([S.cosine_matrix(rng.normal(size=(9, 4))) for _ in range(3)])
    b = np.stack([S.cosine_matrix(rng.normal(size=(9, 4))) for _ in range(2)])
    for method, ref in (("spearman", sps.spearmanr), ("pearson", sps.pearsonr)):
        grid = S.rsa_grid(a, b, method=method)
        assert grid.shape == (3, 2)
        for i, j in itertools.product(range(3), range(2)):
            assert grid[i, j] == pytest.approx(ref(S.upper(a[i]), S.upper(b[j])).statistic, abs=1e-12)
    np.testing.assert_allclose(S.rsa_vectors(a) @ S.rsa_vectors(a).T, S.rsa_grid(a, a), atol=1e-12)


def test_rsa_grid_test_null_equals_rsa_test_and_relabels_b_jointly():
    rng = np.random.default_rng(42)
    x = rng.normal(size=(10, 5))
    a = np.stack([S.cosine_matrix(x + s * rng.normal(size=x.shape)) for s in (0.3, 2.0)])
    b = np.stack([S.cosine_matrix(x + s * rng.normal(size=x.shape)) for s in (0.3, 1.0, 3.0)])
    single = S.rsa_grid_test(a[:1], b[:1], n_permutations=300, seed=5)
    np.testing.assert_allclose(single.null[:, 0, 0], S.rsa_test(a[0], b[0], n_permutations=300, seed=5).null, atol=1e-12)
    perms = np.stack([rng.permutation(10) for _ in range(4)])
    res = S.rsa_grid_test(a, b, permutations=perms)
    assert res.null.shape == (4, 2, 3)
    for k, p in enumerate(perms):  # one permutation relabels all of b's matrices
        np.testing.assert_allclose(res.null[k], S.rsa_grid(a, b[:, p][:, :, p]), atol=1e-12)
    many = S.rsa_grid_test(a, b, n_permutations=999, seed=1)
    best = S.permutation_p(many.grid.max(), many.null.max((1, 2)))
    assert best == pytest.approx(1 / 1000) and many.grid.max() == pytest.approx(many.grid[0, 0])
    with pytest.raises(ValueError, match="symmetric"):
        S.rsa_grid_test(a, rng.normal(size=(1, 10, 10)))


def _bt_gradient(s, first, second, w, ridge=1e-6):
    g = 1 / (1 + np.exp(-(s[first] - s[second]))) - w
    return np.bincount(first, g, s.size) - np.bincount(second, g, s.size) + 2 * ridge * s


def test_bradley_terry_batch_is_the_per_set_mle():
    rng = np.random.default_rng(41)
    first, second = np.triu_indices(12, 1)
    truth = rng.normal(size=12) * 1.5
    soft = np.clip(1 / (1 + np.exp(-(truth[first] - truth[second]))) + rng.normal(0, 0.1, (4, first.size)), 0, 1)
    batch = S.bradley_terry_batch(first, second, 12, soft)
    for s, w in zip(batch, soft):
        assert np.abs(_bt_gradient(s, first, second, w)).max() < 1e-7  # the exact optimum (mean-0 row)
        np.testing.assert_allclose(s, S.bradley_terry(first, second, 12, weight=w), atol=2e-3)
    assert batch.mean(1) == pytest.approx(np.zeros(4), abs=1e-12)
    # outcomes that are the model's own probabilities give back the strengths (up to the tiny ridge)
    exact = 1 / (1 + np.exp(-(truth[first] - truth[second])))
    np.testing.assert_allclose(S.bradley_terry_batch(first, second, 12, exact[None])[0], truth - truth.mean(),
                               atol=1e-4)


def test_bradley_terry_batch_per_set_indices_and_hard_outcomes():
    rng = np.random.default_rng(42)
    first = rng.integers(0, 6, (3, 40))
    second = (first + rng.integers(1, 6, (3, 40))) % 6
    wins = (rng.random((3, 40)) < 0.5).astype(float)
    wins[0][first[0] == 0], wins[0][second[0] == 0] = 1, 0  # item 0 never loses in set 0
    batch = S.bradley_terry_batch(first, second, 6, wins)
    for r in range(3):
        assert np.abs(_bt_gradient(batch[r], first[r], second[r], wins[r])).max() < 1e-7
    assert batch[0, 0] > 8  # large but finite, held by the ridge
    with pytest.raises(ValueError, match="values must be in"):
        S.bradley_terry_batch([0], [1], 2, [[1.5]])
    with pytest.raises(ValueError, match="must have shape"):
        S.bradley_terry_batch([0, 1, 0], [1, 0, 1], 2, np.ones((2, 2)))


def test_elo_batch_equals_elo_per_set_and_shares_orderings():
    rng = np.random.default_rng(43)
    first, second = np.triu_indices(8, 1)
    scores = rng.random((3, first.size))
    batch = S.elo_batch(first, second, scores, 8, k=24, n_orderings=7, seed=5, chunk_rows=10)  # several chunks
    for row, score in zip(batch, scores):
        np.testing.assert_allclose(row, S.elo(first, second, score, 8, k=24, n_orderings=7, seed=5), atol=1e-9)
    # per-set match lists: set r equals the one-set call on its own list
    idx = rng.integers(0, first.size, (2, first.size))
    per_set = S.elo_batch(first[idx], second[idx], scores[0][idx], 8, n_orderings=3, seed=1)
    for r in range(2):
        np.testing.assert_allclose(per_set[r], S.elo(first[idx[r]], second[idx[r]], scores[0][idx[r]], 8,
                                                     n_orderings=3, seed=1), atol=1e-9)
    # common random numbers: identical sets get identical ratings; the total rating is conserved
    same = S.elo_batch(first, second, np.repeat(scores[:1], 2, 0), 8, n_orderings=3, seed=2)
    np.testing.assert_array_equal(same[0], same[1])
    assert same.sum(1) == pytest.approx([8000, 8000])


def test_paired_permutation_test_matches_exact_enumeration():
    rng = np.random.default_rng(44)
    x, y = rng.normal(size=10), rng.normal(size=10) + 0.8
    diff = y - x
    observed = diff.mean()
    signs = np.array(list(itertools.product([1, -1], repeat=10)))
    exact = np.mean(np.abs(signs @ diff / 10) >= abs(observed) - 1e-12)
    res = S.paired_permutation_test(lambda xs, ys: (ys - xs).mean(1), x, y, n_permutations=20000, seed=3)
    assert res.statistic == pytest.approx(observed)
    assert res.p == pytest.approx(exact, abs=0.01) and res.null.shape == (20000,)
    # vector statistics: one p per component; identical conditions give p = 1
    both = S.paired_permutation_test(lambda xs, ys: np.stack([(ys - xs).mean(1), (xs - xs).sum(1)], 1), x, y,
                                     n_permutations=200, seed=3)
    assert both.statistic.shape == (2,) and both.p[1] == 1.0 and both.p[0] < 0.05
    with pytest.raises(ValueError, match="same shape"):
        S.paired_permutation_test(lambda xs, ys: xs.sum(1), x, y[:5])


def test_bootstrap_centered_interval_is_the_percentile_one_moved_by_the_mean_shift():
    rng = np.random.default_rng(36)
    x, labels = rng.exponential(size=60), np.zeros(60)
    pct = S.bootstrap_ci(lambda idx: x[idx].max(), labels, n_boot=300, seed=2)
    centered = S.bootstrap_ci(lambda idx: x[idx].max(), labels, n_boot=300, seed=2, method="centered")
    shift = pct.samples.mean() - pct.estimate  # < 0: the max of a resample is at most the max
    assert shift < 0 and np.isclose(centered.low, pct.low - shift) and np.isclose(centered.high, pct.high - shift)
    assert centered.low < centered.estimate < centered.high and not pct.low < pct.estimate < pct.high
