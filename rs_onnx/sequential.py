"""Sequential CERTIFY: estimation samples drawn in planned stages, stopping once the answer is settled.

Selection is Cohen et al.'s (n0 samples under ``noise.SELECT`` pick the guess A). Estimation then runs
in L stages with cumulative sizes N_1 < ... < N_L = n_max fixed in advance; stage j draws N_j - N_{j-1}
fresh samples under its own noise phase, so the union of stages is one i.i.d. sample of the guess's
indicator. After stage j the look's Clopper-Pearson lower bound at level alpha_j (sum alpha_j <= alpha)
is computed; the reported ``p_a_lower`` is the largest bound over the looks made. It is valid at level
alpha whatever the stopping rule (a union bound over the L planned looks, see benchmarks/SEQUENTIAL.md).

Stopping only decides which looks are made, so it cannot make the answer unsound. An example stops
when every requested radius (l2, [0,1] pixel units) is decided: certified, or out of reach even if
every remaining sample were A (the safe futility rule: the answer is then exactly the full run's), or
(fail-fast, level ``futility_beta``) when a (1 - beta_j) upper bound on pA lies below Phi(r / sigma):
this loses a radius that pA actually supports with probability at most beta, and never adds one.
Precision mode (``eps``) stops instead once the radius cannot grow by more than eps.

Radii mode calibrates the last look exactly (``calibrate``, its default): for each requested radius r the
last look's cutoff is the smallest count c with P(some earlier look certifies r, or S_L >= c) <= alpha at
pA = Phi(r / sigma) (:func:`calibrated_cutoff`, dynamic programming over the looks). That event grows
with pA, so r is certified wrongly with probability <= alpha; the thresholds are nested, so the largest
certified radius (reported as ``radius``, its threshold as ``p_a_lower``) holds at level alpha. The
early looks keep their Clopper-Pearson levels. Other noises use their own radius function in place of
sigma Phi^-1 (uniform and Laplace: l1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.stats import binom, norm

from . import bounds, noise, stats
from .errors import ConfigError
from .sampling import Task
from .smoothing import Certificate

ABSTAIN = stats.ABSTAIN

# Stage j >= 1 draws its noise under phase STAGE_PHASE + j (stage 0 under noise.ESTIMATE, so that a
# one-stage schedule is exactly Cohen's CERTIFY). Distinct phases give independent noise streams.
STAGE_PHASE = 16


def stage_phase(j: int) -> int:
    """The noise phase of estimation stage j (0-based)."""
    return noise.ESTIMATE if j == 0 else STAGE_PHASE + j


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


def geometric_schedule(
    n_max: int, alpha: float, looks: int = 8, n_first: int | None = None, final_share: float | None = 0.5
) -> Schedule:
    """L = ``looks`` looks at sizes geometric from ``n_first`` (default n_max / 100, at least 100) to n_max.

    ``final_share`` = s spends s alpha at the last look and (1 - s) alpha / (L - 1) at each earlier one
    (None: alpha / L each); levels are rounded down, so they sum to at most alpha.
    """
    if n_max < 1:
        raise ConfigError(f"n_max={n_max}: expected at least 1 sample")
    if looks < 1:
        raise ConfigError(f"looks={looks}: expected at least 1")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha={alpha}: expected 0 < alpha < 1")
    if final_share is not None and not 0.0 < final_share < 1.0:
        raise ConfigError(f"final_share={final_share}: expected 0 < share < 1")
    first = min(n_max, max(100, n_max // 100)) if n_first is None else int(n_first)
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


def _radius(p: np.ndarray, sigma: float, noise_kind: str = "gaussian") -> np.ndarray:
    """Vectorised native radius: stats.cohen_radius for gaussian (same formula and rounding), else bounds.radius."""
    if noise_kind != "gaussian":
        return np.asarray(bounds.radius(np.asarray(p, np.float64), noise_kind, sigma, bounds.NATIVE_NORM[noise_kind]))
    return stats.cohen_radii(p, sigma)


def _threshold(r: np.ndarray, sigma: float, noise_kind: str = "gaussian") -> np.ndarray:
    """The probability of A at which the native radius equals r (the inverse of :func:`_radius`)."""
    if noise_kind == "uniform":
        return np.minimum(1.0, 0.5 + r / (2.0 * sigma))
    if noise_kind == "laplace":
        return 1.0 - 0.5 * np.exp(-r / sigma)
    return norm.cdf(r / sigma)


def _first_true(pred: Callable[[np.ndarray], np.ndarray], n: np.ndarray) -> np.ndarray:
    """Elementwise smallest k in [0, n] with pred(k) true for a predicate monotone in k; n + 1 when none."""
    lo, hi = np.full(n.shape, -1, np.int64), n.astype(np.int64) + 1  # pred(lo) false, pred(hi) "true"
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        ok = np.where(hi - lo > 1, pred(np.maximum(mid, 0)), False)
        hi, lo = np.where(ok, mid, hi), np.where(ok | (hi - lo <= 1), lo, mid)
    return hi


@dataclass(frozen=True)
class Plan:
    """Decision tables of a schedule for the thresholds 0 (predict) < r_1 < ... (l2, [0,1] pixel units).

    ``k_cert[j, i]``: smallest count of A among N_j that certifies radius i at look j (N_j + 1: none).
    ``slack[j, i]``: largest number of non-A samples at look j with which some later look could still
    certify radius i (-1: none could). ``k_fail[j, i]``: largest count of A whose (1 - beta / L) upper bound
    on pA lies below Phi(r_i / sigma) (-1: fail-fast off). ``eps``: precision mode's radius step, or None.
    """

    schedule: Schedule
    sigma: float
    radii: tuple[float, ...]
    futility_beta: float
    k_cert: np.ndarray = field(repr=False)
    slack: np.ndarray = field(repr=False)
    k_fail: np.ndarray = field(repr=False)
    eps: float | None = None
    noise: str = "gaussian"
    calibrated: bool = False

    def __post_init__(self) -> None:
        # read-only copies: make_plan hands out one cached Plan to every caller, so no caller may change it
        # (backed by immutable bytes, so that the flag cannot be set back either)
        for name in ("k_cert", "slack", "k_fail"):
            table = np.asarray(getattr(self, name))
            frozen = np.frombuffer(table.tobytes(), dtype=table.dtype).reshape(table.shape)
            object.__setattr__(self, name, frozen)

    def reachable(self) -> tuple[float, ...]:
        """Radii that some look can certify (when every sample is A)."""
        n = np.asarray(self.schedule.sizes)[:, None]
        return tuple(r for r, ok in zip(self.radii, np.atleast_1d((self.k_cert <= n).any(axis=0))) if ok)

    def max_radius(self) -> float:
        """The largest radius any look can certify (when every sample is A)."""
        n = np.asarray(self.schedule.sizes)
        return float(np.max(_radius(stats.cp_lower(n, n, np.asarray(self.schedule.alphas)), self.sigma, self.noise)))


# Binomial increments are truncated where the pmf is below this (each tail); the mass dropped is counted as
# an error (crossing), so truncation can only make a calibrated cutoff more conservative.
_TAIL = 1e-22
# A calibrated last look must keep the exact error at or below alpha * (1 - _MARGIN): far above the float64
# error of the sums (~1e-13 relative), far below anything that changes a cutoff by more than one count.
_MARGIN = 1e-9


def _increment(m: int, t: float) -> tuple[np.ndarray, int, float]:
    """pmf of Binomial(m, t) on [lo, hi] (tails below _TAIL dropped): (pmf, lo, dropped mass)."""
    lo = int(max(0, binom.ppf(_TAIL, m, t) - 1))
    hi = int(min(m, binom.isf(_TAIL, m, t) + 1))
    pmf = binom.pmf(np.arange(lo, hi + 1), m, t)
    return pmf, lo, float(binom.cdf(lo - 1, m, t) + binom.sf(hi, m, t)) if lo > 0 or hi < m else 0.0


@lru_cache(maxsize=256)
def calibrated_cutoff(sizes: tuple[int, ...], early: tuple[int, ...], t: float, alpha: float) -> int:
    """Smallest count c of A at the last look such that, at pA = t, P(S_j >= early[j] for some earlier look j,
    or S_L >= c) <= alpha; ``sizes[-1] + 1`` when none is (exact, by dynamic programming over the looks).

    S_j ~ Binomial(sizes[j], t) are the cumulative counts of one i.i.d. sequence. The event is increasing
    in every sample, so its probability is increasing in pA: for every pA <= t it is at most alpha too.
    The dynamic programme carries the distribution of S_j over the paths that have not crossed yet;
    truncated tails are counted as crossed (conservative).
    """
    n_last = sizes[-1]
    if not 0.0 < t < 1.0:
        return n_last + 1
    dist, lo, crossed, prev = np.ones(1), 0, 0.0, 0
    for n_j, c_j in zip(sizes[:-1], early):
        inc, ilo, dropped = _increment(n_j - prev, t)
        dist, lo, crossed, prev = np.convolve(dist, inc), lo + ilo, crossed + dropped, n_j
        cut = max(0, c_j - lo)
        crossed += float(dist[cut:].sum())
        dist = dist[:cut]
        keep = np.flatnonzero(dist > 1e-300)
        if keep.size == 0:
            dist = np.zeros(1)
            continue
        crossed += float(dist[: keep[0]].sum())  # (denormal dust) counted as crossed
        dist, lo = dist[keep[0] : keep[-1] + 1], lo + int(keep[0])
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


def calibration_threshold(r: float, sigma: float, noise_kind: str = "gaussian") -> float:
    """The pA a calibrated plan tests for radius r: 1/2 for r = 0, else the exact threshold nudged up by a
    relative 1e-12 (the float error of Phi is far smaller), so that pA >= it certifies at least r."""
    if r == 0.0:
        return 0.5
    t = float(_threshold(np.float64(r), sigma, noise_kind))
    return min(1.0, t * (1.0 + stats.SAFETY) + stats.SAFETY)


def make_plan(
    schedule: Schedule,
    sigma: float,
    radii: Sequence[float] = (),
    futility_beta: float = 0.01,
    eps: float | None = None,
    noise_kind: str = "gaussian",
    calibrate: bool = False,
) -> Plan:
    """Decision tables for ``radii`` (sorted; 0 added: the predict-or-abstain decision).

    A radius r > 0 is certified at look j iff cohen_radius(CP_lower(n_A, N_j, alpha_j)) >= r, and r = 0
    iff CP_lower >= 1/2, exactly as the reported bound is turned into a radius. With ``eps`` (precision
    mode) an example that predicts stops once its radius cannot grow by more than eps (see run_looks).

    The plan is computed once per distinct set of arguments (as float64 values) and the same read-only
    Plan is returned to every later call: a run plans in its preflight and again for every group.
    """
    if not (np.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma={sigma}: expected a positive noise level")
    if not 0.0 <= futility_beta < 1.0:
        raise ConfigError(f"futility_beta={futility_beta}: expected 0 <= beta < 1 (0: safe futility only)")
    if eps is not None and not (np.isfinite(eps) and eps > 0):
        raise ConfigError(f"eps={eps}: expected a positive radius precision")
    if any(not np.isfinite(r) or r < 0 for r in radii):
        raise ConfigError(f"radii {list(radii)}: expected finite radii >= 0")
    if calibrate and eps is not None:
        raise ConfigError("calibrate with eps (precision mode): expected one or the other")
    rs = tuple(sorted({0.0} | {float(r) for r in radii}))
    return _cached_plan(
        schedule,
        float(sigma),
        rs,
        float(futility_beta),
        None if eps is None else float(eps),
        str(noise_kind),
        bool(calibrate),
    )


def clear_plan_cache() -> None:
    """Forget the plans make_plan has cached (for measurements: the next call computes afresh)."""
    _cached_plan.cache_clear()


@lru_cache(maxsize=64)
def _cached_plan(
    schedule: Schedule,
    sigma: float,
    rs: tuple[float, ...],
    futility_beta: float,
    eps: float | None,
    noise_kind: str,
    calibrate: bool,
) -> Plan:
    """make_plan's tables for checked, hashable arguments (``rs``: sorted, 0 included)."""
    t = np.array(rs)[None, :]
    n = np.asarray(schedule.sizes, np.int64)[:, None] + np.zeros_like(t, np.int64)
    a = np.asarray(schedule.alphas)[:, None]

    def certifies(k):
        p = stats.cp_lower(k, n, a)
        return np.where(t == 0.0, p >= 0.5, _radius(p, sigma, noise_kind) >= t)

    k_cert = _first_true(certifies, n)
    if calibrate:  # the last look's cutoffs, calibrated exactly at each threshold (see calibrated_cutoff)
        sizes = tuple(int(v) for v in schedule.sizes)
        for i, r in enumerate(rs):
            p_r = calibration_threshold(r, sigma, noise_kind)
            early = tuple(int(v) for v in k_cert[:-1, i])
            k_cert[-1, i] = min(k_cert[-1, i], calibrated_cutoff(sizes, early, p_r, schedule.alpha))
        k_cert[-1] = np.maximum.accumulate(k_cert[-1])  # nested: certifying r certifies every smaller radius
    later = np.concatenate([n - k_cert, np.full((1, len(rs)), -1, np.int64)])
    slack = np.maximum.accumulate(later[::-1], axis=0)[::-1][1:]  # max over the looks after j
    if futility_beta > 0:
        b = futility_beta / len(schedule.sizes)
        target = _threshold(t, sigma, noise_kind)
        k_fail = _first_true(lambda k: stats.cp_upper(k, n, b) >= target, n) - 1
    else:
        k_fail = np.full(n.shape, -1, np.int64)
    return Plan(schedule, sigma, rs, futility_beta, k_cert, slack, k_fail, eps, noise_kind, calibrate)


