"""Pure ONNX graph surgery and facts: loading, batch rewrites, an appended ArgMax, a description.

Nothing here creates an onnxruntime session; :mod:`rs_onnx.classifier` does.
Shapes are lists of dims: an ``int`` for a fixed dim, a ``str`` for a symbolic one
(``""`` when the dim is unnamed and unknown).
"""

from __future__ import annotations

import copy
import heapq
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from rs_onnx.errors import ModelError

logger = logging.getLogger(__name__)

BATCH_DIM = "batch"
"""Symbolic name given to the leading dim by :func:`make_batch_dynamic`."""
CLASS_OUTPUT = "rs_onnx_class"
"""Name of the int64 [N] output added by :func:`append_argmax`."""
FINITE_OUTPUT = "rs_onnx_finite"
"""Name of the float [N] output added by :func:`append_argmax`: 0 when a row is finite, else NaN."""
CLEAN_INPUT = "rs_onnx_clean"
"""Input added by :func:`prepend_noise`: float32 [E, *shape], the clean examples (laid out, normalised)."""
INDEX_INPUT = "rs_onnx_index"
"""Input added by :func:`prepend_noise`: int64 [N], which clean example each row of the batch perturbs."""
GAIN_INPUT = "rs_onnx_gain"
"""Input added by :func:`prepend_noise`: float32, broadcastable to one example: sigma * scale / std."""

_NORM_OPS = ("Sub", "Div", "Mul", "Add")
_PASS_OPS = ("Cast", "Identity", "Transpose")


# --------------------------------------------------------------------------- loading
def load_model(path, *, load_external_data: bool = False) -> onnx.ModelProto:
    """Load and check an ONNX model, turning every failure into a one-line :class:`ModelError`.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    load_external_data : bool
        Read tensors stored in external files into memory. By default they keep their references
        (graph surgery does not need weights; sessions resolve them from the model's folder).

    Notes
    -----
    The checker runs on the file path, so models over 2 GB work. Custom-op libraries are never loaded.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        what = "a directory" if path.is_dir() else "no such file"
        raise ModelError(f"model {path}: {what}; expected an .onnx file")
    if path.stat().st_size == 0:
        raise ModelError(f"model {name}: the file is empty; expected a serialized ONNX ModelProto")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as err:
        raise ModelError(
            f"model {name}: cannot parse the file as ONNX ({one_line(err)}); "
            "expected a complete serialized ModelProto (truncated download?)"
        ) from err
    except Exception as err:  # any parser failure is a bad model file
        raise ModelError(f"model {name}: cannot read it as ONNX ({one_line(err)}); expected an .onnx file") from err
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelError(f"model {name}: the file holds no graph; expected a serialized ONNX ModelProto")
    missing = _missing_external_files(model, path.parent)
    if missing:
        raise ModelError(
            f"model {name}: external data file {missing[0]!r} is missing; expected it next to the model in {path.parent}"
        )
    try:
        onnx.checker.check_model(str(path))
    except Exception as err:  # noqa: BLE001 - ValidationError, or a C++ error for odd files: reported by the call
        model = _sorted_if_only_unsorted(model, name, err)
    if load_external_data and has_external_data(model):
        onnx.load_external_data_for_model(model, str(path.parent))
    return model


def header(path) -> onnx.ModelProto | None:
    """The model at ``path`` without its external weights and unchecked, for a look at its inputs before the
    load; None when it is not a readable model file (:func:`load_model` says why, later, in one line)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any parser failure: load_model reports it with its own error
        return None


