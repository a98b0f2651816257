"""Tests of rs_onnx.bounds: TV, two-class and other-noise certificates, checked against hand-solved cases
and by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from rs_onnx import bounds
from rs_onnx.bounds import best_radius, radius, tv_gaussian, tv_radius, two_class_certificate, two_class_radius
from rs_onnx.errors import ConfigError, DataError

SIGMAS = [0.12, 0.25, 0.5, 1.0]


def np_radius(pa, pb, sigma):
    """Neyman-Pearson two-class radius, exact formula, no rounding."""
    return 0.5 * sigma * (norm.ppf(pa) - norm.ppf(pb))


# ----------------------------------------------------------------------------------------------- TV


def test_tv_gaussian_matches_numerical_l1_distance():
    # TV = (1/2) int |N(0, s^2) - N(eps, s^2)|; in any dimension it reduces to this 1-d integral.
    for sigma in (0.25, 1.0):
        for eps in (0.0, 0.1, 0.5, 2.0):
            f = lambda x: abs(norm.pdf(x, 0, sigma) - norm.pdf(x, eps, sigma))  # noqa: E731
            tv = 0.5 * integrate.quad(f, -10 * sigma, eps + 10 * sigma, points=[eps / 2], limit=200)[0]
            assert tv_gaussian(eps, sigma) == pytest.approx(tv, abs=1e-9)


def test_tv_radius_is_the_boundary_of_the_tv_condition():
    sigma = 0.5
    for pa, pb in [(0.9, 0.05), (0.6, 0.3), (0.4, 0.35)]:
        eps = tv_radius(pa, pb, sigma)
        assert eps > 0
        assert 2 * tv_gaussian(eps, sigma) == pytest.approx(pa - pb, abs=1e-12)
        assert 2 * tv_gaussian(eps * 1.001, sigma) > pa - pb


@pytest.mark.parametrize("sigma", SIGMAS)
def test_tv_radius_never_exceeds_two_class_radius(sigma):
    grid = np.linspace(0.0, 1.0, 201)
    pa, pb = np.meshgrid(grid, grid, indexing="ij")
    valid = pa + pb <= 1.0
    pa, pb = pa[valid], pb[valid]
    r_tv = tv_radius(pa, pb, sigma)
    r_np = two_class_radius(pa, pb, sigma)
    assert r_tv.shape == pa.shape
    assert np.all(r_tv >= 0)
    assert np.all(r_tv <= r_np + 1e-12)
    assert np.all((r_tv > 0) == (pa > pb))
    assert np.all(r_tv[pa <= pb] == 0) and np.all(r_np[pa <= pb] == 0)


def test_tv_radius_agrees_with_two_class_to_first_order_near_one_half():
    sigma = 0.25
    for ratio_b in (1.0, 2.0, 0.3):  # pA = 1/2 + t, pB = 1/2 - ratio_b t
        errors = []
        for t in (1e-1, 1e-2, 1e-3, 1e-4):
            pa, pb = 0.5 + t, 0.5 - ratio_b * t
            errors.append(abs(tv_radius(pa, pb, sigma) / np_radius(pa, pb, sigma) - 1))
        assert errors == sorted(errors, reverse=True)  # shrinks with t
        assert errors[-1] < 1e-6  # second-order: error ~ t^2
        assert errors[0] > 1e-4  # ...but not identical away from 1/2


def test_tv_and_two_class_against_cohen_when_pb_is_one_minus_pa():
    for sigma in SIGMAS:
        pa = np.linspace(0.5, 0.999999, 500)
        cohen = sigma * norm.ppf(pa)
        assert np.allclose(two_class_radius(pa, 1 - pa, sigma), cohen, rtol=1e-10, atol=1e-14)
        assert np.all(tv_radius(pa, 1 - pa, sigma) <= cohen + 1e-12)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_linear_classifier_exact_radius(sigma):
    # Two-class linear classifier at l2 distance d from its boundary: smoothed pA = Phi(d / sigma) exactly,
    # and the true certified radius is d.
    d = np.array([0.001, 0.01, 0.1, 0.3, 0.7, 1.5]) * sigma
    pa = norm.cdf(d / sigma)
    r_tv = tv_radius(pa, 1 - pa, sigma)
    assert np.all(r_tv <= d)
    assert np.all(r_tv > 0.5 * d)  # not vacuous either
    assert np.allclose(two_class_radius(pa, 1 - pa, sigma), d, rtol=1e-9)
    assert np.allclose(radius(pa, "gaussian", sigma, "l2"), d, rtol=1e-9)


# ---------------------------------------------------------------------------------------- two-class


def test_vectorised_clopper_pearson_matches_stats():
    stats = pytest.importorskip("rs_onnx.stats")
    for n in (1, 7, 100, 1000):
        k = np.arange(n + 1)
        for a in (0.001, 0.05):
            lo = stats.cp_lower(k, n, a)
            hi = stats.cp_upper(k, n, a)
            for i in range(0, n + 1, max(1, n // 20)):
                assert lo[i] == stats.clopper_pearson_lower(i, n, a)
                assert hi[i] == stats.clopper_pearson_upper(i, n, a)


def test_two_class_certificate_two_classes_is_cohen_at_half_alpha():
    stats = pytest.importorskip("rs_onnx.stats")
    counts = np.array([912, 88])
    pa, pb, r = two_class_certificate(counts, 0, 0.001, 0.25)
    assert pa == stats.clopper_pearson_lower(912, 1000, 0.0005)
    # With K = 2, pB = 1 - pA exactly, and Clopper-Pearson is symmetric: both bounds agree.
    assert pb == pytest.approx(1 - pa, abs=1e-10)
    assert r == pytest.approx(stats.cohen_radius(pa, 0.25), rel=1e-9)
    assert best_radius(counts, 0, 0.001, 0.25) == pytest.approx(r, rel=1e-12)


def test_two_class_certificate_gains_when_mass_is_spread():
    stats = pytest.importorskip("rs_onnx.stats")
    counts = np.array([700] + [30] * 10)  # n = 1000, 30% spread over 10 classes
    pa, pb, r = two_class_certificate(counts, 0, 0.001, 0.5)
    _, pb_bonf, r_bonf = two_class_certificate(counts, 0, 0.001, 0.5, pb_bound="bonferroni")
    cohen_full_alpha = stats.cohen_radius(stats.clopper_pearson_lower(700, 1000, 0.001), 0.5)
    assert pb < pb_bonf < 1 - pa
    assert r > r_bonf > cohen_full_alpha > 0
    assert best_radius(counts, 0, 0.001, 0.5) == r
    print(f"\nspread counts: Cohen {cohen_full_alpha:.4f}, two-class max {r:.4f}, bonferroni {r_bonf:.4f}")


def test_two_class_certificate_levels_and_cap_exactly():
    """p_b_upper: Clopper-Pearson at alpha_b on the runner-up ("max") or at alpha_b / (K - 1) ("bonferroni"),
    capped by 1 - p_a_lower; with most of alpha on p_a_lower the cap binds and keeps Cohen's radius."""
    from rs_onnx import stats

    counts = np.array([700] + [30] * 10)  # K = 11
    pa, pb, _ = two_class_certificate(counts, 0, 0.001, 0.5)
    _, pb_bonf, _ = two_class_certificate(counts, 0, 0.001, 0.5, pb_bound="bonferroni")
    assert pa == stats.clopper_pearson_lower(700, 1000, 0.0005)
    assert pb == stats.clopper_pearson_upper(30, 1000, 0.0005)
    assert pb_bonf == stats.clopper_pearson_upper(30, 1000, 0.0005 / 10)
    two = np.array([912, 88])
    pa, pb, r = two_class_certificate(two, 0, 0.001, 0.25, alpha_split=0.9)  # p_b_upper at alpha / 10 only
    assert pb == 1.0 - pa < stats.clopper_pearson_upper(88, 1000, 0.0001)  # the cap binds
    assert r >= stats.cohen_radius(pa, 0.25)


