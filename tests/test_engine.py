"""The sampling engine: the same counts as a simple reference loop whatever the batch size, noise threads,
padding or IO binding; fp16; on-device noise (refusals, the graph prefix, the sampler's wiring); the
automatic batch size; out-of-memory halving; memory bounded by the ring, not by n."""

import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rs_onnx import graph, noise
from rs_onnx.classifier import OnnxClassifier
from rs_onnx.cuda import BoundRunner, OutputSpec, is_out_of_memory
from rs_onnx.errors import ConfigError
from rs_onnx.preprocess import Preprocessor, PreprocessSpec
from rs_onnx.sampling import HostClassifier, Sampler, Task, auto_batch_size, default_noise_threads, probe_batch_size
from tests import onnx_models as om

SIGMA, SEED = 0.5, 11


def conv_model(hw=6, channels=4, classes=3, seed=0, sqrt=False, batch="N"):
    """x [N, 1, hw, hw] -> (Sqrt ->) Conv 3x3 -> Relu -> Flatten -> MatMul -> Add -> scores [N, classes]."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(channels, 1, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(channels * hw * hw, classes)).astype(np.float32) * 0.3
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(rng.normal(size=classes).astype(np.float32), "b"),
    ]
    nodes = [helper.make_node("Sqrt", ["x"], ["xs"])] if sqrt else []
    nodes += [
        helper.make_node("Conv", ["xs" if sqrt else "x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "fc"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["scores"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, hw, hw])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, classes])
    return om._model(nodes, [x], [y], inits)


@pytest.fixture(scope="module")
def conv_path(tmp_path_factory):
    return om.save(conv_model(), tmp_path_factory.mktemp("engine") / "conv.onnx")


def tasks_for(pre, ns=(2345, 17, 1001), examples=(0, 5, 9), phase=1, seed=0):
    rng = np.random.default_rng(seed)
    return [Task(pre.clean(rng.random(pre.image_shape, dtype=np.float32)), e, phase, n) for e, n in zip(examples, ns)]


def reference_counts(clf, pre, tasks, sigma=SIGMA, entropy=SEED):
    """Each block drawn with noise.draw, preprocessed, classified as one batch, counted with bincount."""
    k = int(clf.num_classes)
    out = np.zeros((len(tasks), k + 1), np.int64)
    size = noise.block_size_for(int(np.prod(pre.model_shape)))
    for s, t in enumerate(tasks):
        for block in noise.split(s, t.example, t.phase, t.n, size):
            x = pre.noisy(t.clean, noise.draw(entropy, block, pre.model_shape), sigma)
            c = clf.predict(x)
            out[s] += np.bincount(np.where(c < 0, k, c), minlength=k + 1)
    return out


def preprocessor(clf, spec=None, image_shape=None):
    return Preprocessor(spec or PreprocessSpec(), image_shape or clf.input_shape, clf.input_shape, clf.input_dtype)


# ------------------------------------------------------------------ the engine against the reference loop
@pytest.mark.parametrize(
    "batch,threads,pad,io_binding",
    [
        (7, 0, False, False),
        (64, 2, True, False),
        (1000, 1, False, True),
        (333, 3, True, True),
        (5000, 2, False, False),
        (1, 1, True, True),
    ],
)
def test_engine_matches_reference_loop(conv_path, batch, threads, pad, io_binding):
    clf = OnnxClassifier(conv_path, device="cpu", io_binding=io_binding)
    pre = preprocessor(clf)
    ns = (2345, 17, 1001) if batch > 1 else (250, 3, 120)
    tasks = tasks_for(pre, ns)
    ref = reference_counts(clf, pre, tasks)
    got = Sampler(clf, pre, SIGMA, SEED, batch, threads, pad=pad).count(tasks)
    np.testing.assert_array_equal(got, ref)
    assert got.sum() == sum(ns)


def test_engine_counts_nonfinite_rows_like_the_reference(tmp_path):
    clf = OnnxClassifier(
        om.save(conv_model(sqrt=True), tmp_path / "sqrt.onnx"), device="cpu", io_binding=True, argmax_in_graph=True
    )
    pre = preprocessor(clf)
    tasks = tasks_for(pre, (1500, 300), (3, 4))
    got = Sampler(clf, pre, 0.05, SEED, 256, 2).count(tasks)
    np.testing.assert_array_equal(got, reference_counts(clf, pre, tasks, sigma=0.05))
    assert got[:, -1].sum() > 0 and got[:, :-1].sum() > 0  # some rows NaN (sqrt of a negative), some not


def test_engine_with_integer_inputs_matches_reference(tmp_path):
    w = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    clf = OnnxClassifier(om.save(om.uint8_model(w), tmp_path / "u8.onnx"), device="cpu")
    pre = preprocessor(clf, PreprocessSpec(scale=255.0), (16,))
    assert pre.dtype == np.uint8
    tasks = tasks_for(pre, (2100, 450), (1, 2))
    for batch, threads in [(100, 0), (777, 2)]:
        np.testing.assert_array_equal(
            Sampler(clf, pre, 0.2, SEED, batch, threads).count(tasks), reference_counts(clf, pre, tasks, sigma=0.2)
        )


def test_engine_on_a_fixed_batch_model(tmp_path):
    w = np.random.default_rng(2).normal(size=(3, 12)).astype(np.float32)
    clf = OnnxClassifier(om.save(om.linear_model(w, batch=5), tmp_path / "fixed.onnx"), device="cpu")
    assert clf.batch_mode == "fixed"
    pre = preprocessor(clf)
    tasks = tasks_for(pre, (1234, 56), (0, 1))
    np.testing.assert_array_equal(
        Sampler(clf, pre, SIGMA, SEED, 64, 1, pad=True).count(tasks), reference_counts(clf, pre, tasks)
    )


def test_noise_drawn_in_pieces_equals_one_draw():
    block = noise.Block(0, example=3, phase=1, block=7, size=101)
    whole = noise.draw(5, block, (3, 5))
    rng, out = noise.generator(5, block), np.empty((101, 3, 5), np.float32)
    for lo, hi in [(0, 1), (1, 40), (40, 101)]:
        noise.fill(rng, out[lo:hi])
    np.testing.assert_array_equal(out, whole)


def test_memory_is_bounded_by_the_ring_not_by_n(conv_path):
    clf = OnnxClassifier(conv_path, device="cpu")
    pre = preprocessor(clf)

    def traced_peak(n):
        sampler = Sampler(clf, pre, SIGMA, SEED, 256, 1)
        tracemalloc.start()
        sampler.count(tasks_for(pre, (n,), (0,)))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    small, large = traced_peak(3000), traced_peak(60_000)
    assert large < small + 512 * 1024, (small, large)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8])
@pytest.mark.parametrize("batch,n,threads", [(256, 5000, 2), (2048, 6000, 2), (1000, 3000, 0), (50, 20_000, 3)])
def test_host_bytes_is_what_the_sampler_allocates(dtype, batch, n, threads):
    """The memory check's estimate (sampling.host_bytes) against the peak numpy allocations of a count,
    measured: within 2% for float32 (noise drawn in the ring), an overestimate of at most 30% otherwise
    (the per-thread noise buffer and the block's cast are counted as if all were held at once)."""
    from rs_onnx.sampling import host_bytes

    class Stand(HostClassifier):
        input_shape, input_dtype, num_classes = (3, 32, 32), np.dtype(dtype), 10

        def predict(self, x):
            return np.zeros(len(x), np.int64)

    clf = Stand()
    pre = Preprocessor(PreprocessSpec(), clf.input_shape, clf.input_shape, dtype)
    sampler = Sampler(clf, pre, SIGMA, SEED, batch, threads)
    tasks = [Task(pre.clean(np.full(clf.input_shape, 0.5, np.float32)), 0, 1, n)]
    tracemalloc.start()
    sampler.count(tasks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    estimate = host_bytes(batch, n, clf.input_shape, dtype, noise_threads=threads, num_classes=10)
    assert 0.98 * peak <= estimate <= (1.02 if dtype == np.float32 else 1.3) * peak, (estimate, peak)


# ------------------------------------------------------------------ IO binding
def test_bound_runner_reuses_buffers_and_matches_plain_runs(conv_path):
    session = ort.InferenceSession(str(conv_path), providers=["CPUExecutionProvider"])
    runner = BoundRunner(session, "x", [OutputSpec("scores", np.dtype(np.float32), (3,))])
    rng = np.random.default_rng(0)
    x1, x2, x3 = (rng.random((b, 1, 6, 6), dtype=np.float32) for b in (8, 8, 5))
    out1 = runner.run(x1)[0]
    binding = runner.binding
    out2 = runner.run(x2)[0]
    assert runner.batch == 8 and runner.binding is binding
    np.testing.assert_allclose(out1, session.run(None, {"x": x1})[0], rtol=1e-6)
    np.testing.assert_allclose(out2, session.run(None, {"x": x2})[0], rtol=1e-6)
    assert not np.shares_memory(out1, out2)  # outputs belong to the caller
    np.testing.assert_allclose(runner.run(x3)[0], session.run(None, {"x": x3})[0], rtol=1e-6)
    assert runner.batch == 5
    with pytest.raises(ValueError):
        BoundRunner(session, "x", [OutputSpec("scores", np.dtype(np.float32), (3,))], fixed_shape=True)


def test_io_binding_classifier_with_extra_inputs(tmp_path):
    w = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    path = om.save(om.two_input_model(w), tmp_path / "two.onnx")
    extra = {"offset": np.array([0.0, 1.0, -1.0], np.float32)}
    plain = OnnxClassifier(path, device="cpu", input_name="x", extra_inputs=extra)
    bound = OnnxClassifier(path, device="cpu", input_name="x", extra_inputs=extra, io_binding=True)
    x = np.random.default_rng(4).random((37, *plain.input_shape), dtype=np.float32)
    np.testing.assert_array_equal(bound.predict(x), plain.predict(x))
    assert bound.signature()["io_binding"] is True and plain.signature()["io_binding"] is False


# ------------------------------------------------------------------ fp16
def test_fp16_model_loads_agrees_with_fp32_and_says_so(conv_path):
    fp32 = OnnxClassifier(conv_path, device="cpu")
    fp16 = OnnxClassifier(conv_path, device="cpu", float_type="fp16", io_binding=True)
    x = np.random.default_rng(5).random((300, 1, 6, 6), dtype=np.float32)
    assert (fp16.predict(x) == fp32.predict(x)).mean() >= 0.9
    assert fp16.input_dtype == np.float32  # float32 I/O kept
    sig = fp16.signature()
    assert sig["precision"] == "fp16" and "fp16" in sig["certified_model"] and len(sig["fp16_sha256"]) == 64
    assert fp32.signature()["precision"] == "fp32" and fp16.fp16_agreement is not None
    converted = graph.to_float16(conv_model())
    assert any(t.data_type == TensorProto.FLOAT16 for t in converted.graph.initializer)
    pre = preprocessor(fp16)
    tasks = tasks_for(pre, (500,), (0,))
    np.testing.assert_array_equal(
        Sampler(fp16, pre, SIGMA, SEED, 64, 2).count(tasks), reference_counts(fp16, pre, tasks)
    )


def test_float_type_is_checked_and_its_earlier_name_still_works(conv_path):
    with pytest.raises(ConfigError, match="float type 'bf16'"):
        OnnxClassifier(conv_path, device="cpu", float_type="bf16")
    with pytest.raises(ConfigError, match="float type 'bf16'"):
        OnnxClassifier(conv_path, device="cpu", precision="bf16")
    assert OnnxClassifier(conv_path, device="cpu", precision="fp16").float_type == "fp16"


# ------------------------------------------------------------------ CUDA-only options, refused here
def test_device_noise_is_refused_on_cpu(conv_path):
    with pytest.raises(ConfigError, match="2\\^31"):
        OnnxClassifier(conv_path, device="cpu", device_noise=True)


def test_device_noise_is_refused_with_cuda_graphs(conv_path):
    with pytest.raises(ConfigError, match="same noise"):
        OnnxClassifier(conv_path, device="cuda", device_noise=True, cuda_graph=True, max_batch=64)


def test_cuda_graph_needs_cuda_and_a_batch_size(conv_path):
    with pytest.raises(ConfigError, match="max_batch"):
        OnnxClassifier(conv_path, device="cpu", cuda_graph=True)
    with pytest.raises(ConfigError, match="CUDA device"):
        OnnxClassifier(conv_path, device="cpu", cuda_graph=True, max_batch=64)


def test_noise_prefix_graph_draws_gaussian_noise_on_cpu_session():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])
    model = om._model([helper.make_node("Flatten", ["x"], ["y"], axis=1)], [x], [y], [])
    noisy = graph.prepend_noise(model, "x", gain_shape=(2, 1), seed=7)
    onnx.checker.check_model(noisy)
    assert [i.name for i in noisy.graph.input] == [graph.CLEAN_INPUT, graph.INDEX_INPUT, graph.GAIN_INPUT]
    session = ort.InferenceSession(noisy.SerializeToString(), providers=["CPUExecutionProvider"])
    clean = np.array([np.full((2, 3), 0.25), np.full((2, 3), -1.0)], np.float32)
    index = np.repeat([0, 1], 20_000)
    gain = np.array([[0.5], [2.0]], np.float32)
    out = session.run(None, {graph.CLEAN_INPUT: clean, graph.INDEX_INPUT: index, graph.GAIN_INPUT: gain})[0]
    delta = out.reshape(-1, 2, 3) - clean[index]
    assert abs(delta.mean()) < 0.02
    assert delta[:, 0].std() == pytest.approx(0.5, rel=0.03) and delta[:, 1].std() == pytest.approx(2.0, rel=0.03)
    zero = session.run(
        None, {graph.CLEAN_INPUT: clean, graph.INDEX_INPUT: index[:5], graph.GAIN_INPUT: np.zeros((2, 1), np.float32)}
    )[0]
    np.testing.assert_array_equal(zero, np.tile(clean[0].reshape(1, 6), (5, 1)))


