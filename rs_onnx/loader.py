"""Loading a model into onnxruntime sessions and checking them before any sample is drawn.

:func:`load` reads the ``.onnx`` file, settles the device with the first session, finds how the model
takes a batch (verified against one-by-one runs), builds the session that predictions run (fp16, an
appended ArgMax, a CUDA graph) and returns every resolved value in a frozen :class:`Loaded`.
:class:`rs_onnx.classifier.OnnxClassifier` runs it; :mod:`rs_onnx.model_io` reads inputs and outputs.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from rs_onnx import cuda, graph, shapes, stopping
from rs_onnx.devices import CPU_PROVIDER, CUDA_PROVIDER, TENSORRT_LIBRARY, TENSORRT_PROVIDER, cuda_works
from rs_onnx.devices import default_session_options, device_noise_default, parse_device, preload_cuda_libraries
from rs_onnx.devices import tensorrt_available
from rs_onnx.errors import ConfigError, DeviceError, ModelError
from rs_onnx.model_io import ClassOutput, ModelInput, choose_input, choose_output, disagreement, feed
from rs_onnx.model_io import NotClasses, random_inputs, resolve_shape, rows

logger = logging.getLogger(__name__)

VERIFY_EXAMPLES = 8
"""Random examples run as one batch and one by one when a model is loaded."""
BATCH_MODES = ("dynamic", "rewritten", "per-sample", "fixed")
FLOAT_TYPES = ("fp32", "fp16")
"""What ``float_type`` can be: the model as it is, or its fp16 conversion."""


def ort_reason(err: BaseException) -> str:
    """onnxruntime's error on one short line, without C++ source locations and signatures."""
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(err).split()))
    text = re.sub(r"\S+\.(?:cc|h|cpp):\d+ ", "", text)
    text = re.sub(r"(?:\w+::)+~?\w+\([^()]*(?:\([^()]*\)[^()]*)*\) ", "", text)
    return graph.one_line(text)


