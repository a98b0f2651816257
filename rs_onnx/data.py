"""Data sets to certify, streamed: one loader per layout behind one interface (:class:`Dataset`).

DATA may be
  - an ``.npz`` with ``images`` and ``labels`` (stored members are read in place, compressed ones are
    decompressed once to an anonymous temporary file, never wholly into memory);
  - an ``.npy`` of images with ``labels=`` an ``.npy`` or a text file of one integer per line (read in place);
  - a folder of images: torchvision's ImageFolder convention (class subfolders; names that are all
    integers give their value, else sorted names give the indices; ``classes=`` a file of one folder
    name per line, line number = class index), or images at its top with ``labels=``, ``label=`` or
    ``label_from_filename`` (a trailing ``_<digits>`` in the file name);
  - a CSV/TSV manifest (``path`` and ``label`` columns by default, paths relative to the manifest);
  - a single image with ``label=``.

Every data set serves example i as ``raw(i)`` (channels first, [C,H,W] or the array's own shape) and
``image(i)``: float32 in [0,1] pixel units (uint8 divided by 255, floats taken as they are). Image files
go through an :class:`ImageTransform` (mode conversion, torchvision-style ``Resize`` and ``CenterCrop``).
Nothing is read before it is asked for, except the headers of the selected image files and the selected
rows of float arrays, checked by :meth:`Dataset.check_selection` before any result is written.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

RESAMPLING = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
"""--resample choices: PIL's filters (antialiased when reducing, except nearest)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
"""torchvision's IMG_EXTENSIONS, and .gif."""
MAX_EXAMPLES = 100_000_000
"""More examples than this (declared by a header, a manifest or a labels file) are refused before anything is allocated."""
MAX_PIXELS = 89_478_485
"""Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): larger images are refused."""
INT64_MAX = np.iinfo(np.int64).max


