"""Soundness through the engine, with assertions from exact binomial tails (no seed luck).

The model is a two-class linear classifier f(x) = 1[x_0 + x_1 > 0] evaluated at x = 0: under Gaussian
noise both classes have probability exactly 1/2 (the noise is symmetric and float negation is exact),
so any certificate that predicts a class (p_a_lower >= 1/2 with the true pA = 1/2), and any PREDICT
that does not abstain, is a false answer. Each trial is one example with its own noise streams, so the
number of false answers among T trials is a sum of independent Bernoullis whose success probability q
is computed here exactly, from scipy's binomial distribution, independently of rs_onnx's own bounds:

* CERTIFY (selection on n0 samples, estimation on n): q = P(Bin(n, 1/2) >= k*), k* the smallest count
  whose Clopper-Pearson lower bound reaches 1/2, i.e. P(Bin(n, 1/2) >= k*) <= alpha.
* PREDICT: q = P(two-sided binomial p-value <= alpha).
* sequential CERTIFY (futility_beta = 0, so an example stops early only when no later look could cross):
  q = P(some look j has S_j >= k*_j(N_j, alpha_j)), by dynamic programming over the looks.

Each test asserts count <= t with P(Bin(T, q) > t) <= FALSE_FAILURE (1e-7): the chance that a correct
engine fails one (test, seed) pair is at most 1e-7. Each test also checks, before sampling, that its
planted bug (the guess taken from the estimation counts; PREDICT at 2 alpha; sequential look levels
inflated 1.5x) would push the count above t except with probability <= MISSED (1e-6): the tests can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from rs_onnx.classifier import OnnxClassifier
from rs_onnx.sequential import Schedule, geometric_schedule, sequential_certify_many
from rs_onnx.smoothing import ABSTAIN, SmoothedClassifier
from tests.onnx_models import linear_model, save

FALSE_FAILURE = 1e-7  # per test and seed: P(a sound engine fails the assertion)
MISSED = 1e-6  # per test and seed: P(the planted bug passes the assertion), checked exactly below
SEEDS = [0, 1, 2]


def k_star(n: int, alpha: float) -> int:
    """Smallest count k of n whose one-sided Clopper-Pearson lower bound at level alpha is >= 1/2.

    By the beta-binomial duality CP_lower(k) >= 1/2 iff P(Bin(n, 1/2) >= k) <= alpha; n + 1 when none.
    """
    ks = np.arange(n + 2)
    return int(ks[binom.sf(ks - 1, n, 0.5) <= alpha][0])


def q_certify(n: int, alpha: float) -> float:
    """P(CERTIFY predicts) at a tie: the guess is fixed before its n estimation counts ~ Bin(n, 1/2)."""
    return float(binom.sf(k_star(n, alpha) - 1, n, 0.5))


def q_predict(n: int, alpha: float) -> float:
    """P(PREDICT does not abstain) at a tie: P(two-sided binomial p-value of the top count <= alpha)."""
    k = np.arange(n + 1)
    pvalue = np.minimum(1.0, 2.0 * binom.sf(np.maximum(k, n - k) - 1, n, 0.5))
    return float(binom.pmf(k, n, 0.5)[pvalue <= alpha].sum())


def q_sequential(sizes, alphas) -> float:
    """P(some look j has S_j >= k*(N_j, alpha_j)), S_j ~ Bin(N_j, 1/2) cumulative: DP over the looks."""
    dist, prev, total = np.array([1.0]), 0, 0.0
    for size, a in zip(sizes, alphas):
        dist = np.convolve(dist, binom.pmf(np.arange(size - prev + 1), size - prev, 0.5))
        prev = size
        k = k_star(size, a)
        total += dist[k:].sum()
        dist[k:] = 0.0  # paths that crossed stop here
    return float(total)


def threshold(trials: int, q: float, q_bug: float) -> int:
    """t with P(Bin(T, q) > t) <= FALSE_FAILURE; asserts P(Bin(T, q_bug) <= t) <= MISSED (the power)."""
    t = int(binom.isf(FALSE_FAILURE, trials, q))
    assert binom.sf(t, trials, q) <= FALSE_FAILURE
    assert binom.cdf(t, trials, q_bug) <= MISSED, f"too few trials to catch the planted bug ({q} vs {q_bug})"
    return t


@pytest.fixture(scope="module")
def tie(tmp_path_factory):
    """A classifier whose two classes each have probability exactly 1/2 under noise at x = 0."""
    path = save(linear_model(np.ones(2, np.float32), 0.0, input_shape=(2,)), tmp_path_factory.mktemp("m") / "tie.onnx")
    return OnnxClassifier(path, device="cpu"), np.zeros(2, np.float32)


@pytest.mark.parametrize("seed", SEEDS)
def test_certify_guess_comes_from_the_selection_samples(tie, seed):
    """Catches the guess chosen on the estimation counts: it doubles the false certificates (2q vs q).

    T = 2000 trials, n = 60, alpha = 0.2: q = 0.183; the assertion fails a sound engine with probability
    <= 1e-7 per seed and misses the bug with probability <= 1e-6 (in fact ~1e-39).
    """
    clf, x = tie
    trials, n, alpha = 2000, 60, 0.2
    q = q_certify(n, alpha)
    t = threshold(trials, q, min(1.0, 2 * q))
    certs = SmoothedClassifier(clf, sigma=0.5, seed=seed, batch_size=20_000).certify_many(
        [x] * trials, n0=1, n=n, alpha=alpha
    )
    false = sum(c.predict != ABSTAIN for c in certs)
    assert false <= t, f"{false} of {trials} certificates at a tie predict a class; a sound engine: <= {t}"
    # The two-class and TV radii each hold at level alpha on their own: a positive one at a tie is false.
    t_alpha = int(binom.isf(FALSE_FAILURE, trials, alpha))
    for name in ("radius_2class", "radius_tv"):
        assert sum(getattr(c, name) > 0 for c in certs) <= t_alpha, name
    assert false >= binom.ppf(FALSE_FAILURE, trials, q)  # not vacuous: the engine does certify at its level


@pytest.mark.parametrize("seed", SEEDS)
def test_certify_best_bound_is_sound_at_a_tie(tie, seed):
    """``bound="best"`` splits alpha: with two classes pB_upper = 1 - pA_lower (Clopper-Pearson symmetry),
    so it predicts iff CP_lower(n_A, alpha/2) > 1/2, i.e. with probability q(alpha/2) = 0.078 at a tie;
    spending the whole alpha (or 2 alpha) on it would give q(alpha) = 0.183.

    T = 2000, n = 60, alpha = 0.2; false failure <= 1e-7 per seed, missed bug <= 1e-6.
    """
    clf, x = tie
    trials, n, alpha = 2000, 60, 0.2
    t = threshold(trials, q_certify(n, alpha / 2), q_certify(n, alpha))
    certs = SmoothedClassifier(clf, sigma=0.5, seed=seed, batch_size=20_000).certify_many(
        [x] * trials, n0=1, n=n, alpha=alpha, bound="best"
    )
    false = sum(c.predict != ABSTAIN for c in certs)
    assert false <= t, f"{false} of {trials} best-bound certificates at a tie predict; a sound engine: <= {t}"


@pytest.mark.parametrize("seed", SEEDS)
def test_predict_tests_at_level_alpha(tie, seed):
    """Catches PREDICT testing at 2 alpha: at a tie it answers with probability q(2 alpha) = 0.366, not 0.155.

    T = 2000 trials, n = 60, alpha = 0.2; false failure <= 1e-7 per seed, missed bug <= 1e-6.
    """
    clf, x = tie
    trials, n, alpha = 2000, 60, 0.2
    q = q_predict(n, alpha)
    t = threshold(trials, q, q_predict(n, 2 * alpha))
    preds = SmoothedClassifier(clf, sigma=0.5, seed=seed, batch_size=20_000).predict_many(
        [x] * trials, n=n, alpha=alpha
    )
    answered = sum(p.predict != ABSTAIN for p in preds)
    assert answered <= t, f"PREDICT answered {answered} of {trials} times at a tie; a sound engine: <= {t}"
    assert answered >= binom.ppf(FALSE_FAILURE, trials, q)  # not vacuous


def _sequential_false(clf, x, seed, trials, schedule: Schedule, alpha: float) -> int:
    sc = SmoothedClassifier(clf, sigma=0.5, seed=seed, batch_size=20_000)
    certs = sequential_certify_many(
        sc,
        [x] * trials,
        None,
        1,
        schedule.n_max,
        alpha,
        radii=[],
        schedule=schedule,
        futility_beta=0.0,
        calibrate=False,
    )  # union-bound design
    return sum(c.predict != ABSTAIN for c in certs)


@pytest.mark.parametrize("seed", SEEDS)
def test_sequential_looks_spend_their_level(tie, seed):
    """Catches sequential look levels inflated 1.5x: q = 0.219 (DP over 6 looks) becomes 0.351.

    Geometric schedule n_max = 100, 6 looks from 10, alpha = 0.45; T = 2000; false failure <= 1e-7 per
    seed, missed bug <= 1e-6.
    """
    clf, x = tie
    trials, alpha = 2000, 0.45
    schedule = geometric_schedule(100, alpha, looks=6, n_first=10)
    assert schedule.alpha <= alpha
    q = q_sequential(schedule.sizes, schedule.alphas)
    t = threshold(trials, q, q_sequential(schedule.sizes, [1.5 * a for a in schedule.alphas]))
    false = _sequential_false(clf, x, seed, trials, schedule, alpha)
    assert false <= t, f"{false} of {trials} sequential certificates at a tie predict; a sound engine: <= {t}"
    assert false >= binom.ppf(FALSE_FAILURE, trials, q)  # not vacuous


@pytest.mark.parametrize("seed", SEEDS)
def test_sequential_explicit_schedule_spends_its_levels(tie, seed):
    """An explicit schedule (levels chosen here, summing to alpha): q = 0.149 (DP), 0.263 with levels x1.5.

    T = 2000; false failure <= 1e-7 per seed, missed bug <= 1e-6 (the sizes avoid discreteness plateaus).
    """
    clf, x = tie
    trials, alpha = 2000, 0.4
    schedule = Schedule((11, 23, 47, 95), (0.1, 0.1, 0.1, 0.1))
    q = q_sequential(schedule.sizes, schedule.alphas)
    t = threshold(trials, q, q_sequential(schedule.sizes, [1.5 * a for a in schedule.alphas]))
    assert _sequential_false(clf, x, seed, trials, schedule, alpha) <= t


def test_exact_tail_helpers_against_brute_force():
    """The helpers above, checked by enumeration of small cases (so the thresholds mean what they say)."""
    from itertools import product

    from scipy.stats import beta

    n, a = 9, 0.1
    k = k_star(n, a)
    assert beta.ppf(a, k, n - k + 1) >= 0.5 > beta.ppf(a, k - 1, n - k + 2)
    sizes, alphas = (3, 6, 9), (0.2, 0.2, 0.2)
    ks = [k_star(s, a) for s, a in zip(sizes, alphas)]
    hit = sum(any(sum(bits[:s]) >= kk for s, kk in zip(sizes, ks)) for bits in product((0, 1), repeat=9))
    assert q_sequential(sizes, alphas) == pytest.approx(hit / 2**9, rel=1e-12)
    pv = [min(1.0, 2 * binom.sf(max(i, n - i) - 1, n, 0.5)) for i in range(n + 1)]
    assert q_predict(n, 0.2) == pytest.approx(sum(binom.pmf(i, n, 0.5) for i in range(n + 1) if pv[i] <= 0.2))
