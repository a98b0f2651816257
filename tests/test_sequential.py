"""Sequential CERTIFY: soundness on classifiers whose smoothed probability is known exactly, early stopping,
fresh noise per stage, and agreement with Cohen's CERTIFY for a one-look schedule."""

import dataclasses

import numpy as np
import pytest
from scipy.stats import norm

from rs_onnx import stats
from rs_onnx.errors import ConfigError
from rs_onnx.sequential import (
    ABSTAIN,
    Schedule,
    SequentialCertificate,
    geometric_schedule,
    make_plan,
    run_looks,
    sequential_certify_many,
)
from rs_onnx.sampling import HostClassifier
from rs_onnx.smoothing import Certificate, SmoothedClassifier


class Threshold(HostClassifier):
    """Class 1 iff the first input value exceeds -d: at x = 0 the smoothed class-1 probability is exactly
    Phi(d / sigma), so g's exact robust l2 radius there is d (the distance to the boundary)."""

    def __init__(self, d, dim=4):
        self.d, self.input_shape, self.input_dtype, self.num_classes = d, (dim,), np.dtype(np.float32), 2
        self.rows = []

    def predict(self, x):
        return (x[:, 0] > -self.d).astype(np.int64)


class Recording(Threshold):
    def predict(self, x):
        self.rows.append(np.array(x))
        return super().predict(x)


class ThreeWay(HostClassifier):
    """Classes 0, 1, 2 with probabilities 0.4, 0.3, 0.3 at x = 0 (bins of the first value): g must abstain."""

    def __init__(self, sigma):
        self.cuts = sigma * norm.ppf([0.4, 0.7])
        self.num_classes, self.input_shape, self.input_dtype = 3, (4,), np.dtype(np.float32)

    def predict(self, x):
        return np.searchsorted(self.cuts, x[:, 0]).astype(np.int64)


class Constant(HostClassifier):
    def __init__(self, c, k=10):
        self.c, self.num_classes, self.input_shape, self.input_dtype = c, k, (4,), np.dtype(np.float32)

    def predict(self, x):
        return np.full(len(x), self.c, dtype=np.int64)


def _smoothed(clf, sigma, seed=0):
    return SmoothedClassifier(clf, sigma=sigma, seed=seed, batch_size=100_000, noise_threads=0)


def _false_rate(certs, d):
    """Certificates claiming more than the truth: class 0 certified at all, or class 1 beyond radius d."""
    return np.mean([(c.predict == 0) or (c.predict == 1 and c.radius > d) for c in certs])


# ------------------------------------------------------------------------------------------ soundness


@pytest.mark.parametrize(
    "d,kwargs",
    [
        (0.49, dict(radii=(0.25, 0.5))),  # just below a requested radius: certifying 0.5 is false
        (0.51, dict(radii=(0.25, 0.5, 0.75))),  # just above: certifying 0.75 is false
        (0.49, dict(radii=(0.25, 0.5), calibrate=False)),  # union bound over the looks, continuous radius
        (0.51, dict(radii=(0.25, 0.5, 0.75), calibrate=False)),  # ... a continuous radius beyond 0.51 is false
        (0.30, dict(eps=0.02, futility_beta=0.0)),  # precision mode, safe futility only: every look is made
    ],
)
def test_false_certification_rate_stays_below_alpha(d, kwargs):
    """2,000 independent sequential certificates of a point whose true radius is d."""
    sigma, alpha, trials = 0.5, 0.1, 2000
    sc = _smoothed(Threshold(d), sigma, seed=7)
    certs = sequential_certify_many(
        sc, [np.zeros(4, np.float32)] * trials, None, n0=10, n_max=2000, alpha=alpha, looks=6, n_first=60, **kwargs
    )
    rate = _false_rate(certs, d)
    assert rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials), rate
    assert np.mean([c.predict == 1 and c.radius > 0.45 * d for c in certs]) > 0.5  # not vacuous
    if kwargs.get("futility_beta") != 0.0:
        assert np.mean([c.n for c in certs]) < 2000


def test_spending_alpha_at_every_look_would_be_caught():
    """The same test has teeth: alpha at each of 6 looks (6 alpha in all) exceeds alpha clearly."""
    sigma, alpha, trials, d = 0.5, 0.1, 2000, 0.3
    sched = geometric_schedule(2000, alpha, looks=6, n_first=60)
    naive = Schedule(sched.sizes, (alpha,) * len(sched.sizes))
    sc = _smoothed(Threshold(d), sigma, seed=8)
    certs = sequential_certify_many(
        sc, [np.zeros(4, np.float32)] * trials, None, 10, 2000, naive.alpha, eps=0.02, schedule=naive, futility_beta=0.0
    )
    assert _false_rate(certs, d) > alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