def _show(s: object) -> str:
    """An untrusted string (a path, a CSV cell) on one line: control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(s))


# ---------------------------------------------------------------------------------------------------------------
# The interface


class _Rows:
    """``dataset.images[idx]``: example(s) as stored, channels first; a list of indices gives a stacked array."""

    def __init__(self, data: Dataset) -> None:
        self._data = data

    def __len__(self) -> int:
        return len(self._data)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._data), *self._data.image_shape)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self._data.raw(int(idx))
        return np.stack([self._data.raw(int(i)) for i in idx])


class Dataset:
    """Examples served one at a time: ``images`` [N, ...] (an ndarray or an :class:`NpyFile`; uint8 or float;
    [N,H,W] grey, [N,H,W,C] with C in 1,3,4, [N,C,H,W] or [N,D]) and ``labels`` int64 [N].

    Subclasses (image files) override :meth:`raw`, :attr:`image_shape` and :meth:`check_selection`.
    """

    def __init__(
        self, images, labels: np.ndarray, source: str, info: dict | None = None, expand: int | None = None
    ) -> None:
        self._images = images
        self.labels = labels
        self.source = source
        self.info = dict(info or {"format": "array"})
        self._layout = _array_layout(tuple(images.shape)) if images is not None else "image"
        self._expand = int(expand or 1)  # grey [1,H,W] served as this many channels (see expand_grey)
        self._range_warned = False

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> _Rows:
        return _Rows(self)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Per-example shape served by :meth:`raw`, channels first."""
        shape = tuple(self._images.shape[1:])
        if self._layout == "grey":
            shape = (1, *shape)
        elif self._layout == "nhwc":
            shape = (shape[2], shape[0], shape[1])
        return (self._expand, *shape[1:]) if self._expand > 1 else shape

    def raw(self, i: int) -> np.ndarray:
        """Example i as stored (uint8 or float), channels first."""
        x = np.asarray(self._images[i])
        if self._layout == "grey":
            x = x[None]
        elif self._layout == "nhwc":
            x = x.transpose(2, 0, 1)
        if self._expand > 1:  # as PIL converts L to RGB (R = G = B = L) and to RGBA (alpha opaque)
            opaque = np.full_like(x, 255 if x.dtype == np.uint8 else 1)
            x = np.concatenate([x, x, x] + [opaque] * (self._expand - 3))
        return np.ascontiguousarray(x)

    @property
    def uint8_pixels(self) -> bool:
        """Whether every example is uint8 by construction: :meth:`raw` returns uint8 whatever the bytes read,
        so :meth:`image` is k/255 (on the 8-bit grid) without any pixel being looked at. True for uint8 arrays
        (the dtype is the header's; rows are read as that dtype) and for image files (:class:`ImageFiles`);
        False for float arrays, whose values must be read to be checked."""
        return bool(self._images.dtype == np.uint8)

    def image(self, i: int) -> np.ndarray:
        """Example i as float32 in [0,1] pixel units (uint8 / 255; floats must be finite)."""
        x = self.raw(i)
        if x.dtype == np.uint8:
            return x.astype(np.float32) / 255.0
        with np.errstate(over="ignore", invalid="ignore"):  # 1e300 becomes inf, refused below
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(
                f"{_show(self.source)}: example {i} holds NaN, Inf or values beyond float32; "
                "expected finite values in [0,1]"
            )
        if not self._range_warned and (x.min() < 0 or x.max() > 1):
            self._range_warned = True
            log.warning(
                "%s: float example %d ranges over [%g, %g], not [0,1]; sigma is in the units of these values",
                _show(self.source),
                i,
                float(x.min()),
                float(x.max()),
            )
        return x

    def expanded(self, channels: int, how: str) -> Dataset:
        """The same examples, grey [1,H,W] served as ``channels`` channels (see :func:`expand_grey`)."""
        return Dataset(self._images, self.labels, self.source, {**self.info, "channels": how}, expand=channels)

    def check_labels(self, num_classes: int | None) -> None:
        """Labels must be classes of the model: 0 <= label < num_classes."""
        if len(self.labels) == 0:
            return
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or (num_classes and hi >= num_classes):
            raise DataError(
                f"{_show(self.source)}: labels range over [{lo}, {hi}]; expected classes "
                f"0..{(num_classes or 0) - 1} of the model"
            )

    def check_selection(self, indices: Sequence[int]) -> None:
        """Checks the selected examples before any result is written: float rows finite (read in chunks)."""
        dtype = self._images.dtype
        if dtype.kind != "f" or not len(indices):
            return
        lo, hi, step = float("inf"), float("-inf"), max(1, (16 << 20) // max(1, _row_bytes(self._images)))
        for s in range(0, len(indices), step):
            chunk = [int(i) for i in indices[s : s + step]]
            with np.errstate(over="ignore", invalid="ignore"):
                rows = np.asarray(self._images[chunk]).astype(np.float32).reshape(len(chunk), -1)
            bad = ~np.isfinite(rows).all(axis=1)
            if bad.any():
                raise DataError(
                    f"{_show(self.source)}: example {chunk[int(np.argmax(bad))]} holds NaN, Inf or values "
                    "beyond float32; expected finite values in [0,1]"
                )
            lo, hi = min(lo, float(rows.min())), max(hi, float(rows.max()))
        if lo < 0 or hi > 1:
            self._range_warned = True
            log.warning(
                "%s: float images range over [%g, %g], not [0,1]; sigma is in the units of these values",
                _show(self.source),
                lo,
                hi,
            )

    def iter_groups(
        self, groups: Sequence[Sequence[int]], workers: int | None = None, ahead: int = 2
    ) -> Iterator[tuple[list[int], list[np.ndarray]]]:
        """Yields (group, [image(i) for i in group]) in order; image files are decoded by ``workers`` threads
        up to ``ahead`` groups in advance, so decoding overlaps sampling."""
        for group in groups:
            yield list(group), [self.image(int(i)) for i in group]

    def describe(self) -> dict:
        """What meta.json records about the data: format, where labels come from, the transform."""
        return dict(self.info)


def expand_grey(data: Dataset, channels: int | None, size: tuple[int, int] | None) -> Dataset:
    """An array data set of grey images [1,H,W] for a model that takes ``channels`` 3 (or 4) at (H, W) ``size``:
    the same examples with the grey channel repeated (alpha opaque), as grey image files are converted to RGB
    (RGBA); logged. Anything else is returned as it is."""
    shape = data.image_shape
    if (
        type(data) is not Dataset
        or channels not in (3, 4)
        or size is None
        or len(shape) != 3
        or shape[0] != 1
        or tuple(shape[1:]) != tuple(size)
    ):
        return data
    how = f"grey [1, {shape[1]}, {shape[2]}] repeated to {channels} channels" + (
        " (R = G = B, alpha opaque)" if channels == 4 else " (R = G = B)"
    )
    log.info("data: %s for the model's %d-channel input, as grey image files are converted", how, channels)
    return data.expanded(channels, how)


def _array_layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        return "grey"  # [N,H,W]
    if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "nhwc"
    return "as-is"


def _row_bytes(images) -> int:
    return int(np.prod(images.shape[1:], dtype=object)) * images.dtype.itemsize


# ---------------------------------------------------------------------------------------------------------------
# Arrays in files: .npy and .npz members, read in place with positioned reads


class NpyFile:
    """Rows of an array stored in a file at ``offset`` (C order), read on demand with ``os.pread``: nothing is
    mapped or cached, so memory stays flat however much of the file is read. ``shape`` [N, ...]."""

    def __init__(self, file, offset: int, shape: tuple[int, ...], dtype: np.dtype, source: str) -> None:
        self._file = file  # an open binary file (kept open; a temporary one vanishes when closed)
        self.offset, self.shape, self.dtype, self.source = int(offset), tuple(shape), np.dtype(dtype), source
        self.ndim = len(self.shape)
        self.row_bytes = _row_bytes(self)

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
                f"{_show(self.source)}: row {i} is cut short (the file shrank while in use); "
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
            f"{what}: not a readable .npy array ({_show(str(e).splitlines()[0] if str(e) else e)}); "
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


def as_labels(values: np.ndarray, n: int, what: str) -> np.ndarray:
    """Integer labels [n] as int64; refuses other dtypes, shapes and values beyond int64."""
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise DataError(f"{what}: labels have dtype {values.dtype}; expected integers")
    if values.shape != (n,):
        raise DataError(f"{what}: labels have shape {list(values.shape)}; expected [{n}], one per image")
    if values.dtype.kind == "u" and values.dtype.itemsize == 8 and n and int(values.max()) > INT64_MAX:
        i = int(np.argmax(values > INT64_MAX))
        raise DataError(f"{what}: label {int(values[i])} of example {i} exceeds int64; expected a class index")
    return values.astype(np.int64)


def load_npy(path: str | Path, labels: str | Path | None) -> Dataset:
    """An .npy of images [N, ...] (uint8 or float), read in place, with ``labels`` (.npy or text file)."""
    path = Path(path)
    what = _show(path)
    if labels is None:
        raise DataError(f"{what}: a plain .npy holds no labels; expected --labels FILE (.npy, or one integer per line)")
    f = _open_file(path, "an .npy of images")
    shape, dtype, header = _npy_header(f, what)
    _check_declared(shape, dtype, os.fstat(f.fileno()).st_size - header, what)
    _check_images_array(shape, dtype, what)
    images = NpyFile(f, header, shape, dtype, str(path))
    return Dataset(
        images, read_labels(labels, shape[0]), str(path), {"format": "npy", "labels_from": f"labels file {labels}"}
    )


def _open_file(path: Path, expected: str):
    if not path.is_file():
        raise DataError(f"data file {_show(path)}: not found; expected {expected}")
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{_show(path)}: cannot be read ({e.strerror}); expected {expected}") from e


def read_labels(path: str | Path, n: int) -> np.ndarray:
    """Labels [n] from an .npy of integers or a text file with one integer per line."""
    path = Path(path)
    what = f"labels file {_show(path)}"
    f = _open_file(path, "an .npy of integers or a text file with one integer per line")
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
        out[k] = _int_label(line, f"{what} line {k + 1}")
    return out


def _int_label(text: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise DataError(
            f"{where}: label {_show(text.strip()[:40])!r} is not an integer; expected a class index"
        ) from None
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise DataError(f"{where}: label {value} exceeds int64; expected a class index")
    return value


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
    what = _show(path)
    f = _open_file(path, "an .npz with 'images' and 'labels'")
    try:
        zf = zipfile.ZipFile(f)
        members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
        missing = {"images", "labels"} - set(members)
        if missing:
            raise DataError(f"{what}: holds keys {sorted(_show(k) for k in members)}; expected 'images' and 'labels'")
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
            f"{what}: not a readable .npz file ({_show(e)}); expected an .npz with 'images' and 'labels'"
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
# Image files


def parse_crop(text: str | int | None) -> tuple[int, int] | None:
    """``--center-crop`` "224" or "224x200" (height x width) -> (height, width); None stays None."""
    if text is None:
        return None
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        hw = []
    if len(hw) not in (1, 2) or any(v < 1 or v > 65535 for v in hw):
        raise DataError(f"--center-crop {_show(text)!r}: expected a size N or HxW in pixels (e.g. 224 or 224x200)")
    return (hw[0], hw[0]) if len(hw) == 1 else (hw[0], hw[1])


def parse_resize(value: str | int | None) -> int | tuple[int, int] | None:
    """``--resize`` "256" (shorter side) or "224x224" (height x width, exactly: no aspect kept) -> 256 or
    (224, 224); None stays None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        parts = [str(value)]
    else:
        parts = str(value).lower().replace(" ", "").split("x") if not isinstance(value, bool) else []
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        hw = []
    if len(hw) not in (1, 2) or any(v < 1 or v > 65535 for v in hw):
        raise DataError(
            f"--resize {_show(value)!r}: expected the shorter side N in pixels (e.g. 256) or HxW "
            "(e.g. 224x224, stretched to exactly that size), 1 to 65535"
        )
    return hw[0] if len(hw) == 1 else (hw[0], hw[1])


@dataclass(frozen=True)
class ImageTransform:
    """Image file -> uint8 [C,H,W]: convert to ``channels`` (1: L, 3: RGB, 4: RGBA; None: grey files stay
    grey, others RGB), then ``resize`` (an int: shorter side to N, aspect kept; (height, width): exactly that
    size, as Hugging Face's ViTImageProcessor; bilinear with antialiasing: PIL's ``Image.resize``, as
    torchvision's ``Resize`` on PIL images), then ``crop`` (height, width) from the centre (torchvision's
    ``CenterCrop``)."""

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    channels: int | None = None
    resample: str = "bilinear"  # PIL's filter for the resize: one of RESAMPLING

    def mode(self, file_mode: str) -> str:
        if self.channels is None:
            return "L" if file_mode in ("L", "1", "LA", "I;16", "I;16B", "I;16L", "I", "F") else "RGB"
        return {1: "L", 3: "RGB", 4: "RGBA"}.get(self.channels, "RGB")

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resize and crop; refuses a crop larger than the (resized) image."""
        if self.resize:
            width, height = resized_size(width, height, self.resize)
        if self.crop:
            ch, cw = self.crop
            if ch > height or cw > width:
                raise DataError(
                    f"--center-crop {ch}x{cw} is larger than the image ({height}x{width} after resizing); "
                    "expected a crop within the image (or a larger --resize)"
                )
            width, height = cw, ch
        return width, height

    def __call__(self, im) -> np.ndarray:
        from PIL import Image

        mode = self.mode(im.mode)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode != mode:
            im = im.convert(mode)
        if self.resize:
            size = resized_size(im.width, im.height, self.resize)
            if size != im.size:
                im = im.resize(size, Image.Resampling[self.resample.upper()])
        if self.crop:
            ch, cw = self.crop
            top, left = round((im.height - ch) / 2.0), round((im.width - cw) / 2.0)  # Python rounding, as torchvision
            im = im.crop((left, top, left + cw, top + ch))
        arr = np.asarray(im, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))

    def describe(self) -> dict:
        return {
            "convert": self.mode("RGB") if self.channels else "grey files L, others RGB",
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "resize_method": (
                f"PIL {self.resample}{'' if self.resample == 'nearest' else ', antialiased'}"
                + (" (torchvision Resize on PIL)" if self.resample == "bilinear" else "")
                if self.resize
                else None
            ),
            "center_crop": list(self.crop) if self.crop else None,
        }


def resized_size(width: int, height: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """torchvision's Resize(size) output (width, height): the shorter side becomes ``size``, the longer is
    truncated; a (height, width) ``size`` is the output itself."""
    if isinstance(size, tuple):
        return size[1], size[0]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _open_image(path: str):
    """An opened PIL image (header only), its decompression-bomb check done; DataError when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{_show(path)}: image too large ({_show(e)}); expected at most {MAX_PIXELS:,} pixels") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"{_show(path)}: not a readable image ({_show(e)}); expected PNG, JPEG or another image format Pillow reads"
        ) from e
    if im.width * im.height > MAX_PIXELS or im.width < 1 or im.height < 1:
        im.close()
        raise DataError(f"{_show(path)}: image of {im.width}x{im.height} pixels; expected 1 to {MAX_PIXELS:,} pixels")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F") or im.mode.startswith("I;"):
        im.close()
        raise DataError(
            f"{_show(path)}: {im.mode} image (16-bit or float pixels); expected 8-bit images "
            "(convert it, or save the pixels in an .npy)"
        )
    return im


def decode(path: str, transform: ImageTransform) -> np.ndarray:
    """The image file at ``path`` as uint8 [C,H,W] after ``transform``."""
    im = _open_image(path)
    try:
        with im:
            return transform(im)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, MemoryError) as e:
        raise DataError(f"{_show(path)}: not a readable image ({_show(e)}); expected a complete image file") from e


class ImageFiles(Dataset):
    """Image files decoded on demand. ``files`` [N] paths, ``labels`` int64 [N]; ``size`` (height, width) of
    the model's input when known (then every transformed image must have it)."""

    def __init__(
        self,
        files: list[str],
        labels: np.ndarray,
        source: str,
        transform: ImageTransform,
        size: tuple[int, int] | None,
        info: dict,
    ) -> None:
        super().__init__(None, labels, source, {**info, "transform": transform.describe()})
        self.files, self.transform, self.size = files, transform, size
        self._shape: tuple[int, ...] | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            self.check_selection([0])
        assert self._shape is not None
        return self._shape

    @property
    def uint8_pixels(self) -> bool:
        """True: :func:`decode` ends every file in ``np.asarray(im, dtype=np.uint8)`` of an L, RGB or RGBA
        image (the transform converts every mode to one of them, resizes and crops within it; 16-bit and
        float files are refused on opening; 16-bit RGB(A) PNGs are reduced to 8 bits by Pillow)."""
        return True

    def raw(self, i: int) -> np.ndarray:
        x = decode(self.files[i], self.transform)
        if self._shape is not None and x.shape != self._shape:
            raise DataError(
                f"{_show(self.files[i])}: image is {x.shape[2]}x{x.shape[1]} with {x.shape[0]} channels "
                f"after the transform; expected {self._shape[2]}x{self._shape[1]} with {self._shape[0]}"
            )
        return x

    def check_selection(self, indices: Sequence[int]) -> None:
        """Reads the headers (not the pixels) of the selected files: readable, not too large, one size after
        the transform, and the model's size when it is known."""
        first: dict[tuple[int, int, int], int] = {}
        for i in indices:
            path = self.files[int(i)]
            im = _open_image(path)
            with im:
                w, h = self.transform.output_size(im.width, im.height)
                c = len(self.transform.mode(im.mode))
            if (c, h, w) not in first:
                first[(c, h, w)] = int(i)
                if len(first) > 1:
                    (s1, i1), (s2, i2) = list(first.items())[:2]
                    if s1[1:] == s2[1:]:  # one size, channel counts differ (grey and colour files; symbolic C)
                        c = max(s1[0], s2[0])
                        raise DataError(
                            f"images with different channel counts: {_show(self.files[i1])} has {s1[0]}, "
                            f"{_show(self.files[i2])} has {s2[0]}; expected one count: give --input-shape "
                            f"{c},{s1[1]},{s1[2]} (the model's channels; the others are converted to it)"
                        )
                    raise DataError(
                        f"images of different sizes: {_show(self.files[i1])} is {s1[2]}x{s1[1]} "
                        f"({s1[0]} channels), {_show(self.files[i2])} is {s2[2]}x{s2[1]} ({s2[0]} channels)"
                        f" after the transform; expected one size: give --resize HxW, or --resize N and --center-crop HxW"
                    )
        if not first:
            return
        (c, h, w), i = next(iter(first.items()))
        if self.size is not None and (h, w) != tuple(self.size):
            mh, mw = self.size
            raise DataError(
                f"{_show(self.files[i])}: image is {h}x{w} (height x width) after the transform but the "
                f"model takes {mh}x{mw}; expected --resize N --center-crop {mh}x{mw} (ImageNet's evaluation "
                f"transform is --resize 256 --center-crop 224), --resize {mh}x{mw}, or images of the model's size"
            )
        self._shape = (c, h, w)

    def iter_groups(self, groups, workers=None, ahead=2):
        workers = workers or min(4, os.cpu_count() or 1)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rs-onnx-decode")
        pending: list = []
        try:
            it = iter(groups)
            for group in it:
                pending.append((list(group), [pool.submit(self.image, int(i)) for i in group]))
                if len(pending) > ahead:
                    break
            while pending:
                group, futures = pending.pop(0)
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((list(nxt), [pool.submit(self.image, int(i)) for i in nxt]))
                yield group, [fut.result() for fut in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _images_under(folder: str) -> list[str]:
    """Image files below ``folder``, in torchvision's order: sorted os.walk (following links), sorted names."""

    def walk():
        seen: set[tuple[int, int]] = set()
        for root, dirs, names in os.walk(folder, followlinks=True):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen:  # a symbolic link back to a folder already walked: no loop
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # hidden folders (.ipynb_checkpoints) skipped
            yield root, names

    out: list[str] = []
    for root, names in sorted(walk()):
        out.extend(
            os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")
        )
    return out


def read_classes(path: str | Path) -> list[str]:
    """Class names, one per line (line number = class index); what follows the first space or tab of a line
    is ignored, so ImageNet's ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``) works as is."""
    path = Path(path)
    what = f"classes file {_show(path)}"
    f = _open_file(path, "a text file with one class name per line")
    with f:
        if os.fstat(f.fileno()).st_size > 64 << 20:
            raise DataError(f"{what}: larger than 64 MiB; expected one class name per line")
        text = f.read().decode("utf-8", errors="replace")
    names = []
    for k, line in enumerate(text.splitlines()):
        if not line.strip():
            raise DataError(f"{what}: line {k + 1} is empty; expected one class name per line (line number = index)")
        names.append(line.split()[0])
    if not names:
        raise DataError(f"{what}: is empty; expected one class name per line")
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            raise DataError(f"{what}: {_show(name)!r} on lines {seen[name] + 1} and {k + 1}; expected each class once")
        seen[name] = k
    return names


_TRAILING_LABEL = re.compile(r"_(\d+)$")


def load_folder(
    path: str | Path,
    transform: ImageTransform,
    size: tuple[int, int] | None = None,
    *,
    labels: str | Path | None = None,
    label: int | None = None,
    classes: str | Path | None = None,
    label_from_filename: bool = False,
) -> Dataset:
    """A folder of images: class subfolders (ImageFolder), or images at its top with explicit labels."""
    root = str(path)
    what = f"folder {_show(root)}"
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{what}: cannot be listed ({e.strerror}); expected a folder of images") from e
    subdirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    top = [
        os.path.join(root, e.name)
        for e in entries
        if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".")
    ]
    per_class = {d: _images_under(os.path.join(root, d)) for d in subdirs}
    n_sub = sum(len(v) for v in per_class.values())
    if top and n_sub:
        raise DataError(
            f"{what}: holds images both at its top ({_show(os.path.basename(top[0]))}) and in class "
            "subfolders; expected one layout (class subfolders, or images at the top with --labels)"
        )
    if not top and not n_sub:
        raise DataError(
            f"{what}: holds no images; expected class subfolders of images ({', '.join(IMAGE_SUFFIXES)}) "
            "or images at its top"
        )
    if n_sub:
        if labels is not None or label is not None or label_from_filename:
            raise DataError(
                f"{what}: has class subfolders, which give the labels; expected no --labels, --label or "
                "--label-from-filename"
            )
        if classes is not None:
            names = read_classes(classes)
            index = {n: k for k, n in enumerate(names)}
            for d in subdirs:
                if d not in index:
                    raise DataError(
                        f"{what}: class folder {_show(d)!r} is not in --classes {_show(classes)} "
                        f"({len(names)} names, e.g. {_show(names[0])!r}); expected every folder listed"
                    )
            how = f"class folders, indices from --classes {classes}"
        elif all(d.isdigit() for d in subdirs):
            index = {d: int(d) for d in subdirs}
            how = "class folders named by their integer class index"
        else:
            index = {d: k for k, d in enumerate(subdirs)}
            how = "class folders, sorted names give the indices (torchvision ImageFolder)"
        files = [f for d in subdirs for f in per_class[d]]
        lab = np.array([index[d] for d in subdirs for _ in per_class[d]], np.int64)
        info = {"format": "image-folder", "labels_from": how, "classes": len(index)}
    else:
        files = top
        if classes is not None:
            raise DataError(
                f"{what}: --classes names class subfolders, and this folder has none; expected class "
                "subfolders, or --labels FILE"
            )
        given = [k for k, v in (("--labels", labels), ("--label", label)) if v is not None]
        if label_from_filename:
            given.append("--label-from-filename")
        if len(given) != 1:
            raise DataError(
                f"{what}: images at its top {'with ' + ' and '.join(given) if given else 'with no labels'}; "
                "expected exactly one of --labels FILE (one per image, in sorted name order), --label N "
                "(all images), --label-from-filename (a trailing _<digits>), or class subfolders"
            )
        if labels is not None:
            lab = read_labels(labels, len(files))
            how = f"labels file {labels} (sorted file names)"
        elif label is not None:
            lab = np.full(len(files), int(label), np.int64)
            how = f"--label {label} for every image"
        else:
            found = []
            for f in files:
                m = _TRAILING_LABEL.search(Path(f).stem)
                if not m:
                    raise DataError(
                        f"{_show(f)}: no trailing _<digits> label in the file name; expected every file "
                        "named like NAME_<label>.png with --label-from-filename"
                    )
                found.append(_int_label(m.group(1), _show(f)))
            lab = np.array(found, np.int64)
            how = "file names (trailing _<digits>, --label-from-filename)"
        info = {"format": "image-folder (flat)", "labels_from": how}
    if len(files) > MAX_EXAMPLES:
        raise DataError(f"{what}: {len(files):,} images; expected at most {MAX_EXAMPLES:,}")
    return ImageFiles(files, lab, root, transform, size, info)


def load_manifest(
    path: str | Path,
    transform: ImageTransform,
    size: tuple[int, int] | None = None,
    *,
    path_column: str = "path",
    label_column: str = "label",
    classes: str | Path | None = None,
) -> Dataset:
    """A CSV (``.csv``) or TSV (``.tsv``) manifest with a header row; ``path_column`` holds image paths
    (relative to the manifest's folder), ``label_column`` integer labels (class names with ``classes``)."""
    path = Path(path)
    what = f"manifest {_show(path)}"
    f = _open_file(path, "a CSV/TSV manifest with a header row")
    f.close()
    names = read_classes(classes) if classes is not None else None
    index = {n: k for k, n in enumerate(names)} if names else None
    base = path.parent
    files: list[str] = []
    labels: list[int] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            header = next(reader, None)
            if not header:
                raise DataError(
                    f"{what}: is empty; expected a header row naming the {path_column!r} and {label_column!r} columns"
                )
            header = [h.strip() for h in header]
            for col, flag in ((path_column, "--path-column"), (label_column, "--label-column")):
                if col not in header:
                    raise DataError(
                        f"{what}: no column {_show(col)!r} (columns: {', '.join(_show(h) for h in header)}); "
                        f"expected {flag} NAME to choose one"
                    )
            pi, li = header.index(path_column), header.index(label_column)
            for row_no, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{what} line {row_no}: {len(row)} fields; expected {len(header)} as in the header")
                rel, lab = row[pi].strip(), row[li].strip()
                file = rel if os.path.isabs(rel) else os.path.join(base, rel)
                if not rel or not os.path.isfile(file):
                    raise DataError(
                        f"{what} line {row_no}: {_show(rel)!r} is not a file (looked for {_show(file)}); "
                        "expected paths relative to the manifest"
                    )
                if index is not None:
                    if lab not in index:
                        raise DataError(
                            f"{what} line {row_no}: label {_show(lab)!r} is not in --classes {_show(classes)}"
                            f" ({len(index)} names); expected one of its names"
                        )
                    labels.append(index[lab])
                else:
                    labels.append(_int_label(lab, f"{what} line {row_no}"))
                files.append(file)
                if len(files) > MAX_EXAMPLES:
                    raise DataError(f"{what}: more than {MAX_EXAMPLES:,} rows; expected fewer")
    except UnicodeDecodeError as e:
        raise DataError(f"{what}: not UTF-8 text ({e.reason}); expected a CSV/TSV manifest") from e
    except csv.Error as e:
        raise DataError(f"{what}: not a readable CSV/TSV ({_show(e)})") from e
    if not files:
        raise DataError(f"{what}: lists no images; expected one row per image")
    info = {
        "format": "manifest",
        "labels_from": f"column {label_column}" + (f" via --classes {classes}" if names else ""),
        "path_column": path_column,
    }
    return ImageFiles(files, np.array(labels, np.int64), str(path), transform, size, info)


def load_image(
    path: str | Path, label: int | None, transform: ImageTransform | None = None, size: tuple[int, int] | None = None
) -> Dataset:
    """One image file with its ``label``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {_show(path)}: not found")
    if label is None:
        raise DataError(f"image {_show(path)}: no label; expected --label N (its class index)")
    label = _int_label(str(label), "--label")
    return ImageFiles(
        [str(path)],
        np.array([label], np.int64),
        str(path),
        transform or ImageTransform(),
        size,
        {"format": "image", "labels_from": "--label"},
    )


def load_data(
    path: str | Path,
    label: int | None = None,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    *,
    labels: str | Path | None = None,
    classes: str | Path | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    label_from_filename: bool = False,
    resize: int | str | None = None,
    center_crop: str | int | None = None,
    resample: str = "bilinear",
) -> Dataset:
    """The data set at ``path``, by what it is: folder, image file, .csv/.tsv manifest, .npy or .npz.

    ``size`` (height, width) and ``channels`` describe the model's image input (None when unknown or flat);
    ``resize``/``center_crop`` transform image files. Options that do not apply to the layout are refused.
    """
    from . import tabular

    p = Path(path)
    suffix = p.suffix.lower()
    kind = (
        "folder"
        if p.is_dir()
        else "image"
        if suffix in IMAGE_SUFFIXES
        else "manifest"
        if tabular.csv_suffix(p)
        else "npy"
        if suffix == ".npy"
        else "npz"
    )
    if kind == "manifest" and path_column is None and p.is_file() and tabular.is_numeric(p):
        kind = "features table"  # numbers only: features and a label column, not image paths
    if resample not in RESAMPLING:
        raise DataError(f"--resample {_show(resample)!r}: expected one of {', '.join(RESAMPLING)}")
    transform = ImageTransform(parse_resize(resize), parse_crop(center_crop), channels, resample)
    given = {
        "--labels": labels is not None,
        "--classes": classes is not None,
        "--label": label is not None,
        "--path-column": path_column is not None,
        "--label-column": label_column is not None,
        "--label-from-filename": bool(label_from_filename),
        "--resize": resize is not None,
        "--center-crop": center_crop is not None,
        "--resample": resample != "bilinear",
    }
    allowed = {
        "folder": {
            "--labels",
            "--classes",
            "--label",
            "--label-from-filename",
            "--resize",
            "--center-crop",
            "--resample",
        },
        "image": {"--label", "--resize", "--center-crop", "--resample"},
        "manifest": {"--classes", "--path-column", "--label-column", "--resize", "--center-crop", "--resample"},
        "npy": {"--labels"},
        "npz": set(),
        "features table": {"--label-column"},
    }[kind]
    wrong = [k for k, v in given.items() if v and k not in allowed]
    if wrong:
        raise DataError(
            f"{', '.join(wrong)} given, but DATA {_show(p)} is {'an' if kind[0] in 'aeinou' else 'a'} "
            f"{kind}; expected {', '.join(sorted(allowed)) or 'no data options'} for this layout "
            "(see rs-onnx certify --help)"
        )
    if resample != "bilinear" and transform.resize is None:
        log.warning("--resample %s has no effect without --resize (images are not resized)", resample)
    if kind == "folder":
        return load_folder(
            p, transform, size, labels=labels, label=label, classes=classes, label_from_filename=label_from_filename
        )
    if kind == "image":
        return load_image(p, label, transform, size)
    if kind == "features table":
        features, values, info = tabular.read_numeric(p, None if label_column is None else str(label_column))
        log.info(
            "data: %s holds only numbers: read as a features table (%d features, labels from %s), "
            "not as a manifest of image paths",
            _show(p),
            info["features"],
            info["labels_from"],
        )
        return Dataset(features, as_labels(values, len(values), f"{_show(p)} labels"), str(p), info)
    if kind == "manifest":
        if p.is_file() and p.name.lower().endswith(".gz"):
            raise DataError(
                f"manifest {_show(p)}: a compressed manifest of image paths; expected a plain .csv/.tsv "
                "(compressed CSVs are read only as features tables: numbers only)"
            )
        if p.is_file():
            log.info("data: %s holds words: read as a manifest of image paths", _show(p))
        return load_manifest(
            p, transform, size, path_column=path_column or "path", label_column=label_column or "label", classes=classes
        )
    if kind == "npy":
        return expand_grey(load_npy(p, labels), channels, size)
    if not p.exists():
        raise DataError(f"data {_show(p)}: not found; expected an .npz, .npy, .csv/.tsv manifest, image file or folder")
    if suffix != ".npz":
        raise DataError(
            f"data {_show(p)}: a {_show(suffix) or 'file without a suffix'} is none of the layouts; expected "
            f"an .npz, .npy, .csv/.tsv manifest, image file ({', '.join(IMAGE_SUFFIXES)}) or folder"
        )
    return expand_grey(load_npz(p), channels, size)


def manifest_files(cfg) -> list[str] | None:
    """The image files a CSV/TSV manifest ``cfg.data`` names, in its order (None when the data is not a
    manifest): what a run's data identity hashes besides the manifest (``rs-onnx verify``, without the model)."""
    p = Path(str(cfg.data))
    if p.is_dir() or p.suffix.lower() not in (".csv", ".tsv"):
        return None
    data = load_manifest(
        p,
        ImageTransform(None, None, None),
        path_column=cfg.path_column or "path",
        label_column=cfg.label_column or "label",
        classes=cfg.classes,
    )
    assert isinstance(data, ImageFiles)
    return list(data.files)


def load_from_config(cfg, size: tuple[int, int] | None, channels: int | None) -> Dataset:
    """:func:`load_data` with the data options of a RunConfig."""
    data = load_data(
        cfg.data,
        cfg.label,
        size,
        channels,
        labels=cfg.labels,
        classes=cfg.classes,
        path_column=cfg.path_column,
        label_column=cfg.label_column,
        label_from_filename=cfg.label_from_filename,
        resize=cfg.resize,
        center_crop=cfg.center_crop,
        resample=cfg.resample,
    )
    info = data.describe()
    transform = info.get("transform")
    log.info(
        "data: %s, %d examples, labels from %s%s",
        info.get("format"),
        len(data),
        _show(info.get("labels_from")),
        f", resize {transform['resize']}, center crop {transform['center_crop']}" if transform else "",
    )
    return data
