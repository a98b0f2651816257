"""SmoothedClassifier and the sampler on base classifiers with known smoothed behaviour (NumPy stand-ins)."""

import numpy as np
import pytest
from scipy.stats import norm

from rs_onnx import stats
from rs_onnx.errors import ConfigError
from rs_onnx.sampling import HostClassifier
from rs_onnx.smoothing import ABSTAIN, SmoothedClassifier


class LinearTwoClass(HostClassifier):
    """f(x) = 1 if w.x + b > 0 else 0, on flat float32 inputs of dimension d."""

    def __init__(self, w, b):
        self.w = np.asarray(w, dtype=np.float32)
        self.b = float(b)
        self.input_shape = (self.w.size,)
        self.input_dtype = np.dtype(np.float32)
        self.num_classes = 2
        self.calls = []

    def predict(self, x):
        self.calls.append(len(x))
        return (x.reshape(len(x), -1) @ self.w + self.b > 0).astype(np.int64)


class Constant(HostClassifier):
    """Always class c; NaN rows (class -1) for a given fraction of inputs whose first value is negative."""

    def __init__(self, c, k=10, nan_when_negative=False):
        self.c, self.num_classes, self.input_shape, self.input_dtype = c, k, (4,), np.dtype(np.float32)
        self.nan = nan_when_negative

    def predict(self, x):
        out = np.full(len(x), self.c, dtype=np.int64)
        if self.nan:
            out[x[:, 0] < 0] = -1
        return out


def test_certify_matches_cohen_on_a_constant_classifier():
    sc = SmoothedClassifier(Constant(3), sigma=0.5, seed=0, batch_size=64)
    cert = sc.certify(np.zeros(4, np.float32), n0=10, n=1000, alpha=0.001)
    p = stats.clopper_pearson_lower(1000, 1000, 0.001)
    assert cert.predict == 3 and cert.n_a == 1000 and cert.p_a_lower == p
    assert cert.radius == pytest.approx(0.5 * norm.ppf(p), rel=1e-9)


def test_nonfinite_outputs_never_count_for_a_class():
    sc = SmoothedClassifier(Constant(2, nan_when_negative=True), sigma=1.0, seed=1, batch_size=100)
    cert = sc.certify(np.zeros(4, np.float32), n0=100, n=2000, alpha=0.001)
    # About half the samples are NaN: nA ~ 1000 of n = 2000, so CERTIFY must abstain.
    assert 850 < cert.n_a < 1150 and cert.nonfinite > 850
    assert cert.predict == ABSTAIN and cert.radius == 0.0


def _counts(batch_size, threads):
    rng = np.random.default_rng(3)
    w = rng.normal(size=16)
    xs = [rng.normal(size=16).astype(np.float32) * 0.1 for _ in range(3)]
    sc = SmoothedClassifier(LinearTwoClass(w, 0.05), sigma=0.3, seed=11, batch_size=batch_size, noise_threads=threads)
    return [(c.predict, c.n_a, c.radius) for c in sc.certify_many(xs, 37, 2345, 0.01)]


def test_results_do_not_depend_on_batch_size_or_threads():
    ref = _counts(1000, 0)
    for batch, threads in [(1, 0), (7, 1), (333, 3), (100_000, 2)]:
        assert _counts(batch, threads) == ref


def test_results_do_not_depend_on_how_examples_are_split():
    sc_args = dict(sigma=0.3, seed=11, batch_size=64, noise_threads=1)
    rng = np.random.default_rng(5)
    w, xs = rng.normal(size=16), [rng.normal(size=16).astype(np.float32) * 0.1 for _ in range(3)]
    full = SmoothedClassifier(LinearTwoClass(w, 0.0), **sc_args).certify_many(xs, 20, 999, 0.01, examples=[10, 11, 12])
    parts = [
        SmoothedClassifier(LinearTwoClass(w, 0.0), **sc_args).certify(x, 20, 999, 0.01, example=e)
        for x, e in zip(xs, [10, 11, 12])
    ]
    assert [(c.n_a, c.radius) for c in full] == [(c.n_a, c.radius) for c in parts]


def test_examples_are_packed_into_shared_batches():
    clf = LinearTwoClass(np.ones(4), 0.0)
    sc = SmoothedClassifier(clf, sigma=0.1, seed=0, batch_size=1000, noise_threads=0)
    sc.certify_many([np.zeros(4, np.float32)] * 10, n0=100, n=100, alpha=0.01)
    assert clf.calls == [1000, 1000]  # 10 x 100 selection samples in one batch, then 10 x 100 estimation samples


