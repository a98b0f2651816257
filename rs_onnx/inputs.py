"""Checks and conversions of what users hand to the Python API: images, sigma, integers.

Images are in [0,1] pixel units everywhere in rs-onnx. Integer images (uint8 and any other integer
dtype holding 0..255) are divided by 255, exactly as the CLI reads uint8 data, so that sigma means the
same thing in the API and on the command line. Float images are taken as they are (values outside
[0,1], e.g. tabular features, stay allowed) but must be finite and small enough that float32 still
resolves noise of size sigma around them.
"""

from __future__ import annotations

import logging
import numbers

import numpy as np

from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

MAX_SIGMA = 1e6
"""Largest noise level accepted (sigma is in [0,1] pixel units; above this any input is drowned)."""
RESOLUTION = 0.01
"""float32 must resolve steps of RESOLUTION * sigma at the largest input value (else the noise is lost)."""


MAX_COUNT = int(np.iinfo(np.int64).max)
"""The largest count the counters hold: class counts, sample counts and example indices are int64
(rs_onnx.sampling's counts, rs_onnx.stats' bounds)."""


def as_int(name: str, value, minimum: int | None = None) -> int:
    """``value`` as an int: integers, or floats holding an exact integer (1e5); anything else -> ConfigError."""
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}={value!r}: expected an integer")
    exact = isinstance(value, numbers.Real) and np.isfinite(float(value)) and float(value).is_integer()
    if not (isinstance(value, numbers.Integral) or exact):
        raise ConfigError(f"{name}={value!r}: expected an integer (no silent truncation)")
    out = int(value)
    if minimum is not None and out < minimum:
        raise ConfigError(f"{name}={out}: expected an integer >= {minimum}")
    return out


def check_sigma(sigma) -> float:
    """sigma as a float: finite, > 0 and at most :data:`MAX_SIGMA`; else ConfigError."""
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise ConfigError(f"sigma={sigma!r}: expected a positive noise level in [0,1] pixel units") from None
    if not (np.isfinite(s) and 0 < s <= MAX_SIGMA):
        raise ConfigError(f"sigma={sigma}: expected a positive noise level in [0,1] pixel units, at most {MAX_SIGMA:g}")
    return s


def check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"alpha={alpha!r}: expected 0 < alpha < 1") from None
    if not 0.0 < a < 1.0:
        raise ConfigError(f"alpha={alpha}: expected 0 < alpha < 1")
    return a


def check_magnitude(max_abs: float, sigma: float, what: str) -> None:
    """Refuse inputs so large that float32 cannot hold them or loses noise of size sigma around them."""
    if not np.isfinite(max_abs) or max_abs > float(np.finfo(np.float32).max):
        raise DataError(
            f"{what} holds a value of magnitude {max_abs:.3g}; expected finite pixel values in [0,1] "
            "(float32 overflows)"
        )
    step = float(np.spacing(np.float32(max_abs)))
    if step > RESOLUTION * sigma:
        raise DataError(
            f"{what}: noise of sigma={sigma:g} would be lost in float32 rounding at values up to "
            f"{max_abs:.3g} (steps of {step:.3g} there); expected pixel values in [0,1] (or features of "
            f"moderate size) and sigma of at least {step / RESOLUTION:.3g}"
        )


def pixels(x, what: str = "x") -> np.ndarray:
    """One image as float32 in [0,1] pixel units: integer images (0..255) divided by 255, floats as they are.

    Raises DataError for booleans, non-numeric arrays, integers outside 0..255 and non-finite floats.
    """
    x = np.asarray(x)
    if x.dtype.kind in "iu":
        if x.size and (int(x.min()) < 0 or int(x.max()) > 255):
            raise DataError(
                f"{what}: integer image with values in [{int(x.min())}, {int(x.max())}]; expected "
                "0..255 (divided by 255, as the CLI does), or floats in [0,1]"
            )
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype.kind != "f":
        raise DataError(f"{what}: dtype {x.dtype}; expected uint8 (0..255) or float ([0,1] pixel units)")
    finite = np.isfinite(x)
    if not finite.all():
        raise DataError(
            f"{what}: holds {int((~finite).sum())} NaN or Inf values; expected finite pixel values in [0,1]"
        )
    return x.astype(np.float32, copy=False) if x.dtype.itemsize <= 4 else _float32(x, what)


def _float32(x: np.ndarray, what: str) -> np.ndarray:
    big = float(np.abs(x).max(initial=0.0))
    if big > float(np.finfo(np.float32).max):
        check_magnitude(big, 1.0, what)
    return x.astype(np.float32)


def looks_like_0_255(x: np.ndarray) -> bool:
    """An image-shaped float input (2 or more dims) with values in [0, 255] reaching above 2: likely 0..255 data."""
    if x.ndim < 2 or x.dtype.kind != "f" or x.size == 0:
        return False
    lo, hi = float(x.min()), float(x.max())
    return lo >= 0.0 and 2.0 < hi <= 255.0
