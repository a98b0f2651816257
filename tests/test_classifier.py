"""Tests of rs_onnx.classifier.OnnxClassifier on tiny models and on the real models in ../shared."""

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rs_onnx.classifier import BATCH_MODES, Classifier, OnnxClassifier, working_providers
from rs_onnx.errors import ConfigError, DataError, DeviceError, ModelError
from tests import onnx_models as om

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 12)).astype(np.float32)
B = RNG.normal(size=3).astype(np.float32)


def expected(x, w=W, b=B):
    return om.numpy_scores(x, w, b).argmax(1)


def rand(*shape):
    return RNG.random(shape, dtype=np.float32)


def load(tmp_path, model, name="m.onnx", **kw):
    return OnnxClassifier(om.save(model, tmp_path / name), device="cpu", **kw)


def one_by_one(clf, x):
    return np.concatenate([clf.predict(x[i : i + 1]) for i in range(len(x))])


# ------------------------------------------------------------------ batch handling
def test_fixed_batch_reshape_is_rewritten(tmp_path):
    clf = load(tmp_path, om.reshape_model(W, B, input_shape=(3, 4), batch=1))
    assert clf.batch_mode == "rewritten" and clf.input_shape == (3, 4) and clf.num_classes == 3
    x = rand(1000, 3, 4)
    pred = clf.predict(x)
    assert pred.dtype == np.int64 and pred.shape == (1000,)
    np.testing.assert_array_equal(pred, expected(x))
    np.testing.assert_array_equal(pred[:50], one_by_one(clf, x[:50]))
    assert isinstance(clf, Classifier)


@pytest.mark.parametrize("batch", ["unk__17", "batch_size", "N", None])
def test_symbolic_batch_is_dynamic(tmp_path, batch):
    clf = load(tmp_path, om.linear_model(W, B, batch=batch))
    assert clf.batch_mode == "dynamic" and clf.input_shape == (12,)
    x = rand(300, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))
    assert "batched_ms" in clf.load_timings and "per_sample_ms" in clf.load_timings


def test_initializers_listed_as_inputs(tmp_path):
    clf = load(tmp_path, om.ir3_model(W, B))
    assert clf.batch_mode == "rewritten" and clf.input_name == "x"
    x = rand(257, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))


@pytest.mark.parametrize(
    "builder",
    [
        lambda: om.reshape_model(W, B, batch="N"),  # Reshape to a hard-coded [1, D] behind a dynamic input: fails
        lambda: om.batch_mixing_model(W, B),  # ReduceMean over the batch axis: runs, disagrees
    ],
)
def test_dynamic_batch_that_lies_falls_back(tmp_path, caplog, builder):
    with caplog.at_level(logging.WARNING, logger="rs_onnx.loader"):
        clf = load(tmp_path, builder())
    assert clf.batch_mode == "per-sample"
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "per-sample" in warning and "ms per example" in warning
    x = rand(40, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))


def test_rewrite_that_still_fails_falls_back(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rs_onnx.loader"):
        clf = load(tmp_path, om.concat_model(W, B, batch=1))
    assert clf.batch_mode == "per-sample" and "rewritten model" in caplog.text
    x = rand(20, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))


@pytest.mark.parametrize("batch, mode", [(1, "rewritten"), ("N", "dynamic")])
def test_external_data(tmp_path, batch, mode):
    path = tmp_path / "sub" / "ext.onnx"
    path.parent.mkdir()
    onnx.save(
        om.reshape_model(W, B, batch=batch, shape=[1, -1] if batch == 1 else [-1, 12]),
        str(path),
        save_as_external_data=True,
        location="ext.bin",
        size_threshold=64,
    )
    assert any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.load(str(path), load_external_data=False).graph.initializer
    )
    clf = OnnxClassifier(path, device="cpu")
    assert clf.batch_mode == mode
    x = rand(30, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))


