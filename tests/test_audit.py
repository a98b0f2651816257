"""Audit mode: exact grid noise, integer addition, batch independence, fresh entropy, end to end.

The chi-square test of the sampler runs over 10^6 draws here and over 10^8 in the ``slow`` test
(``python -m pytest -m slow tests/test_audit.py``).
"""

import itertools
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy import stats as st
from scipy.special import ndtr

from rs_onnx import audit, noise, run
from rs_onnx.classifier import OnnxClassifier
from rs_onnx.cli import cli
from rs_onnx.config import RunConfig
from rs_onnx.sampling import HostClassifier
from rs_onnx.errors import ConfigError, DataError
from rs_onnx.preprocess import PreprocessSpec
from rs_onnx.sampling import Task
from rs_onnx.sequential import sequential_certify_many
from rs_onnx.smoothing import SmoothedClassifier
from tests import onnx_models as om

SIGMA = 0.25


@pytest.fixture(scope="module")
def grid():
    return audit.GridNoise(SIGMA)


# ------------------------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("sigma", [0.25, 0.12, 0.5])
def test_thresholds_same_at_two_precisions_and_symmetric(sigma):
    k, m = audit.grid_extent(sigma)
    assert (k, m) == (max(1, int(6 * sigma)), 255 * (max(1, int(6 * sigma)) + 1))
    for bits in (64, 128):
        t = audit.thresholds(sigma, audit.DIGITS, bits)
        assert t == audit.thresholds(sigma, 140, bits)
        assert len(t) == 2 * m
        assert all(a <= b for a, b in itertools.pairwise(t)) and 1 <= t[0] and t[-1] <= 2**bits
        assert all(t[j] + t[2 * m - 1 - j] == 2**bits + 1 for j in range(2 * m))  # T_j + T_{-j-1}
    t64, t128 = audit.thresholds(sigma), audit.thresholds(sigma, bits=128)
    assert all((b + 2**64 - 1) >> 64 == a for a, b in zip(t64, t128))  # ceil(2^64 p) = ceil(ceil(2^128 p) / 2^64)
    j = np.arange(-m, m)
    assert np.allclose(np.array(t64, float) / 2.0**64, ndtr((j + 0.5) / (255 * sigma)), rtol=0, atol=1e-15)


def test_phi_decimal_against_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 130
    for x in ("0", "0.3", "-1.7", "5.25", "-8.1", "17.5", "-39"):
        want = mpmath.ncdf(mpmath.mpf(x))
        got = audit.phi_decimal(Decimal(x))
        assert abs(mpmath.mpf(str(got)) - want) < mpmath.mpf(10) ** -105


def test_sigma_is_taken_as_written():
    # 0.12 as a float is 0.11999999999999999556; the thresholds use the decimal 0.12 exactly
    t = audit.thresholds(0.12)
    x = Decimal(1) / 2 / (255 * Decimal("0.12"))
    assert t[audit.grid_extent(0.12)[1]] == int(
        (Decimal(2) ** 64 * audit.phi_decimal(x)).to_integral_value(rounding="ROUND_CEILING")
    )


# ------------------------------------------------------------------------------------------- the sampler
def test_exact_distribution_moments(grid):
    p = grid.probabilities()
    j = np.arange(-grid.M, grid.M + 1)
    assert p.sum() == pytest.approx(1.0, abs=1e-15)
    assert abs((p * j).sum()) < 1e-12
    assert (p * j * j).sum() == pytest.approx((255 * SIGMA) ** 2 + 1 / 12, rel=1e-12)  # Sheppard's correction


def _draws(grid, n, seed=12345):
    bits = np.random.SFC64(seed)
    return grid.sample(bits.random_raw(n), lambda m: bits.random_raw(m))


def test_empirical_mean_variance(grid):
    i = _draws(grid, 1_000_000).astype(np.float64)
    var = (255 * SIGMA) ** 2 + 1 / 12
    assert abs(i.mean()) < 5 * np.sqrt(var / i.size)
    # var of the sample variance ~ 2 var^2 / n for a near-Gaussian
    assert abs(i.var() - var) < 5 * var * np.sqrt(2 / i.size)


def _chi_square_pvalue(grid, n, chunk=10_000_000, seed=99):
    p = grid.probabilities()
    counts = np.zeros(p.size, np.int64)
    bits = np.random.SFC64(seed)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        i = grid.sample(bits.random_raw(m), lambda k: bits.random_raw(k))
        counts += np.bincount(i + grid.M, minlength=p.size)
        done += m
    expected = p * n
    keep = expected >= 20  # pool the far tails into one cell
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    chi2 = ((obs - exp) ** 2 / exp).sum()
    return st.chi2.sf(chi2, obs.size - 1)


def test_chi_square_1e6(grid):
    assert _chi_square_pvalue(grid, 1_000_000) > 1e-6


