"""The version of rs-onnx: its one home (read by the package, results.versions() and the build)."""

__version__ = "0.1.0"