# ------------------------------------------------------------------ devices and sessions
@dataclass(frozen=True)
class Placement:
    """Where a model's sessions run: ``device`` "cpu" or "cuda:i" (settled by :func:`open_first`).

    ``request``: the device as the user asked for it; ``explicit``: CUDA was asked for by name (no
    silent fallback to CPU); ``index``: the CUDA device id. ``cuda_options``: CUDA provider options asked for
    (:func:`rs_onnx.devices.cuda_provider_options`; used on CUDA only); ``tensorrt``: put the TensorRT provider
    first (only when asked for and ``libnvinfer.so.10`` loads; never with a CUDA graph).
    """

    model_name: str
    request: str
    device: str
    index: int
    explicit: bool
    sess_options: ort.SessionOptions
    cuda_options: Mapping[str, str] = dataclass_field(default_factory=dict)
    tensorrt: bool = False

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def providers(self, cuda_graph: bool = False) -> list:
        """The providers of a session: CPU, or [TensorRT,] CUDA (with the options asked for), CPU."""
        if not (self.on_cuda or cuda_graph):
            return [CPU_PROVIDER]
        cuda = {"device_id": str(self.index), **self.cuda_options, **({"enable_cuda_graph": "1"} if cuda_graph else {})}
        providers: list = [(CUDA_PROVIDER, cuda), CPU_PROVIDER]
        if self.tensorrt and not cuda_graph:  # RandomNormalLike (device noise) stays on CUDA (Philox)
            trt = {"device_id": str(self.index), "trt_op_types_to_exclude": "RandomNormalLike"}
            providers.insert(0, (TENSORRT_PROVIDER, trt))
        return providers

    def session(self, source: str | onnx.ModelProto, cuda_graph: bool = False) -> ort.InferenceSession:
        """A session for a path (str) or a ModelProto; onnxruntime's failures as one-line errors."""
        data = source if isinstance(source, str) else source.SerializeToString()
        providers = self.providers(cuda_graph)
        try:
            return ort.InferenceSession(data, self.sess_options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            msg = ort_reason(err)
            if cuda_graph:
                raise ConfigError(
                    f"model {self.model_name}: onnxruntime cannot capture it as a CUDA graph ({msg}); "
                    "expected every node on the CUDA provider, or run without cuda_graph"
                ) from err
            if self.on_cuda and "cuda" in msg.lower():
                raise DeviceError(
                    f"device '{self.request}': onnxruntime failed to start CUDA ({msg}); "
                    "expected a working CUDA GPU, or pass device 'cpu'"
                ) from err
            raise ModelError(
                f"model {self.model_name}: onnxruntime {ort.__version__} cannot load it ({msg}); expected "
                "a model it can run with its built-in ops (custom-op libraries are never loaded)"
            ) from err


def place(
    model: onnx.ModelProto, path: Path, device, sess_options, cuda_options=None, tensorrt: bool = False
) -> Placement:
    """The device asked for, before any session: CUDA when asked for (or, for "auto", when it works).
    ``cuda_options`` and ``tensorrt`` apply on CUDA only (on CPU they are not applicable: logged, not used)."""
    kind, index = parse_device(device)
    if kind == "cuda" and CUDA_PROVIDER not in ort.get_available_providers():
        raise DeviceError(
            f"device '{device}' requested, but this onnxruntime {ort.__version__} has providers "
            f"{ort.get_available_providers()}; expected CUDAExecutionProvider (install onnxruntime-gpu)"
        )
    want_cuda = kind == "cuda" or (kind == "auto" and cuda_works(index))
    if want_cuda:
        preload_cuda_libraries()
    if kind == "auto" and not want_cuda:
        from rs_onnx.doctor import warn_if_gpu_unused

        warn_if_gpu_unused()
    name = f"cuda:{index}" if want_cuda else "cpu"
    options = sess_options or default_session_options(name)
    if graph.has_external_data(model):
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(path.resolve().parent)
        )
    asked = dict(cuda_options or {})
    if not want_cuda and (asked or tensorrt):
        logger.warning(
            "model %s on %s: CUDA-only options %s do not apply; recorded as not applicable",
            path.name,
            name,
            ", ".join([*(f"{k}={v}" for k, v in asked.items()), *(["tensorrt"] if tensorrt else [])]),
        )
    use_trt = bool(tensorrt) and want_cuda and tensorrt_available()
    if tensorrt and want_cuda and not use_trt:
        logger.warning(
            "model %s: TensorRT asked for, but %s does not load here (or onnxruntime lacks %s); using the CUDA "
            "provider",
            path.name,
            TENSORRT_LIBRARY,
            TENSORRT_PROVIDER,
        )
    return Placement(path.name, str(device), name, index, kind == "cuda", options, asked, use_trt)


def open_first(placement: Placement, path: Path) -> tuple[ort.InferenceSession, Placement]:
    """The session of the model file as it is, and the placement it settles (auto: CUDA, or CPU if it fell back)."""
    session = placement.session(str(path))
    if placement.on_cuda and session.get_providers()[0] != CUDA_PROVIDER:
        if placement.explicit:
            raise DeviceError(
                f"device '{placement.request}' requested, but onnxruntime fell back to "
                f"{session.get_providers()} (CUDA/cuDNN libraries missing or no GPU; see onnxruntime's log); "
                "expected a working CUDA GPU, or pass device 'cpu'"
            )
        logger.debug("device auto: the session fell back to %s; using CPU", session.get_providers())
        placement = replace(placement, device="cpu")
    return session, placement


def load_run(session: ort.InferenceSession, fetch, inputs: dict, model_name: str) -> list:
    """One model call at load time, stopped with a ModelError after :func:`stopping.load_time_limit` seconds."""
    limit = stopping.load_time_limit()
    options = stopping.run_options(4)  # its errors are reported by us, in one line
    with stopping.time_limit(limit, [options]) as state:
        try:
            return session.run(fetch, inputs, options)
        except Exception as err:  # onnxruntime raises its own types
            if state["expired"]:
                raise ModelError(
                    f"model {model_name}: one run on a random input did not finish within {limit:g} s "
                    "at load time; expected a model that finishes (set RS_ONNX_LOAD_TIME_LIMIT="
                    "seconds to allow longer)"
                ) from err
            raise