def _sorted_if_only_unsorted(model: onnx.ModelProto, name: str, err: Exception) -> onnx.ModelProto:
    """A model that onnx.checker rejects only because its nodes are not in topological order (as
    onnxruntime's float16 converter leaves them; onnxruntime itself sorts them): the same graph sorted,
    checked again, logged. Any other rejection is a ModelError."""
    refused = ModelError(f"model {name}: onnx.checker rejects it: {one_line(err)}; expected a valid ONNX model")
    if "topologically sorted" not in str(err):
        raise refused from err
    fixed = copy.deepcopy(model)
    order = topological_order(fixed.graph)
    if order is None:
        raise refused from err  # a cycle or a value no node makes
    nodes = [fixed.graph.node[i] for i in order]
    del fixed.graph.node[:]
    fixed.graph.node.extend(nodes)
    try:
        onnx.checker.check_model(fixed)
    except Exception as again:  # still invalid once sorted: the first reason is reported
        raise refused from again
    logging.getLogger(__name__).info(
        "model %s: its nodes are not in topological order (as onnxruntime's float16 converter leaves them; "
        "onnxruntime sorts them too): sorted, the same graph",
        name,
    )
    return fixed


def _used_names(node: onnx.NodeProto) -> set[str]:
    """Every value a node reads, its subgraphs' reads from the outer scope included."""
    names = {n for n in node.input if n}
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in sub.node:
                names |= _used_names(inner)
    return names


def topological_order(graph: onnx.GraphProto) -> list[int] | None:
    """Node indices in an order where each node comes after the nodes making its inputs (stable: the file's
    order where it already is one); None when there is none (a cycle)."""
    made = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
    deps = [{made[n] for n in _used_names(node) if n in made and made[n] != i} for i, node in enumerate(graph.node)]
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    return order if len(order) == len(graph.node) else None


def has_external_data(model: onnx.ModelProto) -> bool:
    """True when some initializer keeps its data in an external file."""
    return any(_is_external(t) for t in _all_tensors(model))


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def _all_tensors(model):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _missing_external_files(model, base: Path) -> list[str]:
    missing = []
    for tensor in _all_tensors(model):
        if _is_external(tensor):
            loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if loc and not (base / loc).is_file() and loc not in missing:
                missing.append(loc)
    return missing