def _binomial_run(plan, p, trials, seed):
    """run_looks on counts of A drawn per (trial, stage) up front, so that stopping never shifts the draws."""
    sizes = np.asarray(plan.schedule.sizes)
    draws = np.random.default_rng(seed).binomial(np.diff(sizes, prepend=0), p, (trials, len(sizes)))
    return run_looks(plan, lambda j, idx: draws[idx, j], np.arange(trials), trials)


@pytest.mark.parametrize("r_true", [0.24, 0.49, 0.74])
def test_many_binomial_trials_at_the_threshold(r_true):
    """100,000 trials of the looks alone (pA = Phi(r_true / sigma) just below a requested radius)."""
    sigma, alpha, trials = 0.25, 0.05, 100_000
    plan = make_plan(geometric_schedule(20_000, alpha, looks=8), sigma, (0.25, 0.5, 0.75, 1.0))
    out = _binomial_run(plan, norm.cdf(r_true / sigma), trials, seed=int(r_true * 100))
    decided = np.array(plan.radii)[np.maximum(out.certified - 1, 0)] * (out.certified > 0)
    assert np.mean(decided > r_true) <= alpha + 3 * np.sqrt(alpha / trials)
    sched = plan.schedule
    lower = stats.cp_lower(out.best_n_a, np.take(sched.sizes, out.best_look), np.take(sched.alphas, out.best_look))
    assert np.mean(lower > norm.cdf(r_true / sigma)) <= alpha + 3 * np.sqrt(alpha / trials)


def test_safe_futility_never_changes_the_answer():
    """With fail-fast off, stopping only when no later look could certify gives the full run's decisions."""
    sigma = 0.25
    plan = make_plan(geometric_schedule(20_000, 0.01, looks=6), sigma, (0.25, 0.5, 0.75), futility_beta=0.0)
    full = dataclasses.replace(plan, slack=np.full_like(plan.slack, 10**9))  # never stop before n_max
    full = dataclasses.replace(full, slack=np.where(np.arange(6)[:, None] == 5, -1, full.slack))
    for p in (0.8, 0.85, 0.97, 0.978, 0.9985, 0.99875):
        early, late = _binomial_run(plan, p, 3000, 1), _binomial_run(full, p, 3000, 1)
        assert np.array_equal(early.certified, late.certified)
        assert np.all(early.n <= late.n)


# ------------------------------------------------------------------------------------------ behaviour


def test_one_look_is_exactly_cohens_certify():
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=4).astype(np.float32) * 0.3 for _ in range(5)]
    sc = _smoothed(Threshold(0.1), 0.3, seed=11)
    cohen = sc.certify_many(xs, 50, 3000, 0.01, examples=[4, 5, 6, 7, 8])
    seq = sequential_certify_many(
        sc, xs, [4, 5, 6, 7, 8], 50, 3000, 0.01, (0.1,), schedule=Schedule((3000,), (0.01,)), calibrate=False
    )
    for c, s in zip(cohen, seq):
        assert (c.predict, c.n_a, c.n, c.p_a_lower, c.radius) == (s.predict, s.n_a, s.n, s.p_a_lower, s.radius)
    # calibrated, one look: the exact binomial test at Phi(r / sigma) is Clopper-Pearson's, same decisions
    cal = sequential_certify_many(sc, xs, [4, 5, 6, 7, 8], 50, 3000, 0.01, (0.1,), schedule=Schedule((3000,), (0.01,)))
    assert [(c.predict, c.radius >= 0.1) for c in cohen] == [(s.predict, s.radius >= 0.1) for s in cal]
    assert sum(c.radius >= 0.1 for c in cohen) >= 1


def test_each_stage_draws_fresh_noise():
    clf = Recording(0.2)
    sequential_certify_many(
        _smoothed(clf, 0.5),
        [np.zeros(4, np.float32)],
        None,
        20,
        4000,
        0.01,
        eps=1e-3,  # precision mode, safe futility only: every look is made
        looks=4,
        n_first=200,
        futility_beta=0.0,
        adaptive_selection=False,
    )
    rows = np.concatenate(clf.rows)
    assert len(rows) == 20 + 4000 and len(np.unique(rows, axis=0)) == len(rows)


