"""Facts about the machine a benchmark runs on: CPU, GPUs, git commit, versions, FMA peak, memory."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from benchmarks.models import ROOT

log = logging.getLogger("benchmarks.machine")


# --------------------------------------------------------------------------- machine facts
def _cpu_model() -> str:
    from rs_onnx.devices import cpu_name

    return cpu_name()


def gpu_query(fields: str = "name,memory.total") -> list[str]:
    """One line per GPU of ``nvidia-smi --query-gpu=<fields>`` (CSV, no header); [] where nvidia-smi is absent."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    import onnx
    import onnxruntime as ort

    import rs_onnx

    facts = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": gpu_query(),
        "platform": platform.platform(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "rs_onnx": rs_onnx.__version__,
        },
        "providers": ort.get_available_providers(),
        "git": _git_commit(),
    }
    try:
        import torch

        facts["versions"]["torch"] = torch.__version__
    except ImportError:
        pass
    return facts


def fma_peak_gflops(threads: int, work_dir: Path) -> float | None:
    """The CPU's float32 FMA peak in GFLOP/s on ``threads`` threads (benchmarks/fma_peak.c), or None
    when no C compiler with OpenMP is there or the program fails."""
    exe = work_dir / "fma_peak"
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                os.environ.get("CC", "cc"),
                "-O3",
                "-march=native",
                "-fopenmp",
                str(ROOT / "benchmarks" / "fma_peak.c"),
                "-o",
                str(exe),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        out = subprocess.run(
            [str(exe)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        ).stdout
        return float(out.split("GFLOPS")[1].split()[0])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as err:
        log.info("no FMA peak measured (%s)", err)
        return None


# --------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return (kib or 0) / 1024
