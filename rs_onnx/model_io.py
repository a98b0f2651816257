"""How rs-onnx reads a model's inputs and outputs: pure functions of ONNX protos and numpy arrays.

No session runs here. :mod:`rs_onnx.loader` feeds these functions what a session returned;
:class:`rs_onnx.classifier.OnnxClassifier` uses them to build feeds and decode every batch.
Shapes: ``b`` is the number of examples a run was given; scores are [b, K], class indices [b].
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from rs_onnx import graph, guard, shapes
from rs_onnx.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

EXPECTED_CLASSES = "expected class scores shaped [N, K] with K >= 2 or class indices shaped [N]"


class NotClasses(Exception):  # noqa: N818 - control flow between this module and its callers, never shown to users
    """An output array cannot be read as scores [b, K] or indices [b]."""


def rows(arr: Any, b: int, kind: str) -> np.ndarray:
    """View an output as scores [b, K] (``kind`` "scores") or indices [b] ("indices"); raises NotClasses."""
    if not isinstance(arr, np.ndarray):
        raise NotClasses
    if kind == "scores":
        if arr.ndim >= 2 and arr.shape[0] == b and all(s == 1 for s in arr.shape[2:]):
            return arr.reshape(b, arr.shape[1])
        if arr.ndim == 1 and b == 1:
            return arr.reshape(1, -1)
    elif arr.size == b and arr.ndim <= 2 and (arr.ndim < 2 or arr.shape[1] == 1):
        return arr.reshape(b)
    raise NotClasses


def classify(arr: Any, b: int) -> tuple[str, int | None] | None:
    """("scores", K) or ("indices", None) for an output of a run on b examples; None if neither."""
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        return None
    if arr.dtype.kind in "iu" and not (arr.ndim >= 2 and arr.shape[1] >= 2):
        try:
            rows(arr, b, "indices")
        except NotClasses:
            return None
        return "indices", None
    try:
        k = rows(arr, b, "scores").shape[1]
    except NotClasses:
        return None
    return ("scores", k) if k >= 2 else None


def random_inputs(shape, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Random values of the right dtype: floats in [0, 1), uint8 in [0, 255], bool, other ints in {0, 1}."""
    try:
        if dtype.kind == "f":
            return rng.random(shape).astype(dtype)
        if dtype == np.uint8:
            return rng.integers(0, 256, shape).astype(dtype)
        if dtype.kind == "b":
            return rng.random(shape) < 0.5
        return rng.integers(0, 2, shape).astype(dtype)
    except (MemoryError, ValueError):  # numpy: ValueError when the byte count overflows
        raise ModelError(
            f"the load check's random inputs shaped {list(shape)} do not fit in memory; expected "
            "a model whose declared input shape fits (or --input-shape with a smaller per-example shape)"
        ) from None


# ------------------------------------------------------------------ the input
@dataclass(frozen=True)
class ModelInput:
    """The input to perturb and fixed values for the others.

    ``dims``: its declared dims (ints and symbolic names; None when undeclared). ``extra``: name ->
    (value, batched): one example's value, broadcast over the batch when ``batched``, else fed as is.
    """

    name: str
    dtype: np.dtype
    dims: list | None
    extra: Mapping[str, tuple[np.ndarray, bool]]


