"""Summaries of finished runs: the JSON of ``--json`` and the closing line of ``predict``.

Certified accuracy and accuracy are fractions of ALL examples (abstentions count as wrong), radii are
l2 in [0,1] pixel units, times in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .checks import one_class_note
from .analysis import (
    DEFAULT_RADII,
    Results,
    certified_accuracy,
    certified_accuracy_lower,
    run_max_radius,
    summary,
)
from .population import DEFAULT_CONFIDENCE, run_alpha, samples_spent


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _first(values) -> float | None:
    return None if values is None else float(values[0])


def run_summary(
    results: Results,
    radii: Sequence[float] = DEFAULT_RADII,
    label: str | None = None,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    alpha: float | None = None,
) -> dict:
    """One run as a JSON-ready dict: examples, accuracy (and ``accuracy_lower``, its population lower
    bound), abstention rate, time per example (s), samples
    spent per example (``samples_per_example``: mean, p90, total, fixed_n; None when unknown) and, for
    CERTIFY runs, ACR, certified accuracy per radius (None where out of reach: beyond ``max_radius``, the
    largest radius certifiable at the run's n and alpha) and ``certified_accuracy_lower`` beside it: the
    one-sided lower bound at ``confidence`` on the population's certified accuracy (None where out of
    reach or where the certificates' alpha is unknown; ``alpha`` stands in for runs that record none),
    plus the provenance in its meta.json."""
    s = summary(results)
    meta = results.meta or {}
    cfg = meta.get("config") or {}
    max_radius = run_max_radius(results)
    out = {
        "run": label if label is not None else results.path,
        "file": results.path,
        "mode": meta.get("mode", results.kind),
        "status": meta.get("status"),
        "examples": s["examples"],
        "accuracy": s["accuracy"],
        "accuracy_lower": _first(certified_accuracy_lower(results, [0.0], confidence, alpha)),
        "abstention_rate": s["abstention_rate"],
        "time_per_example": s["time_per_image"],
        "sigma": cfg.get("sigma"),
        "n": cfg.get("n"),
        "alpha": run_alpha(results, alpha),
        "confidence": confidence,
        "samples_per_example": samples_spent(results),
        "model_sha256": (meta.get("model") or {}).get("sha256"),
    }
    if results.kind != "predict":
        acc = certified_accuracy(results, list(radii))
        out["acr"] = s["acr"]
        out["max_radius"] = _finite(max_radius)
        lower = certified_accuracy_lower(results, list(radii), confidence, alpha)
        far = [max_radius is not None and r > max_radius for r in radii]
        out["certified_accuracy"] = {
            format(float(r), "g"): (None if f else float(a)) for r, a, f in zip(radii, acc, far)
        }
        out["certified_accuracy_lower"] = {
            format(float(r), "g"): (None if f or lower is None else float(lo))
            for r, lo, f in zip(radii, [None] * len(far) if lower is None else lower, far)
        }
    if "nonfinite" in results:
        out["nonfinite_outputs"] = int(results["nonfinite"].sum())
    out["one_class"] = one_class_note(results.predict, results.label)
    return out


def predict_text(results: Results) -> str:
    """``12 examples: accuracy 83.3%, abstained 8.3%, 0.0123 s per example``."""
    s = summary(results)
    return (
        f"{s['examples']} examples: accuracy {100 * s['accuracy']:.1f}%, abstained "
        f"{100 * s['abstention_rate']:.1f}%, {s['time_per_image']:.3g} s per example"
    )
