"""Execution providers and devices: which ones really work here, session options, device names, host memory."""

from __future__ import annotations

import functools
import io
import platform
import re
import subprocess
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from rs_onnx.errors import ConfigError

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


@contextmanager
def _quiet_ort():
    """Silence onnxruntime's default logger (CUDA library load errors) during the auto probe."""
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        from .guard import ORT_SEVERITY

        ort.set_default_logger_severity(ORT_SEVERITY)  # back to the level before (2: onnxruntime's default)


@functools.lru_cache(maxsize=None)
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of pip's ``nvidia-*`` packages (those of a CUDA build of torch, or of
    ``onnxruntime-gpu[cuda,cudnn]``) so that the CUDA provider finds them; quiet, once per process, a no-op
    where onnxruntime has no ``preload_dlls`` or the libraries are absent (the probe then reports CUDA unusable)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    sink = io.StringIO()
    try:
        with redirect_stdout(sink), redirect_stderr(sink):
            preload(msvc=False)
    except Exception:  # noqa: BLE001 - a failed preload only means CUDA may not load; the probe says so
        pass


@functools.lru_cache(maxsize=None)
def _cuda_works(index: int = 0) -> bool:
    """True when a session on CUDA device ``index`` really runs on CUDA (probed once per process, quietly)."""
    if _CUDA not in ort.get_available_providers():
        return False
    preload_cuda_libraries()
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    probe = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y]),
        opset_imports=[onnx.helper.make_opsetid("", 13)],
    )
    probe.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        with _quiet_ort():
            session = ort.InferenceSession(
                probe.SerializeToString(), options, providers=[(_CUDA, {"device_id": str(index)}), _CPU]
            )
            if session.get_providers()[0] != _CUDA:
                return False
            session.run(None, {"x": np.ones(1, np.float32)})
    except Exception:  # noqa: BLE001 - any failure means CUDA does not work
        return False
    return True


def working_providers() -> list[str]:
    """Execution providers that really run here (CUDA only if a probe session runs on it), best first."""
    return ([_CUDA] if _cuda_works(0) else []) + [_CPU]


def _parse_device(device: str) -> tuple[str, int]:
    """("auto"|"cpu"|"cuda", device id)."""
    text = "auto" if device is None else str(device).strip().lower()
    if text in ("auto", "cpu"):
        return text, 0
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m is None:
        raise ConfigError(f"device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return "cuda", int(m.group(1) or 0)


def default_session_options(device: str = "cpu", threads: int | None = None) -> ort.SessionOptions:
    """The session options OnnxClassifier uses when given none (benchmarks reuse them for the bare loop).

    Warnings off. On CPU, ``session.intra_op.allow_spinning`` is 0: idle model threads sleep instead of
    spinning, so the noise threads get the cores between kernels. Measured on 2 shared cores, interleaved:
    bare throughput +17% (digits CNN) and +27% (ResNet-20), and the whole engine on the digits CNN at
    0.91 of the spinning bare loop instead of 0.66. ``threads`` sets ``intra_op_num_threads``.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if not str(device).startswith("cuda"):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def available_memory() -> int | None:
    """Bytes of host memory a run can still allocate without swapping: Linux's ``MemAvailable`` (from
    /proc/meminfo); None where unknown (no /proc, an older kernel), and then no memory check is made.
    The one place rs-onnx reads it (tests patch this function)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    value, *unit = line.split(":", 1)[1].split()
                    return int(value) * (1024 if unit == ["kB"] else 1)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return None


def _gpu_name(index: int) -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", str(index)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return f"CUDA device {index}"


ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
"""Values of the CUDA provider's ``cudnn_conv_algo_search`` (onnxruntime's default: EXHAUSTIVE)."""
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
TENSORRT_LIBRARY = "libnvinfer.so.10"
"""The TensorRT library onnxruntime-gpu's TensorRT provider loads; rs-onnx never requires it."""
DEVICE_NOISE_MIN_VALUES = 100_000
"""Input values per example from which device noise is the default on CUDA (ImageNet size, 150,528, is over it;
CIFAR size, 3,072, under): there drawing ~1e5 normals a sample on the host caps the rate (issue 29)."""


def parse_algo_search(value) -> str | None:
    """``cudnn_conv_algo_search`` upper-cased (case-insensitive), None for None; ConfigError for anything else."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if text not in ALGO_SEARCHES:
        raise ConfigError(f"cudnn_algo_search {value!r}; expected one of {', '.join(ALGO_SEARCHES)} (any case)")
    return text


def cuda_provider_options(algo_search: str | None = None, prefer_nhwc: bool = False) -> dict[str, str]:
    """The CUDA provider options rs-onnx sets beyond the device id: only those asked for (onnxruntime's defaults
    otherwise, so an unset option is never recorded as a choice)."""
    options: dict[str, str] = {}
    algo = parse_algo_search(algo_search)
    if algo is not None:
        options["cudnn_conv_algo_search"] = algo
    if prefer_nhwc:
        options["prefer_nhwc"] = "1"
    return options


@functools.lru_cache(maxsize=None)
def tensorrt_available() -> bool:
    """True when onnxruntime lists the TensorRT provider and ``libnvinfer.so.10`` loads (probed once)."""
    if TENSORRT_PROVIDER not in ort.get_available_providers():
        return False
    import ctypes

    try:
        ctypes.CDLL(TENSORRT_LIBRARY)
    except OSError:
        return False
    return True


def device_noise_default(on_cuda: bool, input_values: int, batch_any_size: bool, cuda_graph: bool, noise) -> bool:
    """Whether ``device_noise`` "auto" resolves to on: CUDA, inputs of at least :data:`DEVICE_NOISE_MIN_VALUES`
    values per example, a model that takes any batch size, no CUDA graph (it would replay one noise tensor) and
    Gaussian noise (``noise``: the noise asked for or the model's metadata, None for the default)."""
    return (
        bool(on_cuda)
        and int(input_values) >= DEVICE_NOISE_MIN_VALUES
        and bool(batch_any_size)
        and not cuda_graph
        and noise in (None, "gaussian")
    )


# Public names of the provider constants and device helpers, for the other modules (classifier.py).
CPU_PROVIDER = _CPU
CUDA_PROVIDER = _CUDA
parse_device = _parse_device
cuda_works = _cuda_works
gpu_name = _gpu_name
