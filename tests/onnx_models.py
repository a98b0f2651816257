"""Tiny ONNX classifiers built with onnx.helper, for tests (no torch).

Every builder returns an ``onnx.ModelProto`` whose float32 input is named ``"x"`` and whose scores
are ``x_flat @ W.T + b`` unless said otherwise; :func:`numpy_scores` computes the same in numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8


def _weights(w, b):
    """(W [K, D] float32, b [K] float32); a 1-D w gives two-class scores [0, w.x + b]."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 1:
        w = np.stack([np.zeros_like(w), w])
        b = np.array([0.0, 0.0 if b is None else float(np.asarray(b).reshape(-1)[0])], np.float32)
    b = np.zeros(w.shape[0], np.float32) if b is None else np.broadcast_to(np.asarray(b, np.float32), (w.shape[0],))
    return w, np.ascontiguousarray(b)


def numpy_scores(x, w, b=None) -> np.ndarray:
    """Reference scores [B, K] of :func:`linear_model` for x [B, *input_shape]."""
    w, b = _weights(w, b)
    x = np.asarray(x, np.float32)
    return x.reshape(len(x), -1) @ w.T + b


def _model(nodes, inputs, outputs, inits, opset=OPSET, ir_version=IR_VERSION, name="tiny"):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rs-onnx-tests")
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def _x(input_shape, batch, name="x"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *input_shape])


def _head(nodes, inits, x_flat, w, b, output, batch, out_name="scores"):
    """MatMul + Add (+ Softmax/LogSoftmax) from ``x_flat`` to the output ``out_name`` [batch, K]."""
    inits += [numpy_helper.from_array(np.ascontiguousarray(w.T), "W_t"), numpy_helper.from_array(b, "b")]
    nodes += [helper.make_node("MatMul", [x_flat, "W_t"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    if output == "logits":
        nodes.append(helper.make_node("Identity", ["logits"], [out_name]))
    elif output in ("probs", "log_probs"):
        op = "Softmax" if output == "probs" else "LogSoftmax"
        nodes.append(helper.make_node(op, ["logits"], [out_name], axis=1))
    else:
        raise ValueError(f"output={output!r}; expected 'logits', 'probs' or 'log_probs'")
    return helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, w.shape[0]])


def linear_model(w, b=None, input_shape=None, batch=None, output="logits") -> onnx.ModelProto:
    """Linear classifier: input "x" [batch, *input_shape] float32 -> "scores" [batch, K].

    Parameters
    ----------
    w : array [K, D] or [D]
        Weights; a 1-D w gives two-class scores [0, w.x + b] (class 1 wins when w.x + b > 0).
    b : array [K], scalar or None
    input_shape : tuple
        Per-example input shape, flattened row-major to D values (default ``(D,)``).
    batch : None, int or str
        Leading dim: None (unnamed dynamic), an int (fixed) or a symbolic name such as "N".
    output : {"logits", "probs", "log_probs"}
    """
    w, b = _weights(w, b)
    input_shape = tuple(input_shape or (w.shape[1],))
    nodes = [helper.make_node("Flatten", ["x"], ["x_flat"], axis=1)]
    inits: list = []
    out = _head(nodes, inits, "x_flat", w, b, output, batch)
    return _model(nodes, [_x(input_shape, batch)], [out], inits)


def reshape_model(w, b=None, input_shape=None, batch=1, shape=None, constant_node=False) -> onnx.ModelProto:
    """Like :func:`linear_model`, but flattens with a Reshape to a hard-coded ``shape`` (default [1, D]).

    With ``batch=1`` it is the fixed-batch model :func:`rs_onnx.graph.make_batch_dynamic` must fix;
    with ``batch="N"`` it is a model declared dynamic that fails above batch 1.
    """
    w, b = _weights(w, b)
    input_shape = tuple(input_shape or (w.shape[1],))
    shape = np.array(shape if shape is not None else [1, w.shape[1]], np.int64)
    inits: list = []
    if constant_node:
        nodes = [helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(shape))]
    else:
        nodes, inits = [], [numpy_helper.from_array(shape, "shape")]
    nodes.append(helper.make_node("Reshape", ["x", "shape"], ["x_flat"]))
    out = _head(nodes, inits, "x_flat", w, b, "logits", batch)
    return _model(nodes, [_x(input_shape, batch)], [out], inits)