def one_line(err) -> str:
    """An error's text on one line, at most 300 characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- facts
def dims(value_info: onnx.ValueInfoProto) -> list[int | str] | None:
    """Declared dims of a tensor value: int (fixed), str (symbolic, "" if unnamed); None if no shape."""
    ttype = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not ttype.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in ttype.shape.dim]


def format_dims(shape) -> str:
    """``[N, 10, 3]`` for messages; unnamed dims print as ``?``, no shape as ``unknown``."""
    if shape is None:
        return "unknown"
    return "[" + ", ".join(str(d) if d != "" else "?" for d in shape) + "]"


def np_dtype(value_info: onnx.ValueInfoProto) -> np.dtype | None:
    """numpy dtype of a tensor value, None for non-tensors (sequences, maps) or unknown types."""
    if not value_info.type.HasField("tensor_type"):
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs to feed: those that are not initializers (IR < 4 lists initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def strip_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` whose graph inputs exclude initializers; ir_version raised to >= 4 if needed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name for t in out.graph.initializer}
    if any(v.name in inits for v in out.graph.input):
        keep = [v for v in out.graph.input if v.name not in inits]
        del out.graph.input[:]
        out.graph.input.extend(keep)
    if out.ir_version < 4:
        out.ir_version = 4
    return out


def opset_version(model: onnx.ModelProto, domain: str = "") -> int | None:
    """Imported opset version of ``domain`` ("" or "ai.onnx" is the default domain)."""
    for op in model.opset_import:
        if op.domain in (domain, "ai.onnx" if domain == "" else domain):
            return op.version
    return None


# --------------------------------------------------------------------------- batch rewrite
def make_batch_dynamic(model: onnx.ModelProto, input_name: str, *, other_inputs=()) -> tuple[onnx.ModelProto, bool]:
    """Turn a batch dim fixed at 1 into the symbolic dim ``"batch"``.

    Parameters
    ----------
    model : ModelProto
        Left untouched; a rewritten copy is returned.
    input_name : str
        The input whose leading dim is the batch.
    other_inputs : iterable of str
        Further inputs (fed alongside, broadcast over the batch) whose leading dim 1 is rewritten too.

    Returns
    -------
    (ModelProto, bool)
        The model (a copy with initializers stripped from the inputs when changed) and whether it changed.
        Nothing changes unless ``input_name``'s leading dim is the fixed value 1.

    Notes
    -----
    Also sets the outputs' leading dim 1 to ``"batch"``, clears intermediate value_info shapes, and
    rewrites constant Reshape shapes downstream of the input whose first entry is 1: to -1 when the
    shape has no other -1, else to 0 (copy input dim 0; allowzero set to 0). Shared constants are
    copied, not modified. Ops that bake batch 1 elsewhere (Expand, Tile, Concat with a constant...)
    are not rewritten: callers must verify the result.
    """
    value = next((v for v in real_inputs(model) if v.name == input_name), None)
    if value is None:
        raise ModelError(
            f"model: no input named {input_name!r}; expected one of {[v.name for v in real_inputs(model)]}"
        )
    shape = dims(value)
    if not shape or shape[0] != 1:
        return model, False
    out = strip_initializer_inputs(model)
    graph = out.graph
    names = {input_name, *other_inputs}
    for v in graph.input:
        if v.name in names and (d := dims(v)) and d[0] == 1:
            v.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    for v in graph.output:
        if (d := dims(v)) and d[0] == 1:
            v.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    for v in graph.value_info:
        if v.type.HasField("tensor_type"):
            v.type.tensor_type.ClearField("shape")
    n = _rewrite_reshapes(out, _downstream(graph, names))
    logger.debug("make_batch_dynamic(%s): %d Reshape shape constant(s) rewritten", input_name, n)
    return out, True


def _downstream(graph: onnx.GraphProto, sources) -> set[str]:
    """Names of all values computed from ``sources`` (subgraph captures counted conservatively)."""
    reached = set(sources)
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            used = set(node.input) | _subgraph_names(node)
            if used & reached and not set(node.output) <= reached:
                reached.update(o for o in node.output if o)
                changed = True
    return reached


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for sub in g.node:
                names.update(sub.input)
                names |= _subgraph_names(sub)
    return names


def _consumer_counts(graph: onnx.GraphProto) -> Counter:
    counts: Counter = Counter()
    for node in graph.node:
        counts.update(i for i in node.input if i)
        counts.update(_subgraph_names(node))
    counts.update(o.name for o in graph.output)
    return counts


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
    names |= {v.name for v in graph.value_info}
    for node in graph.node:
        names.update(node.output)
        names.update(node.input)
    return names


def _unique(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _constant_source(graph, name):
    """(kind, holder, array) for a constant tensor ``name``: an initializer or a Constant node; else None."""
    for t in graph.initializer:
        if t.name == name:
            return ("init", t, None if _is_external(t) else numpy_helper.to_array(t))
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return ("const", attr, numpy_helper.to_array(attr.t))
                if attr.name == "value_ints":
                    return ("const", attr, np.array(attr.ints, dtype=np.int64))
    return None


def _rewrite_reshapes(model: onnx.ModelProto, downstream: set[str]) -> int:
    graph = model.graph
    counts = _consumer_counts(graph)
    taken = _all_names(graph)
    rewritten = 0
    for node in list(graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] not in downstream:
            continue
        src = _constant_source(graph, node.input[1])
        if src is None or src[2] is None:
            continue
        kind, holder, arr = src
        if arr.ndim != 1 or arr.size == 0 or arr[0] != 1:
            continue
        allowzero = next((a for a in node.attribute if a.name == "allowzero"), None)
        new = arr.astype(np.int64).copy()
        if (arr[1:] == -1).any():
            if allowzero is not None and allowzero.i == 1:
                if (arr == 0).any():
                    logger.debug("Reshape %s: allowzero=1 with zeros in %s; left as is", node.name, arr)
                    continue
                allowzero.i = 0
            new[0] = 0
        else:
            new[0] = -1
        name = node.input[1]
        if counts[name] > 1:  # shared: give this Reshape its own copy
            counts[name] -= 1
            copy_name = _unique(f"{name}_rs_onnx_batch", taken)
            graph.initializer.append(numpy_helper.from_array(new, copy_name))
            node.input[1] = copy_name
        elif kind == "init":
            holder.CopyFrom(numpy_helper.from_array(new, name))
        elif holder.name == "value":
            holder.t.CopyFrom(numpy_helper.from_array(new))
        else:
            del holder.ints[:]
            holder.ints.extend(int(v) for v in new)
        rewritten += 1
    return rewritten


# --------------------------------------------------------------------------- appended ArgMax
def append_argmax(model: onnx.ModelProto, output_name: str, *, num_classes: int | None = None) -> onnx.ModelProto:
    """Copy of ``model`` with an ArgMax over the class scores ``output_name``.

    Adds the int64 [N] output :data:`CLASS_OUTPUT` (ArgMax axis 1, first index on ties) and the
    float [N] output :data:`FINITE_OUTPUT` (row sum of ``s - s``: 0 when every score is finite, NaN
    otherwise), so that only 2 numbers per example leave the device. The scores are first reshaped to
    [N, K] when ``num_classes`` is given (handles [K] and [N, K, 1, 1]), else flattened from axis 1.
    The original output stays.
    """
    out = strip_initializer_inputs(model)
    graph = out.graph
    scores = next((o for o in graph.output if o.name == output_name), None)
    if scores is None:
        raise ModelError(f"model: no output named {output_name!r}; expected one of {[o.name for o in graph.output]}")
    taken = _all_names(graph)
    for fixed in (CLASS_OUTPUT, FINITE_OUTPUT):
        if fixed in taken:
            raise ModelError(f"model: already has a value named {fixed!r}; expected the name to be free for rs-onnx")
    opset = opset_version(out) or 1
    flat, diff = _unique("rs_onnx_scores_2d", taken), _unique("rs_onnx_zero_if_finite", taken)
    if num_classes is not None and opset >= 5:
        shape_name = _unique("rs_onnx_scores_2d_shape", taken)
        graph.initializer.append(numpy_helper.from_array(np.array([-1, num_classes], np.int64), shape_name))
        graph.node.append(helper.make_node("Reshape", [output_name, shape_name], [flat], name=flat))
    else:
        graph.node.append(helper.make_node("Flatten", [output_name], [flat], name=flat, axis=1))
    graph.node.append(helper.make_node("ArgMax", [flat], [CLASS_OUTPUT], name=CLASS_OUTPUT, axis=1, keepdims=0))
    graph.node.append(helper.make_node("Sub", [flat, flat], [diff], name=diff))
    if opset >= 13:
        axes = _unique("rs_onnx_axes", taken)
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
        reduce = helper.make_node("ReduceSum", [diff, axes], [FINITE_OUTPUT], name=FINITE_OUTPUT, keepdims=0)
    else:
        reduce = helper.make_node("ReduceSum", [diff], [FINITE_OUTPUT], name=FINITE_OUTPUT, axes=[1], keepdims=0)
    graph.node.append(reduce)
    score_dims = dims(scores)
    batch = [score_dims[0]] if score_dims and len(score_dims) >= 2 else [""]
    elem = scores.type.tensor_type.elem_type
    graph.output.append(helper.make_tensor_value_info(CLASS_OUTPUT, onnx.TensorProto.INT64, batch))
    graph.output.append(helper.make_tensor_value_info(FINITE_OUTPUT, elem, batch))
    return out


# --------------------------------------------------------------------------- fp16
def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp16 copy of ``model`` whose inputs and outputs stay float32.

    Uses ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)`` (ops it
    knows to be unsafe in fp16 stay float32). The result is a different base classifier: a certificate
    computed with it covers the fp16 model, not the original. External data must be loaded first.
    """
    import warnings

    from onnxruntime.transformers.float16 import convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.ERROR)
            return convert_float_to_float16(copy, keep_io_types=True)
    except Exception as err:  # the converter raises assorted types
        raise ModelError(
            f"model: the fp16 conversion failed ({one_line(err)}); expected a float32 model "
            "that onnxruntime.transformers.float16 can convert (or run the fp32 model: no --fp16)"
        ) from err


