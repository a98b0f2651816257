"""Print one of README.md's commands that CI runs exactly as written: ``quickstart`` (install and first run)
or ``tests`` (install the test extra and run the suite).

A command is the fenced code block that follows a marker line ``<!-- ci: NAME -->`` in README.md. Without
that marker, the first ```bash block whose first line starts with ``pip install .`` (quickstart) or
``pip install ".[test]"`` (tests). Exits 1 when README.md has no such block, so CI cannot pass without it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FALLBACK = {"quickstart": r'pip install \.(\s|$)', "tests": r'pip install "\.\[test\]"'}


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(the line before the opening fence, its info string, its body) of every fenced block."""
    lines, out, k = text.splitlines(), [], 0
    while k < len(lines):
        if lines[k].startswith("```"):
            end = next((j for j in range(k + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append((lines[k - 1] if k else "", lines[k][3:].strip(), "\n".join(lines[k + 1 : end])))
            k = end + 1
        else:
            k += 1
    return out


def command(name: str, text: str) -> str:
    every = blocks(text)
    for before, _, body in every:
        if before.strip() == f"<!-- ci: {name} -->":
            return body.strip()
    for _, info, body in every:
        if info == "bash" and re.match(FALLBACK[name], body.strip()):
            return body.strip()
    raise SystemExit(f"README.md has no {name!r} command (a ```bash block after <!-- ci: {name} -->)")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in FALLBACK:
        raise SystemExit(f"usage: {sys.argv[0]} {'|'.join(FALLBACK)}")
    print(command(sys.argv[1], (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")))
