"""The base classifier: runs a loaded ONNX model on batches and reads its classes.

:class:`OnnxClassifier` turns any ONNX classifier into ``predict(x [B, *input_shape]) -> int64 [B]``.
``x`` is already preprocessed into the model's dtype and layout; noise and preprocessing live elsewhere.
Loading and the load-time checks live in :mod:`rs_onnx.loader`, reading inputs and outputs in
:mod:`rs_onnx.model_io`; this module is the runner.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
from pathlib import Path

import numpy as np

from rs_onnx import cuda, graph, loader, stopping
from rs_onnx.devices import cpu_name, gpu_name
from rs_onnx.devices import default_session_options, working_providers  # noqa: F401 - re-exported
from rs_onnx.errors import ConfigError, DataError, ModelError
from rs_onnx.loader import BATCH_MODES, FLOAT_TYPES, VERIFY_EXAMPLES  # noqa: F401 - re-exported
from rs_onnx.model_io import decode, feed, rows
from rs_onnx.sampling import Classifier  # noqa: F401 - the protocol OnnxClassifier implements, re-exported

logger = logging.getLogger(__name__)


def precision_text(float_type: str, input_dtype, output_dtype) -> str:
    """How the model runs, for the load log: rs-onnx's fp16 conversion, or the model as given with its own
    float I/O types (a float16 model is not "fp32")."""
    if float_type == "fp16":
        return "float type fp16 (converted by rs-onnx, float32 I/O)"
    kinds = sorted({str(np.dtype(d)) for d in (input_dtype, output_dtype) if np.dtype(d).kind == "f"})
    return f"float type: the model as given ({', '.join(kinds) or 'no float'} I/O)"


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
    device_noise : bool or "auto"
        "auto": on when :func:`rs_onnx.devices.device_noise_default` says so (CUDA, inputs of at least
        100,000 values, any batch size, no CUDA graph, Gaussian noise), else off. True: CUDA only, not with
        ``cuda_graph``: :meth:`predict_noisy` draws the Gaussian noise on the device
        (a RandomNormalLike prefix, Philox). That noise is not reproducible from the seed the way host
        noise is (see :func:`rs_onnx.graph.prepend_noise`). Refused on CPU, where onnxruntime's
        RandomNormal is a minstd LCG with period 2^31.
    cuda_options : dict, optional
        Extra CUDA provider options (:func:`rs_onnx.devices.cuda_provider_options`: ``cudnn_conv_algo_search``,
        ``prefer_nhwc``); on a CPU run they are recorded as not applicable.
    tensorrt : bool
        Put onnxruntime's TensorRT provider first when ``libnvinfer.so.10`` loads (RandomNormalLike excluded);
        without it, the CUDA provider (a warning). Never required.
    one_shape : bool, optional
        The session sees one input shape for its whole life: load-time trials, checks and probes run on fresh
        sessions (:meth:`scratch`) and the sampler pads the last batch (default: on CUDA, where each new
        shape makes cuDNN plan its convolutions again).

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
        cuda_options=None,
        tensorrt=False,
        one_shape=None,
    ):
        self.path = Path(path)
        loaded = loader.load(
            self.path,
            input_name=input_name,
            output_name=output_name,
            device=device,
            extra_inputs=extra_inputs,
            verify_batch=verify_batch,
            sess_options=sess_options,
            max_batch=max_batch,
            input_shape=input_shape,
            argmax_in_graph=argmax_in_graph,
            float_type=float_type if precision is None else precision,  # precision: float_type's earlier name
            cuda_graph=cuda_graph,
            device_noise=device_noise,
            cuda_options=cuda_options,
            tensorrt=tensorrt,
            one_shape=one_shape,
        )
        batching, out = loaded.batching, loaded.batching.output
        self._loaded, self._name, self._input = loaded, loaded.name, loaded.input
        self.metadata = dict(loaded.metadata)
        self.input_name, self.input_dtype, self.input_shape = (
            loaded.input.name,
            loaded.input.dtype,
            batching.input_shape,
        )
        self.output_name, self.output_kind, self.num_classes = out.name, out.kind, out.num_classes
        self.batch_mode, self.load_timings = batching.mode, dict(batching.timings)
        self.device, self.device_index = loaded.placement.device, loaded.placement.index
        self.providers = loaded.session.get_providers()
        self.float_type, self.cuda_graph, self.device_noise = loaded.float_type, loaded.cuda_graph, loaded.device_noise
        self.max_batch, self.fp16_agreement = loaded.max_batch, loaded.fp16_agreement
        self._session, self._fetch = loaded.session, loaded.fetch
        self._noise_session, self._noise_seed = None, None
        self.io_binding = bool(self.device != "cpu" if io_binding is None else io_binding) or self.cuda_graph
        if self.io_binding and batching.unbatched:
            logger.info("model %s: input without a batch dim; IO binding off", self._name)
            self.io_binding = False
        self._one_shape = loaded.one_shape
        self._runner = self._bound(self._session) if self.io_binding else None
        self._pinned: np.ndarray | None = None
        self.host_ring = "pageable"
        logger.info(
            "model %s: batch mode %s, output '%s' (%s), providers %s, %s",
            self._name,
            self.batch_mode,
            self.output_name,
            self.output_kind,
            self.providers,
            precision_text(self.float_type, self.input_dtype, out.dtype),
        )

    def _bound(self, session, fixed: bool | None = None) -> cuda.BoundRunner:
        return cuda.BoundRunner(
            session,
            self.input_name,
            self._loaded.specs,
            dict(self._input.extra),
            "cuda" if self.device.startswith("cuda") else "cpu",
            self.device_index,
            fixed_shape=self.cuda_graph if fixed is None else fixed,
        )

    @property
    def prefers_fixed_batch(self) -> bool:
        """True when every run should have one shape (``one_shape``; CUDA: cuDNN plans, CUDA graphs): the
        sampler pads the last batch. Never one sample per run (each run has one row: padding would only add runs)."""
        return self._one_shape and self.batch_mode != "per-sample"

    def scratch(self, quick_plans: bool = False) -> OnnxClassifier:
        """A short-lived copy on a fresh session of the same model (no CUDA graph, its own IO binding, any batch
        size): what checks and probes run on, so that this classifier's session keeps one input shape. The
        copy's session is freed with the copy; ``self`` is left as it is. ``quick_plans``: on CUDA, cuDNN's
        HEURISTIC algorithm search (the checks run several shapes once each; the probe, which times, does not)."""
        session = self._loaded.fresh_session(quick_plans=quick_plans)
        runner = self._bound(session, fixed=False) if self.io_binding else None
        other = copy.copy(self)
        fresh = {"_session": session, "_runner": runner, "_one_shape": False, "_noise_session": None, "_pinned": None}
        vars(other).update(fresh, cuda_graph=False)
        return other

    def bare_session(self):
        """(a fresh onnxruntime session of the graph this classifier runs, ``feed(x) -> dict`` of its inputs for a
        batch x): the bare ``session.run`` loop that ``rs-onnx bench`` measures as the ceiling."""
        loaded = self._loaded
        return loaded.fresh_session(tensorrt=True), lambda x: feed(loaded.input, x, loaded.batching.unbatched)

    def host_buffer(self, shape, dtype) -> np.ndarray:
        """A zero-filled host array for the sampler's ring: on CUDA in pinned memory (one block, kept and
        reused while large enough; :func:`rs_onnx.cuda.pinned_empty`), else ordinary memory. One count at a
        time uses it; ``host_ring`` says how the last one was allocated."""
        if not self.device.startswith("cuda"):
            return np.zeros(shape, dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if self._pinned is None or self._pinned.nbytes < nbytes:
            self._pinned = None  # free the old block first
            self._pinned, self.host_ring = cuda.pinned_empty((max(1, nbytes),), np.uint8)
            if self.host_ring == "pageable":
                logger.info("model %s: no pinned host memory here; the sampler's ring is pageable", self._name)
        ring = self._pinned[:nbytes].view(dtype).reshape(shape)
        ring[...] = 0
        return ring

    def one_by_one(self) -> OnnxClassifier:
        """This model run one example per session run (``batch_mode`` "per-sample", the same sessions): what a
        smoothed classifier switches to when :func:`rs_onnx.checks.check_batch_equivalence` finds that
        batched runs change the classes. ``self`` is left as it is."""
        other = copy.copy(self)
        other.batch_mode = "per-sample"
        return other

    @functools.cached_property
    def device_name(self) -> str:
        """CPU model name, or the GPU's name from nvidia-smi (best effort)."""
        return gpu_name(self.device_index) if self.device.startswith("cuda") else cpu_name()

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
            size = self._loaded.batching.fixed_n or self.max_batch or max(n, 1)
        pad_to = self._loaded.batching.fixed_n or (size if self.cuda_graph else None)
        for start in range(0, n, size):
            xb = x[start : start + size]
            b = len(xb)
            if pad_to and b < pad_to:
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad_to - b, axis=0)])
            yield start, b, self._run(fetch, xb), len(xb)

    def _run(self, fetch, xb: np.ndarray):
        """One session run on a chunk: through the IO binding for the classes, else a plain run."""
        if self._runner is not None and fetch == self._fetch:
            return self._runner.run(xb, self._options)
        if self.cuda_graph:
            raise ConfigError(
                f"model {self._name}: only classes come out of a CUDA-graph session; expected "
                "cuda_graph off for scores()"
            )
        return self._session.run(fetch, feed(self._input, xb, self._loaded.batching.unbatched), self._options)

    def _decode(self, outs, b: int) -> tuple[np.ndarray, np.ndarray]:
        return decode(outs, b, self._loaded.batching.output, self._loaded.in_graph, self._name)

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
        for start, b, outs, run_rows in self._run_chunks(x, self._fetch):
            c, f = self._decode(outs, run_rows)
            classes[start : start + b], finite[start : start + b] = c[:b], f[:b]
        return classes, finite

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class indices int64 [B] for x [B, *input_shape]; -1 where a score of the row is not finite."""
        classes, finite = self.predict_with_validity(x)
        classes[~finite] = -1
        return classes

    def _build_noise_session(self, seed: int) -> None:
        """The session whose graph draws its own noise (see :func:`rs_onnx.graph.prepend_noise`), for ``seed``."""
        base = self._loaded.noise_base
        if base is None:
            raise ConfigError(f"model {self._name}: predict_noisy needs device_noise=True")
        noisy = graph.prepend_noise(base, self.input_name, gain_shape=self.input_shape, seed=seed)
        self._noise_session, self._noise_seed = self._loaded.placement.session(noisy), int(seed)

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
            inputs = {graph.CLEAN_INPUT: clean, graph.INDEX_INPUT: idx, graph.GAIN_INPUT: gain}
            for name, (value, batched) in self._input.extra.items():
                inputs[name] = np.ascontiguousarray(np.broadcast_to(value, (b, *value.shape))) if batched else value
            c, f = self._decode(self._noise_session.run(self._fetch, inputs, self._options), b)
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
        for start, b, outs, run_rows in self._run_chunks(x, [self.output_name]):
            out[start : start + b] = rows(outs[0], run_rows, "scores")[:b]
        return out

    def signature(self) -> dict:
        """JSON-able facts for meta.json: model, I/O names, shapes, dtypes, batch mode, providers."""
        return {
            "model": self._name,
            "sha256": self.sha256,
            "input_name": self.input_name,
            "input_shape": list(self.input_shape),
            "input_dtype": str(self.input_dtype),
            "extra_inputs": {n: list(v.shape) for n, (v, _) in self._input.extra.items()},
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
                {"fp16_sha256": self._loaded.fp16_sha256, "fp16_agreement_random_inputs": self.fp16_agreement}
                if self.float_type == "fp16"
                else {}
            ),
            "io_binding": self.io_binding,
            "cuda_graph": self.cuda_graph,
            "cuda_provider_options": (
                dict(self._loaded.placement.cuda_options)
                if self.device.startswith("cuda")
                else {k: "not applicable (device cpu)" for k in self._loaded.placement.cuda_options}
            ),
            "tensorrt": self._loaded.placement.tensorrt,
            "host_ring": self.host_ring,
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
