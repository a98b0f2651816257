"""Denoised smoothing: a denoiser in front of a frozen classifier, as one ONNX model.

Salman et al. 2020 ("Denoised smoothing: a provable defense for pretrained classifiers") certify
``f(D(x + delta))``: the composed model is simply a new base classifier. :func:`compose` joins the two
graphs with :mod:`onnx.compose`, inserting the classifier's own preprocessing (layout, scale, mean/std,
dtype cast) as ONNX nodes between the denoiser's output and the classifier's input::

    images [N, C, H, W] in [0,1] --denoiser--> [N, C, H, W] in [0,1] --preprocessing--> classifier input

so the composed model takes [0,1] images (the denoiser's input) and sigma keeps its [0,1] pixel units:
certify it with the identity :class:`~rs_onnx.preprocess.PreprocessSpec` (the default).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from rs_onnx import graph, shapes
from rs_onnx.errors import ConfigError, DataError, ModelError
from rs_onnx.guard import escape
from rs_onnx.preprocess import Preprocessor, PreprocessSpec

logger = logging.getLogger(__name__)

DENOISER_SIGMA_KEY = "rs_onnx.denoiser_sigma"
"""Metadata key of a denoiser: the noise level (in [0,1] pixel units) it was trained for."""
SIGMA_KEY = "rs_onnx.sigma"
"""Metadata key read by the CLI as the default sigma; set on composed models from the denoiser's."""
COMPOSED_KEY = "rs_onnx.composed"
"""Metadata key of a composed model: JSON with the preprocessing and the two sources."""
PREPROCESS_KEY = "rs_onnx.preprocess"
"""Metadata key: JSON of the preprocessing inserted in front of the classifier (Preprocessor.describe())."""
PREFIX_DENOISER, PREFIX_PREPROCESS, PREFIX_CLASSIFIER = "denoiser/", "preprocess/", "classifier/"
_MIN_OPSET = 7  # Transpose, Reshape (shape input), Mul/Add broadcasting, Cast with an int "to"
_ROUND_OPSET = 11  # Round
_IMAGE = PREFIX_PREPROCESS + "image"  # the denoised image entering the preprocessing, inside a composed model


# --------------------------------------------------------------------------- inputs and outputs
def _pick(values, name, what: str, model_name: str):
    """The value named ``name`` among ``values`` (ValueInfoProtos), or the only one when name is None."""
    listing = ", ".join(f"'{v.name}' {graph.format_dims(graph.dims(v))}" for v in values)
    if name is not None:
        found = next((v for v in values if v.name == name), None)
        if found is None:
            raise ConfigError(f"{model_name}: no {what} named '{name}'; {what}s are {listing}")
        return found
    if len(values) != 1:
        raise ModelError(f"{model_name}: has {len(values)} {what}s ({listing}); expected one, or pass its name")
    return values[0]


def _fixed(shape, what: str, hint: str = "") -> tuple[int, ...]:
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape):
        raise ModelError(f"{what} has per-example dims {graph.format_dims(shape)}; expected fixed sizes{hint}")
    return tuple(shape)


def _batched_input(model: onnx.ModelProto, name, what: str) -> tuple[onnx.ModelProto, onnx.ValueInfoProto]:
    """(model with a symbolic batch on input ``name``, that input); batch 1 is rewritten, n > 1 refused."""
    value = _pick(graph.real_inputs(model), name, "input", what)
    shape = graph.dims(value)
    if not shape:
        raise ModelError(
            f"{what}: input '{value.name}' has shape {graph.format_dims(shape)}; expected [N, ...] with a batch dim"
        )
    if isinstance(shape[0], int) and shape[0] > 1:
        raise ModelError(f"{what}: input '{value.name}' has its batch fixed at {shape[0]}; expected 1 or dynamic")
    model, changed = graph.make_batch_dynamic(model, value.name)
    if changed:
        logger.info("%s: batch dim of input '%s' fixed at 1, made symbolic", what, value.name)
    return model, next(v for v in graph.real_inputs(model) if v.name == value.name)