@pytest.mark.slow
def test_chi_square_1e8(grid):
    assert _chi_square_pvalue(grid, 100_000_000) > 1e-6


def test_chi_square_catches_a_float64_sampler(grid):
    """The test has power: float64 normals rounded to the grid with sigma 2% too large fail it."""
    rng = np.random.default_rng(5)
    n = 1_000_000
    wrong = np.clip(np.rint(255 * SIGMA * 1.02 * rng.standard_normal(n)), -grid.M, grid.M).astype(np.int64)
    p = grid.probabilities()
    counts = np.bincount(wrong + grid.M, minlength=p.size)
    keep = p * n >= 20
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(p[keep] * n, p[~keep].sum() * n)
    assert st.chi2.sf(((obs - exp) ** 2 / exp).sum(), obs.size - 1) < 1e-6


def test_table_lookup_equals_binary_search(grid):
    u = np.random.SFC64(7).random_raw(200_000)
    m = grid.tm1.size
    u[:m] = grid.tm1  # words on and next to the thresholds
    u[m : 2 * m] = grid.tm1 + np.uint64(1)
    u[2 * m : 3 * m] = grid.tm1 - np.uint64(1)
    want = np.searchsorted(grid.tm1, u, side="left")
    # words on a threshold's cell are refined with 64 more bits; zeros keep them below T128_j
    assert np.array_equal(grid.shifted(u.copy(), lambda m: np.zeros(m, np.uint64)), want)
    rest = slice(3 * m, 3 * m + 80_000)  # random words, as a 2-d block: no boundary cell, no extra bits needed
    assert np.array_equal(grid.shifted(u[rest].reshape(-1, 8), None).reshape(-1), want[rest])


def test_boundary_cell_draws_64_more_bits():
    g = audit.GridNoise(SIGMA)
    j = g.M + 3  # threshold of value i = 3: T_3 = ceil(2^64 Phi(3.5 / 63.75))
    u = int(g.tm1[j])  # the boundary cell: u = T_j - 1 holds 2^64 Phi exactly
    t128 = g.t128[j]
    low = t128 - (u << 64)  # V = u 2^64 + w < T128_j  <=>  w < low
    assert 0 < low < 2**64
    calls = []

    def extra(values):
        def f(m):
            calls.append(m)
            return np.array(values[:m], np.uint64)

        return f

    words = np.array([u, u, u + 1, u - 1], np.uint64)
    got = g.sample(words.copy(), extra([low - 2, low]))
    assert got.tolist() == [3, 4, 4, 3]  # below T128: stays at 3; at T128: 4; plain words are not refined
    assert calls == [2] and g.boundary_draws == 2
    with pytest.raises(audit.AuditError, match="2\\^-128"):
        g.sample(np.array([u], np.uint64), extra([low - 1]))  # V = T128_j - 1: still a boundary cell


def test_boundary_cell_uses_its_own_stream(monkeypatch):
    """In the sampler, boundary words take 64 bits from the block's extra stream: reproducible, and exact."""
    pre, sampler, clean = _sampler_for(np.zeros((1, 2, 2), np.float32), batch=4)
    g = pre.grid
    forced = np.full(4 * 4, int(g.tm1[g.M]), np.uint64)  # every word on the boundary cell of T_0

    class Bits:
        def random_raw(self, size):
            return forced[:size].copy()

    class Gen:
        bit_generator = Bits()

    monkeypatch.setattr(noise, "generator", lambda entropy, block: Gen())
    task = Task(clean, 0, noise.ESTIMATE, 4)
    plan = sampler._plan([task], 4)[0]
    rings = []
    for _ in range(2):
        ring = np.zeros((4, *pre.model_shape), np.float32)
        sampler._fill(plan, [task], ring, 4, 1)
        rings.append(ring)
    assert g.boundary_draws == 32
    assert rings[0].tobytes() == rings[1].tobytes()
    # Exact: the word (w << 64) | e falls below T128 (noise 0) iff e < T128 - (w << 64), e the block's extra
    # stream. (The cell splits 0.79 / 0.21 at sigma 0.25: "both sides occur" failed 2% of runs; this never does.)
    b = plan.block
    seq = np.random.SeedSequence(sampler.entropy, spawn_key=(b.example, b.phase, b.block, audit.EXTRA_KEY))
    e = noise.BIT_GENERATOR(seq).random_raw(16).astype(object)
    cut = int(g.t128[g.M]) - (int(g.tm1[g.M]) << 64)
    want = np.array([0.0 if int(v) < cut else 1.0 for v in e])
    np.testing.assert_array_equal(np.rint(rings[0] * 255).reshape(-1), want)


