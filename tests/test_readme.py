"""The README holds: its Python example runs as written, its presets table is the presets' values, the
report screenshot it shows exists, and the packaging metadata it relies on is there."""

import re
from pathlib import Path

import pytest
import tomllib
import yaml

from rs_onnx.analysis import max_certifiable_radius
from rs_onnx.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    example = next(b for b in blocks if "SmoothedClassifier(" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {"__name__": "__readme__"})
    predict, label, radius, p_a_lower = capsys.readouterr().out.split()
    r_max = max_certifiable_radius(0.25, 10_000, 1e-3)  # the example's sigma, n and alpha
    assert int(predict) == int(label) and 0 < float(radius) <= r_max * (1 + 1e-9) and 0.5 < float(p_a_lower) < 1


def test_presets_table_lists_the_preset_values():
    section = README.split("## Presets", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in PRESETS:
            rows[cells[0]] = (
                float(cells[1]),
                [float(v) for v in cells[2].split(",")],
                [float(v) for v in cells[3].split(",")],
            )
    assert set(rows) == set(PRESETS)
    for name, (scale, mean, std) in rows.items():
        assert scale == pytest.approx(PRESETS[name]["scale"])
        assert mean == pytest.approx(list(PRESETS[name]["mean"]))
        assert std == pytest.approx(list(PRESETS[name]["std"]))


def test_report_screenshot_in_the_readme_is_a_small_png():
    m = re.search(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", README)
    assert m, "the README shows no report screenshot"
    png = ROOT / m.group(1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 400_000


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
