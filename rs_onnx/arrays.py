"""Arrays in files: ``.npy`` (with a labels file) and ``.npz`` members, read in place with positioned reads
(compressed members decompressed once to an anonymous temporary file, never wholly into memory)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .dataset import MAX_EXAMPLES, Dataset, as_labels, int_label, open_file, row_bytes, show
from .errors import DataError

log = logging.getLogger("rs_onnx.data")  # the logger name these messages had before data.py was split

# ---------------------------------------------------------------------------------------------------------------
# Arrays in files: .npy and .npz members, read in place with positioned reads


class NpyFile:
    """Rows of an array stored in a file at ``offset`` (C order), read on demand with ``os.pread``: nothing is
    mapped or cached, so memory stays flat however much of the file is read. ``shape`` [N, ...]."""

    def __init__(self, file, offset: int, shape: tuple[int, ...], dtype: np.dtype, source: str) -> None:
        self._file = file  # an open binary file (kept open; a temporary one vanishes when closed)
        self.offset, self.shape, self.dtype, self.source = int(offset), tuple(shape), np.dtype(dtype), source
        self.ndim = len(self.shape)
        self.row_bytes = row_bytes(self)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        self._file.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown
            self._file.close()

    def _row(self, i: int) -> np.ndarray:
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"row {i} of {self.shape[0]}")
        buf = os.pread(self._file.fileno(), self.row_bytes, self.offset + i * self.row_bytes)
        if len(buf) != self.row_bytes:
            raise DataError(
                f"{show(self.source)}: row {i} is cut short (the file shrank while in use); "
                "expected a file that stays as it was"
            )
        return np.frombuffer(buf, self.dtype).reshape(self.shape[1:]).copy()

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self._row(int(idx))
        rows = [self._row(int(i)) for i in idx]
        return np.stack(rows) if rows else np.empty((0, *self.shape[1:]), self.dtype)


def _npy_header(f, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the .npy stream ``f``, positioned at its start."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version}")
    except (ValueError, EOFError, OSError, struct.error) as e:
        raise DataError(
            f"{what}: not a readable .npy array ({show(str(e).splitlines()[0] if str(e) else e)}); "
            "expected an array saved with numpy.save"
        ) from e
    if dtype.hasobject:
        raise DataError(
            f"{what}: holds Python objects (dtype {dtype}), which would have to be unpickled; pickled data "
            "is never loaded: expected numeric arrays"
        )
    if fortran and len(shape) > 1:
        raise DataError(f"{what}: stored in Fortran order; expected C order (numpy.save(np.ascontiguousarray(x)))")
    return tuple(int(d) for d in shape), np.dtype(dtype), f.tell()


def _check_declared(shape: tuple[int, ...], dtype: np.dtype, available: int, what: str) -> int:
    """The byte count the header declares; refused unless it is what the file holds (checked before allocating)."""
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape else dtype.itemsize
    if shape and shape[0] > MAX_EXAMPLES:
        raise DataError(f"{what}: header declares {shape[0]:,} examples; expected at most {MAX_EXAMPLES:,}")
    if declared != available:
        raise DataError(
            f"{what}: header declares shape {list(shape)} of {dtype} ({declared:,} bytes) but the file holds "
            f"{available:,} bytes of data; expected a complete array"
        )
    return declared


def _check_images_array(shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    if len(shape) < 2:
        raise DataError(f"{what}: images have shape {list(shape)}; expected [N, ...] with one image per row")
    if dtype != np.uint8 and dtype.kind != "f":
        raise DataError(f"{what}: images have dtype {dtype}; expected uint8 (0..255) or float ([0,1])")
    if shape[0] == 0:
        raise DataError(f"{what}: holds no images (shape {list(shape)}); expected at least one")


def load_npy(path: str | Path, labels: str | Path | None) -> Dataset:
    """An .npy of images [N, ...] (uint8 or float), read in place, with ``labels`` (.npy or text file)."""
    path = Path(path)
    what = show(path)
    if labels is None:
        raise DataError(f"{what}: a plain .npy holds no labels; expected --labels FILE (.npy, or one integer per line)")
    f = open_file(path, "an .npy of images")
    shape, dtype, header = _npy_header(f, what)
    _check_declared(shape, dtype, os.fstat(f.fileno()).st_size - header, what)
    _check_images_array(shape, dtype, what)
    images = NpyFile(f, header, shape, dtype, str(path))
    return Dataset(
        images, read_labels(labels, shape[0]), str(path), {"format": "npy", "labels_from": f"labels file {labels}"}
    )


def read_labels(path: str | Path, n: int) -> np.ndarray:
    """Labels [n] from an .npy of integers or a text file with one integer per line."""
    path = Path(path)
    what = f"labels file {show(path)}"
    f = open_file(path, "an .npy of integers or a text file with one integer per line")
    with f:
        if f.read(6) == b"\x93NUMPY":
            f.seek(0)
            shape, dtype, header = _npy_header(f, what)
            if len(shape) != 1 or shape[0] != n:
                raise DataError(f"{what}: labels have shape {list(shape)}; expected [{n}], one per image")
            _check_declared(shape, dtype, os.fstat(f.fileno()).st_size - header, what)
            return as_labels(np.frombuffer(f.read(shape[0] * dtype.itemsize), dtype), n, what)
        if os.fstat(f.fileno()).st_size > 24 * (n + 1):
            raise DataError(
                f"{what}: {os.fstat(f.fileno()).st_size:,} bytes for {n} labels; expected one integer per line"
            )
        f.seek(0)
        text = f.read().decode("utf-8", errors="replace")
    lines = text.splitlines()
    if len(lines) != n:
        raise DataError(f"{what}: {len(lines)} lines for {n} images; expected one integer label per image")
    out = np.empty(n, np.int64)
    for k, line in enumerate(lines):
        out[k] = int_label(line, f"{what} line {k + 1}")
    return out


def _zip_member_offset(f, info: zipfile.ZipInfo) -> int:
    """Where the bytes of a stored zip member start in the zip file (after its local header)."""
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def load_npz(path: str | Path) -> Dataset:
    """An .npz with ``images`` (uint8 0..255 or float in [0,1]; [N,H,W], [N,H,W,C], [N,C,H,W] or [N,D]) and
    ``labels``. Stored images are read in place; compressed ones are decompressed once to a temporary file
    (after checking the declared size against the zip's and the free disk space)."""
    path = Path(path)
    what = show(path)
    f = open_file(path, "an .npz with 'images' and 'labels'")
    try:
        zf = zipfile.ZipFile(f)
        members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
        missing = {"images", "labels"} - set(members)
        if missing:
            raise DataError(f"{what}: holds keys {sorted(show(k) for k in members)}; expected 'images' and 'labels'")
        img, lab = members["images"], members["labels"]
        for info in (img, lab):
            if info.flag_bits & 0x1:
                raise DataError(f"{what}: member {info.filename} is encrypted; expected a plain .npz")
        with zf.open(img) as s:
            shape, dtype, header = _npy_header(s, f"{what} (images)")
        _check_declared(shape, dtype, img.file_size - header, f"{what} (images)")
        _check_images_array(shape, dtype, what)
        with zf.open(lab) as s:
            lshape, ldtype, lheader = _npy_header(s, f"{what} (labels)")
            if len(lshape) != 1 or lshape[0] != shape[0]:
                raise DataError(f"{what}: 'labels' has shape {list(lshape)}; expected [{shape[0]}], one per image")
            nbytes = _check_declared(lshape, ldtype, lab.file_size - lheader, f"{what} (labels)")
            labels = as_labels(np.frombuffer(s.read(nbytes), ldtype), shape[0], f"{what} 'labels'")
        if img.compress_type == zipfile.ZIP_STORED:
            start = _zip_member_offset(f, img)
            if start + img.file_size > os.fstat(f.fileno()).st_size:
                raise DataError(f"{what}: 'images' runs past the end of the file; expected a complete .npz")
            images = NpyFile(f, start + header, shape, dtype, str(path))
        else:
            images = NpyFile(_decompress(zf, img, header, what), 0, shape, dtype, str(path))
    except DataError:
        f.close()
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError) as e:
        f.close()
        raise DataError(
            f"{what}: not a readable .npz file ({show(e)}); expected an .npz with 'images' and 'labels'"
        ) from e
    return Dataset(
        images,
        labels,
        str(path),
        {"format": "npz", "labels_from": "npz 'labels'", "compressed": img.compress_type != zipfile.ZIP_STORED},
    )


