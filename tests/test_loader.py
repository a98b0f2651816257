"""rs_onnx.loader: the load-time branches a CPU reaches (batch rewrite that cannot be built, batched outputs
that are not rows, fixed batches, undeclared shapes, fp16 with external data, an ArgMax that cannot be
appended). The CUDA-only ones (CUDA graphs, device noise, a CUDA session falling back) run in tests/test_gpu.py."""

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rs_onnx.graph as graph
import rs_onnx.loader as loader
from rs_onnx.classifier import OnnxClassifier
from rs_onnx.errors import ModelError
from tests import onnx_models as om

RNG = np.random.default_rng(5)
W = RNG.normal(size=(3, 12)).astype(np.float32)


def classes(x):
    return om.numpy_scores(x, W).argmax(1)


def x_of(n):
    return RNG.random((n, 12), dtype=np.float32)


def open_model(tmp_path, model, **kw):
    return OnnxClassifier(om.save(model, tmp_path / "m.onnx"), device="cpu", **kw)


def summed_over_the_batch():
    """Declared [N, 3], but ReduceSum over the batch: one row whatever the batch (right at batch 1 only)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W_t"], ["s"]),
        helper.make_node("ReduceSum", ["s", "axes"], ["scores"], keepdims=1),
    ]
    inits = [numpy_helper.from_array(np.ascontiguousarray(W.T), "W_t"), numpy_helper.from_array(np.array([0]), "axes")]
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])
    return om._model(nodes, [om._x((12,), "N")], [out], inits)


def test_batched_outputs_that_are_not_rows_fall_back_per_sample(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rs_onnx.loader"):
        clf = open_model(tmp_path, summed_over_the_batch())
    assert clf.batch_mode == "per-sample"
    assert "gives output 'scores' shaped [1, 3]; expected 8 rows" in caplog.text
    x = x_of(20)
    np.testing.assert_array_equal(clf.predict(x), classes(x))


def test_a_batch_rewrite_that_cannot_be_built_falls_back_per_sample(tmp_path, caplog, monkeypatch):
    def cannot(*args, **kwargs):
        raise ModelError("planted: no rewrite")

    monkeypatch.setattr(graph, "make_batch_dynamic", cannot)
    with caplog.at_level(logging.WARNING, logger="rs_onnx.loader"):
        clf = open_model(tmp_path, om.reshape_model(W, batch=1))
    assert clf.batch_mode == "per-sample" and "cannot be built (planted: no rewrite)" in caplog.text
    assert "no batched timing" in caplog.text and "batched_ms" not in clf.load_timings
    x = x_of(9)
    np.testing.assert_array_equal(clf.predict(x), classes(x))


def test_a_fixed_batch_with_the_whole_shape_given(tmp_path):
    clf = open_model(tmp_path, om.linear_model(W, batch=4), input_shape=(4, 12))
    assert clf.batch_mode == "fixed" and clf.input_shape == (12,)
    x = x_of(10)  # chunks of 4, the last one padded
    np.testing.assert_array_equal(clf.predict(x), classes(x))


def test_a_fixed_batch_whose_output_is_neither_rows_nor_one_example_is_refused(tmp_path):
    # x [4, 12] -> [2, 24] -> [2, 3]: neither 4 rows (a fixed batch) nor one example's classes
    w2 = RNG.normal(size=(24, 3)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["x2"]), helper.make_node("MatMul", ["x2", "W2"], ["y"])]
    inits = [numpy_helper.from_array(np.array([2, 24]), "shape"), numpy_helper.from_array(w2, "W2")]
    model = om._model(nodes, [om._x((12,), 4)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    with pytest.raises(ModelError, match=r"output 'y' has shape \[2, 3\]"):
        open_model(tmp_path, model)


def test_a_scalar_input_is_refused(tmp_path):
    nodes = [helper.make_node("Mul", ["x", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.ones(3, np.float32), "w")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [])
    model = om._model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], inits)
    with pytest.raises(ModelError, match=r"input 'x' has shape \[\]; expected a tensor with a batch dim"):
        open_model(tmp_path, model)
    shapeless = om.linear_model(W, batch="N")  # no shape at all: onnx.checker refuses it first
    shapeless.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(ModelError, match="onnx.checker rejects it"):
        OnnxClassifier(om.save(shapeless, tmp_path / "s.onnx"), device="cpu")


def test_fp16_of_a_model_with_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(om.linear_model(W, batch="N"), path, save_as_external_data=True, location="ext.data", size_threshold=0)
    fp16 = OnnxClassifier(path, device="cpu", float_type="fp16")
    sig = fp16.signature()
    assert sig["precision"] == "fp16" and len(sig["fp16_sha256"]) == 64
    assert fp16.fp16_agreement is not None and fp16.fp16_agreement >= 0.9
    x = x_of(200)
    assert (fp16.predict(x) == classes(x)).mean() >= 0.95


def test_fp16_agreement_that_cannot_be_measured_is_none_with_a_warning(tmp_path, monkeypatch, caplog):
    def fails(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(loader, "classes_of", fails)
    with caplog.at_level(logging.WARNING, logger="rs_onnx.loader"):
        clf = open_model(tmp_path, om.linear_model(W, batch="N"), float_type="fp16")
    assert clf.fp16_agreement is None and "fails on random inputs (planted failure)" in caplog.text
    assert clf.signature()["fp16_agreement_random_inputs"] is None


def test_an_argmax_that_cannot_be_appended_leaves_the_argmax_to_numpy(tmp_path, monkeypatch):
    def cannot(*args, **kwargs):
        raise ModelError("planted: no ArgMax")

    monkeypatch.setattr(graph, "append_argmax", cannot)
    clf = open_model(tmp_path, om.linear_model(W, batch="N"), argmax_in_graph=True)
    x = x_of(30)
    x[3, 0] = np.nan
    want = classes(x)
    want[3] = -1
    np.testing.assert_array_equal(clf.predict(x), want)
    np.testing.assert_allclose(clf.scores(x[4:]), om.numpy_scores(x[4:], W), rtol=1e-5, atol=1e-5)


def test_io_binding_is_off_for_an_input_without_a_batch_dim(tmp_path):
    clf = open_model(tmp_path, om.unbatched_model(W), io_binding=True)
    assert clf.batch_mode == "per-sample" and clf.io_binding is False
    x = x_of(5)
    np.testing.assert_array_equal(clf.predict(x), classes(x))


def test_the_loaded_model_is_frozen(tmp_path):
    loaded = loader.load(om.save(om.linear_model(W, batch="N"), tmp_path / "m.onnx"), device="cpu")
    with pytest.raises(AttributeError):
        loaded.in_graph = True  # type: ignore[misc]
    assert loaded.batching.mode == "dynamic" and loaded.fetch == ["scores"] and loaded.placement.device == "cpu"


def test_a_custom_op_is_refused_in_one_line(tmp_path):
    node = helper.make_node("Evil", ["x"], ["y"], domain="com.evil")
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.evil", 1)])
    model.ir_version = 8
    with pytest.raises(
        ModelError, match="cannot load it .*com.evil:Evil.*custom-op libraries are never loaded"
    ) as info:
        open_model(tmp_path, model)
    assert "\n" not in str(info.value)
