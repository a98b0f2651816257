"""Sequential CERTIFY: estimation samples drawn in planned looks, stopping once the answer is settled.

The class to certify is fixed first: selected from selection samples drawn in doubling looks up to n0
(stopping once one class is clearly ahead; under noise.SELECT, then phases SELECT_PHASE + s), or the
example's label (``guess="label"``, no selection samples). Estimation then runs in L looks with cumulative
sizes N_1 < ... < N_L = n_max fixed in advance (default 100 looks from 10 samples); look j draws
N_j - N_{j-1} fresh samples under its own noise phase, so the union of the looks is one i.i.d. sample of
the class's indicator.

Radii mode (``calibrate``, its default): for each requested radius r the early looks cross a betting
boundary against t_r = Phi(r / sigma) (the KT mixture, :mod:`rs_onnx.boundaries`), and the last look's
cutoff is the smallest count c with P(some earlier look crosses, or S_L >= c) <= alpha at pA = t_r
(:func:`calibrated_cutoff`, an exact dynamic programme over the looks). That event grows with pA, so r is
certified wrongly with probability <= alpha; the thresholds are nested, so the largest certified radius
(reported as ``radius``, its threshold as ``p_a_lower``) holds at level alpha. Precision mode (``eps``)
and ``calibrate=False`` use Clopper-Pearson at each look's level instead (a union bound over the looks)
and report the best look's continuous radius. Other noises use their own radius function in place of
sigma Phi^-1 (uniform and Laplace: l1).

Stopping only decides which of the planned looks are made, so it cannot make an answer unsound. An
example stops once every radius the caller asked for is decided: certified, or out of reach even if every
remaining sample were the class (safe futility), or given up when the other classes' count crosses the
betting boundary against 1 - t_r (fail-fast, level ``futility_beta``: it loses a radius that pA
supports with probability at most beta and never adds one). Radius 0 (predict or abstain) is decided only
when asked for. Precision mode stops once the radius is within eps of what n_max samples could certify.
A ``budget`` over all examples makes the looks breadth-first and stops, once it is short, the least
promising examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.stats import norm

from . import bounds, noise, stats
from .boundaries import FINAL_SHARE, LOOKS, MAX_LOOKS, Schedule, betting_cutoffs, calibrated_cutoff, geometric_schedule
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
    certify radius i (-1: none could). ``k_fail[j, i]``: largest count of A at which look j gives radius i
    up (fail-fast; -1: never). ``eps``: precision mode's radius step, or None. ``first``: index of the
    smallest radius the caller asked to decide (0 when radius 0 was asked for, or in precision mode):
    an example stops once every radius from it upwards is certified or given up.
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
    first: int = 0

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


def calibration_threshold(r: float, sigma: float, noise_kind: str = "gaussian") -> float:
    """The pA a calibrated plan tests for radius r: 1/2 for r = 0, else the exact threshold nudged up by a
    relative 1e-12 (the float error of Phi is far smaller), so that pA >= it certifies at least r."""
    if r == 0.0:
        return 0.5
    t = float(_threshold(np.float64(r), sigma, noise_kind))
    return min(1.0, t * (1.0 + stats.SAFETY) + stats.SAFETY)


EARLY = ("betting", "cp")
"""Early-look cutoffs of a calibrated plan: the KT betting boundary spending the early share exactly, or
Clopper-Pearson at each look's own level (the design of issue 17)."""


