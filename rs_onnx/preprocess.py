"""The preprocessing spec: how a noisy point x + delta in [0,1] pixel units becomes the model's input.

model_input = cast((layout(order(x + delta)) * scale - mean) / std)

``order`` is the channel order: "rgb" keeps the data's channels, "bgr" reverses the first three (for
models trained on OpenCV/Caffe-style BGR images); mean/std are then in the model's channel order.

Preprocessing is part of the base classifier, so the certificate covers it, rounding to an integer
dtype included. Because every step before the cast is affine per channel and the noise is i.i.d., the
clean image is laid out and normalised once, and each noise draw costs one fused multiply-add:
``input = clean + delta * (sigma * scale / std)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, DataError

LAYOUTS = ("auto", "nchw", "nhwc", "flat")
CHANNEL_ORDERS = ("rgb", "bgr")
MAX_GAIN = 1e6
"""Largest scale/std and |mean|/std accepted: beyond it float32 inputs overflow or lose the noise."""


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model expects. mean/std are in the scaled units (after ``* scale``); one value or one per channel."""

    layout: str = "auto"
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str | None = None  # None: the model's own input dtype
    channel_order: str = "rgb"  # "bgr": the data's RGB channels reversed before mean/std

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout {self.layout!r}: expected one of {', '.join(LAYOUTS)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order {self.channel_order!r}: expected one of {', '.join(CHANNEL_ORDERS)}")
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise ConfigError(f"scale {self.scale}: expected a positive number")
        if any(s <= 0 or not np.isfinite(s) for s in self.std):
            raise ConfigError(f"std {list(self.std)}: expected positive numbers")
        if any(not np.isfinite(m) for m in self.mean):
            raise ConfigError(f"mean {list(self.mean)}: expected finite numbers")
        gains = [self.scale / s for s in self.std] + [abs(m) / s for m in self.mean for s in self.std]
        if max(gains, default=0.0) > MAX_GAIN:
            raise ConfigError(
                f"scale {self.scale:g}, mean {list(self.mean)}, std {list(self.std)}: (x * scale - mean) / "
                f"std multiplies or shifts by up to {max(gains):.3g}; expected at most {MAX_GAIN:g} "
                "(a std of ordinary size, e.g. 0.2-0.3 for images in [0,1], or 50-70 with --scale 255)"
            )
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ConfigError(
                f"mean has {len(self.mean)} values and std {len(self.std)}: expected the same count, or one"
            )


def _resolve_layout(layout: str, image_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str:
    """The layout to use; "auto" decides only when there is one sensible reading, else asks the user."""
    if layout != "auto":
        return layout
    channels = image_shape[0] if len(image_shape) == 3 else 1
    if len(image_shape) == 3 and len(model_shape) == 3:
        nhwc = (image_shape[1], image_shape[2], channels)
        if model_shape == nhwc and model_shape != image_shape:
            return "nhwc"
        if model_shape == image_shape:
            return "nchw"
    if channels > 1:
        raise ConfigError(
            f"cannot tell how images shaped {list(image_shape)} map onto the model input {list(model_shape)}; "
            "expected --layout flat (channels first, C,H,W order) or --layout nhwc (H,W,C order)"
        )
    return "nchw" if len(model_shape) == 3 else "flat"


class Preprocessor:
    """Maps images [C,H,W] (or any shape of the same size) in [0,1] to model inputs of ``model_shape``.

    Parameters
    ----------
    spec : PreprocessSpec
    image_shape : per-example shape of the data (e.g. (1, 28, 28) or (3, 32, 32)).
    model_shape : per-example input shape of the model, without the batch dim.
    model_dtype : the model's input dtype.
    """

    def __init__(self, spec: PreprocessSpec, image_shape, model_shape, model_dtype) -> None:
        self.spec = spec
        self.image_shape = tuple(int(d) for d in image_shape)
        self.model_shape = tuple(int(d) for d in model_shape)
        if int(np.prod(self.image_shape)) != int(np.prod(self.model_shape)):
            raise DataError(
                f"images shaped {list(self.image_shape)} ({int(np.prod(self.image_shape))} values) do not fit the "
                f"model input {list(self.model_shape)} ({int(np.prod(self.model_shape))} values per example)"
            )
        self.layout = _resolve_layout(spec.layout, self.image_shape, self.model_shape)
        if spec.channel_order == "bgr" and (len(self.image_shape) != 3 or self.image_shape[0] not in (3, 4)):
            raise ConfigError(
                f"channel_order bgr for images shaped {list(self.image_shape)}; expected colour images "
                "[3 or 4, H, W] (bgr reverses the R, G and B channels)"
            )
        self.dtype = np.dtype(spec.dtype) if spec.dtype else np.dtype(model_dtype)
        if self.dtype.kind not in "fiu":
            raise ConfigError(f"model input dtype {self.dtype}: expected a float or integer tensor")
        self._gain, self._offset = self._affine()

    def _channel_axis(self) -> int | None:
        if self.layout == "nhwc" and len(self.model_shape) == 3:
            return len(self.model_shape) - 1
        if self.layout == "nchw":
            return 0
        return None

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-element gain (scale/std) and offset (-mean/std), broadcastable to model_shape."""
        mean = np.asarray(self.spec.mean, dtype=np.float64)
        std = np.asarray(self.spec.std, dtype=np.float64)
        channels = max(mean.size, std.size)
        shape = [1] * len(self.model_shape)
        if channels > 1:
            axis = self._channel_axis()
            if axis is None or self.model_shape[axis] != channels:
                raise ConfigError(
                    f"{channels} per-channel mean/std values for a model input shaped {list(self.model_shape)} "
                    f"(layout {self.layout}): expected as many channels on the channel axis, or one value"
                )
            shape[axis] = channels
        gain = (self.spec.scale / std * np.ones(channels)).reshape(shape).astype(np.float32)
        offset = (-mean / std * np.ones(channels)).reshape(shape).astype(np.float32)
        return gain, offset

    def in_channel_order(self, x: np.ndarray) -> np.ndarray:
        """One image [C,H,W] with its channels in the model's order (bgr: R, G, B reversed; alpha stays)."""
        if self.spec.channel_order == "bgr":
            x = np.concatenate([x[2::-1], x[3:]]) if x.shape[0] > 3 else x[::-1]
        return x

    def to_model_layout(self, x: np.ndarray) -> np.ndarray:
        """One image in data layout -> the same values in the model's layout (float32, no scaling)."""
        x = self.in_channel_order(np.asarray(x, dtype=np.float32).reshape(self.image_shape))
        if self.layout == "nhwc" and x.ndim == 3:
            x = np.moveaxis(x, 0, -1)
        return np.ascontiguousarray(x.reshape(self.model_shape))

    def clean(self, x: np.ndarray) -> np.ndarray:
        """The clean image, laid out and normalised, float32 shaped model_shape (before any cast)."""
        return self.to_model_layout(x) * self._gain + self._offset

    def noise_gain(self, sigma: float) -> np.ndarray:
        """The factor, float32 broadcastable to model_shape, that turns unit noise into noise in model units."""
        return self._gain * np.float32(sigma)

    def noisy(self, clean: np.ndarray, noise: np.ndarray, sigma: float) -> np.ndarray:
        """Model inputs for clean + sigma * noise; ``noise`` [m, *model_shape] float32 is overwritten."""
        noise *= self._gain * np.float32(sigma)
        noise += clean
        return self.cast(noise)

    def cast(self, v: np.ndarray) -> np.ndarray:
        """To the model dtype; integer dtypes are rounded and clipped to their range."""
        if self.dtype.kind == "f":
            return v if v.dtype == self.dtype else v.astype(self.dtype)
        info = np.iinfo(self.dtype)
        np.rint(v, out=v)
        np.clip(v, info.min, info.max, out=v)
        return v.astype(self.dtype)

    def describe(self) -> dict:
        """The resolved spec, for meta.json."""
        return {
            "layout": self.layout,
            "scale": self.spec.scale,
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "dtype": str(self.dtype),
            "channel_order": self.spec.channel_order,
            "image_shape": list(self.image_shape),
            "model_shape": list(self.model_shape),
        }
