"""``rs-onnx report``: one self-contained HTML file about certify (and predict) runs.

The page holds the provenance from each run's meta.json, the certified-accuracy curves (inline SVG),
the table at standard radii with population lower bounds, ACR, abstention and samples per example, certified accuracy per class, the distribution of
radii, the slowest examples and every warning. It loads nothing from the network or other files (no
scripts, no external stylesheets, fonts or images), so it can be mailed or archived as it is. Every
string from a results or meta file is HTML-escaped. Radii are l2 in [0,1] pixel units, times seconds.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._version import __version__
from .analysis import (
    DEFAULT_RADII,
    OUT_OF_REACH,
    Results,
    certified_accuracy,
    read_run,
    run_max_radius,
    run_title,
    summary,
    table_rows,
)
from .checks import one_class_note
from .errors import ConfigError
from .population import DEFAULT_CONFIDENCE, bounds_note, lower_percent

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
SLOWEST = 10
MAX_CLASSES = 100
CHANCE_MARGIN = 1.5
"""A smoothed accuracy below CHANCE_MARGIN / classes is flagged as near chance."""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


# ------------------------------------------------------------------------------------------- warnings


def run_warnings(res: Results) -> list[str]:
    """Everything an auditor must see about one run: unfinished status, no provenance, non-finite model
    outputs, accuracy near chance, many abstentions, per-sample fallback, and the warnings it logged."""
    meta = res.meta
    out: list[str] = []
    if meta is None:
        out.append("no meta.json next to the results: model, versions and settings are unknown")
        meta = {}
    verdict = meta.get("verify") or {}
    if verdict and not verdict.get("ok"):
        out.append(f"rs-onnx verify: {verdict.get('line')} (such rows count as not certified here)")
    status = meta.get("status")
    if meta and status != "complete":
        out.append(
            f"status {status!r}: the run did not finish; these are partial results "
            f"({meta.get('examples_done', '?')} of {(meta.get('data') or {}).get('selected', '?')} examples)"
        )
    s = summary(res)
    nonfinite = int(res["nonfinite"].sum()) if "nonfinite" in res else int(meta.get("nonfinite_outputs") or 0)
    if nonfinite:
        out.append(
            f"{nonfinite} noisy samples gave NaN/Inf model outputs (counted as their own outcome, never for a class)"
        )
    signature = (meta.get("model") or {}).get("signature") or {}
    classes = signature.get("num_classes")
    guessed = ""
    if not isinstance(classes, int) or classes < 2:
        # a recorded model whose index output declares no K: chance is unknown, never taken from the labels
        # seen; without any meta.json the labels seen are all there is, and the warning says so
        classes = 0 if signature else int(max(res.label.max(initial=0), res.predict.max(initial=0))) + 1
        guessed = ", a count guessed from the labels seen: no meta.json" if classes else ""
    if classes >= 2 and s["accuracy"] <= CHANCE_MARGIN / classes:
        out.append(
            f"accuracy {100 * s['accuracy']:.1f}% is near chance ({100 / classes:.1f}% for {classes} classes{guessed}): "
            "check preprocessing (--preset, --layout, --scale) and sigma"
        )
    one = one_class_note(res.predict, res.label)
    if one:
        out.append(one)
    if s["abstention_rate"] > 0.5:
        out.append(
            f"{100 * s['abstention_rate']:.1f}% of examples abstained: sigma may be too large for this model, "
            "or n too small"
        )
    if signature.get("batch_mode") == "per-sample":
        out.append("the model could not run batches: samples were run one at a time (per-sample fallback, slow)")
    for w in meta.get("warnings") or []:
        if str(w) not in out:
            out.append(str(w))
    return out


# ------------------------------------------------------------------------------------------------ SVG


def _ticks(top: float, count: int = 5) -> list[float]:
    raw = top / count
    mag = 10 ** np.floor(np.log10(raw)) if raw > 0 else 1.0
    step = float(min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=mag))
    return [round(i * step, 10) for i in range(int(top / step + 1e-9) + 1)]


def curves_svg(runs: dict[str, Results], width: int = 860, height: int = 380) -> str:
    """Certified accuracy against radius as an inline SVG: exact step curves, a dotted line at each run's
    largest certifiable radius, the legend to the right of the axes."""
    left, right, top, bottom = 58, 330, 16, 48
    pw, ph = width - left - right, height - top - bottom
    reach = {k: run_max_radius(r) for k, r in runs.items()}
    xmax = max(
        [float(r.radius[r.correct == 1].max(initial=0.0)) for r in runs.values()]
        + [v for v in reach.values() if v is not None and np.isfinite(v)]
    )
    xmax = 1.05 * xmax if xmax > 0 else 1.0

    def sx(x: float) -> float:
        return left + pw * min(x, xmax) / xmax

    def sy(y: float) -> float:
        return top + ph * (1 - y)

    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} '
            f'{height}" role="img" aria-label="certified accuracy against radius" font-family="sans-serif" font-size="12">'
        ),
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
    ]
    for t in _ticks(xmax):
        parts.append(
            f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" stroke="#eee"/>'
            f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t:g}</text>'
        )
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{100 * t:.0f}%</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">l2 radius ([0,1] pixel units)</text>'
        f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">certified accuracy '
        "(% of examples)</text>"
    )
    ly = top + 8
    for i, (label, res) in enumerate(runs.items()):
        colour = COLOURS[i % len(COLOURS)]
        correct = res.correct == 1
        rad = np.sort(res.radius[correct])
        n = len(res)
        ys = (correct.sum() - np.arange(len(rad) + 1)) / n
        pts = [(0.0, ys[0])]
        for k, r in enumerate(rad):
            pts += [(r, ys[k]), (r, ys[k + 1])]
        pts.append((xmax, ys[-1]))
        path = " ".join(f"{sx(x):.2f},{sy(y):.2f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        r_max = reach[label]
        if r_max is not None and 0 < r_max <= xmax:
            parts.append(
                f'<line x1="{sx(r_max):.1f}" y1="{top}" x2="{sx(r_max):.1f}" y2="{top + ph}" stroke="{colour}" '
                'stroke-dasharray="3 3"/>'
            )
        legend = [f"{label} (ACR {float(np.mean(np.where(correct, res.radius, 0.0))):.3f})"]
        if run_title(res):
            model, _, settings = str(run_title(res)).partition(", ")
            legend += [model, settings] if settings else [model]
        if r_max is not None and np.isfinite(r_max):
            legend.append(f"┆ largest certifiable radius {r_max:.3f}")
        parts.append(
            f'<line x1="{left + pw + 14}" y1="{ly}" x2="{left + pw + 34}" y2="{ly}" stroke="{colour}" '
            'stroke-width="3"/>'
        )
        for j, text in enumerate(legend):
            short = text if len(text) <= 50 else text[:49] + "…"
            parts.append(f'<text x="{left + pw + 40}" y="{ly + 4 + 15 * j}">{_e(short)}</text>')
        ly += 15 * len(legend) + 10
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(res: Results, width: int = 420, height: int = 180, bins: int = 20) -> str:
    """Histogram of the certified radii of correctly classified examples (radius > 0), as inline SVG."""
    rad = res.radius[(res.correct == 1) & (res.radius > 0)]
    left, bottom, top = 40, 30, 10
    pw, ph = width - left - 10, height - top - bottom
    if rad.size == 0:
        return '<p class="muted">no example certified at a positive radius</p>'
    counts, edges = np.histogram(rad, bins=bins, range=(0.0, float(rad.max()) * 1.0001))
    peak = max(1, int(counts.max()))
    bw = pw / bins
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            'font-size="11" role="img" aria-label="distribution of certified radii">'
        )
    ]
    for k, c in enumerate(counts):
        h = ph * c / peak
        parts.append(
            f'<rect x="{left + k * bw + 1:.1f}" y="{top + ph - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
            f'fill="#1f77b4"><title>{edges[k]:.3f}–{edges[k + 1]:.3f}: {c}</title></rect>'
        )
    parts.append(
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>'
        f'<text x="{left}" y="{height - 8}">0</text>'
        f'<text x="{left + pw}" y="{height - 8}" text-anchor="end">{edges[-1]:.3f}</text>'
        f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">radius</text>'
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text></svg>'
    )
    return "".join(parts)


# ----------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;
padding:0 16px}h1{font-size:1.5em;margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.muted{color:#777}.warn{background:#fff4e5;border-left:4px solid #e08a00;
padding:6px 12px;margin:4px 0}.ok{background:#eef8ee;border-left:4px solid #2ca02c;padding:6px 12px}
code{font-size:.9em;word-break:break-all}.runs{display:flex;flex-wrap:wrap;gap:24px}
"""


