"""Guards for untrusted input: one-line messages, bounded YAML, file names, dtypes, example sizes, quiet logs.

Every check raises an :class:`~rs_onnx.errors.RsOnnxError` subclass whose message says what was received
and what was expected, so that the CLI prints exactly one ``rs-onnx: error:`` line.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from .errors import ConfigError, ModelError

# C0/C1 control characters, DEL and the Unicode line/paragraph separators: anything that could end a line,
# move the cursor or recolour a terminal. Escaped, never passed through.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u0085]")


def escape(text: object) -> str:
    """``text`` on one line: control characters (newline, CR, ESC, ...) become ``\\n``, ``\\x1b``, ...

    Untrusted strings (model input/output names, metadata, file names) go through this before they reach
    stderr, so they can neither split a message nor forge an ``rs-onnx: error:`` line.
    """

    def sub(m: re.Match) -> str:
        c = m.group(0)
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (
            f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
        )

    return _CONTROL.sub(sub, str(text))


# ------------------------------------------------------------------------------------------------ YAML
MAX_YAML_BYTES = 1 << 20  # a config file is a few hundred bytes
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 100_000  # after expanding aliases


def check_yaml(data: bytes, path: Path) -> None:
    """Refuse YAML that is too big, too deeply nested, or expands (through aliases) to too many nodes.

    Runs before ``yaml.safe_load``: the event scan is iterative (no recursion), the expansion count is
    computed over the composed node graph with shared aliases counted by multiplicity, never expanded.
    """
    import yaml

    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"config file {escape(path)}: {len(data)} bytes; expected at most {MAX_YAML_BYTES}")
    depth = 0
    try:
        for event in yaml.parse(data, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError(
                        f"config file {escape(path)}: nested more than {MAX_YAML_DEPTH} levels deep; "
                        "expected a flat mapping of keys to values"
                    )
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        node = yaml.compose(data, Loader=yaml.SafeLoader)  # depth is bounded: recursion is safe
    except yaml.YAMLError:
        return  # safe_load reports the syntax error itself
    sizes: dict[int, int] = {}

    def size(n) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a cycle (recursive alias) counts once here and is refused by safe_load
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        total = min(total, MAX_YAML_NODES + 1)
        sizes[id(n)] = total
        return total

    if node is not None and size(node) > MAX_YAML_NODES:
        raise ConfigError(
            f"config file {escape(path)}: expands to more than {MAX_YAML_NODES} values (aliases); "
            "expected a small mapping of keys to values"
        )


# ----------------------------------------------------------------------------------------- file names
def check_path_name(path: str | os.PathLike, what: str, reserve: int = 0) -> Path:
    """Refuse a path whose file name (plus ``reserve`` bytes of suffix the run adds) or whole length is
    over the file system's limits, before anything is opened or created."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        name_max = os.pathconf(parent if parent.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    try:
        path_max = os.pathconf(".", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        path_max = 4096
    for part in p.parts:
        n = len(os.fsencode(part)) + (reserve if part == p.name else 0)
        if n > name_max:
            raise ConfigError(
                f"{what} {escape(path)}: a file name of {n} bytes; expected at most {name_max}"
                + (f" (including the {reserve} bytes of suffix added to it)" if reserve else "")
            )
    if len(os.fsencode(str(p))) + reserve > path_max:
        raise ConfigError(f"{what}: a path of {len(os.fsencode(str(p)))} bytes; expected at most {path_max}")
    return p


# --------------------------------------------------------------------------------------------- dtypes
DTYPES = ("float16", "float32", "float64", "uint8", "int8", "uint16", "int16", "int32", "int64")


def check_dtype(name: object) -> str:
    """The canonical name of a model input dtype (``--dtype``); ConfigError for anything else."""
    try:
        dt = np.dtype(str(name)) if isinstance(name, str) and name.strip() else None
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ConfigError(f"dtype {escape(repr(name))}: expected one of {', '.join(DTYPES)}")
    return dt.name


# -------------------------------------------------------------------------------------- example sizes
MAX_EXAMPLE_BYTES = 1 << 31  # 2 GiB per example, as float64 random test inputs


def check_example_size(shape, model: str, input_name: str) -> None:
    """Refuse a declared per-example shape too large to allocate, before the load check allocates it."""
    values = 1
    for d in shape:
        values *= int(d)
    if values * 8 > MAX_EXAMPLE_BYTES:
        raise ModelError(
            f"model {escape(model)}: input '{escape(input_name)}' declares per-example shape "
            f"{[int(d) for d in shape]} = {values:,} values; expected at most "
            f"{MAX_EXAMPLE_BYTES // 8:,} ({MAX_EXAMPLE_BYTES >> 30} GiB as float64)"
        )


# ------------------------------------------------------------------------------- third-party chatter
ORT_SEVERITY = 2  # onnxruntime's default logger level (2: warnings); 3 (errors) once quieted


def quiet_onnxruntime(debug: bool) -> None:
    """Unless ``debug``: onnxruntime's C++ logger (which writes to fd 2 itself) only reports errors."""
    global ORT_SEVERITY
    if debug:
        return
    import onnxruntime as ort

    ORT_SEVERITY = 3
    ort.set_default_logger_severity(ORT_SEVERITY)


def quiet_warnings(debug: bool) -> None:
    """Unless ``debug``: numpy/PIL/onnx warnings are dropped (rs-onnx reports what matters itself); any
    other warning prints as one escaped ``rs-onnx: warning:`` line. Call inside ``warnings.catch_warnings``."""
    import sys

    if debug:
        return
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # numpy floating-point, PIL bombs (handled)
    warnings.filterwarnings("ignore", module=r"(PIL|numpy|onnx|onnxruntime|scipy)(\.|$)")

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"rs-onnx: warning: {escape(message)}", file=sys.stderr)

    warnings.showwarning = show