# --------------------------------------------------------------------------- versions
def _domains(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.opset_import}


def _convert(model: onnx.ModelProto, target: int, what: str) -> onnx.ModelProto:
    """``model`` with its default-domain opset raised to ``target`` by onnx.version_converter."""
    current = graph.opset_version(model) or 1
    if current >= target:
        return model
    try:
        out = version_converter.convert_version(model, target)
    except Exception as err:  # the converter raises C++ errors of any kind
        raise ModelError(
            f"{what}: onnx.version_converter cannot convert opset {current} to {target} "
            f"({graph.one_line(err)}); expected models whose opsets can be aligned"
        ) from err
    logger.info("%s: converted from opset %d to %d", what, current, target)
    return out


def _align(models: list[onnx.ModelProto], names: list[str], min_opset: int) -> tuple[list[onnx.ModelProto], int, int]:
    """Bring every model to one default-domain opset and one IR version; (models, opset, ir_version)."""
    target = max([graph.opset_version(m) or 1 for m in models] + [min_opset])
    models = [_convert(m, target, n) for m, n in zip(models, names)]
    seen: dict[str, tuple[int, str]] = {}
    for m, n in zip(models, names):
        for domain, version in _domains(m).items():
            if domain and domain in seen and seen[domain][0] != version:
                raise ModelError(
                    f"{n}: imports opset {version} of domain '{domain}' and {seen[domain][1]} imports "
                    f"{seen[domain][0]}; expected the same version in both"
                )
            seen.setdefault(domain, (version, n))
    ir = max([int(m.ir_version) for m in models] + [helper.find_min_ir_version_for([helper.make_opsetid("", target)])])
    for m in models:
        m.ir_version = ir
    return models, target, ir


