"""Issue 14, items 1 and 7: the Python API scales integer images like the CLI and refuses nonsense.

Each test here failed before the fix: uint8 images were used unscaled (sigma then meant 1/255 of what
was asked), NaN/1e300 pixels, sigma=1e308, std=1e-45, mean=nan, max_batch=-1, fewer example indices
than images and non-integer n/seed/batch_size were accepted without a word.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from rs_onnx import (
    ConfigError,
    DataError,
    OnnxClassifier,
    PreprocessSpec,
    SmoothedClassifier,
)
from rs_onnx.cli import main
from rs_onnx.config import RunConfig
from rs_onnx.sequential import sequential_certify_many
from tests.onnx_models import linear_model, save

W = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    path = save(linear_model(W, input_shape=(1, 4, 4), batch="N"), tmp_path_factory.mktemp("api") / "m.onnx")
    return OnnxClassifier(path, device="cpu")


@pytest.fixture(scope="module")
def image():
    """A uint8 image whose class the linear model reads with a margin (so certificates are not all abstain)."""
    rng = np.random.default_rng(2)
    for _ in range(1000):
        x = rng.integers(0, 256, size=(1, 4, 4), dtype=np.uint8)
        s = W @ (x.reshape(-1) / 255.0)
        if np.sort(s)[-1] - np.sort(s)[-2] > 1.0:
            return x
    raise AssertionError("no image with a margin")


def smoothed(clf, **kw):
    return SmoothedClassifier(clf, **{"sigma": 0.5, "seed": 3, "batch_size": 256, **kw})


def key(a):
    return {k: v for k, v in vars(a).items() if k != "counts"}


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.uint16])
def test_integer_images_are_divided_by_255_in_every_entry_point(clf, image, dtype):
    g = smoothed(clf)
    raw, scaled = image.astype(dtype), image.astype(np.float32) / 255
    assert key(g.certify(raw, 20, 500, 0.01)) == key(g.certify(scaled, 20, 500, 0.01))
    assert key(g.predict(raw, 300, 0.01)) == key(g.predict(scaled, 300, 0.01))
    many = [key(a) for a in g.certify_many([raw, raw], 20, 300, 0.01, [4, 9])]
    assert many == [key(a) for a in g.certify_many([scaled, scaled], 20, 300, 0.01, [4, 9])]
    pm = [key(a) for a in g.predict_many(np.stack([raw, raw]), 300, 0.01)]
    assert pm == [key(a) for a in g.predict_many(np.stack([scaled, scaled]), 300, 0.01)]
    seq = [sequential_certify_many(g, [x], [1], 20, 2000, 0.01, [0.25]) for x in (raw, scaled)]
    assert key(seq[0][0]) == key(seq[1][0])


def test_uint8_certificate_is_not_the_unscaled_one(clf, image):
    """The bug itself: unscaled 0..255 values give a different (meaningless) certificate."""
    g = smoothed(clf)
    unscaled = g.certify(image.astype(np.float32), 20, 500, 0.01)
    assert key(g.certify(image, 20, 500, 0.01)) != key(unscaled)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.full((1, 4, 4), 300, np.int64), "0..255"),
        (np.full((1, 4, 4), -1, np.int32), "0..255"),
        (np.ones((1, 4, 4), bool), "dtype bool"),
        (np.full((1, 4, 4), np.nan, np.float32), "NaN or Inf"),
        (np.full((1, 4, 4), np.inf), "NaN or Inf"),
        (np.full((1, 4, 4), 1e300), "magnitude"),
        (np.full((1, 4, 4), 1e8, np.float32), "lost in float32 rounding"),
    ],
)
def test_bad_pixels_are_refused(clf, bad, match):
    g = smoothed(clf)
    for call in (
        lambda: g.certify(bad, 5, 10, 0.01),
        lambda: g.predict(bad, 10, 0.01),
        lambda: sequential_certify_many(g, [bad], None, 5, 200, 0.01, [0.25]),
    ):
        with pytest.raises(DataError, match=match):
            call()


def test_float_outside_0_1_is_allowed_with_one_warning_for_image_shaped_0_255(clf, image, caplog):
    g = smoothed(clf)
    with caplog.at_level(logging.WARNING, logger="rs_onnx"):
        g.certify(image.astype(np.float32), 5, 50, 0.01)
        g.certify(image.astype(np.float32), 5, 50, 0.01)
    assert sum("looks like 0..255" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    tabular = np.linspace(-3, 7, 16, dtype=np.float32)  # features, not an image: no warning
    with caplog.at_level(logging.WARNING, logger="rs_onnx"):
        smoothed(clf).certify(tabular, 5, 50, 0.01)
        smoothed(clf).certify(image.astype(np.float32) / 255, 5, 50, 0.01)
    assert not [r for r in caplog.records if "0..255" in r.getMessage()]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"sigma": 1e308}, "sigma"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -0.5}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"sigma": float("inf")}, "sigma"),
        ({"seed": 1.5}, "seed"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": True}, "seed"),
        ({"noise_threads": 1.5}, "noise_threads"),
    ],
)
def test_smoothed_classifier_refuses_bad_parameters(clf, kw, match):
    with pytest.raises(ConfigError, match=match):
        smoothed(clf, **kw)


def test_calls_refuse_non_integers_and_missing_example_indices(clf, image):
    g = smoothed(clf)
    for call, match in [
        (lambda: g.certify(image, 20, 100.5, 0.01), "n=100.5"),
        (lambda: g.certify(image, 2.5, 100, 0.01), "n0=2.5"),
        (lambda: g.predict(image, 50.5, 0.01), "n=50.5"),
        (lambda: g.certify(image, 20, 100, float("nan")), "alpha"),
        (lambda: g.certify_many([image, image, image], 5, 50, 0.01, [0, 1]), "2 examples for 3"),
        (lambda: g.predict_many([image, image], 50, 0.01, [0, 1, 2]), "3 examples for 2"),
        (lambda: g.certify_many([image], 5, 50, 0.01, [-1]), "example index"),
        (lambda: g.certify_many([image], 5, 50, 0.01, [0.5]), "example index"),
        (lambda: sequential_certify_many(g, [image, image], [0], 5, 200, 0.01, [0.25]), "1 examples"),
        (lambda: sequential_certify_many(g, [image], [0], 5.5, 200, 0.01, [0.25]), "n0=5.5"),
    ]:
        with pytest.raises(ConfigError, match=match):
            call()
    assert g.certify(image, 20.0, 1e2, 0.01).n == 100  # exact integers written as floats are fine


def test_images_of_different_shapes_are_refused(clf, image):
    with pytest.raises(DataError, match="image 1 has shape"):
        smoothed(clf).certify_many([image, image[:, :2]], 5, 50, 0.01)


def test_max_batch_must_be_a_positive_integer(clf):
    for bad in (-1, 0, 2.5):
        with pytest.raises(ConfigError, match="max_batch"):
            OnnxClassifier(clf.path, device="cpu", max_batch=bad)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"mean": (float("nan"),)}, "mean"),
        ({"std": (1e-45,)}, "std"),
        ({"mean": (1e300,), "std": (1.0,)}, "mean"),
        ({"scale": 1e30}, "scale"),
    ],
)
def test_preprocessing_refuses_nonsense(kw, match):
    with pytest.raises(ConfigError, match=match):
        PreprocessSpec(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"n": 1.5},
        {"seed": 2.5},
        {"batch_size": 7.5},
        {"n0": "10"},
        {"sigma": 1e308},
        {"radii": [float("nan")]},
        {"skip": True},
    ],
)
def test_run_config_refuses_nonsense(kw):
    with pytest.raises(ConfigError):
        RunConfig(**{"sigma": 0.25, **kw}).validate()


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    save(linear_model(W, input_shape=(1, 4, 4), batch="N"), tmp / "m.onnx")
    np.savez(tmp / "ok.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    np.savez(tmp / "huge.npz", images=np.full((2, 4, 4), 1e300), labels=np.array([0, 1]))
    return tmp


@pytest.mark.parametrize(
    "args",
    [
        ["--sigma", "0.25", "--mean", "nan"],
        ["--sigma", "0.25", "--std", "1e-45"],
        ["--sigma", "1e308"],
        ["--sigma", "0"],
        ["--sigma", "-1"],
        ["--sigma", "nan"],
        ["--sigma", "0.25", "--data-is-huge"],
        ["--sigma", "1e-300"],
    ],
    ids=["mean-nan", "std-1e-45", "sigma-1e308", "sigma-0", "sigma-neg", "sigma-nan", "pixels-1e300", "sigma-1e-300"],
)
def test_cli_refuses_in_one_line_and_writes_nothing(cli_files, capsys, args):
    data = "huge.npz" if "--data-is-huge" in args else "ok.npz"
    args = [a for a in args if a != "--data-is-huge"]
    out = cli_files / "out.tsv"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "certify",
                str(cli_files / "m.onnx"),
                str(cli_files / data),
                "--n0",
                "5",
                "--n",
                "20",
                *args,
                "--out",
                str(out),
            ]
        )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rs-onnx: error:")]
    assert e.value.code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert not out.exists() and not Path(str(out) + ".meta.json").exists()


def test_analyze_refuses_nan_radii(cli_files, capsys):
    tsv = cli_files / "r.tsv"
    tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n")
    for radii in (["nan"], ["-0.5"], ["inf"]):
        with pytest.raises(SystemExit) as e:
            main(["analyze", str(tsv), "--radii", *radii])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.count("rs-onnx: error:") == 1 and "radii" in err, err
