"""Result files, both ways: the columns, one row per answer, the TSV writer and reader, and meta.json.

The first six columns are exactly Cohen et al.'s ``idx label predict radius correct time`` (radius at
full precision, time in seconds); extra columns follow. The sidecar ``<out>.meta.json`` is written
atomically (a temporary file unique to the call, fsync, rename). :func:`read_results` reads rs-onnx's files and Cohen et al.'s own
(``time`` as ``h:mm:ss``); :func:`read_meta` reads the sidecar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import DataError

COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
CERTIFY_COLUMNS = COHEN_COLUMNS + (
    "pA_lower",
    "nA",
    "n",
    "n0",
    "nonfinite",
    "pB_upper",
    "radius_2class",
    "radius_tv",
    "radius_l1",
    "radius_l2",
    "radius_linf",
    "alpha_pA",
)
"""alpha_pA: the level of pA_lower (alpha; alpha/2 with --bound best; the deciding look's level in sequential runs)."""
SEQUENTIAL_COLUMNS = CERTIFY_COLUMNS + ("look", "look_n", "look_nA", "samples")
"""Sequential CERTIFY: ``look`` (1-based; 0 when no look was made) is the deciding look, of ``look_nA`` in
``look_n``. Union bound (--precision): pA_lower is the Clopper-Pearson lower bound of look_nA in look_n at level
alpha_pA. Calibrated (--radii): pA_lower is the threshold of the largest radius certified, and look the latest
look whose count crossed it (none certified: the look of the best Clopper-Pearson bound). ``samples``: every sample
spent on the example, selection (``n0``, as drawn: adaptive selection may stop early, 0 with --guess label) and
estimation (``n``)."""


def radius_norms(noise: str) -> dict[str, str]:
    """The norm of each radius column of a certify TSV made with ``noise`` (recorded in meta.json)."""
    from .bounds import NATIVE_NORM

    return {
        "radius": NATIVE_NORM[noise],
        "radius_2class": "l2",
        "radius_tv": "l2",
        "radius_l1": "l1",
        "radius_l2": "l2",
        "radius_linf": "linf",
    }


PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time", "pvalue", "count_a", "count_b", "n", "nonfinite")
REQUIRED_COLUMNS = COHEN_COLUMNS
"""The columns every results file read by :func:`read_results` must have."""

# str(datetime.timedelta), as Cohen's certify.py writes it: "0:00:15.412345", "1 day, 2:03:04".
_TIMEDELTA = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


def columns_for(mode: str, sequential: bool = False) -> tuple[str, ...]:
    """The TSV columns of a run in ``mode`` ("certify" or "predict"); sequential CERTIFY adds the deciding look."""
    if mode != "certify":
        return PREDICT_COLUMNS
    return SEQUENTIAL_COLUMNS if sequential else CERTIFY_COLUMNS


def answer_row(mode: str, idx: int, label: int, a, seconds: float) -> dict:
    """One example's row: a Certificate (``mode`` "certify") or a Prediction as {column: value}.

    ``correct`` is 1 when the prediction equals a known label (>= 0); ``time`` is seconds, rounded to 0.1 ms.
    """
    common = {
        "idx": idx,
        "label": label,
        "predict": a.predict,
        "correct": int(a.predict == label and label >= 0),
        "time": round(seconds, 4),
        "n": a.n,
        "nonfinite": a.nonfinite,
    }
    if mode == "certify":
        row = {
            **common,
            "radius": float(a.radius),
            "pA_lower": float(a.p_a_lower),
            "nA": a.n_a,
            "n0": a.n0,
            "pB_upper": float(a.p_b_upper),
            "radius_2class": float(a.radius_2class),
            "radius_tv": float(a.radius_tv),
            "radius_l1": float(a.radius_l1),
            "radius_l2": float(a.radius_l2),
            "radius_linf": float(a.radius_linf),
            "alpha_pA": float(a.alpha_p_a) if a.alpha_p_a is not None else float("nan"),
        }
        if hasattr(a, "look_n"):  # sequential: the look whose bound is pA_lower
            row.update(look=a.look, look_n=a.look_n, look_nA=a.look_n_a, samples=a.n0 + a.n)
        return row
    return {**common, "pvalue": float(a.p_value), "count_a": a.count_a, "count_b": a.count_b}


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
    """The meta.json sidecar of the results file ``out``."""
    return Path(str(out) + ".meta.json")


def read_meta(out: str | Path) -> dict:
    """The meta.json sidecar of ``out`` as a dict; raises DataError when it is missing or not a JSON object."""
    path = meta_path(out)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; expected the meta file of an rs-onnx run") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable as JSON ({type(e).__name__}); expected an rs-onnx meta file") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: holds a {type(meta).__name__}; expected a JSON object (an rs-onnx meta file)")
    return meta


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
    import onnx
    import onnxruntime
    import scipy

    return {
        "rs_onnx": __version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]