def make_plan(
    schedule: Schedule,
    sigma: float,
    radii: Sequence[float] = (),
    futility_beta: float = 0.01,
    eps: float | None = None,
    noise_kind: str = "gaussian",
    calibrate: bool = False,
    early: str = "betting",
) -> Plan:
    """Decision tables for ``radii`` (sorted; 0 added: the predict-or-abstain decision).

    Uncalibrated (and precision mode), a radius r > 0 is certified at look j iff
    cohen_radius(CP_lower(n_A, N_j, alpha_j)) >= r, and r = 0 iff CP_lower >= 1/2, exactly as the reported
    bound is turned into a radius. Calibrated (``calibrate``), the early looks of threshold t_r cross at the
    ``early`` cutoffs (betting: :func:`rs_onnx.boundaries.betting_cutoffs` at the early looks' share of alpha;
    cp: Clopper-Pearson at each look's level) and the last look's cutoff is calibrated exactly so that
    P(some look certifies r) <= alpha at pA = t_r. Fail-fast (``futility_beta`` > 0) gives radius r up at
    look j when the non-A count crosses the KT betting boundary against 1 - t_r, calibrated exactly so that
    at pA = t_r some look gives up with probability at most beta (a power cost, never a soundness one).

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
    if early not in EARLY:
        raise ConfigError(f"early={early!r}: expected one of {', '.join(EARLY)}")
    rs = tuple(sorted({0.0} | {float(r) for r in radii}))
    first = 0 if (eps is not None or not radii or min(float(r) for r in radii) == 0.0) else 1
    return _cached_plan(
        schedule,
        float(sigma),
        rs,
        float(futility_beta),
        None if eps is None else float(eps),
        str(noise_kind),
        bool(calibrate),
        str(early),
        first,
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
    early: str = "betting",
    first: int = 0,
) -> Plan:
    """make_plan's tables for checked, hashable arguments (``rs``: sorted, 0 included)."""
    t = np.array(rs)[None, :]
    n = np.asarray(schedule.sizes, np.int64)[:, None] + np.zeros_like(t, np.int64)
    a = np.asarray(schedule.alphas)[:, None]
    sizes = tuple(int(v) for v in schedule.sizes)

    def certifies(k):
        p = stats.cp_lower(k, n, a)
        return np.where(t == 0.0, p >= 0.5, _radius(p, sigma, noise_kind) >= t)

    k_cert = _first_true(certifies, n)
    thresholds = [calibration_threshold(r, sigma, noise_kind) for r in rs]
    if calibrate:  # the last look's cutoffs, calibrated exactly at each threshold (see calibrated_cutoff)
        if early == "betting" and len(sizes) > 1:
            for i, p_r in enumerate(thresholds):
                k_cert[:-1, i] = betting_cutoffs(sizes[:-1], p_r, schedule.early_alpha)
        k_cert[:-1] = np.maximum.accumulate(k_cert[:-1], axis=1)  # nested (raising a cutoff only lowers errors)
        for i, p_r in enumerate(thresholds):
            early_cuts = tuple(int(v) for v in k_cert[:-1, i])
            k_cert[-1, i] = min(k_cert[-1, i], calibrated_cutoff(sizes, early_cuts, p_r, schedule.alpha))
        k_cert[-1] = np.maximum.accumulate(k_cert[-1])  # nested: certifying r certifies every smaller radius
    later = np.concatenate([n - k_cert, np.full((1, len(rs)), -1, np.int64)])
    slack = np.maximum.accumulate(later[::-1], axis=0)[::-1][1:]  # max over the looks after j
    k_fail = np.full(n.shape, -1, np.int64)
    if futility_beta > 0:  # give up r once the non-A count crosses the betting boundary against 1 - t_r
        for i, p_r in enumerate(thresholds):
            if 0.0 < p_r < 1.0:
                k_fail[:, i] = n[:, i] - np.asarray(betting_cutoffs(sizes, 1.0 - p_r, futility_beta))
        k_fail = np.maximum.accumulate(k_fail, axis=1)  # giving up r gives up every larger radius
    return Plan(schedule, sigma, rs, futility_beta, k_cert, slack, k_fail, eps, noise_kind, calibrate, first)


@dataclass
class Outcome:
    """Per-example state of the looks: counts, thresholds certified, the deciding look and why sampling stopped."""

    n_a: np.ndarray
    n: np.ndarray
    certified: np.ndarray  # number of plan thresholds certified (0: not even radius 0)
    best_look: np.ndarray  # the deciding look (-1: none made): see :func:`run_looks`
    best_n_a: np.ndarray  # count of A at that look
    looks: np.ndarray
    stopped: list[str]