def test_noise_prefix_rounds_and_clips_integer_inputs():
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", 4])
    model = om._model([helper.make_node("Identity", ["x"], ["y"])], [x], [y], [])
    noisy = graph.prepend_noise(model, "x", gain_shape=(4,), seed=1)
    session = ort.InferenceSession(noisy.SerializeToString(), providers=["CPUExecutionProvider"])
    clean = np.array([[250.0, 3.0, 100.0, 100.0]], np.float32)
    out = session.run(
        None,
        {
            graph.CLEAN_INPUT: clean,
            graph.INDEX_INPUT: np.zeros(2000, np.int64),
            graph.GAIN_INPUT: np.array([20.0, 20.0, 0.0, 0.2], np.float32),
        },
    )[0]
    assert out.dtype == np.uint8 and out[:, 0].max() == 255 and out[:, 1].min() == 0
    assert (out[:, 2] == 100).all() and set(np.unique(out[:, 3])) <= {99, 100, 101}


class DeviceNoiseStandIn(HostClassifier):
    """A classifier that draws its own noise (in numpy): class 1 when the first noisy value is positive."""

    device, device_noise, prefers_fixed_batch = "cuda:0", True, False
    input_shape, input_dtype, num_classes = (3,), np.dtype(np.float32), 2

    def __init__(self):
        self.calls, self.rng = [], np.random.default_rng(0)

    def predict(self, x):
        raise AssertionError("host noise path used")

    def predict_noisy(self, clean, index, gain, seed):
        self.calls.append((len(clean), len(index), seed))
        x = clean[index] + self.rng.standard_normal((len(index), 3)).astype(np.float32) * gain
        return (x[:, 0] > 0).astype(np.int64)