# --------------------------------------------------------------------------- on-device noise
def prepend_noise(model: onnx.ModelProto, input_name: str, *, gain_shape, seed: int) -> onnx.ModelProto:
    """Copy of ``model`` that draws its own Gaussian noise: input = cast(clean[index] + N(0,1) * gain).

    The input ``input_name`` [N, *shape] is replaced by :data:`CLEAN_INPUT` float32 [E, *shape] (the clean
    examples, laid out and normalised), :data:`INDEX_INPUT` int64 [N] (the example of each row) and
    :data:`GAIN_INPUT` float32 ``gain_shape`` (sigma * scale / std, broadcastable to one example). The
    prefix is Gather -> RandomNormalLike (``seed`` attribute) -> Mul -> Add -> cast to the input's dtype
    (integer inputs: Round half to even, Clip to the type's range, Cast: what the host path does).

    The noise comes from onnxruntime's RandomNormalLike kernel (Philox on CUDA; on CPU a minstd LCG
    of period 2^31, unfit for millions of samples). Its stream is seeded once per session and runs on
    from call to call, so results depend on the seed, the batch sizes and the order of the calls, the
    onnxruntime version and the device, not on (seed, example, phase, block) as host noise does.
    """
    out = strip_initializer_inputs(model)
    graph = out.graph
    value = next((v for v in graph.input if v.name == input_name), None)
    if value is None:
        raise ModelError(f"model: no input named {input_name!r}; expected one of {[v.name for v in graph.input]}")
    shape = dims(value)
    dtype = np_dtype(value)
    if not shape or dtype is None or dtype.kind not in "fiu":
        raise ModelError(
            f"model: input {input_name!r} {format_dims(shape)} ({dtype}); expected a numeric "
            "tensor [N, ...] for on-device noise"
        )
    taken = _all_names(graph)
    for fixed in (CLEAN_INPUT, INDEX_INPUT, GAIN_INPUT):
        if fixed in taken:
            raise ModelError(f"model: already has a value named {fixed!r}; expected the name to be free for rs-onnx")
    opset = opset_version(out) or 1
    if dtype.kind in "iu" and opset < 11:
        raise ModelError(
            f"model: integer input {input_name!r} with opset {opset}; on-device noise needs opset >= 11 "
            "(Round, Clip) for integer inputs"
        )
    rows, z, delta = (_unique(f"rs_onnx_{n}", taken) for n in ("rows", "z", "delta"))
    noisy = input_name if dtype == np.float32 else _unique("rs_onnx_noisy", taken)
    nodes = [
        helper.make_node("Gather", [CLEAN_INPUT, INDEX_INPUT], [rows], name=rows, axis=0),
        helper.make_node(
            "RandomNormalLike",
            [rows],
            [z],
            name=z,
            dtype=onnx.TensorProto.FLOAT,
            mean=0.0,
            scale=1.0,
            seed=float(int(seed) % (1 << 24)),
        ),
        helper.make_node("Mul", [z, GAIN_INPUT], [delta], name=delta),
        helper.make_node("Add", [rows, delta], [noisy], name=_unique("rs_onnx_add", taken)),
    ]
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        rounded, clipped = _unique("rs_onnx_rounded", taken), _unique("rs_onnx_clipped", taken)
        lo, hi = _unique("rs_onnx_min", taken), _unique("rs_onnx_max", taken)
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(info.min, np.float32), lo),
                numpy_helper.from_array(np.array(info.max, np.float32), hi),
            ]
        )
        nodes += [
            helper.make_node("Round", [noisy], [rounded], name=rounded),
            helper.make_node("Clip", [rounded, lo, hi], [clipped], name=clipped),
            helper.make_node("Cast", [clipped], [input_name], name=_unique("rs_onnx_cast", taken), to=elem),
        ]
    elif dtype != np.float32:
        nodes.append(helper.make_node("Cast", [noisy], [input_name], name=_unique("rs_onnx_cast", taken), to=elem))
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    keep = [v for v in graph.input if v.name != input_name]
    del graph.input[:]
    batch = shape[0] if isinstance(shape[0], str) and shape[0] else BATCH_DIM
    graph.input.extend(
        [
            helper.make_tensor_value_info(CLEAN_INPUT, onnx.TensorProto.FLOAT, ["rs_onnx_examples", *shape[1:]]),
            helper.make_tensor_value_info(INDEX_INPUT, onnx.TensorProto.INT64, [batch]),
            helper.make_tensor_value_info(GAIN_INPUT, onnx.TensorProto.FLOAT, [int(d) for d in gain_shape]),
            *keep,
        ]
    )
    return out


