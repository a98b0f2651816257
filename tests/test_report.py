"""`rs-onnx report`: a self-contained HTML file (provenance, curves, tables, warnings), rendered in a real
browser (headless Chromium) when one is installed."""

import json
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rs_onnx import analysis
from rs_onnx.cli import main
from rs_onnx.report import render, run_warnings
from tests.conftest import headless_chromium
from tests.conftest import invoke_cli as invoke
from tests.onnx_models import linear_model, save

EVIL = '<script>alert("x")</script>\n&amp;'


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished certify run and a predict run of a 3-class linear model on 30 images."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 16)).astype(np.float32)
    model = save(linear_model(w, np.zeros(3, np.float32), input_shape=(1, 4, 4)), tmp / "lin.onnx")
    images = rng.integers(0, 256, size=(30, 4, 4), dtype=np.uint8)
    labels = (images.reshape(30, -1).astype(np.float32) / 255 @ w.T).argmax(1).astype(np.uint8)
    np.savez(tmp / "d.npz", images=images, labels=labels)
    cert, pred = tmp / "cert.tsv", tmp / "pred.tsv"
    args = [str(model), str(tmp / "d.npz"), "--sigma", "0.25", "--seed", "0", "--batch-size", "200"]
    assert invoke(["-q", "certify", *args, "--n0", "20", "--n", "400", "--out", str(cert)]).exit_code == 0
    assert invoke(["-q", "predict", *args, "--n", "100", "--out", str(pred)]).exit_code == 0
    return tmp, cert, pred


def _external_references(text: str) -> list[str]:
    """Anything that would make a browser fetch: src/href attributes, url(), @import, scripts."""
    found = re.findall(
        r"""(?:src|href)\s*=\s*["'][^"']*|url\(|@import|<script|<link|<iframe|<img""", text, re.IGNORECASE
    )
    return found


