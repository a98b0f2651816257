"""The command line, end to end on tiny ONNX models: outputs, reproducibility and every error path."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from rs_onnx.cli import cli, main
from tests.conftest import invoke_cli as run
from tests.onnx_models import linear_model, save


def read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_certify_writes_cohen_columns_and_meta(linear):
    model, data, tmp = linear
    out = tmp / "r.tsv"
    res = run(
        [
            "-q",
            "certify",
            model,
            data,
            "--sigma",
            "0.25",
            "--n0",
            "50",
            "--n",
            "500",
            "--alpha",
            "0.001",
            "--batch-size",
            "128",
            "--seed",
            "0",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    header = out.read_text().splitlines()[0].split("\t")
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert {"pA_lower", "nA", "n"} <= set(header)
    rows = read_tsv(out)
    assert [int(r["idx"]) for r in rows] == list(range(12))
    for r in rows:
        assert (int(r["predict"]) == -1) == (float(r["radius"]) == 0.0) or float(r["pA_lower"]) >= 0.5
    meta = json.loads((tmp / "r.tsv.meta.json").read_text())
    assert meta["status"] == "complete" and meta["providers"][0] == "CPUExecutionProvider"
    assert meta["config"]["sigma"] == 0.25 and len(meta["model"]["sha256"]) == 64
    assert "certified accuracy" in res.output


def _strip_time(path):
    return [line.split("\t")[:5] + line.split("\t")[6:] for line in path.read_text().splitlines()]


def test_tsv_is_identical_across_batch_sizes_threads_and_splits(linear):
    model, data, tmp = linear
    base = ["-q", "certify", model, data, "--sigma", "0.5", "--n0", "20", "--n", "300", "--seed", "3"]
    a, b, c1, c2 = (tmp / f"{k}.tsv" for k in "ab12")
    assert run(base + ["--batch-size", "1000", "--noise-threads", "0", "--out", str(a)]).exit_code == 0
    assert run(base + ["--batch-size", "7", "--noise-threads", "2", "--out", str(b)]).exit_code == 0
    assert run(base + ["--end", "5", "--out", str(c1)]).exit_code == 0
    assert run(base + ["--start", "5", "--out", str(c2)]).exit_code == 0
    assert _strip_time(a) == _strip_time(b)
    assert _strip_time(a) == _strip_time(c1) + _strip_time(c2)[1:]


def test_predict_and_stdout_output(linear):
    model, data, _ = linear
    res = CliRunner().invoke(cli, ["-q", "predict", model, data, "--sigma", "0.1", "--n", "200", "--seed", "1"])
    assert res.exit_code == 0
    lines = res.stdout.strip().splitlines()
    assert lines[0].split("\t")[:3] == ["idx", "label", "predict"] and len(lines) == 13


def test_resume_continues_and_refuses_changed_config(linear):
    model, data, tmp = linear
    out = tmp / "r.tsv"
    base = [
        "-q",
        "certify",
        model,
        data,
        "--sigma",
        "0.5",
        "--n0",
        "20",
        "--n",
        "300",
        "--seed",
        "3",
        "--out",
        str(out),
    ]
    assert run(base + ["--end", "4"]).exit_code == 0
    full = tmp / "full.tsv"
    assert run(base[:-1] + [str(full)]).exit_code == 0
    # Simulate a crash in the middle of a row: the cut line is dropped and recomputed.
    out.write_text(out.read_text() + "4\t1\t")
    assert run(base + ["--resume"]).exit_code == 0
    assert _strip_time(out) == _strip_time(full)
    res = CliRunner().invoke(cli, base[:5] + ["0.25"] + base[6:] + ["--resume"])
    assert res.exit_code == 1 and "different sigma" in str(res.exception)


@pytest.fixture()
def bad_inputs(linear, tmp_path):
    model, data, tmp = linear
    (tmp / "trunc.onnx").write_bytes(open(model, "rb").read()[:40])
    (tmp / "text.onnx").write_text("not a model")
    np.savez(tmp / "keys.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2, np.uint8))
    np.savez(tmp / "shape.npz", images=np.zeros((2, 5, 5), np.uint8), labels=np.zeros(2, np.uint8))
    nan = np.zeros((2, 1, 4, 4), np.float32)
    nan[1, 0, 0, 0] = np.nan
    np.savez(tmp / "nan.npz", images=nan, labels=np.zeros(2, np.uint8))
    np.savez(tmp / "label.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 7], np.uint8))
    return model, data, tmp


@pytest.mark.parametrize(
    "args,expected",
    [
        (["{tmp}/missing.onnx", "{data}"], "missing.onnx"),
        (["{tmp}/trunc.onnx", "{data}"], "trunc.onnx"),
        (["{tmp}/text.onnx", "{data}"], "text.onnx"),
        (["{model}", "{tmp}/keys.npz"], "expected 'images' and 'labels'"),
        (["{model}", "{tmp}/shape.npz"], "do not fit the model input"),
        (["{model}", "{tmp}/nan.npz"], "NaN"),
        (["{model}", "{tmp}/label.npz"], "labels range over [0, 7]"),
        (["{model}", "{tmp}/none.npz"], "not found"),
        (["{model}", "{data}", "--sigma", "0"], "sigma"),
        (["{model}", "{data}", "--sigma", "-1"], "sigma"),
        (["{model}", "{data}", "--n", "0"], "n=0"),
        (["{model}", "{data}", "--n0", "0"], "n0=0"),
        (["{model}", "{data}", "--alpha", "1.5"], "alpha"),
        (["{model}", "{data}", "--alpha", "0"], "alpha"),
        (["{model}", "{data}", "--batch-size", "0"], "batch_size"),
        (["{model}", "{data}", "--device", "cuda"], "cuda"),
        (["{model}", "{data}", "--config", "{tmp}/none.yaml"], "not found"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(bad_inputs, capsys, args, expected):
    model, data, tmp = bad_inputs
    if expected == "cuda":
        from rs_onnx.classifier import working_providers

        if "CUDAExecutionProvider" in working_providers():
            pytest.skip("a GPU works here, so --device cuda is not an error")
    args = [a.format(model=model, data=data, tmp=tmp) for a in args]
    argv = (
        ["certify", *args, "--n", "10", "--n0", "5"] if "--n" not in args and "--n0" not in args else ["certify", *args]
    )
    if "--sigma" not in args:
        argv += ["--sigma", "0.25"]
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp / "o.tsv")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert e.value.code == 1
    assert len(errors) == 1 and errors[0].startswith("rs-onnx: error:") and "Traceback" not in err, err
    assert expected.lower() in errors[0].lower(), errors[0]
    assert not (tmp / "o.tsv").exists()  # nothing left behind that looks like output


def test_debug_shows_the_traceback(bad_inputs):
    model, data, tmp = bad_inputs
    from rs_onnx.errors import RsOnnxError

    with pytest.raises(RsOnnxError):
        main(["--debug", "certify", model, data, "--sigma", "0"])


def test_version_and_doctor_list_onnxruntime_and_working_providers(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "onnxruntime" in out
    with pytest.raises(SystemExit):
        main(["doctor"])  # exits 1 where a check fails (clashing builds), still listing the providers
    doctor = capsys.readouterr().out
    assert "providers that work here: " in doctor and "CPUExecutionProvider" in doctor


def test_dump_config_prints_resolved_yaml(linear, tmp_path):
    model, data, _ = linear
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sigma: 0.5\npreset: cifar10\n")
    res = run(["certify", model, data, "--config", str(cfg), "--n", "77", "--dump-config"])
    assert "n: 77" in res.output and "sigma: 0.5" in res.output and "0.4914" in res.output


def test_default_run_certifies_the_bundled_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["-q", "certify", "--n", "300", "--skip", "100"])
    assert res.exit_code == 0, res.output
    rows = read_tsv(tmp_path / "rs-onnx-default-certify.tsv")
    assert [int(r["idx"]) for r in rows] == list(range(0, 1000, 100))
    assert sum(r["correct"] == "1" for r in rows) >= 8  # the bundled model is accurate under noise
    assert "r=0.50" in res.stdout
    meta = json.loads((tmp_path / "rs-onnx-default-certify.tsv.meta.json").read_text())
    assert meta["config"]["sigma"] == 0.25  # taken from the model's metadata


def test_several_inputs_need_fixed_values_from_the_config(tmp_path):
    from tests.onnx_models import two_input_model

    w = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    model = save(two_input_model(w), tmp_path / "two.onnx")
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([2, 2], np.uint8))
    args = [
        "-q",
        "certify",
        str(model),
        str(tmp_path / "d.npz"),
        "--input-name",
        "x",
        "--sigma",
        "0.25",
        "--n0",
        "10",
        "--n",
        "100",
        "--seed",
        "0",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "offset" in str(res.exception)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("extra_inputs:\n  offset: [0.0, 0.0, 100.0]\n")
    res = CliRunner().invoke(cli, args + ["--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert [line.split("\t")[2] for line in res.stdout.splitlines()[1:3]] == ["2", "2"]


def test_sequential_certify_uses_fewer_samples_and_stays_below_the_budget(linear):
    model, data, tmp = linear
    out = tmp / "seq.tsv"
    res = run(
        [
            "-q",
            "certify",
            model,
            data,
            "--sigma",
            "0.5",
            "--n0",
            "50",
            "--n",
            "20000",
            "--seed",
            "0",
            "--sequential",
            "--radii",
            "0.1,0.2",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    rows = read_tsv(out)
    used = [int(r["n"]) for r in rows]
    assert all(u <= 20000 for u in used) and sum(used) < 0.5 * 20000 * len(used)
    meta = json.loads((tmp / "seq.tsv.meta.json").read_text())
    assert meta["config"]["sequential"] is True and meta["config"]["radii"] == [0.1, 0.2]
    res = CliRunner().invoke(cli, ["certify", model, data, "--sigma", "0.5", "--sequential", "--bound", "best"])
    assert res.exit_code == 1 and "bound" in str(res.exception)


def test_compose_and_certify_with_a_denoiser(tmp_path):
    """An identity denoiser in front of a classifier with mean/std: same certificates as the classifier alone."""
    from tests.test_compose import denoiser

    rng = np.random.default_rng(4)
    w = rng.normal(size=(3, 16)).astype(np.float32)
    clf = save(linear_model(w, input_shape=(1, 4, 4), batch=1), tmp_path / "c.onnx")
    den = save(denoiser((1, 4, 4), sigma=0.25), tmp_path / "d.onnx")
    np.savez(tmp_path / "x.npz", images=rng.integers(0, 256, (4, 4, 4), dtype=np.uint8), labels=np.zeros(4, np.uint8))
    norm = ["--mean", "0.5", "--std", "0.2"]
    res = CliRunner().invoke(cli, ["compose", str(clf), "--denoiser", str(den), "-o", str(tmp_path / "dc.onnx"), *norm])
    assert res.exit_code == 0, res.output
    base = ["-q", "certify", "--sigma", "0.25", "--n0", "20", "--n", "300", "--seed", "0"]
    alone = CliRunner().invoke(cli, base + [str(clf), str(tmp_path / "x.npz"), *norm])
    composed = CliRunner().invoke(cli, base + [str(tmp_path / "dc.onnx"), str(tmp_path / "x.npz")])
    on_the_fly = CliRunner().invoke(cli, base + [str(clf), str(tmp_path / "x.npz"), *norm, "--denoiser", str(den)])
    cut = [[line.split("\t")[:5] for line in r.stdout.splitlines()] for r in (alone, composed, on_the_fly)]
    assert cut[0] == cut[1] == cut[2] and len(cut[0]) == 5


def test_fp16_is_recorded_and_device_noise_refused_on_cpu(linear):
    model, data, tmp = linear
    out = tmp / "h.tsv"
    res = run(
        [
            "-q",
            "certify",
            model,
            data,
            "--sigma",
            "0.25",
            "--n0",
            "10",
            "--n",
            "100",
            "--seed",
            "0",
            "--fp16",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp / "h.tsv.meta.json").read_text())["model"]["signature"]["precision"] == "fp16"
    res = CliRunner().invoke(cli, ["certify", model, data, "--sigma", "0.25", "--device", "cpu", "--device-noise"])
    assert res.exit_code == 1 and "minstd" in str(res.exception)


def test_batch_size_auto_and_bad_values(linear):
    model, data, tmp = linear
    base = ["-q", "certify", model, data, "--sigma", "0.25", "--n0", "10", "--n", "20000", "--seed", "0"]
    res = run(base + ["--batch-size", "auto", "--out", str(tmp / "a.tsv")])  # 12 x 20,010 samples: probed
    assert res.exit_code == 0, res.output
    assert json.loads((tmp / "a.tsv.meta.json").read_text())["batch_size"] >= 1
    res = CliRunner().invoke(cli, base + ["--batch-size", "many"])
    assert res.exit_code != 0 and "expected a positive integer or auto" in res.output
