"""Statistics of randomized smoothing (Cohen et al. 2019), as pure float64 functions: the one home of
the Clopper-Pearson bounds, the Cohen radius, the population bound on certified accuracy, ``ABSTAIN``
and the selection rule.

Every bound is rounded towards the safe side: lower bounds are nudged down and upper bounds up by a
relative :data:`SAFETY`, radii down, and a bound that scipy's quantile gets wrong is shrunk by bisection
until its exact tail holds, so that floating-point error can never enlarge a certificate. The scalar
functions (``clopper_pearson_lower``, ...) and the vectorised ones (``cp_lower``, ...) share one
implementation, hence one guard and one rounding rule.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, binom, binomtest, norm

ABSTAIN = -1
"""The class index reported when the smoothed classifier abstains."""

SAFETY = 1e-12
"""Relative slack applied to every bound and radius: far above float64 rounding error of the beta
quantile and Phi^-1 (~1e-15), far below anything a user can see."""

_BISECTIONS = 200


def _check(k: int, n: int, alpha: float | None = None) -> None:
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"counts k={k} of n={n}: expected 0 <= k <= n and n >= 1")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha}: expected 0 < alpha < 1")


def round_down(r):
    """A radius (float or array, >= 0) rounded down by the relative :data:`SAFETY`."""
    return np.maximum(0.0, np.asarray(r, dtype=np.float64) * (1.0 - SAFETY))


def cp_lower(k, n, alpha) -> np.ndarray:
    """Vectorised one-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n trials.

    ``k``, ``n``, ``alpha`` broadcast together (counts with 0 <= k <= n, n >= 1; 0 < alpha < 1; not
    checked here). Equals ``beta.ppf(alpha, k, n - k + 1)`` rounded down, 0 where k = 0; wherever that
    quantile misses its level, P(Beta(k, n-k+1) <= p) <= alpha is restored by bisection. float64 array.
    """
    k, n, a = np.broadcast_arrays(np.asarray(k, np.int64), np.asarray(n, np.int64), np.asarray(alpha, np.float64))
    shape = k.shape
    k, n, a = k.ravel(), n.ravel(), a.ravel()
    zero = k == 0
    k1 = np.where(zero, 1, k)  # keep beta's arguments valid; masked below
    b = n - k1 + 1
    with np.errstate(all="ignore"):
        p = np.maximum(0.0, beta.ppf(a, k1, b) * (1.0 - SAFETY) - SAFETY)
        bad = ~zero & (~np.isfinite(p) | (beta.cdf(np.where(np.isfinite(p), p, 0.0), k1, b) > a))
    if np.any(bad):  # scipy's quantile can fail to converge for extreme alpha: keep only a bound that holds
        kb, bb, ab = k1[bad], b[bad], a[bad]
        lo = np.zeros(kb.shape)
        hi = np.where(np.isfinite(p[bad]), p[bad], 1.0)
        for _ in range(_BISECTIONS):
            mid = (lo + hi) / 2
            ok = beta.cdf(mid, kb, bb) <= ab
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
        p = p.copy()
        p[bad] = lo
    return np.where(zero, 0.0, p).reshape(shape)


def cp_upper(k, n, alpha) -> np.ndarray:
    """Vectorised one-sided (1 - alpha) Clopper-Pearson upper bound on p; 1 where k = n. Rounded up.

    Equals ``beta.ppf(1 - alpha, k + 1, n - k)`` nudged up; wherever that misses its level (tiny alpha:
    1 - alpha is rounded) or is vacuous (alpha < 2**-53: 1 - alpha == 1), the nudged ``beta.isf(alpha, ...)``
    is taken instead, and if that misses too, P(Beta(k+1, n-k) >= p) <= alpha is restored by bisection
    (the same guard as :func:`cp_lower`).
    """
    k, n, a = np.broadcast_arrays(np.asarray(k, np.int64), np.asarray(n, np.int64), np.asarray(alpha, np.float64))
    shape = k.shape
    k, n, a = k.ravel(), n.ravel(), a.ravel()
    full = k == n
    kn = np.where(full, n - 1, k)  # keep beta's arguments valid; masked below
    a1, b = kn + 1, n - kn
    with np.errstate(all="ignore"):
        p = np.minimum(1.0, beta.ppf(1.0 - a, a1, b) * (1.0 + SAFETY) + SAFETY)
        bad = ~full & (~np.isfinite(p) | (beta.sf(np.where(np.isfinite(p), p, 1.0), a1, b) > a))
    # 1 - alpha loses alpha's low digits when alpha is tiny, and all of them below 2**-53 (1 - alpha == 1):
    # ppf(1) = 1 holds but is vacuous. There, and wherever ppf missed, try the survival quantile first.
    bad |= ~full & (1.0 - a == 1.0)
    if np.any(bad):
        with np.errstate(all="ignore"):
            q = np.minimum(1.0, beta.isf(a[bad], a1[bad], b[bad]) * (1.0 + SAFETY) + SAFETY)
            good = np.isfinite(q) & (beta.sf(np.where(np.isfinite(q), q, 1.0), a1[bad], b[bad]) <= a[bad])
        p = p.copy()
        p[np.flatnonzero(bad)[good]] = q[good]
        bad[np.flatnonzero(bad)[good]] = False
    if np.any(bad):
        ab_, bb, al = a1[bad], b[bad], a[bad]
        # from [0, 1]: p[bad] may hold (1 when 1 - alpha == 1), so it cannot serve as the failing end
        lo, hi = np.zeros(ab_.shape), np.ones(ab_.shape)
        for _ in range(_BISECTIONS):
            mid = (lo + hi) / 2
            ok = beta.sf(mid, ab_, bb) <= al
            lo, hi = np.where(ok, lo, mid), np.where(ok, mid, hi)
        p = p.copy()
        p[bad] = hi
    return np.where(full, 1.0, p).reshape(shape)


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n trials.

    Equals ``beta.ppf(alpha, k, n - k + 1)``; 0 when k = 0. Rounded down (see :func:`cp_lower`).
    """
    _check(k, n, alpha)
    return float(cp_lower(k, n, alpha))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on p; 1 when k = n. Rounded up (see :func:`cp_upper`)."""
    _check(k, n, alpha)
    return float(cp_upper(k, n, alpha))


def population_lower(k, n, alpha, confidence) -> np.ndarray:
    """Vectorised one-sided lower confidence bound, at level ``confidence``, on a population's certified
    accuracy from ``k`` of ``n`` i.i.d. test examples certified, each certificate false w.p. <= ``alpha``.

    ``(CP_lower(k, n, 1 - confidence) - alpha) / (1 - alpha)``, clipped at 0 and rounded down (an absolute
    :data:`SAFETY`). Sound because ``k`` is at most a Binomial(n, q) count with q <= p + alpha (1 - p),
    whatever the false certificates do (docs/certificate-population.md derives it); ``alpha`` = 0 gives
    plain Clopper-Pearson. ``k``, ``n``, ``alpha`` and ``confidence`` broadcast; 0 <= alpha < 1,
    0 < confidence < 1 (checked). float64 array.
    """
    a = np.asarray(alpha, np.float64)
    c = np.asarray(confidence, np.float64)
    if not (np.all((a >= 0) & (a < 1)) and np.all((c > 0) & (c < 1))):
        raise ValueError(f"alpha={alpha}, confidence={confidence}: expected 0 <= alpha < 1 and 0 < confidence < 1")
    q = cp_lower(k, n, 1.0 - c)
    return np.maximum(0.0, (q - a) / (1.0 - a) - SAFETY)


def binomial_pvalue(k: int, n: int) -> float:
    """Two-sided exact binomial test p-value of k successes in n trials against p = 1/2."""
    _check(k, n)
    return float(binomtest(k, n, 0.5, alternative="two-sided").pvalue)


def cohen_radii(p_a_lower, sigma: float) -> np.ndarray:
    """Vectorised :func:`cohen_radius`: sigma Phi^-1(pA_lower) rounded down, 0 where pA_lower <= 1/2.

    ``p_a_lower``: float or array of probabilities; the radii (float64 array of its shape) are in the
    units of ``sigma`` (l2, [0,1] pixel units).
    """
    p = np.asarray(p_a_lower, dtype=np.float64)
    r = sigma * norm.ppf(np.clip(p, 0.5, 1.0))
    return np.where(p <= 0.5, 0.0, round_down(r))


def cohen_radius(p_a_lower: float, sigma: float) -> float:
    """Certified l2 radius sigma * Phi^-1(pA_lower), in the units of sigma; 0 when pA_lower <= 1/2.

    Rounded down so that the radius never exceeds the exact value of the formula.
    """
    return float(cohen_radii(p_a_lower, sigma))


def select(counts: np.ndarray) -> int:
    """The selection rule: the guess A is the argmax of the selection counts (ties to the lower index).

    ``counts``: int [K + 1], the last column counting non-finite outputs (never a class). ABSTAIN when no
    sample gave a class.
    """
    classes = np.asarray(counts)[:-1]
    return int(np.argmax(classes)) if classes.sum() > 0 else ABSTAIN


def select_many(counts: np.ndarray) -> np.ndarray:
    """:func:`select` for each row of int counts [E, K + 1]: int64 [E] guesses (ABSTAIN where none)."""
    counts = np.asarray(counts)
    return np.array([select(c) for c in counts], dtype=np.int64).reshape(len(counts))


def top_two(counts: np.ndarray) -> tuple[int, int, int, int]:
    """Top two classes of a count vector: (class_a, count_a, class_b, count_b); ties go to the lower index."""
    counts = np.asarray(counts)
    if counts.size == 1:
        return 0, int(counts[0]), -1, 0
    order = np.argsort(-counts, kind="stable")
    a, b = int(order[0]), int(order[1])
    return a, int(counts[a]), b, int(counts[b])


SELECT_FIRST = 8
"""Adaptive selection (sequential CERTIFY): the first selection look (samples); later looks double, up to n0."""
SELECT_BETA = 0.01
"""Adaptive selection (sequential CERTIFY) stops once P(Bin(a + b, 1/2) >= a) <= this, a and b the top two counts (power only)."""


def selection_sizes(n0: int, adaptive: bool = True) -> tuple[int, ...]:
    """Cumulative selection sizes: (n0,) fixed; adaptive: SELECT_FIRST, doubling, ending at n0."""
    if not adaptive or n0 <= SELECT_FIRST:
        return (n0,)
    sizes = [SELECT_FIRST]
    while sizes[-1] * 2 < n0:
        sizes.append(sizes[-1] * 2)
    return (*sizes, n0)


def select_clear(counts: np.ndarray) -> np.ndarray:
    """Per row of class counts [E, K + 1]: whether the top class is clearly ahead of the runner-up (see
    :data:`SELECT_BETA`); the last column (no class) is ignored."""
    top = -np.sort(-np.asarray(counts)[:, :-1], axis=1)
    a, b = top[:, 0], (top[:, 1] if top.shape[1] > 1 else np.zeros_like(top[:, 0]))
    return (a > 0) & (binom.sf(a - 1, a + b, 0.5) <= SELECT_BETA)