def batch_mixing_model(w, b=None, batch="N") -> onnx.ModelProto:
    """Declared dynamic, but mixes the batch: scores = linear(x) + 0.5 * (mean_batch(x) - x) @ W.T.

    At batch 1 it equals :func:`linear_model`; above batch 1 it does not.
    """
    w, b = _weights(w, b)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["x_mean"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["x_mean", "x"], ["x_dev"]),
        helper.make_node("Mul", ["x_dev", "half"], ["x_half"]),
        helper.make_node("Add", ["x", "x_half"], ["x_flat"]),
    ]
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    out = _head(nodes, inits, "x_flat", w, b, "logits", batch)
    return _model(nodes, [_x((w.shape[1],), batch)], [out], inits)


def index_model(w, b=None, batch="N", keepdims=False) -> onnx.ModelProto:
    """Outputs class indices only: int64 "label" [batch] (or [batch, 1] with ``keepdims``)."""
    w, b = _weights(w, b)
    nodes = [helper.make_node("Flatten", ["x"], ["x_flat"], axis=1)]
    inits: list = []
    _head(nodes, inits, "x_flat", w, b, "logits", batch)
    nodes.append(helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=int(keepdims)))
    out = helper.make_tensor_value_info("label", TensorProto.INT64, [batch, 1] if keepdims else [batch])
    return _model(nodes, [_x((w.shape[1],), batch)], [out], inits)


def two_output_model(w, b=None, batch="N") -> onnx.ModelProto:
    """Two candidate outputs: "logits" [batch, K] and "probs" [batch, K] (Softmax)."""
    w, b = _weights(w, b)
    nodes = [helper.make_node("Flatten", ["x"], ["x_flat"], axis=1)]
    inits: list = []
    logits = _head(nodes, inits, "x_flat", w, b, "logits", batch, out_name="logits_out")
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, w.shape[0]])
    return _model(nodes, [_x((w.shape[1],), batch)], [logits, probs], inits)


def two_input_model(w, b=None, batch="N") -> onnx.ModelProto:
    """Inputs "x" [batch, D] and "offset" [batch, K]: scores = x @ W.T + b + offset."""
    w, b = _weights(w, b)
    nodes = [helper.make_node("Flatten", ["x"], ["x_flat"], axis=1)]
    inits: list = []
    _head(nodes, inits, "x_flat", w, b, "logits", batch, out_name="pre")
    nodes.append(helper.make_node("Add", ["pre", "offset"], ["scores"]))
    offset = helper.make_tensor_value_info("offset", TensorProto.FLOAT, [batch, w.shape[0]])
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, w.shape[0]])
    return _model(nodes, [_x((w.shape[1],), batch), offset], [out], inits)


def ir3_model(w, b=None) -> onnx.ModelProto:
    """Old-style model (IR 3, opset 8): initializers listed among graph inputs, batch fixed at 1,
    a Reshape to [1, D] (like the ONNX Model Zoo's mnist-8)."""
    w, b = _weights(w, b)
    d = w.shape[1]
    inits = [
        numpy_helper.from_array(np.array([1, d], np.int64), "shape"),
        numpy_helper.from_array(np.ascontiguousarray(w.T), "W_t"),
        numpy_helper.from_array(b, "b"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["x_flat"]),
        helper.make_node("MatMul", ["x_flat", "W_t"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["scores"]),
    ]
    init_inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, w.shape[0]])
    return _model(nodes, [_x((d,), 1), *init_inputs], [out], inits, opset=8, ir_version=3)


def shaped_output_model(d=4, out_shape=(10, 3), batch="N") -> onnx.ModelProto:
    """Outputs "y" [batch, *out_shape] (e.g. [N, 10, 3], not class scores)."""
    k = int(np.prod(out_shape))
    rng = np.random.default_rng(0)
    w = rng.normal(size=(k, d)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["x_flat"], axis=1)]
    inits: list = []
    _head(nodes, inits, "x_flat", w, np.zeros(k, np.float32), "logits", batch)
    shape_name = "out_shape"
    inits.append(numpy_helper.from_array(np.array([-1, *out_shape], np.int64), shape_name))
    nodes.append(helper.make_node("Reshape", ["scores", shape_name], ["y"]))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, *out_shape])
    return _model(nodes, [_x((d,), batch)], [out], inits)


def unbatched_model(w, b=None) -> onnx.ModelProto:
    """No batch dim: input "x" [D] -> "scores" [K]."""
    w, b = _weights(w, b)
    inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "W_t"), numpy_helper.from_array(b, "b")]
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["x_row"]),
        helper.make_node("MatMul", ["x_row", "W_t"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["row"]),
        helper.make_node("Squeeze", ["row", "axes"], ["scores"]),
    ]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [w.shape[0]])
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [w.shape[1]])], [out], inits)