def _table(head: Sequence[str], rows: Sequence[Sequence], left: int = 1) -> str:
    th = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_e(c)}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _when(ts) -> str:
    try:
        return _dt.datetime.fromtimestamp(float(ts), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _provenance(label: str, res: Results) -> str:
    meta = res.meta or {}
    if not meta:
        return f"<h3>{_e(label)}</h3><p class='muted'>{_e(res.path)}: no meta.json (e.g. a file from Cohen et al.)</p>"
    cfg = meta.get("config") or {}
    model = meta.get("model") or {}
    timings = meta.get("timings") or {}
    seed = meta.get("seed")
    rows = [
        ("results file", res.path),
        ("status", meta.get("status")),
        ("mode", meta.get("mode")),
        ("model", Path(str(model.get("path", "?"))).name),
        ("model path", model.get("path")),
        ("model sha256", model.get("sha256")),
        ("certified model", (model.get("signature") or {}).get("certified_model")),
        (
            "data",
            (
                f"{(meta.get('data') or {}).get('path')} ({(meta.get('data') or {}).get('selected')} of "
                f"{(meta.get('data') or {}).get('examples')} examples selected)"
            ),
        ),
        ("sigma, n0, n, alpha", f"{cfg.get('sigma')}, {cfg.get('n0')}, {cfg.get('n')}, {cfg.get('alpha')}"),
        ("bound", cfg.get("bound")),
        ("sequential", cfg.get("sequential")),
        ("preprocessing", meta.get("preprocess")),
        (
            "noise",
            f"seed {seed}" if seed is not None else f"no seed: entropy {meta.get('entropy')} (recorded, reproducible)",
        ),
        ("device", f"{meta.get('device')} ({meta.get('device_name')})"),
        ("providers", ", ".join(map(str, meta.get("providers") or []))),
        ("batch size, noise threads", f"{meta.get('batch_size')}, {meta.get('noise_threads')}"),
        ("started", _when(timings.get("started"))),
        ("seconds", f"{float(timings.get('seconds') or 0):.1f}"),
        ("command line", " ".join(map(str, meta.get("command") or []))),
    ]
    rows += [(f"version: {k}", v) for k, v in (meta.get("versions") or {}).items()]
    return f"<h3>{_e(label)}</h3>" + _table(["", ""], [(k, "" if v is None else v) for k, v in rows], left=2)


def _per_class(res: Results, radii: Sequence[float]) -> str:
    labels = np.unique(res.label)
    shown = labels[:MAX_CLASSES]
    rows = []
    reach = run_max_radius(res)
    for c in shown:
        sel = res.label == c
        sub = Results({k: v[sel] for k, v in res.columns.items()}, kind=res.kind)
        acc = certified_accuracy(sub, list(radii))
        rows.append(
            [int(c), int(sel.sum())]
            + [OUT_OF_REACH if reach is not None and r > reach else f"{100 * a:.1f}" for r, a in zip(radii, acc)]
        )
    note = f"<p class='muted'>first {MAX_CLASSES} of {len(labels)} classes</p>" if len(labels) > MAX_CLASSES else ""
    return _table(["class", "examples", *(f"r={r:g} (%)" for r in radii)], rows, left=1) + note


def _slowest(res: Results) -> str:
    order = np.argsort(-res.time, kind="stable")[:SLOWEST]
    extra = [c for c in ("samples", "n", "nA", "nonfinite") if c in res]
    rows = [
        [
            int(res.idx[i]),
            int(res.label[i]),
            int(res.predict[i]),
            f"{res.radius[i]:.4f}" if res.kind != "predict" else "",
            f"{res.time[i]:.4g}",
            *(format(res[c][i], "g") for c in extra),
        ]
        for i in order
    ]
    return _table(["idx", "label", "predict", "radius", "seconds", *extra], rows, left=0)


def _count(x) -> str:
    return "" if x is None else f"{x:,.0f}"


def render(
    runs: dict[str, Results],
    title: str | None = None,
    radii: Sequence[float] = DEFAULT_RADII,
    confidence: float = DEFAULT_CONFIDENCE,
) -> str:
    """The report as one HTML string (no external references); certified accuracies carry their
    population lower bounds at ``confidence``."""
    if not runs:
        raise ConfigError("report of 0 runs: expected at least one results file")
    title = title or "rs-onnx certification report: " + ", ".join(runs)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        (
            f"<h1>{_e(title)}</h1><p class='muted'>made by rs-onnx {_e(__version__)} on {now}; randomized smoothing "
            "(Cohen et al. 2019): each answer holds with probability at least 1 - alpha</p>"
        )
    ]
    body.append("<h2>Warnings</h2>")
    any_warning = False
    for label, res in runs.items():
        for w in run_warnings(res):
            any_warning = True
            body.append(f"<div class='warn'><b>{_e(label)}</b>: {_e(w)}</div>")
    if not any_warning:
        body.append(
            "<div class='ok'>none: every run is complete, with provenance, finite model outputs and accuracy "
            "above chance</div>"
        )
    body.append("<h2>Certified accuracy</h2>" + curves_svg(runs))
    rows = table_rows(runs, radii, confidence=confidence)
    head = ["run", "examples", *(f"r={r:g} (%)" for r in radii), "ACR", "abstain (%)", "s/example"]
    head += ["samples/example: mean", "p90", "fixed-n equivalent"]
    cells = [
        [
            r.label,
            r.examples,
            *(
                OUT_OF_REACH if far else f"{100 * a:.1f}" + ("" if lo is None else f" (≥ {lower_percent(lo)})")
                for a, lo, far in zip(r.certified, r.lower or (None,) * len(radii), r.out_of_reach())
            ),
            OUT_OF_REACH if np.isnan(r.acr) else f"{r.acr:.3f}",
            f"{100 * r.abstention_rate:.1f}",
            f"{r.time_per_image:.3g}",
            *(_count((r.samples or {}).get(k)) for k in ("mean", "p90", "fixed_n")),
        ]
        for r in rows
    ]
    body.append(_table(head, cells))
    body.append(f"<p class='muted'>{_e(bounds_note(rows, plain=False))}</p>")
    if any(any(r.out_of_reach()) for r in rows):
        body.append(
            f"<p class='muted'>{OUT_OF_REACH}: out of reach, beyond the largest radius certifiable at the run's "
            "n and alpha, sigma &middot; &Phi;<sup>-1</sup>(alpha<sup>1/n</sup>); certified accuracy there is 0 "
            "whatever the model.</p>"
        )
    body.append(
        "<p class='muted'>Certified accuracy at r: share of ALL examples classified correctly with radius &ge; r "
        "(abstentions count as wrong). ACR: mean of radius over correct examples, 0 otherwise.</p>"
    )
    body.append("<h2>Certified accuracy per class</h2><div class='runs'>")
    for label, res in runs.items():
        body.append(f"<div><h3>{_e(label)}</h3>{_per_class(res, radii)}</div>")
    body.append("</div><h2>Distribution of certified radii</h2><div class='runs'>")
    for label, res in runs.items():
        s = summary(res)
        body.append(
            f"<div><h3>{_e(label)}</h3>{histogram_svg(res)}<p class='muted'>{s['examples']} examples: "
            f"{int((res.correct == 1).sum())} correct, {int((res.predict == -1).sum())} abstained, "
            f"{int(((res.correct == 0) & (res.predict != -1)).sum())} wrong</p></div>"
        )
    body.append("</div><h2>Slowest examples</h2><div class='runs'>")
    for label, res in runs.items():
        body.append(f"<div><h3>{_e(label)}</h3>{_slowest(res)}</div>")
    body.append("</div><h2>Provenance</h2>")
    for label, res in runs.items():
        body.append(_provenance(label, res))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    overwrite: bool = False,
    confidence: float = DEFAULT_CONFIDENCE,
) -> str:
    """Read the runs at ``paths`` (TSV + meta.json), render :func:`render` and write it to ``out``
    atomically (``"-"``: stdout). Refuses an existing ``out`` without ``overwrite``, and always an
    ``out`` that is one of the inputs or their meta files. Returns the HTML."""
    if not paths:
        raise ConfigError("report of 0 results files: expected at least one TSV")
    if labels is not None and len(labels) != len(paths):
        raise ConfigError(f"{len(labels)} labels for {len(paths)} results files; expected one per file")
    to_stdout = str(out) == "-"
    if not to_stdout:
        target = Path(out)
        inputs = {Path(p).resolve() for p in paths} | {Path(str(p) + ".meta.json").resolve() for p in paths}
        if target.resolve() in inputs:
            raise ConfigError(f"report output {target} is one of the inputs; expected a new .html file")
        if target.is_dir():
            raise ConfigError(f"report output {target} is a directory; expected a .html file path")
        if target.exists() and not overwrite:
            raise ConfigError(f"report output {target} exists; expected a new file (or --overwrite)")
    names = list(labels) if labels else [Path(p).stem for p in paths]
    if len(set(names)) != len(names):
        names = [str(p) for p in paths]
    runs = {name: read_run(p) for name, p in zip(names, paths)}
    text = render(runs, title, confidence=confidence)
    if to_stdout:
        sys.stdout.write(text)
        return text
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return text
