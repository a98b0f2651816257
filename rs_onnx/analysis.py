"""Reading certification results and presenting certified accuracy (tables and plots).

A results file is a tab-separated table with a header line whose columns include Cohen et al.'s
``idx label predict radius correct time`` (the files written by locuslab/smoothing's ``certify.py``
load as they are); extra columns (``pA_lower``, ``nA``, ``n``, ``radius_tv``, ...) are kept.
Radii are in the units of the noise scale: [0,1]-pixel units, l2, for Gaussian smoothing.

Conventions follow Cohen et al.'s ``analyze.py``: the certified accuracy at radius r is the fraction of
ALL examples with ``correct & (radius >= r)``, so at r = 0 it is the smoothed classifier's accuracy and
abstentions (``predict == -1``, ``correct == 0``) count as wrong. Each certified accuracy comes with a
lower confidence bound on the population's (``certified_accuracy_lower``; ``population`` and
``stats.population_lower``), which the tables show as ``(≥ x)``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, RsOnnxError
from .population import (
    DEFAULT_CONFIDENCE,
    bounds_note,
    check_requirements,
    lower_percent,
    population_bounds,
    requirement_radii,
    run_alpha,
    samples_note,
    samples_spent,
)
from .results import REQUIRED_COLUMNS, Results, read_results
from .stats import ABSTAIN

__all__ = [
    "DEFAULT_RADII",
    "OUT_OF_REACH",
    "REQUIRED_COLUMNS",
    "Results",
    "TableRow",
    "average_certified_radius",
    "certified_accuracy",
    "certified_accuracy_lower",
    "max_certifiable_radius",
    "plot_certified_accuracy",
    "read_results",
    "read_run",
    "requirement_checks",
    "run_max_radius",
    "run_title",
    "summary",
    "table_rows",
    "to_csv",
    "to_latex",
    "to_markdown",
]

log = logging.getLogger(__name__)
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def _optional_meta(path) -> dict | None:
    """The meta.json next to an rs-onnx TSV (``results.read_meta``), or None when absent or unreadable."""
    from .results import read_meta

    try:
        return read_meta(path)
    except DataError:
        return None


def read_run(path, check: bool = True) -> Results:
    """:func:`read_results` plus the run's meta.json (``Results.meta``; None for Cohen et al.'s files).

    With ``check`` (and a meta.json), every row is recomputed (:func:`rs_onnx.verify.verify_file`, without
    hashing the inputs): rows that do not reproduce count as not certified and not correct (radius columns 0,
    column ``reproduced`` 0), one warning line says so, and ``meta["verify"]`` holds the verdict line."""
    from dataclasses import replace

    res = replace(read_results(path), meta=_optional_meta(path))
    if not check or res.meta is None:
        return res
    from .verify import verify_file

    verdict = verify_file(path, inputs=False)
    meta = {**res.meta, "verify": {"ok": verdict.ok, "line": verdict.line()}}
    if verdict.ok:
        return replace(res, meta=meta)
    columns = dict(res.columns)
    bad = np.zeros(len(res), bool)
    bad[[k for k in verdict.bad_rows if k < len(res)]] = True
    if verdict.unchecked is not None:
        bad[:] = True
    columns["reproduced"] = (~bad).astype(np.int64)
    for name in columns:
        if name == "radius" or name.startswith("radius_"):
            columns[name] = np.where(bad, 0.0, columns[name])
    columns["correct"] = np.where(bad, 0, columns["correct"])
    what = (
        "none of its rows can be checked: all count as not certified"
        if verdict.unchecked is not None
        else f"{int(bad.sum())} rows that do not reproduce count as not certified and not correct"
        if bad.any()
        else "its rows reproduce, but the file is not the one the run wrote"
    )
    log.warning("%s; %s (rs-onnx verify %s)", verdict.line(), what, path)
    return replace(res, columns=columns, meta=meta)


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius any example can get at ``n`` samples and level ``alpha`` (l2, units of sigma).

    Even with all ``n`` samples on the top class, the one-sided Clopper-Pearson lower bound is
    ``alpha ** (1 / n)``, so Cohen et al.'s radius is at most ``sigma * Phi^-1(alpha ** (1 / n))``; the
    two-class bound and sequential looks (smaller alpha, fewer samples) stay below it too.
    """
    from statistics import NormalDist

    if not (sigma > 0 and n >= 1 and 0 < alpha < 1):
        raise ConfigError(f"sigma={sigma}, n={n}, alpha={alpha}: expected sigma > 0, n >= 1, 0 < alpha < 1")
    p = float(np.exp(np.log(alpha) / n))
    if p >= 1.0:  # only for astronomically large n
        return float("inf")
    return float(sigma * NormalDist().inv_cdf(p))


