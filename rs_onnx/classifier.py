"""The base classifier: an onnxruntime session, batch handling and output interpretation.

:class:`OnnxClassifier` turns any ONNX classifier into ``predict(x [B, *input_shape]) -> int64 [B]``.
``x`` is already preprocessed into the model's dtype and layout; noise and preprocessing live elsewhere.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from rs_onnx import cuda, graph, guard, stopping
from rs_onnx.devices import CPU_PROVIDER as _CPU
from rs_onnx.devices import CUDA_PROVIDER as _CUDA
from rs_onnx.devices import cpu_name, cuda_works, gpu_name, parse_device, preload_cuda_libraries
from rs_onnx.devices import default_session_options, working_providers  # noqa: F401 - re-exported
from rs_onnx.errors import ConfigError, DataError, DeviceError, ModelError
from rs_onnx.sampling import Classifier  # noqa: F401 - the protocol OnnxClassifier implements, re-exported

logger = logging.getLogger(__name__)

VERIFY_EXAMPLES = 8
"""Random examples run as one batch and one by one when a model is loaded."""
BATCH_MODES = ("dynamic", "rewritten", "per-sample", "fixed")
FLOAT_TYPES = ("fp32", "fp16")
"""What ``float_type`` can be: the model as it is, or its fp16 conversion."""


class _NotClasses(Exception):  # noqa: N818 - control flow inside this module, never raised to users
    """An output array cannot be read as scores [B, K] or indices [B]."""


def _rows(arr, b: int, kind: str) -> np.ndarray:
    """View an output as scores [b, K] or indices [b]; raises _NotClasses."""
    if not isinstance(arr, np.ndarray):
        raise _NotClasses
    if kind == "scores":
        if arr.ndim >= 2 and arr.shape[0] == b and all(s == 1 for s in arr.shape[2:]):
            return arr.reshape(b, arr.shape[1])
        if arr.ndim == 1 and b == 1:
            return arr.reshape(1, -1)
    elif arr.size == b and arr.ndim <= 2 and (arr.ndim < 2 or arr.shape[1] == 1):
        return arr.reshape(b)
    raise _NotClasses


def _classify(arr, b: int):
    """("scores", K) or ("indices", None) for an output of a batch of b; None if neither."""
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        return None
    if arr.dtype.kind in "iu" and not (arr.ndim >= 2 and arr.shape[1] >= 2):
        try:
            _rows(arr, b, "indices")
        except _NotClasses:
            return None
        return "indices", None
    try:
        k = _rows(arr, b, "scores").shape[1]
    except _NotClasses:
        return None
    return ("scores", k) if k >= 2 else None


def _ort_reason(err) -> str:
    """onnxruntime's error on one short line, without C++ source locations and signatures."""
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(err).split()))
    text = re.sub(r"\S+\.(?:cc|h|cpp):\d+ ", "", text)
    text = re.sub(r"(?:\w+::)+~?\w+\([^()]*(?:\([^()]*\)[^()]*)*\) ", "", text)
    return graph.one_line(text)


def _random_inputs(shape, dtype: np.dtype, rng) -> np.ndarray:
    """Random values of the right dtype: floats in [0, 1), uint8 in [0, 255], other ints in {0, 1}."""
    try:
        return _random_values(shape, dtype, rng)
    except MemoryError:
        raise ModelError(
            f"the load check's random inputs shaped {list(shape)} do not fit in memory; expected "
            "a model whose declared input shape fits (or pass input_shape)"
        ) from None


def _random_values(shape, dtype: np.dtype, rng) -> np.ndarray:
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, 2, shape).astype(dtype)


