"""What a run says beyond its test set, and what it cost: population lower bounds on certified accuracy,
the ``--require`` gate on them, and the noisy samples spent per example.

Certified accuracy (a fraction of the run's N examples) estimates the population's; the lower bound at
``confidence`` accounts for both the N examples (an i.i.d. sample) and each certificate's level alpha
(``stats.population_lower``; docs/certificate-population.md derives it). Radii are in the units of the
table's radius column; samples are model calls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, RequirementError

DEFAULT_CONFIDENCE = 0.95
"""Confidence of the population lower bounds (``--confidence``)."""


def run_alpha(results, alpha: float | None = None) -> float | None:
    """The level alpha of a run's certificates: from its meta.json, else ``alpha`` (for files without one,
    e.g. Cohen et al.'s, whose certify.py defaults to 0.001), else None (unknown)."""
    cfg = (getattr(results, "meta", None) or {}).get("config") or {}
    recorded = cfg.get("alpha")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and 0 <= recorded < 1:
        return float(recorded)
    return alpha


def population_bounds(certified, examples: int, alpha: float, confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """``stats.population_lower`` of certified accuracies (fractions K / N of ``examples`` = N), shaped like
    ``certified``. ConfigError for a confidence or alpha out of range."""
    from .stats import population_lower

    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ConfigError(f"confidence={confidence}: expected 0 < confidence < 1 (e.g. 0.95)")
    if not (isinstance(alpha, (int, float)) and 0 <= alpha < 1):
        raise ConfigError(f"alpha={alpha}: expected 0 <= alpha < 1 (the certificates' level, e.g. 0.001)")
    acc = np.asarray(certified, dtype=np.float64)
    k = np.rint(acc * examples).astype(np.int64)  # acc is K / N: an integer count
    return np.asarray(population_lower(k, examples, alpha, confidence), dtype=np.float64).reshape(acc.shape)


def lower_percent(lower: float) -> str:
    """A lower bound (fraction) as a percentage with one decimal, rounded DOWN so the text never exceeds it."""
    return f"{math.floor(1000 * lower) / 10:.1f}"


# ------------------------------------------------------------------------------------------- samples


def samples_spent(results) -> dict | None:
    """Noisy samples (model calls) spent per example, selection included: ``mean``, ``p90`` (the 90th
    percentile, an observed count), ``total``, and ``fixed_n``: what Cohen et al.'s fixed-n CERTIFY spends
    per example at the run's n0 and n (n for PREDICT; None without a meta.json).

    Per example: the ``samples`` column when the file has one, else ``n0 + n`` of its rows (``n`` for
    PREDICT), else the fixed n0 + n of a fixed-n run's meta.json. None when unknown (Cohen et al.'s files).
    """
    meta = getattr(results, "meta", None) or {}
    cfg = meta.get("config") or {}
    predict = getattr(results, "kind", "certify") == "predict"
    names = list(results.columns) if hasattr(results, "columns") else list(results)

    def setting(name: str) -> int | None:
        v = cfg.get(name)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else None

    n0, n = (0 if predict else setting("n0")), setting("n")
    fixed = None if n0 is None or n is None else n0 + n
    per: np.ndarray | None = None
    try:
        if "samples" in names:
            per = np.asarray(results["samples"], dtype=np.float64)
        elif "n" in names and (predict or "n0" in names):
            per = np.asarray(results["n"], dtype=np.float64)
            per = per if predict else per + np.asarray(results["n0"], dtype=np.float64)
    except (TypeError, ValueError):  # a column of text: not counts
        per = None
    if per is None and fixed is not None and not cfg.get("sequential"):
        per = np.full(len(results["correct"]), float(fixed))
    if per is None or per.size == 0 or not np.all(np.isfinite(per)) or np.any(per < 0):
        return None
    return {
        "mean": float(per.mean()),
        "p90": float(np.percentile(per, 90, method="inverted_cdf")),
        "total": int(per.sum()),
        "fixed_n": fixed,
    }


def samples_text(spent: dict | None) -> str:
    """``samples per example: mean 310, p90 1,100 (fixed-n equivalent: 100,100; 323x fewer)``; "" when unknown."""
    if not spent:
        return ""
    text = f"samples per example: mean {spent['mean']:,.0f}, p90 {spent['p90']:,.0f}"
    fixed = spent.get("fixed_n")
    if fixed:
        ratio = fixed / spent["mean"] if spent["mean"] > 0 else math.inf
        saving = (
            "none spent"  # e.g. a --budget below one look: never "infx fewer"
            if math.isinf(ratio)
            else "the same"
            if abs(ratio - 1) < 5e-4
            else f"{ratio:.3g}x fewer"
            if ratio > 1
            else f"{1 / ratio:.3g}x more"
        )
        text += f" (fixed-n equivalent: {fixed:,}; {saving})"
    return text


# ------------------------------------------------------------------------------- table notes


def bounds_note(rows: Sequence[Any], plain: bool = True) -> str:
    """What the ``(≥ x)`` of the tables are, on how many examples they rest, and which runs have none."""
    known = [r for r in rows if r.lower is not None]
    out = ""
    if known:
        levels = sorted({r.confidence for r in known})
        alphas = sorted({r.alpha for r in known if r.alpha is not None})
        ns = sorted({r.examples for r in known})
        out += (
            f"(≥ x): one-sided {'/'.join(f'{100 * c:g}%' for c in levels)} lower confidence bound on the "
            f"population's certified accuracy, from {'/'.join(map(str, ns))} examples (taken as an i.i.d. sample) "
            f"and certificates each false with probability <= alpha = {'/'.join(f'{a:g}' for a in alphas)}"
            + (" (docs/certificate-population.md)" if plain else "")
            + "\n"
        )
    missing = [r.label for r in rows if r.lower is None]
    if missing:
        out += f"no lower bound for {', '.join(missing)}: alpha unknown (no meta.json); give --alpha\n"
    return out


def samples_note(rows: Sequence[Any]) -> str:
    """One line per run whose samples per example are known (:func:`samples_text`)."""
    return "".join(f"{r.label + ': ' if len(rows) > 1 else ''}{samples_text(r.samples)}\n" for r in rows if r.samples)


# ---------------------------------------------------------------------------------------- --require


@dataclass(frozen=True)
class Requirement:
    """``--require R:A``: the population lower bound on certified accuracy at radius R is at least A."""

    radius: float
    at_least: float

    def __str__(self) -> str:
        return f"{self.radius:g}:{self.at_least:g}"


_NUMBER = r"[+]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_REQUIREMENT = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*(%?)\s*$")


