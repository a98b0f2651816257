"""``rs-onnx verify``: every row of a results file recomputed from its counts and the run's meta.json.

A row's certificate (class, pA_lower, every radius column, correct) follows from its counts and the run's
settings alone, through the same functions the run called (:func:`rs_onnx.smoothing.certificate`,
:func:`rs_onnx.smoothing.prediction`, :func:`rs_onnx.sequential.certificate_from_row`), so an auditor can check
a file without the model. Also checked: the header, the meta file's configuration, the digest of the rows the
run recorded (``rows_digest``: a truncated, edited or appended file), and, when ``inputs``, the sha256 of the
model and data found at their recorded paths. ``--resume``, ``analyze`` and ``report`` run the same check.

Two columns cannot be recomputed from a row: ``time`` (measured) and, when a certify row abstains, which class
the selection guessed (an abstaining row shows -1). The selection counts are not recorded either, so a class
swapped for another class with the same counts is caught only by the digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import RunConfig
from .errors import RsOnnxError
from .results import answer_row, columns_for, format_value, read_meta, sha256_file

ABSTAIN = -1
NOT_RECOMPUTED = ("time",)
"""Columns no count determines (the seconds an example took)."""


@dataclass
class Verdict:
    """What :func:`verify_file` found. ``bad``: (position among the rows, line number, what is wrong) of each
    row that does not reproduce; ``problems``: what is wrong with the file as a whole; ``unchecked``: why its
    rows could not be checked at all (then it is never reported as reproduced); ``notes``: what was not checked."""

    path: str
    kind: str = "unknown"
    rows: int = 0
    bad: list[tuple[int, int, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unchecked: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every row reproduced and nothing wrong with the file."""
        return not self.bad and not self.problems and self.unchecked is None

    @property
    def refused(self) -> bool:
        """Rows that do not reproduce or a file that is not what the run wrote (--resume refuses it)."""
        return bool(self.bad or self.problems or self.unchecked is not None)

    @property
    def bad_rows(self) -> set[int]:
        """Positions (0-based, in file order) of the rows that do not reproduce."""
        return {pos for pos, _, _ in self.bad}

    def line(self) -> str:
        """The one-line verdict."""
        if self.unchecked is not None:
            return f"{self.path}: UNCHECKED: {self.unchecked}"
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        if self.ok:
            return f"{self.path}: reproduced: {self.rows} {self.kind} rows{extra}"
        what = []
        if self.bad:
            _, lineno, why = self.bad[0]
            what.append(f"{len(self.bad)} of {self.rows} rows do not reproduce (first: line {lineno}: {why})")
        what += self.problems
        return f"{self.path}: NOT REPRODUCED: {'; '.join(what)}{extra}"


def verify_file(path: str | Path, *, inputs: bool = True, torn_tail_ok: bool = False) -> Verdict:
    """Check every row of the results file ``path`` against its meta.json (see the module docstring).

    ``inputs``: also hash the model and data found at the paths meta.json records. ``torn_tail_ok``: a last
    line without its newline (a crash) is not a problem (``--resume`` recomputes it)."""
    p = Path(path)
    v = Verdict(str(p))
    try:
        data = p.read_bytes()
    except OSError as e:
        v.unchecked = f"unreadable ({e.strerror or e}); expected an rs-onnx results file"
        return v
    try:
        meta = read_meta(p)
    except RsOnnxError as e:
        v.unchecked = f"{e}; without it no row can be recomputed"
        return v
    try:
        _check(v, data, meta, p, inputs, torn_tail_ok)
    except _UncheckedError as e:
        v.unchecked = str(e)
    return v


class _UncheckedError(Exception):
    """The file's rows cannot be checked (an unknown run kind, a meta file without what it needs)."""


@dataclass(frozen=True)
class _Run:
    """The settings a row is recomputed from (meta.json's config, resolved)."""

    mode: str
    cfg: RunConfig
    sigma: float
    noise: str
    dim: int