def test_batch_mixing_warning_says_how_much_slower(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rs_onnx.loader"):
        load(tmp_path, om.batch_mixing_model(W, B))
    msg = caplog.records[-1].getMessage()
    assert any(w in msg for w in ("x slower than", "x faster than", "as fast as")) and "\n" not in msg


def test_fallback_cost_says_faster_when_per_sample_runs_are_faster():
    """The per-sample fallback's cost: "0.8x slower" was printed when one-by-one runs were faster."""
    from rs_onnx.loader import fallback_cost

    assert fallback_cost(2.0, 1.0).startswith("about 2.0x slower than batched runs (2 vs 1 ms")
    faster = fallback_cost(0.8, 1.0)
    assert "slower" not in faster and faster.startswith("about 1.2x faster than batched runs")
    assert fallback_cost(1.0, 1.01).startswith("about as fast as batched runs")
    assert "no batched timing" in fallback_cost(3.0, None)


def test_verify_batch_false_trusts_the_model(tmp_path):
    clf = load(tmp_path, om.batch_mixing_model(W, B), verify_batch=False)
    assert clf.batch_mode == "dynamic"


def test_fixed_batch_above_one_is_padded(tmp_path):
    clf = load(tmp_path, om.linear_model(W, B, batch=4))
    assert clf.batch_mode == "fixed" and clf.input_shape == (12,)
    x = rand(10, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))


def test_no_batch_dim_runs_one_by_one(tmp_path):
    clf = load(tmp_path, om.unbatched_model(W, B))
    assert clf.batch_mode == "per-sample" and clf.input_shape == (12,) and clf.num_classes == 3
    x = rand(9, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))


def test_max_batch_chunks(tmp_path):
    clf = load(tmp_path, om.linear_model(W, B, batch="N"), max_batch=7)
    x = rand(50, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))
    assert clf.predict(x[:0]).shape == (0,)


def test_symbolic_feature_dims_need_input_shape(tmp_path):
    model = om.linear_model(W, B, batch="N")
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "D"
    path = om.save(model, tmp_path / "sym.onnx")
    with pytest.raises(ModelError, match=r"\[D\], not all fixed; expected --input-shape"):
        OnnxClassifier(path, device="cpu")
    clf = OnnxClassifier(path, device="cpu", input_shape=(12,))
    x = rand(5, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))


# ------------------------------------------------------------------ outputs
def test_softmax_output_two_classes(tmp_path):
    w = RNG.normal(size=12).astype(np.float32)
    clf = load(tmp_path, om.linear_model(w, 0.3, batch="N", output="probs"))
    assert clf.output_kind == "scores" and clf.num_classes == 2
    x = rand(100, 12) - 0.5
    np.testing.assert_array_equal(clf.predict(x), (x @ w + 0.3 > 0).astype(np.int64))
    np.testing.assert_allclose(clf.scores(x).sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("keepdims", [False, True])
def test_index_outputs(tmp_path, keepdims):
    clf = load(tmp_path, om.index_model(W, B, keepdims=keepdims))
    assert clf.output_kind == "indices" and clf.num_classes is None
    x = rand(64, 12)
    classes, finite = clf.predict_with_validity(x)
    np.testing.assert_array_equal(classes, expected(x))
    assert finite.all()
    with pytest.raises(ModelError, match="indices"):
        clf.scores(x)


def test_two_outputs_need_output_name(tmp_path):
    path = om.save(om.two_output_model(W, B), tmp_path / "two.onnx")
    with pytest.raises(ModelError, match="output_name") as info:
        OnnxClassifier(path, device="cpu")
    assert "'logits_out'" in str(info.value) and "'probs'" in str(info.value) and "\n" not in str(info.value)
    clf = OnnxClassifier(path, device="cpu", output_name="probs")
    assert clf.output_name == "probs"
    x = rand(20, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))
    with pytest.raises(ConfigError, match="'nope'"):
        OnnxClassifier(path, device="cpu", output_name="nope")


def test_sklearn_like_outputs(tmp_path):
    clf = load(tmp_path, om.sklearn_like_model(W, B, zipmap=True))  # a ZipMap output is not a candidate
    assert clf.output_name == "label" and clf.output_kind == "indices"
    x = rand(40, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))
    assert clf.num_classes == W.shape[0]  # from ZipMap/LinearClassifier's class labels 0..K-1, not unknown
    clf = load(tmp_path, om.sklearn_like_model(W, B, zipmap=False), name="nozip.onnx", output_name="probabilities")
    np.testing.assert_array_equal(clf.predict(x), expected(x))