def test_report_is_one_self_contained_file_with_every_section(runs):
    tmp, cert, pred = runs
    out = tmp / "report.html"
    res = invoke(["report", str(cert), str(pred), "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert _external_references(text) == []
    assert re.findall(r"https?://[^\s\"'<>]+", text) == ["http://www.w3.org/2000/svg"] * text.count("<svg")
    meta = json.loads((tmp / "cert.tsv.meta.json").read_text())
    for needed in (
        meta["model"]["sha256"],
        "lin.onnx",
        meta["versions"]["onnxruntime"],
        "CPUExecutionProvider",
        "seed 0",
        "certify",
        "Certified accuracy per class",
        "Distribution of certified radii",
        "Slowest examples",
        "Warnings",
        "largest certifiable radius",
        "ACR",
        "abstain",
        "<svg",
    ):
        assert needed in text, needed
    # the table's numbers are the analysis module's
    res_ = analysis.read_run(cert)
    acc = analysis.certified_accuracy(res_, [0.0, 0.25])
    low = [analysis.lower_percent(v) for v in analysis.certified_accuracy_lower(res_, [0.0, 0.25])]
    assert f"<td>{100 * acc[0]:.1f} (≥ {low[0]})</td><td>{100 * acc[1]:.1f} (≥ {low[1]})</td>" in text


def test_report_escapes_untrusted_strings_and_shows_every_warning(runs, tmp_path):
    tmp, cert, _ = runs
    bad = tmp_path / "bad.tsv"
    lines = cert.read_text().splitlines()
    head = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    for r in rows[:3]:
        r[head.index("nonfinite")] = "7"
    bad.write_text("\n".join(["\t".join(head)] + ["\t".join(r) for r in rows]) + "\n")
    meta = json.loads((tmp / "cert.tsv.meta.json").read_text())
    meta.update(status="interrupted", command=["rs-onnx", EVIL], warnings=[f"model {EVIL}: falling back"])
    meta["model"]["path"] = f"/x/{EVIL}.onnx"
    (tmp_path / "bad.tsv.meta.json").write_text(json.dumps(meta))
    text = render({EVIL: analysis.read_run(bad)})
    assert "<script" not in text and EVIL not in text and "&lt;script&gt;" in text
    warnings = run_warnings(analysis.read_run(bad))
    assert any("interrupted" in w for w in warnings) and any("21 noisy samples gave NaN" in w for w in warnings)
    assert any("falling back" in w for w in warnings)
    assert text.count("class='warn'") == len(warnings)


def test_report_flags_accuracy_near_chance_and_missing_provenance(tmp_path):
    path = tmp_path / "cohen.tsv"
    rng = np.random.default_rng(1)
    rows = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    for i in range(50):
        label, pred = int(rng.integers(10)), int(rng.integers(10))
        rows.append(f"{i}\t{label}\t{pred}\t{0.3 if pred == label else 0.0}\t{int(pred == label)}\t0:00:01.5")
    path.write_text("\n".join(rows) + "\n")
    warnings = run_warnings(analysis.read_run(path))
    assert any("no meta.json" in w for w in warnings) and any("near chance" in w for w in warnings)


def test_report_refuses_to_overwrite_or_clobber_an_input(runs, tmp_path, capsys):
    _, cert, _ = runs
    existing = tmp_path / "r.html"
    existing.write_text("keep me")
    for target, needle in [
        (existing, "exists"),
        (cert, "is one of the inputs"),
        (Path(str(cert) + ".meta.json"), "is one of the inputs"),
    ]:
        before = Path(target).read_bytes()
        with pytest.raises(SystemExit) as e:
            main(["report", str(cert), "-o", str(target)])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith("rs-onnx: error:") and needle in err and err.count("\n") == 1
        assert Path(target).read_bytes() == before
    assert invoke(["report", str(cert), "-o", str(existing), "--overwrite"]).exit_code == 0
    assert existing.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "missing.tsv"), "-o", str(tmp_path / "new.html")])
    assert e.value.code == 1 and not (tmp_path / "new.html").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_to_stdout(runs):
    _, cert, _ = runs
    res = invoke(["report", str(cert), "-o", "-"])
    assert res.exit_code == 0 and res.stdout.startswith("<!DOCTYPE html>") and res.stdout.rstrip().endswith("</html>")


def test_report_renders_in_headless_chromium(runs, tmp_path):
    flags = headless_chromium(tmp_path / "profile")
    _, cert, pred = runs
    html = tmp_path / "report.html"
    assert invoke(["report", str(cert), str(pred), "-o", str(html)]).exit_code == 0
    dom = subprocess.run(
        [*flags, "--dump-dom", html.as_uri()], check=False, capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Certified accuracy per class" in dom.stdout and "<polyline" in dom.stdout
    png = tmp_path / "report.png"
    shot = subprocess.run(
        [*flags, "--window-size=1200,1600", f"--screenshot={png}", html.as_uri()],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 1600) and len(data) > 20_000  # a blank page compresses to a few KB


def test_warnings_logged_by_a_run_are_recorded_and_reported(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 16)).astype(np.float32)
    model = save(linear_model(w, np.zeros(3, np.float32), input_shape=(1, 4, 4)), tmp_path / "m.onnx")
    np.savez(
        tmp_path / "d.npz", images=rng.integers(0, 256, size=(4, 4, 4), dtype=np.uint8), labels=np.zeros(4, np.uint8)
    )
    out = tmp_path / "a.tsv"
    res = invoke(
        [
            "-q",
            "certify",
            str(model),
            str(tmp_path / "d.npz"),
            "--sigma",
            "0.25",
            "--n0",
            "10",
            "--n",
            "50",
            "--alpha",
            "0.6",
            "--seed",
            "0",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "a.tsv.meta.json").read_text())
    assert meta["status"] == "complete" and any("alpha=0.6" in w for w in meta["warnings"])
    text = render({"a": analysis.read_run(out)})
    assert "alpha=0.6: each answer may be wrong" in text