def _decompress(zf: zipfile.ZipFile, info: zipfile.ZipInfo, header: int, what: str):
    """The data of a compressed .npy member, written to an anonymous temporary file; never more than declared."""
    size = info.file_size - header
    tmpdir = tempfile.gettempdir()
    free = shutil.disk_usage(tmpdir).free
    if size > free - (256 << 20):
        raise DataError(
            f"{what}: 'images' is compressed and unpacks to {size:,} bytes; {tmpdir} has {free:,} bytes "
            "free; expected room to decompress it once (set TMPDIR, or save with numpy.savez)"
        )
    log.info("%s: decompressing 'images' (%.1f MB) to a temporary file", what, size / 2**20)
    out = tempfile.TemporaryFile(dir=tmpdir)  # kept open by the data set; gone when closed
    try:
        with zf.open(info) as src:
            src.read(header)
            left = size
            while left > 0:
                chunk = src.read(min(left, 8 << 20))
                if not chunk:
                    raise DataError(
                        f"{what}: 'images' ends after {size - left:,} of {size:,} bytes; expected a complete .npz"
                    )
                out.write(chunk)
                left -= len(chunk)
        out.flush()
    except OSError as e:
        out.close()
        raise DataError(
            f"{what}: decompressing 'images' to {tmpdir} failed ({e.strerror or e}); expected room for {size:,} bytes"
        ) from e
    except BaseException:
        out.close()
        raise
    return out


# ---------------------------------------------------------------------------------------------------------------
