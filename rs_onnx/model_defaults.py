"""What a run takes from the model where the flags are silent: sigma and the noise kind from its metadata,
the image geometry (channels, height, width) from its input shape."""

from __future__ import annotations

import logging

import numpy as np

from .config import RunConfig
from .errors import ConfigError
from .guard import escape

log = logging.getLogger(__name__)


def resolve_sigma(cfg: RunConfig, clf) -> float:
    """--sigma, else the model's ``rs_onnx.sigma`` metadata (and say so), else a clear error. ``cfg`` is
    only read."""
    if cfg.sigma is not None:
        return float(cfg.sigma)
    meta = getattr(clf, "metadata", {}) or {}
    if "rs_onnx.sigma" in meta:
        text = meta["rs_onnx.sigma"]
        try:
            sigma = float(text)
        except (TypeError, ValueError):
            sigma = float("nan")
        if not (np.isfinite(sigma) and sigma > 0):
            raise ConfigError(
                f"the model's rs_onnx.sigma metadata is {escape(repr(text)[:80])}; expected a positive "
                "number (the noise level in [0,1] pixel units), or pass --sigma"
            )
        log.info("no --sigma given: using sigma=%g from the model's metadata (rs_onnx.sigma)", sigma)
        return sigma
    raise ConfigError(
        "no --sigma given and the model has no rs_onnx.sigma metadata; expected --sigma "
        "(noise level in [0,1] pixel units)"
    )


def resolve_noise(cfg: RunConfig, clf) -> str:
    """--noise, else the model's ``rs_onnx.noise`` metadata (export/train.py writes it; say so), else gaussian.

    A --noise that differs from the model's metadata is allowed (the certificate covers the noise used)
    but logged as a warning: the model was trained for another noise.
    """
    from .noise import get_kind

    meta = getattr(clf, "metadata", {}) or {}
    trained = meta.get("rs_onnx.noise")
    if cfg.noise is None:
        if trained is None:
            return "gaussian"
        kind = get_kind(str(trained)).name
        log.info("no --noise given: using noise=%s from the model's metadata (rs_onnx.noise)", kind)
        return kind
    if trained is not None and str(trained) != cfg.noise:
        log.warning(
            "--noise %s, but the model's metadata says it was trained with %s noise (rs_onnx.noise)",
            cfg.noise,
            str(trained)[:40],
        )
    return get_kind(cfg.noise).name


def image_geometry(clf, layout: str) -> tuple[int | None, tuple[int, int] | None]:
    """(channels, (height, width)) of the model's image input, to read image files; (None, None) if flat."""
    shape = tuple(clf.input_shape)
    if len(shape) != 3:
        return None, None
    if layout == "nhwc" or (layout == "auto" and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)):
        return shape[-1], shape[:2]
    return shape[0], shape[1:]
