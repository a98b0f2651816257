"""Result files: Cohen-compatible TSV rows, appended and flushed one example at a time, and meta.json.

The first six columns are exactly Cohen et al.'s ``idx label predict radius correct time`` (radius at
full precision, time in seconds); extra columns follow. The sidecar ``<out>.meta.json`` is written
atomically (write, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
CERTIFY_COLUMNS = COHEN_COLUMNS + ("pA_lower", "nA", "n", "n0", "nonfinite", "pB_upper", "radius_2class", "radius_tv",
                                   "alpha_pA")
"""alpha_pA: the level of pA_lower (alpha; alpha/2 with --bound best; the deciding look's level in sequential runs)."""
SEQUENTIAL_COLUMNS = CERTIFY_COLUMNS + ("look", "look_n", "look_nA")
"""Sequential CERTIFY: pA_lower = Clopper-Pearson lower bound of look_nA in look_n at level alpha_pA, from look
number ``look`` (1-based; 0 when no look was made)."""
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


def write_json_atomic(path: str | Path, obj: dict) -> None:
    """Write JSON to ``path`` via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