def run_max_radius(results) -> float | None:
    """Largest radius reachable by the run behind ``results``: 0 for PREDICT runs, from sigma, n and alpha
    of its meta.json for CERTIFY runs, None when unknown (Cohen et al.'s files)."""
    if getattr(results, "kind", "certify") == "predict":
        return 0.0
    meta = getattr(results, "meta", None) or {}
    cfg = meta.get("config") or {}
    noise = meta.get("noise") or {}
    if noise.get("kind", "gaussian") != "gaussian" or meta.get("radius_norm", "l2") != "l2":
        return None  # the bound below is Gaussian l2; other noises and norms are not marked
    try:
        sigma = noise.get("sigma", cfg.get("sigma"))  # the resolved sigma (the config keeps it as given)
        if sigma is None:
            return None
        return max_certifiable_radius(float(sigma), int(cfg["n"]), float(cfg["alpha"]))
    except (KeyError, TypeError, ValueError, ConfigError):
        return None


# ------------------------------------------------------------------------------------------- metrics


def _column(results, name: str) -> np.ndarray:
    try:
        return np.asarray(results[name])
    except (KeyError, DataError):
        have = ", ".join(map(str, _names(results)))
        raise DataError(f"column {name!r}: not in results; expected one of {have}") from None


def _names(results) -> list:
    return list(results.columns) if isinstance(results, Results) else list(results)


def certified_accuracy(results, radii, radius_column: str = "radius") -> np.ndarray:
    """Fraction of all examples with ``correct == 1`` and ``radius >= r``, for each r in ``radii``.

    Exactly Cohen et al.'s ``(df["correct"] & (df["radius"] >= r)).mean()``. Returns an array shaped like
    ``radii``. ``results`` is a :class:`Results` or any mapping of column name to array.
    """
    correct = _column(results, "correct") == 1
    rad = _column(results, radius_column).astype(np.float64)
    if correct.size == 0:
        raise DataError("results with 0 examples: expected at least one to compute certified accuracy")
    r = np.asarray(radii, dtype=np.float64)
    acc = (correct[None, :] & (rad[None, :] >= r.reshape(-1, 1))).mean(axis=1)
    return acc.reshape(r.shape)


def average_certified_radius(results, radius_column: str = "radius") -> float:
    """ACR: mean over ALL examples of radius * correct (abstentions and errors contribute 0)."""
    correct = _column(results, "correct") == 1
    rad = _column(results, radius_column).astype(np.float64)
    if correct.size == 0:
        raise DataError("results with 0 examples: expected at least one to compute the ACR")
    return float(np.mean(np.where(correct, rad, 0.0)))


def summary(results, radius_column: str = "radius") -> dict:
    """Number of examples, smoothed accuracy, abstention rate (predict == -1), mean time per image (s), ACR."""
    predict = _column(results, "predict")
    return {
        "examples": int(predict.size),
        "accuracy": float(certified_accuracy(results, 0.0, radius_column)),
        "abstention_rate": float(np.mean(predict == ABSTAIN)),
        "time_per_image": float(np.mean(_column(results, "time"))),
        "acr": average_certified_radius(results, radius_column),
    }


# ------------------------------------------------------------------------------ population bounds


def certified_accuracy_lower(
    results,
    radii,
    confidence: float = DEFAULT_CONFIDENCE,
    alpha: float | None = None,
    radius_column: str = "radius",
) -> np.ndarray | None:
    """One-sided lower confidence bounds (level ``confidence``) on the POPULATION's certified accuracy at
    each r in ``radii`` (shaped like it), from this run's examples (an i.i.d. sample) and its certificates'
    level (:func:`population.run_alpha`; ``alpha`` when the run records none); None when that is unknown.
    See :func:`population.population_bounds` and docs/certificate-population.md."""
    level = run_alpha(results, alpha)
    if level is None:
        return None
    acc = certified_accuracy(results, radii, radius_column)
    return population_bounds(acc, len(_column(results, "correct")), level, confidence)


