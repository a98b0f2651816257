"""Result files: Cohen-compatible TSV rows, appended and flushed one example at a time, and meta.json.

The first six columns are exactly Cohen et al.'s ``idx label predict radius correct time`` (radius at
full precision, time in seconds); extra columns follow. The sidecar ``<out>.meta.json`` is written
atomically (a temporary file unique to the call, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import uuid
from pathlib import Path

COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
CERTIFY_COLUMNS = COHEN_COLUMNS + ("pA_lower", "nA", "n", "n0", "nonfinite", "pB_upper", "radius_2class", "radius_tv")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time", "pvalue", "count_a", "count_b", "n", "nonfinite")


def format_value(v) -> str:
    """Floats at full precision (repr), everything else as str."""
    return repr(float(v)) if isinstance(v, float) else str(v)


class TsvWriter:
    """Appends rows to a TSV file (flushed and fsynced row by row, so a crash loses nothing finished)
    or to an open text stream such as stdout."""

    def __init__(self, target, columns: tuple[str, ...], append: bool = False) -> None:
        self.columns = columns
        self._owned = isinstance(target, (str, Path))
        if self._owned:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(path, "a" if append else "w", encoding="utf-8", newline="\n")
            fresh = not append or path.stat().st_size == 0
        else:
            self._f, fresh = target, True
        if fresh:
            self._write("\t".join(columns))

    def _write(self, line: str) -> None:
        self._f.write(line + "\n")
        self._f.flush()
        if self._owned:
            os.fsync(self._f.fileno())

    def write(self, row: dict) -> None:
        """One example's row; ``row`` must hold every column."""
        self._write("\t".join(format_value(row[c]) for c in self.columns))

    def close(self) -> None:
        if self._owned:
            self._f.close()

    def __enter__(self) -> "TsvWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def meta_path(out: str | Path) -> Path:
    return Path(str(out) + ".meta.json")


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (every result byte goes through here; tests inject faults)."""
    view = memoryview(data)
    while view:
        done = os.write(fd, view)
        view = view[done:]


def fsync_dir(path: str | Path) -> None:
    """fsync the folder holding ``path``, so that a rename or a new file survives a power cut (best effort)."""
    try:
        fd = os.open(str(Path(path).parent) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, obj: dict, pad: int = 0) -> None:
    """Write JSON to ``path`` via a temporary file unique to this call, fsync and rename, so readers never see
    half a file and two writers never share a temporary file. ``pad`` spaces follow the JSON (room to
    rewrite it in place on a full disk)."""
    path = Path(path)
    data = (json.dumps(obj, indent=2, sort_keys=False, default=str) + " " * pad + "\n").encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    """Versions of rs-onnx and the libraries that decide its results."""
    import numpy
    import onnx
    import onnxruntime
    import scipy

    from . import __version__

    return {
        "rs_onnx": __version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
