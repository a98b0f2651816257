"""Errors raised on bad input. Each message says what was received and what was expected."""


class RsOnnxError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits with code ``exit_code`` (1)."""

    exit_code = 1


class ModelError(RsOnnxError):
    """The ONNX model is missing, corrupt, or not shaped like a classifier."""


class DataError(RsOnnxError):
    """The data file does not match the model or holds invalid values."""


class ConfigError(RsOnnxError):
    """A flag or YAML key is missing, unknown, or out of range."""


class UsageError(ConfigError):
    """A value no run can take, such as a count beyond what the counters hold: exit code 2, as click's usage
    errors (unknown option or command, a value that is not a number, a bad choice)."""

    exit_code = 2


class DeviceError(RsOnnxError):
    """The requested execution provider does not really work on this machine."""


class OutputError(RsOnnxError):
    """A result file cannot be written, or an output path is refused (in use, an input, holds rows)."""


class RequirementError(RsOnnxError):
    """``--require``: a population lower bound on certified accuracy is below what the pipeline requires."""
