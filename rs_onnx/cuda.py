"""Device-side helpers: IO binding with buffers reused across batches, and out-of-memory detection.

Written for the CUDA execution provider, where binding matters: the input is copied once per batch into
a device buffer that stays put (a requirement of CUDA graphs), the outputs (only class indices when the
ArgMax is appended to the graph) land in preallocated device buffers, and nothing is allocated per
batch. :class:`BoundRunner` works with CPU sessions too (no copies there: the numpy batch is bound as
is), which is how it is tested on machines without a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

_OOM = re.compile(
    r"out of memory|failed to allocate memory|bad_alloc|alloc_failed|cudaErrorMemoryAllocation|"
    r"CUBLAS_STATUS_ALLOC|CUDNN_STATUS_ALLOC|available memory of \d+ is smaller than requested",
    re.IGNORECASE,
)


def is_out_of_memory(err: BaseException) -> bool:
    """True when ``err`` (an onnxruntime or numpy error) says that an allocation failed."""
    if isinstance(err, MemoryError):
        return True
    return bool(_OOM.search(str(err)))


@dataclass(frozen=True)
class OutputSpec:
    """A fetched output: its dtype and per-example shape (None when unknown: then ORT allocates it per run)."""

    name: str
    dtype: np.dtype
    tail: tuple[int, ...] | None


class BoundRunner:
    """Runs a session through one :class:`onnxruntime.IOBinding`, reusing buffers while the batch size stays.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    input_name : the batched input; ``x`` given to :meth:`run` is [B, ...] of its dtype.
    outputs : the outputs to fetch, in order.
    extra : name -> (value, batched) fixed values of the other inputs (batched ones are broadcast over B).
    device : "cpu" or "cuda"; device_id : the CUDA device.
    fixed_shape : one batch size for the runner's life and every buffer at a fixed address (CUDA graphs).

    On CUDA the input buffer is a device OrtValue refreshed with ``update_inplace`` (one host-to-device
    copy per batch) and the outputs are preallocated device OrtValues read back with
    ``copy_outputs_to_cpu`` (with the ArgMax appended: 8 + 4 bytes per example); on CPU the batch is bound
    without a copy and the outputs are numpy arrays that ORT writes into.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        outputs: Sequence[OutputSpec],
        extra: dict | None = None,
        device: str = "cpu",
        device_id: int = 0,
        fixed_shape: bool = False,
    ):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device {device!r}; expected 'cpu' or 'cuda'")
        self.session, self.input_name, self.outputs = session, input_name, list(outputs)
        self.extra = dict(extra or {})
        self.device, self.device_id, self.fixed_shape = device, int(device_id), bool(fixed_shape)
        if fixed_shape and (device != "cuda" or any(o.tail is None for o in self.outputs)):
            raise ValueError("fixed_shape needs CUDA and outputs of known shape")
        self.batch: int | None = None
        self.binding = session.io_binding()
        self._x: ort.OrtValue | None = None
        self._outs: list = []
        self._keep: list = []  # host arrays and OrtValues that bound buffers live in

    def _value(self, arr: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self.device, self.device_id)

    def _bind(self, b: int, x: np.ndarray) -> None:
        if self.batch is not None and self.fixed_shape:
            raise ValueError(f"a fixed-shape binding holds batches of {self.batch}; got {b}")
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        self._keep, self._outs = [], []
        for name, (value, batched) in self.extra.items():
            v = np.ascontiguousarray(np.broadcast_to(value, (b, *value.shape))) if batched else value
            if self.device == "cpu":
                self.binding.bind_cpu_input(name, v)
                self._keep.append(v)
            else:
                ov = self._value(v)
                self.binding.bind_ortvalue_input(name, ov)
                self._keep.append(ov)
        if self.device == "cuda":
            self._x = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), x.dtype.type, "cuda", self.device_id)
            self.binding.bind_ortvalue_input(self.input_name, self._x)
        for o in self.outputs:
            if o.tail is None:
                self.binding.bind_output(o.name, self.device, self.device_id)
                self._outs.append(None)
            elif self.device == "cpu":
                host = np.empty((b, *o.tail), o.dtype)
                self.binding.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_numpy(host))
                self._outs.append(host)
            else:
                ov = ort.OrtValue.ortvalue_from_shape_and_type(
                    [b, *o.tail], np.dtype(o.dtype).type, "cuda", self.device_id
                )
                self.binding.bind_ortvalue_output(o.name, ov)
                self._outs.append(ov)
        self.batch = b

    def run(self, x: np.ndarray, run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
        """Outputs (host numpy arrays, owned by the caller) of one run on ``x`` [B, ...]."""
        x = np.ascontiguousarray(x)
        if len(x) != self.batch:
            self._bind(len(x), x)
        if self.device == "cpu":
            self.binding.bind_cpu_input(self.input_name, x)
        else:
            assert self._x is not None  # bound by _bind on CUDA
            self._x.update_inplace(x)
        self.session.run_with_iobinding(self.binding, run_options)
        if self.device == "cuda" or any(o is None for o in self._outs):
            return [np.array(f) for f in self.binding.copy_outputs_to_cpu()]  # device -> host, bound order
        return [o.copy() for o in self._outs]


# ------------------------------------------------------------------ pinned host memory
CUDA_RUNTIMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")
"""CUDA runtime libraries tried for ``cudaHostAlloc`` (those of pip's nvidia packages, which onnxruntime-gpu
preloads)."""


class _Memory:
    """A block of ``nbytes`` at ``ptr`` seen by NumPy (``__array_interface__``); ``owner`` keeps it alive (an
    OrtValue, or a :class:`_HostAlloc` that frees it)."""

    def __init__(self, ptr: int, nbytes: int, owner) -> None:
        self.__array_interface__ = {"data": (int(ptr), False), "shape": (int(nbytes),), "typestr": "|u1", "version": 3}
        self.owner = owner


class _HostAlloc:
    """Page-locked host memory from ``cudaHostAlloc`` (portable: pinned for every device), freed with the object."""

    def __init__(self, lib, nbytes: int) -> None:
        import ctypes

        self.lib, self.ptr = lib, ctypes.c_void_p()
        status = lib.cudaHostAlloc(ctypes.byref(self.ptr), ctypes.c_size_t(nbytes), ctypes.c_uint(1))
        if status != 0 or not self.ptr.value:
            raise MemoryError(f"cudaHostAlloc of {nbytes} bytes failed (CUDA error {status})")

    def __del__(self) -> None:
        ptr = getattr(self, "ptr", None)
        if ptr is not None and ptr.value:
            self.lib.cudaFreeHost(ptr)
            ptr.value = None


def as_array(ptr: int, nbytes: int, owner, shape, dtype) -> np.ndarray:
    """A NumPy array of ``shape`` and ``dtype`` over ``nbytes`` at ``ptr``; the array keeps ``owner`` alive."""
    raw = np.asarray(_Memory(ptr, nbytes, owner))
    count = int(np.prod(shape, dtype=np.int64))
    return raw[: count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


def pinned_empty(shape, dtype) -> tuple[np.ndarray, str]:
    """An uninitialised host array of ``shape`` and ``dtype`` in page-locked (pinned) memory, and how it was
    allocated: onnxruntime's host-accessible memory of the CUDA provider's device, else ``cudaHostAlloc`` of the
    CUDA runtime, else ordinary pageable memory ("pageable": no CUDA here). A host-to-device copy from pinned
    memory runs at the bus's speed by DMA; from pageable memory the driver stages it (~17 GB/s on an H200)."""
    dtype = np.dtype(dtype)
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    try:
        from onnxruntime.capi._pybind_state import OrtDeviceMemoryType

        for ep in ort.get_ep_devices():
            if ep.ep_name == "CUDAExecutionProvider":
                info = ep.memory_info(OrtDeviceMemoryType.HOST_ACCESSIBLE)
                value = ort.OrtValue.ortvalue_from_shape_and_type([nbytes], np.uint8, memory_info=info)
                return as_array(value.data_ptr(), nbytes, value, shape, dtype), "pinned (onnxruntime host-accessible)"
    except Exception:  # noqa: BLE001 - an older onnxruntime, or no CUDA device: try the CUDA runtime
        pass
    import ctypes

    for name in CUDA_RUNTIMES:
        try:
            lib = ctypes.CDLL(name)
            block = _HostAlloc(lib, nbytes)
        except (OSError, AttributeError, MemoryError):
            continue
        return as_array(int(block.ptr.value or 0), nbytes, block, shape, dtype), "pinned (cudaHostAlloc)"
    return np.empty(shape, dtype), "pageable"
