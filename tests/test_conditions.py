"""RSA inference over conditions: exact cases against scipy, then calibration on simulated emotions with a
known answer (coverage of the bootstrap CI, type-I error of the permutation p and of the best-layer p, bias
of the noise-corrected RSA)."""

import numpy as np
import pytest
from scipy import stats as sps

from emonn import stats as S


def cosines(v):
    u = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return u @ np.swapaxes(u, -1, -2)


def pair(rng, n=30, d=6, rho=0.7):
    z = rng.normal(size=(n, d))
    return z, rho * z + np.sqrt(1 - rho**2) * rng.normal(size=(n, d))


def test_rsa_samples_match_scipy_on_identity_and_on_a_resample():
    rng = np.random.default_rng(0)
    a, b = (cosines(v) for v in pair(rng))
    n = a.shape[0]
    assert np.isclose(S.rsa_samples(a, b, np.arange(n))[0, 0], S.rsa(a, b))
    assert np.isclose(S.rsa_samples(a, b, np.arange(n), method="pearson")[0, 0], S.rsa(a, b, method="pearson"))
    rows = rng.integers(0, n, n)
    iu, ju = np.triu_indices(n, 1)
    keep = rows[iu] != rows[ju]  # an emotion against its own copy is not a pair
    want = sps.spearmanr(a[rows[iu], rows[ju]][keep], b[rows[iu], rows[ju]][keep]).statistic
    assert np.isclose(S.rsa_samples(a, b, rows)[0, 0], want)


def test_rsa_grid_samples_match_rsa_grid_and_the_paired_samples():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(30, 6))
    a = cosines(z + 0.5 * rng.normal(size=(3, 30, 6)))
    b = cosines(z + 0.5 * rng.normal(size=(2, 30, 6)))
    np.testing.assert_allclose(S.rsa_grid_samples(a, b, np.arange(30))[0], S.rsa_grid(a, b), atol=1e-6)
    rows = rng.integers(0, 30, (4, 30))
    control = cosines(z)
    grid = S.rsa_grid_samples(a, b, rows, controls=control)
    paired = S.rsa_samples(a[:2], b, rows, controls_a=control)  # one shared control: same partial correlation
    np.testing.assert_allclose(np.diagonal(grid, axis1=1, axis2=2), paired, atol=1e-9)


def test_collinear_or_constant_controls_change_nothing():
    rng = np.random.default_rng(6)
    x, y = pair(rng)
    a, b, c = cosines(x), cosines(y), cosines(rng.normal(size=(30, 6)))
    rows = rng.integers(0, 30, (3, 30))
    once = S.rsa_grid_samples(a, b, rows, controls=c)
    np.testing.assert_allclose(S.rsa_grid_samples(a, b, rows, controls=np.stack([c, c])), once, atol=1e-10)
    np.testing.assert_allclose(S.rsa_samples(a, b, rows, controls_a=np.ones((30, 30))), S.rsa_samples(a, b, rows),
                               atol=1e-10)


def test_partial_rsa_matches_the_first_order_formula():
    rng = np.random.default_rng(1)
    x, y = pair(rng)
    c = x + rng.normal(size=x.shape)  # a control that shares structure with both
    a, b, cc = (S.upper(cosines(v)) for v in (x, y, c))
    r = {k: sps.spearmanr(*v).statistic for k, v in {"ab": (a, b), "ac": (a, cc), "bc": (b, cc)}.items()}
    want = (r["ab"] - r["ac"] * r["bc"]) / np.sqrt((1 - r["ac"] ** 2) * (1 - r["bc"] ** 2))
    got = S.rsa_samples(cosines(x), cosines(y), np.arange(30), controls_b=cosines(c))[0, 0]
    assert np.isclose(got, want)
    assert got < r["ab"]


def test_condition_bootstrap_covers_the_population_rsa():
    """30 emotions drawn from a population whose RSA is known (estimated on 1,500 emotions): the 95% CI covers
    it in at least 90% of 200 datasets and always contains its own estimate."""
    rng = np.random.default_rng(2)
    z, w = pair(rng, n=1500)
    truth = S.rsa(cosines(z), cosines(w))
    covered, contains = [], []
    for i in range(200):
        a, b = (cosines(v) for v in pair(rng))
        res = S.condition_test(a, b, n_boot=200, n_permutations=1, seed=i)
        covered.append(res.low[0] <= truth <= res.high[0])
        contains.append(res.low[0] <= res.estimate[0] <= res.high[0])
    assert np.mean(covered) >= 0.90 and all(contains)


def test_permutation_p_and_best_layer_p_are_calibrated_under_the_null():
    """Unrelated EN and JA geometries, four correlated layers each: p <= 0.05 in at most 6% of 200 datasets,
    for one layer and for the best of the four (max over layers); without the max the best layer's own p
    rejects far more often."""
    rng = np.random.default_rng(3)
    one, best, naive = [], [], []
    for i in range(200):
        z, w = rng.normal(size=(2, 30, 6))
        a = cosines(z + 0.5 * rng.normal(size=(4, 30, 6)))
        b = cosines(w + 0.5 * rng.normal(size=(4, 30, 6)))
        res = S.condition_test(a, b, n_boot=2, n_permutations=200, seed=i)
        one.append(res.p[0] <= 0.05)
        best.append(res.p_best <= 0.05)
        naive.append(res.p[res.best] <= 0.05)
    assert np.mean(one) <= 0.06 and np.mean(best) <= 0.06
    assert np.mean(naive) > np.mean(best)


def test_noise_corrected_rsa_recovers_the_noise_free_rsa():
    """12 noisy stories per emotion: the raw RSA of the story means is attenuated; the split-half corrected one
    is within 0.05 of the noise-free RSA of the same emotions on average over 60 datasets."""
    rng = np.random.default_rng(4)
    raw, corrected = [], []
    for i in range(60):
        mu, nu = pair(rng)
        truth = S.rsa(cosines(mu), cosines(nu))
        stories = [m[:, None] + rng.normal(size=(30, 12, 6)) for m in (mu, nu)]
        halves = []
        for s in stories:
            order = rng.permuted(np.tile(np.arange(12), (4, 30, 1)), axis=2)  # 4 random splits
            h = np.take_along_axis(s[None], order[..., None], 2)
            halves.append(cosines(np.stack([h[:, :, :6].mean(2), h[:, :, 6:].mean(2)], axis=1))[:, :, None])
        a, b = (cosines(s.mean(1)) for s in stories)
        res = S.noise_corrected(a, b, *halves, n_boot=50, seed=i)
        raw.append(S.rsa(a, b) - truth)
        corrected.append(res.estimate[0] - truth)
        assert res.low[0] <= res.estimate[0] <= res.high[0]
    assert np.mean(raw) < -0.03 and abs(np.nanmean(corrected)) < 0.05


def test_spearman_brown():
    assert np.isclose(S.spearman_brown(0.5), 2 / 3) and np.isclose(S.spearman_brown(0.5, factor=3), 0.75)
    with pytest.raises(ValueError, match="same shape|one shape"):
        S.rsa_samples(np.eye(3), np.eye(4), np.arange(3))