@pytest.mark.parametrize("batch,pad", [(64, False), (64, True), (5000, False)])
def test_sampler_feeds_device_noise_classifiers_clean_rows_and_indices(batch, pad):
    clf = DeviceNoiseStandIn()
    pre = Preprocessor(PreprocessSpec(), (3,), (3,), np.float32)
    tasks = [Task(np.full(3, v, np.float32), e, 1, n) for v, e, n in [(50.0, 0, 300), (-50.0, 1, 77), (50.0, 2, 5)]]
    counts = Sampler(clf, pre, 0.5, SEED, batch, 0, pad=pad).count(tasks)
    np.testing.assert_array_equal(counts, [[0, 300, 0], [77, 0, 0], [0, 5, 0]])
    assert all(seed == SEED for _, _, seed in clf.calls)
    assert all(rows == batch for _, rows, _ in clf.calls) if pad else sum(r for _, r, _ in clf.calls) == 382


# ------------------------------------------------------------------ automatic batch size, out of memory
def test_auto_batch_size_picks_a_probed_candidate(conv_path):
    clf = OnnxClassifier(conv_path, device="cpu")
    probe = probe_batch_size(clf, candidates=(8, 16, 32), min_seconds=0.01)
    b = probe["batch_size"]
    assert b in (8, 16, 32) and set(probe["seconds_per_sample"]) <= {"8", "16", "32"}
    pre = preprocessor(clf)
    sampler = Sampler(clf, pre, SIGMA, SEED, b, 1)  # the probe's result is passed down, never read back
    assert sampler.batch_size == b
    tasks = tasks_for(pre, (300,), (0,))
    np.testing.assert_array_equal(sampler.count(tasks), reference_counts(clf, pre, tasks))