def _settings(meta: dict, v: Verdict) -> _Run:
    mode = meta.get("mode")
    if mode not in ("certify", "predict"):
        raise _UncheckedError(
            f"meta.json mode {str(mode)[:40]!r}; expected certify or predict (no other kind is checked)"
        )
    config = meta.get("config")
    if not isinstance(config, dict):
        raise _UncheckedError("meta.json has no config; expected the run's resolved configuration")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        v.problems.append(f"meta.json config has unknown keys {', '.join(unknown)[:80]}")
    try:
        cfg = RunConfig(**{k: x for k, x in config.items() if k in known}).validate()
    except (RsOnnxError, TypeError, ValueError) as e:
        raise _UncheckedError(f"meta.json config is not a valid configuration ({str(e)[:160]})") from None
    noise = meta.get("noise") or {}
    kind, sigma, dim = noise.get("kind"), noise.get("sigma"), noise.get("dim")
    if mode == "predict":  # no radius: sigma and the noise do not enter a prediction's row
        return _Run(mode, cfg, float(cfg.sigma or 0.0), str(kind), 1)
    if cfg.sigma is None or not isinstance(sigma, (int, float)) or float(sigma) != float(cfg.sigma):
        v.problems.append(f"meta.json config sigma {cfg.sigma} and noise sigma {sigma} differ")
    if kind not in ("gaussian", "uniform", "laplace") or (cfg.noise is not None and cfg.noise != kind):
        raise _UncheckedError(f"meta.json noise kind {str(kind)[:40]!r} (config: {cfg.noise}); expected one noise")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise _UncheckedError(f"meta.json noise dim {str(dim)[:40]!r}; expected the number of noisy values per input")
    if cfg.sigma is None:
        raise _UncheckedError("meta.json config has no sigma; expected the resolved noise level")
    return _Run(mode, cfg, float(cfg.sigma), kind, dim)


def _check(v: Verdict, data: bytes, meta: dict, p: Path, inputs: bool, torn_tail_ok: bool) -> None:
    run = _settings(meta, v)
    columns = columns_for(run.mode, run.cfg.sequential)
    v.kind = "sequential certify" if run.mode == "certify" and run.cfg.sequential else run.mode
    if run.mode == "certify" and run.noise != "gaussian":
        v.kind += f" ({run.noise})"
    if meta.get("audit") is not None:
        v.kind = "audit " + v.kind
    good = data.rfind(b"\n") + 1
    if good < len(data):
        if not torn_tail_ok:
            what = "a crash cut it short" if meta.get("status") != "complete" else "the run had ended"
            v.problems.append(f"the last line has no newline ({what}); it is not a row")
    lines = data[:good].decode("utf-8", "replace").split("\n")[:-1]
    if not lines:
        raise _UncheckedError("empty; expected a header and rows")
    if lines[0] != "\t".join(columns):
        raise _UncheckedError(f"header {lines[0][:80]!r}; expected the {v.kind} header {' '.join(columns)[:80]}...")
    _check_digest(v, data[:good], meta, len(lines) - 1)
    rows: list[dict | None] = []
    for k, line in enumerate(lines[1:]):
        cells = line.split("\t")
        if len(cells) != len(columns):
            v.bad.append((k, k + 2, f"{len(cells)} cells; expected {len(columns)}"))
            rows.append(None)
        else:
            rows.append(dict(zip(columns, cells)))
    v.rows = len(rows)
    _check_rows(v, run, meta, rows)
    if meta.get("status") == "complete":
        selected = (meta.get("data") or {}).get("selected")
        if isinstance(selected, int) and v.rows != selected:
            v.problems.append(f"{v.rows} rows in a complete run of {selected} examples")
    else:
        v.notes.append(f"run status {str(meta.get('status'))[:20]}")
    if inputs:
        _check_inputs(v, meta, run.cfg)