def test_a_clear_example_stops_once_every_reachable_radius_is_certified():
    """A constant model: 8 selection samples (clearly ahead), then the first look whose cutoff for 0.75 is met."""
    sc = _smoothed(Constant(3), 0.25)
    sched = geometric_schedule(100_000, 0.001, final_share=0.83)
    plan = make_plan(sched, 0.25, (0.25, 0.5, 0.75, 1.0), calibrate=True)
    assert len(sched.sizes) == 100 and sched.sizes[0] == 10  # the defaults: 100 looks from 10
    top = stats.cohen_radius(stats.clopper_pearson_lower(100_000, 100_000, 0.001), 0.25)  # 0.848: 1.0 is beyond
    assert plan.reachable() == (0.0, 0.25, 0.5, 0.75) and top < 1.0
    (c,) = sequential_certify_many(sc, [np.zeros(4, np.float32)], None, 100, 100_000, 0.001, (0.25, 0.5, 0.75, 1.0))
    assert c.predict == 3 and c.stopped == "futile" and c.decided_radii == (0.25, 0.5, 0.75)  # 1.0 out of reach
    need = next(n for n, k in zip(sched.sizes, plan.k_cert[:, 3]) if k <= n)  # all A: the first look that certifies
    assert c.n == need and c.n_a == c.n and c.decided_radius == 0.75 == c.radius and c.n0 == 8
    assert c.samples == 8 + need < 100 + 11_659  # Cohen: 100,100; issue 17 design: 100 + 11,659
    # the union-bound design (calibrate=False) keeps its continuous radius from the best look's bound
    (u,) = sequential_certify_many(
        sc, [np.zeros(4, np.float32)], None, 100, 100_000, 0.001, (0.25, 0.5, 0.75, 1.0), calibrate=False
    )
    j = u.look - 1
    assert u.p_a_lower == stats.clopper_pearson_lower(u.n, u.n, sched.alphas[j]) and 0.75 <= u.radius < 1.0


def test_an_unclear_example_abstains_after_a_few_looks():
    """pA = 0.4 for r = 0.25 (threshold 0.69): the selection never sees a clear leader (all n0 = 100 drawn),
    the betting boundary against 0.69 gives up within tens of samples."""
    sc = _smoothed(ThreeWay(0.5), 0.5)
    (c,) = sequential_certify_many(sc, [np.zeros(4, np.float32)], None, 100, 100_000, 0.001, (0.25,))
    assert c.predict == ABSTAIN and c.radius == 0.0 and c.stopped == "fail-fast" and c.n < 200 and c.n0 == 100


@pytest.mark.parametrize("d", [0.1, 0.4, 1.0])
def test_precision_mode_stops_when_the_radius_is_within_eps_of_what_n_max_could_certify(d):
    sigma, eps, beta, alpha, n_max = 0.5, 0.1, 0.01, 0.001, 50_000
    sched = geometric_schedule(n_max, alpha, final_share=0.83)
    certs = sequential_certify_many(
        _smoothed(Threshold(d), sigma),
        [np.zeros(4, np.float32)] * 20,
        None,
        100,
        n_max,
        alpha,
        eps=eps,
        futility_beta=beta,
    )
    for c in certs:
        if c.guess == 0:  # the selection picked the minority class: g abstains
            assert c.predict == ABSTAIN and c.stopped == "fail-fast"
            continue
        assert c.predict == 1 and c.radius <= d and c.decided_radii == ()
        look = sched.sizes.index(c.n)
        if c.stopped == "futile":  # even if every remaining sample were A, no later look gains eps
            best = max(
                stats.clopper_pearson_lower(c.n_a + m - c.n, m, a)
                for m, a in zip(sched.sizes[look + 1 :], sched.alphas[look + 1 :])
            )
            assert stats.cohen_radius(best, sigma) <= c.radius + eps + 1e-9
        elif c.stopped == "precision":  # n_max samples at the (1 - beta / L) upper bound certify <= radius + eps
            upper = stats.clopper_pearson_upper(c.n_a, c.n, beta / len(sched.sizes))
            k = min(n_max, int(np.ceil(upper * n_max)))
            budget = stats.cohen_radius(stats.clopper_pearson_lower(k, n_max, sched.alphas[-1]), sigma)
            assert budget <= c.radius + eps + 1e-9
        else:
            assert c.stopped == "n_max"
        assert c.radius >= min(d, 1.7) - 0.2  # not vacuous (1.7: about what 50,000 samples certify at pA = 1)
    mean = np.mean([c.n for c in certs])
    assert mean < (40_000 if d == 1.0 else 6_000), mean  # issue 28: ~100,000 at every pA before


