"""The benchmark command on a tiny setting: it runs, and writes the JSON and Markdown it promises (to a tmp dir)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("torch")


def test_benchmark_command_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--models", "digits_cnn", "--n", "300",
           "--rounds", "2", "--batch", "64", "--scaling-ns", "200", "600", "--threads-n", "300",
           "--thread-counts", "0", "1", "--threads-rounds", "1", "--out-dir", str(out),
           "--work-dir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["device"] == "cpu" and res["machine"]["cores"] >= 1 and "onnxruntime" in res["machine"]["versions"]
    assert res["command"].startswith("python -m benchmarks.run --quick")
    (m,) = res["models"]
    assert m["model"] == "digits_cnn" and m["batch"] == 64 and m["n"] == 300 and m["n0"] == 100
    for name in ("ceiling", "ceiling_ort_defaults", "rs", "pytorch"):
        s = m["samples_per_second"][name]
        assert len(s["all"]) == 4 and s["median"] > 0
    for key in ("rs/ceiling", "rs/pytorch", "rs/ceiling_ort_defaults"):
        assert m["ratios"][key]["median"] > 0
    probe = m["pytorch_batch_probe"]  # PyTorch at its own fastest batch: timed too when it differs from 64
    assert str(probe["batch_size"]) in probe["seconds_per_sample"]
    assert (probe["batch_size"] == 64) != ("pytorch_best" in m["samples_per_second"])
    assert m["macs_per_sample"] == 1_116_416  # the bundled digits CNN: counted from its Conv and Gemm nodes
    sc = res["scaling"]
    assert [r["n"] for r in sc["rows"]] == [200, 600] and sc["rows"][0]["peak_rss_mib"] > 0
    assert {"seconds_per_sample", "r2", "log_log_slope"} <= set(sc["fit"])
    assert [t["noise_threads"] for t in sc["threads"]] == [0, 1]
    md = (out / "RESULTS.md").read_text()
    assert md.startswith("# rs-onnx benchmarks")
    assert "| model | params | batch | n |" in md and "| digits_cnn |" in md
    assert "PyTorch at its own fastest batch size" in md and "| MMAC per sample |" in md
    assert "## Scaling with n" in md and "## Machine" in md and "python -m benchmarks.run" in md
    assert ("## GPU: not measured" in md) and "python -m benchmarks.run --device cuda" in md
    assert not (ROOT / "benchmarks" / "RESULTS.md").exists() or (ROOT / "benchmarks" / "RESULTS.md").read_text() != md