def _check_digest(v: Verdict, data: bytes, meta: dict, rows: int) -> None:
    digest = meta.get("rows_digest")
    if not isinstance(digest, dict):
        v.notes.append("no rows digest in meta.json (an older rs-onnx): rows recomputed only")
        return
    try:
        size, sha = int(digest["bytes"]), str(digest["sha256"])
    except (KeyError, TypeError, ValueError):
        v.problems.append("meta.json rows_digest is not readable")
        return
    if len(data) < size:
        v.problems.append(f"truncated or edited: {len(data)} bytes of rows where the run wrote {size} (rows_digest)")
    elif hashlib.sha256(data[:size]).hexdigest() != sha:
        v.problems.append("the rows differ from those the run wrote (meta.json's rows_digest)")
    elif len(data) > size and meta.get("status") == "complete":
        v.problems.append(f"{rows - int(digest.get('rows', 0))} rows appended after the run completed")
    elif len(data) > size:
        v.notes.append(f"{rows - int(digest.get('rows', 0))} rows after the digest (the run did not finish)")


def _int(row: dict, name: str) -> int:
    text = row[name]
    value = int(text)
    if str(value) != text:
        raise ValueError(f"{name} {text!r}; expected an integer as the run writes it")
    return value


def _check_rows(v: Verdict, run: _Run, meta: dict, rows: list) -> None:
    cfg = run.cfg
    seen: dict[int, int] = {}
    end = cfg.end
    examples = (meta.get("data") or {}).get("examples")
    if isinstance(examples, int):
        end = examples if end is None else min(end, examples)
    recompute = {"certify": _certify_rows, "predict": _predict_rows}[run.mode]
    if run.mode == "certify" and cfg.sequential:
        recompute = _sequential_rows
    parsed = []
    for k, row in enumerate(rows):
        if row is None:
            continue
        try:
            idx, label, predict = _int(row, "idx"), _int(row, "label"), _int(row, "predict")
            if not math.isfinite(float(row["time"])) or float(row["time"]) < 0:
                raise ValueError(f"time {row['time']!r}; expected seconds")
        except ValueError as e:
            v.bad.append((k, k + 2, str(e)))
            continue
        if idx < cfg.start or (end is not None and idx >= end) or (idx - cfg.start) % cfg.skip:
            v.bad.append((k, k + 2, f"idx {idx} is not in the run's selection (start/end/skip)"))
            continue
        if idx in seen:
            v.bad.append((k, k + 2, f"idx {idx} again (first on line {seen[idx] + 2})"))
            continue
        seen[idx] = k
        parsed.append((k, row, idx, label, predict))
    for k, row, expected in recompute(run, parsed, v):
        for name, text in row.items():
            if name in NOT_RECOMPUTED:
                continue
            want = format_value(expected[name])
            if text != want:
                v.bad.append((k, k + 2, f"{name} {text[:24]}, expected {want}"))
                break
    v.bad.sort()


def _expected(mode: str, idx: int, label: int, answer) -> dict:
    return answer_row(mode, idx, label, answer, 0.0)


def _certify_rows(run: _Run, parsed: list, v: Verdict):
    """Cohen's CERTIFY rows (bound cohen or best, any noise): the certificate from (guess, nA, runner-up, n)."""
    from .smoothing import certificate

    cfg = run.cfg
    ok, counts = [], []
    for k, row, idx, label, predict in parsed:
        try:
            n_a, n, n0, nonfinite = _int(row, "nA"), _int(row, "n"), _int(row, "n0"), _int(row, "nonfinite")
            p_b = float(row["pB_upper"])
        except ValueError as e:
            v.bad.append((k, k + 2, str(e)))
            continue
        why = _count_problem(n_a, n, n0, nonfinite, cfg)
        if why:
            v.bad.append((k, k + 2, why))
            continue
        ok.append((k, row, idx, label, predict))
        counts.append((n_a, nonfinite, p_b))
    gaussian = run.noise == "gaussian"
    k_others = _runner_up(run, [c[0] for c in counts], [c[2] for c in counts]) if gaussian else [0] * len(ok)
    cache: dict = {}
    for (k, row, idx, label, predict), (n_a, nonfinite, _), k_other in zip(ok, counts, k_others):
        guesses = [predict] if predict != ABSTAIN else [0] + ([ABSTAIN] if n_a == 0 else [])
        rows = []
        for guess in guesses:
            key = (guess == ABSTAIN, n_a, k_other if guess != ABSTAIN else 0)
            if key not in cache:
                cache[key] = certificate(
                    ABSTAIN if guess == ABSTAIN else 0,
                    n_a,
                    key[2],
                    cfg.n,
                    cfg.n0,
                    0,
                    cfg.alpha,
                    run.sigma,
                    run.noise,
                    run.dim,
                    cfg.bound,
                )
            cert = cache[key]
            pred = cert.predict if cert.predict == ABSTAIN else guess
            rows.append(_expected("certify", idx, label, dataclasses.replace(cert, predict=pred, nonfinite=nonfinite)))
        # an abstaining row's guess is not recorded: it reproduces if some guess gives exactly this row
        match = next((e for e in rows if all(row[c] == format_value(e[c]) for c in e if c not in NOT_RECOMPUTED)), None)
        yield k, row, match or rows[0]