def choose_input(model: onnx.ModelProto, model_name: str, input_name: str | None, extra_inputs: Mapping) -> ModelInput:
    """The input to perturb (``input_name``, or the one real input without a value in ``extra_inputs``)."""
    inputs = {v.name: v for v in graph.real_inputs(model)}
    listing = ", ".join(f"'{n}' {graph.format_dims(graph.dims(v))}" for n, v in inputs.items())
    unknown = [n for n in list(extra_inputs) + ([input_name] if input_name else []) if n not in inputs]
    if unknown:
        raise ConfigError(f"model {model_name}: no input named '{unknown[0]}'; inputs are {listing}")

    def refuse_tokens(names) -> None:
        for n in names:
            dt, d = graph.np_dtype(inputs[n]), graph.dims(inputs[n])
            if dt is not None and shapes.token_input(n, dt, None if d is None else d[1:]):
                raise shapes.token_error(model_name, n, dt, d)

    if input_name is None:
        free = [n for n in inputs if n not in extra_inputs]
        if len(free) != 1:
            refuse_tokens([n for n in free if n.lower() in shapes.TOKEN_NAMES])
            raise ModelError(
                f"model {model_name}: has {len(inputs)} inputs ({listing}); expected one input to "
                "perturb: pass --input-name and give the others fixed values with extra_inputs (YAML)"
            )
        input_name = free[0]
    missing = [n for n in inputs if n != input_name and n not in extra_inputs]
    if missing:
        raise ModelError(
            f"model {model_name}: inputs {missing} have no value; expected fixed values for "
            f"every input but '{input_name}' in extra_inputs (inputs: {listing})"
        )
    refuse_tokens([input_name])
    vi = inputs[input_name]
    dtype = graph.np_dtype(vi)
    if dtype is None or dtype.kind not in "fiub":
        raise ModelError(
            f"model {model_name}: input '{input_name}' has type {vi.type.WhichOneof('value')}; expected a numeric tensor"
        )
    extra = {}
    for name, value in extra_inputs.items():
        if name == input_name:
            raise ConfigError(f"extra_inputs gives a value for '{name}', the input to perturb; expected only others")
        extra[name] = _extra_value(name, value, inputs[name])
    return ModelInput(input_name, dtype, graph.dims(vi), extra)


def _extra_value(name: str, value, vi) -> tuple[np.ndarray, bool]:
    """(value cast to the input's dtype, broadcast over the batch?) for a fixed extra input."""
    dt = graph.np_dtype(vi)
    value = np.asarray(value)
    if dt is not None and value.dtype != dt:
        if not np.can_cast(value.dtype, dt, "same_kind"):
            raise ConfigError(f"extra input '{name}' has dtype {value.dtype}; expected {dt}")
        value = value.astype(dt)
    decl = graph.dims(vi)
    batched = decl is not None and len(decl) == value.ndim + 1
    if (
        decl is not None
        and len(decl) == value.ndim
        and value.ndim
        and value.shape[0] == 1
        and (decl[0] == 1 or isinstance(decl[0], str))
    ):
        value, batched = value[0], True
    return np.ascontiguousarray(value), batched


def resolve_shape(rest, override, model_name: str, input_name: str) -> tuple[int, ...]:
    """Per-example shape from the declared dims ``rest`` and the user's ``override`` (``--input-shape``, needed
    for symbolic dims; it may include the batch dim)."""
    if override is not None:
        if isinstance(override, str):  # "3,224,224" as the flag takes it
            override = shapes.parse_input_shape(override)[1]
        shape = shapes.per_example(rest, override, model_name, input_name)
        guard.check_example_size(shape, model_name, input_name)
        return shape
    if shapes.symbolic(rest):
        raise ModelError(
            f"model {model_name}: input '{input_name}' has per-example dims {graph.format_dims(rest)}, not all "
            f"fixed; expected {shapes.FLAG} {shapes.placeholder(rest)} in numbers (the per-example shape, no "
            "batch dim), or data whose examples all have one shape"
        )
    guard.check_example_size(rest, model_name, input_name)
    return tuple(rest)


def feed(inp: ModelInput, xb: np.ndarray, unbatched: bool = False) -> dict[str, np.ndarray]:
    """The session feed for a batch ``xb`` [b, *shape] (``unbatched``: the model takes ``xb[0]`` alone)."""
    out = {inp.name: np.ascontiguousarray(xb[0] if unbatched else xb)}
    for name, (value, batched) in inp.extra.items():
        if batched and not unbatched:
            value = np.ascontiguousarray(np.broadcast_to(value, (len(xb), *value.shape)))
        out[name] = value
    return out


# ------------------------------------------------------------------ the output
@dataclass(frozen=True)
class ClassOutput:
    """The output that holds the classes: ``kind`` "scores" (K = ``num_classes``) or "indices" (K unknown).

    ``dtype``: its element type. ``tail``: its shape after the batch dim, None when its first dim is not b.
    """

    name: str
    kind: str
    num_classes: int | None
    dtype: np.dtype
    tail: tuple[int, ...] | None