def requirement_checks(
    runs: Mapping,
    requirements: Sequence,
    radius_column: str = "radius",
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    alpha: float | None = None,
) -> list[dict]:
    """``--require``: :func:`population.check_requirements` of each run (label -> results) at the radii
    the requirements name, in ``radius_column`` (the column the table uses); [] without requirements."""
    if not requirements:
        return []
    rows = table_rows(runs, requirement_radii(requirements), radius_column, confidence=confidence, alpha=alpha)
    return check_requirements(requirements, rows)


# ------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class TableRow:
    """One run of a table: certified accuracy (fractions) at ``radii`` plus summary columns."""

    label: str
    examples: int
    radii: tuple[float, ...]
    certified: tuple[float, ...]
    acr: float
    abstention_rate: float
    time_per_image: float
    max_radius: float | None = None
    """Largest radius reachable at the run's n and alpha (None: unknown); radii beyond it are out of reach."""
    lower: tuple[float, ...] | None = None
    """Per radius: the population lower bound at ``confidence`` (:func:`certified_accuracy_lower`); None:
    the run's alpha is unknown."""
    confidence: float = DEFAULT_CONFIDENCE
    alpha: float | None = None
    """The level of the run's certificates, which the lower bounds account for."""
    samples: dict | None = None
    """:func:`samples_spent` (None: unknown)."""

    def out_of_reach(self) -> tuple[bool, ...]:
        """Per radius: True when no example of this run could be certified there (beyond max_radius)."""
        return tuple(self.max_radius is not None and r > self.max_radius for r in self.radii)


def table_rows(
    runs: Mapping,
    radii: Sequence[float] = DEFAULT_RADII,
    radius_column: str = "radius",
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    alpha: float | None = None,
) -> list[TableRow]:
    """One :class:`TableRow` per run, from a mapping of label to results (``max_radius`` from
    :func:`run_max_radius`; the ACR of a PREDICT run is NaN: nothing was certified; lower bounds at
    ``confidence``, with ``alpha`` for runs that record none)."""
    radii = tuple(float(r) for r in radii)
    bad = [r for r in radii if not (np.isfinite(r) and r >= 0)]
    if bad:
        raise ConfigError(f"radii {bad}: expected finite radii >= 0 (l2, [0,1] pixel units)")
    rows = []
    for label, res in runs.items():
        s = summary(res, radius_column)
        acc = certified_accuracy(res, radii, radius_column)
        acr = float("nan") if getattr(res, "kind", "certify") == "predict" else s["acr"]
        lower = certified_accuracy_lower(res, radii, confidence, alpha, radius_column)
        rows.append(
            TableRow(
                str(label),
                s["examples"],
                radii,
                tuple(float(a) for a in acc),
                acr,
                s["abstention_rate"],
                s["time_per_image"],
                run_max_radius(res) if radius_column in _BOUNDED_COLUMNS else None,
                None if lower is None else tuple(float(v) for v in lower),
                float(confidence),
                run_alpha(res, alpha),
                samples_spent(res),
            )
        )
    return rows


_BOUNDED_COLUMNS = ("radius", "radius_2class")
"""Radius columns that never exceed :func:`max_certifiable_radius` (Cohen's and the two-class bound)."""

OUT_OF_REACH = "–"
"""Table cell of a radius beyond the largest certifiable at the run's n and alpha (accuracy there is 0 by construction)."""


def _reach_note(rows: list[TableRow]) -> str:
    if not any(any(r.out_of_reach()) for r in rows):
        return ""
    reach = "; ".join(
        f"{r.label}: R_max = {'0 (PREDICT certifies no radius)' if r.max_radius == 0 else f'{r.max_radius:.3f}'}"
        for r in rows
        if any(r.out_of_reach())
    )
    return (
        f"{OUT_OF_REACH} out of reach: beyond the largest radius certifiable at the run's n and alpha "
        f"(sigma * Phi^-1(alpha^(1/n)); {reach})\n"
    )


