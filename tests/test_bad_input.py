"""Bad input, tried systematically (hypothesis): one clear line, exit code 1, no traceback, no output file."""

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rs_onnx.cli import main
from rs_onnx.inputs import MAX_SIGMA, RESOLUTION
from tests.onnx_models import linear_model, save

W = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
# 700 generated inputs per run (200 YAML files, 200 .npz files, 100 model files, 200 sets of numbers).
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                           HealthCheck.too_slow], derandomize=True)


@pytest.fixture(scope="module")
def files():
    tmp = Path(tempfile.mkdtemp(prefix="rs-onnx-bad-"))
    model = save(linear_model(W, input_shape=(1, 4, 4), batch=1), tmp / "m.onnx")
    np.savez(tmp / "good.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1, 2], np.uint8))
    return tmp, model


def run_cli(capsys, argv, out: Path):
    """Runs the CLI in-process; returns (exit code, stderr). Asserts the error contract on failure."""
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(out)])
    err = capsys.readouterr().err
    code = e.value.code
    if code != 0:
        errors = [line for line in err.splitlines() if line.startswith("rs-onnx: error:")]
        assert code == 1 and len(errors) == 1, err
        assert "Traceback" not in err and "internal error" not in err, err
        assert not out.exists(), "no output file may be left behind after a refused input"
    else:
        assert out.exists()
        out.unlink()
    return code, err


BASE = ["--sigma", "0.25", "--n0", "5", "--n", "20", "--seed", "0"]

yaml_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=6)
keys = st.sampled_from(["sigma", "n", "n0", "alpha", "batch_size", "seed", "mean", "std", "layout", "scale", "preset",
                        "skip", "start", "end", "device", "bound", "sigmaa", "batch", "dtype", "noise_threads"])


@settings(SETTINGS, max_examples=200)
@given(st.one_of(st.dictionaries(keys, yaml_values, max_size=4), yaml_values, st.text(max_size=40)))
def test_any_yaml_config_is_accepted_or_refused_in_one_line(files, capsys, doc):
    tmp, model = files
    cfg = tmp / "c.yaml"
    cfg.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    run_cli(capsys, ["certify", str(model), str(tmp / "good.npz"), "--config", str(cfg), "--n", "20", "--n0", "5",
                     "--device", "cpu"], tmp / "o.tsv")


dtypes = st.sampled_from([np.uint8, np.int8, np.int64, np.float32, np.float64, np.bool_, np.complex64, np.float16])


@settings(SETTINGS, max_examples=200)
@given(images=hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)),
       labels=hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float32, np.int8]),
                         hnp.array_shapes(min_dims=0, max_dims=2, max_side=5)),
       keys=st.sampled_from([("images", "labels"), ("image", "labels"), ("images", "label"), ("x", "y")]))
def test_any_npz_is_accepted_or_refused_in_one_line(files, capsys, images, labels, keys):
    tmp, model = files
    data = tmp / "d.npz"
    np.savez(data, **{keys[0]: images, keys[1]: labels})
    run_cli(capsys, ["certify", str(model), str(data), *BASE], tmp / "o.tsv")


@SETTINGS
@given(cut=st.floats(0.0, 0.999), junk=st.binary(max_size=64))
def test_truncated_or_corrupt_models_are_refused(files, capsys, cut, junk):
    tmp, model = files
    raw = model.read_bytes()
    bad = tmp / "bad.onnx"
    bad.write_bytes(raw[: int(len(raw) * cut)] + junk)
    code, err = run_cli(capsys, ["certify", str(bad), str(tmp / "good.npz"), *BASE], tmp / "o.tsv")
    assert code == 1 or len(junk) == 0 and cut == 0  # nothing but a whole model loads


@settings(SETTINGS, max_examples=200)
@given(n=st.integers(-5, 10**12), n0=st.integers(-5, 10**12), batch=st.integers(-5, 10**9),
       alpha=st.floats(allow_nan=True, allow_infinity=True), sigma=st.floats(allow_nan=True, allow_infinity=True))
def test_absurd_numbers_are_refused_before_any_work(files, capsys, n, n0, batch, alpha, sigma):
    tmp, model = files
    argv = ["certify", str(model), str(tmp / "good.npz"), "--n", str(n), "--n0", str(n0), "--batch-size", str(batch),
            "--alpha", repr(alpha), "--sigma", repr(sigma), "--seed", "0"]
    # sigma: at most MAX_SIGMA, and large enough for float32 to hold noise of that size at the data's zeros
    tiny = float(np.spacing(np.float32(0))) / RESOLUTION
    valid = n >= 1 and n0 >= 1 and 1 <= batch <= 10**7 and 0 < alpha < 1 and tiny <= sigma <= MAX_SIGMA
    if valid:  # only check that valid settings are accepted up to the point of sampling
        argv[argv.index("--n") + 1] = "20"
        argv[argv.index("--n0") + 1] = "5"
        argv[argv.index("--batch-size") + 1] = str(min(batch, 64))
    code, _ = run_cli(capsys, argv, tmp / "o.tsv")
    assert code == (0 if valid else 1)


def test_empty_files_and_missing_external_data(files, capsys, tmp_path):
    tmp, model = files
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "empty.yaml").write_text("")
    for argv in (["certify", str(tmp_path / "empty.onnx"), str(tmp / "good.npz"), *BASE],
                 ["certify", str(model), str(tmp_path / "empty.npz"), *BASE]):
        assert run_cli(capsys, argv, tmp_path / "o.tsv")[0] == 1
    m = onnx.load(str(model))
    onnx.save_model(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.bin", size_threshold=0)
    (tmp_path / "ext.bin").unlink()
    code, err = run_cli(capsys, ["certify", str(tmp_path / "ext.onnx"), str(tmp / "good.npz"), *BASE], tmp_path / "o.tsv")
    assert code == 1 and "ext.bin" in err


def test_pickled_npz_is_never_unpickled(files, capsys, tmp_path):
    tmp, model = files
    np.savez(tmp_path / "p.npz", images=np.array([object()], dtype=object), labels=np.zeros(1, np.uint8))
    code, err = run_cli(capsys, ["certify", str(model), str(tmp_path / "p.npz"), *BASE], tmp_path / "o.tsv")
    assert code == 1 and "pickle" in err.lower()
