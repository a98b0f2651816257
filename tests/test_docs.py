"""Every shell command in README.md and docs/**/*.md runs as written, from the repository root.

Each fenced ```bash block is run with bash (-e -u -o pipefail) in a scratch copy of the repository (one copy
per page, its blocks in order, so that a page may build a file in one block and use it in the next), with
`rs-onnx`, `python` and `python3` on PATH running this checkout. ```text blocks are not run, except the
error examples: a ```text block whose first line is `$ rs-onnx ...` and whose next line is an
`rs-onnx: error: ...` line is run after the page's bash blocks and must fail with exactly that line.

`pip install` is not run (the tests run in an environment that is already installed; .ci/run runs README's
two commands as written): a stand-in checks that what it would install is this checkout, with extras that
pyproject.toml declares. README's test command (it runs this suite) is the one block that is skipped.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import headless_chromium

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# README's second command runs this very suite; .ci/run runs it as written.
NOT_RUN = {'pip install ".[test]" && python -m pytest -q'}
# Blocks that take more than a few seconds on 2 CPU cores (the quick start: 100 digits at n = 10,000;
# training a model for one epoch), and blocks that need an optional extra (skipped without it).
SLOW = {"pip install . && rs-onnx certify"}
SLOW_IF = ("python -m export.train",)
MODEL_RUN = re.compile(r"^\s*rs-onnx (?:-q )?(?:certify|predict|compose|inspect)\b", re.MULTILINE)
MAX_FAST_RUNS = 4  # each model run costs 1-2 s of CPU (imports, load, batch check): more makes a block slow
REQUIRES = {"python -m export": "torch", "--plot": "matplotlib", "--backend ray": "ray"}
# Results a user's own runs leave in the checkout (README's quick start writes rs-onnx-default-certify.tsv and
# its .meta.json where it runs; .ci/run runs it in the very copy it tests): the pages' commands would refuse
# to overwrite them. The repository tracks no such file.
RUN_OUTPUTS = ("*.tsv", "*.tsv.*", "*.meta.json", "*.html")
IGNORE = shutil.ignore_patterns(
    ".git",
    "site",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.egg-info",
    "runs",
    "out",
    *RUN_OUTPUTS,
)


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a Markdown text at column 0: (language, body)."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def error_examples(text: str) -> list[tuple[str, str]]:
    """(command, error line) of each ```text block that shows `$ rs-onnx ...` then `rs-onnx: error: ...`."""
    found = []
    for lang, body in blocks(text):
        lines = body.rstrip("\n").splitlines()
        if lang == "text" and len(lines) >= 2 and lines[0].startswith("$ rs-onnx "):
            if lines[1].startswith("rs-onnx: error: "):
                found.append((lines[0][2:], lines[1]))
    return found


CASES = []
for _page in PAGES:
    _text = _page.read_text(encoding="utf-8")
    for _i, (_lang, _body) in enumerate(b for b in blocks(_text) if b[0] == "bash"):
        _runs = len(MODEL_RUN.findall(_body))
        _slow = _body.strip() in SLOW or any(s in _body for s in SLOW_IF) or _runs > MAX_FAST_RUNS
        _marks = [pytest.mark.slow] if _slow else []
        CASES.append(pytest.param(_page, _i, _body, id=f"{_rel(_page)}:bash{_i}", marks=_marks))

# Each error example costs a model load (a few seconds): the fast loop runs the pages' bash blocks only.
ERRORS = [
    pytest.param(p, cmd, line, id=f"{_rel(p)}:error{i}", marks=pytest.mark.slow)
    for p in PAGES
    for i, (cmd, line) in enumerate(error_examples(p.read_text(encoding="utf-8")))
]

PIP_STANDIN = r'''#!PYTHON
"""Stand-in for pip in the docs test: checks an install of this checkout (and its extras), installs nothing."""
import re, sys, tomllib
args = sys.argv[1:]
if args[:1] != ["install"]:
    sys.exit(f"docs test: pip {' '.join(args)}: only 'pip install' is expected in the docs")
extras = set(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"])
for a in args[1:]:
    m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", a)
    if m and m.group(1):
        unknown = set(m.group(1).split(",")) - extras
        if unknown:
            sys.exit(f"docs test: pip install {a}: no extra {sorted(unknown)} in pyproject.toml")
print("docs test: pip install " + " ".join(args[1:]) + " not run (this checkout is already importable)")
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """bin/ with rs-onnx, python, python3 and the pip stand-in; a scratch copy of the repository per page."""
    base = tmp_path_factory.mktemp("docs")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    (bin_dir / "rs-onnx").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m rs_onnx.cli "$@"\n')
    (bin_dir / "pip").write_text(PIP_STANDIN.replace("PYTHON", sys.executable, 1))
    for name in ("rs-onnx", "pip"):
        (bin_dir / name).chmod(0o755)
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    copies: dict[Path, Path] = {}
    ran: dict[Path, set[int]] = {}

    def copy_for(page: Path) -> Path:
        if page not in copies:
            dest = base / f"repo{len(copies)}"
            shutil.copytree(ROOT, dest, ignore=IGNORE, symlinks=True)
            copies[page] = dest
        return copies[page]

    return bin_dir, copy_for, ran


def _run(workspace, page: Path, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    bin_dir, copy_for, _ = workspace
    repo = copy_for(page)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(repo),
        MPLBACKEND="Agg",
        PYTHONDONTWRITEBYTECODE="1",
        XDG_CACHE_HOME=str(repo / ".cache"),  # composed denoiser+classifier models: not in the user's cache
    )
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(("page", "index", "body"), CASES)
def test_bash_block_runs_as_written(workspace, page, index, body):
    if body.strip() in NOT_RUN:
        pytest.skip("README's test command runs this suite; .ci/run runs it as written")
    for needle, module in REQUIRES.items():
        if needle in body:
            pytest.importorskip(module, reason=f"{_rel(page)} bash block {index} needs {module} (an extra)")
    ran = workspace[2].setdefault(page, set())
    for case in CASES:  # the page's earlier blocks make the files this one uses (when deselected by -m or -k)
        earlier_page, i, earlier = case.values
        if earlier_page == page and i < index and i not in ran and earlier.strip() not in NOT_RUN:
            assert _run(workspace, page, earlier).returncode == 0, f"{_rel(page)} bash block {i} failed"
            ran.add(i)
    res = _run(workspace, page, body)
    ran.add(index)
    assert res.returncode == 0, (
        f"{_rel(page)} bash block {index} exited {res.returncode}:\n{body}\n"
        f"--- stdout (tail) ---\n{res.stdout[-3000:]}\n--- stderr (tail) ---\n{res.stderr[-3000:]}"
    )


@pytest.mark.parametrize(("page", "command", "line"), ERRORS)
def test_error_example_fails_with_the_line_shown(workspace, page, command, line):
    """Runs after the page's bash blocks (same scratch copy): the command fails with exactly that line."""
    ran = workspace[2].setdefault(page, set())
    for case in CASES:  # the page's blocks make the files its error examples use (when not run already)
        _, index, body = case.values
        if case.values[0] == page and index not in ran and not case.marks and body.strip() not in NOT_RUN:
            assert _run(workspace, page, body).returncode == 0, f"{_rel(page)} bash block {index} failed"
            ran.add(index)
    res = _run(workspace, page, command, timeout=120)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("rs-onnx: error:")]
    assert res.returncode != 0 and errors == [line], (res.returncode, res.stderr[-2000:])


def test_blocks_are_found_and_every_page_is_collected():
    """The extraction itself: a page's bash blocks are found (an unclosed or indented fence would hide them)."""
    sample = (
        "x\n```bash\necho a\n```\n\n```text\n$ rs-onnx certify m d\nrs-onnx: error: bad\n```\n```bash\necho b\n```\n"
    )
    assert [b for b in blocks(sample) if b[0] == "bash"] == [("bash", "echo a\n"), ("bash", "echo b\n")]
    assert error_examples(sample) == [("rs-onnx certify m d", "rs-onnx: error: bad")]
    assert ROOT / "README.md" in PAGES and any(p.name == "getting-started.md" for p in PAGES)
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        opened = sum(1 for line in text.splitlines() if line.startswith("```"))
        assert opened % 2 == 0, f"{_rel(page)}: an unclosed ``` fence"
        indented = [ln for ln in text.splitlines() if re.match(r"^\s+```bash", ln)]
        assert not indented, f"{_rel(page)}: an indented ```bash block would not be run: {indented}"


