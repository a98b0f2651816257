"""The planned looks of sequential CERTIFY and their exact error: schedules, betting cutoffs, dynamic programmes.

A schedule fixes, before any sample is drawn, the cumulative estimation sizes N_1 < ... < N_L of the looks
and the level spent at each. Look j certifies a threshold t (a probability of the guess A) when the count
S_j of A among the first N_j samples reaches a cutoff c_j. Because the cutoffs are fixed in advance and the
event "some look crosses" is increasing in every sample, its probability at pA = t, computed exactly here by
dynamic programming over the looks (:func:`crossing`), bounds the false-certification rate for every pA <= t.

The early looks use a betting boundary (Voracek et al. 2024, arXiv 2406.17830): the Krichevsky-Trofimov
(Beta(1/2, 1/2)) mixture of the likelihood ratios of Bernoulli(q) against Bernoulli(t), whose wealth after
k successes in N trials is KT(k, N) / (t^k (1 - t)^(N - k)) with
KT(k, N) = Gamma(k + 1/2) Gamma(N - k + 1/2) / (pi Gamma(N + 1)). A look crosses when k >= t N and the
wealth reaches 1 / level. Ville's inequality bounds the crossing probability at pA = t by the level; here it
is not relied upon: :func:`betting_cutoffs` raises the level until the exact probability of crossing any early
look equals the share of alpha given to them, and :func:`calibrated_cutoff` gives the last look what is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import ConfigError

FIRST_LOOK = 10
"""Default size of the first look (estimation samples): tens of samples, so that a clear input stops early."""
LOOKS = 100
"""Default number of planned looks, geometric from the first look to n_max."""
FINAL_SHARE = 0.83
"""Default share of alpha for the calibrated last look (the early looks' betting boundary gets the rest)."""
MAX_LOOKS = 10_000
"""Most planned looks (10,000 at n = 100,000: 5,987 distinct, planned in ~30 s on one CPU core); look j's noise
phase (sequential.stage_phase) must stay below the selection phases."""


@dataclass(frozen=True)
class Schedule:
    """The planned looks: cumulative estimation sample counts ``sizes`` and the level ``alphas`` spent at each."""

    sizes: tuple[int, ...]
    alphas: tuple[float, ...]

    def __post_init__(self) -> None:
        s, a = self.sizes, self.alphas
        if not s or len(s) != len(a):
            raise ConfigError(f"schedule: {len(s)} sizes and {len(a)} levels; expected the same positive count")
        if s[0] < 1 or any(y <= x for x, y in zip(s, s[1:])):
            raise ConfigError(f"schedule sizes {list(s)}: expected strictly increasing counts >= 1")
        if any(not 0.0 < x < 1.0 for x in a):
            raise ConfigError(f"schedule levels {list(a)}: expected each in (0, 1)")

    @property
    def n_max(self) -> int:
        return self.sizes[-1]

    @property
    def alpha(self) -> float:
        """The overall level spent: the sum of the looks' levels."""
        return float(sum(self.alphas))

    @property
    def early_alpha(self) -> float:
        """The level of the looks before the last (the betting boundary's share in a calibrated plan)."""
        return float(sum(self.alphas[:-1]))


def geometric_schedule(
    n_max: int, alpha: float, looks: int = LOOKS, n_first: int | None = None, final_share: float | None = 0.5
) -> Schedule:
    """L = ``looks`` looks at sizes geometric from ``n_first`` (default :data:`FIRST_LOOK`) to n_max.

    ``final_share`` = s spends s alpha at the last look and (1 - s) alpha / (L - 1) at each earlier one
    (None: alpha / L each); levels are rounded down, so they sum to at most alpha. Sizes that round to the
    same count are merged, so the schedule may have fewer than L looks.
    """
    if n_max < 1:
        raise ConfigError(f"n_max={n_max}: expected at least 1 sample")
    if not 1 <= looks <= MAX_LOOKS:
        raise ConfigError(f"looks={looks}: expected 1 to {MAX_LOOKS:,}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha={alpha}: expected 0 < alpha < 1")
    if final_share is not None and not 0.0 < final_share < 1.0:
        raise ConfigError(f"final_share={final_share}: expected 0 < share < 1")
    first = min(n_max, FIRST_LOOK) if n_first is None else int(n_first)
    if not 1 <= first <= n_max:
        raise ConfigError(f"n_first={first}: expected 1 <= n_first <= n_max={n_max}")
    # one look is n_max itself (np.geomspace(first, n_max, 1) would be [first], then n_max made it two)
    points = np.geomspace(first, n_max, looks) if looks > 1 else np.empty(0)
    sizes = sorted({int(round(v)) for v in points} | {int(n_max)})
    count = len(sizes)
    if final_share is None or count == 1:
        shares = [1.0 / count] * count
    else:
        shares = [(1.0 - final_share) / (count - 1)] * (count - 1) + [final_share]
    return Schedule(tuple(sizes), tuple(float(np.nextafter(alpha * s, 0.0)) for s in shares))


# ------------------------------------------------------------------------------------------ betting


def kt_log_wealth(k, n, t: float) -> np.ndarray:
    """log of the Krichevsky-Trofimov mixture wealth after k successes in n trials against Bernoulli(t).

    ``k``, ``n``: integer arrays (0 <= k <= n) broadcast together; t in (0, 1). float64 array.
    """
    from scipy.special import gammaln

    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    log_kt = gammaln(k + 0.5) + gammaln(n - k + 0.5) - gammaln(n + 1.0) - np.log(np.pi)
    return log_kt - k * np.log(t) - (n - k) * np.log1p(-t)


def kt_cutoffs(sizes: tuple[int, ...], t: float, level: float) -> np.ndarray:
    """Per look, the smallest count k >= t N_j whose KT wealth against t reaches 1 / level (N_j + 1: none).

    The wealth is convex in k with its minimum (below 1) near t N, so the counts that cross form an upper set.
    """
    n = np.asarray(sizes, np.int64)
    if not 0.0 < t < 1.0:
        return n + 1
    goal = np.log(1.0 / level)
    lo, hi = np.ceil(t * n).astype(np.int64) - 1, n + 1  # pred(lo) false, pred(hi) "true"
    lo = np.maximum(lo, -1)
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        ok = np.where(hi - lo > 1, kt_log_wealth(np.clip(mid, 0, n), n, t) >= goal, False) & (mid >= t * n)
        hi, lo = np.where(ok, mid, hi), np.where(ok | (hi - lo <= 1), lo, mid)
    return hi


_BISECTIONS = 12  # on the log level, from log(alpha) to 0: steps of |log alpha| / 4096 (a fraction of a count)


@lru_cache(maxsize=512)
def betting_cutoffs(sizes: tuple[int, ...], t: float, alpha: float) -> tuple[int, ...]:
    """KT cutoffs of the looks ``sizes`` whose exact probability of any crossing at pA = t is at most ``alpha``,
    at the largest level (found by bisection in log level, from ``alpha``, valid by Ville's inequality) that
    keeps it so: the share of alpha given to the early looks is spent, not just bounded."""
    if not sizes:
        return ()
    lo, hi = np.log(alpha), 0.0  # log levels: lo holds (Ville), hi = level 1 is the loosest considered
    best = kt_cutoffs(sizes, t, alpha)  # Ville: at most alpha (checked exactly by the caller's calibration)
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        cut = kt_cutoffs(sizes, t, float(np.exp(mid)))
        if crossing(sizes, tuple(int(c) for c in cut), t, fast=True)[0] <= alpha * (1.0 - 1e-6):
            lo, best = mid, cut
        else:
            hi = mid
    return tuple(int(c) for c in best)


# ------------------------------------------------------------------------------------------ exact DP

# Binomial increments are truncated where the pmf is below this (each tail); the mass dropped is counted as
# an error (crossing), so truncation can only make a calibrated cutoff more conservative.
_TAIL = 1e-22
# A calibrated cutoff must keep the exact error at or below alpha * (1 - _MARGIN): far above the float64
# error of the sums (~1e-13 relative), far below anything that changes a cutoff by more than one count.
_MARGIN = 1e-9


@lru_cache(maxsize=4096)
def _increment(m: int, t: float) -> tuple[np.ndarray, int, float]:
    """pmf of Binomial(m, t) on [lo, hi] (tails below _TAIL dropped): (pmf, lo, dropped mass); read-only, cached."""
    from scipy.stats import binom

    lo = int(max(0, binom.ppf(_TAIL, m, t) - 1))
    hi = int(min(m, binom.isf(_TAIL, m, t) + 1))
    pmf = binom.pmf(np.arange(lo, hi + 1), m, t)
    pmf.flags.writeable = False
    return pmf, lo, float(binom.cdf(lo - 1, m, t) + binom.sf(hi, m, t)) if lo > 0 or hi < m else 0.0


def crossing(
    sizes: tuple[int, ...], cutoffs: tuple[int, ...], t: float, fast: bool = False
) -> tuple[float, np.ndarray, int]:
    """At pA = t: (P(S_j >= cutoffs[j] for some look j), the sub-distribution of S_L over the paths that never
    crossed, its lowest count). Truncated tails and denormal dust are counted as crossed (conservative).

    ``fast``: FFT convolutions (absolute error ~1e-15), for searches whose result is checked exactly later
    (the betting level, the fail-fast cutoffs); the default sums every product (no FFT error).
    """
    from scipy.signal import fftconvolve

    dist, lo, crossed, prev = np.ones(1), 0, 0.0, 0
    for n_j, c_j in zip(sizes, cutoffs):
        inc, ilo, dropped = _increment(n_j - prev, t)
        big = fast and min(len(dist), len(inc)) > 64
        dist = np.maximum(fftconvolve(dist, inc), 0.0) if big else np.convolve(dist, inc)
        lo, crossed, prev = lo + ilo, crossed + dropped, n_j
        cut = max(0, c_j - lo)
        crossed += float(dist[cut:].sum())
        dist = dist[:cut]
        keep = np.flatnonzero(dist > 1e-300)
        if keep.size == 0:
            return crossed, np.zeros(1), lo
        crossed += float(dist[: keep[0]].sum())  # (denormal dust) counted as crossed
        dist, lo = dist[keep[0] : keep[-1] + 1], lo + int(keep[0])
    return crossed, dist, lo


@lru_cache(maxsize=512)
def calibrated_cutoff(sizes: tuple[int, ...], early: tuple[int, ...], t: float, alpha: float) -> int:
    """Smallest count c of A at the last look such that, at pA = t, P(S_j >= early[j] for some earlier look j,
    or S_L >= c) <= alpha; ``sizes[-1] + 1`` when none is (exact, by dynamic programming over the looks).

    S_j ~ Binomial(sizes[j], t) are the cumulative counts of one i.i.d. sequence. The event is increasing
    in every sample, so its probability is increasing in pA: for every pA <= t it is at most alpha too.
    """
    from scipy.stats import binom

    n_last = sizes[-1]
    if not 0.0 < t < 1.0:
        return n_last + 1
    crossed, dist, lo = crossing(sizes[:-1], early, t)
    prev = sizes[-2] if len(sizes) > 1 else 0
    m = n_last - prev
    s = lo + np.arange(len(dist))
    goal = alpha * (1.0 - _MARGIN)

    def error(c: int) -> float:
        return crossed + float(np.dot(dist, binom.sf(c - s - 1, m, t)))

    if crossed > goal:
        return n_last + 1
    a, b = 0, n_last + 1  # error(b) = crossed <= goal; find the smallest c with error(c) <= goal
    if error(a) <= goal:
        return a
    while b - a > 1:
        mid = (a + b) // 2
        a, b = (a, mid) if error(mid) <= goal else (mid, b)
    return b


def operating(sizes, cert, low, p: float) -> tuple[float, float, np.ndarray]:
    """Exact operating characteristic of one threshold's looks at pA = p: the run stops at look j when
    S_j >= cert[j] (certified) or S_j <= low[j] (given up), or at the last look.

    Returns (P(certified), E[samples], P(stopping at look j) for each j), by dynamic programming (binomial
    tails below 1e-22 dropped; for tests and benchmarks).
    """
    dist, lo, prev = np.ones(1), 0, 0
    certified, stops = 0.0, np.zeros(len(sizes))
    for j, (n_j, c_j, f_j) in enumerate(zip(sizes, cert, low)):
        inc, ilo, _ = _increment(int(n_j) - prev, p) if 0.0 < p < 1.0 else (np.ones(1), (int(n_j) - prev) * int(p), 0.0)
        dist, lo, prev = np.convolve(dist, inc), lo + ilo, int(n_j)
        cut, floor = max(0, int(c_j) - lo), max(0, int(f_j) + 1 - lo)
        up = float(dist[cut:].sum())
        down = float(dist[: min(floor, cut)].sum())
        certified += up
        stops[j] = up + down
        dist = dist[min(floor, cut) : cut]
        lo += min(floor, cut)
        if dist.size == 0:
            dist = np.zeros(1)
    stops[-1] += float(dist.sum())
    return certified, float(np.dot(stops, np.asarray(sizes, np.float64))), stops
