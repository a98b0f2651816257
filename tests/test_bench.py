"""``rs-onnx bench``: the ceiling and CERTIFY side by side (issue 29), and the benchmarks' one batch check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rs_onnx import bench as bench_mod
from rs_onnx.errors import ConfigError
from tests.conftest import invoke_cli

KEYS = ("ceiling_samples_per_s", "certify_samples_per_s", "ratio", "seconds_per_image")


def test_bench_json_of_the_bundled_model(monkeypatch):
    res = invoke_cli(["bench", "--device", "cpu", "--n", "3000", "--seconds", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert all(out[k] > 0 for k in KEYS)
    assert out["model"].endswith("digits_cnn.onnx") and out["device"] == "cpu"
    assert out["best_batch"] == out["batch_size"] and out["batch_probe"]["batch_size"] == out["batch_size"]
    assert out["seconds_per_image"] == pytest.approx((out["n0"] + out["n"]) / out["certify_samples_per_s"])
    ratios = np.asarray(out["all"]["certify"]) / np.asarray(out["all"]["ceiling"])
    assert out["ratio"] == pytest.approx(float(np.median(ratios)))
    assert out["n_measured"] <= out["n"] and out["extrapolated"] == (out["n_measured"] < out["n"])
    assert out["batch_check"]["result"] == "ok" and out["options"]["float_type"] == "fp32"


def test_bench_table_with_a_given_batch_and_a_model_without_data(linear):
    model, _, _ = linear
    res = invoke_cli(["bench", model, "--device", "cpu", "--batch-size", "32", "--n", "500", "--seconds", "0.5"])
    assert res.exit_code == 0, res.output
    assert "batch size 32 (given)" in res.stdout and "of the ceiling" in res.stdout
    assert "seconds per image at n = 500" in res.stdout


def test_bench_counts_the_check_once(bundled_digits, monkeypatch):
    from rs_onnx import checks

    calls = []
    original = checks.check_batch_equivalence

    def counted(*a, **k):
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(checks, "check_batch_equivalence", counted)
    cfg = bench_mod.bench_config({"device": "cpu", "batch_size": "64", "n": 1000})
    res = bench_mod.bench(cfg, seconds=0.5, rounds=3)
    assert len(calls) == 1 and res["batch_size"] == 64 and res["best_batch"] is None


def test_bench_refusals(capsys):
    from rs_onnx.cli import main

    with pytest.raises(ConfigError, match="DATA given without MODEL"):
        bench_mod.bench_config({"data": "x.npz"})
    with pytest.raises(ConfigError, match="expected a positive integer or auto"):
        bench_mod.bench_config({"batch_size": "many"})
    with pytest.raises(ConfigError, match="needs|captured at"):
        bench_mod.bench(bench_mod.bench_config({"cuda_graph": True}))
    with pytest.raises(SystemExit) as e:
        main(["bench", "--device", "cpu", "--cuda-graph"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and err[0].startswith("rs-onnx: error: bench --cuda-graph")


def test_the_benchmarks_check_once_per_classifier(bundled_digits, monkeypatch):
    from benchmarks import methods
    from rs_onnx import OnnxClassifier, checks

    calls = []
    original = checks.check_batch_equivalence
    monkeypatch.setattr(checks, "check_batch_equivalence", lambda *a, **k: calls.append(1) or original(*a, **k))
    clf = OnnxClassifier(bundled_digits[0], device="cpu")
    image = np.full((28, 28), 0.5, np.float32)
    for _ in range(3):
        methods._certify(clf, image, 300, 100, 1)
    assert len(calls) == 1


@pytest.mark.slow
def test_the_bundled_model_reaches_half_its_ceiling_on_this_cpu():
    """Issue 29's bar: rs-onnx's CERTIFY at >= 0.5 of the bare session.run loop for the digits model."""
    cfg = bench_mod.bench_config({"device": "cpu"})
    res = bench_mod.bench(cfg, seconds=8, rounds=3)
    assert res["ratio"] >= 0.5, res


def test_bench_reads_certifys_yaml_keys_and_flags_win(tmp_path, linear):
    model, _, _ = linear
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"model: {model}\nbatch_size: 16\ncudnn_algo_search: heuristic\nn: 700\n")
    cfg = bench_mod.bench_config({"config_path": str(cfg_file), "batch_size": "32"})
    assert cfg.model == model and cfg.batch_size == 32 and cfg.cudnn_algo_search == "HEURISTIC" and cfg.n == 700
    with pytest.raises(ConfigError, match="unknown key"):
        (tmp_path / "bad.yaml").write_text("batch: 3\n")
        bench_mod.bench_config({"config_path": str(tmp_path / "bad.yaml")})
