"""Mutation testing of the statistics: does the test suite notice a small wrong change?

A small AST mutator over ``rs_onnx/stats.py``, ``bounds.py``, ``smoothing.py`` and ``sequential.py``.
Each mutant changes one thing: a comparison flipped (< <-> <=, > <-> >=, == <-> !=), an integer
constant +1, a float constant x2, ``alpha`` passed on as ``2 * alpha``, min <-> max (also numpy's
minimum/maximum and argmax -> argmin), + <-> -, * <-> /, and <-> or. For every mutant the relevant fast
tests run (pytest -x, in a private copy of the repository, one forked child per mutant so that numpy,
scipy and onnxruntime are imported once); a mutant is *killed* when they fail, *timeout* when they run
past ``--timeout`` seconds (counted as killed, reported apart), *survived* otherwise.

Usage::

    python benchmarks/mutate.py                       # every mutant, 2 workers, 40 min budget
    python benchmarks/mutate.py --list                # only list the mutants
    python benchmarks/mutate.py --files stats.py --budget 300 --workers 2 --report benchmarks/MUTATION.md

Mutants left when the time budget (seconds) runs out are reported as *not run*; the score is
killed / run. Docstrings, f-string contents and ``raise`` messages are never mutated. Some survivors are
equivalent mutants (no observable change, e.g. ``<`` -> ``<=`` on a continuous quantity); the report
lists every survivor with its line so that each can be judged.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("stats.py", "bounds.py", "smoothing.py", "sequential.py")

SOUND = "tests/test_soundness.py::"
SOUND_TESTS = [
    SOUND + t
    for t in (
        "test_exact_tail_helpers_against_brute_force",
        "test_certify_guess_comes_from_the_selection_samples[0]",
        "test_certify_best_bound_is_sound_at_a_tie[0]",
        "test_predict_tests_at_level_alpha[0]",
        "test_sequential_looks_spend_their_level[0]",
        "test_sequential_explicit_schedule_spends_its_levels[0]",
    )
]
# The fast tests that exercise each module, cheapest first (pytest -x stops at the first failure); the
# long statistical tests of test_sequential are left out to keep each mutant to seconds.
SLOW = "not false_certification_rate and not many_binomial_trials and not spending_alpha and not linear_oracle"
TESTS = {
    "stats.py": ["tests/test_stats.py", "tests/test_bounds.py", "tests/test_golden.py", *SOUND_TESTS],
    "bounds.py": ["tests/test_bounds.py", "tests/test_stats.py", "tests/test_golden.py", *SOUND_TESTS],
    "smoothing.py": ["tests/test_smoothing.py", "tests/test_golden.py", *SOUND_TESTS],
    "sequential.py": ["tests/test_golden.py", *SOUND_TESTS, "tests/test_sequential.py", "-k", SLOW],
}

COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
SWAP = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "argmax": "argmin"}


@dataclass
class Mutant:
    """One mutation: the file, its index among that file's candidates, the line and what changes."""

    file: str
    index: int
    line: int
    what: str
    status: str = "not run"
    seconds: float = 0.0


def _protected(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, f-strings and everything under ``raise``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.JoinedStr, ast.Raise)):
            skip.update(id(n) for n in ast.walk(node))
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.update(id(n) for n in ast.walk(body[0]))
    return skip