# ------------------------------------------------------------------------------------------- integers
class _Fixed(HostClassifier):
    """A stand-in classifier: answers class 0; shapes as given."""

    device, num_classes, batch_independent = "cpu", 2, True

    def __init__(self, shape, dtype=np.float32):
        self.input_shape, self.input_dtype = tuple(shape), np.dtype(dtype)
        self.calls = []

    def predict(self, x):
        self.calls.append(len(x))
        return np.zeros(len(x), np.int64)


def _sampler_for(x, batch=8, spec=None, shape=None, dtype=np.float32):
    clf = _Fixed(shape or x.shape, dtype)
    sc = SmoothedClassifier(clf, SIGMA, spec or PreprocessSpec(), batch_size=batch, noise_threads=0, audit=True)
    sampler = sc.sampler(x.shape)
    return sampler.pre, sampler, sampler.pre.clean(x)


@pytest.mark.parametrize(
    "spec,dtype",
    [
        (PreprocessSpec(), np.float32),
        (PreprocessSpec(mean=(0.4914, 0.4822, 0.4465), std=(0.2, 0.3, 0.4)), np.float32),
        (PreprocessSpec(layout="nhwc", scale=255.0), np.uint8),
        (PreprocessSpec(), np.float16),
    ],
)
def test_model_input_depends_on_x_plus_i_only(spec, dtype):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 4, 5)).astype(np.uint8)
    x2 = rng.integers(0, 256, (3, 4, 5)).astype(np.uint8)
    shape = (4, 5, 3) if spec.layout == "nhwc" else (3, 4, 5)
    pre, _, cx = _sampler_for(x.astype(np.float32) / 255, spec=spec, shape=shape, dtype=dtype)
    cx2 = pre.clean(x2)
    m = pre.grid.M
    i = rng.integers(-m, m + 1, (6, *shape)).astype(np.int32)
    i[0] = m  # the lumped tails: x + M and x' + M clip to the same s = M
    i[1] = -m
    i2 = i + cx - cx2  # x + i = x' + i'
    i2[0], i2[1] = m, -m
    a = pre.from_grid(cx, i.copy())
    b = pre.from_grid(cx2, i2.copy())
    assert a.dtype == np.dtype(dtype) and a.tobytes() == b.tobytes()
    # and it is the usual preprocessing of s / 255
    s = np.clip(cx + i, 255 - m, m)
    want = pre.cast((s / 255.0 * pre._gain + pre._offset).astype(np.float32))
    tol = 2e-3 * np.abs(want.astype(np.float64)).max() if dtype == np.float16 else 1e-5
    assert np.allclose(a.astype(np.float64), want.astype(np.float64), atol=tol, rtol=0)


def test_inputs_must_be_on_the_grid():
    x = np.full((1, 2, 2), 3 / 255, np.float32)
    assert audit.to_grid(x).tolist() == [[[3, 3], [3, 3]]]
    assert audit.to_grid(np.array([0, 255], np.uint8)).tolist() == [0, 255]
    for bad in (np.full(4, 3.5 / 255), np.array([np.nan, 0.0]), np.array([1.0 + 1 / 255]), np.array([-1 / 255])):
        with pytest.raises(DataError, match="8-bit grid"):
            audit.to_grid(bad)


# ------------------------------------------------------------------------------------------- batch scan
def _scan(model):
    return audit.scan_batch_independence(model)


def test_scan_accepts_row_separable_graphs():
    w = np.ones((3, 16), np.float32)
    assert _scan(om.linear_model(w, input_shape=(1, 4, 4), batch="N"))[0]
    assert _scan(om.low_bits_detector_model())[0]
    assert _scan(om.threshold_model(0.5))[0]