def choose_output(
    model: onnx.ModelProto, outs: Mapping, b: int, requested: str | None, model_name: str, trials: Sequence = ()
) -> ClassOutput:
    """Pick the class output among ``outs`` (name -> array) of a run on b examples (``requested`` if given).

    A classical ML exporter's pair, int64 ``label`` [N] and float ``probabilities`` [N, K], gives the label
    (the exporter's prediction) when it equals the probabilities' argmax on ``outs`` and ``trials`` (more
    runs on b examples each), or when they differ but an ai.onnx.ml classifier declares the class labels
    (an SVC's Platt-scaled probabilities; labels not 0..K-1): then with a warning. Otherwise the pair is
    ambiguous. Its K is kept when its labels are 0..K-1. A lone index output takes
    its K from the ai.onnx.ml classifier's declared class labels when they are 0..K-1 (else K is unknown).
    """
    decl = {v.name: v for v in model.graph.output}

    def describe(name):
        v, arr = decl.get(name), outs[name]
        shape = graph.dims(v) if v is not None else None
        shape = shape if shape is not None else (list(arr.shape) if isinstance(arr, np.ndarray) else None)
        kind = str(arr.dtype) if isinstance(arr, np.ndarray) else type(arr).__name__
        return f"'{name}' has shape {graph.format_dims(shape)} ({kind})"

    if requested is not None:
        if requested not in outs:
            raise ConfigError(f"model {model_name}: no output named '{requested}'; outputs are {list(outs)}")
        names = [requested]
    else:
        names = list(outs)
    found = {n: c for n in names if (c := classify(outs[n], b)) is not None}
    if len(names) == 1 and not found:
        raise ModelError(f"model {model_name}: output {describe(names[0])}; {EXPECTED_CLASSES}")
    if not found:
        raise ModelError(
            f"model {model_name}: no output looks like classes: {'; '.join(describe(n) for n in names)}; "
            f"{EXPECTED_CLASSES}"
        )
    pair, declared = label_pair(found), declared_classes(model)
    agree = total = 0
    if pair is not None:
        agree, total, in_range = pair_agreement([outs, *trials], b, pair)
        if agree < total and declared is None:  # not a classical ML exporter's label, and not the argmax
            differs = (
                f" ('{pair[0]}' differs from the argmax of '{pair[1]}' on {total - agree} of {total} "
                "load-time trial inputs)"
            )
            pair = None
    if len(found) > 1 and pair is None:
        raise ModelError(
            f"model {model_name}: {len(found)} outputs could be the classes: "
            f"{'; '.join(describe(n) for n in found)}{differs if agree < total else ''}; expected one: pass "
            "--output-name NAME (output_name in the Python API)"
        )
    num_classes: int | None
    if pair is not None:
        name, k = pair[0], int(found[pair[1]][1] or 0)
        known = declared == list(range(k)) if declared is not None else in_range
        note = (
            f"model {model_name}: outputs '{pair[0]}' (class indices) and '{pair[1]}' (scores [N, {k}]): "
            f"using '{pair[0]}', the exporter's own prediction (predict() in scikit-learn, XGBoost, LightGBM); "
        )
        if agree == total:
            logger.info(note + "it equals the argmax of '%s' on all %d load-time trial inputs", pair[1], total)
        else:
            logger.warning(
                note + "it differs from the argmax of '%s' on %d of %d load-time trial inputs (an SVC's "
                "Platt-scaled probabilities, or class labels that are not 0..K-1); --output-name %s certifies "
                "that argmax instead",
                pair[1],
                total - agree,
                total,
                pair[1],
            )
        kind, num_classes = "indices", (k if known else None)
    else:
        ((name, (kind, num_classes)),) = found.items()
        if kind == "indices" and declared is not None and declared == list(range(len(declared))) and len(declared) >= 2:
            num_classes = len(declared)  # the ai.onnx.ml classifier's class labels: 0..K-1
    shape = outs[name].shape
    tail = tuple(shape[1:]) if len(shape) >= 1 and shape[0] == b else None
    return ClassOutput(name, kind, num_classes, outs[name].dtype, tail)


ML_CLASSIFIERS = ("LinearClassifier", "SVMClassifier", "TreeEnsembleClassifier", "ZipMap")
"""ai.onnx.ml operators that declare their class labels (``classlabels_ints`` / ``classlabels_int64s``)."""


