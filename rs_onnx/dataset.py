"""The data-set interface: :class:`Dataset` serves example i as ``raw(i)`` (channels first) and ``image(i)``
(float32 in [0,1] pixel units); grey expansion; the checks every layout shares (labels, files, one-line display)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import DataError

log = logging.getLogger("rs_onnx.data")  # the logger name these messages had before data.py was split

MAX_EXAMPLES = 100_000_000
"""More examples than this (declared by a header, a manifest or a labels file) are refused before anything is allocated."""
INT64_MAX = np.iinfo(np.int64).max


def show(s: object) -> str:
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
                f"{show(self.source)}: example {i} holds NaN, Inf or values beyond float32; "
                "expected finite values in [0,1]"
            )
        if not self._range_warned and (x.min() < 0 or x.max() > 1):
            self._range_warned = True
            log.warning(
                "%s: float example %d ranges over [%g, %g], not [0,1]; sigma is in the units of these values",
                show(self.source),
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
                f"{show(self.source)}: labels range over [{lo}, {hi}]; expected classes "
                f"0..{(num_classes or 0) - 1} of the model"
            )

    def check_selection(self, indices: Sequence[int]) -> None:
        """Checks the selected examples before any result is written: float rows finite (read in chunks)."""
        dtype = self._images.dtype
        if dtype.kind != "f" or not len(indices):
            return
        lo, hi, step = float("inf"), float("-inf"), max(1, (16 << 20) // max(1, row_bytes(self._images)))
        for s in range(0, len(indices), step):
            chunk = [int(i) for i in indices[s : s + step]]
            with np.errstate(over="ignore", invalid="ignore"):
                rows = np.asarray(self._images[chunk]).astype(np.float32).reshape(len(chunk), -1)
            bad = ~np.isfinite(rows).all(axis=1)
            if bad.any():
                raise DataError(
                    f"{show(self.source)}: example {chunk[int(np.argmax(bad))]} holds NaN, Inf or values "
                    "beyond float32; expected finite values in [0,1]"
                )
            lo, hi = min(lo, float(rows.min())), max(hi, float(rows.max()))
        if lo < 0 or hi > 1:
            self._range_warned = True
            log.warning(
                "%s: float images range over [%g, %g], not [0,1]; sigma is in the units of these values",
                show(self.source),
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


def row_bytes(images) -> int:
    return int(np.prod(images.shape[1:], dtype=object)) * images.dtype.itemsize


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


def open_file(path: Path, expected: str):
    if not path.is_file():
        raise DataError(f"data file {show(path)}: not found; expected {expected}")
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{show(path)}: cannot be read ({e.strerror}); expected {expected}") from e


def int_label(text: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise DataError(
            f"{where}: label {show(text.strip()[:40])!r} is not an integer; expected a class index"
        ) from None
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise DataError(f"{where}: label {value} exceeds int64; expected a class index")
    return value
