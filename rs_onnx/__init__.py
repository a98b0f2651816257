"""rs-onnx: certify the l2 robustness of any ONNX classifier by randomized smoothing (Cohen et al. 2019).

Public API: ``OnnxClassifier`` (the base classifier), ``SmoothedClassifier`` (PREDICT and CERTIFY),
``PreprocessSpec`` (how x + delta in [0,1] pixel units becomes the model's input), their results
``Certificate`` and ``Prediction``, and the errors raised on bad input.

The classes are imported on first use (PEP 562), so that ``rs-onnx --help`` and ``--version`` do not
pay for onnx, onnxruntime and scipy.
"""

from typing import TYPE_CHECKING

from ._version import __version__
from .errors import ConfigError, DataError, DeviceError, ModelError, RsOnnxError

if TYPE_CHECKING:
    from .classifier import OnnxClassifier
    from .preprocess import PreprocessSpec
    from .smoothing import ABSTAIN, Certificate, Prediction, SmoothedClassifier

_LAZY = {
    "OnnxClassifier": "classifier",
    "PreprocessSpec": "preprocess",
    "ABSTAIN": "smoothing",
    "Certificate": "smoothing",
    "Prediction": "smoothing",
    "SmoothedClassifier": "smoothing",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ABSTAIN",
    "Certificate",
    "ConfigError",
    "DataError",
    "DeviceError",
    "ModelError",
    "OnnxClassifier",
    "Prediction",
    "PreprocessSpec",
    "RsOnnxError",
    "SmoothedClassifier",
    "__version__",
]
