"""A run's meta.json record: configuration, resolved values, model, data, versions, timings and checks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .results import command_line, radius_norms, versions

if TYPE_CHECKING:
    from .run import Prepared


def build_meta(
    p: Prepared, mode: str, out: Path | None, status: str, timings: dict, extra: dict, data_extra: dict | None = None
) -> dict:
    clf = p.classifier
    return {
        "status": status,
        "mode": mode,
        "config": p.cfg.to_dict(),
        "seed": p.cfg.seed,
        "entropy": str(p.smoothed.entropy),
        "noise": {
            "kind": p.smoothed.noise,
            "sigma": p.smoothed.sigma,
            "sigma_means": _sigma_means(p.smoothed.noise),
            "dim": p.smoothed.dim(p.data.image_shape),
        },
        **({"radius_norms": radius_norms(p.smoothed.noise)} if mode == "certify" else {}),
        "preprocess": p.smoothed.preprocessor(p.data.image_shape).describe(),
        "batch_size": p.smoothed.batch_size,
        "noise_threads": p.smoothed.noise_threads,
        "batch_probe": p.batch_probe,
        "model": {"path": str(p.cfg.model), "sha256": clf.sha256, "signature": clf.signature()},
        "providers": list(clf.providers),
        "device": getattr(clf, "device", None),
        "device_name": getattr(clf, "device_name", None),
        "data": {
            "path": str(p.cfg.data),
            "examples": len(p.data),
            "selected": len(p.indices),
            **p.data.describe(),
            **(data_extra or {}),
        },
        "versions": versions(),
        "command": command_line(),
        "timings": timings,
        "out": str(out) if out else None,
        **({"audit": p.audit} if p.audit is not None else {}),
        **extra,
        "clean_accuracy": p.checks.get("clean_accuracy"),  # rs_onnx.checks, before the first sample
        "batch_check": p.checks.get("batch_check"),
        "class_names": p.class_names,  # by class id (--classes, or the model's config.json id2label), or None
    }


def _sigma_means(kind: str) -> str:
    from .noise import get_kind

    return get_kind(kind).scale