# --------------------------------------------------------------------------- preprocessing nodes
def _affine(spec: PreprocessSpec, layout: str, model_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(gain = scale/std, offset = -mean/std) as float32, broadcastable to ``model_shape``; as Preprocessor."""
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    channels = max(mean.size, std.size)
    shape = [1] * len(model_shape)
    if channels > 1:  # Preprocessor has already checked that the channel axis holds this many
        shape[len(model_shape) - 1 if layout == "nhwc" else 0] = channels
    gain = (spec.scale / std * np.ones(channels)).reshape(shape).astype(np.float32)
    offset = (-mean / std * np.ones(channels)).reshape(shape).astype(np.float32)
    return gain, offset


def preprocessing_model(
    pre: Preprocessor, *, opset: int, ir_version: int, input_name: str = "image", output_name: str = "model_input"
) -> onnx.ModelProto:
    """The preprocessing of ``pre`` as an ONNX model: [N, *image_shape] float in [0,1] -> the model input.

    Nodes: Gather of the channels (bgr), Transpose (nhwc), Reshape to [-1, *model_shape] (when the shape changes), Mul by scale/std,
    Add -mean/std, then for an integer dtype Round (half to even, as numpy), clip to the dtype's range
    and Cast, for another float dtype a Cast. Computes what :meth:`Preprocessor.clean` then
    :meth:`Preprocessor.cast` compute, in float32.
    """
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = input_name
    rank = len(pre.image_shape)

    def add(op, inputs, **attrs):
        nonlocal current
        out = f"{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, [current, *inputs], [out], name=out, **attrs))
        current = out

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    shape = pre.image_shape
    if pre.spec.channel_order == "bgr":  # Preprocessor checked the image is [3 or 4, H, W]
        order = [2, 1, 0, *range(3, shape[0])]
        add("Gather", [const("channel_order", np.array(order, np.int64))], axis=1)
    if pre.layout == "nhwc":
        add("Transpose", [], perm=[0, *range(2, rank + 1), 1])
        shape = (*shape[1:], shape[0])
    if shape != pre.model_shape:
        add("Reshape", [const("model_shape", np.array([-1, *pre.model_shape], np.int64))])
    gain, offset = _affine(pre.spec, pre.layout, pre.model_shape)
    if np.any(gain != 1):
        add("Mul", [const("gain", gain)])
    if np.any(offset != 0):
        add("Add", [const("offset", offset)])
    dtype = pre.dtype
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        add("Round", [])
        add("Max", [const("low", np.float32(info.min))])
        add("Min", [const("high", np.float32(info.max))])
    if dtype != np.float32:
        add("Cast", [], to=helper.np_dtype_to_tensor_dtype(dtype))
    nodes.append(helper.make_node("Identity", [current], [output_name], name=output_name))
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [graph.BATCH_DIM, *pre.image_shape])
    y = helper.make_tensor_value_info(
        output_name, helper.np_dtype_to_tensor_dtype(dtype), [graph.BATCH_DIM, *pre.model_shape]
    )
    model = helper.make_model(
        helper.make_graph(nodes, "rs_onnx_preprocess", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="rs-onnx",
    )
    model.ir_version = ir_version
    return model


def _merge(
    first: onnx.ModelProto, second: onnx.ModelProto, out_name: str, in_name: str, outputs: list[str] | None = None
) -> onnx.ModelProto:
    for m in (first, second):
        del m.metadata_props[:]  # merged by hand afterwards; merge_models refuses differing values
    try:
        out = onnx.compose.merge_models(first, second, io_map=[(out_name, in_name)], outputs=outputs)
    except ValueError as err:
        raise ModelError(
            f"cannot merge the graphs ({graph.one_line(err)}); expected disjoint names after prefixing"
        ) from err
    opsets: dict[str, int] = {}  # merge_models lists a domain once per model
    for op in out.opset_import:
        opsets.setdefault("" if op.domain == "ai.onnx" else op.domain, op.version)
    del out.opset_import[:]
    out.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    return out


def prepend_preprocessing(
    classifier: onnx.ModelProto,
    preprocess: PreprocessSpec | None,
    image_shape,
    *,
    classifier_input_shape=None,
    classifier_input_name: str | None = None,
    image_name: str = "image",
    opset: int | None = None,
) -> onnx.ModelProto:
    """The classifier as a model of [0,1] images: ``image_name`` float [N, *image_shape] -> its outputs.

    Parameters
    ----------
    classifier : ModelProto
        Left untouched. A batch fixed at 1 is made symbolic; initializers listed as inputs are dropped.
    preprocess : PreprocessSpec or None
        The classifier's preprocessing (None: identity). Its dtype (default: the classifier's input
        dtype) decides the final cast.
    image_shape : tuple of int
        Per-example image shape, e.g. (1, 28, 28).
    classifier_input_shape : tuple of int, optional
        Per-example input shape of the classifier (default: its declared dims, which must be fixed).
    classifier_input_name : str, optional
        Needed when the classifier has several inputs (the others stay inputs of the result).
    opset : int, optional
        Default-domain opset of the result (default: the classifier's, at least what the nodes need).
    """
    what = "classifier"
    clf, value = _batched_input(graph.strip_initializer_inputs(classifier), classifier_input_name, what)
    declared_dims = graph.dims(value)
    if classifier_input_shape is not None and declared_dims is not None:  # as --input-shape: fixed dims must match
        classifier_input_shape = shapes.per_example(declared_dims[1:], classifier_input_shape, what, value.name)
    model_shape = _fixed(
        classifier_input_shape or (declared_dims[1:] if declared_dims is not None else None),
        f"{what} input '{value.name}'",
        f" (give them with {shapes.FLAG})",
    )
    dtype = graph.np_dtype(value)
    if dtype is None:
        raise ModelError(f"{what}: input '{value.name}' is not a tensor; expected a numeric tensor input")
    pre = Preprocessor(preprocess or PreprocessSpec(), tuple(int(d) for d in image_shape), model_shape, dtype)
    if pre.dtype != dtype:
        raise ConfigError(
            f"preprocess dtype {pre.dtype} for a classifier input of dtype {dtype}; expected the "
            "classifier's own input dtype (the cast is part of the composed graph)"
        )
    need = _ROUND_OPSET if pre.dtype.kind in "iu" else _MIN_OPSET
    (clf,), target, ir = _align([clf], [what], max(need, opset or 0))
    if image_name in {v.name for v in clf.graph.output}:
        raise ModelError(f"classifier: has an output named '{image_name}'; expected another name for the image input")
    prep = preprocessing_model(pre, opset=target, ir_version=ir, input_name=image_name)
    prep = onnx.compose.add_prefix(prep, PREFIX_PREPROCESS, rename_inputs=False)
    clf = onnx.compose.add_prefix(clf, PREFIX_CLASSIFIER, rename_outputs=False)  # outputs keep their names
    props = {p.key: p.value for p in classifier.metadata_props}
    out = _merge(prep, clf, PREFIX_PREPROCESS + "model_input", PREFIX_CLASSIFIER + value.name)
    helper.set_model_props(out, {**props, PREPROCESS_KEY: json.dumps(pre.describe())})
    return out


# --------------------------------------------------------------------------- composition
def compose(
    denoiser: onnx.ModelProto,
    classifier: onnx.ModelProto,
    *,
    preprocess: PreprocessSpec | None = None,
    classifier_input_shape=None,
    classifier_input_name: str | None = None,
    denoiser_input_name: str | None = None,
    denoiser_output_name: str | None = None,
    image_shape=None,
) -> onnx.ModelProto:
    """One ONNX model computing classifier(preprocess(denoiser(x))) for images x in [0,1].

    Parameters
    ----------
    denoiser : ModelProto
        Input [N, C, H, W] float in [0,1] -> output of the same shape in [0,1] pixel units.
    classifier : ModelProto
        Any classifier rs-onnx can load; a batch fixed at 1 is made symbolic, initializers listed
        among the inputs are dropped, and the older of the two opsets is converted up.
    preprocess : PreprocessSpec, optional
        The classifier's preprocessing (layout, scale, mean/std, dtype), as given to ``certify``
        without a denoiser. Default: identity, the classifier's layout and dtype.
    classifier_input_shape : tuple of int, optional
        Per-example classifier input shape, when its declared dims are not fixed.
    classifier_input_name, denoiser_input_name, denoiser_output_name : str, optional
        Needed only when a model has several inputs / outputs.
    image_shape : tuple of int, optional
        Per-example image shape, when the denoiser's declared dims are not fixed.

    Returns
    -------
    ModelProto
        Input: the denoiser's input name, float [batch, *image_shape] in [0,1]; outputs: the
        classifier's outputs, names unchanged. Metadata: the classifier's, plus
        ``rs_onnx.denoiser_sigma`` and ``rs_onnx.sigma`` (from the denoiser's ``rs_onnx.denoiser_sigma``
        when present) and ``rs_onnx.composed`` (JSON). Certify it with the identity preprocessing.
    """
    what = "denoiser"
    den = graph.strip_initializer_inputs(denoiser)
    den, d_in = _batched_input(den, denoiser_input_name, what)
    d_out = _pick(list(den.graph.output), denoiser_output_name, "output", what)
    if graph.np_dtype(d_in) != np.float32 or graph.np_dtype(d_out) != np.float32:
        raise ModelError(
            f"{what}: input '{d_in.name}' is {graph.np_dtype(d_in)} and output '{d_out.name}' is "
            f"{graph.np_dtype(d_out)}; expected float32 images in [0,1]"
        )
    declared = (graph.dims(d_in) or [""])[1:]
    if image_shape is not None and (
        len(declared) != len(image_shape)
        or any(isinstance(a, int) and a != int(b) for a, b in zip(declared, image_shape))
    ):
        raise ModelError(
            f"{what}: input '{d_in.name}' is {graph.format_dims(graph.dims(d_in))} for images shaped "
            f"{list(image_shape)}; expected [N, {', '.join(map(str, image_shape))}]"
        )
    image_shape = _fixed(tuple(image_shape) if image_shape is not None else declared, f"{what} input '{d_in.name}'")
    out_shape = graph.dims(d_out)
    if (
        out_shape
        and len(out_shape) == len(image_shape) + 1
        and any(isinstance(a, int) and a != b for a, b in zip(out_shape[1:], image_shape))
    ):
        raise ModelError(
            f"{what}: output '{d_out.name}' is {graph.format_dims(out_shape)} for input "
            f"{graph.format_dims(graph.dims(d_in))}; expected the input's shape"
        )
    try:
        clf = prepend_preprocessing(
            classifier,
            preprocess,
            image_shape,
            classifier_input_shape=classifier_input_shape,
            classifier_input_name=classifier_input_name,
            image_name=_IMAGE,
            opset=graph.opset_version(den),
        )
    except DataError as err:  # the denoiser's images do not fit the classifier: a model mismatch
        raise ModelError(f"denoiser output '{d_out.name}': {err}") from err
    (den, clf), opset, ir = _align([den, clf], [what, "classifier"], _MIN_OPSET)
    clashes = {d_in.name} & {v.name for v in clf.graph.output}
    if clashes:
        raise ModelError(
            f"the denoiser's input and a classifier output are both named '{clashes.pop()}'; expected distinct names"
        )
    den = onnx.compose.add_prefix(den, PREFIX_DENOISER, rename_inputs=False)
    den_out = PREFIX_DENOISER + d_out.name
    extra = len(den.graph.output) > 1
    props = {p.key: p.value for p in classifier.metadata_props}
    pre_json = next((p.value for p in clf.metadata_props if p.key == PREPROCESS_KEY), "{}")
    out = _merge(den, clf, den_out, _IMAGE, outputs=[v.name for v in clf.graph.output] if extra else None)
    den_props = {p.key: p.value for p in denoiser.metadata_props}
    props[PREPROCESS_KEY] = pre_json
    if DENOISER_SIGMA_KEY in den_props:
        props[DENOISER_SIGMA_KEY] = den_props[DENOISER_SIGMA_KEY]
        props[SIGMA_KEY] = den_props[DENOISER_SIGMA_KEY]
    props[COMPOSED_KEY] = json.dumps(
        {
            "denoiser": {"graph": denoiser.graph.name, "input": d_in.name, "output": d_out.name},
            "classifier": {"graph": classifier.graph.name},
            "preprocess": json.loads(pre_json),
            "opset": opset,
            "ir_version": ir,
        }
    )
    helper.set_model_props(out, props)
    out.producer_name, out.producer_version = "rs-onnx compose", ""
    try:  # the in-memory checker is limited to 2 GB protos; larger ones are checked when loaded from disk
        if out.ByteSize() < 2**31 - 2**20:
            onnx.checker.check_model(out, full_check=True)
    except Exception as err:  # checker and shape inference raise several kinds
        raise ModelError(
            f"the composed model fails onnx.checker ({graph.one_line(err)}); expected a valid "
            "model: check the classifier input shape and the preprocessing"
        ) from err
    logger.info(
        "composed denoiser '%s' and classifier '%s': input '%s' %s, opset %d, IR %d",
        denoiser.graph.name,
        classifier.graph.name,
        d_in.name,
        graph.format_dims(graph.dims(out.graph.input[0])),
        opset,
        ir,
    )
    return out


def compose_files(denoiser_path, classifier_path, out_path, preprocess: PreprocessSpec | None = None, **kwargs) -> Path:
    """Load two .onnx files, :func:`compose` them, write ``out_path`` (parents created) and return it.

    ``kwargs`` go to :func:`compose` (classifier_input_shape, classifier_input_name, ...).
    """
    if Path(out_path).is_dir():
        raise ConfigError(f"output {escape(out_path)}: a directory; expected the path of the .onnx file to write")
    denoiser = graph.load_model(denoiser_path, load_external_data=True)
    classifier = graph.load_model(classifier_path, load_external_data=True)
    composed = compose(denoiser, classifier, preprocess=preprocess, **kwargs)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if composed.ByteSize() > 2**31 - 2**20:  # protobuf's 2 GB limit: weights go to a side file
        onnx.save(composed, str(out_path), save_as_external_data=True, location=out_path.name + ".data")
    else:
        onnx.save(composed, str(out_path))
    logger.info("wrote %s", out_path)
    return out_path
