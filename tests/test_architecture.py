"""One home per concept: statistics live in rs_onnx.stats, no module reaches into another's private names,
the engine's contract is declared, and a prepared run never writes back into its configuration."""

import ast
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta, norm

from rs_onnx import stats

PACKAGE = Path(__file__).resolve().parents[1] / "rs_onnx"


# ------------------------------------------------------------------ Clopper-Pearson: one guard, one rounding
@pytest.mark.parametrize("alpha", [1e-3, 1e-6, 1e-8, 1e-10, 1e-12])
@pytest.mark.parametrize("n", [1, 10, 1000])
def test_vectorised_bounds_hold_their_exact_level_and_stay_tight(alpha, n):
    # The exact binomial tails: P(Beta(k+1, n-k) >= U) <= alpha and P(Beta(k, n-k+1) <= L) <= alpha, with no
    # tolerance. Before the guard, the vectorised upper bound missed its level at alpha = 1e-8 and 1e-10 by a
    # relative 5e-9 to 8e-8 (1 - alpha rounds away alpha's low digits).
    k = np.arange(n + 1)
    up, lo = stats.cp_upper(k, n, alpha), stats.cp_lower(k, n, alpha)
    kk = k[:-1]
    assert np.all(beta.sf(up[:-1], kk + 1, n - kk) <= alpha) and up[-1] == 1.0
    k1 = k[1:]
    assert np.all(beta.cdf(lo[1:], k1, n - k1 + 1) <= alpha) and lo[0] == 0.0
    # ... and not loose: within a relative 1e-6 of the exact quantiles (a bound inflated by 1.5x fails here).
    exact_up, exact_lo = beta.isf(alpha, kk + 1, n - kk), beta.ppf(alpha, k1, n - k1 + 1)
    assert np.all(up[:-1] <= exact_up * (1 + 1e-6) + 1e-12)
    assert np.all(lo[1:] >= exact_lo * (1 - 1e-6) - 1e-12)


def test_lower_bound_guard_where_scipy_misses_its_level():
    # beta.ppf(1e-6, 99001, 1000) misses its level; the guard must shrink it (scalar and vectorised alike).
    k, n, a = 99_001, 100_000, 1e-6
    p = stats.cp_lower(k, n, a)
    assert beta.cdf(p, k, n - k + 1) <= a
    assert p >= beta.ppf(a, k, n - k + 1) * (1 - 1e-9)
    assert stats.clopper_pearson_lower(k, n, a) == float(p)
    u = stats.cp_upper(999, 100_000, 1e-6)
    assert beta.sf(u, 1000, 100_000 - 999) <= 1e-6


@pytest.mark.parametrize("alpha", [0.001, 0.05, 1e-10])
def test_scalar_and_vectorised_bounds_are_one_implementation(alpha):
    n = 200
    k = np.arange(n + 1)
    lo, up = stats.cp_lower(k, n, alpha), stats.cp_upper(k, n, alpha)
    for i in range(n + 1):
        assert lo[i] == stats.clopper_pearson_lower(i, n, alpha)
        assert up[i] == stats.clopper_pearson_upper(i, n, alpha)
    # broadcasting over levels (the sequential schedule's looks)
    alphas = np.array([1e-4, 1e-3, 1e-2])
    np.testing.assert_array_equal(stats.cp_lower(150, n, alphas),
                                  [stats.clopper_pearson_lower(150, n, a) for a in alphas])


def test_cohen_radii_match_the_scalar_radius_and_round_down():
    p = np.array([0.0, 0.3, 0.5, 0.5000001, 0.7, 0.99, 0.999999, 1.0 - 1e-15])
    r = stats.cohen_radii(p, 0.25)
    assert r.shape == p.shape
    for pi, ri in zip(p, r):
        assert ri == stats.cohen_radius(float(pi), 0.25)
    assert np.all(r[:3] == 0.0)
    exact = 0.25 * norm.ppf(p[3:])
    assert np.all(r[3:] < exact) and np.all(r[3:] >= exact * (1 - 1e-11))


def test_selection_rule():
    assert stats.select(np.array([3, 7, 7, 0, 99])) == 1  # ties to the lower index; last column: non-finite
    assert stats.select(np.array([0, 0, 0, 12])) == stats.ABSTAIN  # only non-finite outputs: no class
    np.testing.assert_array_equal(stats.select_many(np.array([[0, 5, 0], [4, 1, 0], [0, 0, 3]])),
                                  [1, 0, stats.ABSTAIN])
    assert stats.select_many(np.zeros((0, 3), np.int64)).shape == (0,)


# ------------------------------------------------------------------ imports
def _private_imports():
    found = []
    for f in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("rs_onnx")):
                found += [f"{f.name}:{node.lineno} {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, (ast.Name, ast.Attribute))):
                owner = ast.unparse(node.value)
                if owner not in ("self", "cls", "os", "sys"):
                    found.append(f"{f.name}:{node.lineno} {owner}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    assert _private_imports() == []


def test_statistics_are_not_redefined_outside_stats():
    for f in sorted(PACKAGE.glob("*.py")):
        if f.name == "stats.py":
            continue
        text = f.read_text(encoding="utf-8")
        assert "beta.ppf" not in text and "beta.isf" not in text, f"{f.name} computes a Clopper-Pearson bound"
        assert "SAFETY" not in text or "stats" in text, f"{f.name} has its own rounding slack"


# ------------------------------------------------------------------ the engine's contract
def test_onnx_classifier_implements_the_sampler_protocol(tmp_path):
    from rs_onnx.classifier import OnnxClassifier
    from rs_onnx.run import bundled
    from rs_onnx.sampling import Classifier, HostClassifier

    clf = OnnxClassifier(bundled("digits_cnn.onnx"), device="cpu")
    assert isinstance(clf, Classifier)
    for member in ("device", "prefers_fixed_batch", "device_noise", "cuda_graph"):
        assert member in Classifier.__annotations__ and hasattr(HostClassifier, member)


def test_sampler_source_reads_no_member_through_getattr():
    src = (PACKAGE / "sampling.py").read_text(encoding="utf-8") + (PACKAGE / "smoothing.py").read_text(encoding="utf-8")
    assert "getattr(classifier" not in src and "getattr(self.classifier" not in src


def test_probe_is_returned_not_stored(monkeypatch):
    import rs_onnx.sampling as sampling

    class Clock(sampling.HostClassifier):
        input_dtype, num_classes, input_shape = np.dtype(np.float32), 2, (3,)

        def __init__(self):
            self.now = 0.0

        def perf_counter(self):
            return self.now

        def predict(self, x):
            self.now += 1e-6 * len(x) * (1.0 if len(x) >= 64 else 2.0)
            return np.zeros(len(x), np.int64)

    clf = Clock()
    monkeypatch.setattr(sampling, "time", clf)
    probe = sampling.probe_batch_size(clf, candidates=(16, 32, 64, 128), min_seconds=0)
    assert probe["batch_size"] == 64 and set(probe["seconds_per_sample"]) == {"16", "32", "64", "128"}
    assert not hasattr(clf, "batch_probe")
    clf.batch_probe = {"batch_size": 7}  # a stale attribute is never read back
    assert sampling.Sampler(clf, sampling.Preprocessor(sampling_spec(), (3,), (3,), np.float32), 0.5, 0,
                            None, 0).batch_size == 64


def sampling_spec():
    from rs_onnx.preprocess import PreprocessSpec

    return PreprocessSpec()