def test_two_class_never_below_cohen_at_split_alpha_and_batched():
    stats = pytest.importorskip("rs_onnx.stats")
    rng = np.random.default_rng(0)
    counts = rng.multinomial(500, [0.7, 0.2, 0.05, 0.05], size=300)
    top = np.zeros(300, dtype=int)
    pa, pb, r = two_class_certificate(counts, top, 0.01, 0.25)
    assert pa.shape == pb.shape == r.shape == (300,)
    for i in range(0, 300, 37):
        pa_i, pb_i, r_i = two_class_certificate(counts[i], 0, 0.01, 0.25)
        assert (pa[i], pb[i], r[i]) == (pa_i, pb_i, r_i)
        assert r_i >= stats.cohen_radius(pa_i, 0.25)
        assert pb_i <= 1 - pa_i
    assert np.array_equal(best_radius(counts, 0, 0.01, 0.25), r)


def _simulate(p, n, n0, trials, alpha, sigma, seed, pb_bound="max"):
    """Fraction of trials whose certificate is wrong; fraction that certify; per-event failure rates."""
    rng = np.random.default_rng(seed)
    p = np.asarray(p, dtype=float)
    top = rng.multinomial(n0, p, size=trials).argmax(axis=1)  # separate selection samples
    counts = rng.multinomial(n, p, size=trials)
    pa_lo, pb_up, r = two_class_certificate(counts, top, alpha, sigma, pb_bound=pb_bound)
    p_top = p[top]
    p_other = np.array([np.delete(p, t).max() for t in range(len(p))])[top]
    true_r = np.maximum(np.where(p_top > p_other, np.nan_to_num(np_radius(p_top, p_other, sigma)), 0.0), 0.0)
    wrong = r > true_r
    return wrong.mean(), (r > 0).mean(), (pa_lo > p_top).mean(), (pb_up < p_other).mean()


