"""Statistics against independently known values."""

from fractions import Fraction
from math import comb

import numpy as np
import pytest
from scipy.stats import beta as scipy_beta
from scipy.stats import norm

from rs_onnx import stats


def test_clopper_pearson_lower_known_value():
    # Cohen et al.'s worked case: 99,000 of 100,000 at alpha = 0.001.
    assert stats.clopper_pearson_lower(99_000, 100_000, 0.001) == pytest.approx(0.98898934, abs=1e-8)


def test_clopper_pearson_lower_closed_forms():
    # k = n: the bound solves p^n = alpha, so p = alpha^(1/n).
    assert stats.clopper_pearson_lower(100, 100, 0.01) == pytest.approx(0.01 ** (1 / 100), rel=1e-10)
    # k = 1 of n = 1: p = alpha.
    assert stats.clopper_pearson_lower(1, 1, 0.05) == pytest.approx(0.05, rel=1e-10)
    assert stats.clopper_pearson_lower(0, 10, 0.05) == 0.0
    # k = 0 upper bound: 1 - alpha^(1/n).
    assert stats.clopper_pearson_upper(0, 50, 0.01) == pytest.approx(1 - 0.01 ** (1 / 50), rel=1e-10)


def test_bounds_are_rounded_to_the_safe_side():
    from scipy.stats import beta

    exact = beta.ppf(0.001, 99_000, 1_001)
    assert stats.clopper_pearson_lower(99_000, 100_000, 0.001) < exact
    exact_up = beta.ppf(0.999, 51, 50)
    assert stats.clopper_pearson_upper(50, 100, 0.001) > exact_up
    assert stats.cohen_radius(0.99, 0.25) < 0.25 * norm.ppf(0.99)


def test_binomial_pvalue_known_values():
    # Exact: P(X <= 0 or X >= 10 | n=10, p=1/2) = 2 / 1024.
    assert stats.binomial_pvalue(10, 10) == pytest.approx(2 / 1024, rel=1e-12)
    # 60 of 100: two-sided p = 0.056887933640... (R: binom.test(60, 100)$p.value).
    assert stats.binomial_pvalue(60, 100) == pytest.approx(0.05688793364, rel=1e-8)
    assert stats.binomial_pvalue(50, 100) == pytest.approx(1.0)


def test_cohen_radius():
    assert stats.cohen_radius(0.5, 1.0) == 0.0
    assert stats.cohen_radius(0.3, 1.0) == 0.0
    assert stats.cohen_radius(norm.cdf(2.0), 0.5) == pytest.approx(1.0, rel=1e-9)


def test_argument_checks():
    with pytest.raises(ValueError):
        stats.clopper_pearson_lower(5, 4, 0.1)
    with pytest.raises(ValueError):
        stats.clopper_pearson_lower(1, 4, 1.5)


@pytest.mark.parametrize("bound", [stats.clopper_pearson_lower, stats.clopper_pearson_upper])
def test_argument_boundaries(bound):
    """The edges of 0 < alpha < 1, 0 <= k <= n and n >= 1: the open ends refused, the closed ones taken."""
    for alpha in (0.0, 1.0):  # a level of 0 or 1 is no confidence statement
        with pytest.raises(ValueError):
            bound(1, 2, alpha)
    for k, n in [(-1, 2), (3, 2), (0, 0)]:
        with pytest.raises(ValueError):
            bound(k, n, 0.1)
    assert 0.0 <= bound(0, 1, 0.1) <= 1.0 and 0.0 <= bound(1, 1, 0.1) <= 1.0  # n = 1, k at either end
    with pytest.raises(ValueError):
        stats.binomial_pvalue(0, 0)
    assert stats.binomial_pvalue(1, 1) == 1.0


def test_top_two_ties_go_to_lower_index():
    assert stats.top_two(np.array([3, 5, 5, 1])) == (1, 5, 2, 5)


@pytest.mark.parametrize("alpha", [1e-300, 1e-50, 1e-12])
def test_bounds_hold_even_for_extreme_alpha(alpha):
    from scipy.stats import beta

    for k, n in [(99_000, 100_000), (5, 10), (100_000, 100_000 + 1)]:
        lo = stats.clopper_pearson_lower(k, n, alpha)
        assert 0.0 <= lo <= k / n and beta.cdf(lo, k, n - k + 1) <= alpha * (1 + 1e-9)
        up = stats.clopper_pearson_upper(k, n, alpha)
        assert k / n <= up <= 1.0


# ------------------------------------------------------------------ the guards behind scipy's quantiles
#
# cp_lower / cp_upper check scipy's beta quantile against its own tail and, where it misses (a NaN, or a
# bound on the wrong side), fall back: cp_upper to the survival quantile beta.isf, then both to bisection.
# scipy gets these cases right, so the fallbacks are reached here through a stand-in for scipy's beta whose
# quantiles are wrong on purpose; the answers are checked against exact binomial tails (rational arithmetic
# at the bound's own float value), independent of scipy: valid (the tail at the bound is at most alpha) and
# tight (1e-9 further in, the tail exceeds alpha).

TIGHT = 1e-9


def _tail_at_least(k: int, n: int, p: float) -> Fraction:
    """P(Bin(n, p) >= k), exactly, at the float p."""
    q = Fraction(p)
    return sum((comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k, n + 1)), Fraction(0))


def _tail_at_most(k: int, n: int, p: float) -> Fraction:
    """P(Bin(n, p) <= k), exactly, at the float p."""
    return 1 - _tail_at_least(k + 1, n, p)


