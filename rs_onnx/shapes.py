"""The per-example input shape: ``--input-shape`` parsed, symbolic dims filled from the data, token inputs refused.

Conventions followed: Polygraphy's ``--input-shapes name:[1,3,224,224]`` and onnxruntime's
``make_dynamic_shape_fixed --input_shape 1,3,224,224`` (comma-separated dims, optionally the input's name and
the batch dim). rs-onnx stores the per-example shape (no batch dim): ``[3, 224, 224]``. Pure functions.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import ConfigError, ModelError

FLAG = "--input-shape"
TOKEN_NAMES = ("input_ids", "token_type_ids", "attention_mask", "position_ids", "decoder_input_ids", "ids", "tokens")
"""Input names that hold token ids (Hugging Face's text models) or masks over them."""


def parse_input_shape(value) -> tuple[str | None, list[int]]:
    """``"3,224,224"``, ``"3x224x224"``, ``"[3,224,224]"``, ``"x:[1,3,224,224]"`` or a list of ints ->
    (input name or None, dims). Dims are positive integers; the batch dim may be included (see
    :func:`per_example`). Raises ConfigError naming the flag."""
    name = None
    if isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        text = str(value).strip()
        if ":" in text:  # NAME:[dims]; the name may hold colons itself (TensorFlow's "input_1:0")
            head, _, text = text.rpartition(":")
            name = head.strip() or None
        body = text.strip()
        body = body[1:-1] if body.startswith("[") and body.endswith("]") else body
        # an empty dim ("3,,224", "3,224,") is refused, not dropped: it would pass as a shorter shape
        parts = re.split(r"\s*[,x]\s*|\s+", body.strip().lower()) if "[" not in body else ["bad"]
    dims: list[int] = []
    for p in parts:
        if isinstance(p, bool):
            dims = []
            break
        try:
            v = int(p) if not isinstance(p, float) or p.is_integer() else -1
        except (TypeError, ValueError):
            v = -1
        if v < 1 or v > 1 << 31:
            dims = []
            break
        dims.append(v)
    if not dims:
        raise ConfigError(
            f"{FLAG} {str(value)[:80]!r}: expected the per-example shape as positive integers, comma-separated "
            "(e.g. 3,224,224 for [N,3,224,224]; optionally NAME:[1,3,224,224] as Polygraphy's --input-shapes)"
        )
    return name, dims


def per_example(rest, given, model_name: str, input_name: str) -> tuple[int, ...]:
    """The per-example shape from ``given`` (user dims) against the declared per-example dims ``rest``.

    ``given`` may include the batch dim (one value more than ``rest``: Polygraphy / onnxruntime style); fixed
    declared dims must match. Raises ConfigError naming ``--input-shape`` and the declared dims."""
    from .graph import format_dims

    given = parse_input_shape(given)[1]  # the API's tuple checked as the flag is: 8.5, 0, -1, True refused
    dims = tuple(given)
    if len(dims) == len(rest) + 1:
        dims = dims[1:]  # [N, ...] given: the batch dim is the run's own
    if len(dims) != len(rest) or any(isinstance(d, int) and d > 0 and d != o for d, o in zip(rest, dims)):
        raise ConfigError(
            f"{FLAG} {','.join(map(str, given))}: model {model_name} input '{input_name}' has per-example dims "
            f"{format_dims(list(rest))}; expected {len(rest)} values matching its fixed dims"
        )
    return dims


def placeholder(rest, layout: str = "auto") -> str:
    """What ``--input-shape`` needs for declared dims ``rest``: fixed sizes kept, the others named
    (``3,H,W`` for [3, height, width]; ``C,H,W`` or ``H,W,C`` for images; the dim's own name otherwise)."""
    letters: list[str] = []
    if len(rest) == 3:
        channels, _ = geometry(rest, layout)
        last = layout == "nhwc" or (layout == "auto" and isinstance(rest[2], int) and rest[2] in (1, 3, 4))
        letters = ["H", "W", "C"] if last and channels is not None or layout == "nhwc" else ["C", "H", "W"]
    return ",".join(
        str(d) if isinstance(d, int) and d > 0 else (letters[i] if letters else str(d or "N"))
        for i, d in enumerate(rest)
    )


def symbolic(rest) -> bool:
    """Whether a declared per-example shape has a dim that is not a fixed positive size."""
    return any(not isinstance(d, int) or d <= 0 for d in rest)


def from_data(rest, image_shape, layout: str, model_name: str, input_name: str) -> tuple[tuple[int, ...], str]:
    """(per-example shape, how) for declared dims ``rest`` with symbolic entries, from the data's per-example
    shape ``image_shape`` ([C,H,W] for images, else as stored). Raises ModelError naming ``--input-shape``
    when the data cannot fill them (another rank, or a fixed dim that does not match)."""
    from .graph import format_dims

    rest, image = list(rest), tuple(int(d) for d in image_shape)

    def fits(candidate) -> bool:
        return len(candidate) == len(rest) and all(
            not isinstance(d, int) or d <= 0 or d == c for d, c in zip(rest, candidate)
        )

    candidates: list[tuple[tuple[int, ...], str]] = []
    if len(image) == 3 and len(rest) == 3:
        nchw, nhwc = image, (image[1], image[2], image[0])
        if layout in ("auto", "nchw") and fits(nchw):
            candidates.append((nchw, "channels first (C,H,W)"))
        if layout in ("auto", "nhwc") and fits(nhwc) and nhwc != nchw:
            candidates.append((nhwc, "channels last (H,W,C)"))
        if layout == "auto" and len(candidates) == 2:
            # both fit: channels first unless the declared dims say channels last (a fixed channel count last)
            last = isinstance(rest[2], int) and rest[2] in (1, 3, 4)
            candidates = [candidates[1] if last else candidates[0]]
    elif fits(image):
        candidates.append((image, "as the data's examples"))
    elif len(rest) == 1 and layout in ("auto", "flat"):
        candidates.append(((int(np.prod(image)),), "flattened"))
    if not candidates:
        example = placeholder(rest, layout)
        raise ModelError(
            f"model {model_name}: input '{input_name}' has per-example dims {format_dims(rest)} and the data's "
            f"examples are shaped {list(image)}, which do not fill them; expected {FLAG} {example} "
            "(the per-example shape, no batch dim)"
        )
    return candidates[0]


def token_input(name: str, dtype: np.dtype, rest) -> bool:
    """Whether an input holds token ids (or a mask over them): a 32/64-bit integer input that is named like
    one (input_ids, attention_mask, ...) or is a sequence (one symbolic dim per example). uint8/int8 image
    inputs, and integer features of a fixed size, are not."""
    if dtype.kind not in "iu" or dtype.itemsize < 4:
        return False
    sequence = rest is not None and len(rest) == 1 and not (isinstance(rest[0], int) and rest[0] > 0)
    return name.lower() in TOKEN_NAMES or name.lower().endswith("_ids") or sequence


def token_error(model_name: str, name: str, dtype: np.dtype, dims) -> ModelError:
    """The one line that refuses a token-input model."""
    from .graph import format_dims

    return ModelError(
        f"model {model_name}: input '{name}' is {dtype} {format_dims(dims)}, token ids: Gaussian noise cannot "
        "be added to integer token ids; expected an image or feature input (float, or uint8 pixels). "
        "Certifying text models in embedding space is not supported yet"
    )


def format_rest(rest) -> str:
    """Per-example dims as shown to users: ``[num_channels, height, width]``."""
    from .graph import format_dims

    return format_dims(list(rest))


def declared_input(model, input_name: str | None, extra_inputs) -> tuple[str, list] | None:
    """(name, declared per-example dims) of the input to perturb, read from the model file without its weights
    (the loader's own choice, :func:`rs_onnx.model_io.choose_input`: a token-id input is refused here, before
    any data is read); None when the file cannot be read here (the loader then says why)."""
    from pathlib import Path

    from .graph import header
    from .model_io import choose_input

    proto = header(model)
    if proto is None:
        return None
    extra = {k: np.asarray(v) for k, v in (extra_inputs or {}).items()}
    inp = choose_input(proto, Path(model).name, input_name, extra)
    if not inp.dims:
        return None
    return inp.name, list(inp.dims[1:])


def geometry(rest, layout: str) -> tuple[int | None, tuple[int, int] | None]:
    """(channels, (height, width)) that the declared per-example dims fix for reading image files (None where
    symbolic): channels first unless ``layout`` is nhwc or the last dim is a fixed channel count."""
    if len(rest) != 3:
        return None, None

    def fixed(d) -> int | None:
        return d if isinstance(d, int) and d > 0 else None

    last = layout == "nhwc" or (layout == "auto" and fixed(rest[2]) in (1, 3, 4) and fixed(rest[0]) not in (1, 3, 4))
    c, h, w = (rest[2], rest[0], rest[1]) if last else (rest[0], rest[1], rest[2])
    size = (fixed(h), fixed(w))
    return fixed(c), (size if None not in size else None)  # type: ignore[return-value]


def from_config(cfg):
    """(cfg, data) for a run configuration (rs_onnx.config.RunConfig): when the model's input has symbolic
    per-example dims and no ``input_shape`` is given, the data is read first (its selected examples must share
    one shape after --resize/--center-crop) and a copy of ``cfg`` gets that shape as ``input_shape`` (the
    loader's trial run then checks the graph takes it); else (cfg, None), ``cfg`` unchanged."""
    import dataclasses
    import logging
    from pathlib import Path

    from .data import load_from_config

    if cfg.input_shape is not None or cfg.denoiser or cfg.model is None:
        return cfg, None
    declared = declared_input(cfg.model, cfg.input_name, cfg.extra_inputs or {})
    if declared is None or not symbolic(declared[1]):
        return cfg, None
    name, rest = declared
    channels, size = geometry(rest, cfg.layout)
    data = load_from_config(cfg, size, channels)
    end = len(data) if cfg.end is None else min(cfg.end, len(data))
    indices = list(range(cfg.start, end, cfg.skip))
    if indices:
        data.check_selection(indices)  # one shape after the transform, or a one-line error
    shape, how = from_data(rest, data.image_shape, cfg.layout, Path(cfg.model).name, name)
    logging.getLogger(__name__).info(
        "input '%s' %s: per-example shape %s from the data (%s); %s overrides",
        name,
        format_rest(rest),
        ",".join(map(str, shape)),
        how,
        FLAG,
    )
    return dataclasses.replace(cfg, input_shape=list(shape)), data
