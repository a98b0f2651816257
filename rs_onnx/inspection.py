"""``rs-onnx inspect``: what is in a model, how rs-onnx will read it, and what the user should declare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from . import graph
from .errors import RsOnnxError
from .guard import escape


def _probe(clf) -> dict:
    """Scores on random [0,1] inputs: finite? probabilities (rows >= 0 summing to 1) or logits?"""
    if clf.output_kind != "scores":
        return {"output": "class indices"}
    rng = np.random.default_rng(0)
    x = rng.random((4, *clf.input_shape)).astype(np.float32)
    if clf.input_dtype.kind in "iu":
        x = (x * 255).round()
    s = clf.scores(x.astype(clf.input_dtype))
    finite = bool(np.isfinite(s).all())
    probs = finite and bool((s >= 0).all() and np.allclose(s.sum(axis=1), 1.0, atol=1e-3))
    log_probs = finite and bool((s <= 0).all() and np.allclose(np.exp(s).sum(axis=1), 1.0, atol=1e-3))
    kind = "probabilities" if probs else "log-probabilities" if log_probs else "logits (unnormalised scores)"
    return {"output": kind, "finite": finite, "score_range": [float(s.min()), float(s.max())] if finite else None}


def _guess_preset(shape: tuple[int, ...], normalised_inside: bool) -> str | None:
    """A preset that fits the input's size: a GUESS (many 224x224 models use mean/std 0.5, not ImageNet's)."""
    if normalised_inside:
        return "none"
    size = int(np.prod(shape))
    if size == 784:
        return "mnist"
    if size == 3 * 32 * 32:
        return "cifar10"
    if size == 3 * 224 * 224:
        return "imagenet"
    return None


def _layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return "nhwc"
    return "nchw" if len(shape) == 3 else "flat"


def _card_shape(card_values: dict, rest: list) -> list[int] | None:
    """The per-example shape a preprocessor config implies for declared dims ``rest`` (channels first, RGB):
    its crop, else its exact resize; None when it does not fix the size."""
    from .data import parse_crop, parse_resize

    size = parse_crop(card_values.get("center_crop"))
    if size is None:
        resize = parse_resize(card_values.get("resize"))
        size = resize if isinstance(resize, tuple) else None
    if size is None or len(rest) != 3:
        return None
    channels = rest[0] if isinstance(rest[0], int) and rest[0] > 0 else 3
    return [channels, *size]


def inspect_model(
    path, *, input_name=None, output_name=None, device="auto", input_shape=None, preprocessor=None
) -> dict:
    """A JSON-able report: facts, how rs-onnx reads the model, warnings, and a suggested config.

    ``input_shape``: per-example shape for symbolic dims (as ``--input-shape``); ``preprocessor``: a
    preprocessor_config.json (default: the one beside the model; "none": ignore). A key ``problem`` says why
    rs-onnx cannot run the model as it stands (the CLI then exits 1); ``basis`` says where the suggested
    preprocessing comes from, and whether it is a guess."""
    from . import modelcard, shapes
    from .classifier import OnnxClassifier
    from .config import check_card

    path = Path(path)
    model = graph.load_model(path)
    facts = graph.describe(model)
    report: dict = {"model": str(path), "size_bytes": path.stat().st_size, **facts, "warnings": []}
    warnings = report["warnings"]
    try:
        card_path = modelcard.find_card(str(path), preprocessor)
        card = modelcard.read_card(card_path) if card_path is not None else None
        if card is not None:  # never suggest what certify would refuse (std 0, resize 8e9)
            check_card(card.values, card.source)
        given = None if input_shape is None else shapes.parse_input_shape(input_shape)
    except RsOnnxError as e:
        report["problem"] = str(e)
        return report
    if given is not None and given[0] is not None:
        input_name = input_name or given[0]
    names = modelcard.class_names(str(path), None if card_path is None else str(card_path))
    if names:
        report["class_names"] = names
    rescale = None if card is not None else modelcard.graph_rescale(str(path), input_name)
    steps = [s for s in facts["normalization"] if not _identity_step(s)]
    if rescale is not None:
        warnings.append(f"{rescale[1]}: the model takes 0..255 pixels and rescales them itself; declare scale 255")
    elif steps:
        consts = ", ".join(f"{s['op']} {s['constant']}" for s in steps)
        warnings.append(
            f"the graph starts with what looks like normalisation ({consts}): declare no mean/std "
            "(preset none) unless you know it is something else, so it is not applied twice"
        )
    if facts["ends_with"]:
        warnings.append(f"the graph ends in {facts['ends_with']}: outputs are probabilities, fine for argmax")
    if facts["integer_input"]:
        warnings.append(
            "integer input: x + delta is scaled, rounded and clipped to the input dtype; "
            "declare --scale 255 if it takes 0..255 (quantisation is part of the certified classifier)"
        )
    if facts["custom_ops"]:
        warnings.append(
            f"ops from other domains: {facts['custom_ops']} (ai.onnx.ml runs in onnxruntime; "
            "custom-op libraries are never loaded)"
        )
    shape = None if given is None else given[1]
    shape_from = "--input-shape" if given is not None else None
    try:
        declared = shapes.declared_input(str(path), input_name, {})
    except RsOnnxError as e:  # a token-id input, or no single input to read
        report["problem"] = str(e)
        return report
    if shape is None and card is not None and declared is not None and shapes.symbolic(declared[1]):
        shape = _card_shape(card.values, declared[1])
        shape_from = f"the crop/resize of {card.source}" if shape is not None else None
    try:
        clf = OnnxClassifier(path, input_name=input_name, output_name=output_name, device=device, input_shape=shape)
    except RsOnnxError as e:
        report["problem"] = str(e)
        return report
    report["reading"] = {
        "input": clf.input_name,
        "input_shape": list(clf.input_shape),
        "input_dtype": str(clf.input_dtype),
        "output": clf.output_name,
        "output_kind": clf.output_kind,
        "num_classes": clf.num_classes,
        "batch_mode": clf.batch_mode,
        "providers": list(clf.providers),
        "device": clf.device,
    }
    if shape_from is not None:
        report["reading"]["input_shape_from"] = shape_from
    if len(facts["outputs"]) > 1:
        report["reading"]["output_choice"] = (
            f"'{clf.output_name}' is the only output shaped like class scores "
            "[N, K] or indices [N]; pass --output-name to choose another"
        )
    if clf.batch_mode == "per-sample":
        warnings.append("batch verification failed: rs-onnx runs one sample at a time (slow); see the log above")
    report["probe"] = _probe(clf)
    config: dict = {
        "model": str(path),
        "input_name": clf.input_name,
        "output_name": clf.output_name,
        "layout": _layout(tuple(clf.input_shape)),
    }
    if shape_from is not None:
        config["input_shape"] = list(clf.input_shape)
    if card is not None:
        config.update(card.values)
        report["basis"] = f"from {card.source} (the preprocessing the model ships with)"
    elif rescale is not None:
        config.update(preset="none", scale=rescale[0])
        report["basis"] = f"from the graph: {rescale[1]} (it takes 0..255 pixels)"
    else:
        config["scale"] = 255.0 if facts["integer_input"] else 1.0
        preset = _guess_preset(tuple(clf.input_shape), bool(steps))
        if preset:
            config["preset"] = preset
        if steps:
            report["basis"] = "from the graph: it normalises its input itself"
        elif facts["integer_input"]:
            report["basis"] = "from the graph: an integer input, read as 0..255 pixels"
        else:
            report["basis"] = (
                f"a GUESS from the input size ({'x'.join(map(str, clf.input_shape))}): no preprocessor config "
                "and nothing in the graph says how inputs are normalised; check the model's documentation"
                + (" (e.g. Hugging Face ViT uses mean/std 0.5, not ImageNet's)" if preset == "imagenet" else "")
            )
    sigma = clf.metadata.get("rs_onnx.sigma")
    config["sigma"] = float(sigma) if sigma else 0.25
    report["suggested_config"] = config
    return report


def _identity_step(step: dict) -> bool:
    """Casts and Sub 0 / Div 1 change nothing a user must declare."""
    if "constant" not in step:
        return True
    const = np.asarray(step["constant"], dtype=float)
    return bool(
        (step["op"] in ("Sub", "Add") and np.all(const == 0)) or (step["op"] in ("Div", "Mul") and np.all(const == 1))
    )


def render(report: dict) -> str:
    """Human-readable text of :func:`inspect_model`'s report."""
    lines = [
        f"model      {report['model']} ({report['size_bytes'] / 1e6:.2f} MB)",
        f"producer   {report['producer']['name']} {report['producer']['version']}".rstrip(),
        f"opsets     {', '.join(f'{d} {v}' for d, v in report['opsets'].items())}; IR {report['ir_version']}; "
        f"{report['node_count']} nodes",
    ]
    for kind in ("inputs", "outputs"):
        for v in report[kind]:
            lines.append(f"{kind[:-1]:<10} {v['name']}: {graph.format_dims(v['shape'])} {v['dtype']}")
    if report["initializers_listed_as_inputs"]:
        lines.append(
            f"note       {report['initializers_listed_as_inputs']} initializers are listed as graph inputs "
            "(old IR); they are not fed"
        )
    if "problem" in report:
        lines.append(f"PROBLEM    {report['problem']}")
    if "reading" in report:
        r = report["reading"]
        lines += [
            f"reads      input '{r['input']}' {r['input_shape']} {r['input_dtype']} -> output '{r['output']}' "
            f"({r['output_kind']}, {r['num_classes']} classes)",
            f"batch      {r['batch_mode']}",
            f"runs on    {', '.join(r['providers'])}",
        ]
        if "input_shape_from" in r:
            lines.append(f"shape      {r['input_shape']} per example, from {r['input_shape_from']}")
        if "output_choice" in r:
            lines.append(f"why        {r['output_choice']}")
        p = report["probe"]
        lines.append(f"probe      {p['output']}" + ("" if p.get("finite", True) else " -- NOT FINITE on random input"))
    for w in report["warnings"]:
        lines.append(f"warning    {w}")
    if report.get("class_names"):
        names = report["class_names"]
        lines.append(
            f"classes    {len(names)} names from config.json (id2label): {', '.join(names[:5])}"
            + (", ..." if len(names) > 5 else "")
        )
    # untrusted text (producer, input/output names, class names) can neither split a line nor forge one
    lines = [escape(line) for line in lines]
    if "suggested_config" in report:  # YAML quotes and indents what it holds
        lines += [
            "",
            f"# suggested config: preprocessing {report.get('basis', 'from the defaults')}",
            yaml.safe_dump(report["suggested_config"], sort_keys=False).rstrip(),
        ]
    return "\n".join(lines)