def _assert_lower_exact(lo: float, k: int, n: int, alpha: float) -> None:
    # CP_lower(k, n) is the p with P(Bin(n, p) >= k) = alpha: valid below it, tight to TIGHT
    assert 0.0 <= lo < 1.0
    assert _tail_at_least(k, n, lo) <= Fraction(alpha) * (1 + Fraction(1, 10**10)), (k, n, alpha, lo)
    assert _tail_at_least(k, n, lo + TIGHT) > Fraction(alpha), (k, n, alpha, lo)


def _assert_upper_exact(up: float, k: int, n: int, alpha: float) -> None:
    # CP_upper(k, n) is the p with P(Bin(n, p) <= k) = alpha: valid above it, tight to TIGHT
    assert 0.0 < up <= 1.0
    assert _tail_at_most(k, n, up) <= Fraction(alpha) * (1 + Fraction(1, 10**10)), (k, n, alpha, up)
    assert _tail_at_most(k, n, up - TIGHT) > Fraction(alpha), (k, n, alpha, up)


class _WrongBeta:
    """scipy's beta with wrong quantiles where the first shape parameter is odd (the rest stay right, so that
    the fallback's masking is exercised too): ``ppf`` / ``isf`` give NaN (``"nan"``) or a value 0.05 off on
    the unsafe side (``"wrong"``: ``shift`` +0.05 for a lower bound, -0.05 for an upper one)."""

    def __init__(self, ppf: str | None, isf: str | None = None, shift: float = 0.05) -> None:
        self._ppf, self._isf, self._shift = ppf, isf, shift

    def __getattr__(self, name):
        return getattr(scipy_beta, name)

    def _spoil(self, mode, exact, a):
        if mode is None:
            return exact
        spoiled = np.full_like(exact, np.nan) if mode == "nan" else np.clip(exact + self._shift, 0, 1)
        return np.where(np.broadcast_to(a, exact.shape) % 2 == 1, spoiled, exact)

    def ppf(self, q, a, b):
        return self._spoil(self._ppf, np.asarray(scipy_beta.ppf(q, a, b), np.float64), a)

    def isf(self, q, a, b):
        return self._spoil(self._isf, np.asarray(scipy_beta.isf(q, a, b), np.float64), a)


# (k, n, alpha): odd k reach the lower fallback, even k the upper (its first shape parameter is k + 1)
CASES = [(1, 1, 0.05), (3, 10, 0.05), (4, 10, 0.05), (7, 20, 1e-3), (12, 20, 1e-4), (19, 20, 1e-6), (0, 5, 0.05)]
CASES += [(5, 5, 0.01), (10, 40, 0.3), (25, 40, 0.9), (2, 30, 1e-30), (29, 30, 1e-30)]


@pytest.mark.parametrize("ppf", [None, "nan", "wrong"])
def test_clopper_pearson_lower_fallback_is_exact(monkeypatch, ppf):
    """The lower bound is valid and tight whether scipy's quantile is right or the bisection takes over."""
    if ppf:
        monkeypatch.setattr(stats, "beta", _WrongBeta(ppf, shift=0.05))
    for k, n, alpha in CASES:
        lo = stats.clopper_pearson_lower(k, n, alpha)
        if k == 0:
            assert lo == 0.0
        else:
            _assert_lower_exact(lo, k, n, alpha)
    # vectorised, the fallback fills in only the elements that need it
    ks, ns, alphas = (np.array(c) for c in zip(*CASES))
    assert np.array_equal(stats.cp_lower(ks, ns, alphas), [stats.clopper_pearson_lower(*c) for c in CASES])


@pytest.mark.parametrize("ppf,isf", [(None, None), ("nan", None), ("wrong", None), ("nan", "nan"), ("wrong", "wrong")])
def test_clopper_pearson_upper_fallbacks_are_exact(monkeypatch, ppf, isf):
    """The upper bound is valid and tight through each path: ppf, then isf, then bisection."""
    if ppf:
        monkeypatch.setattr(stats, "beta", _WrongBeta(ppf, isf, shift=-0.05))
    for k, n, alpha in CASES:
        up = stats.clopper_pearson_upper(k, n, alpha)
        if k == n:
            assert up == 1.0
            continue
        _assert_upper_exact(up, k, n, alpha)
        if ppf and not isf and k % 2 == 0:  # the survival quantile, nudged up like the quantile itself
            assert up >= scipy_beta.isf(alpha, k + 1, n - k) * (1 + stats.SAFETY / 2)
    ks, ns, alphas = (np.array(c) for c in zip(*CASES))
    assert np.array_equal(stats.cp_upper(ks, ns, alphas), [stats.clopper_pearson_upper(*c) for c in CASES])


def test_select_abstains_when_no_sample_gave_a_class():
    assert stats.select(np.array([0, 0, 0, 7])) == stats.ABSTAIN  # every sample non-finite
    assert stats.select(np.array([0, 0, 0, 0])) == stats.ABSTAIN
    assert stats.select(np.array([0, 1, 0, 7])) == 1  # one class sample outweighs any number of non-finite
    assert stats.select(np.array([2, 2, 0, 0])) == 0
    assert list(stats.select_many(np.array([[0, 0, 3], [1, 2, 0]]))) == [stats.ABSTAIN, 1]


def test_top_two_of_a_single_class():
    assert stats.top_two(np.array([7])) == (0, 7, -1, 0)  # no runner-up: class -1 with count 0