def test_label_and_probabilities_pair_picks_the_label_when_they_agree(tmp_path, caplog):
    """skl2onnx zipmap=False / onnxmltools: int64 'label' [N] + 'probabilities' [N, K] was refused as ambiguous."""
    with caplog.at_level(logging.INFO, logger="rs_onnx.model_io"):
        clf = load(tmp_path, om.sklearn_like_model(W, B, zipmap=False), name="nozip.onnx")
    assert clf.output_name == "label" and clf.output_kind == "indices" and clf.num_classes == W.shape[0]
    x = rand(40, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))
    msg = next(r.getMessage() for r in caplog.records if "using 'label'" in r.getMessage())
    assert "equals the argmax of 'probabilities' on all 8 load-time trial inputs" in msg
    assert all(r.levelno < logging.WARNING for r in caplog.records if r.name == "rs_onnx.model_io")


def _disagreeing_pair(labels=None):
    """'label' from a LinearClassifier and 'probabilities' = Softmax(-scores): argmax disagrees with the label."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    k = W.shape[0]
    nodes = [
        h.make_node(
            "LinearClassifier",
            ["x"],
            ["label", "raw"],
            domain="ai.onnx.ml",
            coefficients=W.ravel().tolist(),
            intercepts=B.tolist(),
            classlabels_ints=labels or list(range(k)),
        ),
        h.make_node("Neg", ["raw"], ["neg"]),
        h.make_node("Softmax", ["neg"], ["probabilities"], axis=1),
    ]
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", W.shape[1]])],
        [
            h.make_tensor_value_info("label", T.INT64, ["N"]),
            h.make_tensor_value_info("probabilities", T.FLOAT, ["N", k]),
        ],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13), h.make_opsetid("ai.onnx.ml", 1)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_label_and_probabilities_that_disagree_keep_the_label_and_warn(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rs_onnx.model_io"):
        clf = load(tmp_path, _disagreeing_pair(), name="svc_like.onnx")
    assert clf.output_name == "label"
    x = rand(30, 12)
    np.testing.assert_array_equal(clf.predict(x), expected(x))  # the label: the model's own decision
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "differs from the argmax of 'probabilities' on 8 of 8" in warn[0]
    assert "--output-name probabilities" in warn[0] and "\n" not in warn[0]
    # class labels that are not 0..K-1: K is unknown (indices 30, 31, ... are not counted as "no class")
    clf = load(tmp_path, _disagreeing_pair(list(range(30, 30 + W.shape[0]))), name="shifted.onnx")
    assert clf.output_name == "label" and clf.num_classes is None
    np.testing.assert_array_equal(clf.predict(x), expected(x) + 30)


def test_ambiguous_outputs_name_the_flag(tmp_path):
    path = om.save(om.two_output_model(W, B), tmp_path / "two.onnx")
    with pytest.raises(ModelError, match="--output-name"):
        OnnxClassifier(path, device="cpu")


def test_output_not_shaped_like_classes(tmp_path):
    with pytest.raises(ModelError) as info:
        load(tmp_path, om.shaped_output_model(out_shape=(10, 3)))
    msg = str(info.value)
    assert "[N, 10, 3]" in msg and "expected class scores shaped [N, K]" in msg and "\n" not in msg


def test_trailing_unit_dims_are_flattened(tmp_path):
    clf = load(tmp_path, om.shaped_output_model(d=4, out_shape=(5, 1, 1)))
    assert clf.num_classes == 5
    x = rand(6, 4)
    np.testing.assert_array_equal(clf.predict(x), clf.scores(x).argmax(1))


def test_non_finite_rows(tmp_path):
    clf = load(tmp_path, om.linear_model(W, B, batch="N"))
    x = rand(5, 12)
    x[2, 3] = np.nan
    x[4, 0] = np.inf
    classes, finite = clf.predict_with_validity(x)
    np.testing.assert_array_equal(finite, [True, True, False, True, False])
    pred = clf.predict(x)
    assert pred[2] == -1 and pred[4] == -1
    np.testing.assert_array_equal(pred[finite], expected(x[finite]))


def test_argmax_in_graph(tmp_path):
    clf = load(tmp_path, om.reshape_model(W, B, batch=1), argmax_in_graph=True)
    x = rand(100, 12)
    x[7, 1] = np.nan
    pred = clf.predict(x)
    ok = np.arange(100) != 7
    assert pred[7] == -1
    np.testing.assert_array_equal(pred[ok], expected(x)[ok])
    np.testing.assert_allclose(clf.scores(x[ok]), om.numpy_scores(x[ok], W, B), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ inputs
def test_several_inputs_need_extra_inputs(tmp_path):
    path = om.save(om.two_input_model(W, B), tmp_path / "two_in.onnx")
    with pytest.raises(ModelError, match="extra_inputs") as info:
        OnnxClassifier(path, device="cpu")
    assert "'offset'" in str(info.value)
    with pytest.raises(ModelError, match="offset"):
        OnnxClassifier(path, device="cpu", input_name="x")
    offset = np.array([0.0, 0.0, 0.4], np.float32)
    clf = OnnxClassifier(path, device="cpu", extra_inputs={"offset": offset})
    assert clf.input_name == "x" and clf.batch_mode == "dynamic"
    x = rand(30, 12)
    np.testing.assert_array_equal(clf.predict(x), (om.numpy_scores(x, W, B) + offset).argmax(1))
    clf = OnnxClassifier(path, device="cpu", extra_inputs={"offset": offset[None]})  # with a batch 1 axis
    np.testing.assert_array_equal(clf.predict(x), (om.numpy_scores(x, W, B) + offset).argmax(1))
    with pytest.raises(ConfigError, match="'bogus'"):
        OnnxClassifier(path, device="cpu", extra_inputs={"offset": offset, "bogus": offset})


def test_predict_checks_shape_and_dtype(tmp_path):
    clf = load(tmp_path, om.linear_model(W, B, input_shape=(3, 4), batch="N"))
    with pytest.raises(DataError, match=r"\[5, 12\].*expected \[B, 3, 4\]"):
        clf.predict(rand(5, 12))
    x = rand(5, 3, 4)
    np.testing.assert_array_equal(clf.predict(x.astype(np.float64)), expected(x))
    with pytest.raises(DataError, match="complex128"):
        clf.predict(x.astype(np.complex128))


def test_uint8_input(tmp_path):
    clf = load(tmp_path, om.uint8_model(W, B))
    assert clf.input_dtype == np.uint8
    x = RNG.integers(0, 256, (20, 12)).astype(np.uint8)
    np.testing.assert_array_equal(clf.predict(x), expected((x / 255.0 - 0.5) / 0.25))
    with pytest.raises(DataError, match="float32"):
        clf.predict(x.astype(np.float32))


# ------------------------------------------------------------------ files, devices, metadata
@pytest.mark.parametrize("content", [b"not an onnx model, just text\n", None])
def test_bad_files(tmp_path, content):
    path = tmp_path / "bad.onnx"
    data = om.linear_model(W, B).SerializeToString()
    path.write_bytes(content if content is not None else data[: len(data) // 2])
    with pytest.raises(ModelError, match="bad.onnx"):
        OnnxClassifier(path, device="cpu")
    with pytest.raises(ModelError, match="no such file"):
        OnnxClassifier(tmp_path / "missing.onnx", device="cpu")


def test_cuda_without_gpu_is_an_error(tmp_path):
    if "CUDAExecutionProvider" in working_providers():
        pytest.skip("a CUDA GPU works here, so device='cuda' is not an error")
    path = om.save(om.linear_model(W, B), tmp_path / "m.onnx")
    with pytest.raises(DeviceError, match="cuda") as info:
        OnnxClassifier(path, device="cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="'gpu'"):
        OnnxClassifier(path, device="gpu")
    clf = OnnxClassifier(path, device="auto")
    assert clf.device == "cpu" and clf.providers == ["CPUExecutionProvider"]


def test_signature_and_metadata(tmp_path):
    model = om.linear_model(W, B, batch=1)
    model.metadata_props.add(key="dataset", value="toy")
    clf = load(tmp_path, model)
    sig = clf.signature()
    json.dumps(sig)
    assert sig["input_name"] == "x" and sig["input_shape"] == [12] and sig["input_dtype"] == "float32"
    assert sig["output_kind"] == "scores" and sig["batch_mode"] == "rewritten" and sig["num_classes"] == 3
    assert sig["providers"] == ["CPUExecutionProvider"] and len(sig["sha256"]) == 64
    assert clf.metadata == {"dataset": "toy"} and clf.device == "cpu" and clf.device_name
    assert "rewritten" in repr(clf)


# ------------------------------------------------------------------ real models
from tests.conftest import SHARED  # noqa: E402 - ../shared, found in one place

REAL = sorted((SHARED / "models").glob("*/*.onnx"))
SKIP_REAL = pytest.mark.skip(reason=f"{SHARED / 'models'} is absent: third-party models live outside the repo")
MODES = {"vit_pgd_2_3_16.onnx": "dynamic"}  # every other shared model has its batch fixed at 1
CIFAR_NORM = {  # mean, std per MODELS.md
    "resnet_4b.onnx": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "vit_pgd_2_3_16.onnx": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "oval21_cifar_wide_kw.onnx": ((0.485, 0.456, 0.406), (0.225, 0.225, 0.225)),
    "sri_resnet_a.onnx": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}


def real_data(path: Path, clf, n: int):
    """(x [n, *input_shape] float32, labels [n]) from ../shared/data, or skip."""
    if path.parent.name == "mnist":
        file = SHARED / "data" / "mnist_test.npz"
        if not file.is_file():
            pytest.skip(f"{file} is absent")
        with np.load(file) as d:
            x, y = d["images"][:n] / np.float32(255), d["labels"][:n]
    else:
        file = SHARED / "data" / "cifar10_test_first1017.npz"
        if not file.is_file() or path.name not in CIFAR_NORM:
            pytest.skip(f"{file} is absent or {path.name} has no known normalisation")
        mean, std = (np.array(v, np.float32)[:, None, None] for v in CIFAR_NORM[path.name])
        with np.load(file) as d:
            x, y = (d["images"][:n].transpose(0, 3, 1, 2) / np.float32(255) - mean) / std, d["labels"][:n]
    return x.reshape(n, *clf.input_shape).astype(np.float32), y.astype(np.int64)


@pytest.mark.parametrize("path", REAL or [pytest.param(None, marks=SKIP_REAL)], ids=lambda p: p and p.name)
def test_real_model(path):
    clf = OnnxClassifier(path, device="cpu")
    assert clf.batch_mode == MODES.get(path.name, "rewritten") and clf.batch_mode in BATCH_MODES
    assert clf.num_classes == 10
    x, y = real_data(path, clf, 200)
    pred = clf.predict(x)
    np.testing.assert_array_equal(pred[:50], clf.predict(x[:50]))
    np.testing.assert_array_equal(pred[:50], one_by_one(clf, x[:50]))
    accuracy = float((pred == y).mean())
    assert accuracy >= (0.9 if path.parent.name == "mnist" else 0.45), f"{path.name}: accuracy {accuracy:.3f}"


@pytest.mark.skipif(not (SHARED / "models" / "mnist" / "mnist-8.onnx").is_file(), reason="../shared/models is absent")
def test_mnist8_at_batch_1000():
    path = SHARED / "models" / "mnist" / "mnist-8.onnx"
    clf = OnnxClassifier(path, device="cpu")
    assert clf.batch_mode == "rewritten"
    x, y = real_data(path, clf, 1000)
    pred = clf.predict(x)
    assert (pred == y).mean() >= 0.97
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = [int(original.run(None, {"Input3": x[i : i + 1]})[0].argmax()) for i in range(1000)]
    np.testing.assert_array_equal(pred, ref)


@pytest.mark.parametrize("io_binding", [False, True])
def test_a_stop_request_ends_every_model_call(tmp_path, monkeypatch, io_binding):
    # Ctrl-C / SIGTERM set the terminate flag of the run options rs_onnx.stopping hands out; the IO-binding
    # runner (the default on CUDA) once ran without them, so a signal could not stop a long bound run.
    import rs_onnx.stopping as stopping

    clf = load(tmp_path, om.reshape_model(W, B, batch=1), io_binding=io_binding)

    def stopped(log_severity_level=None):
        options = ort.RunOptions()
        options.terminate = True
        return options

    monkeypatch.setattr(stopping, "run_options", stopped)
    with pytest.raises(Exception, match="(?i)terminat"):
        clf.predict(rand(4, 12))