def test_predict_abstains_on_a_coin_flip_and_answers_when_clear():
    w = np.array([1.0, 0, 0, 0])
    sc = SmoothedClassifier(LinearTwoClass(w, 0.0), sigma=1.0, seed=0)
    assert sc.predict(np.zeros(4, np.float32), n=1000, alpha=0.001).predict == ABSTAIN
    clear = sc.predict(np.array([3.0, 0, 0, 0], np.float32), n=1000, alpha=0.001)
    assert clear.predict == 1 and clear.p_value < 1e-6


@pytest.mark.parametrize("kwargs", [dict(sigma=0.0), dict(sigma=-1.0), dict(sigma=float("nan")), dict(batch_size=0)])
def test_constructor_checks(kwargs):
    args = dict(sigma=0.25, batch_size=10) | kwargs
    with pytest.raises(ConfigError):
        SmoothedClassifier(Constant(0), **args)


@pytest.mark.parametrize("n0,n,alpha", [(0, 10, 0.1), (10, 0, 0.1), (10, 10, 0.0), (10, 10, 1.0)])
def test_certify_argument_checks(n0, n, alpha):
    with pytest.raises(ConfigError):
        SmoothedClassifier(Constant(0), sigma=0.25).certify(np.zeros(4, np.float32), n0, n, alpha)


def test_certify_and_predict_abstain_when_no_sample_gives_a_class():
    """A model whose every output is non-finite: no guess (not class 0), n_A = 0, and CERTIFY and PREDICT abstain."""
    sc = SmoothedClassifier(Constant(-1), sigma=0.25, seed=0, batch_size=64)
    x = np.zeros(4, np.float32)
    for bound in ("cohen", "best"):
        cert = sc.certify_many([x], n0=20, n=50, alpha=0.01, bound=bound)[0]
        assert (cert.guess, cert.predict, cert.n_a, cert.radius) == (ABSTAIN, ABSTAIN, 0, 0.0)
        assert cert.nonfinite == 20 + 50 and cert.p_a_lower == 0.0 and cert.radius_2class == cert.radius_tv == 0.0
    pred = sc.predict(x, n=50, alpha=0.01)
    assert (pred.predict, pred.count_a, pred.count_b, pred.p_value, pred.nonfinite) == (ABSTAIN, 0, 0, 1.0, 50)


def test_one_sample_is_enough_to_run():
    """n0 = 1 and n = 1 are valid (if useless: one sample never certifies at alpha < 1/2); 0 is refused above."""
    sc = SmoothedClassifier(Constant(3), sigma=0.25, seed=0)
    cert = sc.certify(np.zeros(4, np.float32), n0=1, n=1, alpha=0.01)
    assert (cert.guess, cert.n_a, cert.n, cert.n0, cert.predict) == (3, 1, 1, 1, ABSTAIN)
    assert cert.p_a_lower == pytest.approx(0.01, rel=1e-9)  # CP_lower(1 of 1) = alpha
    pred = sc.predict(np.zeros(4, np.float32), n=1, alpha=0.01)
    assert (pred.predict, pred.count_a, pred.p_value) == (ABSTAIN, 1, 1.0)


def test_predict_answers_when_the_p_value_equals_alpha():
    """Cohen's PREDICT answers iff p-value <= alpha: 10 of 10 has the exact two-sided p-value 2 / 2**10."""
    sc = SmoothedClassifier(Constant(3), sigma=0.25, seed=0)
    x = np.zeros(4, np.float32)
    p = 2 / 2**10
    assert sc.predict(x, n=10, alpha=p).predict == 3
    assert sc.predict(x, n=10, alpha=float(np.nextafter(p, 0.0))).predict == ABSTAIN


def test_a_one_class_model_predicts_its_class():
    """num_classes = 1 is valid: PREDICT's top two is the one class against none (p-value of n of n)."""
    sc = SmoothedClassifier(Constant(0, k=1), sigma=0.25, seed=0, num_classes=1)
    pred = sc.predict(np.zeros(4, np.float32), n=20, alpha=0.01)
    assert (pred.predict, pred.count_a, pred.count_b) == (0, 20, 0)
    assert pred.p_value == stats.binomial_pvalue(20, 20)
    with pytest.raises(ConfigError):
        SmoothedClassifier(Constant(0, k=1), sigma=0.25, num_classes=0)


def test_counting_no_images_gives_an_empty_table_of_the_right_width():
    assert SmoothedClassifier(Constant(0), sigma=0.25).count([], [], 0, 10).shape == (0, 10 + 1)
    assert SmoothedClassifier(Constant(0), sigma=0.25, num_classes=3).count([], [], 0, 10).shape == (0, 3 + 1)
