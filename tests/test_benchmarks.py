"""The benchmark command on a tiny setting: it runs, and writes the JSON and Markdown it promises (to a tmp dir)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # the whole benchmark command on a tiny budget
def test_benchmark_command_writes_json_and_markdown(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--quick",
        "--models",
        "digits_cnn",
        "--n",
        "300",
        "--rounds",
        "2",
        "--batch",
        "64",
        "--scaling-ns",
        "200",
        "600",
        "--threads-n",
        "300",
        "--thread-counts",
        "0",
        "1",
        "--threads-rounds",
        "1",
        "--out-dir",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
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
    assert "## GPU\n" in md and "benchmarks/gpu_check.sh" in md
    assert not (ROOT / "benchmarks" / "RESULTS.md").exists() or (ROOT / "benchmarks" / "RESULTS.md").read_text() != md


def _model(name, n, rates, ceiling):
    """A results.json model entry as a GPU run writes it (samples/s medians by method)."""
    sps = {k: {"median": v, "min": v, "max": v, "all": [v]} for k, v in rates.items()}
    ratios = {
        f"{k}/ceiling": {"median": v / ceiling, "min": v / ceiling, "max": v / ceiling}
        for k, v in rates.items()
        if k.startswith("rs")
    }
    sps["ceiling"] = {"median": ceiling, "min": ceiling, "max": ceiling, "all": [ceiling]}
    return {
        "model": name,
        "params": 1,
        "batch": 1024,
        "n": n,
        "rounds": 1,
        "macs_per_sample": 10**6,
        "samples_per_second": sps,
        "ratios": ratios,
        "variant_errors": {"cuda-graph": "refused"},
        "seconds_per_image": {k: (100 + n) / v for k, v in rates.items()},
    }


def test_gpu_report_names_the_fastest_mode_and_compares_with_cohen():
    from benchmarks.report import markdown

    res = {
        "command": "python -m benchmarks.run --device cuda",
        "date": "today",
        "seconds": 1.0,
        "device": "cuda",
        "threads": 16,
        "pairs": 2,
        "models": [
            _model("resnet110", 100_000, {"rs": 20_000.0, "rs_fp16": 50_000.0}, 21_000.0),
            _model("resnet50", 10_000, {"rs": 2_000.0, "rs_device-noise": 2_100.0}, 2_500.0),
        ],
        "machine": {
            "cpu": "x",
            "cores": 16,
            "cores_usable": 16,
            "gpus": ["NVIDIA H100"],
            "versions": {},
            "providers": ["CUDAExecutionProvider"],
            "git": None,
        },
    }
    md = markdown(res)
    assert "benchmarks/gpu_check.sh" not in md and "Targets (CPU)" not in md
    line110 = next(x for x in md.splitlines() if x.startswith("- resnet110: rs / ceiling"))
    assert "0.952 (met)" in line110 and "host 5, fp16 2" in line110 and "fastest: fp16" in line110
    assert "7.49x faster than Cohen et al.'s ~15 s" in line110  # (100 + 100,000) / 50,000 = 2.002 s
    line50 = next(x for x in md.splitlines() if x.startswith("- resnet50: rs / ceiling"))
    assert "0.8 (NOT met)" in line50 and "fastest: device-noise" in line50 and "~150 s" in line50
    assert "| resnet50 | cuda-graph | not run: refused |" in md