def test_pip_install_in_the_docs_names_declared_extras():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for page in PAGES:
        for named in re.findall(r'pip install "?\.\[([\w,-]+)\]', page.read_text(encoding="utf-8")):
            assert set(named.split(",")) <= extras, f"{_rel(page)}: pip install .[{named}]: not in pyproject.toml"


def test_site_builds_and_its_home_page_renders(tmp_path):
    """The MkDocs site builds, and headless Chromium renders its home page (not a blank page).

    `RS_ONNX_SITE_SHOT=docs/site-home.png` keeps the screenshot (that is how docs/site-home.png is made).
    .ci/run builds the site with --strict (every nav page present, every link resolved); this test does not,
    so that it runs on a branch where some pages of the nav are still being written.
    """
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocs_click"):
        pytest.importorskip(module, reason=f'{module} is not installed (pip install ".[docs]")')
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    home = site / "index.html"
    assert "Where to go next" in home.read_text(encoding="utf-8")
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "certify_many" in api and "Sentinel" not in (site / "cli" / "index.html").read_text(encoding="utf-8")
    png = tmp_path / "home.png"
    shot = subprocess.run(
        [
            *headless_chromium(tmp_path / "profile"),
            "--virtual-time-budget=5000",
            "--window-size=1280,900",
            f"--screenshot={png}",
            home.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000  # a blank page compresses to a few KB
    keep = os.environ.get("RS_ONNX_SITE_SHOT")
    if keep:
        shutil.copyfile(png, keep)


def test_the_scratch_copy_leaves_out_what_earlier_runs_wrote():
    """README's quick start, run first in the same checkout (as .ci/run and a newcomer do), leaves
    rs-onnx-default-certify.tsv and its meta.json: the copy the pages run in must not hold them (README's
    own quick start would then refuse to overwrite them), and the repository itself tracks no such file."""
    names = ["rs-onnx-default-certify.tsv", "rs-onnx-default-certify.tsv.meta.json", "mine.html", "a.tsv.part"]
    assert set(IGNORE(str(ROOT), [*names, "README.md", "report.png"])) == set(names)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    assert not [f for f in tracked.splitlines() if shutil.ignore_patterns(*RUN_OUTPUTS)(".", [Path(f).name])]
