"""``rs-onnx inspect``: what is in a model, how rs-onnx will read it, and what the user should declare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from . import graph
from .errors import RsOnnxError


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
    """A preset that fits the input's size; a guess the user must confirm from the model's documentation."""
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


def inspect_model(path, *, input_name=None, output_name=None, device="auto") -> dict:
    """A JSON-able report: facts, how rs-onnx reads the model, warnings, and a suggested config."""
    from .classifier import OnnxClassifier

    path = Path(path)
    model = graph.load_model(path)
    facts = graph.describe(model)
    report: dict = {"model": str(path), "size_bytes": path.stat().st_size, **facts, "warnings": []}
    warnings = report["warnings"]
    steps = [s for s in facts["normalization"] if not _identity_step(s)]
    if steps:
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
    try:
        clf = OnnxClassifier(path, input_name=input_name, output_name=output_name, device=device)
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
    if len(facts["outputs"]) > 1:
        report["reading"]["output_choice"] = (
            f"'{clf.output_name}' is the only output shaped like class scores "
            "[N, K] or indices [N]; pass --output-name to choose another"
        )
    if clf.batch_mode == "per-sample":
        warnings.append("batch verification failed: rs-onnx runs one sample at a time (slow); see the log above")
    report["probe"] = _probe(clf)
    config = {
        "model": str(path),
        "input_name": clf.input_name,
        "output_name": clf.output_name,
        "layout": _layout(tuple(clf.input_shape)),
        "scale": 255.0 if facts["integer_input"] else 1.0,
    }
    preset = _guess_preset(tuple(clf.input_shape), bool(steps))
    if preset:
        config["preset"] = preset
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
        if "output_choice" in r:
            lines.append(f"why        {r['output_choice']}")
        p = report["probe"]
        lines.append(f"probe      {p['output']}" + ("" if p.get("finite", True) else " -- NOT FINITE on random input"))
    for w in report["warnings"]:
        lines.append(f"warning    {w}")
    if "suggested_config" in report:
        lines += [
            "",
            "# suggested config (check mean/std against the model's documentation):",
            yaml.safe_dump(report["suggested_config"], sort_keys=False).rstrip(),
        ]
    return "\n".join(lines)
