"""Tests of rs_onnx.graph: loading, initializer inputs, batch rewrites, appended ArgMax, describe."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_models as om
from rs_onnx import graph
from rs_onnx.errors import ModelError

from tests.conftest import SHARED

MNIST8 = SHARED / "models" / "mnist" / "mnist-8.onnx"
RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 12)).astype(np.float32)
B = RNG.normal(size=3).astype(np.float32)


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def init_array(model, name):
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


# ------------------------------------------------------------------ load_model
def test_load_model_ok(tmp_path):
    model = graph.load_model(om.save(om.linear_model(W, B), tmp_path / "m.onnx"))
    assert [v.name for v in graph.real_inputs(model)] == ["x"]


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"this is not an onnx model at all, just some text\n" * 3, "ONNX"),
    ],
)
def test_load_model_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=match) as info:
        graph.load_model(path)
    assert "\n" not in str(info.value) and "bad.onnx" in str(info.value)


def test_load_model_truncated(tmp_path):
    data = om.linear_model(RNG.normal(size=(10, 300)), None).SerializeToString()
    path = tmp_path / "trunc.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="trunc.onnx"):
        graph.load_model(path)


def test_load_model_checker_failure(tmp_path):
    node = helper.make_node("Relu", ["undefined"], ["y"])
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "invalid.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="checker"):
        graph.load_model(path)


def test_load_model_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(
        om.linear_model(RNG.normal(size=(10, 300)), None),
        str(path),
        save_as_external_data=True,
        location="ext.weights",
        size_threshold=0,
    )
    model = graph.load_model(path)
    assert graph.has_external_data(model)
    (tmp_path / "ext.weights").rename(tmp_path / "moved.weights")
    with pytest.raises(ModelError, match="ext.weights"):
        graph.load_model(path)


# ------------------------------------------------------------------ initializers listed as inputs
def test_real_inputs_and_strip_ir3():
    model = om.ir3_model(W, B)
    assert len(model.graph.input) == 4
    assert [v.name for v in graph.real_inputs(model)] == ["x"]
    stripped = graph.strip_initializer_inputs(model)
    assert [v.name for v in stripped.graph.input] == ["x"] and stripped.ir_version >= 4
    assert len(model.graph.input) == 4  # original untouched
    onnx.checker.check_model(stripped)


# ------------------------------------------------------------------ make_batch_dynamic
@pytest.mark.parametrize("constant_node", [False, True])
def test_make_batch_dynamic_reshape(constant_node):
    model = om.reshape_model(W, B, input_shape=(3, 4), batch=1, constant_node=constant_node)
    new, changed = graph.make_batch_dynamic(model, "x")
    assert changed
    assert graph.dims(new.graph.input[0]) == [graph.BATCH_DIM, 3, 4]
    assert graph.dims(new.graph.output[0]) == [graph.BATCH_DIM, 3]
    x = RNG.random((1000, 3, 4), dtype=np.float32)
    np.testing.assert_allclose(run(new, {"x": x})[0], om.numpy_scores(x, W, B), rtol=1e-5, atol=1e-5)
    assert graph.dims(model.graph.input[0]) == [1, 3, 4]  # original untouched


def test_make_batch_dynamic_minus_one_becomes_zero():
    model = om.reshape_model(W, B, batch=1, shape=[1, -1])
    new, changed = graph.make_batch_dynamic(model, "x")
    assert changed and init_array(new, "shape").tolist() == [0, -1]
    x = RNG.random((7, 12), dtype=np.float32)
    np.testing.assert_allclose(run(new, {"x": x})[0], om.numpy_scores(x, W, B), rtol=1e-5, atol=1e-5)


def test_make_batch_dynamic_allowzero():
    model = om.reshape_model(W, B, batch=1, shape=[1, -1])
    model.opset_import[0].version = 14
    model.graph.node[0].attribute.append(helper.make_attribute("allowzero", 1))
    new, _ = graph.make_batch_dynamic(model, "x")
    assert helper.get_attribute_value(new.graph.node[0].attribute[0]) == 0
    x = RNG.random((5, 12), dtype=np.float32)
    np.testing.assert_allclose(run(new, {"x": x})[0], om.numpy_scores(x, W, B), rtol=1e-5, atol=1e-5)


def test_make_batch_dynamic_copies_shared_constant():
    """One shape constant [1, K] feeds the input's Reshape and a weight's Reshape: only the first changes."""
    k = 4
    inits = [
        numpy_helper.from_array(np.array([1, k], np.int64), "shape"),
        numpy_helper.from_array(np.arange(k, dtype=np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["xr"]),
        helper.make_node("Reshape", ["bias", "shape"], ["b2"]),
        helper.make_node("Add", ["xr", "b2"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    new, changed = graph.make_batch_dynamic(model, "x")
    assert changed and init_array(new, "shape").tolist() == [1, k]
    assert new.graph.node[0].input[1] != "shape" and new.graph.node[1].input[1] == "shape"
    x = RNG.random((6, k), dtype=np.float32)
    np.testing.assert_allclose(run(new, {"x": x})[0], x + np.arange(k), rtol=1e-6)


def test_make_batch_dynamic_ir3():
    new, changed = graph.make_batch_dynamic(om.ir3_model(W, B), "x")
    assert changed and [v.name for v in new.graph.input] == ["x"]
    x = RNG.random((9, 12), dtype=np.float32)
    np.testing.assert_allclose(run(new, {"x": x})[0], om.numpy_scores(x, W, B), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", ["N", None, 4])
def test_make_batch_dynamic_leaves_other_batches(batch):
    model = om.linear_model(W, B, batch=batch)
    new, changed = graph.make_batch_dynamic(model, "x")
    assert not changed and new is model


def test_make_batch_dynamic_unknown_input():
    with pytest.raises(ModelError, match="'nope'"):
        graph.make_batch_dynamic(om.linear_model(W, B, batch=1), "nope")


@pytest.mark.skipif(not MNIST8.is_file(), reason=f"{MNIST8} is absent (third-party models live outside the repo)")
def test_make_batch_dynamic_mnist8():
    model = graph.load_model(MNIST8)
    new, changed = graph.make_batch_dynamic(model, "Input3")
    assert changed and all(not v.type.tensor_type.HasField("shape") for v in new.graph.value_info)
    x = RNG.random((1000, 1, 28, 28), dtype=np.float32)
    batched = run(new, {"Input3": x})[0]
    orig = ort.InferenceSession(str(MNIST8), providers=["CPUExecutionProvider"])
    singles = np.concatenate([orig.run(None, {"Input3": x[i : i + 1]})[0] for i in range(0, 1000, 50)])
    np.testing.assert_allclose(batched[::50], singles, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ append_argmax
@pytest.mark.parametrize("num_classes", [None, 3])
def test_append_argmax(num_classes):
    model = graph.append_argmax(om.linear_model(W, B, batch="N"), "scores", num_classes=num_classes)
    x = RNG.random((20, 12), dtype=np.float32)
    x[3, 0] = np.nan
    scores, cls, fin = run(model, {"x": x})
    assert cls.dtype == np.int64 and cls.shape == (20,)
    ok = np.arange(20) != 3
    np.testing.assert_array_equal(cls[ok], om.numpy_scores(x, W, B).argmax(1)[ok])
    np.testing.assert_array_equal(np.isfinite(fin), ok)


def test_append_argmax_old_opset_and_trailing_ones():
    model = graph.append_argmax(graph.make_batch_dynamic(om.ir3_model(W, B), "x")[0], "scores")
    x = RNG.random((5, 12), dtype=np.float32)
    np.testing.assert_array_equal(run(model, {"x": x})[1], om.numpy_scores(x, W, B).argmax(1))
    model = graph.append_argmax(om.shaped_output_model(out_shape=(3, 1, 1)), "y", num_classes=3)
    y, cls, _ = run(model, {"x": RNG.random((4, 4), dtype=np.float32)})
    np.testing.assert_array_equal(cls, y.reshape(4, 3).argmax(1))


# ------------------------------------------------------------------ describe
def test_describe_uint8_normalization():
    info = graph.describe(om.uint8_model(W, B, mean=0.5, std=0.25))
    assert info["integer_input"] and info["inputs"][0]["dtype"] == "uint8"
    assert info["inputs"][0]["shape"] == ["N", 12]
    ops = [(s["op"], s.get("constant")) for s in info["normalization"]]
    assert ops == [("Cast", None), ("Div", [255.0]), ("Sub", [0.5]), ("Div", [0.25])]
    assert info["ends_with"] is None and info["custom_ops"] == {}


def test_describe_facts():
    info = graph.describe(om.linear_model(W[0], 1.0, output="probs"))
    assert info["ends_with"] == "Softmax" and info["normalization"] == []
    assert info["opsets"] == {"ai.onnx": 13} and info["ir_version"] == 8
    assert info["producer"]["name"] == "rs-onnx-tests"
    assert info["outputs"] == [{"name": "scores", "shape": ["", 2], "dtype": "float32"}]
    info = graph.describe(om.ir3_model(W, B))
    assert info["initializers_listed_as_inputs"] == 3 and len(info["inputs"]) == 1


def test_describe_custom_domain():
    node = helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=[0.0], scale=[2.0])
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)])
    info = graph.describe(model)
    assert info["custom_ops"] == {"ai.onnx.ml": ["Scaler"]} and info["opsets"]["ai.onnx.ml"] == 3


def test_format_dims():
    assert graph.format_dims(["N", 10, 3]) == "[N, 10, 3]"
    assert graph.format_dims(["", 2]) == "[?, 2]" and graph.format_dims(None) == "unknown"


REAL = sorted((SHARED / "models").glob("*/*.onnx"))


@pytest.mark.skipif(not REAL, reason=f"{SHARED / 'models'} is absent (third-party models live outside the repo)")
def test_describe_real_models():
    import json

    for path in REAL:
        info = graph.describe(graph.load_model(path))
        json.dumps(info)
        assert len(info["inputs"]) == 1 and len(info["outputs"]) == 1, path.name
        if path.name == "mnist_relu_9_200.onnx":
            assert [(s["op"], s["constant"]) for s in info["normalization"]] == [("Sub", [0.0]), ("Div", [1.0])]
        if path.name == "mnist-8.onnx":
            assert info["initializers_listed_as_inputs"] == 8 and info["ir_version"] == 3
