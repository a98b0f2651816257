"""Data sets to certify: .npz files (``images``, ``labels``) and single PNG/JPEG images.

Images are served one at a time in [0,1] pixel units, channels first ([C,H,W]; grey images get C=1).
uint8 images are divided by 255; float images are taken as they are.
"""

from __future__ import annotations

import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class Dataset:
    """``images`` [N, ...] (uint8 or float, channels first) and ``labels`` int64 [N]."""

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def image(self, i: int) -> np.ndarray:
        """Image i as float32 in [0,1] pixel units."""
        x = self.images[i]
        return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)

    def check_labels(self, num_classes: int | None) -> None:
        """Labels must be classes of the model: 0 <= label < num_classes."""
        if len(self.labels) == 0:
            return
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or (num_classes and hi >= num_classes):
            raise DataError(f"{self.source}: labels range over [{lo}, {hi}]; expected classes 0..{(num_classes or 0) - 1} "
                            "of the model")


def _channels_first(images: np.ndarray, source: str) -> np.ndarray:
    if images.ndim == 3:  # [N,H,W] grey
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    if images.ndim < 2:
        raise DataError(f"{source}: 'images' has shape {list(images.shape)}; expected [N, ...] with one image per row")
    return images


def load_npz(path: str | Path) -> Dataset:
    """An .npz with ``images`` (uint8 0..255 or float in [0,1]; [N,H,W], [N,H,W,C], [N,C,H,W] or [N,D]) and ``labels``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path}: not found; expected an .npz with 'images' and 'labels'")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = {"images", "labels"} - keys
            if missing:
                raise DataError(f"{path}: holds keys {sorted(keys)}; expected 'images' and 'labels'")
            images, labels = z["images"], z["labels"]
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e}); expected an .npz with 'images' and 'labels'") from e
    source = str(path)
    if images.ndim < 2:
        raise DataError(f"{source}: 'images' has shape {list(images.shape)}; expected [N, ...] with one image per row")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise DataError(f"{source}: 'images' has dtype {images.dtype}; expected uint8 (0..255) or float ([0,1])")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{source}: 'labels' has dtype {labels.dtype}; expected integers")
    if len(images) == 0:
        raise DataError(f"{source}: 'images' is empty; expected at least one image")
    if labels.shape != (len(images),):
        raise DataError(f"{source}: 'labels' has shape {list(labels.shape)}; expected [{len(images)}], one per image")
    if images.dtype.kind == "f":
        bad = ~np.isfinite(images.reshape(len(images), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{source}: image {int(np.argmax(bad))} holds NaN or Inf ({int(bad.sum())} images in all); "
                            "expected finite values in [0,1]")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 1:
            log.warning("%s: float images range over [%g, %g], not [0,1]; sigma is in the units of these values", source, lo, hi)
    return Dataset(_channels_first(images, source), labels.astype(np.int64), source)


def _read_image(path: Path, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 [C,H,W]: grey when ``channels`` is 1 (or the file is grey), else RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            grey = channels == 1 or (channels is None and im.mode in ("L", "1", "I;16", "I"))
            img = im.convert("L" if grey else "RGB")
            if size and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e}); expected PNG or JPEG") from e
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_image(path: str | Path, label: int | None, size: tuple[int, int] | None = None,
               channels: int | None = None) -> Dataset:
    """One PNG/JPEG image, resized to ``size`` = (height, width) with bilinear resampling when given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path}: not found")
    labels = np.array([-1 if label is None else int(label)], dtype=np.int64)
    return Dataset(_read_image(path, channels, size)[None], labels, str(path))


_TRAILING_LABEL = re.compile(r"_(\d+)$")


def load_folder(path: str | Path, size: tuple[int, int] | None = None, channels: int | None = None) -> Dataset:
    """A folder of images: labels from class subfolders named 0, 1, ... or from a trailing ``_<label>`` in
    each file name (``cifar10_03_0.png`` has label 0); files without either get label -1 (no label)."""
    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise DataError(f"folder {path}: holds no images; expected PNG or JPEG files ({', '.join(IMAGE_SUFFIXES)})")
    labels = []
    for f in files:
        parent = f.parent.name if f.parent != path else ""
        m = _TRAILING_LABEL.search(f.stem)
        labels.append(int(parent) if parent.isdigit() else int(m.group(1)) if m else -1)
    images = [_read_image(f, channels, size) for f in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"folder {path}: images of different shapes {sorted(shapes)[:3]}; expected one shape "
                        "(they are resized only when the model's input size is known)")
    if -1 in labels:
        log.warning("%s: %d of %d images have no label (no class folder or _<label> suffix); they count as wrong",
                    path, labels.count(-1), len(labels))
    return Dataset(np.stack(images), np.array(labels, dtype=np.int64), str(path))


def load_data(path: str | Path, label: int | None = None, size: tuple[int, int] | None = None,
              channels: int | None = None) -> Dataset:
    """Dispatch: a folder of images, one image (``label`` given by the user), or an .npz file."""
    p = Path(path)
    if p.is_dir():
        return load_folder(p, size, channels)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return load_image(p, label, size, channels)
    return load_npz(p)