# --------------------------------------------------------------------------- description
def describe(model: onnx.ModelProto) -> dict:
    """Facts about a model for ``rs-onnx inspect`` (plain JSON-able dict).

    Keys: ``ir_version``, ``opsets`` {domain: version}, ``producer`` {name, version}, ``inputs`` and
    ``outputs`` (lists of {name, shape, dtype}), ``initializers_listed_as_inputs`` (int),
    ``integer_input`` (bool, first input), ``normalization`` (list of {op, constant} steps right
    after the first input, [] if none), ``ends_with`` ("Softmax", "LogSoftmax" or None),
    ``custom_ops`` {domain: [op types]} for non-default domains, ``node_count``, ``metadata``.
    """
    graph = model.graph
    inputs = real_inputs(model)
    first_dtype = np_dtype(inputs[0]) if inputs else None
    custom: dict[str, list[str]] = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            ops = custom.setdefault(node.domain, [])
            if node.op_type not in ops:
                ops.append(node.op_type)
    return {
        "ir_version": int(model.ir_version),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "producer": {"name": model.producer_name, "version": model.producer_version},
        "inputs": [_value_facts(v) for v in inputs],
        "outputs": [_value_facts(v) for v in graph.output],
        "initializers_listed_as_inputs": len(graph.input) - len(inputs),
        "integer_input": bool(first_dtype is not None and first_dtype.kind in "iub"),
        "normalization": _normalization(graph, inputs[0].name) if inputs else [],
        "ends_with": _final_activation(graph),
        "custom_ops": custom,
        "node_count": len(graph.node),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def _value_facts(v: onnx.ValueInfoProto) -> dict:
    dt = np_dtype(v)
    kind = (v.type.WhichOneof("value") or "unknown").replace("_type", "")
    return {"name": v.name, "shape": dims(v), "dtype": str(dt) if dt is not None else kind}


def normalization(model: onnx.ModelProto, input_name: str) -> list[dict]:
    """The chain of Sub/Div/Mul/Add by constants right after input ``input_name`` (as :func:`describe`'s
    ``normalization``): [{op, constant, input_first}, or {op} for Cast/Identity/Transpose passed through]."""
    return _normalization(model.graph, input_name)


def _normalization(graph, input_name: str) -> list[dict]:
    """Chain of Sub/Div/Mul/Add by constants (through Cast/Identity/Transpose) after the input."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    steps: list[dict] = []
    current = input_name
    for _ in range(16):
        nodes = consumers.get(current, [])
        if len(nodes) != 1 or len(nodes[0].output) != 1:
            break
        node = nodes[0]
        if node.op_type in _PASS_OPS:
            step = {"op": node.op_type}
            for attr in node.attribute:
                step[attr.name] = helper.get_attribute_value(attr)
            if node.op_type == "Cast" and "to" in step:
                step["to"] = str(helper.tensor_dtype_to_np_dtype(step["to"]))
            steps.append(step)
        elif node.op_type in _NORM_OPS and len(node.input) == 2:
            other = node.input[1] if node.input[0] == current else node.input[0]
            src = _constant_source(graph, other)
            if src is None:
                break
            arr = src[2]
            const = None if arr is None else (arr.ravel().round(6).tolist() if arr.size <= 16 else f"{arr.size} values")
            steps.append({"op": node.op_type, "constant": const, "input_first": node.input[0] == current})
        else:
            break
        current = node.output[0]
    while steps and steps[-1]["op"] not in _NORM_OPS:  # trailing Cast/Transpose are not normalisation
        steps.pop()
    return steps


def _final_activation(graph) -> str | None:
    producers = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        node = producers.get(out.name)
        while node is not None and node.op_type in ("Identity", "Reshape", "Flatten", "Squeeze"):
            node = producers.get(node.input[0])
        if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
            return node.op_type
    return None