@pytest.mark.parametrize(
    "p, n",
    [
        ([0.6, 0.25, 0.15], 200),
        ([0.5, 0.25, 0.25], 300),  # tied runners-up: where picking the runner-up might seem to matter
        ([0.55] + [0.05] * 9, 400),  # many small equal classes
        ([0.9, 0.06, 0.04], 100),
    ],
)
def test_two_class_certificate_is_sound_by_simulation(p, n):
    alpha, trials = 0.05, 4000
    tol = 3 * np.sqrt(alpha * (1 - alpha) / trials)
    for pb_bound in ("max", "bonferroni"):
        wrong, certified, fail_a, fail_b = _simulate(p, n, 50, trials, alpha, 0.25, seed=1, pb_bound=pb_bound)
        print(
            f"\np={p} n={n} {pb_bound}: wrong {wrong:.4f} (alpha {alpha}), certified {certified:.3f}, "
            f"pA fails {fail_a:.4f}, pB fails {fail_b:.4f}"
        )
        assert wrong <= alpha + tol
        assert fail_a <= alpha / 2 + tol and fail_b <= alpha / 2 + tol
        assert certified > 0.8  # not vacuous


def test_selecting_top_from_the_certification_counts_is_what_breaks_soundness():
    # The selection effect that IS harmful: picking the top class from the same counts used for its lower
    # bound. Two tied classes: any positive radius is wrong, and it happens ~2x as often as alpha allows.
    # (Picking the runner-up from the counts is harmless for an upper bound on the max: see the docstring.)
    rng = np.random.default_rng(3)
    alpha, n, trials = 0.05, 500, 40000
    counts = rng.multinomial(n, [0.5, 0.5], size=trials)
    same = two_class_certificate(counts, counts.argmax(axis=1), 2 * alpha, 0.25, pb_bound="max")[2]
    separate = two_class_certificate(counts, rng.integers(0, 2, size=trials), 2 * alpha, 0.25)[2]
    # alpha_split 1/2 of 2 alpha: p_a_lower at alpha; with K = 2 the radius is Cohen's at alpha.
    print(
        f"\ntied classes: wrong with top from same counts {np.mean(same > 0):.4f}, "
        f"from separate samples {np.mean(separate > 0):.4f}, alpha {alpha}"
    )
    assert np.mean(separate > 0) <= alpha + 0.01
    assert np.mean(same > 0) > 1.4 * np.mean(separate > 0)


