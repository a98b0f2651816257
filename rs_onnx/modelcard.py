"""What a model's own files say about its preprocessing: the shipped ``preprocessor_config.json`` (Hugging Face
image processors, as ``optimum-cli export onnx`` writes it beside ``model.onnx``), ``config.json``'s
``id2label``, and a graph that rescales 0..255 pixels itself (Keras ``Rescaling(1/255)``).

Everything here is a default below flags, YAML and presets (:func:`rs_onnx.config.build_config`): it fills
only keys the user did not give, and says in one log line what it took. Units: rs-onnx's ``scale``,
``mean`` and ``std`` act on pixels in [0,1] (``(x * scale - mean) / std``); a Hugging Face processor acts on
0..255 pixels (``(p * rescale_factor - image_mean) / image_std``), so ``scale = 255 * rescale_factor``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .guard import escape

log = logging.getLogger(__name__)

CARD_FILE = "preprocessor_config.json"
LABELS_FILE = "config.json"
MAX_CARD_BYTES = 16 << 20
"""Largest preprocessor_config.json / config.json read (real ones are a few kB; config.json with 21k labels ~1 MB)."""
CARD_KEYS = ("scale", "mean", "std", "resize", "center_crop", "resample", "channel_order")
"""RunConfig keys a card can fill."""
IMAGE_KEYS = ("resize", "center_crop", "resample")
"""Card keys that transform image files (not applied to .npz/.npy arrays, which are taken as they are)."""
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
"""PIL's resample codes, as Hugging Face processors store them."""
SQUARE_BY_DEFAULT = ("vit", "deit", "beit", "swin", "dpt", "segformer", "siglip", "data2vec")
"""Processors whose integer ``size`` means height = width (transformers' ``default_to_square=True``)."""