def _count_problem(n_a: int, n: int, n0: int, nonfinite: int, cfg: RunConfig) -> str | None:
    if n != cfg.n or n0 != cfg.n0:
        return f"n {n}, n0 {n0}; expected the run's n {cfg.n}, n0 {cfg.n0}"
    if not 0 <= n_a <= n:
        return f"nA {n_a}; expected 0 to n {n}"
    if not 0 <= nonfinite <= n + n0:
        return f"nonfinite {nonfinite}; expected 0 to n + n0 {n + n0}"
    return None


def _runner_up(run: _Run, n_as: list[int], p_bs: list[float]) -> list[int]:
    """The largest other count each row's pB_upper stands for: the smallest k in [0, n - nA] whose two-class
    pB_upper (:func:`rs_onnx.bounds.two_class_from_top`) reaches the recorded one (it grows with k), by
    bisection over all rows at once. A row whose pB_upper no count gives then fails its comparison."""
    from .bounds import two_class_from_top
    from .smoothing import BEST_ALPHA_SPLIT

    if not n_as:
        return []
    n = run.cfg.n
    n_a = np.asarray(n_as, np.int64)
    target = np.asarray(p_bs, np.float64)
    lo = np.full(len(n_a), -1, np.int64)  # p_b(lo) < target (or lo = -1)
    hi = n - n_a  # the answer when nothing smaller reaches the target

    def p_b(k):
        return np.atleast_1d(two_class_from_top(n_a, k, n, run.cfg.alpha, run.sigma, alpha_split=BEST_ALPHA_SPLIT)[1])

    while np.any(hi - lo > 1):
        mid = np.where(hi - lo > 1, (lo + hi) // 2, hi)
        reach = p_b(np.maximum(mid, 0)) >= target
        hi = np.where((hi - lo > 1) & reach, mid, hi)
        lo = np.where((hi - lo > 1) & ~reach, mid, lo)
    return [int(k) for k in hi]


def _sequential_rows(run: _Run, parsed: list, v: Verdict):
    """Sequential CERTIFY rows: the run's plan, then the certificate of the deciding look (its count alone
    justifies the radius: see :func:`rs_onnx.sequential.run_looks`) and the last look."""
    from .sequential import certificate_from_row, run_plan

    cfg = run.cfg
    try:
        plan = run_plan(
            cfg.n,
            cfg.alpha,
            cfg.looks,
            cfg.first_look,
            cfg.final_share,
            run.sigma,
            cfg.radii,
            cfg.futility_beta,
            cfg.precision,
            run.noise,
        )
    except RsOnnxError as e:
        raise _UncheckedError(f"the sequential plan of meta.json's config: {e}") from None
    sizes = plan.schedule.sizes
    cache: dict = {}
    for k, row, idx, label, predict in parsed:
        try:
            n_a, n, n0, nonfinite = _int(row, "nA"), _int(row, "n"), _int(row, "n0"), _int(row, "nonfinite")
            look, look_n_a = _int(row, "look"), _int(row, "look_nA")
        except ValueError as e:
            v.bad.append((k, k + 2, str(e)))
            continue
        look_n = sizes[look - 1] if 1 <= look <= len(sizes) else -1
        why = None
        if not 0 <= n0 <= cfg.n0 or (n != 0 and n not in sizes):  # selection stops early once a class is clear
            why = f"n {n}, n0 {n0}; expected n0 0 to {cfg.n0} and n one of the planned looks {list(sizes)[:4]}..."
        elif not (0 <= look <= len(sizes) and (look == 0) == (n == 0) and (look == 0 or look_n <= n)):
            why = f"look {look} with n {n}; expected a look made (1 to {len(sizes)}), 0 only when none was"
        elif not (0 <= look_n_a <= max(look_n, 0) and 0 <= n_a <= n and 0 <= n_a - look_n_a <= n - max(look_n, 0)):
            why = f"nA {n_a} of n {n}, look_nA {look_n_a} of {look_n}; expected counts that add up"
        elif not 0 <= nonfinite <= n + n0:
            why = f"nonfinite {nonfinite}; expected 0 to n + n0 {n + n0}"
        if why:
            v.bad.append((k, k + 2, why))
            continue
        key = (predict == ABSTAIN, n_a, n, look, look_n_a)
        if key not in cache:
            cache[key] = certificate_from_row(
                plan, ABSTAIN if predict == ABSTAIN else 0, n_a, n, look, look_n_a, cfg.n0, 0, run.dim
            )
        cert = cache[key]
        pred = cert.predict if cert.predict == ABSTAIN else max(predict, 0)
        answer = dataclasses.replace(cert, predict=pred, nonfinite=nonfinite, n0=n0)
        yield k, row, _expected("certify", idx, label, answer)


def _predict_rows(run: _Run, parsed: list, v: Verdict):
    """PREDICT rows: the binomial test of the top two counts."""
    from .smoothing import prediction

    cfg = run.cfg
    for k, row, idx, label, predict in parsed:
        try:
            a, b, n, nonfinite = _int(row, "count_a"), _int(row, "count_b"), _int(row, "n"), _int(row, "nonfinite")
        except ValueError as e:
            v.bad.append((k, k + 2, str(e)))
            continue
        if n != cfg.n or not (0 <= b <= a and a + b + nonfinite <= n and nonfinite >= 0):
            v.bad.append((k, k + 2, f"count_a {a}, count_b {b}, nonfinite {nonfinite} of n {n}; expected n {cfg.n}"))
            continue
        answer = prediction(max(predict, 0), a, b, n, nonfinite, cfg.alpha)
        yield k, row, _expected("predict", idx, label, answer)


def _check_inputs(v: Verdict, meta: dict, cfg: RunConfig) -> None:
    """The model's and the data's sha256, where they are found at the paths meta.json records."""
    from .data import manifest_files
    from .outputs import data_identity

    model = (meta.get("model") or {}).get("sha256")
    if cfg.denoiser:
        v.notes.append("model not hashed (a denoiser was composed in front of it)")
    elif cfg.model and Path(cfg.model).is_file():
        if sha256_file(cfg.model) != model:
            v.problems.append(f"model {cfg.model}: its sha256 is not the one meta.json records")
    else:
        v.notes.append("model not found: not hashed")
    recorded = (meta.get("data") or {}).get("identity")
    if not cfg.data or not Path(cfg.data).exists():
        v.notes.append("data not found: not hashed")
    elif not isinstance(recorded, dict):
        v.notes.append("no data identity in meta.json: data not hashed")
    else:
        try:
            files = manifest_files(cfg) if recorded.get("kind") == "manifest" else None
            now = data_identity(cfg.data, cfg.start, cfg.end, cfg.skip, files)
        except (OSError, RsOnnxError) as e:
            v.problems.append(f"data {cfg.data}: cannot be hashed ({str(e)[:80]})")
            return
        if now.get("sha256") != recorded.get("sha256"):
            v.problems.append(f"data {cfg.data}: its contents are not those meta.json records")
