"""The GPU check's dry run (``bash benchmarks/gpu_check.sh OUT --dry-run``): the whole check on the CPU, so
that it cannot rot between the rare sessions that are lent a GPU."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_proves_checks_and_measures_on_cpu(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "gpu"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run", "--budget", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["dry_run"] and res["provider"]["session_providers"][0] == "CPUExecutionProvider"
    tests = res["correctness"]["tests"]
    assert res["correctness"]["returncode"] == 0 and len(tests) >= 7
    assert {t["outcome"] for t in tests.values()} <= {"passed", "skipped"}
    ran = {name for name, t in tests.items() if t["outcome"] == "passed"}
    assert {
        "test_cpu_and_device_certify_alike",
        "test_out_of_memory_halves_and_gives_the_same_counts",
        "test_device_noise_is_gaussian_and_fresh_per_phase",
    } <= ran
    assert {m["test"] for m in res["correctness"]["measured"]} >= {"provider", "cpu_vs_device", "out_of_memory"}
    (model,) = res["speed"]["models"]
    assert model["samples_per_second"]["rs"]["median"] > 0 and "ceiling" in model["samples_per_second"]
    (target,) = res["targets"]
    assert target["seconds_per_image_at_100k"]["host"] > 0
    report = (out / "GPU.md").read_text()
    assert "## 1. Provider" in report and "## Targets" in report and "test_fp16_is_recorded_as_fp16 | skipped" in report