def declared_classes(model: onnx.ModelProto) -> list[int] | None:
    """The integer class labels that the model's ai.onnx.ml classifiers declare (skl2onnx, onnxmltools), when
    they all declare the same ones; None when none does, they differ, or the labels are strings."""
    found = []
    for node in model.graph.node:
        if node.domain == "ai.onnx.ml" and node.op_type in ML_CLASSIFIERS:
            for a in node.attribute:
                if a.name in ("classlabels_ints", "classlabels_int64s") and a.ints:
                    found.append(list(a.ints))
    if not found or any(f != found[0] for f in found):
        return None
    return found[0]


def label_pair(found: Mapping[str, tuple[str, int | None]]) -> tuple[str, str] | None:
    """(indices output, scores output) when the class-like outputs are exactly one of each (a classical ML
    exporter's ``label`` [N] and ``probabilities`` [N, K]); else None."""
    indices = [n for n, (kind, _) in found.items() if kind == "indices"]
    scores = [n for n, (kind, _) in found.items() if kind == "scores"]
    return (indices[0], scores[0]) if len(found) == 2 and len(indices) == 1 and len(scores) == 1 else None


def pair_agreement(runs, b: int, pair: tuple[str, str]) -> tuple[int, int, bool]:
    """(examples whose index output equals the scores' argmax, examples, every index in 0..K-1) over
    ``runs`` (name -> array, each a run on b examples)."""
    agree = total = 0
    in_range = True
    for run in runs:
        try:
            labels = rows(run[pair[0]], b, "indices").astype(np.int64)
            scores = rows(run[pair[1]], b, "scores")
        except (NotClasses, KeyError):
            continue
        agree += int((labels == scores.argmax(axis=1)).sum())
        total += b
        in_range = in_range and bool(((labels >= 0) & (labels < scores.shape[1])).all())
    return agree, total, in_range


def decode(outs, b: int, output: ClassOutput, in_graph: bool, model_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(classes int64 [b], finite bool [b]) from a run's fetched outputs.

    ``in_graph``: ``outs`` are the appended ArgMax's (classes, a float whose non-finiteness marks a row
    with a non-finite score); else ``outs[0]`` is ``output`` itself. Argmax takes the first index on ties.
    """
    try:
        if in_graph:
            return rows(outs[0], b, "indices").astype(np.int64), np.isfinite(rows(outs[1], b, "indices"))
        r = rows(outs[0], b, output.kind)
    except NotClasses:
        fetched = graph.CLASS_OUTPUT if in_graph else output.name
        expected = f"[{b}, {output.num_classes}]" if output.kind == "scores" else f"[{b}]"
        raise ModelError(
            f"model {model_name}: output '{fetched}' has shape {list(np.shape(outs[0]))} "
            f"for a batch of {b}; expected {expected}"
        ) from None
    if output.kind == "indices":
        return r.astype(np.int64), np.ones(b, bool)
    return r.argmax(axis=1).astype(np.int64), np.isfinite(r).all(axis=1)


def disagreement(got_rows: np.ndarray, ref: np.ndarray, kind: str) -> str | None:
    """None when batched rows match one-by-one rows ``ref`` (same kind and shape), else what differs."""
    k = len(ref)
    if kind == "indices":
        bad = int((got_rows != ref).sum())
        return f"gives {bad} of {k} classes different from one-by-one runs" if bad else None
    got, want = got_rows.astype(np.float64), ref.astype(np.float64)
    finite = np.isfinite(want)
    if not np.array_equal(np.isfinite(got), finite):
        return "gives non-finite scores where one-by-one runs do not, or vice versa"
    diff = float(np.abs(got - want)[finite].max(initial=0.0))
    scale = float(np.abs(want[finite]).max(initial=0.0))
    tol = (1e-2 if got_rows.dtype.itemsize <= 2 else 1e-3) * max(scale, 1e-3)
    if diff > tol:
        return f"gives scores up to {diff:.3g} away from one-by-one runs (tolerance {tol:.3g})"
    top2 = np.sort(np.where(finite, want, -np.inf), axis=1)[:, -2:]
    bad = (got.argmax(1) != want.argmax(1)) & (top2[:, 1] - top2[:, 0] > 2 * tol)
    return f"gives {int(bad.sum())} of {k} classes different from one-by-one runs" if bad.any() else None
