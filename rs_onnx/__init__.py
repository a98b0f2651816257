"""rs-onnx: certify the l2 robustness of any ONNX classifier by randomized smoothing."""

__version__ = "0.1.0"