def test_certificate_has_the_certify_columns():
    names = {f.name for f in dataclasses.fields(Certificate)}
    assert names <= {f.name for f in dataclasses.fields(SequentialCertificate)}
    (c,) = sequential_certify_many(
        _smoothed(Threshold(0.3), 0.25), [np.zeros(4, np.float32)], [9], 50, 10_000, 0.01, (0.25,)
    )
    assert c.predict == 1 and c.p_b_upper >= 1 - c.p_a_lower and c.radius_tv <= c.radius_2class <= c.radius
    assert c.counts.sum() == c.n and c.n_max == 10_000


# ------------------------------------------------------------------------------------------ the plan, once


def _counting(monkeypatch, name):
    """Count the calls of stats.<name> (make_plan's tables are built from cp_lower and cp_upper)."""
    calls = [0]
    real = getattr(stats, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(stats, name, counted)
    return calls


def test_the_plan_is_computed_once_per_distinct_arguments(monkeypatch):
    calls = _counting(monkeypatch, "cp_lower")
    sched = geometric_schedule(50_000, 0.001, looks=16, final_share=0.9)
    first = make_plan(sched, 0.2371, [0.5, 0.25], 0.01, calibrate=True)  # arguments no other test uses
    made = calls[0]
    assert made > 0
    # the same arguments, spelled differently (a list, another order, 0 given, numpy floats): the same plan
    again = make_plan(sched, np.float64(0.2371), (np.float64(0.5), 0.25, 0.5), 0.01, None, "gaussian", True)
    assert again is first and calls[0] == made
    assert make_plan(sched, 0.2371, (0.25, 0.5), 0.02, calibrate=True) is not first  # another beta: replanned
    assert calls[0] > made
    uncached = dataclasses.replace(first)  # a fresh Plan from the cached one's fields: the same tables
    for name in ("k_cert", "slack", "k_fail"):
        np.testing.assert_array_equal(getattr(uncached, name), getattr(first, name))


def test_a_run_of_several_groups_plans_once(monkeypatch):
    """sequential_certify_many plans for every group; only the first call computes (_first_true is called by
    make_plan's tables alone)."""
    from rs_onnx import sequential as sq

    calls = [0]
    real = sq._first_true

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sq, "_first_true", counted)
    sc = _smoothed(Threshold(0.3), 0.2372)  # a sigma no other test uses
    args = ([np.zeros(4, np.float32)] * 2, None, 20, 3000, 0.01, [0.25, 0.5])
    a = sequential_certify_many(sc, *args)
    made = calls[0]
    assert made > 0
    b = sequential_certify_many(sc, *args)
    assert calls[0] == made and a == b


def test_a_cached_plan_cannot_be_changed_by_a_caller():
    plan = make_plan(geometric_schedule(20_000, 0.01, looks=6), 0.25, (0.25, 0.5))
    for name in ("k_cert", "slack", "k_fail"):
        table = getattr(plan, name)
        assert not table.flags.writeable
        with pytest.raises(ValueError):
            table[0, 0] = 7
        with pytest.raises(ValueError):
            table.flags.writeable = True  # backed by immutable bytes: the flag cannot be set back
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.sigma = 0.5  # type: ignore[misc]
    assert isinstance(plan.radii, tuple) and isinstance(plan.schedule.sizes, tuple)
    # a table handed to a Plan is copied, so the caller's own array stays writable and cannot reach the plan
    own = np.full_like(plan.slack, 10**9)
    full = dataclasses.replace(plan, slack=own)
    own[0, 0] = 0
    assert full.slack[0, 0] == 10**9 and not full.slack.flags.writeable


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(radii=(0.25,), eps=0.1),
        dict(),
        dict(radii=(-1.0,)),
        dict(radii=(0.25,), schedule=Schedule((10, 100), (0.01, 0.01))),
        dict(eps=0.0),
        dict(radii=(0.25,), futility_beta=1.0),
        dict(radii=(0.25,), n0=0),
    ],
)
def test_argument_checks(kwargs):
    args = dict(n0=10, n_max=100, alpha=0.01) | kwargs
    with pytest.raises(ConfigError):
        sequential_certify_many(_smoothed(Constant(0), 0.25), [np.zeros(4, np.float32)], None, **args)