@pytest.mark.parametrize(
    "case",
    [
        "reduce_batch",
        "softmax_batch",
        "shape",
        "custom",
        "transpose",
        "concat_const",
        "reshape_mix",
        "random",
        "broadcast_up",
        "lying_value_info",
        "if_capture",
    ],
)
def test_scan_refuses_batch_mixing(case):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits, nodes, opset = [], [], 13
    if case == "reduce_batch":
        nodes = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[0], keepdims=1)]
    elif case == "softmax_batch":
        nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=0)]
    elif case == "shape":
        nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["y"], to=1)]
    elif case == "custom":
        nodes = [helper.make_node("Mystery", ["x"], ["y"], domain="com.example")]
    elif case == "transpose":
        nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])]
    elif case == "concat_const":
        inits = [numpy_helper.from_array(np.zeros((1, 4), np.float32), "c")]
        nodes = [helper.make_node("Concat", ["x", "c"], ["y"], axis=0)]
    elif case == "reshape_mix":
        inits = [numpy_helper.from_array(np.array([-1, 8], np.int64), "shp")]
        nodes = [helper.make_node("Reshape", ["x", "shp"], ["y"])]
    elif case == "random":
        nodes = [helper.make_node("RandomNormalLike", ["x"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    elif case in ("broadcast_up", "lying_value_info"):  # [N,4] + [3,1,4] -> [3,N,4]: the batch moves to axis 1
        inits = [numpy_helper.from_array(np.zeros((3, 1, 4), np.float32), "c")]
        nodes = [
            helper.make_node("Add", ["x", "c"], ["z"]),
            helper.make_node("ReduceSum", ["z"], ["y"], keepdims=0, axes=[1])
            if opset < 13
            else helper.make_node("ReduceMax", ["z"], ["y"], axes=[1], keepdims=0),
        ]
    elif case == "if_capture":  # the branch reads x from the outer scope: no node input carries the batch
        inits = [numpy_helper.from_array(np.array(True), "cond")]
        branch = helper.make_graph(
            [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1)],
            "b",
            [],
            [helper.make_tensor_value_info("m", TensorProto.FLOAT, None)],
        )
        nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    if case == "lying_value_info":  # the supplier claims z is [N, 4]; the scan must not believe it
        graph.value_info.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    ok, why = _scan(model)
    assert not ok and why


def test_scan_reads_the_bytes_that_were_hashed(tmp_path):
    w = np.ones((2, 4), np.float32)
    path = om.save(om.linear_model(w, batch="N"), tmp_path / "m.onnx")
    clf = OnnxClassifier(path, device="cpu")
    assert audit.classifier_batch_independence(clf)["batched"] is True
    om.save(om.batch_mixing_model(w), path)  # swapped after loading (and hashing)
    info = audit.classifier_batch_independence(clf)
    assert info["batched"] is False and "changed since it was loaded" in info["how"]


def test_batch_mixing_model_runs_one_sample_per_call(tmp_path):
    """A Python classifier that averages its batch is not declared independent: one row per call."""

    class Mixer(_Fixed):
        batch_independent = False

        def predict(self, x):
            self.calls.append(len(x))
            return (x.reshape(len(x), -1).mean() > x.reshape(len(x), -1).mean(1)).astype(np.int64)

    clf = Mixer((4,))
    sc = SmoothedClassifier(clf, SIGMA, batch_size=50, noise_threads=0, audit=True)
    assert sc.audit_info["batched"] is False and "one sample per model call" in sc.audit_info["how"]
    sc.certify(np.full(4, 128 / 255, np.float32), 5, 40, 0.01)
    assert set(clf.calls) == {1}


def test_onnx_batch_mixing_model_is_not_batched(tmp_path):
    path = om.save(om.batch_mixing_model(np.ones((2, 4), np.float32)), tmp_path / "mix.onnx")
    clf = OnnxClassifier(path, device="cpu")
    info = audit.classifier_batch_independence(clf)
    if clf.batch_mode == "per-sample":  # the load-time check caught it already: one row per run
        assert info["batched"] is True and "per-sample" in info["how"]
    else:
        assert info["batched"] is False and "ReduceMean" in info["how"]
    sc = SmoothedClassifier(clf, SIGMA, batch_size=64, noise_threads=0, audit=True)
    ref = SmoothedClassifier(
        clf, SIGMA, batch_size=1, noise_threads=0, audit=True, seed=sc.entropy, audit_seed_override=True
    )
    x = np.array([0.2, 0.4, 0.6, 0.8], np.float32)
    assert np.array_equal(sc.certify(x, 5, 300, 0.01).counts, ref.certify(x, 5, 300, 0.01).counts)


# ------------------------------------------------------------------------------------------- the attack
@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    path = om.save(om.low_bits_detector_model(), tmp_path_factory.mktemp("det") / "detector.onnx")
    return OnnxClassifier(path, device="cpu")


def test_detector_earns_a_false_certificate_without_audit(detector):
    """Known failure of float noise (Voracek & Hein 2023), kept as documentation: two images 0.217 apart
    both certified, with different classes, at radius > 0.217."""
    sc = SmoothedClassifier(detector, SIGMA, seed=0, batch_size=256, noise_threads=0)
    black, grey = np.zeros((3, 32, 32), np.float32), np.full((3, 32, 32), 1 / 255, np.float32)
    a, b = sc.certify(black, 20, 300, 0.001), sc.certify(grey, 20, 300, 0.001, example=1)
    distance = float(np.linalg.norm(grey - black))
    assert distance == pytest.approx(0.2174, abs=1e-3)
    assert (a.predict, b.predict) == (0, 1)
    assert min(a.radius, b.radius) > distance  # contradictory certificates


def test_detector_is_defeated_by_audit(detector):
    sc = SmoothedClassifier(detector, SIGMA, batch_size=256, noise_threads=0, audit=True)
    assert sc.audit_info["batched"] is True
    black, grey = np.zeros((3, 32, 32), np.float32), np.full((3, 32, 32), 1 / 255, np.float32)
    a, b = sc.certify(black, 20, 300, 0.001), sc.certify(grey, 20, 300, 0.001, example=1)
    assert a.predict == b.predict == 1
    assert a.counts[0] == b.counts[0] == 0


# ------------------------------------------------------------------------------------------- statistics
def _exact_p_above(c, k, sigma):
    """P(k + i > c) for exact grid noise i (real Phi): 1 - Phi((c - k + 1/2) / (255 sigma))."""
    return float(1 - ndtr((c - k + 0.5) / (255 * sigma)))


@pytest.fixture(scope="module")
def threshold_clf(tmp_path_factory):
    c = 130  # class 1 iff s > 130.5 / 255 in model units, i.e. s >= 131
    path = om.save(om.threshold_model((c + 0.5) / 255), tmp_path_factory.mktemp("thr") / "thr.onnx")
    return OnnxClassifier(path, device="cpu"), c


def test_counts_follow_the_exact_grid_distribution(threshold_clf):
    """Class-1 counts over 40,000 samples against Binomial(n, p_exact); an off-by-one s (or float noise
    with a half-pixel shift) moves p by ~0.078 at sigma 0.02, 30 standard errors."""
    clf, c = threshold_clf
    sigma, k = 0.02, 130
    sc = SmoothedClassifier(clf, sigma, batch_size=1000, noise_threads=0, audit=True, seed=11, audit_seed_override=True)
    xs = [np.array([k / 255], np.float32)] * 40
    certs = sc.certify_many(xs, 1, 1000, 0.001)
    ones = sum(int(cert.counts[1]) for cert in certs)
    p = _exact_p_above(c, k, sigma)
    assert 0.3 < p < 0.7
    assert st.binomtest(ones, 40_000, p).pvalue > 1e-6
    for shifted in (_exact_p_above(c, k + 1, sigma), _exact_p_above(c, k - 1, sigma)):
        assert st.binomtest(ones, 40_000, shifted).pvalue < 1e-6


def test_clopper_pearson_coverage_under_grid_noise(threshold_clf):
    """pA_lower <= the exact smoothed probability in at least 1 - alpha of 300 independent examples
    (deterministic seed; the allowance is the 1e-4 upper quantile of Binomial(300, alpha))."""
    clf, c = threshold_clf
    k, alpha = 127, 0.05
    sc = SmoothedClassifier(clf, SIGMA, batch_size=2000, noise_threads=0, audit=True, seed=5, audit_seed_override=True)
    certs = sc.certify_many([np.array([k / 255], np.float32)] * 300, 10, 100, alpha)
    p_true = _exact_p_above(c, k, SIGMA)
    p_a = {0: 1 - p_true, 1: p_true}
    misses = sum(cert.p_a_lower > p_a[cert.guess] for cert in certs if cert.guess >= 0)
    assert misses <= st.binom.ppf(1 - 1e-4, 300, alpha)
    inflated = sum(min(1.0, 1.5 * cert.p_a_lower) > p_a[cert.guess] for cert in certs if cert.guess >= 0)
    assert inflated > st.binom.ppf(1 - 1e-4, 300, alpha)  # the test would catch a 1.5x bound


def test_results_do_not_depend_on_batching(threshold_clf):
    clf, _ = threshold_clf
    xs = [np.array([v / 255], np.float32) for v in (120, 128, 131, 140)]
    runs = []
    for batch, threads in ((7, 0), (1000, 2), (64, 1)):
        sc = SmoothedClassifier(
            clf, SIGMA, batch_size=batch, noise_threads=threads, audit=True, seed=9, audit_seed_override=True
        )
        runs.append([cert.counts.tolist() for cert in sc.certify_many(xs, 10, 500, 0.001)])
    assert runs[0] == runs[1] == runs[2]


# ------------------------------------------------------------------------------------------- seeds
def test_api_refuses_a_seed_without_the_override():
    with pytest.raises(ConfigError, match="audit"):
        SmoothedClassifier(_Fixed((4,)), SIGMA, seed=3, audit=True)
    a = SmoothedClassifier(_Fixed((4,)), SIGMA, audit=True)
    b = SmoothedClassifier(_Fixed((4,)), SIGMA, audit=True)
    assert a.entropy != b.entropy and a.audit_info["seed_override"] is False
    with pytest.raises(ConfigError, match="device_noise"):
        RunConfig(sigma=0.25, audit=True, device_noise=True).validate()
    with pytest.raises(ConfigError, match="seed"):
        RunConfig(sigma=0.25, audit=True, seed=1).validate()
    RunConfig(sigma=0.25, audit=True, seed=1, audit_seed_override=True).validate()


# ------------------------------------------------------------------------------------------- end to end
def _invoke(args):
    from click.testing import CliRunner

    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    model, data = run.bundled("digits_cnn.onnx"), run.bundled("digits_eval.npz")
    return tmp, model, data


def test_cli_audit_certifies_and_records(digits, tmp_path):
    _, model, data = digits
    out = tmp_path / "a.tsv"
    r = _invoke(["-q", "certify", model, data, "--audit", "--n0", "10", "--n", "200", "--end", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["status"] == "complete" and meta["config"]["audit"] is True and meta["seed"] is None
    a = meta["audit"]
    assert a["batched"] is True and a["seed_override"] is False and a["grid_M"] == 510
    assert a["entropy"].endswith(meta["model"]["sha256"]) and a["entropy"].startswith("fresh")
    rows = out.read_text().splitlines()
    assert len(rows) == 5
    # the same entropy through the override reproduces the rows (here in sequential-free, batch-1 form)
    out2 = tmp_path / "b.tsv"
    r = _invoke(
        [
            "-q",
            "certify",
            model,
            data,
            "--audit",
            "--audit-seed-override",
            "--seed",
            meta["entropy"],
            "--n0",
            "10",
            "--n",
            "200",
            "--end",
            "4",
            "--batch-size",
            "3",
            "--out",
            str(out2),
        ]
    )
    assert r.exit_code == 0, r.output
    t = rows[0].split("\t").index("time")
    strip = [[c for i, c in enumerate(line.split("\t")) if i != t] for line in rows]
    assert [[c for i, c in enumerate(line.split("\t")) if i != t] for line in out2.read_text().splitlines()] == strip
    assert json.loads(Path(str(out2) + ".meta.json").read_text())["audit"]["seed_override"] is True


def _main_error(args, capsys):
    from rs_onnx.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    return e.value.code, err


def test_cli_audit_refuses_seed_and_off_grid_data(digits, tmp_path, capsys):
    _, model, data = digits
    out = tmp_path / "x.tsv"
    code, err = _main_error(["certify", model, data, "--audit", "--seed", "1", "--out", str(out)], capsys)
    assert code == 1 and "expected no seed with audit" in err and not out.exists()
    imgs = np.full((2, 28, 28), 0.5, np.float32)  # 0.5 = 127.5 / 255: off the grid
    np.savez(tmp_path / "f.npz", images=imgs, labels=np.zeros(2, np.uint8))
    code, err = _main_error(
        ["certify", model, str(tmp_path / "f.npz"), "--audit", "--n", "50", "--out", str(out)], capsys
    )
    assert code == 1 and "8-bit grid" in err and "Traceback" not in err and not out.exists()
    assert [line for line in err.splitlines() if line.startswith("rs-onnx: error:")] == [err.strip().splitlines()[-1]]
    code, err = _main_error(["certify", model, data, "--audit-seed-override", "--seed", "1", "--out", str(out)], capsys)
    assert code == 1 and "audit_seed_override" in err


# ------------------------------------------------------------------------- the grid check before any file
def _png_folder(root: Path, count: int) -> Path:
    """``count`` random 28x28 grey PNGs in class folders 0..9 (the digits CNN's input)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(count):
        (root / str(k % 10)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / str(k % 10) / f"{k:04d}.png")
    return root


def test_prepare_does_not_decode_image_files_for_the_grid_check(digits, tmp_path, monkeypatch):
    """Image files are uint8 by construction: audit's prepare decodes only the first image (magnitude check)
    and the clean-accuracy ones, not every selected image; forcing the check decodes all of them again."""
    from rs_onnx import data, images

    _, model, _ = digits
    count = run.CLEAN_EXAMPLES + 30
    folder = _png_folder(tmp_path / "f", count)
    decode, calls = images.decode, []  # patched where ImageFiles looks it up
    monkeypatch.setattr(images, "decode", lambda *a, **k: calls.append(a[0]) or decode(*a, **k))
    cfg = RunConfig(model=model, data=str(folder), audit=True, n0=10, n=100, batch_size=110).validate()
    p = run.prepare(cfg)
    assert p.data.uint8_pixels and len(p.indices) == count
    assert len(calls) == 1 + run.CLEAN_EXAMPLES < count
    calls.clear()
    monkeypatch.setattr(data.ImageFiles, "uint8_pixels", property(lambda self: False))  # the float path
    run.prepare(cfg)
    assert len(calls) == 1 + run.CLEAN_EXAMPLES + count


@pytest.mark.parametrize("layout", ["npz", "npz-compressed", "npy"])
def test_off_grid_float_arrays_are_refused_before_any_file(digits, tmp_path, capsys, layout):
    """Float arrays are still read for the grid check: one value off the grid in an example that neither the
    magnitude check (the first) nor the clean accuracy (the first 100) reads is refused, and no file exists."""
    _, model, _ = digits
    n = run.CLEAN_EXAMPLES + 20
    imgs = np.random.default_rng(0).integers(0, 256, (n, 28, 28)).astype(np.float32) / 255
    imgs[n - 5, 3, 7] += 0.3 / 255
    labels = np.zeros(n, np.int64)
    if layout == "npy":
        np.save(tmp_path / "x.npy", imgs)
        np.save(tmp_path / "y.npy", labels)
        argv = [str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    else:
        (np.savez_compressed if layout == "npz-compressed" else np.savez)(
            tmp_path / "x.npz", images=imgs, labels=labels
        )
        argv = [str(tmp_path / "x.npz")]
    out = tmp_path / "o.tsv"
    code, err = _main_error(["certify", model, *argv, "--audit", "--n0", "10", "--n", "50", "--out", str(out)], capsys)
    assert code == 1 and "8-bit grid" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        Path(a).name for a in argv if a.startswith(str(tmp_path))
    )


def _png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG (grey [H,W], RGB [H,W,3] or RGBA [H,W,4]) written by hand: Pillow writes 16-bit grey only."""
    import struct
    import zlib

    h, w = pixels.shape[:2]
    color = {2: 0, 3: 2, 4: 6}[pixels.ndim if pixels.ndim == 2 else pixels.shape[2]]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def test_image_files_are_on_the_grid_by_construction(tmp_path):
    """Every mode and format Pillow opens, resized and cropped, decodes to uint8 (so image(i) = k/255 passes
    to_grid exactly); 16-bit grey and float files are refused on opening; float32 k/255 is on the grid."""
    from PIL import Image

    from rs_onnx import data

    k = np.arange(256, dtype=np.uint8)
    assert np.array_equal(audit.to_grid(k.astype(np.float32) / 255.0), k)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (13, 11, 3), dtype=np.uint8))
    folder = tmp_path / "ok"
    folder.mkdir()
    modes = {"1": "png", "L": "png", "LA": "png", "P": "gif", "PA": "tiff", "RGBA": "png", "CMYK": "jpg"}
    modes |= {"YCbCr": "tiff", "RGBX": "tiff", "HSV": "webp", "I": "webp", "F": "gif"}
    for mode, ext in modes.items():
        rgb.convert(mode).save(folder / f"{mode}.{ext}")
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "P-transparent.png", transparency=0)
    _png16(folder / "rgb16.png", rng.integers(0, 65536, (13, 11, 3)))
    _png16(folder / "rgba16.png", rng.integers(0, 65536, (13, 11, 4)))
    for channels in (None, 1, 3, 4):
        ds = data.load_data(folder, label=0, channels=channels, resize=9, center_crop="7x8")
        assert isinstance(ds, data.ImageFiles) and ds.uint8_pixels and len(ds) == len(modes) + 3
        for i in range(len(ds)):
            x = ds.raw(i)
            assert x.dtype == np.uint8 and x.shape[1:] == (7, 8), ds.files[i]
            assert np.array_equal(audit.to_grid(ds.image(i)), x)
    bad = tmp_path / "bad"
    bad.mkdir()
    _png16(bad / "grey16.png", rng.integers(0, 65536, (13, 11)))
    Image.fromarray(rng.random((13, 11)).astype(np.float32)).save(bad / "float.tiff")
    Image.fromarray(rng.integers(0, 1 << 20, (13, 11), dtype=np.int32)).save(bad / "int32.tiff")
    for name in ("grey16.png", "float.tiff", "int32.tiff"):
        with pytest.raises(DataError, match="16-bit or float pixels"):
            data.load_data(bad / name, label=0).raw(0)
    # arrays: uint8 by their dtype, floats never (they are read to be checked)
    assert data.Dataset(np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.int64), "u8").uint8_pixels
    assert not data.Dataset(np.zeros((2, 4, 4), np.float32), np.zeros(2, np.int64), "f32").uint8_pixels


