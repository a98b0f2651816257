"""Statistics of randomized smoothing (Cohen et al. 2019), as pure float64 functions.

Every bound is rounded towards the safe side: lower bounds are nudged down and radii down by a few
units in the last place, so that floating-point error can never enlarge a certificate.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, binomtest, norm

ABSTAIN = -1

# Relative slack applied to every bound and radius: far above float64 rounding error of the beta
# quantile and Phi^-1 (~1e-15), far below anything a user can see.
_SAFETY = 1e-12


def _check(k: int, n: int, alpha: float | None = None) -> None:
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"counts k={k} of n={n}: expected 0 <= k <= n and n >= 1")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha}: expected 0 < alpha < 1")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n trials.

    Equals ``beta.ppf(alpha, k, n - k + 1)``; 0 when k = 0. Rounded down.
    """
    _check(k, n, alpha)
    if k == 0:
        return 0.0
    with np.errstate(all="ignore"):
        p = float(beta.ppf(alpha, k, n - k + 1))
    p = max(0.0, p * (1.0 - _SAFETY) - _SAFETY)
    # scipy's quantile can fail to converge for extreme alpha: keep only a bound that provably holds,
    # P(Beta(k, n-k+1) <= p) <= alpha, shrinking it by bisection otherwise.
    if not np.isfinite(p) or beta.cdf(p, k, n - k + 1) > alpha:
        lo, hi = 0.0, p if np.isfinite(p) else 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if beta.cdf(mid, k, n - k + 1) <= alpha else (lo, mid)
        p = lo
    return p


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on p; 1 when k = n. Rounded up."""
    _check(k, n, alpha)
    if k == n:
        return 1.0
    with np.errstate(all="ignore"):
        p = float(beta.ppf(1.0 - alpha, k + 1, n - k))
    p = min(1.0, p * (1.0 + _SAFETY) + _SAFETY)
    if not np.isfinite(p) or beta.sf(p, k + 1, n - k) > alpha:  # same safeguard as the lower bound
        lo, hi = (p if np.isfinite(p) else 0.0), 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if beta.sf(mid, k + 1, n - k) <= alpha else (mid, hi)
        p = hi
    return p


def clopper_pearson_interval(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - alpha) Clopper-Pearson interval: alpha/2 on each side."""
    return clopper_pearson_lower(k, n, alpha / 2), clopper_pearson_upper(k, n, alpha / 2)


def binomial_pvalue(k: int, n: int) -> float:
    """Two-sided exact binomial test p-value of k successes in n trials against p = 1/2."""
    _check(k, n)
    return float(binomtest(k, n, 0.5, alternative="two-sided").pvalue)


def cohen_radius(p_a_lower: float, sigma: float) -> float:
    """Certified l2 radius sigma * Phi^-1(pA_lower), in the units of sigma; 0 when pA_lower <= 1/2.

    Rounded down so that the radius never exceeds the exact value of the formula.
    """
    if p_a_lower <= 0.5:
        return 0.0
    r = sigma * float(norm.ppf(p_a_lower))
    return max(0.0, r * (1.0 - _SAFETY))


def top_two(counts: np.ndarray) -> tuple[int, int, int, int]:
    """Top two classes of a count vector: (class_a, count_a, class_b, count_b); ties go to the lower index."""
    counts = np.asarray(counts)
    if counts.size == 1:
        return 0, int(counts[0]), -1, 0
    order = np.argsort(-counts, kind="stable")
    a, b = int(order[0]), int(order[1])
    return a, int(counts[a]), b, int(counts[b])
