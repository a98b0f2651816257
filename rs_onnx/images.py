"""Image files: decoding (Pillow, decompression-bomb and bit-depth checks), :class:`ImageTransform`
(mode conversion, torchvision-style ``Resize`` and ``CenterCrop``), ``--resize``/``--center-crop`` parsing,
and :class:`ImageFiles`, a data set of image files decoded on demand."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .dataset import Dataset, show
from .errors import DataError

RESAMPLING = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
"""--resample choices: PIL's filters (antialiased when reducing, except nearest)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
"""torchvision's IMG_EXTENSIONS, and .gif."""
MAX_PIXELS = 89_478_485
"""Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): larger images are refused."""

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
        raise DataError(f"--center-crop {show(text)!r}: expected a size N or HxW in pixels (e.g. 224 or 224x200)")
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
            f"--resize {show(value)!r}: expected the shorter side N in pixels (e.g. 256) or HxW "
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
        raise DataError(f"{show(path)}: image too large ({show(e)}); expected at most {MAX_PIXELS:,} pixels") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"{show(path)}: not a readable image ({show(e)}); expected PNG, JPEG or another image format Pillow reads"
        ) from e
    if im.width * im.height > MAX_PIXELS or im.width < 1 or im.height < 1:
        im.close()
        raise DataError(f"{show(path)}: image of {im.width}x{im.height} pixels; expected 1 to {MAX_PIXELS:,} pixels")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F") or im.mode.startswith("I;"):
        im.close()
        raise DataError(
            f"{show(path)}: {im.mode} image (16-bit or float pixels); expected 8-bit images "
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
        raise DataError(f"{show(path)}: not a readable image ({show(e)}); expected a complete image file") from e


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
                f"{show(self.files[i])}: image is {x.shape[2]}x{x.shape[1]} with {x.shape[0]} channels "
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
                            f"images with different channel counts: {show(self.files[i1])} has {s1[0]}, "
                            f"{show(self.files[i2])} has {s2[0]}; expected one count: give --input-shape "
                            f"{c},{s1[1]},{s1[2]} (the model's channels; the others are converted to it)"
                        )
                    raise DataError(
                        f"images of different sizes: {show(self.files[i1])} is {s1[2]}x{s1[1]} "
                        f"({s1[0]} channels), {show(self.files[i2])} is {s2[2]}x{s2[1]} ({s2[0]} channels)"
                        f" after the transform; expected one size: give --resize HxW, or --resize N and --center-crop HxW"
                    )
        if not first:
            return
        (c, h, w), i = next(iter(first.items()))
        if self.size is not None and (h, w) != tuple(self.size):
            mh, mw = self.size
            raise DataError(
                f"{show(self.files[i])}: image is {h}x{w} (height x width) after the transform but the "
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