def test_off_grid_images_never_reach_audit_sampling(digits, tmp_path, monkeypatch):
    """Even if prepare's check were skipped (a data set wrongly claiming uint8 pixels), the sampler turns every
    image into grid values first (to_grid) and refuses an off-grid one: no sample is drawn for it."""
    from rs_onnx import data

    _, model, _ = digits
    n = run.CLEAN_EXAMPLES + 5
    imgs = np.random.default_rng(0).integers(0, 256, (n, 28, 28)).astype(np.float32) / 255
    imgs[n - 1, 0, 0] = 0.5  # 127.5 / 255
    np.savez(tmp_path / "x.npz", images=imgs, labels=np.zeros(n, np.int64))
    monkeypatch.setattr(data.Dataset, "uint8_pixels", property(lambda self: True))
    p = run.prepare(RunConfig(model=model, data=str(tmp_path / "x.npz"), audit=True, n0=10, n=50).validate())
    x = p.data.image(n - 1)
    for draw in (lambda: p.smoothed.certify(x, 10, 50, 0.001), lambda: p.smoothed.predict(x, 50, 0.001)):
        with pytest.raises(DataError, match="8-bit grid"):
            draw()
    with pytest.raises(DataError, match="8-bit grid"):
        sequential_certify_many(p.smoothed, [x], [n - 1], 10, 50, 0.001, (0.25,))