class Timed(HostClassifier):
    """A stand-in classifier whose runs take ``us[b]`` microseconds per sample on a fake clock."""

    device, prefers_fixed_batch = "cpu", False
    input_dtype, num_classes, input_shape = np.dtype(np.float32), 2, (3,)

    def __init__(self, us):
        self.us, self.now = us, 0.0

    def perf_counter(self):
        return self.now

    def predict(self, x):
        self.now += self.us[len(x)] * 1e-6 * len(x)
        return np.zeros(len(x), np.int64)


def test_auto_batch_size_takes_the_smallest_size_within_3_percent_of_the_fastest(monkeypatch):
    import rs_onnx.sampling as sampling

    clf = Timed({16: 1.02, 32: 1.05, 64: 1.00, 128: 1.01, 256: 1.2, 512: 1.3, 1024: 0.5})
    monkeypatch.setattr(sampling, "time", clf)
    assert auto_batch_size(clf, candidates=(16, 32, 64, 128, 256, 512, 1024), min_seconds=0) == 16
    clf.now = 0.0
    probe = sampling.probe_batch_size(clf, candidates=(16, 32, 64, 128, 256, 512, 1024), min_seconds=0)
    assert (
        probe["stopped"].startswith("two sizes in a row over 5% slower") and "1024" not in probe["seconds_per_sample"]
    )
    assert not hasattr(clf, "batch_probe")  # returned, never stored on the classifier
    clf = Timed({16: 1.5, 32: 1.04, 64: 1.00, 128: 1.01})
    monkeypatch.setattr(sampling, "time", clf)
    assert auto_batch_size(clf, candidates=(16, 32, 64, 128), min_seconds=0) == 64