def _settled(plan: Plan, j: int, k: np.ndarray, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision mode: (safe, fail-fast) masks of examples whose radius is within eps of what sampling on
    could give.

    Safe: even with every remaining sample A no later look reaches radius(best) + eps. Fail-fast (Chen et
    al. 2022's input-specific sampling, inside the union-bound frame): with p_up the (1 - beta / L) upper
    bound on pA, a run to n_max whose count were n_max p_up would certify at most radius(best) + eps.
    """
    sched = plan.schedule
    sizes, alphas = np.asarray(sched.sizes[j + 1 :]), np.asarray(sched.alphas[j + 1 :])
    goal = _radius(best, plan.sigma, plan.noise) + plan.eps
    n_j = sched.sizes[j]
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
        upper = stats.cp_upper(k, np.full_like(k, n_j), plan.futility_beta / len(sched.sizes))
        k_budget = np.minimum(sched.n_max, np.ceil(upper * sched.n_max)).astype(np.int64)
        budget = _radius(stats.cp_lower(k_budget, sched.n_max, sched.alphas[-1]), plan.sigma, plan.noise)
        fail = ~safe & (budget <= goal)
    return safe, fail


def _budgeted(plan: Plan, j: int, active: np.ndarray, n_a: np.ndarray, left: int) -> np.ndarray:
    """The examples of ``active`` that make look j on a budget of ``left`` samples: all when it suffices, else
    the most promising first (largest standardized lead of the count over the next threshold at the last
    look made), as many as the budget pays for."""
    cost = plan.schedule.sizes[j] - (plan.schedule.sizes[j - 1] if j else 0)
    if cost * len(active) <= left:
        return active
    if j == 0:
        return active[: left // cost]
    n = plan.schedule.sizes[j - 1]
    t = np.array([calibration_threshold(r, plan.sigma, plan.noise) for r in plan.radii])
    lead = (n_a[active] - n * t[plan.first]) / np.sqrt(n * t[plan.first] * (1 - t[plan.first]) + 1e-12)
    order = np.argsort(-lead, kind="stable")
    return np.sort(active[order[: left // cost]])


def run_looks(
    plan: Plan,
    sample: Callable[[int, np.ndarray], np.ndarray],
    active: np.ndarray,
    size: int,
    budget: int | None = None,
) -> Outcome:
    """Make the planned looks for the examples ``active`` (indices < size), stopping each when settled.

    ``sample(j, idx)`` returns the count of A among stage j's N_j - N_{j-1} new samples of examples idx.
    Looks are made breadth-first (every active example makes look j before any makes look j + 1). An example
    stops at the last look, or once every radius the caller asked for (from ``plan.first`` up) is decided:
    all certified, or the smallest one not certified out of reach (safe: even if every remaining sample
    were A; fail-fast: the betting boundary against it crossed); in precision mode, once it predicts,
    when its radius is settled to eps. ``budget``: most estimation samples in all; when the next look costs
    more than is left, the most promising examples make it and the others stop ("budget"). Every rule only
    removes looks from a plan fixed in advance, so none changes the level.

    ``best_look`` (recorded as a row's ``look``, ``look_nA``): union bound, the look with the best
    Clopper-Pearson bound; calibrated, the latest look that crossed the largest threshold certified (its count
    alone justifies the radius; the last look made whenever it does, so that its count is checked too), or
    while none is certified the best Clopper-Pearson bound.
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
    left = np.inf if budget is None else int(budget)
    if not (plan.k_cert[:, plan.first] <= np.asarray(sizes)).any():  # the radii asked for are out of reach
        for i in active:
            out.stopped[i] = "futile"
        return out
    for j, n_j in enumerate(sizes):
        if not active.size:
            break
        if budget is not None:
            chosen = _budgeted(plan, j, active, out.n_a, int(left))
            for i in np.setdiff1d(active, chosen):
                out.stopped[i] = "budget"
            active = chosen
            left -= len(active) * (n_j - (sizes[j - 1] if j else 0))
            if not active.size:
                break
        out.n_a[active] += np.asarray(sample(j, active), np.int64)
        out.n[active], out.looks[active] = n_j, j + 1
        k = out.n_a[active]
        lower = stats.cp_lower(k, np.full_like(k, n_j), alphas[j])
        up = lower > best[active]
        best[active[up]] = lower[up]
        crossed = (k[:, None] >= plan.k_cert[j][None, :]).sum(axis=1)
        c = np.maximum(out.certified[active], crossed)
        out.certified[active] = c
        if plan.calibrated:  # a look that justifies the radius: the latest to cross the largest threshold
            up = np.where(c > 0, crossed == c, up)  # (none certified: the best Clopper-Pearson bound so far)
        out.best_look[active[up]], out.best_n_a[active[up]] = j, k[up]
        nxt = np.minimum(np.maximum(c, plan.first), m - 1)  # the smallest radius asked for, not yet certified
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
    ``stopped`` why sampling stopped: certified, futile, fail-fast, precision, n_max, budget (the global
    budget ran out), no-class (the selection saw no class) or no-label (``guess="label"`` with label < 0). ``p_b_upper`` is 1 - p_a_lower (rounded up), so ``radius_2class`` is Cohen's
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

    @property
    def samples(self) -> int:
        """Samples spent on this example: selection (n0, as drawn) and estimation (n)."""
        return int(self.n0 + self.n)


GUESSES = ("select", "label")
"""How the class to certify is fixed: selected from the model's own samples, or the example's label."""
SELECT_PHASE = 1 << 20
"""Selection stage s >= 1 draws under phase SELECT_PHASE + s (stage 0 under noise.SELECT)."""


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
    looks: int = LOOKS,
    n_first: int | None = None,
    final_share: float | None = FINAL_SHARE,
    schedule: Schedule | None = None,
    futility_beta: float = 0.01,
    calibrate: bool | None = None,
    guess: str = "select",
    labels: Sequence[int] | None = None,
    adaptive_selection: bool = True,
    budget: int | None = None,
    early: str = "betting",
    progress: Callable[[int], None] | None = None,
) -> list[SequentialCertificate]:
    """Sequential CERTIFY of several images (same shape, in [0,1]) packed into shared batches.

    Parameters
    ----------
    smoothed : SmoothedClassifier (its sigma, seed and batches are used).
    xs, examples : images and their data-set indices (noise streams; default 0, 1, ...).
    n0, n_max, alpha : most selection samples, most estimation samples, overall level.
    radii : the radii to decide (l2, [0,1] pixel units); or ``eps`` (precision mode): stop once the radius
        is within eps of what n_max samples could certify (same units).
    looks, n_first, final_share : the geometric schedule (see geometric_schedule); or ``schedule``, whose
        levels must sum to at most alpha.
    futility_beta : fail-fast level (0: stop early only when the answer cannot change).
    calibrate : radii mode only (default there): the early looks cross a betting boundary (``early``), the
        last look's cutoff for each radius is calibrated exactly (:func:`calibrated_cutoff`) and ``radius`` is
        the largest requested radius certified; False: union bound over the looks and the continuous radius of
        the best look (always so in precision mode).
    guess : "select" (the class to certify is the top class of selection samples, drawn in doubling looks
        up to n0 that stop once one class is clearly ahead unless ``adaptive_selection`` is False) or
        "label" (the class is ``labels[i]``, fixed before any sample: no selection samples; a label < 0
        certifies nothing). Either way the class is fixed before the estimation samples that certify it.
    budget : most samples (selection and estimation) over all of ``xs``; looks are made breadth-first and,
        once the budget is short, given to the most promising examples (see :func:`run_looks`).
    """
    from .inputs import as_int

    n0, n_max = as_int("n0", n0, 1), as_int("n", n_max, 1)
    if (radii is None) == (eps is None):
        raise ConfigError("expected exactly one of radii (decide these radii) or eps (radius to precision eps)")
    if guess not in GUESSES:
        raise ConfigError(f"guess={guess!r}: expected one of {', '.join(GUESSES)}")
    if budget is not None:
        budget = as_int("budget", budget, 1)
    schedule = schedule or geometric_schedule(n_max, alpha, looks, n_first, final_share)
    if len(schedule.sizes) > MAX_LOOKS:  # look j draws under phase STAGE_PHASE + j: never a selection phase
        raise ConfigError(f"schedule of {len(schedule.sizes)} looks; expected at most {MAX_LOOKS:,}")
    if schedule.n_max != n_max or schedule.alpha > alpha:
        raise ConfigError(
            f"schedule ends at {schedule.n_max} and spends {schedule.alpha:.6g}; expected n_max={n_max} "
            f"and at most alpha={alpha}"
        )
    noise_kind = smoothed.noise
    calibrate = eps is None if calibrate is None else bool(calibrate)
    plan = make_plan(schedule, smoothed.sigma, radii or (), futility_beta, eps, noise_kind, calibrate, early)
    xs, examples = smoothed.images(xs, examples)  # uint8 scaled by 1/255, floats finite, one index per image
    if guess == "label":
        if labels is None or len(labels) != len(xs):
            raise ConfigError(f"guess='label' needs one label per image; received {labels!r} for {len(xs)} images")
        labels = [as_int("label", v) for v in labels]
    if len(xs) == 0:
        return []
    smoothed.verify_batches(xs[0], n_max * len(xs))
    sampler = smoothed.sampler(np.shape(xs[0]))
    clean = [sampler.pre.clean(x) for x in xs]
    if guess == "label":
        sel = np.zeros((len(xs), 2), np.int64)
        chosen = np.asarray(labels, np.int64)
        chosen[chosen < 0] = ABSTAIN
    else:
        sizes = stats.selection_sizes(n0, adaptive_selection)
        sel, chosen = _select(sampler, clean, examples, sizes, progress, budget)
    totals = _Growable(np.zeros_like(sel))

    def sample(j, idx):
        new = schedule.sizes[j] - (schedule.sizes[j - 1] if j else 0)
        counts = sampler.count([Task(clean[i], examples[i], stage_phase(j), new) for i in idx], progress)
        totals.add(idx, counts)
        classes = counts[:, :-1]  # a guess beyond the classes seen here (under-announced model) counts 0
        g = chosen[idx]
        return np.where(g < classes.shape[1], classes[np.arange(len(idx)), np.minimum(g, classes.shape[1] - 1)], 0)

    left = None if budget is None else max(0, budget - int(sel.sum()))
    out = run_looks(plan, sample, np.flatnonzero(chosen != ABSTAIN), len(xs), left)
    if budget is not None and guess == "select":  # the budget ran out before these had a selection sample
        for i in np.flatnonzero(sel.sum(axis=1) == 0):
            out.stopped[i] = "budget"
    dim = int(np.prod(sampler.pre.model_shape))
    return [
        _certificate(plan, out, i, int(chosen[i]), int(sel[i].sum()), sel[i], totals.array[i], dim)
        for i in range(len(xs))
    ]


def _select(
    sampler, clean, examples, sizes: tuple[int, ...], progress, budget: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Selection in looks of cumulative ``sizes`` (stage 0 under noise.SELECT, so that one look is Cohen's):
    (class counts [E, K + 1], the guesses, ABSTAIN where no sample gave a class). With a ``budget``, a look
    the budget cannot pay for everyone is made by the first examples it pays for; the rest keep their guess."""
    sel = _Growable(np.zeros((len(clean), 2), np.int64))
    active, prev = np.arange(len(clean)), 0
    left = np.inf if budget is None else budget
    for s, size in enumerate(sizes):
        phase = noise.SELECT if s == 0 else SELECT_PHASE + s
        active = active[: int(min(len(active), left // (size - prev)))]
        if not active.size:
            break
        left -= len(active) * (size - prev)
        counts = sampler.count([Task(clean[i], examples[i], phase, size - prev) for i in active], progress)
        sel.add(active, counts)
        prev = size
        active = active[~stats.select_clear(sel.array[active])]
        if not active.size:
            break
    return sel.array, stats.select_many(sel.array)


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
    none = "budget" if out.stopped[i] == "budget" else "no-class" if n0 else "no-label"
    stopped = out.stopped[i] if guess != ABSTAIN else none
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
    """The certificate that one row's counts justify under ``plan`` (``rs-onnx verify``): ``n_a`` of ``n`` at
    the last look made, ``look_n_a`` at the deciding look ``look`` (1-based; 0: none; see :func:`run_looks`).

    Union-bound plans (precision mode) report that look's bound. Calibrated plans certify a threshold at any
    look whose count crosses its cutoff, and a run records the latest look that crossed its largest one,
    so the thresholds ``look_n_a`` crosses (or the last look's count, if more) are the run's: every row of an
    honest file is reproduced exactly, and a larger radius is not justified by its counts. ``predict`` stands
    for the guess (any class when the row abstains: the guess only decides whether the answer is a class)."""
    sizes = plan.schedule.sizes
    j = look - 1
    certified = 0
    if plan.calibrated:
        if j >= 0:
            certified = int((look_n_a >= plan.k_cert[j]).sum())
        if n in sizes:
            certified = max(certified, int((n_a >= plan.k_cert[sizes.index(n)]).sum()))
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