@dataclass(frozen=True)
class Results:
    """The columns of a results file as numpy arrays, one entry per example.

    ``idx``, ``label``, ``predict``, ``correct`` are int64, ``radius`` and ``time`` (seconds) float64;
    extra columns are float64 when every value is numeric, str otherwise. ``results["name"]`` gives any
    column; ``len(results)`` is the number of examples.
    """

    columns: dict[str, np.ndarray]
    path: str | None = field(default=None, compare=False)
    kind: str = field(default="certify", compare=False)
    """"certify", or "predict" for a PREDICT TSV (no radius column: radii read as 0, nothing certified)."""
    meta: dict | None = field(default=None, compare=False)
    """The run's ``<file>.meta.json`` when there is one (read by ``analysis.read_run``), else None."""

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise DataError(f"column {name!r}: not in results (has {', '.join(self.columns)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __len__(self) -> int:
        return len(self.columns["idx"]) if "idx" in self.columns else len(next(iter(self.columns.values())))

    idx = property(lambda self: self["idx"], doc="example index in the dataset (int64)")
    label = property(lambda self: self["label"], doc="true class (int64)")
    predict = property(lambda self: self["predict"], doc="smoothed prediction, -1 = abstain (int64)")
    radius = property(lambda self: self["radius"], doc="certified radius, units of the noise scale (float64)")
    correct = property(lambda self: self["correct"], doc="1 when predict == label (int64)")
    time = property(lambda self: self["time"], doc="seconds spent on the example (float64)")

    @property
    def names(self) -> list[str]:
        return list(self.columns)


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    m = _TIMEDELTA.match(text)
    if m is None:
        raise ValueError(text)
    days, h, mnt, s = m.groups()
    return int(days or 0) * 86400.0 + int(h) * 3600.0 + int(mnt) * 60.0 + float(s)


def _parse_int(text: str) -> int:
    if text in ("True", "False"):  # a boolean `correct` column written by pandas
        return int(text == "True")
    value = float(text)
    if not np.isfinite(value) or value != int(value):
        raise ValueError(text)
    return int(value)


def read_results(path) -> Results:
    """Read a results TSV (Cohen et al.'s columns ``idx label predict radius correct time`` plus extras).

    ``time`` may be seconds (``15.4``) or ``h:mm:ss[.ffffff]`` as ``str(datetime.timedelta)`` writes it;
    it is returned in seconds. A PREDICT TSV (rs-onnx's ``predict``: no ``radius``, a ``pvalue`` column)
    reads too, with ``kind == "predict"`` and every radius 0. Raises :class:`DataError` for a missing or
    empty file, a missing column, a ragged row or a non-numeric value in a required column.
    """
    p = Path(path)
    expected = "a tab-separated file with header " + " ".join(REQUIRED_COLUMNS)
    if not p.is_file():
        raise DataError(f"results file {p}: {'is a directory' if p.is_dir() else 'not found'}; expected {expected}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"results file {p}: unreadable ({type(err).__name__}); expected {expected}") from None
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise DataError(f"results file {p}: empty; expected {expected}")
    header = [h.strip() for h in lines[0][1].split("\t")]
    file_kind = "predict" if "radius" not in header and "pvalue" in header else "certify"
    missing = [c for c in REQUIRED_COLUMNS if c not in header and not (file_kind == "predict" and c == "radius")]
    if missing:
        hint = " (it does not look tab-separated)" if len(header) == 1 else ""
        raise DataError(
            f"results file {p}: header {' '.join(header)!r} lacks {', '.join(missing)}{hint}; expected {expected}"
        )
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"results file {p}: duplicate columns {', '.join(dupes)}; expected unique column names")
    rows = lines[1:]
    if not rows:
        raise DataError(f"results file {p}: header only, no rows; expected one row per certified example")

    cells: list[list[str]] = []
    for lineno, line in rows:
        row = [c.strip() for c in line.split("\t")]
        if len(row) != len(header):
            raise DataError(
                f"results file {p}, line {lineno}: {len(row)} fields; expected {len(header)} as in the header"
            )
        cells.append(row)

    columns: dict[str, np.ndarray] = {}
    if file_kind == "predict":  # nothing is certified by PREDICT: radius 0 for every example
        columns["radius"] = np.zeros(len(cells), dtype=np.float64)
    for j, name in enumerate(header):
        raw = [row[j] for row in cells]
        if name in REQUIRED_COLUMNS:
            parsers: dict[str, tuple[Callable[[str], float], str, type]] = {
                "radius": (float, "a number", np.float64),
                "time": (_parse_time, "seconds or h:mm:ss", np.float64),
            }
            parse, kind, dtype = parsers.get(name, (_parse_int, "an integer", np.int64))
            values = []
            for (lineno, _), value in zip(rows, raw):
                try:
                    values.append(parse(value))
                except ValueError:
                    raise DataError(
                        f"results file {p}, line {lineno}, column {name}: {value!r}; expected {kind}"
                    ) from None
            columns[name] = np.asarray(values, dtype=dtype)
        else:
            try:
                columns[name] = np.asarray([float(v) for v in raw], dtype=np.float64)
            except ValueError:
                columns[name] = np.asarray(raw, dtype=str)

    bad = ~np.isin(columns["correct"], (0, 1))
    if bad.any():
        lineno = rows[int(np.argmax(bad))][0]
        raise DataError(
            f"results file {p}, line {lineno}, column correct: {columns['correct'][bad][0]}; expected 0 or 1"
        )
    bad = np.isnan(columns["radius"])
    if bad.any():
        raise DataError(f"results file {p}, line {rows[int(np.argmax(bad))][0]}, column radius: nan; expected a number")
    return Results(columns, str(p), file_kind)