def uint8_model(w, b=None, mean=0.5, std=0.25, batch="N") -> onnx.ModelProto:
    """uint8 input "x" [batch, D]; the graph does Cast, /255, -mean, /std, then the linear head."""
    w, b = _weights(w, b)
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s255", 255.0), ("std", std))]
    nodes = [
        helper.make_node("Cast", ["x"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x_f", "s255"], ["x_01"]),
        helper.make_node("Constant", [], ["mean"], value=numpy_helper.from_array(np.array([mean], np.float32))),
        helper.make_node("Sub", ["x_01", "mean"], ["x_c"]),
        helper.make_node("Div", ["x_c", "std"], ["x_flat"]),
    ]
    out = _head(nodes, inits, "x_flat", w, b, "logits", batch)
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [batch, w.shape[1]])
    return _model(nodes, [x], [out], inits)


def sklearn_like_model(w, b=None, zipmap=True, batch="N") -> onnx.ModelProto:
    """ai.onnx.ml LinearClassifier like skl2onnx makes: "label" int64 [batch] and "probabilities"
    [batch, K] float, or with ``zipmap`` a sequence of maps (not a tensor)."""
    w, b = _weights(w, b)
    k = w.shape[0]
    probs = "probs_tensor" if zipmap else "probabilities"
    nodes = [
        helper.make_node(
            "LinearClassifier",
            ["x"],
            ["label", probs],
            domain="ai.onnx.ml",
            coefficients=w.ravel().tolist(),
            intercepts=b.tolist(),
            classlabels_ints=list(range(k)),
            post_transform="SOFTMAX",
        )
    ]
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [batch])
    if zipmap:
        nodes.append(
            helper.make_node(
                "ZipMap", [probs], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=list(range(k))
            )
        )
        out = helper.make_value_info(
            "probabilities",
            helper.make_sequence_type_proto(
                helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
            ),
        )
    else:
        out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, k])
    graph = helper.make_graph(nodes, "sklearn_like", [_x((w.shape[1],), batch)], [label, out])
    model = helper.make_model(
        graph,
        producer_name="rs-onnx-tests",
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", 1)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def concat_model(w, b=None, batch=1) -> onnx.ModelProto:
    """Concatenates a constant [1, 1] column to x [batch, D] before the head (bakes batch 1 outside any
    Reshape, like a ViT's class token): the batch rewrite succeeds but fails above batch 1."""
    w, b = _weights(w, b)
    w_ext = np.concatenate([w, np.ones((w.shape[0], 1), np.float32)], axis=1)  # the constant adds 0
    inits = [numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero_col")]
    nodes = [helper.make_node("Concat", ["x", "zero_col"], ["x_flat"], axis=1)]
    out = _head(nodes, inits, "x_flat", w_ext, b, "logits", batch)
    return _model(nodes, [_x((w.shape[1],), batch)], [out], inits)


def save(model: onnx.ModelProto, path) -> Path:
    """Write ``model`` to ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def low_bits_detector_model(shape=(3, 32, 32), batch="N") -> onnx.ModelProto:
    """Voracek & Hein's floating-point attack on smoothing: scores [B, 2] = [hit, 1 - hit], where hit is 1
    when some input value z with |z| < 1/510 has a nonzero bit below 2^-32 (z * 2^32 not an integer)."""
    nodes = [
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Less", ["a", "small"], ["near0"]),
        helper.make_node("Mul", ["x", "two32"], ["scaled"]),
        helper.make_node("Floor", ["scaled"], ["floored"]),
        helper.make_node("Equal", ["scaled", "floored"], ["integral"]),
        helper.make_node("Not", ["integral"], ["lowbits"]),
        helper.make_node("And", ["near0", "lowbits"], ["hit_each"]),
        helper.make_node("Cast", ["hit_each"], ["hit_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["hit_f"], ["hit"], axes=list(range(1, len(shape) + 1)), keepdims=0),
        helper.make_node("Unsqueeze", ["hit", "axis1"], ["hit2"]),
        helper.make_node("Sub", ["one", "hit2"], ["miss2"]),
        helper.make_node("Concat", ["hit2", "miss2"], ["scores"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array(1 / 510, np.float32), "small"),
        numpy_helper.from_array(np.array(2.0**32, np.float32), "two32"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 2])
    return _model(nodes, [_x(shape, batch)], [out], inits)


def threshold_model(t: float, batch="N") -> onnx.ModelProto:
    """One input value z per example ([B, 1]); scores [B, 2] = [z <= t, z > t] (class 1 above t)."""
    nodes = [
        helper.make_node("Greater", ["x", "t"], ["above"]),
        helper.make_node("Cast", ["above"], ["s1"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "s1"], ["s0"]),
        helper.make_node("Concat", ["s0", "s1"], ["scores"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array(t, np.float32), "t"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 2])
    return _model(nodes, [_x((1,), batch)], [out], inits)