def test_two_class_certificate_errors():
    with pytest.raises(DataError, match="K >= 2"):
        two_class_certificate([10], 0, 0.01, 0.25)
    with pytest.raises(DataError, match="non-negative"):
        two_class_certificate([10, -1], 0, 0.01, 0.25)
    with pytest.raises(DataError, match="integer counts"):
        two_class_certificate([10.5, 1], 0, 0.01, 0.25)
    with pytest.raises(DataError, match="class indices"):
        two_class_certificate([10, 1], 2, 0.01, 0.25)
    with pytest.raises(DataError, match="at least one"):
        two_class_certificate([0, 0], 0, 0.01, 0.25)
    with pytest.raises(ConfigError, match="alpha"):
        two_class_certificate([10, 1], 0, 1.5, 0.25)
    with pytest.raises(ConfigError, match="sigma"):
        two_class_certificate([10, 1], 0, 0.01, 0.0)
    with pytest.raises(ConfigError, match="pb_bound"):
        two_class_certificate([10, 1], 0, 0.01, 0.25, pb_bound="naive")
    with pytest.raises(DataError, match="probability"):
        tv_radius(1.2, 0.1, 0.25)


# ------------------------------------------------------------------------------ other noises and norms


def exact_pa_1d(noise, x0, scale):
    """Smoothed P(f(x0 + noise) = 1) for f(x) = 1[x > 0] in one dimension, x0 > 0."""
    if noise == "gaussian":
        return norm.cdf(x0 / scale)
    if noise == "uniform":  # U[-lambda, lambda], x0 < lambda
        return 0.5 + x0 / (2 * scale)
    return 1 - np.exp(-x0 / scale) / 2  # Laplace with scale lambda


@pytest.mark.parametrize("noise", bounds.NOISES)
@pytest.mark.parametrize("norm_", bounds.NORMS)
@pytest.mark.parametrize("scale", [0.12, 0.25, 1.0])
def test_one_dimensional_exact_radius(noise, norm_, scale):
    # In one dimension every norm is |x|: the exact pA must give exactly the distance x0 to the boundary.
    x0 = np.array([1e-4, 0.01, 0.3, 0.9]) * scale
    pa = exact_pa_1d(noise, x0, scale)
    r = radius(pa, noise, scale, norm_, dim=1)
    assert np.max(np.abs(r - x0)) < 1e-9
    for i in range(len(x0)):  # scalars too
        assert abs(radius(float(pa[i]), noise, scale, norm_, 1) - x0[i]) < 1e-9


def test_gaussian_linf_conversion_is_exact_on_the_diagonal():
    # f(x) = 1[sum(x) > 0], x0 = c * ones(d): l2 distance c sqrt(d), linf distance c (move every pixel by c),
    # l1 distance c d. pA = Phi(c sqrt(d) / sigma).
    sigma = 0.25
    for d in (1, 4, 784, 3072):
        c = 0.1 * sigma / np.sqrt(d) * np.array([1.0, 5.0, 20.0])
        pa = norm.cdf(c * np.sqrt(d) / sigma)
        assert np.allclose(radius(pa, "gaussian", sigma, "l2"), c * np.sqrt(d), rtol=1e-9)
        assert np.allclose(radius(pa, "gaussian", sigma, "linf", d), c, rtol=1e-9)
        assert np.all(radius(pa, "gaussian", sigma, "l1", d) <= c * d)


def test_uniform_l1_two_dimensional_hand_case():
    # f(x) = 1[x1 + x2 > 0], x0 = (a, a), noise U[-lam, lam]^2. The l1 distance to the boundary is 2a.
    # u1 + u2 is triangular on [-2 lam, 2 lam]: pA = 1 - (lam - a)^2 / (2 lam^2) for 0 < a < lam, so the
    # certified l1 radius is 2 lam (pA - 1/2) = 2a - a^2 / lam <= 2a.
    lam = 0.5
    a = np.array([0.01, 0.1, 0.25, 0.45])
    pa = 1 - (lam - a) ** 2 / (2 * lam**2)
    u = np.random.default_rng(0).uniform(-lam, lam, size=(200_000, 2)).sum(axis=1)
    assert np.allclose([(u > -2 * ai).mean() for ai in a], pa, atol=5e-3)  # the hand formula is right
    r = radius(pa, "uniform", lam, "l1")
    assert np.allclose(r, 2 * a - a**2 / lam, rtol=1e-9)
    assert np.all(r <= 2 * a)
    # l2 distance of (a, a) to the line is a sqrt(2); linf distance is a.
    assert np.all(radius(pa, "uniform", lam, "l2", 2) <= a * np.sqrt(2))
    assert np.all(radius(pa, "uniform", lam, "linf", 2) <= a)