# ------------------------------------------------------------------ how the model takes a batch
@dataclass(frozen=True)
class Batching:
    """How the model takes a batch, found at load.

    ``mode``: "dynamic" (declared symbolic batch, verified), "rewritten" (batch fixed at 1, made
    symbolic by :func:`rs_onnx.graph.make_batch_dynamic`, verified), "per-sample" (verification failed,
    or the input has no batch dim: the original model runs one example at a time), "fixed" (leading dim
    fixed at ``fixed_n`` > 1 with that many output rows: chunks of ``fixed_n``, the last one padded).
    ``unbatched``: the input has no batch dim (fed one example as
    is). ``timings``: ms per example measured at load ("per_sample_ms", "batched_ms"; may be empty).
    """

    mode: str
    input_shape: tuple[int, ...]
    output: ClassOutput
    timings: Mapping[str, float]
    fixed_n: int | None = None
    unbatched: bool = False


def load_batched(
    placement: Placement,
    model: onnx.ModelProto,
    original: ort.InferenceSession,
    inp: ModelInput,
    input_shape: tuple[int, ...],
    fixed_one: bool,
    requested: str | None,
    verify: bool,
) -> tuple[Batching, ort.InferenceSession, onnx.ModelProto]:
    """Dynamic batch, or fixed at 1 and rewritten; verified against one-by-one runs of the original.

    Returns the batching, its session and the model that session runs (the rewritten one, or ``model``).
    """
    name, k = placement.model_name, VERIFY_EXAMPLES
    x = random_inputs((k, *input_shape), inp.dtype, np.random.default_rng(0))
    names = [o.name for o in original.get_outputs()]
    singles, seconds = [], []
    for i in range(k):
        t0 = time.perf_counter()
        try:
            outs = load_run(original, None, feed(inp, x[i : i + 1]), name)
        except ModelError:
            raise
        except Exception as err:
            if inp.dims is not None and shapes.symbolic(inp.dims[1:]):  # the shape came from --input-shape or the data
                raise ModelError(
                    f"model {name}: the graph rejects input '{inp.name}' shaped {[1, *input_shape]} although it "
                    f"declares {graph.format_dims(inp.dims)} ({ort_reason(err)[:300]}); expected the size it was "
                    f"exported for: give it with {shapes.FLAG} and resize the data to match (--resize HxW)"
                ) from err
            raise ModelError(
                f"model {name}: onnxruntime fails on a random example shaped {[1, *input_shape]} "
                f"({ort_reason(err)}); expected it to run on inputs of its declared shape"
            ) from err
        seconds.append(time.perf_counter() - t0)
        singles.append(dict(zip(names, outs)))
    output = choose_output(model, singles[0], 1, requested, name, trials=singles[1:])
    ref = np.concatenate([rows(s[output.name], 1, output.kind) for s in singles])
    timings = {"per_sample_ms": 1e3 * float(np.median(seconds[1:]))}
    mode, batched, reason, rewritten = ("rewritten" if fixed_one else "dynamic"), original, None, model
    if fixed_one:
        others = [n for n, (_, is_batched) in inp.extra.items() if is_batched]
        try:
            rewritten, _ = graph.make_batch_dynamic(model, inp.name, other_inputs=others)
            batched = placement.session(rewritten)
        except ModelError as err:
            reason = f"cannot be built ({err})"
    if verify and reason is None:
        reason, batched_ms = verify_batch(batched, inp, output, x, ref, name)
        if batched_ms is not None:
            timings["batched_ms"] = batched_ms
    if reason is None:
        logger.debug("model %s: batch mode %s verified=%s", name, mode, verify)
        return Batching(mode, input_shape, output, timings), batched, rewritten
    single, multi = timings["per_sample_ms"], timings.get("batched_ms")
    cost = fallback_cost(single, multi)
    logger.warning(
        "model %s: the %s model on a batch of %d random inputs %s; falling back to per-sample runs "
        "of the original model (one example per run), %s",
        name,
        mode,
        k,
        reason,
        cost,
    )
    return Batching("per-sample", input_shape, output, timings), original, model


def fallback_cost(single: float, multi: float | None) -> str:
    """What per-sample runs cost next to batched ones (ms per example each; ``multi`` None: no batched timing)."""
    if not multi:
        return f"{single:.3g} ms per example (no batched timing: the batched run failed)"
    times = f"({single:.3g} vs {multi:.3g} ms per example)"
    ratio = single / multi
    if ratio >= 1.05:
        return f"about {ratio:.1f}x slower than batched runs {times}"
    if ratio <= 1 / 1.05:
        return f"about {1 / ratio:.1f}x faster than batched runs on this model {times}"
    return f"about as fast as batched runs {times}"