@pytest.mark.parametrize("sizes,alphas", [((), ()), ((10, 10), (0.1, 0.1)), ((0, 10), (0.1, 0.1)), ((10,), (0.0,))])
def test_schedule_checks(sizes, alphas):
    with pytest.raises(ConfigError):
        Schedule(sizes, alphas)


def test_onnx_linear_oracle(tmp_path):
    """End to end on a linear two-class ONNX model (tests/onnx_models.py): radius never beyond the boundary."""
    from rs_onnx.classifier import OnnxClassifier
    from tests.onnx_models import linear_model, save

    w = np.random.default_rng(0).normal(size=20).astype(np.float32)
    w /= np.linalg.norm(w)
    clf = OnnxClassifier(save(linear_model(w, 0.0, input_shape=(1, 4, 5)), tmp_path / "lin.onnx"), device="cpu")
    sigma, alpha, distance, trials = 0.5, 0.05, 0.2, 400
    x = (w * distance).reshape(1, 4, 5).astype(np.float32)
    sc = SmoothedClassifier(clf, sigma=sigma, seed=5, batch_size=50_000, noise_threads=0)
    certs = sequential_certify_many(sc, [x] * trials, None, 20, 4000, alpha, (0.1, 0.2, 0.3), looks=5, n_first=250)
    assert _false_rate(certs, distance) <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)
    assert np.mean([c.decided_radius == 0.1 for c in certs]) > 0.5 and np.mean([c.n for c in certs]) < 4000


# ------------------------------------------------------------------------------------------ boundaries


def test_geometric_schedule_sizes_and_levels():
    """L looks from n_first (default 10, at most n_max) to n_max; levels rounded down; equal sizes merged."""
    assert geometric_schedule(2000, 0.1).sizes[0] == 10
    assert geometric_schedule(10**6, 0.1, looks=3).sizes == (10, 3162, 10**6)
    assert geometric_schedule(5, 0.1).sizes == (5,)  # at most n_max: one look
    assert geometric_schedule(50, 0.1).sizes == tuple(range(10, 51))  # 100 points from 10 to 50: 41 distinct
    assert geometric_schedule(1, 0.1).sizes == (1,)  # n_max = 1 is a (tiny) valid run
    assert geometric_schedule(1000, 0.1, looks=4, n_first=1).sizes == (1, 10, 100, 1000)
    assert geometric_schedule(1000, 0.1, looks=4, n_first=1000).sizes == (1000,)
    # one look is Cohen's CERTIFY at n_max with the whole level (not n_first and n_max at alpha / 2 each)
    one = geometric_schedule(1000, 0.1, looks=1, n_first=10)
    assert one.sizes == (1000,) and one.alphas == (float(np.nextafter(0.1, 0.0)),)
    assert geometric_schedule(1000, 0.1, looks=2).sizes == (10, 1000)
    s = geometric_schedule(1000, 0.1, looks=4, n_first=10, final_share=0.7)
    assert s.sizes == (10, 46, 215, 1000)
    assert s.alphas == pytest.approx([0.01, 0.01, 0.01, 0.07], rel=1e-12) and s.alpha <= 0.1
    even = geometric_schedule(1000, 0.1, looks=4, n_first=10, final_share=None)
    assert even.alphas == pytest.approx([0.025] * 4, rel=1e-12) and even.alpha <= 0.1


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(final_share=0.0), "final_share"),  # nothing left for the last look
        (dict(final_share=1.0), "final_share"),  # nothing left for the early looks
        (dict(final_share=1.0, looks=1), "final_share"),
        (dict(final_share=-0.5), "final_share"),
        (dict(n_max=0), "n_max"),
        (dict(looks=0), "looks"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=1.0), "alpha"),
        (dict(n_first=0), "n_first"),
        (dict(n_first=1001), "n_first"),
    ],
)
def test_geometric_schedule_refuses_the_open_ends(kwargs, name):
    args = dict(n_max=1000, alpha=0.1, looks=4) | kwargs
    with pytest.raises(ConfigError, match=name):
        geometric_schedule(**args)


