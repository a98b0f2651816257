"""The GPU check's dry run (``bash benchmarks/gpu_check.sh OUT --dry-run``): the whole check on the CPU, so
that it cannot rot between the rare sessions that are lent a GPU."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = (
    "facts",
    "shape_changes",
    "device_noise",
    "certify_resnet110",
    "torch_resnet110",
    "certify_resnet50",
    "torch_resnet50",
    "correctness",
)


def _check(out: Path, *extra: str) -> dict:
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text())


def test_gpu_check_dry_run_runs_every_measurement_on_cpu(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "gpu"
    res = _check(out, "--skip", "correctness")
    assert res["dry_run"] and list(k for k in res if k in STEPS) == list(STEPS)
    assert res["facts"]["session_providers"][0] == "CPUExecutionProvider" and "tensorrt" in res["facts"]
    algos = res["shape_changes"]["algos"]
    assert set(algos) == {"onnxruntime default", "EXHAUSTIVE", "HEURISTIC", "DEFAULT"}
    assert all(v["steady_seconds"] > 0 for v in algos.values())
    noise = res["device_noise"]
    assert noise["cuda_graph_with_device_noise_refused"] and len(noise["cases"]) == 2
    assert all(c["law_ok"] for c in noise["cases"].values())  # the KS code path (CPU noise in a dry run)
    modes = res["certify_resnet110"]["modes"]
    assert modes["cuda graph"] == {"skipped": "dry run: CUDA only"}
    host = [m for k, m in modes.items() if k.startswith("host")]
    assert len(host) == 3 and all(m["samples_per_s"] > 0 for m in host)
    assert len({(m["predict"], m["nA"]) for m in host}) == 1  # same seed, same noise: same counts in every host mode
    assert res["certify_resnet110"]["ceilings"]["fp32"]["tflops"] > 0
    assert res["torch_resnet110"]["loops"]["eager fp32"]["samples_per_s"] > 0
    assert res["correctness"] == {"skipped": "--skip"} and len(res["targets"]) == 2
    report = (out / "GPU.md").read_text()
    assert "Dry run on the CPU" in report and "## Shape changes" in report and "## Device noise" in report


def test_gpu_check_skips_the_tail_when_its_budget_is_spent(tmp_path):
    res = _check(tmp_path / "gpu", "--budget", "1", "--skip", "correctness")
    assert res["facts"].get("device") == "cpu" or res["facts"] == {"skipped": "out of budget"}
    assert res["certify_resnet50"] == {"skipped": "out of budget"}
    assert json.loads((tmp_path / "gpu" / "gpu_check.json").read_text())["budget_seconds"] == 1


@pytest.mark.slow
def test_gpu_check_dry_run_with_the_gpu_tests(tmp_path):
    pytest.importorskip("torch")
    res = _check(tmp_path / "gpu", "--skip", "certify_resnet50", "--skip", "torch_resnet50")
    tests = res["correctness"]["tests"]
    assert res["correctness"]["returncode"] == 0 and len(tests) >= 7
    assert {t["outcome"] for t in tests.values()} <= {"passed", "skipped"}
    assert "test_cpu_and_device_certify_alike" in {n for n, t in tests.items() if t["outcome"] == "passed"}