def verify_batch(
    session: ort.InferenceSession, inp: ModelInput, output: ClassOutput, x: np.ndarray, ref: np.ndarray, model_name: str
) -> tuple[str | None, float | None]:
    """(None when a batched run of x agrees with ``ref`` (one-by-one rows) else the reason, ms per example)."""
    k = len(x)
    try:  # a failure here is expected and reported by us (one run, no warm-up: its timing only words a warning)
        t0 = time.perf_counter()
        out = load_run(session, [output.name], feed(inp, x), model_name)[0]
        batched_ms = 1e3 * (time.perf_counter() - t0) / k
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001
        return f"fails ({ort_reason(err)})", None
    try:
        got = rows(out, k, output.kind)
    except NotClasses:
        return f"gives output '{output.name}' shaped {list(np.shape(out))}; expected {k} rows", batched_ms
    return disagreement(got, ref, output.kind), batched_ms


def load_fixed(
    model: onnx.ModelProto,
    original: ort.InferenceSession,
    inp: ModelInput,
    declared: list,
    override,
    requested: str | None,
    model_name: str,
) -> Batching:
    """Leading dim fixed at n > 1: a fixed batch of n (padded) if the output has n rows, else no batch dim."""
    n = declared[0]
    if override is not None and len(override) == len(declared):
        full = resolve_shape(declared, override, model_name, inp.name)
    else:
        full = (n, *resolve_shape(declared[1:], override, model_name, inp.name))
    x = random_inputs(full, inp.dtype, np.random.default_rng(0))
    try:  # the probe feeds the whole input as is
        names = [o.name for o in original.get_outputs()]
        outs = dict(zip(names, load_run(original, None, feed(inp, x[None], unbatched=True), model_name)))
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(
            f"model {model_name}: onnxruntime fails on a random input shaped {list(full)} "
            f"({ort_reason(err)}); expected it to run on inputs of its declared shape"
        ) from err
    try:
        output = choose_output(model, outs, n, requested, model_name)
    except ModelError as err:
        try:
            output = choose_output(model, outs, 1, requested, model_name)
        except ModelError:
            raise err from None
        logger.info("model %s: input %s has no batch dim; one example per run", model_name, list(full))
        return Batching("per-sample", tuple(full), output, {}, unbatched=True)
    logger.info("model %s: batch fixed at %d; runs chunks of %d, padding the last one", model_name, n, n)
    return Batching("fixed", tuple(full[1:]), output, {}, fixed_n=n)


# ------------------------------------------------------------------ the session predictions run
def classes_of(session: ort.InferenceSession, x: np.ndarray, inp: ModelInput, batching: Batching) -> np.ndarray:
    """Classes int64 [len(x)] of ``session`` (a model with ``batching.output``) on x, in the batching's chunks."""
    output, options = batching.output, stopping.run_options(4)
    size = 1 if batching.mode == "per-sample" else (batching.fixed_n or len(x))
    found = []
    for start in range(0, len(x) - size + 1, size):
        out = session.run([output.name], feed(inp, x[start : start + size]), options)[0]
        r = rows(out, size, output.kind)
        found.append(r.argmax(1) if output.kind == "scores" else r)
    return np.concatenate(found)


def convert_fp16(
    placement: Placement,
    base: onnx.ModelProto,
    fp32: ort.InferenceSession,
    path: Path,
    inp: ModelInput,
    batching: Batching,
) -> tuple[onnx.ModelProto, ort.InferenceSession, str, float | None]:
    """(fp16 model with float32 I/O, its session, its sha256, share of random inputs it classes as ``fp32``
    does); ``fp32`` is the session of ``base``."""
    if graph.has_external_data(base):
        onnx.load_external_data_for_model(base, str(path.resolve().parent))
    converted = graph.to_float16(base)
    sha256 = hashlib.sha256(converted.SerializeToString()).hexdigest()
    session = placement.session(converted)
    agreement = None
    if not batching.unbatched:
        x = random_inputs((VERIFY_EXAMPLES * 4, *batching.input_shape), inp.dtype, np.random.default_rng(1))
        try:
            a, b = classes_of(fp32, x, inp, batching), classes_of(session, x, inp, batching)
            agreement = float((a == b).mean())
        except Exception as err:  # noqa: BLE001 - an fp16 model that fails is reported at predict time
            logger.warning(
                "model %s: the fp16 model fails on random inputs (%s)", placement.model_name, ort_reason(err)
            )
    logger.info(
        "model %s: fp16 conversion; same class as fp32 on %s of random inputs",
        placement.model_name,
        "?" if agreement is None else f"{agreement:.0%}",
    )
    return converted, session, sha256, agreement