def test_radius_zero_may_be_requested():
    """Radius 0 (predict or abstain) is always decided; asking for it explicitly changes nothing."""
    sched = geometric_schedule(5000, 0.01, looks=4)
    plan = make_plan(sched, 0.25, (0.0, 0.25, 0.25), calibrate=True)
    ref = make_plan(sched, 0.25, (0.25,), calibrate=True)
    assert plan.radii == ref.radii == (0.0, 0.25)
    for table in ("k_cert", "slack", "k_fail"):
        assert np.array_equal(getattr(plan, table), getattr(ref, table)), table
    for bad in (-1e-9, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            make_plan(sched, 0.25, (bad,))


def test_counts_widen_when_more_classes_appear():
    """_Growable: class counts keep their columns and the no-class column stays last when counts widen."""
    from rs_onnx.sequential import _Growable

    g = _Growable(np.array([[1, 2, 5], [3, 4, 6]], np.int64))  # K = 2: classes 0, 1, then no-class
    g.add(np.array([1]), np.array([[10, 20, 30, 40, 7]], np.int64))  # K = 4
    assert g.array.tolist() == [[1, 2, 0, 0, 5], [13, 24, 30, 40, 13]]
    g.add(np.array([0]), np.array([[1, 1, 1]], np.int64))  # narrower counts land in their own columns
    assert g.array.tolist() == [[2, 3, 0, 0, 6], [13, 24, 30, 40, 13]]


def test_no_class_in_the_selection_samples_nothing_more():
    """Every selection output non-finite: no guess (not class 0), no estimation sample drawn, abstain."""
    clf = Recording(0.0)
    clf.predict = lambda x: (clf.rows.append(np.array(x)), np.full(len(x), -1, np.int64))[1]
    certs = sequential_certify_many(_smoothed(clf, 0.25), [np.zeros(4, np.float32)] * 2, None, 30, 1000, 0.01, (0.25,))
    for c in certs:
        assert (c.guess, c.predict, c.stopped, c.n, c.looks, c.radius) == (ABSTAIN, ABSTAIN, "no-class", 0, 0, 0.0)
        assert c.nonfinite == 30 and c.decided_radii == () and c.p_a_lower == 0.0
    assert sum(len(r) for r in clf.rows) == 2 * 30  # the selection only


# ------------------------------------------------------------------------------------------ exact helpers


def _crossing_error_brute_force(sizes, early, t):
    """P(S_j >= early[j] for some earlier look, or S_L >= c) for every c in 0..N_L + 1, by enumerating every
    0/1 sequence of length N_L (weights t^ones (1 - t)^zeros): independent of the dynamic programme."""
    n = sizes[-1]
    bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
    cum = np.cumsum(bits, axis=1)
    weight = t ** cum[:, -1] * (1 - t) ** (n - cum[:, -1])
    early_cross = np.zeros(len(bits), bool)
    for n_j, c_j in zip(sizes[:-1], early):
        early_cross |= cum[:, n_j - 1] >= c_j
    return np.array([weight[early_cross | (cum[:, -1] >= c)].sum() for c in range(n + 2)])


@pytest.mark.parametrize(
    "sizes,early,t,alpha",
    [
        ((4, 8, 12), (4, 7), 0.5, 0.2),
        ((4, 8, 12), (4, 7), 0.7, 0.4),
        ((4, 8, 12), (5, 9), 0.3, 0.05),  # early cutoffs beyond N_j: those looks never certify
        ((3, 7, 12), (3, 5), 0.8, 0.45),
        ((12,), (), 0.6, 0.1),  # one look: the exact binomial test
        ((4, 8, 12), (1, 2), 0.5, 0.2),  # the early looks alone already exceed alpha: no cutoff works
    ],
)
def test_calibrated_cutoff_against_enumeration(sizes, early, t, alpha):
    from rs_onnx.sequential import calibrated_cutoff

    error = _crossing_error_brute_force(sizes, early, t)
    goal = alpha * (1 - 1e-9)
    ok = np.flatnonzero(error <= goal)
    expected = int(ok[0]) if ok.size else sizes[-1] + 1
    assert calibrated_cutoff(sizes, early, t, alpha) == expected
    if expected <= sizes[-1]:  # the smallest that holds: one count less misses the level
        assert error[expected] <= goal and (expected == 0 or error[expected - 1] > goal)


def test_calibrated_cutoff_on_long_looks_against_a_plain_dynamic_programme():
    """Sizes where the binomial tails are truncated (below 1e-22): same cutoff as an untruncated DP."""
    from scipy.stats import binom

    from rs_onnx.sequential import calibrated_cutoff

    sizes, early, t, alpha = (400, 1000, 3000), (300, 720), 0.66, 0.02
    dist, prev, crossed = np.array([1.0]), 0, 0.0
    for n_j, c_j in zip(sizes[:-1], early):
        dist = np.convolve(dist, binom.pmf(np.arange(n_j - prev + 1), n_j - prev, t))
        prev = n_j
        crossed += dist[c_j:].sum()
        dist = dist[:c_j]
    last = np.convolve(dist, binom.pmf(np.arange(sizes[-1] - prev + 1), sizes[-1] - prev, t))
    error = crossed + np.concatenate([np.cumsum(last[::-1])[::-1], [0.0]])  # error[c] = crossed + P(S_L >= c)
    expected = int(np.flatnonzero(error <= alpha * (1 - 1e-9))[0])
    assert 0 < expected < sizes[-1] and error[expected - 1] - alpha > 1e-6 * alpha  # no float coin-toss
    assert calibrated_cutoff(sizes, early, t, alpha) == expected


@pytest.mark.parametrize("noise_kind", ["gaussian", "uniform", "laplace"])
def test_threshold_inverts_the_native_radius(noise_kind):
    from rs_onnx.sequential import _radius, _threshold, calibration_threshold

    sigma, r = 0.5, np.array([0.05, 0.1, 0.2, 0.4])  # uniform: r < sigma (r = sigma needs pA = 1)
    t = _threshold(r, sigma, noise_kind)
    assert np.all((0.5 < t) & (t < 1.0))
    assert _radius(t, sigma, noise_kind) == pytest.approx(r, rel=1e-9)
    for ri, ti in zip(r, t):
        c = calibration_threshold(float(ri), sigma, noise_kind)
        assert ti < c <= ti * (1 + 1e-11) + 1e-11  # nudged up, by about 1e-12
    assert calibration_threshold(0.0, sigma, noise_kind) == 0.5


def test_first_true_finds_the_smallest_count():
    from rs_onnx.sequential import _first_true

    n = np.array([0, 1, 2, 3, 10, 10])
    need = np.array([0, 1, 3, 3, 4, 11])  # pred(k): k >= need; none in [0, n] gives n + 1
    assert _first_true(lambda k: k >= need, n).tolist() == [0, 1, 3, 3, 4, 11]


def test_schedule_level_one_is_refused():
    with pytest.raises(ConfigError):
        Schedule((10,), (1.0,))


def test_nonfinite_counts_selection_and_estimation_samples():
    """``nonfinite`` adds the no-class samples of the selection and of every estimation stage."""

    class HalfNaN(Recording):
        def predict(self, x):
            self.rows.append(np.array(x))
            return np.where(x[:, 0] > 0, 1, -1).astype(np.int64)

    clf = HalfNaN(0.0)
    (c,) = sequential_certify_many(
        _smoothed(clf, 0.5), [np.zeros(4, np.float32)], None, 50, 2000, 0.01, (0.25,), looks=3, futility_beta=0.0
    )
    rows = np.concatenate(clf.rows)
    assert c.guess == 1 and len(rows) == c.n0 + c.n and 8 <= c.n0 <= 50
    est = rows[c.n0 :]
    assert c.counts[-1] == int((est[:, 0] <= 0).sum()) and c.counts[1] == c.n_a == int((est[:, 0] > 0).sum())
    assert c.nonfinite == int((rows[:, 0] <= 0).sum()) > c.counts[-1] > 0  # selection no-class samples too


def test_a_radius_that_needs_every_sample_to_be_a_is_reachable():
    """reachable() counts a radius certified only when all N_j samples are A (k_cert == N_j)."""
    sched = Schedule((100,), (0.01,))
    top = stats.cohen_radius(stats.clopper_pearson_lower(100, 100, 0.01), 0.25)  # 100 of 100, the largest
    plan = make_plan(sched, 0.25, (top * (1 - 1e-6), top * (1 + 1e-6)))
    assert plan.k_cert[0].tolist() == [plan.k_cert[0, 0], 100, 101]
    assert plan.reachable() == (0.0, top * (1 - 1e-6)) and plan.max_radius() == top


def _crossing_probability(sizes, cutoffs, t):
    """P(S_j >= cutoffs[j] for some look j), S_j ~ Bin(N_j, t) cumulative: a plain DP with untruncated pmfs."""
    from scipy.stats import binom

    dist, prev, total = np.array([1.0]), 0, 0.0
    for n_j, c_j in zip(sizes, cutoffs):
        dist = np.convolve(dist, binom.pmf(np.arange(n_j - prev + 1), n_j - prev, t))
        prev = n_j
        total += dist[c_j:].sum()
        dist = dist[:c_j]
    return float(total)


def test_a_calibrated_plan_certifies_each_radius_wrongly_with_probability_at_most_alpha():
    """At pA = the threshold of radius r, the chance that some look certifies r (the early looks' Clopper-Pearson
    cutoffs or the calibrated last one) is at most alpha, and the calibration spends most of it."""
    from rs_onnx.sequential import calibration_threshold

    alpha, sigma = 0.05, 0.25
    sched = geometric_schedule(2000, alpha, looks=5, n_first=100)
    plan = make_plan(sched, sigma, (0.1, 0.25, 0.5), calibrate=True)
    uncal = make_plan(sched, sigma, (0.1, 0.25, 0.5))
    for i, r in enumerate(plan.radii):
        t = calibration_threshold(r, sigma)
        error = _crossing_probability(sched.sizes, plan.k_cert[:, i], t)
        assert 0.5 * alpha < error <= alpha, (r, error)
        assert error > _crossing_probability(sched.sizes, uncal.k_cert[:, i], t)  # it gains over the union bound


def test_calibrated_cutoff_outside_zero_one_is_none():
    from rs_onnx.sequential import calibrated_cutoff

    for t in (0.0, 1.0):  # a threshold of 1 (a radius no pA < 1 reaches) is never certified
        assert calibrated_cutoff((10, 20), (11,), t, 0.1) == 21
    sched = geometric_schedule(1000, 0.01, looks=3)
    plan = make_plan(sched, 0.25, (0.25, 3.0), calibrate=True)  # Phi(3.0 / 0.25) = 1 - 2e-33 rounds to 1
    assert plan.k_cert[-1, -1] == 1001 and plan.reachable() == (0.0, 0.25)


def test_radius_zero_reachable_only_when_every_sample_is_a_is_still_sampled():
    """2 of 2 at alpha = 0.3 gives CP_lower = 0.548 >= 1/2 (1 of 2 does not): the look must still be made."""
    sched = Schedule((2,), (0.3,))
    assert make_plan(sched, 0.25).k_cert[0, 0] == 2
    (c,) = sequential_certify_many(
        _smoothed(Constant(3), 0.25), [np.zeros(4, np.float32)], None, 10, 2, 0.3, (), schedule=sched
    )
    assert (c.predict, c.n, c.n_a, c.stopped) == (3, 2, 2, "certified")


@pytest.mark.parametrize("early", ["betting", "cp"])
def test_every_calibrated_outcome_is_reproduced_from_its_recorded_counts(early):
    """What ``rs-onnx verify`` recomputes (certificate_from_row from n, nA, look, look_nA) is what the run
    reported, for 3,000 Bernoulli runs around the thresholds of six radii; the recorded look crosses the
    largest threshold certified, and is the last look whenever that one does too."""
    from rs_onnx.sequential import _certificate, certificate_from_row

    radii = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
    plan = make_plan(geometric_schedule(1000, 0.001, looks=8), 1.5, radii, calibrate=True, early=early)
    sizes, trials = np.asarray(plan.schedule.sizes), 3000
    p = norm.cdf(np.linspace(0.0, 0.6, trials) / 1.5)[:, None]
    draws = np.random.default_rng(7).binomial(np.diff(sizes, prepend=0)[None, :], p)
    out = run_looks(plan, lambda j, idx: draws[idx, j], np.arange(trials), trials)
    cum = np.cumsum(draws, axis=1)
    crossed = (cum[:, :, None] >= plan.k_cert[None]).sum(axis=2)  # [trials, looks]
    t = np.arange(trials)
    assert np.all(out.best_look >= 0)
    assert np.array_equal(crossed[t, out.best_look], out.certified)
    last_crosses = (out.certified > 0) & (crossed[t, out.looks - 1] == out.certified)
    assert np.all(out.best_look[last_crosses] == out.looks[last_crosses] - 1)
    neither = (out.certified > 0) & (crossed[t, out.looks - 1] < out.certified)
    assert neither.sum() > 0  # runs whose last look alone would not justify their radius
    for i in range(trials):
        run = _certificate(plan, out, i, 1, 0, np.zeros(2, np.int64), np.zeros(2, np.int64))
        row = certificate_from_row(
            plan, run.predict, run.n_a, run.n, run.look, run.look_n_a, 0, 0, 1
        )  # what verify recomputes
        assert (row.predict, row.radius, row.p_a_lower, row.alpha_p_a, row.look_n) == (
            run.predict,
            run.radius,
            run.p_a_lower,
            run.alpha_p_a,
            run.look_n,
        ), i
