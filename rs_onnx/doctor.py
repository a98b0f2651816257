"""Environment checks: clashing onnxruntime packages, and why CUDA does not work on a machine with a GPU.

``onnxruntime`` and ``onnxruntime-gpu`` (and the other builds) install the same ``onnxruntime`` package
directory, so two of them side by side overwrite each other's files: which build runs is then an
accident of installation order. They are detected from the installed distributions' metadata
(importlib.metadata), not from the imported module, which cannot tell.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

ORT_BUILDS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "onnxruntime-silicon",
    "onnxruntime-rocm",
    "onnxruntime-training",
    "ort-nightly",
    "ort-nightly-gpu",
)
"""Distributions that all provide the ``onnxruntime`` import package."""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def onnxruntime_distributions(dists: Iterable | None = None) -> list[tuple[str, str]]:
    """(name, version) of every installed onnxruntime build, sorted; ``dists`` defaults to
    ``importlib.metadata.distributions()``."""
    if dists is None:
        from importlib.metadata import distributions

        dists = distributions()
    found = set()
    for d in dists:
        name = _normalise(d.metadata["Name"] or "")
        if name in ORT_BUILDS:
            found.add((name, str(d.version)))
    return sorted(found)


def onnxruntime_conflict(dists: Iterable | None = None) -> str | None:
    """A one-line diagnosis and fix when several onnxruntime builds are installed together, else None."""
    builds = onnxruntime_distributions(dists)
    if len({name for name, _ in builds}) < 2:
        return None
    listed = " and ".join(f"{name} {version}" for name, version in builds)
    names = " ".join(sorted({name for name, _ in builds}))
    return (
        f"{listed} are installed side by side; they overwrite each other's files, so which one runs is an "
        f"accident. Fix: pip uninstall -y {names}, then pip install onnxruntime-gpu (NVIDIA GPU) or "
        "onnxruntime (CPU only)"
    )


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver is loaded here (Linux /proc or /dev entries, or nvidia-smi on the PATH)."""
    return (
        Path("/proc/driver/nvidia/version").exists()
        or Path("/dev/nvidiactl").exists()
        or shutil.which("nvidia-smi") is not None
    )


_MISSING_LIB = re.compile(r"([\w.+-]+\.(?:so(?:\.\d+)*|dll|dylib))\s*:\s*cannot open shared object file", re.IGNORECASE)


def library_load_error(path: str | Path) -> str | None:
    """None when the shared library at ``path`` loads, else why not (the missing library's name when the
    loader names one)."""
    import ctypes

    try:
        ctypes.CDLL(str(path))
    except OSError as err:
        text = str(err)
        m = _MISSING_LIB.search(text)
        return f"{m.group(1)} is missing" if m else text.strip().splitlines()[0]
    return None


def _needs(why: str) -> str:
    """ ": this onnxruntime needs CUDA 13" from a missing library's soname (libcublas.so.13, libcudnn.so.9)."""
    m = re.search(r"lib(cublasLt|cublas|cudart|curand|cufft)\.so\.(\d+)", why)
    if m:
        return f": this onnxruntime needs CUDA {m.group(2)}"
    m = re.search(r"libcudnn\w*\.so\.(\d+)", why)
    return f": this onnxruntime needs cuDNN {m.group(1)}" if m else ""


def cuda_provider_library() -> Path | None:
    """The CUDA provider library of the installed onnxruntime, when it has one."""
    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    for name in ("libonnxruntime_providers_cuda.so", "onnxruntime_providers_cuda.dll"):
        if (capi / name).exists():
            return capi / name
    return None


def cuda_unavailable_reason(
    providers: list[str] | None = None, library: Path | None = None, gpu: bool | None = None
) -> str | None:
    """Why CUDA does not run on a machine with an NVIDIA GPU (None without a GPU).

    ``providers`` (default: onnxruntime's available providers), ``library`` (default: the CUDA provider
    library) and ``gpu`` (default: :func:`has_nvidia_gpu`) are there for tests.
    """
    if not (has_nvidia_gpu() if gpu is None else gpu):
        return None
    import onnxruntime as ort

    providers = ort.get_available_providers() if providers is None else providers
    if "CUDAExecutionProvider" not in providers:
        return (
            f"this onnxruntime {ort.__version__} is a CPU build (providers: {', '.join(providers)}); "
            "expected onnxruntime-gpu: pip uninstall -y onnxruntime && pip install 'rs-onnx[cuda]'"
        )
    if library is None:  # as the classifier does: pip's nvidia-* libraries first, then the provider
        from .devices import preload_cuda_libraries

        preload_cuda_libraries()
        library = cuda_provider_library()
    why = library_load_error(library) if library is not None else None
    if why:
        return (
            f"onnxruntime's CUDA provider does not load ({why}{_needs(why)}); expected the CUDA and cuDNN "
            "libraries it was built for: pip install 'rs-onnx[cuda]' installs them as wheels, or add their "
            "folder to LD_LIBRARY_PATH"
        )
    return "onnxruntime's CUDA provider loads but a session on the GPU fails (driver or GPU problem; see nvidia-smi)"


@functools.cache
def warn_if_gpu_unused() -> None:
    """With ``--device auto`` falling back to CPU: one warning line, once per process, when an NVIDIA GPU
    is present (saying why CUDA does not run) instead of running on CPU in silence."""
    try:
        reason = cuda_unavailable_reason()
    except Exception as err:  # noqa: BLE001 - a diagnosis must never stop the run
        reason = f"{type(err).__name__}: {err}"
    if reason:
        log.warning(
            "device auto: running on CPU although an NVIDIA GPU is present: %s (--device cpu to choose "
            "the CPU knowingly)",
            reason,
        )


def report() -> tuple[str, bool]:
    """The text of ``rs-onnx doctor`` and whether every check passed."""
    import platform

    from ._version import __version__

    lines = [f"rs-onnx {__version__}, Python {platform.python_version()} on {platform.platform()}"]
    ok = True
    builds = onnxruntime_distributions()
    lines.append("onnxruntime builds installed: " + (", ".join(f"{n} {v}" for n, v in builds) or "none"))
    conflict = onnxruntime_conflict()
    if conflict:
        ok = False
        lines.append(f"problem: {conflict}")
    if not builds:
        ok = False
        lines.append("problem: no onnxruntime build is installed; expected onnxruntime or onnxruntime-gpu")
        return "\n".join(lines), ok
    try:
        from .devices import working_providers

        lines.append(f"providers that work here: {', '.join(working_providers())}")
        gpu = has_nvidia_gpu()
        lines.append(f"NVIDIA GPU: {'yes' if gpu else 'no'}")
        if gpu and "CUDAExecutionProvider" not in working_providers():
            ok = False
            lines.append(f"problem: CUDA does not run: {cuda_unavailable_reason(gpu=True)}")
    except ImportError as err:
        ok = False
        lines.append(f"problem: onnxruntime does not import ({err}); expected one clean build: reinstall it")
    lines.append("all checks passed" if ok else "some checks failed (see 'problem' lines)")
    return "\n".join(lines), ok