class _Mutator(ast.NodeTransformer):
    """Walks the tree in a fixed order; records every candidate, and applies candidate ``target`` if given."""

    def __init__(self, skip: set[int], target: int | None = None) -> None:
        self.skip, self.target, self.found = skip, target, []  # found: (line, description)

    def _hit(self, node: ast.AST, what: str) -> bool:
        self.found.append((getattr(node, "lineno", 0), what))
        return len(self.found) - 1 == self.target

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if id(node) in self.skip:
            return node
        for i, op in enumerate(node.ops):
            new = COMPARE.get(type(op))
            if new and self._hit(node, f"{type(op).__name__} -> {new.__name__}"):
                node.ops[i] = new()
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        new = BINOP.get(type(node.op))
        if id(node) not in self.skip and new and self._hit(node, f"{type(node.op).__name__} -> {new.__name__}"):
            node.op = new()
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        if id(node) not in self.skip:
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            if self._hit(node, f"{type(node.op).__name__} -> {new.__name__}"):
                node.op = new()
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        v = node.value
        if id(node) in self.skip or isinstance(v, bool) or not isinstance(v, (int, float)):
            return node
        if isinstance(v, int):
            if self._hit(node, f"{v} -> {v + 1}"):
                return ast.copy_location(ast.Constant(v + 1), node)
        elif v != 0.0 and self._hit(node, f"{v!r} -> {v * 2!r}"):
            return ast.copy_location(ast.Constant(v * 2), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if id(node) in self.skip:
            return node
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name in SWAP and self._hit(node, f"{name}() -> {SWAP[name]}()"):
            if isinstance(f, ast.Name):
                f.id = SWAP[name]
            else:
                f.attr = SWAP[name]
        for i, arg in enumerate(node.args):
            if (
                isinstance(arg, ast.Name)
                and arg.id in ("alpha", "a")
                and self._hit(node, f"{name}(..{arg.id}..) -> 2*{arg.id}")
            ):
                node.args[i] = ast.BinOp(ast.Constant(2), ast.Mult(), arg)
        return node


def mutants_of(file: str) -> list[Mutant]:
    """Every candidate mutation of rs_onnx/<file>, in a fixed order."""
    tree = ast.parse((ROOT / "rs_onnx" / file).read_text())
    m = _Mutator(_protected(tree))
    m.visit(tree)
    return [Mutant(file, i, line, what) for i, (line, what) in enumerate(m.found)]


def mutated_source(file: str, index: int, source: str | None = None, expect: Mutant | None = None) -> str:
    """The source of rs_onnx/<file> (or ``source``, its text) with candidate ``index`` applied (comments are
    lost: ast.unparse). With ``expect``, checks that candidate ``index`` is still that mutant."""
    tree = ast.parse((ROOT / "rs_onnx" / file).read_text() if source is None else source)
    m = _Mutator(_protected(tree), index)
    tree = ast.fix_missing_locations(m.visit(tree))
    if expect is not None and m.found[index] != (expect.line, expect.what):
        raise RuntimeError(f"{file} changed during the run: candidate {index} is {m.found[index]}, not {expect}")
    return ast.unparse(tree)


def _copy_repo(dest: Path) -> Path:
    caches = shutil.ignore_patterns(
        ".git", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"
    )

    def ignore(folder: str, names: list[str]) -> set[str]:
        # run output folders (results*/) are left behind, but never a module such as rs_onnx/results.py
        runs = {n for n in names if n.startswith("results") and (Path(folder) / n).is_dir()}
        return set(caches(folder, names)) | runs

    for name in ("rs_onnx", "tests", "benchmarks", "export", "docs"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "mkdocs.yml"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    """Runs ``tests`` in a forked child rooted at ``copy``; 'killed', 'survived' or 'timeout'."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: import rs_onnx from the copy and run pytest there
        try:
            os.chdir(copy)
            sys.path.insert(0, str(copy))
            os.environ["PYTHONPATH"] = str(copy)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.setpgid(0, 0)
            import pytest

            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests])
            import rs_onnx

            if not Path(rs_onnx.__file__).resolve().is_relative_to(copy.resolve()):
                code = 99  # the mutated copy was not the code under test
            os._exit(int(code))
        except BaseException:  # noqa: BLE001 - a forked child must never return into the parent's loop
            os._exit(98)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - start
        time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    if code in (98, 99):
        raise RuntimeError(f"mutation harness failure (exit {code}) in {copy}")
    return ("survived" if code == 0 else "killed"), time.monotonic() - start


def _worker(mutants: list[Mutant], deadline: float, timeouts: dict[str, float], conn) -> None:
    copy = _copy_repo(Path(tempfile.mkdtemp(prefix="rs-onnx-mutate-")))
    try:
        for m in mutants:
            if time.monotonic() > deadline:
                break
            target = copy / "rs_onnx" / m.file
            original = target.read_text()
            # from the copy's own text, so that editing the working tree during a run cannot shift the mutants
            target.write_text(mutated_source(m.file, m.index, original, expect=m))
            try:
                m.status, m.seconds = _run_tests(copy, TESTS[m.file], timeouts[m.file])
            finally:
                target.write_text(original)
            conn.send(asdict(m))
    finally:
        conn.send(None)
        shutil.rmtree(copy, ignore_errors=True)


def run(mutants: list[Mutant], workers: int, budget: float, timeout: float) -> list[Mutant]:
    """Runs the mutants on ``workers`` forked workers until done or ``budget`` seconds have passed."""
    import multiprocessing as mp

    # Imported once here, inherited by every forked test run.
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import pytest  # noqa: F401
    import scipy.stats  # noqa: F401

    ctx = mp.get_context("fork")
    deadline = time.monotonic() + budget
    baseline = _copy_repo(Path(tempfile.mkdtemp(prefix="rs-onnx-mutate-base-")))
    timeouts = {}
    try:
        for file in sorted({m.file for m in mutants}):
            status, secs = _run_tests(baseline, TESTS[file], 3600.0)
            if status != "survived":
                raise SystemExit(f"mutate: the unmutated tests for {file} do not pass ({status}); fix them first")
            # a mutant counts as timeout only well past the time the unmutated tests take
            timeouts[file] = max(timeout, 3.0 * secs)
            print(f"baseline {file}: tests pass in {secs:.1f} s; timeout {timeouts[file]:.0f} s", flush=True)
    finally:
        shutil.rmtree(baseline, ignore_errors=True)
    by_key = {(m.file, m.index): m for m in mutants}
    pipes, procs = [], []
    for w in range(workers):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(mutants[w::workers], deadline, timeouts, send))
        p.start()
        pipes.append(recv)
        procs.append(p)
    open_pipes = list(pipes)
    from multiprocessing.connection import wait

    done = 0
    while open_pipes:
        for r in wait(open_pipes):
            try:
                msg = r.recv()
            except EOFError:
                msg = None
            if msg is None:
                open_pipes.remove(r)
                continue
            m = by_key[(msg["file"], msg["index"])]
            m.status, m.seconds = msg["status"], msg["seconds"]
            done += 1
            print(f"[{done}/{len(mutants)}] {m.status:8s} {m.file}:{m.line} {m.what} ({m.seconds:.1f} s)", flush=True)
    for p in procs:
        p.join()
    return mutants


def report(mutants: list[Mutant], path: Path | None, elapsed: float, workers: int) -> str:
    """Markdown: the score per file and overall, and every survivor with its line."""
    ran = [m for m in mutants if m.status != "not run"]
    killed = [m for m in ran if m.status in ("killed", "timeout")]
    lines = [
        "# Mutation testing",
        "",
        (
            f"`python benchmarks/mutate.py --workers {workers}`: {len(killed)} of {len(ran)} mutants killed"
            f" ({100 * len(killed) / max(1, len(ran)):.1f}%), {len(mutants) - len(ran)} not run for lack of time;"
            f" {elapsed / 60:.1f} min."
        ),
        "",
        "| file | mutants | run | killed | timeout | survived |",
        "|---|---|---|---|---|---|",
    ]
    for f in FILES:
        ms = [m for m in mutants if m.file == f]
        if ms:
            c = {s: sum(m.status == s for m in ms) for s in ("killed", "timeout", "survived")}
            lines.append(
                f"| {f} | {len(ms)} | {sum(m.status != 'not run' for m in ms)} | {c['killed']} | "
                f"{c['timeout']} | {c['survived']} |"
            )
    lines += [
        "",
        "## Survivors",
        "",
        (
            "Each line: file:line, the mutation. Some are equivalent mutants (no "
            "observable change); the others are gaps in the tests."
        ),
        "",
    ]
    lines += [f"- `{m.file}:{m.line}` {m.what}" for m in ran if m.status == "survived"] or ["(none)"]
    not_run = [m for m in mutants if m.status == "not run"]
    if not_run:
        lines += ["", "## Not run (time budget)", ""] + [f"- `{m.file}:{m.line}` {m.what}" for m in not_run]
    text = "\n".join(lines) + "\n"
    if path:
        path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", nargs="*", default=list(FILES), choices=FILES)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget", type=float, default=2400.0, help="seconds for all mutants (default 40 min)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="least seconds per mutant before it counts as timeout (at least 3x the unmutated tests' time)",
    )
    ap.add_argument("--sample", type=int, default=None, help="run a random sample of this many mutants")
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--report", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--json", type=Path, default=None, help="write every mutant's outcome here")
    args = ap.parse_args(argv)
    if args.workers < 1 or args.budget <= 0 or args.timeout <= 0:
        print("rs-onnx: error: --workers, --budget and --timeout: expected positive values", file=sys.stderr)
        return 1
    mutants = [m for f in args.files for m in mutants_of(f)]
    if args.list:
        for m in mutants:
            print(f"{m.file}:{m.line} #{m.index} {m.what}")
        print(f"{len(mutants)} mutants")
        return 0
    if args.sample is not None:
        # in random order, so that a run cut short by the budget is still a random sample
        mutants = random.Random(args.seed).sample(mutants, min(args.sample, len(mutants)))
    start = time.monotonic()
    run(mutants, args.workers, args.budget, args.timeout)
    text = report(mutants, args.report, time.monotonic() - start, args.workers)
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in mutants], indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