class OnnxClassifier:
    """An ONNX model as a base classifier for randomized smoothing.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    input_name, output_name : str, optional
        Needed only when the choice is ambiguous (several real inputs / candidate outputs).
    device : {"auto", "cpu", "cuda", "cuda:N"}
        "auto" uses CUDA when a session really runs on it, else CPU; an explicit CUDA device that
        does not work raises :class:`DeviceError` (never a silent fallback).
    extra_inputs : dict name -> array, optional
        Fixed values of the other inputs: one example's value, broadcast over the batch (an array
        whose rank equals the input's declared rank is fed as is unless its leading dim is a batch 1).
    verify_batch : bool
        Check at load that a batch of random inputs gives the same answers as one-by-one runs, and
        fall back to per-sample runs if not.
    sess_options : onnxruntime.SessionOptions, optional
        Default: log warnings off; on CPU, ``session.intra_op.allow_spinning`` 0 (idle model threads
        sleep, leaving the cores to the noise threads).
    max_batch : int, optional
        Largest batch given to one session run (None: the whole ``x``).
    input_shape : tuple of int, optional
        Per-example shape, needed only when the model's non-batch dims are symbolic.
    argmax_in_graph : bool, optional
        Append an ArgMax to the graph so only class indices leave the device (default: on CUDA).
    io_binding : bool, optional
        Run through an :class:`onnxruntime.IOBinding` whose buffers are reused while the batch size stays
        (default: on CUDA). On CUDA the batch goes to one device buffer and only the outputs come back.
    float_type : {"fp32", "fp16"}
        "fp16" runs an fp16 conversion of the model (float32 inputs and outputs kept; see
        :func:`rs_onnx.graph.to_float16`). The certificate then covers the fp16 model, and
        ``signature()`` says so (under its key "precision", kept for meta.json). ``precision`` is this
        argument's earlier name, still accepted (the word now means only the sequential radius step).
    cuda_graph : bool
        CUDA only: replay the model as a captured CUDA graph (onnxruntime's ``enable_cuda_graph``). Needs
        ``max_batch``: every run is padded to that fixed size and goes through IO binding.
    device_noise : bool
        CUDA only, not with ``cuda_graph``: :meth:`predict_noisy` draws the Gaussian noise on the device
        (a RandomNormalLike prefix, Philox). That noise is not reproducible from the seed the way host
        noise is (see :func:`rs_onnx.graph.prepend_noise`). Refused on CPU, where onnxruntime's
        RandomNormal is a minstd LCG with period 2^31.

    Attributes
    ----------
    input_shape, input_dtype, input_name, output_name, output_kind ("scores" | "indices"),
    num_classes, batch_mode ("dynamic" | "rewritten" | "per-sample" | "fixed"), providers, device,
    device_name, metadata, sha256, load_timings (ms per example, measured at load; may be empty),
    float_type, io_binding, cuda_graph, device_noise, prefers_fixed_batch (True on CUDA: the sampler
    pads the last batch so that every run has one shape), fp16_agreement (share of random inputs whose
    fp16 class equals the fp32 one, measured at load). It implements :class:`rs_onnx.sampling.Classifier`.

    Notes
    -----
    Batch modes: "dynamic" (declared symbolic batch, verified), "rewritten" (batch fixed at 1, made
    symbolic by :func:`rs_onnx.graph.make_batch_dynamic`, verified), "per-sample" (verification failed,
    or the input has no batch dim: the original model runs one example at a time), "fixed" (leading
    dim fixed at n > 1 with n output rows: chunks of n, the last one padded by repeating an example).
    For models with external data, ``sess_options`` gets the config entry that locates it.
    """

    def __init__(
        self,
        path,
        *,
        input_name=None,
        output_name=None,
        device="auto",
        extra_inputs=None,
        verify_batch=True,
        sess_options=None,
        max_batch=None,
        input_shape=None,
        argmax_in_graph=None,
        io_binding=None,
        float_type="fp32",
        cuda_graph=False,
        device_noise=False,
        precision=None,
    ):
        self.path = Path(path)
        self._name = self.path.name
        if precision is not None:  # float_type's earlier name
            float_type = precision
        if float_type not in FLOAT_TYPES:
            raise ConfigError(f"float type {float_type!r}; expected one of {', '.join(FLOAT_TYPES)}")
        if device_noise and cuda_graph:
            raise ConfigError(
                "device_noise with cuda_graph: a captured CUDA graph would replay the same noise on "
                "every batch; expected one of the two (host noise works with CUDA graphs)"
            )
        if cuda_graph and (max_batch is None or int(max_batch) < 1):
            raise ConfigError("cuda_graph needs a fixed batch size; expected max_batch (the batch size) to be given")
        self._model = graph.strip_initializer_inputs(graph.load_model(self.path))
        self.metadata = {p.key: p.value for p in self._model.metadata_props}
        if max_batch is not None:
            from rs_onnx.inputs import as_int

            max_batch = as_int("max_batch", max_batch, 1)  # -1 once returned uninitialised memory as classes
        self.max_batch = max_batch
        self.float_type, self.cuda_graph, self.device_noise = float_type, bool(cuda_graph), bool(device_noise)
        self.load_timings: dict[str, float] = {}
        self.fp16_agreement: float | None = None
        self._converted_sha256: str | None = None
        self._choose_input(input_name, extra_inputs or {})
        self._setup_device(device, sess_options)
        declared = graph.dims(self._input_vi)
        if declared is None and input_shape is not None:
            declared = ["", *input_shape]
        if not declared:
            raise ModelError(
                f"model {self._name}: input '{self.input_name}' has shape {graph.format_dims(declared)}; "
                "expected a declared shape [N, ...] (or pass input_shape)"
            )
        lead = declared[0]
        original = self._new_session(str(self.path))
        self._check_device_options()
        self._unbatched, self._fixed_n = False, None
        if isinstance(lead, int) and lead > 1:
            self._load_fixed(original, declared, input_shape, output_name)
        else:
            self.input_shape = self._resolve_shape(declared[1:], input_shape)
            self._load_batched(original, lead == 1, output_name, verify_batch)
        if self.device_noise and self.batch_mode not in ("dynamic", "rewritten"):
            raise ConfigError(
                f"device_noise with batch mode {self.batch_mode}; expected a model with a batch dim "
                "that accepts any batch size"
            )
        self._in_graph = bool(argmax_in_graph if argmax_in_graph is not None else self.device != "cpu")
        self._in_graph = self._in_graph and self.output_kind == "scores" and self._output_dtype.kind == "f"
        self._fetch = [self.output_name]
        self._specs = [cuda.OutputSpec(self.output_name, self._output_dtype, self._output_tail)]
        base = self._rewritten if self.batch_mode == "rewritten" else self._model
        if float_type == "fp16":
            base = self._convert_fp16(base)
        if self._in_graph:
            base = self._append_argmax(base)
        if self.cuda_graph:
            self._session = self._new_session(base, cuda_graph=True)
        self._noise_base = base if self.device_noise else None
        self._noise_session, self._noise_seed = None, None
        self.io_binding = bool(self.device != "cpu" if io_binding is None else io_binding) or self.cuda_graph
        if self.io_binding and self._unbatched:
            logger.info("model %s: input without a batch dim; IO binding off", self._name)
            self.io_binding = False
        self._runner = None
        if self.io_binding:
            kind = "cuda" if self.device.startswith("cuda") else "cpu"
            self._runner = cuda.BoundRunner(
                self._session, self.input_name, self._specs, self._extra, kind, self._index, fixed_shape=self.cuda_graph
            )
        self._rewritten = self._model = None  # free the protos; sessions hold what they need
        logger.info(
            "model %s: batch mode %s, output '%s' (%s), providers %s, float type %s",
            self._name,
            self.batch_mode,
            self.output_name,
            self.output_kind,
            self.providers,
            self.float_type,
        )

    @property
    def prefers_fixed_batch(self) -> bool:
        """True when every run should have one shape (CUDA: cuDNN plans, CUDA graphs): pad the last batch."""
        return self.device.startswith("cuda")

    def _check_device_options(self) -> None:
        """CUDA-only options against the device the model really runs on."""
        on_cuda = self.device.startswith("cuda")
        if self.cuda_graph and not on_cuda:
            raise ConfigError(
                f"cuda_graph on device '{self.device}' (requested '{self._device_request}'); expected a CUDA device"
            )
        if self.device_noise and not on_cuda:
            raise ConfigError(
                f"device_noise on device '{self.device}' (requested '{self._device_request}'): "
                "onnxruntime's CPU RandomNormal is a minstd LCG with period 2^31, too short for "
                "millions of samples; expected a CUDA device, or host noise (the default)"
            )

    def _convert_fp16(self, base: onnx.ModelProto) -> onnx.ModelProto:
        """The fp16 model (float32 I/O), its session in place, and its agreement with fp32 on random inputs."""
        if graph.has_external_data(base):
            onnx.load_external_data_for_model(base, str(self.path.resolve().parent))
        converted = graph.to_float16(base)
        data = converted.SerializeToString()
        self._converted_sha256 = hashlib.sha256(data).hexdigest()
        fp32, self._session = self._session, self._new_session(converted)
        if not self._unbatched:
            x = _random_inputs((VERIFY_EXAMPLES * 4, *self.input_shape), self.input_dtype, np.random.default_rng(1))
            try:
                a = self._classes_of(fp32, x)
                b = self._classes_of(self._session, x)
                self.fp16_agreement = float((a == b).mean())
            except Exception as err:  # noqa: BLE001 - an fp16 model that fails is reported at predict time
                logger.warning("model %s: the fp16 model fails on random inputs (%s)", self._name, _ort_reason(err))
        logger.info(
            "model %s: fp16 conversion; same class as fp32 on %s of random inputs",
            self._name,
            "?" if self.fp16_agreement is None else f"{self.fp16_agreement:.0%}",
        )
        return converted

    def _classes_of(self, session, x) -> np.ndarray:
        rows = []
        size = 1 if self.batch_mode == "per-sample" else (self._fixed_n or len(x))
        for start in range(0, len(x) - size + 1, size):
            out = session.run([self.output_name], self._feed(x[start : start + size]), self._options)[0]
            r = _rows(out, size, self.output_kind)
            rows.append(r.argmax(1) if self.output_kind == "scores" else r)
        return np.concatenate(rows)

    def _append_argmax(self, base: onnx.ModelProto) -> onnx.ModelProto:
        """``base`` with an ArgMax appended and its session in place; ``base`` itself if that fails."""
        try:
            appended = graph.append_argmax(base, self.output_name, num_classes=self.num_classes)
            if not self.cuda_graph:
                self._session = self._new_session(appended)
        except ModelError as err:
            logger.debug("model %s: no in-graph ArgMax (%s); argmax runs in numpy", self._name, err)
            self._in_graph = False
            return base
        self._fetch = [graph.CLASS_OUTPUT, graph.FINITE_OUTPUT]
        self._specs = [
            cuda.OutputSpec(graph.CLASS_OUTPUT, np.dtype(np.int64), ()),
            cuda.OutputSpec(graph.FINITE_OUTPUT, self._output_dtype, ()),
        ]
        return appended

    # ------------------------------------------------------------------ inputs and outputs
    def _choose_input(self, input_name, extra_inputs) -> None:
        inputs = {v.name: v for v in graph.real_inputs(self._model)}
        listing = ", ".join(f"'{n}' {graph.format_dims(graph.dims(v))}" for n, v in inputs.items())
        unknown = [n for n in list(extra_inputs) + ([input_name] if input_name else []) if n not in inputs]
        if unknown:
            raise ConfigError(f"model {self._name}: no input named '{unknown[0]}'; inputs are {listing}")
        if input_name is None:
            free = [n for n in inputs if n not in extra_inputs]
            if len(free) != 1:
                raise ModelError(
                    f"model {self._name}: has {len(inputs)} inputs ({listing}); expected one input to "
                    "perturb: pass input_name and give the others fixed values with extra_inputs"
                )
            input_name = free[0]
        missing = [n for n in inputs if n != input_name and n not in extra_inputs]
        if missing:
            raise ModelError(
                f"model {self._name}: inputs {missing} have no value; expected fixed values for "
                f"every input but '{input_name}' in extra_inputs (inputs: {listing})"
            )
        self.input_name, self._input_vi = input_name, inputs[input_name]
        dtype = graph.np_dtype(self._input_vi)
        if dtype is None or dtype.kind not in "fiub":
            raise ModelError(
                f"model {self._name}: input '{input_name}' has type "
                f"{self._input_vi.type.WhichOneof('value')}; expected a numeric tensor"
            )
        self.input_dtype: np.dtype = dtype
        self._extra = {}
        for name, value in extra_inputs.items():
            if name == input_name:
                raise ConfigError(
                    f"extra_inputs gives a value for '{name}', the input to perturb; expected only others"
                )
            dt = graph.np_dtype(inputs[name])
            value = np.asarray(value)
            if dt is not None and value.dtype != dt:
                if not np.can_cast(value.dtype, dt, "same_kind"):
                    raise ConfigError(f"extra input '{name}' has dtype {value.dtype}; expected {dt}")
                value = value.astype(dt)
            decl = graph.dims(inputs[name])
            batched = decl is not None and len(decl) == value.ndim + 1
            if (
                decl is not None
                and len(decl) == value.ndim
                and value.ndim
                and value.shape[0] == 1
                and (decl[0] == 1 or isinstance(decl[0], str))
            ):
                value, batched = value[0], True
            self._extra[name] = (np.ascontiguousarray(value), batched)

    def _resolve_shape(self, rest, override) -> tuple[int, ...]:
        if override is not None:
            override = tuple(int(v) for v in override)
            if len(override) != len(rest) or any(isinstance(d, int) and d != o for d, o in zip(rest, override)):
                raise ConfigError(
                    f"input_shape {list(override)}; expected a per-example shape matching "
                    f"{graph.format_dims(rest)} of input '{self.input_name}'"
                )
            guard.check_example_size(override, self._name, self.input_name)
            return override
        if any(not isinstance(d, int) or d <= 0 for d in rest):
            raise ModelError(
                f"model {self._name}: input '{self.input_name}' has per-example dims "
                f"{graph.format_dims(rest)}; expected fixed sizes: pass input_shape"
            )
        guard.check_example_size(rest, self._name, self.input_name)
        return tuple(rest)

    def _feed(self, xb: np.ndarray) -> dict:
        feed = {self.input_name: np.ascontiguousarray(xb[0] if self._unbatched else xb)}
        for name, (value, batched) in self._extra.items():
            if batched and not self._unbatched:
                value = np.ascontiguousarray(np.broadcast_to(value, (len(xb), *value.shape)))
            feed[name] = value
        return feed

    def _choose_output(self, outs: dict, b: int, requested):
        """Pick (name, kind, K) among the outputs ``outs`` (name -> array) of a run on b examples."""
        decl = {v.name: v for v in self._model.graph.output}

        def describe(name):
            v, arr = decl.get(name), outs[name]
            shape = graph.dims(v) if v is not None else None
            shape = shape if shape is not None else (list(arr.shape) if isinstance(arr, np.ndarray) else None)
            kind = str(arr.dtype) if isinstance(arr, np.ndarray) else type(arr).__name__
            return f"'{name}' has shape {graph.format_dims(shape)} ({kind})"

        expected = "expected class scores shaped [N, K] with K >= 2 or class indices shaped [N]"
        if requested is not None:
            if requested not in outs:
                raise ConfigError(f"model {self._name}: no output named '{requested}'; outputs are {list(outs)}")
            names = [requested]
        else:
            names = list(outs)
        found = {n: c for n in names if (c := _classify(outs[n], b)) is not None}
        if len(names) == 1 and not found:
            raise ModelError(f"model {self._name}: output {describe(names[0])}; {expected}")
        if not found:
            raise ModelError(
                f"model {self._name}: no output looks like classes: {'; '.join(describe(n) for n in names)}; {expected}"
            )
        if len(found) > 1:
            raise ModelError(
                f"model {self._name}: {len(found)} outputs could be the classes: "
                f"{'; '.join(describe(n) for n in found)}; expected one: pass output_name"
            )
        ((name, (kind, k)),) = found.items()
        self._output_dtype = outs[name].dtype
        shape = outs[name].shape
        self._output_tail = tuple(shape[1:]) if len(shape) >= 1 and shape[0] == b else None
        return name, kind, k

    # ------------------------------------------------------------------ devices and sessions
    def _setup_device(self, device, sess_options) -> None:
        kind, index = parse_device(device)
        self._device_request = str(device)
        if kind == "cuda" and _CUDA not in ort.get_available_providers():
            raise DeviceError(
                f"device '{device}' requested, but this onnxruntime {ort.__version__} has providers "
                f"{ort.get_available_providers()}; expected CUDAExecutionProvider (install onnxruntime-gpu)"
            )
        self._want_cuda = kind == "cuda" or (kind == "auto" and cuda_works(index))
        if self._want_cuda:
            preload_cuda_libraries()
        if kind == "auto" and not self._want_cuda:
            from rs_onnx.doctor import warn_if_gpu_unused

            warn_if_gpu_unused()
        self._explicit, self._index = kind == "cuda", index
        self._providers_req = [(_CUDA, {"device_id": str(index)}), _CPU] if self._want_cuda else [_CPU]
        self.device = f"cuda:{index}" if self._want_cuda else "cpu"
        self._checked = not self._want_cuda
        self._sess_options = sess_options or default_session_options(self.device)
        if graph.has_external_data(self._model):
            self._sess_options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(self.path.resolve().parent)
            )

    def _new_session(self, source, cuda_graph: bool = False) -> ort.InferenceSession:
        """Session for a path (str) or a ModelProto; the first one settles the device."""
        data = source if isinstance(source, str) else source.SerializeToString()
        providers = self._providers_req
        if cuda_graph:
            providers = [(_CUDA, {"device_id": str(self._index), "enable_cuda_graph": "1"}), _CPU]
        try:
            session = ort.InferenceSession(data, self._sess_options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            msg = _ort_reason(err)
            if cuda_graph:
                raise ConfigError(
                    f"model {self._name}: onnxruntime cannot capture it as a CUDA graph ({msg}); "
                    "expected every node on the CUDA provider, or run without cuda_graph"
                ) from err
            if self._want_cuda and "cuda" in msg.lower():
                raise DeviceError(
                    f"device '{self._device_request}': onnxruntime failed to start CUDA ({msg}); "
                    "expected a working CUDA GPU, or pass device 'cpu'"
                ) from err
            raise ModelError(
                f"model {self._name}: onnxruntime {ort.__version__} cannot load it ({msg}); expected "
                "a model it can run with its built-in ops (custom-op libraries are never loaded)"
            ) from err
        if not self._checked:
            self._checked = True
            if session.get_providers()[0] != _CUDA:
                if self._explicit:
                    raise DeviceError(
                        f"device '{self._device_request}' requested, but onnxruntime fell back to "
                        f"{session.get_providers()} (CUDA/cuDNN libraries missing or no GPU; see onnxruntime's log); "
                        "expected a working CUDA GPU, or pass device 'cpu'"
                    )
                logger.debug("device auto: the session fell back to %s; using CPU", session.get_providers())
                self._want_cuda, self._providers_req, self.device = False, [_CPU], "cpu"
        self.providers = session.get_providers()
        return session

    @functools.cached_property
    def device_name(self) -> str:
        """CPU model name, or the GPU's name from nvidia-smi (best effort)."""
        return gpu_name(self._index) if self.device.startswith("cuda") else cpu_name()

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the model file (hex)."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    @functools.cached_property
    def _options(self):
        """Run options of every model call: a signal sets their terminate flag (rs_onnx.stopping)."""
        return stopping.run_options(4)  # errors are raised and reported by rs-onnx, not logged twice

    def _load_run(self, session, fetch, feed, quiet: bool = False):
        """One model call at load time, stopped with a ModelError after :func:`stopping.load_time_limit` seconds."""
        limit = stopping.load_time_limit()
        options = stopping.run_options(4)  # its errors are reported by us, in one line
        with stopping.time_limit(limit, [options]) as state:
            try:
                return session.run(fetch, feed, options)
            except Exception as err:  # onnxruntime raises its own types
                if state["expired"]:
                    raise ModelError(
                        f"model {self._name}: one run on a random input did not finish within {limit:g} s "
                        "at load time; expected a model that finishes (set RS_ONNX_LOAD_TIME_LIMIT="
                        "seconds to allow longer)"
                    ) from err
                raise

    # ------------------------------------------------------------------ batch handling at load
    def _load_batched(self, original, fixed_one: bool, requested, verify: bool) -> None:
        """Dynamic batch, or fixed at 1 and rewritten; verified against one-by-one runs of the original."""
        k = VERIFY_EXAMPLES
        x = _random_inputs((k, *self.input_shape), self.input_dtype, np.random.default_rng(0))
        names = [o.name for o in original.get_outputs()]
        singles, seconds = [], []
        for i in range(k):
            t0 = time.perf_counter()
            try:
                outs = self._load_run(original, None, self._feed(x[i : i + 1]))
            except ModelError:
                raise
            except Exception as err:
                raise ModelError(
                    f"model {self._name}: onnxruntime fails on a random example shaped "
                    f"{[1, *self.input_shape]} ({_ort_reason(err)}); expected it to run on inputs "
                    "of its declared shape"
                ) from err
            seconds.append(time.perf_counter() - t0)
            singles.append(dict(zip(names, outs)))
        self.output_name, self.output_kind, self.num_classes = self._choose_output(singles[0], 1, requested)
        ref = np.concatenate([_rows(s[self.output_name], 1, self.output_kind) for s in singles])
        self.load_timings = {"per_sample_ms": 1e3 * float(np.median(seconds[1:]))}
        mode, batched, reason, self._rewritten = ("rewritten" if fixed_one else "dynamic"), original, None, None
        if fixed_one:
            others = [n for n, (_, is_batched) in self._extra.items() if is_batched]
            try:
                self._rewritten, _ = graph.make_batch_dynamic(self._model, self.input_name, other_inputs=others)
                batched = self._new_session(self._rewritten)
            except ModelError as err:
                reason = f"cannot be built ({err})"
        if verify and reason is None:
            reason = self._verify(batched, x, ref)
        if reason is None:
            self.batch_mode, self._session = mode, batched
            logger.debug("model %s: batch mode %s verified=%s", self._name, mode, verify)
            return
        self.batch_mode, self._session, self._rewritten = "per-sample", original, None
        single, multi = self.load_timings["per_sample_ms"], self.load_timings.get("batched_ms")
        cost = (
            f"about {single / multi:.1f}x slower than batched runs ({single:.3g} vs {multi:.3g} ms per example)"
            if multi
            else f"{single:.3g} ms per example (no batched timing: the batched run failed)"
        )
        logger.warning(
            "model %s: the %s model on a batch of %d random inputs %s; falling back to per-sample runs "
            "of the original model (one example per run), %s",
            self._name,
            mode,
            k,
            reason,
            cost,
        )

    def _verify(self, session, x: np.ndarray, ref: np.ndarray) -> str | None:
        """None when a batched run of x agrees with ``ref`` (one-by-one rows), else the reason."""
        k = len(x)
        try:  # a failure here is expected and reported by us: onnxruntime's log stays quiet
            self._load_run(session, [self.output_name], self._feed(x), quiet=True)  # warm-up for this shape
            t0 = time.perf_counter()
            out = self._load_run(session, [self.output_name], self._feed(x), quiet=True)[0]
            self.load_timings["batched_ms"] = 1e3 * (time.perf_counter() - t0) / k
        except ModelError:
            raise
        except Exception as err:  # noqa: BLE001
            return f"fails ({_ort_reason(err)})"
        try:
            rows = _rows(out, k, self.output_kind)
        except _NotClasses:
            return f"gives output '{self.output_name}' shaped {list(np.shape(out))}; expected {k} rows"
        return _disagreement(rows, ref, self.output_kind)

    def _load_fixed(self, original, declared, override, requested) -> None:
        """Leading dim fixed at n > 1: a fixed batch of n (padded) if the output has n rows, else no batch dim."""
        n = declared[0]
        if override is not None and len(override) == len(declared):
            full = self._resolve_shape(declared, override)
        else:
            full = (n, *self._resolve_shape(declared[1:], override))
        self._unbatched = True  # the probe feeds the whole input as is
        x = _random_inputs(full, self.input_dtype, np.random.default_rng(0))
        try:
            outs = dict(
                zip([o.name for o in original.get_outputs()], self._load_run(original, None, self._feed(x[None])))
            )
        except ModelError:
            raise
        except Exception as err:
            raise ModelError(
                f"model {self._name}: onnxruntime fails on a random input shaped {list(full)} "
                f"({_ort_reason(err)}); expected it to run on inputs of its declared shape"
            ) from err
        try:
            self.output_name, self.output_kind, self.num_classes = self._choose_output(outs, n, requested)
            self.input_shape, self._unbatched, self._fixed_n, self.batch_mode = full[1:], False, n, "fixed"
            logger.info("model %s: batch fixed at %d; runs chunks of %d, padding the last one", self._name, n, n)
        except ModelError as err:
            try:
                self.output_name, self.output_kind, self.num_classes = self._choose_output(outs, 1, requested)
            except ModelError:
                raise err from None
            self.input_shape, self.batch_mode = tuple(full), "per-sample"
            logger.info("model %s: input %s has no batch dim; one example per run", self._name, list(full))
        self._session, self._rewritten = original, None

    # ------------------------------------------------------------------ prediction
    def _check_x(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            expected = "[" + ", ".join(["B", *map(str, self.input_shape)]) + "]"
            raise DataError(
                f"model {self._name}: x has shape {list(x.shape)}; expected {expected} for input '{self.input_name}'"
            )
        if x.dtype != self.input_dtype:
            if not np.can_cast(x.dtype, self.input_dtype, "same_kind"):
                raise DataError(
                    f"model {self._name}: x has dtype {x.dtype}; expected {self.input_dtype} "
                    f"for input '{self.input_name}'"
                )
            x = x.astype(self.input_dtype)
        return x

    def _run_chunks(self, x: np.ndarray, fetch):
        """Yield (start, b, outputs, rows in outputs) over chunks of x."""
        n = len(x)
        if self.batch_mode == "per-sample":
            size = 1
        else:
            size = self._fixed_n or self.max_batch or max(n, 1)
        pad_to = self._fixed_n or (size if self.cuda_graph else None)
        for start in range(0, n, size):
            xb = x[start : start + size]
            b = len(xb)
            if pad_to and b < pad_to:
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad_to - b, axis=0)])
            yield start, b, self._run(fetch, xb), len(xb)

    def _run(self, fetch, xb: np.ndarray):
        """One session run on a chunk: through the IO binding for the classes, else a plain run."""
        if self._runner is not None and fetch == self._fetch:
            return self._runner.run(xb)
        if self.cuda_graph:
            raise ConfigError(
                f"model {self._name}: only classes come out of a CUDA-graph session; expected "
                "cuda_graph off for scores()"
            )
        return self._session.run(fetch, self._feed(xb), self._options)

    def _decode(self, outs, b: int):
        try:
            if self._in_graph:
                return _rows(outs[0], b, "indices").astype(np.int64), np.isfinite(_rows(outs[1], b, "indices"))
            rows = _rows(outs[0], b, self.output_kind)
        except _NotClasses:
            expected = f"[{b}, {self.num_classes}]" if self.output_kind == "scores" else f"[{b}]"
            raise ModelError(
                f"model {self._name}: output '{self._fetch[0]}' has shape {list(np.shape(outs[0]))} "
                f"for a batch of {b}; expected {expected}"
            ) from None
        if self.output_kind == "indices":
            return rows.astype(np.int64), np.ones(b, bool)
        return rows.argmax(axis=1).astype(np.int64), np.isfinite(rows).all(axis=1)

    def predict_with_validity(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Classes and validity of a batch.

        Parameters
        ----------
        x : array [B, *input_shape]
            Preprocessed inputs; cast to ``input_dtype`` when that is a same-kind cast.

        Returns
        -------
        classes : int64 [B]
            Argmax of the scores (first index on ties), or the model's own class indices.
        finite : bool [B]
            False where some score of the row is NaN or +-Inf (its class is then meaningless).
            Always True for index outputs.
        """
        x = self._check_x(x)
        classes, finite = np.empty(len(x), np.int64), np.ones(len(x), bool)
        for start, b, outs, rows in self._run_chunks(x, self._fetch):
            c, f = self._decode(outs, rows)
            classes[start : start + b], finite[start : start + b] = c[:b], f[:b]
        return classes, finite

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class indices int64 [B] for x [B, *input_shape]; -1 where a score of the row is not finite."""
        classes, finite = self.predict_with_validity(x)
        classes[~finite] = -1
        return classes

    def _build_noise_session(self, seed: int) -> None:
        """The session whose graph draws its own noise (see :func:`rs_onnx.graph.prepend_noise`), for ``seed``."""
        if self._noise_base is None:
            raise ConfigError(f"model {self._name}: predict_noisy needs device_noise=True")
        shape = (1, *self.input_shape)
        noisy = graph.prepend_noise(self._noise_base, self.input_name, gain_shape=shape[1:], seed=seed)
        self._noise_session, self._noise_seed = self._new_session(noisy), int(seed)

    def predict_noisy(self, clean: np.ndarray, index: np.ndarray, gain: np.ndarray, seed: int) -> np.ndarray:
        """Classes (-1 where not finite) of ``clean[index] + N(0, 1) * gain``, the noise drawn on the device.

        clean : float32 [E, *input_shape], examples laid out and normalised. index : int64 [B] rows of
        ``clean``. gain : float32 broadcastable to one example (sigma * scale / std). seed : seeds the
        device generator once per session (the stream then runs on across calls).
        """
        if self._noise_session is None or self._noise_seed != int(seed):
            self._build_noise_session(seed)
        clean = np.ascontiguousarray(clean, dtype=np.float32)
        index = np.ascontiguousarray(index, dtype=np.int64)
        gain = np.ascontiguousarray(np.broadcast_to(np.asarray(gain, np.float32), self.input_shape))
        n = len(index)
        size = self.max_batch or max(n, 1)
        classes, finite = np.empty(n, np.int64), np.ones(n, bool)
        for start in range(0, n, size):
            idx = index[start : start + size]
            b = len(idx)
            feed = {graph.CLEAN_INPUT: clean, graph.INDEX_INPUT: idx, graph.GAIN_INPUT: gain}
            for name, (value, batched) in self._extra.items():
                feed[name] = np.ascontiguousarray(np.broadcast_to(value, (b, *value.shape))) if batched else value
            c, f = self._decode(self._noise_session.run(self._fetch, feed, self._options), b)
            classes[start : start + b], finite[start : start + b] = c, f
        classes[~finite] = -1
        return classes

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Raw class scores [B, K] (logits or probabilities, as the model gives them)."""
        if self.output_kind != "scores":
            raise ModelError(
                f"model {self._name}: output '{self.output_name}' holds class indices; "
                "expected class scores for scores()"
            )
        x = self._check_x(x)
        out = np.empty((len(x), self.num_classes), np.float64)
        for start, b, outs, rows in self._run_chunks(x, [self.output_name]):
            out[start : start + b] = _rows(outs[0], rows, "scores")[:b]
        return out

    def signature(self) -> dict:
        """JSON-able facts for meta.json: model, I/O names, shapes, dtypes, batch mode, providers."""
        return {
            "model": self._name,
            "sha256": self.sha256,
            "input_name": self.input_name,
            "input_shape": list(self.input_shape),
            "input_dtype": str(self.input_dtype),
            "extra_inputs": {n: list(v.shape) for n, (v, _) in self._extra.items()},
            "output_name": self.output_name,
            "output_kind": self.output_kind,
            "num_classes": self.num_classes,
            "batch_mode": self.batch_mode,
            "providers": list(self.providers),
            "device": self.device,
            "device_name": self.device_name,
            "precision": self.float_type,  # meta.json's key since 0.1.0
            "certified_model": (
                f"fp16 conversion of {self._name} (onnxruntime.transformers.float16, keep_io_types): "
                "the certificate covers the fp16 model"
                if self.float_type == "fp16"
                else self._name
            ),
            **(
                {"fp16_sha256": self._converted_sha256, "fp16_agreement_random_inputs": self.fp16_agreement}
                if self.float_type == "fp16"
                else {}
            ),
            "io_binding": self.io_binding,
            "cuda_graph": self.cuda_graph,
            "noise": (
                "device: onnxruntime RandomNormalLike (Philox on CUDA), seeded per session; not reproducible "
                "per (seed, example, phase, block)"
                if self.device_noise
                else "host"
            ),
        }

    def __repr__(self) -> str:
        return (
            f"OnnxClassifier({self._name!r}, input={self.input_name!r} {list(self.input_shape)} "
            f"{self.input_dtype}, output={self.output_name!r} ({self.output_kind}, K={self.num_classes}), "
            f"batch_mode={self.batch_mode!r}, device={self.device!r})"
        )


def _disagreement(rows: np.ndarray, ref: np.ndarray, kind: str) -> str | None:
    """None when batched rows match one-by-one rows ``ref``, else what differs."""
    k = len(ref)
    if kind == "indices":
        bad = int((rows != ref).sum())
        return f"gives {bad} of {k} classes different from one-by-one runs" if bad else None
    got, want = rows.astype(np.float64), ref.astype(np.float64)
    finite = np.isfinite(want)
    if not np.array_equal(np.isfinite(got), finite):
        return "gives non-finite scores where one-by-one runs do not, or vice versa"
    diff = float(np.abs(got - want)[finite].max(initial=0.0))
    scale = float(np.abs(want[finite]).max(initial=0.0))
    tol = (1e-2 if rows.dtype.itemsize <= 2 else 1e-3) * max(scale, 1e-3)
    if diff > tol:
        return f"gives scores up to {diff:.3g} away from one-by-one runs (tolerance {tol:.3g})"
    top2 = np.sort(np.where(finite, want, -np.inf), axis=1)[:, -2:]
    bad = (got.argmax(1) != want.argmax(1)) & (top2[:, 1] - top2[:, 0] > 2 * tol)
    return f"gives {int(bad.sum())} of {k} classes different from one-by-one runs" if bad.any() else None