def _as_rows(rows) -> list[TableRow]:
    if isinstance(rows, Mapping):
        rows = table_rows(rows)
    rows = list(rows)
    if not rows:
        raise ConfigError("table of 0 runs: expected at least one run")
    if any(not isinstance(r, TableRow) for r in rows):
        raise ConfigError("table rows: expected TableRow objects (see table_rows) or a mapping of label to results")
    if len({r.radii for r in rows}) != 1:
        raise ConfigError("table rows with different radii: expected the same radii in every row")
    return rows


def _fmt_radius(r: float) -> str:
    return f"{r:.2f}" if round(r, 2) == r else f"{r:g}"


def _fmt_time(t: float) -> str:
    return f"{t:.0f}" if t >= 100 else f"{t:.3g}"


def _fmt_fraction(x: float) -> str:
    return format(x, ".12g")  # 12 significant digits: exact for counts/n, without float noise like ...0002


def _headers(radii) -> list[str]:
    return ["run", "examples", *(f"r={_fmt_radius(r)}" for r in radii), "ACR", "abstain", "s/img"]


def to_markdown(rows) -> str:
    """A Markdown table: certified accuracy (%) at each radius with its population lower bound ``(≥ x)``,
    ACR, abstention (%), seconds per image; under it, what the bounds rest on and the samples spent.

    Radii out of reach at a run's n and alpha show :data:`OUT_OF_REACH`, explained under the table."""
    rows = _as_rows(rows)
    head = _headers(rows[0].radii)
    head[2:-3] = [h + " (%)" for h in head[2:-3]]
    head[-2] += " (%)"
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [
            r.label.replace("|", "\\|"),
            str(r.examples),
            *_accuracy_cells(r),
            _fmt_acr(r.acr),
            f"{100 * r.abstention_rate:.1f}",
            _fmt_time(r.time_per_image),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + _reach_note(rows) + bounds_note(rows) + samples_note(rows)


def _accuracy_cells(r: TableRow, ge: str = "≥ ") -> list[str]:
    """Certified accuracy (%) per radius, with its population lower bound as ``(≥ x)`` when known."""
    lower = r.lower or (None,) * len(r.certified)
    return [
        OUT_OF_REACH if far else f"{100 * a:.1f}" + ("" if lo is None else f" ({ge}{lower_percent(lo)})")
        for a, lo, far in zip(r.certified, lower, r.out_of_reach())
    ]


def _fmt_acr(acr: float) -> str:
    return OUT_OF_REACH if np.isnan(acr) else f"{acr:.3f}"


def to_csv(rows) -> str:
    """CSV with fractions (not percentages) to 12 significant digits, seconds per image, one line per run.

    Radii out of reach at a run's n and alpha (beyond ``max_radius``) and the ACR of PREDICT runs are empty cells.
    After ``max_radius``: the population lower bound per radius (``r=0.50 lower``; empty when alpha is
    unknown), ``confidence``, ``alpha`` and the samples per example (:func:`samples_spent`)."""
    rows = _as_rows(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    radii = [f"r={_fmt_radius(r)}" for r in rows[0].radii]
    w.writerow(
        ["run", "examples", *radii, "acr", "abstention_rate", "time_per_image", "max_radius"]
        + [f"{r} lower" for r in radii]
        + ["confidence", "alpha", "samples_mean", "samples_p90", "fixed_n"]
    )
    for r in rows:
        lower = r.lower or (None,) * len(r.certified)
        spent = r.samples or {}
        w.writerow(
            [
                r.label,
                r.examples,
                *("" if far else _fmt_fraction(a) for a, far in zip(r.certified, r.out_of_reach())),
                "" if np.isnan(r.acr) else _fmt_fraction(r.acr),
                _fmt_fraction(r.abstention_rate),
                _fmt_fraction(r.time_per_image),
                "" if r.max_radius is None else _fmt_fraction(r.max_radius),
                *("" if lo is None or far else _fmt_fraction(lo) for lo, far in zip(lower, r.out_of_reach())),
                _fmt_fraction(r.confidence),
                "" if r.alpha is None else _fmt_fraction(r.alpha),
                *("" if spent.get(k) is None else _fmt_fraction(spent[k]) for k in ("mean", "p90", "fixed_n")),
            ]
        )
    return buf.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(rows) -> str:
    """A booktabs ``tabular``: certified accuracy (%) at each radius with its population lower bound,
    ACR, abstention (%), s/image; what the bounds are follows as LaTeX comments."""
    rows = _as_rows(rows)
    radii = rows[0].radii
    k = len(radii)
    out = [
        r"\begin{tabular}{l" + "r" * (k + 4) + "}",
        r"\toprule",
        r" & & \multicolumn{" + str(k) + r"}{c}{certified accuracy (\%) at $\ell_2$ radius} & & & \\",
        r"\cmidrule(lr){3-" + str(k + 2) + "}",
        "run & examples & " + " & ".join(f"${_fmt_radius(r)}$" for r in radii) + r" & ACR & abstain (\%) & s/img \\",
        r"\midrule",
    ]
    for r in rows:
        cells = [
            _latex_escape(r.label),
            str(r.examples),
            *(c.replace(OUT_OF_REACH, "--").replace("≥ ", r"$\geq$") for c in _accuracy_cells(r)),
            "--" if np.isnan(r.acr) else f"{r.acr:.3f}",
            f"{100 * r.abstention_rate:.1f}",
            _fmt_time(r.time_per_image),
        ]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    note = bounds_note(rows) + samples_note(rows)
    return "\n".join(out) + "\n" + "".join(f"% {line}\n" for line in note.splitlines())


# --------------------------------------------------------------------------------------------- plot


def _curve(results, radius_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Step curve of certified accuracy: (x, y) to draw with ``where="post"``."""
    correct = _column(results, "correct") == 1
    rad = np.sort(_column(results, radius_column).astype(np.float64)[correct])
    n = correct.size
    m = rad.size
    x = np.concatenate([[0.0], rad])
    y = np.concatenate([[m], m - np.arange(1, m + 1)]) / n
    return x, y


def run_title(results) -> str | None:
    """ "model, sigma=.., n=.., alpha=.." of a run from its meta.json (None without one)."""
    meta = getattr(results, "meta", None) or {}
    cfg = meta.get("config") or {}
    if not cfg:
        return None
    model = Path(str((meta.get("model") or {}).get("path") or cfg.get("model") or "?")).name
    parts = [model] + [f"{k}={cfg[k]:g}" for k in ("sigma", "n", "alpha") if isinstance(cfg.get(k), (int, float))]
    return ", ".join(parts)


def plot_certified_accuracy(
    runs: Mapping,
    path,
    radius_max: float | None = None,
    *,
    radius_column: str = "radius",
    title: str | None = None,
    xlabel: str = "l2 radius ([0,1] pixel units)",
) -> Path:
    """Plot certified accuracy against radius for several runs, saved as PNG, PDF or SVG by extension.

    Each curve is the exact step function r -> fraction of examples with correct and radius >= r (drawn
    with ``where="post"``, so the drop at a radius shows just after it). The legend, outside the axes,
    gives each run's model, sigma, n and alpha (from its meta.json) and ACR; a dotted line of the run's
    colour marks the largest radius certifiable at its n and alpha. matplotlib is imported here, never
    at import time; the figure is drawn on an Agg canvas without pyplot, so no global backend is changed.
    """
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("png", "pdf", "svg"):
        raise ConfigError(f"plot path {p}: extension {p.suffix!r}; expected .png, .pdf or .svg")
    if not runs:
        raise ConfigError("plot of 0 runs: expected a mapping of label to results")
    try:
        import matplotlib  # noqa: F401  (imported first so a missing package is caught here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import PercentFormatter
    except ImportError:
        raise RsOnnxError(
            "plotting needs matplotlib, which is not installed: expected it; install rs-onnx[plots]"
        ) from None

    curves = {
        str(label): (_curve(res, radius_column), average_certified_radius(res, radius_column))
        for label, res in runs.items()
    }
    reach = {
        str(label): run_max_radius(res) if radius_column in _BOUNDED_COLUMNS else None for label, res in runs.items()
    }
    titles = {str(label): run_title(res) for label, res in runs.items()}
    if radius_max is None:
        top = max((float(x[-1]) for (x, _), _ in curves.values()), default=0.0)
        top = max([top] + [r for r in reach.values() if r is not None and np.isfinite(r)])
        radius_max = 1.05 * top if top > 0 else 1.0
    elif not float(radius_max) > 0:
        raise ConfigError(f"radius_max={radius_max}: expected a positive number")

    fig = Figure(figsize=(8.8, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, ((x, y), acr) in curves.items():
        x = np.append(x, max(radius_max, float(x[-1])))
        y = np.append(y, y[-1])
        detail = f"\n{titles[label]}" if titles[label] and titles[label] != label else ""
        (line,) = ax.step(x, y, where="post", linewidth=1.8, label=f"{label} (ACR {acr:.3f}){detail}")
        r_max = reach[label]
        if r_max is not None and 0 < r_max <= radius_max:
            ax.axvline(
                r_max,
                color=line.get_color(),
                linestyle=":",
                linewidth=1.2,
                label=f"largest certifiable radius {r_max:.3f}",
            )
    ax.set_xlim(0.0, radius_max)
    ax.set_ylim(0.0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("certified accuracy (% of examples)")
    ax.grid(True, alpha=0.35)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize="small")
    if title is None and len(curves) == 1:
        title = next(iter(titles.values()))
    ax.set_title(title or "certified accuracy", fontsize="medium")
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format=fmt, dpi=150)
    return p


# ------------------------------------------------------------------------------------------------ norms

NORMS = ("l1", "l2", "linf")


def radius_norm(path, column: str = "radius") -> str:
    """The norm of ``column`` in the results file ``path``: from its ``.meta.json`` (``radius_norms``), else by
    name (``radius_l1`` is l1, ...), else l2 (Cohen et al.'s files and rs-onnx files before other noises)."""
    from .results import meta_path, read_meta

    if meta_path(path).is_file():
        try:
            norms = read_meta(path).get("radius_norms") or {}
        except DataError:
            norms = {}
        if isinstance(norms, dict) and norms.get(column) in NORMS:
            return str(norms[column])
    for norm in NORMS:
        if column == f"radius_{norm}":
            return norm
    return "l2"


def select_norm(
    runs: Mapping, paths: Mapping, norm: str | None = None, radius_column: str = "radius"
) -> tuple[dict, str]:
    """Runs whose ``radius`` column holds radii in one norm, and that norm.

    With ``norm``: each run's radii in that norm (its ``radius`` column when that is in ``norm``, else its
    ``radius_<norm>`` column; DataError when it has neither). Without: ``radius_column`` of every run, which
    must be in the same norm in all of them (ConfigError otherwise: one table or plot never mixes norms).
    ``paths`` maps each run's label to its file (for the meta.json).
    """
    if norm is not None and norm not in NORMS:
        raise ConfigError(f"norm={norm!r}: expected one of {', '.join(NORMS)}")
    out, norms = {}, {}
    for label, res in runs.items():
        path = paths[label]
        if norm is None:
            column = radius_column
        elif radius_column != "radius" and radius_norm(path, radius_column) == norm:
            column = radius_column
        elif radius_norm(path, "radius") == norm:
            column = "radius"
        elif f"radius_{norm}" in res:
            column = f"radius_{norm}"
        else:
            raise DataError(
                f"{path}: no {norm} radius (its radius column is {radius_norm(path, 'radius')} and it "
                f"has no radius_{norm} column); expected a file certified in {norm} or by rs-onnx"
            )
        norms[label] = radius_norm(path, column)
        if res.kind == "predict":  # no radii: nothing certified, in any norm
            out[label] = res
            continue
        meta = {**res.meta, "radius_norm": norms[label]} if res.meta is not None else None
        out[label] = dataclasses.replace(res, columns={**res.columns, "radius": res[column]}, meta=meta)
    if len(set(norms.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in norms.items())
        raise ConfigError(
            f"results in different norms ({listing}); expected one norm per table and plot "
            "(choose one with --norm l1|l2|linf)"
        )
    return out, next(iter(norms.values()), norm or "l2")