@pytest.mark.parametrize("noise", ["uniform", "laplace"])
def test_l1_noise_conversions_are_sound_in_high_dimension(noise):
    # f(x) = 1[x1 > 0], x0 = (c, 0, ..., 0): distance c in every norm; pA is the 1-d one.
    scale, d = 0.5, 784
    c = np.array([0.01, 0.1, 0.4])
    pa = exact_pa_1d(noise, c, scale)
    assert np.allclose(radius(pa, noise, scale, "l1", d), c, rtol=1e-9)
    assert np.allclose(radius(pa, noise, scale, "l2", d), c / np.sqrt(d), rtol=1e-9)
    linf = radius(pa, noise, scale, "linf", d)
    if noise == "laplace":
        assert np.allclose(linf, c / d, rtol=1e-9)
    else:  # Yang et al.'s direct bound: 2 lam (1 - (3/2 - pA)^(1/d)), above the conversion, below the distance
        assert np.allclose(linf, 2 * scale * (1 - (1.5 - pa) ** (1 / d)), rtol=1e-9)
        assert np.all(linf > c / d) and np.all(linf <= c)


@pytest.mark.parametrize("noise", bounds.NOISES)
@pytest.mark.parametrize("norm_", bounds.NORMS)
def test_radius_zero_below_one_half_and_monotone(noise, norm_):
    p = np.linspace(0.0, 0.9999, 1001)
    r = radius(p, noise, 0.25, norm_, dim=10)
    assert np.all(r[p <= 0.5] == 0)
    assert np.all(r[p > 0.5] > 0)
    assert np.all(np.diff(r) >= 0)


def test_radius_errors():
    with pytest.raises(ConfigError, match="noise='cauchy'"):
        radius(0.9, "cauchy", 0.25, "l2")
    with pytest.raises(ConfigError, match="norm='l3'"):
        radius(0.9, "gaussian", 0.25, "l3")
    with pytest.raises(ConfigError, match="expected dim"):
        radius(0.9, "gaussian", 0.25, "linf")
    with pytest.raises(ConfigError, match="expected dim"):
        radius(0.9, "laplace", 0.25, "l2")
    with pytest.raises(ConfigError, match="dim=0"):
        radius(0.9, "uniform", 0.25, "linf", 0)
    with pytest.raises(ConfigError, match="scale"):
        radius(0.9, "gaussian", -1, "l2")
    with pytest.raises(DataError, match="p_a_lower"):
        radius(1.5, "gaussian", 0.25, "l2")
    # l1 from Gaussian and l1 from l1 noises need no dim
    assert radius(0.9, "gaussian", 0.25, "l1") == radius(0.9, "gaussian", 0.25, "l2")
    assert radius(0.9, "uniform", 0.25, "l1") == pytest.approx(0.2)


@pytest.mark.parametrize("noise", ["gaussian", "uniform", "laplace"])
def test_norm_radii_conversions(noise):
    """The native radius restated in each norm for d values: l2 noise: l1 <= l2 ball, linf r / sqrt(d); l1 noise:
    l2 r / sqrt(d), linf r / d (uniform: or its own linf bound, if larger); rounded down; zeros on abstain."""
    d, r, p = 16, 0.3, 0.9
    got = bounds.norm_radii(p, r, noise, 0.5, d)
    if noise == "gaussian":
        want = {"l1": r, "l2": r, "linf": r / np.sqrt(d)}
    else:
        want = {"l1": r, "l2": r / np.sqrt(d), "linf": r / d}
        if noise == "uniform":
            want["linf"] = max(want["linf"], float(bounds.uniform_linf_radius(p, 0.5, d)))
    assert got == pytest.approx(want, rel=1e-9)
    assert all(got[k] <= want[k] for k in want)
    assert bounds.norm_radii(p, 0.0, noise, 0.5, d) == {"l1": 0.0, "l2": 0.0, "linf": 0.0}