def test_default_run_with_audit_drops_the_default_seed(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    r = _invoke(["-q", "certify", "--audit", "--n", "100", "--end", "11"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "rs-onnx-default-certify.tsv.meta.json").read_text())
    assert meta["seed"] is None and meta["audit"]["entropy"].startswith("fresh")


def test_sequential_mode_with_audit(digits):
    _, model, data = digits
    p = run.prepare(
        RunConfig(
            model=model, data=data, sigma=0.25, n0=10, n=400, end=3, audit=True, sequential=True, batch_size=128
        ).validate()
    )
    assert p.smoothed.audit
    certs = sequential_certify_many(
        p.smoothed, [p.data.image(i) for i in range(3)], [0, 1, 2], 10, 400, 0.001, (0.25, 0.5)
    )
    assert all(c.n <= 400 for c in certs) and any(c.predict == p.data.labels[i] for i, c in enumerate(certs))


def test_ray_audit_matches_local(ray_cluster, digits, tmp_path):
    from rs_onnx.distributed import ray_backend

    _, model, data = digits
    values = {
        "model": model,
        "data": data,
        "sigma": 0.25,
        "n0": 10,
        "n": 150,
        "end": 6,
        "audit": True,
        "batch_size": 200,
    }
    local = run.prepare(RunConfig(**values).validate())
    run.execute(local, "certify", tmp_path / "local.tsv")
    seeded = dict(values, seed=local.smoothed.entropy, audit_seed_override=True)
    meta = run.execute(
        run.prepare(RunConfig(**seeded).validate()), "certify", tmp_path / "ray.tsv", backend=ray_backend(workers=2)
    )
    assert meta["status"] == "complete" and meta["audit"]["batched"] is True

    def strip(path):
        lines = [line.split("\t") for line in path.read_text().splitlines()]
        t = lines[0].index("time")
        return [line[:t] + line[t + 1 :] for line in lines]

    assert strip(tmp_path / "ray.tsv") == strip(tmp_path / "local.tsv")


def test_audit_refuses_device_noise_sampler():
    clf = _Fixed((4,))
    clf.device_noise = True
    with pytest.raises(ConfigError, match="device-noise"):
        SmoothedClassifier(clf, SIGMA, audit=True, noise_threads=0).sampler((4,))


def test_onnx_file_roundtrip_shapes():
    m = om.low_bits_detector_model()
    onnx.checker.check_model(m)
    assert len(m.graph.node) == 12


def test_predict_and_resume_with_audit(digits, tmp_path):
    _, model, data = digits
    out = tmp_path / "p.tsv"
    r = _invoke(["-q", "predict", model, data, "--audit", "--n", "100", "--end", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["mode"] == "predict" and meta["audit"]["batched"] is True and len(out.read_text().splitlines()) == 4
    # resume adopts the recorded (fresh) entropy: the continued run equals one uninterrupted run
    cert = tmp_path / "c.tsv"
    args = ["-q", "certify", model, data, "--audit", "--n0", "10", "--n", "100", "--end", "5", "--out", str(cert)]
    assert _invoke(args).exit_code == 0
    full = cert.read_text().splitlines()
    entropy = json.loads(Path(str(cert) + ".meta.json").read_text())["entropy"]
    cert.write_text("\n".join(full[:3]) + "\n")  # as if stopped after two examples (a crash: no digest since)
    meta = json.loads(Path(str(cert) + ".meta.json").read_text())
    meta["status"] = "running"
    del meta["rows_digest"]
    Path(str(cert) + ".meta.json").write_text(json.dumps(meta))
    r = _invoke(args + ["--resume"])
    assert r.exit_code == 0, r.output
    t = full[0].split("\t").index("time")
    strip = [[c for i, c in enumerate(line.split("\t")) if i != t] for line in full]
    assert [[c for i, c in enumerate(line.split("\t")) if i != t] for line in cert.read_text().splitlines()] == strip
    assert json.loads(Path(str(cert) + ".meta.json").read_text())["entropy"] == entropy
    # a resume without --audit is refused: the audit flag decides the results
    with pytest.raises(ConfigError, match="audit"):
        _invoke(
            [
                "-q",
                "certify",
                model,
                data,
                "--seed",
                "0",
                "--n0",
                "10",
                "--n",
                "100",
                "--end",
                "5",
                "--out",
                str(cert),
                "--resume",
            ]
        )