@dataclass
class Outcome:
    """Per-example state of the looks: counts, thresholds certified, best look and why sampling stopped."""

    n_a: np.ndarray
    n: np.ndarray
    certified: np.ndarray  # number of plan thresholds certified (0: not even radius 0)
    best_look: np.ndarray  # look with the largest lower bound (-1: none made)
    best_n_a: np.ndarray  # count of A at that look
    looks: np.ndarray
    stopped: list[str]


def _settled(plan: Plan, j: int, k: np.ndarray, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision mode: (safe, fail-fast) masks of examples whose radius cannot grow by more than eps.

    Safe: even with every remaining sample A no later look reaches radius(best) + eps. Fail-fast: the
    (1 - beta / L) upper confidence bound on the radius, sigma Phi^-1(CP_upper), is within eps of it.
    """
    sizes, alphas = np.asarray(plan.schedule.sizes[j + 1 :]), np.asarray(plan.schedule.alphas[j + 1 :])
    goal = _radius(best, plan.sigma, plan.noise) + plan.eps
    n_j = plan.schedule.sizes[j]
    if sizes.size:
        kk = k[:, None] + sizes[None, :] - n_j
        reach = _radius(stats.cp_lower(kk, np.broadcast_to(sizes, kk.shape), alphas), plan.sigma, plan.noise).max(
            axis=1
        )
    else:
        reach = np.zeros(len(k))
    safe = reach <= goal
    fail = np.zeros(len(k), bool)
    if plan.futility_beta > 0:
        upper = stats.cp_upper(k, np.full_like(k, n_j), plan.futility_beta / len(plan.schedule.sizes))
        fail = ~safe & (_radius(upper, plan.sigma, plan.noise) <= goal)
    return safe, fail


def run_looks(plan: Plan, sample: Callable[[int, np.ndarray], np.ndarray], active: np.ndarray, size: int) -> Outcome:
    """Make the planned looks for the examples ``active`` (indices < size), stopping each when settled.

    ``sample(j, idx)`` returns the count of A among stage j's N_j - N_{j-1} new samples of examples idx.
    An example stops at the last look, or when the next radius to certify is out of reach (safe: even
    if every remaining sample were A; fail-fast: its upper bound on pA is below Phi(r / sigma)), or when
    every radius is certified; in precision mode, once it predicts, when its radius is settled to eps.
    """
    sizes, alphas = plan.schedule.sizes, plan.schedule.alphas
    m, last = len(plan.radii), len(sizes) - 1
    out = Outcome(
        np.zeros(size, np.int64),
        np.zeros(size, np.int64),
        np.zeros(size, np.int64),
        np.full(size, -1, np.int64),
        np.zeros(size, np.int64),
        np.zeros(size, np.int64),
        ["none"] * size,
    )
    best = np.full(size, -1.0)
    active = np.asarray(active, np.int64)
    if not (plan.k_cert[:, 0] <= np.asarray(sizes)).any():  # even radius 0 is out of reach: sample nothing
        for i in active:
            out.stopped[i] = "futile"
        return out
    for j, n_j in enumerate(sizes):
        if not active.size:
            break
        out.n_a[active] += np.asarray(sample(j, active), np.int64)
        out.n[active], out.looks[active] = n_j, j + 1
        k = out.n_a[active]
        lower = stats.cp_lower(k, np.full_like(k, n_j), alphas[j])
        up = lower > best[active]
        best[active[up]], out.best_look[active[up]], out.best_n_a[active[up]] = lower[up], j, k[up]
        c = np.maximum(out.certified[active], (k[:, None] >= plan.k_cert[j][None, :]).sum(axis=1))
        out.certified[active] = c
        nxt = np.minimum(c, m - 1)
        done = c == m
        futile = ~done & (n_j - k > plan.slack[j, nxt])
        fail = ~done & ~futile & (k <= plan.k_fail[j, nxt])
        if plan.eps is not None:  # every threshold (radius 0) certified: stop once the radius is settled
            safe, precise = _settled(plan, j, k, best[active])
            futile, fail, done = futile | (done & safe), fail | (done & precise), np.zeros_like(done)
        stop = done | futile | fail | (j == last)
        for i, d, f in zip(active[stop], done[stop], futile[stop]):
            out.stopped[i] = (
                "certified"
                if d
                else "n_max"
                if j == last
                else "futile"
                if f
                else "precision"
                if plan.eps is not None and out.certified[i]
                else "fail-fast"
            )
        active = active[~stop]
    return out


@dataclass(frozen=True, kw_only=True)
class SequentialCertificate(Certificate):
    """Sequential CERTIFY's answer for one example: a :class:`Certificate` plus how sampling went.

    ``radius`` is sigma Phi^-1(p_a_lower) from the best look's bound (sound at level alpha); it is at least
    ``decided_radius``, the largest requested radius certified (``decided_radii``: all of them). ``n`` is
    the number of estimation samples used (plus ``n0`` for selection); ``looks`` the looks made;
    ``stopped`` why sampling stopped: certified, futile, fail-fast, precision, n_max or no-class (the
    selection saw no class). ``p_b_upper`` is 1 - p_a_lower (rounded up), so ``radius_2class`` is Cohen's
    radius up to rounding and ``radius_tv`` follows from the same event; both hold at level alpha.
    """

    decided_radius: float
    decided_radii: tuple[float, ...]
    looks: int
    stopped: str
    n_max: int
    look: int = 0  # the look whose bound is p_a_lower (1-based; 0: none made), at level alpha_p_a
    look_n: int = 0  # estimation samples at that look
    look_n_a: int = 0  # count of the guess at that look: p_a_lower = CP_lower(look_n_a, look_n, alpha_p_a)


def sequential_certify_many(
    smoothed,
    xs: Sequence[np.ndarray],
    examples: Sequence[int] | None,
    n0: int,
    n_max: int,
    alpha: float,
    radii: Sequence[float] | None = None,
    *,
    eps: float | None = None,
    looks: int = 16,
    n_first: int | None = None,
    final_share: float | None = 0.9,
    schedule: Schedule | None = None,
    futility_beta: float = 0.01,
    calibrate: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[SequentialCertificate]:
    """Sequential CERTIFY of several images (same shape, in [0,1]) packed into shared batches.

    Parameters
    ----------
    smoothed : SmoothedClassifier (its sigma, seed and batches are used).
    xs, examples : images and their data-set indices (noise streams; default 0, 1, ...).
    n0, n_max, alpha : selection samples, most estimation samples, overall level.
    radii : the radii to decide (l2, [0,1] pixel units); or ``eps`` (precision mode): stop once the radius
        cannot grow by more than eps (same units).
    looks, n_first, final_share : the geometric schedule (see geometric_schedule); or ``schedule``, whose
        levels must sum to at most alpha.
    futility_beta : fail-fast level (0: stop early only when the answer cannot change).
    calibrate : radii mode only (default there): the last look's cutoff for each radius is calibrated exactly
        (:func:`calibrated_cutoff`) and ``radius`` is the largest requested radius certified; False: union
        bound over the looks and the continuous radius of the best look (always so in precision mode).
    """
    from .inputs import as_int

    n0, n_max = as_int("n0", n0, 1), as_int("n", n_max, 1)
    if (radii is None) == (eps is None):
        raise ConfigError("expected exactly one of radii (decide these radii) or eps (radius to precision eps)")
    schedule = schedule or geometric_schedule(n_max, alpha, looks, n_first, final_share)
    if schedule.n_max != n_max or schedule.alpha > alpha:
        raise ConfigError(
            f"schedule ends at {schedule.n_max} and spends {schedule.alpha:.6g}; expected n_max={n_max} "
            f"and at most alpha={alpha}"
        )
    noise_kind = smoothed.noise
    calibrate = eps is None if calibrate is None else bool(calibrate)
    plan = make_plan(schedule, smoothed.sigma, radii or (), futility_beta, eps, noise_kind, calibrate)
    xs, examples = smoothed.images(xs, examples)  # uint8 scaled by 1/255, floats finite, one index per image
    if len(xs) == 0:
        return []
    smoothed.verify_batches(xs[0], n_max * len(xs))
    sampler = smoothed.sampler(np.shape(xs[0]))
    clean = [sampler.pre.clean(x) for x in xs]
    sel = sampler.count([Task(c, e, noise.SELECT, n0) for c, e in zip(clean, examples)], progress)
    guess = stats.select_many(sel)
    totals = _Growable(np.zeros_like(sel))

    def sample(j, idx):
        new = schedule.sizes[j] - (schedule.sizes[j - 1] if j else 0)
        counts = sampler.count([Task(clean[i], examples[i], stage_phase(j), new) for i in idx], progress)
        totals.add(idx, counts)
        classes = counts[:, :-1]  # a guess beyond the classes seen here (under-announced model) counts 0
        g = guess[idx]
        return np.where(g < classes.shape[1], classes[np.arange(len(idx)), np.minimum(g, classes.shape[1] - 1)], 0)

    out = run_looks(plan, sample, np.flatnonzero(guess != ABSTAIN), len(xs))
    dim = int(np.prod(sampler.pre.model_shape))
    return [_certificate(plan, out, i, int(guess[i]), n0, sel[i], totals.array[i], dim) for i in range(len(xs))]


class _Growable:
    """Per-example class counts [E, K + 1] that widen when the model reveals more classes."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def add(self, idx: np.ndarray, counts: np.ndarray) -> None:
        k = max(self.array.shape[1], counts.shape[1]) - 1
        if self.array.shape[1] - 1 < k:
            grown = np.zeros((len(self.array), k + 1), np.int64)
            grown[:, : self.array.shape[1] - 1] = self.array[:, :-1]
            grown[:, -1] = self.array[:, -1]
            self.array = grown
        self.array[idx, : counts.shape[1] - 1] += counts[:, :-1]
        self.array[idx, -1] += counts[:, -1]


def _certificate(
    plan: Plan, out: Outcome, i: int, guess: int, n0: int, sel: np.ndarray, counts: np.ndarray, dim: int = 1
) -> SequentialCertificate:
    sigma, sched = plan.sigma, plan.schedule
    n, n_a, look = int(out.n[i]), int(out.n_a[i]), int(out.best_look[i])
    stopped = out.stopped[i] if guess != ABSTAIN else "no-class"
    p_lower = 0.0  # the best look's bound, recomputed in scalar float64 from the counts at that look
    certified = int(out.certified[i]) if guess != ABSTAIN else 0
    if plan.calibrated:  # the largest threshold certified: pA >= it holds with probability >= 1 - alpha
        p_lower = calibration_threshold(plan.radii[certified - 1], sigma, plan.noise) if certified else 0.0
    elif look >= 0:
        p_lower = stats.clopper_pearson_lower(int(out.best_n_a[i]), sched.sizes[look], sched.alphas[look])
    predict = guess if guess != ABSTAIN and p_lower >= 0.5 else ABSTAIN
    gaussian = plan.noise == "gaussian"
    if predict == ABSTAIN:
        radius = 0.0
    elif plan.calibrated:
        radius = plan.radii[certified - 1]
    elif gaussian:
        radius = stats.cohen_radius(p_lower, sigma)
    else:
        radius = float(bounds.radius(p_lower, plan.noise, sigma, bounds.NATIVE_NORM[plan.noise]))
    decided = tuple(r for r in plan.radii if r > 0 and radius >= r) if predict != ABSTAIN else ()
    p_b = float(min(1.0, np.nextafter(1.0 - p_lower, 2.0)))
    r_two = float(bounds.two_class_radius(p_lower, p_b, sigma)) if predict != ABSTAIN and gaussian else 0.0
    r_tv = float(bounds.tv_radius(p_lower, p_b, sigma)) if predict != ABSTAIN and gaussian else 0.0
    if plan.calibrated:  # p_lower is the threshold nudged up: its radii equal `radius` up to rounding
        r_two, r_tv = min(r_two, radius), min(r_tv, radius)
    lp = bounds.norm_radii(p_lower, radius, plan.noise, sigma, dim)
    return SequentialCertificate(
        predict=predict,
        radius=radius,
        p_a_lower=p_lower,
        n_a=n_a,
        n=n,
        n0=n0,
        guess=guess,
        nonfinite=int(sel[-1] + counts[-1]),
        p_b_upper=p_b,
        radius_2class=r_two,
        radius_tv=r_tv,
        counts=counts.copy(),
        noise=plan.noise,
        radius_l1=lp["l1"],
        radius_l2=lp["l2"],
        radius_linf=lp["linf"],
        decided_radius=decided[-1] if decided else 0.0,
        decided_radii=decided,
        looks=int(out.looks[i]),
        stopped=stopped,
        n_max=sched.n_max,
        # calibrated: the level is the plan's whole alpha (pA_lower is a threshold,
        # not the bound of one look); union bound: the deciding look's share
        alpha_p_a=(float(sched.alpha) if plan.calibrated else float(sched.alphas[look])) if look >= 0 else 0.0,
        look=look + 1,
        look_n=sched.sizes[look] if look >= 0 else 0,
        look_n_a=int(out.best_n_a[i]) if look >= 0 else 0,
    )


def run_plan(
    n: int,
    alpha: float,
    looks: int,
    n_first: int | None,
    final_share: float | None,
    sigma: float,
    radii: Sequence[float] | None,
    futility_beta: float,
    precision: float | None,
    noise_kind: str,
) -> Plan:
    """The plan of a run's settings (``--n`` the budget, ``--radii`` or ``--precision``...): the one used by the
    run's preflight, by :func:`sequential_certify_many` through the same arguments, and by ``rs-onnx verify``."""
    schedule = geometric_schedule(n, alpha, looks, n_first, final_share)
    return make_plan(
        schedule,
        sigma,
        () if precision else (radii or ()),
        futility_beta,
        precision,
        noise_kind,
        calibrate=not precision,
    )


def certificate_from_row(
    plan: Plan, predict: int, n_a: int, n: int, look: int, look_n_a: int, n0: int, nonfinite: int, dim: int
) -> SequentialCertificate:
    """The certificate that one row's counts determine under ``plan`` (``rs-onnx verify``): ``n_a`` of ``n`` at
    the last look made, ``look_n_a`` at the deciding look ``look`` (1-based; 0: none).

    The thresholds certified are those of the deciding look (the largest bound: no earlier look certifies more,
    each early look's cutoffs being its Clopper-Pearson bound's) and of the last look when it was made (its
    calibrated cutoffs), as :func:`run_looks` counts them. ``predict`` stands for the guess (any class when the
    row abstains: the guess only decides whether the answer is a class)."""
    sizes = plan.schedule.sizes
    j = look - 1
    certified = 0
    if j >= 0:
        certified = int((look_n_a >= plan.k_cert[j]).sum())
    if n == sizes[-1]:
        certified = max(certified, int((n_a >= plan.k_cert[-1]).sum()))
    out = Outcome(
        np.array([n_a], np.int64),
        np.array([n], np.int64),
        np.array([certified], np.int64),
        np.array([j], np.int64),
        np.array([look_n_a], np.int64),
        np.array([look], np.int64),
        ["n/a"],
    )
    guess = predict if predict != ABSTAIN else (0 if n > 0 else ABSTAIN)
    return _certificate(plan, out, 0, guess, n0, np.array([nonfinite]), np.array([0]), dim)
