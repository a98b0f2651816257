"""rs-onnx: certify the l2 robustness of any ONNX classifier by randomized smoothing (Cohen et al. 2019).

Public API: ``OnnxClassifier`` (the base classifier), ``SmoothedClassifier`` (PREDICT and CERTIFY),
``PreprocessSpec`` (how x + delta in [0,1] pixel units becomes the model's input), their results
``Certificate`` and ``Prediction``, and the errors raised on bad input.
"""

from ._version import __version__
from .classifier import OnnxClassifier
from .errors import ConfigError, DataError, DeviceError, ModelError, RsOnnxError
from .preprocess import PreprocessSpec
from .smoothing import ABSTAIN, Certificate, Prediction, SmoothedClassifier

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
