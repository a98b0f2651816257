"""README.md and the docs hold: README stays short, with its two commands and the "your model" recipe near the
top; the API page's Python example runs as written; the presets table is the presets' values; the report
screenshot the docs show exists; and the packaging metadata they rely on is there. (Every ```bash block of
README and docs/ is run by tests/test_docs.py.)"""

import re
from pathlib import Path

import pytest
import tomllib
import yaml

from rs_onnx.analysis import max_certifiable_radius
from rs_onnx.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {p.relative_to(ROOT / "docs").as_posix(): p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md")}


def test_readme_is_short_and_opens_with_the_commands_and_the_recipe():
    lines = README.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the details belong in docs/"
    # the two commands CI and newcomers run, exactly as .ci/run expects them
    assert "```bash\npip install . && rs-onnx certify\n```" in README
    assert '```bash\npip install ".[test]" && python -m pytest -q\n```' in README
    # the "your model" recipe, inspect -> certify -> report, within the first 80 lines
    head = "\n".join(lines[:80])
    recipe = re.search(r"```bash\n(rs-onnx inspect .*?)```", head, re.DOTALL)
    assert recipe, "no `rs-onnx inspect` recipe in README's first 80 lines"
    steps = [ln.split()[1] for ln in recipe.group(1).splitlines() if ln.startswith("rs-onnx ")]
    assert steps == ["inspect", "certify", "report"]


def test_readme_links_every_page_in_the_nav_that_it_names():
    """README's links into docs/ name pages that mkdocs.yml lists (a renamed page breaks neither silently)."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    linked = re.findall(r"\]\(docs/([^)#]+\.md)", README)
    assert len(set(linked)) >= 15
    for page in linked:
        assert re.search(rf"(^|[\s:]){re.escape(page)}\s*$", nav, re.MULTILINE), (
            f"README links docs/{page}, not in the nav"
        )


def test_api_page_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOCS["api.md"], re.DOTALL)
    example = next(b for b in blocks if "SmoothedClassifier(" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/api.md", "exec"), {"__name__": "__docs__"})
    predict, label, radius, p_a_lower = capsys.readouterr().out.split()
    r_max = max_certifiable_radius(0.25, 10_000, 1e-3)  # the example's sigma, n and alpha
    assert int(predict) == int(label) and 0 < float(radius) <= r_max * (1 + 1e-9) and 0.5 < float(p_a_lower) < 1


def _presets_tables():
    """{page: {preset: (scale, mean, std)}} for every docs page with a '## Presets' section."""
    tables = {}
    for page, text in DOCS.items():
        if "\n## Presets" not in text:
            continue
        section = text.split("\n## Presets", 1)[1].split("\n## ", 1)[0]
        rows = {}
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4 and cells[0] in PRESETS:
                rows[cells[0]] = (
                    float(cells[1]),
                    [float(v) for v in cells[2].split(",")],
                    [float(v) for v in cells[3].split(",")],
                )
        tables[page] = rows
    return tables


def test_presets_tables_list_the_preset_values():
    tables = _presets_tables()
    assert "cli.md" in tables, "the CLI reference lost its Presets section"
    for page, rows in tables.items():
        assert set(rows) == set(PRESETS), page
        for name, (scale, mean, std) in rows.items():
            assert scale == pytest.approx(PRESETS[name]["scale"]), (page, name)
            assert mean == pytest.approx(list(PRESETS[name]["mean"])), (page, name)
            assert std == pytest.approx(list(PRESETS[name]["std"])), (page, name)


def test_screenshots_in_the_docs_are_small_pngs():
    shown = {m for text in DOCS.values() for m in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)}
    assert "report.png" in shown, "no page shows the report screenshot"
    for name in shown:
        png = ROOT / "docs" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 400_000, name


def test_packaging_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # a plain SPDX string for `license` needs setuptools >= 77 (PEP 639); older ones reject it
    assert meta["project"]["license"] == "MIT"
    bound = next(r for r in meta["build-system"]["requires"] if r.startswith("setuptools"))
    assert tuple(int(x) for x in re.search(r">=\s*([\d.]+)", bound).group(1).split(".")[:1]) >= (77,)
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    from rs_onnx import __version__

    assert cff["cff-version"].startswith("1.2") and cff["title"] and cff["version"] == __version__
    assert any("Cohen" in str(r.get("authors")) for r in cff.get("references", []))
    # the docs extra builds the site that .ci/run checks with mkdocs build --strict
    docs = " ".join(meta["project"]["optional-dependencies"]["docs"])
    assert all(p in docs for p in ("mkdocs", "mkdocs-material", "mkdocstrings", "mkdocs-click"))