@dataclass(frozen=True)
class Loaded:
    """A loaded model: every value resolved at load, and the session that predictions run.

    ``session`` runs ``fetch``: the class output, or with ``in_graph`` the appended ArgMax's classes
    and finiteness flag. ``noise_base``: the model that device noise is prepended to (device_noise only).
    ``fp16_sha256`` / ``fp16_agreement``: the fp16 conversion's hash and its agreement with fp32 on
    random inputs (float_type "fp16" only; the agreement is None when it could not be measured).
    ``model``: the graph ``session`` runs (without the CUDA graph), from which :meth:`fresh_session` builds
    others. ``one_shape``: ``session`` has never run at load, and the runner keeps it at one input shape
    (checks and probes run on fresh sessions): True on CUDA, where each new shape costs a cuDNN plan.
    """

    name: str
    metadata: Mapping[str, str]
    input: ModelInput
    batching: Batching
    placement: Placement
    session: ort.InferenceSession
    in_graph: bool
    float_type: str
    cuda_graph: bool
    device_noise: bool
    max_batch: int | None
    noise_base: onnx.ModelProto | None = None
    fp16_sha256: str | None = None
    fp16_agreement: float | None = None
    model: onnx.ModelProto | None = None
    one_shape: bool = False

    def fresh_session(self, tensorrt: bool = False, quick_plans: bool = False) -> ort.InferenceSession:
        """A new session of ``model`` on the same placement, without a CUDA graph, and without TensorRT (whose engine
        would be built again for every shape) unless ``tensorrt`` and the placement uses it: checks, probes, ceilings.
        ``quick_plans``: cuDNN's HEURISTIC search (a new shape costs milliseconds, not a search) for a session that
        runs several shapes once each and whose speed does not matter (the checks)."""
        assert self.model is not None
        options = dict(self.placement.cuda_options)
        if quick_plans:
            options["cudnn_conv_algo_search"] = "HEURISTIC"
        placement = replace(self.placement, tensorrt=tensorrt and self.placement.tensorrt, cuda_options=options)
        return placement.session(self.model)

    @property
    def fetch(self) -> list[str]:
        return [graph.CLASS_OUTPUT, graph.FINITE_OUTPUT] if self.in_graph else [self.batching.output.name]

    @property
    def specs(self) -> list[cuda.OutputSpec]:
        """The fetched outputs' dtypes and per-example shapes (for IO binding)."""
        out = self.batching.output
        if self.in_graph:
            return [
                cuda.OutputSpec(graph.CLASS_OUTPUT, np.dtype(np.int64), ()),
                cuda.OutputSpec(graph.FINITE_OUTPUT, out.dtype, ()),
            ]
        return [cuda.OutputSpec(out.name, out.dtype, out.tail)]