def parse_requirements(specs: Iterable[str]) -> tuple[Requirement, ...]:
    """``("0.5:0.80", "0.25:0.9,1:50%")`` -> Requirements (comma-separated and/or repeated). The radius is
    finite and >= 0, the accuracy a fraction in [0, 1] or a percentage (``80%``). ValueError (one line
    saying what was received and what was expected) on anything else."""
    out = []
    for spec in specs:
        for part in str(spec).split(","):
            m = _REQUIREMENT.match(part)
            radius = float(m.group(1)) if m else math.nan
            acc = (float(m.group(2)) / (100 if m.group(3) else 1)) if m else math.nan
            if not (m and math.isfinite(radius) and 0 <= acc <= 1):
                raise ValueError(
                    f"{part.strip()!r}: expected RADIUS:ACCURACY with a radius >= 0 and an accuracy in [0, 1] "
                    "or a percentage, e.g. 0.5:0.80 or 0.5:80% (comma-separated or repeated for several radii)"
                )
            out.append(Requirement(radius, acc))
    return tuple(out)


def requirement_radii(requirements: Sequence[Requirement]) -> tuple[float, ...]:
    """The distinct radii the requirements name, ascending."""
    return tuple(sorted({r.radius for r in requirements}))


def check_requirements(requirements: Sequence[Requirement], rows: Sequence[Any]) -> list[dict]:
    """Each requirement against each run: ``rows`` are ``analysis.TableRow`` objects computed at (at least)
    :func:`requirement_radii`. One dict per (run, requirement): run, radius, required, certified_accuracy,
    certified_accuracy_lower, examples, confidence, alpha, met. ConfigError when a run's alpha is unknown."""
    out = []
    for row in rows:
        if row.lower is None:
            raise ConfigError(
                f"--require on {row.label}: its certificates' alpha is unknown (no meta.json); expected a run "
                "with its meta.json, or --alpha"
            )
        for req in requirements:
            i = list(row.radii).index(req.radius)
            lower = float(row.lower[i])
            out.append(
                {
                    "run": row.label,
                    "radius": req.radius,
                    "required": req.at_least,
                    "certified_accuracy": float(row.certified[i]),
                    "certified_accuracy_lower": lower,
                    "examples": row.examples,
                    "confidence": row.confidence,
                    "alpha": row.alpha,
                    "met": lower >= req.at_least,
                }
            )
    return out


def failure_text(checks: Sequence[dict]) -> str:
    """One line naming every requirement not met, with the numbers; "" when all are met."""
    failed = [c for c in checks if not c["met"]]
    return "; ".join(
        f"--require {c['radius']:g}:{c['required']:g} not met by {c['run']}: certified accuracy at r = "
        f"{c['radius']:g} is {100 * c['certified_accuracy']:.1f}% of {c['examples']} examples, its "
        f"{100 * c['confidence']:g}% lower bound on the population {lower_percent(c['certified_accuracy_lower'])}% "
        f"(alpha {c['alpha']:g}); expected a lower bound >= {100 * c['required']:g}%"
        for c in failed
    )


def enforce(checks: Sequence[dict]) -> None:
    """Raise :class:`RequirementError` (one line: :func:`failure_text`) unless every check is met."""
    text = failure_text(checks)
    if text:
        raise RequirementError(text)
