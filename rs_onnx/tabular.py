"""Numeric CSV/TSV files (``.csv``, ``.tsv``, and the same gzip-compressed) read as tabular features.

A file whose first data row holds only numbers is a table of features with the label in one column (an
optional first row of column names is allowed); any other CSV is an image manifest (:mod:`rs_onnx.data`).
Features come back as float32 [N, D] in the file's own units (sigma is in those units), labels as int64 [N].
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from pathlib import Path

import numpy as np

from .errors import DataError

SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
"""The names read as CSV/TSV: a manifest of image paths, or numeric features (see :func:`is_numeric`)."""
MAX_ROWS = 100_000_000
"""More rows than this are refused."""


def _show(s: object) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(s))


def csv_suffix(path: Path) -> str | None:
    """The CSV/TSV suffix of ``path`` (".csv", ".tsv", ".csv.gz", ".tsv.gz"), or None."""
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def open_text(path: Path):
    """The file as UTF-8 text (a BOM skipped), decompressed when its name ends in .gz."""
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _rows(path: Path, what: str):
    """(line number, fields) of the non-blank rows; one DataError line for unreadable files."""
    delimiter = "\t" if ".tsv" in path.name.lower() else ","
    try:
        with open_text(path) as fh:
            for line, row in enumerate(csv.reader(fh, delimiter=delimiter), start=1):
                if row and any(c.strip() for c in row):
                    yield line, [c.strip() for c in row]
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError, csv.Error) as e:
        raise DataError(f"{what}: not a readable CSV/TSV ({_show(e)}); expected UTF-8 text") from e


def is_numeric(path: Path) -> bool:
    """Whether the first data row (after an optional row of names) holds only numbers, in 2 columns or more."""
    rows = _rows(path, f"data {_show(path)}")
    try:
        for k, (_, row) in enumerate(rows):
            if all(_number(c) is not None for c in row):
                return len(row) >= 2
            if k >= 1:  # the second row too holds words: a manifest (or not a features table)
                return False
    except DataError:
        return False  # let the manifest reader say what is wrong with it
    finally:
        rows.close()
    return False


def label_index(label_column: str | None, header: list[str] | None, width: int, what: str) -> int:
    """The label column's 0-based index: ``label_column`` a header name or an integer index (negative from
    the end); default the column named ``label``, else the last one."""
    if label_column is None:
        return header.index("label") if header and "label" in header else width - 1
    if header and label_column in header:
        return header.index(label_column)
    try:
        i = int(label_column)
    except ValueError:
        i = None
    if i is None or not -width <= i < width:
        names = f" or one of the names {', '.join(_show(h) for h in header)}" if header else ""
        raise DataError(
            f"{what}: --label-column {_show(label_column)!r} is not a column; expected a 0-based index "
            f"-{width}..{width - 1}{names}"
        )
    return i % width


def read_numeric(path: Path, label_column: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features float32 [N, D], labels int64 [N], what meta.json records) from a numeric CSV/TSV."""
    what = f"features table {_show(path)}"
    header: list[str] | None = None
    index: int = -1
    width: int | None = None
    features: list[list[float]] = []
    labels: list[int] = []
    for line, row in _rows(path, what):
        values = [_number(c) for c in row]
        if width is None:
            if any(v is None for v in values):
                if header is not None:
                    raise DataError(f"{what} line {line}: holds words after the header row; expected numbers only")
                header = row
                continue
            width = len(row)
            if header is not None and len(header) != width:
                raise DataError(f"{what}: the header names {len(header)} columns and line {line} has {width}")
            index = label_index(label_column, header, width, what)
        if len(row) != width:
            raise DataError(f"{what} line {line}: {len(row)} fields; expected {width} like the first row")
        bad = next((c for c, v in zip(row, values) if v is None or not math.isfinite(v)), None)
        if bad is not None:
            raise DataError(
                f"{what} line {line}: field {_show(bad[:40])!r} is not a finite number; expected numbers only"
            )
        numbers = [float(v or 0.0) for v in values]  # all numbers here
        label = numbers[index]
        if abs(label) > 2**53 or label != int(label):
            raise DataError(
                f"{what} line {line}: label {_show(row[index][:40])!r} is not an integer; expected a class index"
            )
        labels.append(int(label))
        features.append(numbers[:index] + numbers[index + 1 :])
        if len(labels) > MAX_ROWS:
            raise DataError(f"{what}: more than {MAX_ROWS:,} rows; expected fewer")
    if width is None:
        raise DataError(f"{what}: holds no rows of numbers; expected one example per row")
    x = np.asarray(features, np.float64)
    if np.abs(x).max(initial=0.0) > np.finfo(np.float32).max:
        raise DataError(f"{what}: holds values beyond float32; expected finite float32 features")
    column = header[index] if header else str(index)
    info = {
        "format": "features table",
        "labels_from": f"column {column!r} (index {index})",
        "features": width - 1,
        "header": header is not None,
    }
    return x.astype(np.float32), np.asarray(labels, np.int64), info