def load(
    path,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
    device="auto",
    extra_inputs: Mapping | None = None,
    verify_batch: bool = True,
    sess_options: ort.SessionOptions | None = None,
    max_batch: int | None = None,
    input_shape=None,
    argmax_in_graph: bool | None = None,
    float_type: str = "fp32",
    cuda_graph: bool = False,
    device_noise: bool | str = False,
    cuda_options: Mapping[str, str] | None = None,
    tensorrt: bool = False,
    one_shape: bool | None = None,
) -> Loaded:
    """Load and check a model (see :class:`rs_onnx.classifier.OnnxClassifier` for the arguments)."""
    path = Path(path)
    name = path.name
    if float_type not in FLOAT_TYPES:
        raise ConfigError(f"float type {float_type!r}; expected one of {', '.join(FLOAT_TYPES)}")
    auto_noise = isinstance(device_noise, str)
    if auto_noise and device_noise != "auto":
        raise ConfigError(f"device_noise {device_noise!r}; expected True, False or 'auto'")
    if not auto_noise:
        device_noise = bool(device_noise)  # 1, numpy.True_: True
    if device_noise is True and cuda_graph:
        raise ConfigError(
            "device_noise with cuda_graph: a captured CUDA graph would replay the same noise on "
            "every batch; expected one of the two (host noise works with CUDA graphs)"
        )
    if cuda_graph and (max_batch is None or int(max_batch) < 1):
        raise ConfigError("cuda_graph needs a fixed batch size; expected max_batch (the batch size) to be given")
    model = graph.strip_initializer_inputs(graph.load_model(path))
    metadata = {p.key: p.value for p in model.metadata_props}
    if max_batch is not None:
        from rs_onnx.inputs import as_int

        max_batch = as_int("max_batch", max_batch, 1)  # -1 once returned uninitialised memory as classes
    inp = choose_input(model, name, input_name, extra_inputs or {})
    placement = place(model, path, device, sess_options, cuda_options, tensorrt)
    declared = inp.dims  # never None: onnx.checker (graph.load_model) refuses a graph input without a shape
    if not declared:
        raise ModelError(
            f"model {name}: input '{inp.name}' has shape {graph.format_dims(declared)}; "
            "expected a tensor with a batch dim [N, ...]"
        )
    original, placement = open_first(placement, path)
    _check_device_options(placement, cuda_graph, device_noise is True)
    lead = declared[0]
    if isinstance(lead, int) and lead > 1:
        batching = load_fixed(model, original, inp, declared, input_shape, output_name, name)
        session, base = original, model
    else:
        shape = resolve_shape(declared[1:], input_shape, name, inp.name)
        batching, session, base = load_batched(
            placement, model, original, inp, shape, lead == 1, output_name, verify_batch
        )
    if auto_noise:
        device_noise = inp.dtype.kind == "f" and device_noise_default(
            placement.on_cuda,
            int(np.prod(batching.input_shape)),
            batching.mode in ("dynamic", "rewritten"),
            cuda_graph,
            metadata.get("rs_onnx.noise"),
        )
        if device_noise:
            logger.info(
                "model %s: device noise by default (CUDA, inputs of this size); device_noise=False (--no-device-noise) "
                "for host noise",
                name,
            )
    if device_noise and batching.mode not in ("dynamic", "rewritten"):
        raise ConfigError(
            f"device_noise with batch mode {batching.mode}; expected a model with a batch dim "
            "that accepts any batch size"
        )
    out = batching.output
    in_graph = bool(argmax_in_graph if argmax_in_graph is not None else placement.on_cuda)
    in_graph = in_graph and out.kind == "scores" and out.dtype.kind == "f"
    fp16_sha256, fp16_agreement = None, None
    fresh = False  # whether ``session`` has never run (every session before the ArgMax step ran at load)
    if float_type == "fp16":
        base, session, fp16_sha256, fp16_agreement = convert_fp16(placement, base, session, path, inp, batching)
    if in_graph:
        try:
            appended = graph.append_argmax(base, out.name, num_classes=out.num_classes)
            session, fresh = (session, fresh) if cuda_graph else (placement.session(appended), True)
            base = appended
        except ModelError as err:
            logger.debug("model %s: no in-graph ArgMax (%s); argmax runs in numpy", name, err)
            in_graph = False
    if cuda_graph:
        session, fresh = placement.session(base, cuda_graph=True), True
    one_shape = placement.on_cuda if one_shape is None else bool(one_shape)
    if one_shape and not fresh:  # the run's session sees one input shape for its whole life
        session = placement.session(base)
    return Loaded(
        name,
        metadata,
        inp,
        batching,
        placement,
        session,
        in_graph,
        float_type,
        bool(cuda_graph),
        bool(device_noise),
        max_batch,
        base if device_noise else None,
        fp16_sha256,
        fp16_agreement,
        base,
        one_shape,
    )


def _check_device_options(placement: Placement, cuda_graph: bool, device_noise: bool) -> None:
    """CUDA-only options against the device the model really runs on."""
    if cuda_graph and not placement.on_cuda:
        raise ConfigError(
            f"cuda_graph on device '{placement.device}' (requested '{placement.request}'); expected a CUDA device"
        )
    if device_noise and not placement.on_cuda:
        raise ConfigError(
            f"device_noise on device '{placement.device}' (requested '{placement.request}'): "
            "onnxruntime's CPU RandomNormal is a minstd LCG with period 2^31, too short for "
            "millions of samples; expected a CUDA device, or host noise (the default)"
        )