class Budgeted(HostClassifier):
    """A stand-in classifier that runs out of memory above ``limit`` rows (CUDA's message)."""

    device, prefers_fixed_batch = "cpu", False
    input_dtype, num_classes = np.dtype(np.float32), 2

    def __init__(self, limit, dim=10):
        self.limit, self.input_shape, self.sizes = limit, (dim,), []

    def predict(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory ; "
                "GPU=0 ; expr=cudaMalloc(&p, size);"
            )
        return (x[:, 0] > 0).astype(np.int64)


def test_auto_batch_size_stops_at_out_of_memory_and_at_the_byte_limit():
    from rs_onnx.sampling import probe_batch_size

    assert auto_batch_size(Budgeted(limit=64), candidates=(16, 32, 64, 128, 256), min_seconds=0.001) <= 64
    probe = probe_batch_size(Budgeted(limit=64), candidates=(16, 32, 64, 128, 256), min_seconds=0.001)
    assert "out of memory" in probe["stopped"] and 128 not in [int(k) for k in probe["seconds_per_sample"]]
    big = Budgeted(limit=10**9, dim=1000)
    assert auto_batch_size(big, candidates=(16, 32, 64, 128), max_bytes=4000 * 32, min_seconds=0.001) <= 32
    with pytest.raises(RuntimeError, match="out of memory"):
        auto_batch_size(Budgeted(limit=4), candidates=(16, 32), min_seconds=0.001)