@dataclass(frozen=True)
class Card:
    """A parsed preprocessor_config.json: ``values`` holds RunConfig keys (:data:`CARD_KEYS`)."""

    source: str
    values: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path, what: str, hint: str = "") -> dict:
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise ConfigError(
                f"{what} {escape(path)}: larger than {MAX_CARD_BYTES >> 20} MiB; expected a small JSON file"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{what} {escape(path)}: not readable JSON ({escape(str(e))[:120]}); expected a JSON object{hint}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {escape(path)}: holds a {type(data).__name__}; expected a JSON object{hint}")
    return data


def find_card(model: str | None, preprocessor: str | None) -> Path | None:
    """The preprocessor config to read: ``preprocessor`` (a file; "none": none), else the one beside the model."""
    if preprocessor is not None:
        if str(preprocessor).strip().lower() == "none":
            return None
        p = Path(preprocessor)
        if not str(preprocessor).strip() or not p.is_file():
            what = (
                "empty"
                if not str(preprocessor).strip()
                else "a directory"
                if p.is_dir()
                else "not a regular file (a device or pipe)"
                if p.exists()
                else "not found"
            )
            raise ConfigError(f"--preprocessor {escape(preprocessor)!r}: {what}; expected a {CARD_FILE} file (or none)")
        return p
    if model is None:
        return None
    beside = Path(model).parent / CARD_FILE
    return beside if beside.is_file() else None


def _number(card: dict, key: str, src: str) -> float:
    v = card[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{src}: {key} = {escape(repr(v))[:60]}; expected a finite number")
    return float(v)


def _numbers(card: dict, key: str, src: str) -> list[float]:
    v = card[key]
    values = v if isinstance(v, list) else [v]
    if not values or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in values):
        raise ConfigError(f"{src}: {key} = {escape(repr(v))[:60]}; expected a number or a list of numbers")
    return [float(t) for t in values]


def _flag(card: dict, key: str, src: str, default: bool = False) -> bool:
    """A processor's ``do_*`` switch: JSON true/false (a string such as "false" would read as true)."""
    v = card.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(f"{src}: {key} = {escape(repr(v))[:60]}; expected true or false")
    return v


def _size(value: Any, key: str, src: str, square: bool) -> tuple[str, Any]:
    """("edge", N) for a shorter side, ("hw", (H, W)) for an exact size, from a processor's size dict or int."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return ("hw", (value, value)) if square else ("edge", value)
    if isinstance(value, dict):
        h, w, edge = value.get("height"), value.get("width"), value.get("shortest_edge")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            return "hw", (h, w)
        if isinstance(edge, int) and edge > 0:
            return "edge", edge
    if isinstance(value, list) and len(value) == 2 and all(isinstance(t, int) and t > 0 for t in value):
        return "hw", (value[0], value[1])
    raise ConfigError(
        f"{src}: {key} = {escape(repr(value))[:80]}; expected an integer or {{'height', 'width'}} or {{'shortest_edge'}}"
    )


def read_card(path: Path) -> Card:
    """RunConfig values from a Hugging Face image processor's config (transformers' ViT, DeiT, BEiT, ConvNeXt,
    ResNet, MobileViT, CLIP... processors: rescale, normalize, resize, crop, channel flip). A value it cannot
    read is refused naming the way around it (--preprocessor none, then the flags)."""
    try:
        return _read_card(path)
    except ConfigError as e:
        if "--preprocessor none" in str(e):
            raise
        raise ConfigError(f"{e} (--preprocessor none ignores the file; then give the preprocessing as flags)") from None


def _read_card(path: Path) -> Card:
    src = escape(path)
    card = _read_json(path, "preprocessor config", " (--preprocessor none ignores it)")
    kind = str(card.get("image_processor_type") or card.get("feature_extractor_type") or "").lower()
    square = any(kind.startswith(k) for k in SQUARE_BY_DEFAULT)
    values: dict[str, Any] = {}
    rescale = _flag(card, "do_rescale", src, True)
    factor = _number(card, "rescale_factor", src) if "rescale_factor" in card else 1 / 255
    scale = 255.0 * factor if rescale else 255.0
    values["scale"] = 1.0 if abs(scale - 1.0) < 1e-9 else scale
    # EfficientNet's processor: rescale_offset subtracts 1 after rescaling; include_top (its default) divides
    # by image_std a second time after normalising
    offset = 1.0 if rescale and _flag(card, "rescale_offset", src) else 0.0
    if _flag(
        card, "do_normalize", src
    ):  # absent: the processor does not normalise (MobileViT saves a mean it never uses)
        mean = _numbers(card, "image_mean", src) if "image_mean" in card else [0.0]
        std = _numbers(card, "image_std", src) if "image_std" in card else [1.0]
        if _flag(card, "include_top", src, kind.startswith("efficientnet")):
            std = [s * s for s in std]
        values["mean"], values["std"] = [m + offset for m in mean], std
    else:
        values["mean"], values["std"] = [offset], [1.0]
    if _flag(card, "do_flip_channel_order", src):
        values["channel_order"] = "bgr"
    resize: int | str | None = None
    if _flag(card, "do_resize", src, "size" in card) and "size" in card:
        how, size = _size(card["size"], "size", src, square)
        crop_pct = card.get("crop_pct")
        if how == "edge" and isinstance(crop_pct, (int, float)) and not isinstance(crop_pct, bool) and crop_pct > 0:
            # transformers' ConvNextImageProcessor: below 384, resize the shorter side to size / crop_pct and
            # crop size x size from the centre; at 384 and above, warp to size x size
            if size < 384:
                resize, values["center_crop"] = int(size / crop_pct), f"{size}x{size}"
            else:
                resize = f"{size}x{size}"
        elif how == "edge":
            # transformers' LevitImageProcessor resizes the shorter side to int(256 / 224 * shortest_edge)
            resize = int((256 / 224) * size) if kind.startswith("levit") else size
        else:
            resize = f"{size[0]}x{size[1]}"
        values["resize"] = resize
        resample = card.get("resample")
        if isinstance(resample, str) and resample.lower() in RESAMPLE.values():
            values["resample"] = resample.lower()
        elif resample is not None:
            if isinstance(resample, bool) or resample not in RESAMPLE:
                raise ConfigError(f"{src}: resample = {escape(repr(resample))[:40]}; expected a PIL filter code 0 to 5")
            values["resample"] = RESAMPLE[resample]
    if _flag(card, "do_center_crop", src) and card.get("crop_size") is not None:
        _, crop = _size(card["crop_size"], "crop_size", src, True)
        values["center_crop"] = f"{crop[0]}x{crop[1]}"
    return Card(str(path), values)


def class_names(model: str | None, preprocessor: str | None = None) -> list[str] | None:
    """Class names by class id from ``config.json``'s ``id2label`` beside the model (or beside
    ``preprocessor``), when its ids are exactly 0..K-1; else None."""
    folders = [Path(p).parent for p in (model, preprocessor) if p and str(p).lower() != "none"]
    for folder in dict.fromkeys(folders):
        path = folder / LABELS_FILE
        if not path.is_file():
            continue
        try:
            labels = _read_json(path, "model config").get("id2label")
        except ConfigError as e:
            log.warning("%s; class names not read", e)
            return None
        if not isinstance(labels, dict) or not labels:
            continue
        try:
            by_id = {int(k): str(v) for k, v in labels.items()}
        except (TypeError, ValueError):
            by_id = {}
        if by_id and sorted(by_id) == list(range(len(by_id))):
            return [by_id[i] for i in range(len(by_id))]
        keys = ", ".join(escape(repr(k))[:20] for k in list(labels)[:4])
        log.warning(
            "%s: id2label keys %s%s are not the class ids 0 to %d; class names not used",
            escape(path),
            keys,
            ", ..." if len(labels) > 4 else "",
            len(labels) - 1,
        )
    return None


def graph_rescale(model: str | None, input_name: str | None = None) -> tuple[float, str] | None:
    """(255, why) when the model's graph itself rescales 0..255 pixels: its first arithmetic op on the input is a
    Mul by 1/255 or 1/127.5, or a Div by 255 or 127.5 (Keras ``Rescaling``; through Cast/Identity/Transpose).
    None otherwise, or when the file is not a readable model (the loader says why later)."""
    from . import graph

    proto = graph.header(model)
    if proto is None:
        return None
    inputs = graph.real_inputs(proto)
    names = [v.name for v in inputs]
    name = input_name if input_name in names else (names[0] if len(names) == 1 else None)
    if name is None:
        return None
    step = next((s for s in graph.normalization(proto, name) if "constant" in s), None)
    if step is None or not isinstance(step.get("constant"), list) or not step["constant"]:
        return None
    values = set(step["constant"])
    if len(values) != 1:
        return None
    c = float(values.pop())
    if step["op"] == "Mul" and any(abs(c * d - 1) < 2e-3 for d in (255.0, 127.5)):
        return 255.0, f"the graph's first op on '{name}' is Mul by {c:.6g} (Keras Rescaling(1/{round(1 / c, 1):g}))"
    if step["op"] == "Div" and step.get("input_first") and any(abs(c / d - 1) < 2e-3 for d in (255.0, 127.5)):
        return 255.0, f"the graph's first op on '{name}' is Div by {c:g}"
    return None


def card_values(
    model: str | None, preprocessor: str | None, explicit: set[str], input_name: str | None, data: str | None = None
) -> dict:
    """RunConfig values from the model's card (or its graph's rescaling) for keys not in ``explicit``; logs
    one line saying what was taken (and from where), and what the flags overrode. The card's resize, crop and
    resample are not taken for ``data`` held as arrays (.npz/.npy: their pixels are used as they are)."""
    path = find_card(model, preprocessor)
    if path is not None:
        card = read_card(path)
        arrays = data is not None and Path(str(data)).suffix.lower() in (".npz", ".npy")
        skipped = sorted(k for k in card.values if arrays and k in IMAGE_KEYS and k not in explicit)
        taken = {k: v for k, v in card.values.items() if k not in explicit and k not in skipped}
        kept = sorted(k for k in card.values if k in explicit)
        shown = ", ".join(f"{k} {_show(v)}" for k, v in taken.items()) or "nothing"
        log.info(
            "preprocessing from %s: %s%s%s",
            card.source,
            shown,
            f" (given explicitly, not taken: {', '.join(kept)})" if kept else "",
            f" (not applied to arrays, used as they are: {', '.join(skipped)})" if skipped else "",
        )
        return {**taken, "preprocessor": str(path)} if "preprocessor" not in explicit else taken
    if "scale" in explicit:
        return {}
    found = graph_rescale(model, input_name)
    if found is None:
        return {}
    scale, why = found
    log.info("%s: it takes 0..255 pixels, so scale %g (--scale to override)", why, scale)
    return {"scale": scale}


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_class_names(cfg, num_classes: int | None) -> list[str] | None:
    """Class names by class id for a run (meta.json's ``class_names``): ``cfg.classes`` (the --classes file),
    else :func:`class_names` of the model when they name exactly ``num_classes`` classes; else None."""
    from .data import read_classes

    if cfg.classes:
        return read_classes(cfg.classes)
    if cfg.denoiser:
        return None
    names = class_names(cfg.model, cfg.preprocessor)
    if names is not None and num_classes is not None and len(names) != num_classes:
        log.warning(
            "config.json beside the model names %d classes (id2label) and the model has %d; class names not used",
            len(names),
            num_classes,
        )
        return None
    if names is not None:
        log.info("class names: %d from the model's config.json (id2label)", len(names))
    return names