def test_out_of_memory_halves_the_batch_and_keeps_the_counts():
    pre = Preprocessor(PreprocessSpec(), (10,), (10,), np.float32)
    tasks = [Task(np.full(10, 0.1, np.float32), 0, 1, 1234), Task(np.zeros(10, np.float32), 1, 1, 99)]
    ref = Sampler(Budgeted(limit=10**9), pre, 1.0, SEED, 50, 0).count(tasks)
    clf = Budgeted(limit=50)
    sampler = Sampler(clf, pre, 1.0, SEED, 400, 2)
    np.testing.assert_array_equal(sampler.count(tasks), ref)
    assert sampler._chunk is not None and sampler._chunk <= 50 and max(clf.sizes[-3:]) <= 50


def test_other_errors_propagate():
    class Broken(Budgeted):
        def predict(self, x):
            raise RuntimeError("shape mismatch")

    pre = Preprocessor(PreprocessSpec(), (10,), (10,), np.float32)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Sampler(Broken(0), pre, 1.0, SEED, 64, 1).count([Task(np.zeros(10, np.float32), 0, 1, 500)])


def test_out_of_memory_detection_and_thread_defaults():
    assert is_out_of_memory(RuntimeError("CUDA failure 2: out of memory"))
    assert is_out_of_memory(
        RuntimeError("BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer")
    )
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("Invalid rank for input"))
    assert 1 <= default_noise_threads("cpu") <= 8 and 1 <= default_noise_threads("cuda:0") <= 16


def test_padded_sampler_gives_the_model_one_batch_shape_in_every_phase(conv_path):
    """On CUDA (pad=True) a selection phase of n0 < batch is padded to the batch, not run at a shape of its own:
    each new shape costs the CUDA provider a cuDNN algorithm search (seconds for a ResNet, measured on an H200)."""
    clf = OnnxClassifier(conv_path, device="cpu")
    shapes = []

    class Recording:
        def __getattr__(self, name):
            return getattr(clf, name)

        def predict(self, x):
            shapes.append(len(x))
            return clf.predict(x)

    pre = Preprocessor(PreprocessSpec(), (1, 6, 6), clf.input_shape, clf.input_dtype)
    for phase, n in ((noise.SELECT, 100), (noise.ESTIMATE, 2345)):
        tasks = tasks_for(pre, ns=(n,), examples=(3,), phase=phase)
        padded = Sampler(Recording(), pre, SIGMA, SEED, batch_size=1000, noise_threads=2, pad=True).count(tasks)
        plain = Sampler(clf, pre, SIGMA, SEED, batch_size=1000, noise_threads=2, pad=False).count(tasks)
        np.testing.assert_array_equal(padded, plain)
    assert set(shapes) == {1000}, shapes


def test_the_probe_log_says_which_rule_chose_the_batch_size():
    """64 within 3% of the fastest (128) is chosen, and the log says so (it once said 'past the fastest size')."""
    from rs_onnx.sampling import choose_batch

    best, why = choose_batch({32: 2.0e-6, 64: 1.02e-6, 128: 1.0e-6, 256: 1.1e-6})
    assert best == 64
    assert "smallest size within 3% of the fastest per sample" in why and "128" in why and "2.0% faster" in why
    best, why = choose_batch({32: 2.0e-6, 64: 1.0e-6, 128: 1.5e-6})
    assert (best, why) == (64, "the fastest per sample")
