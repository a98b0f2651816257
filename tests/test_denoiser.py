"""export/train_denoiser.py: a tiny DnCNN trains a few steps on CPU, exports to ONNX and composes."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e .[train]); training is skipped")

from click.testing import CliRunner  # noqa: E402

from export import train_denoiser as td  # noqa: E402
from rs_onnx import OnnxClassifier, SmoothedClassifier  # noqa: E402
from rs_onnx.compose import compose_files  # noqa: E402
from tests import onnx_models as om  # noqa: E402

HAS_ONNX2TORCH = importlib.util.find_spec("onnx2torch") is not None


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A synthetic stand-in for MNIST digits: 40 uint8 [28, 28] images of two classes (bars), as .npz."""
    rng = np.random.default_rng(0)
    images = np.zeros((40, 28, 28), np.uint8)
    labels = np.arange(40) % 2
    for img, label in zip(images, labels):
        col = rng.integers(8, 20)
        if label:
            img[4:24, col : col + 3] = 255  # vertical bar
        else:
            img[col : col + 3, 4:24] = 255  # horizontal bar
    path = tmp_path_factory.mktemp("data") / "bars.npz"
    np.savez(path, images=images, labels=labels.astype(np.uint8))
    return path


def config(tmp_path, data, **kw):
    base = dict(
        out=str(tmp_path / "den.onnx"),
        sigma=0.5,
        data=str(data),
        depth=3,
        width=4,
        epochs=1,
        batch_size=8,
        holdout_per_class=2,
        max_steps=3,
        threads=1,
    )
    return td.DenoiserConfig(**{**base, **kw})


def test_dncnn_shapes_and_clamp():
    model = td.DnCNN(channels=3, depth=4, width=8).eval()
    x = torch.rand(2, 3, 10, 12) * 3 - 1
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with pytest.raises(ValueError, match="depth"):
        td.DnCNN(depth=1)


@pytest.mark.slow  # trains a denoiser
def test_mse_training_exports_a_dynamic_batch_onnx_denoiser(tmp_path, digits):
    cfg = config(tmp_path, digits)
    _, summary = td.train(cfg)
    path = tmp_path / "den.onnx"
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert float(props["rs_onnx.denoiser_sigma"]) == 0.5
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {td.OPSET}
    assert (tmp_path / "den.pt").is_file()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 5):
        out = session.run(None, {"image": np.random.default_rng(b).random((b, 1, 28, 28), dtype=np.float32)})[0]
        assert out.shape == (b, 1, 28, 28) and out.min() >= 0 and out.max() <= 1
    assert summary["history"][0]["psnr_denoised"] > 0


def test_trained_denoiser_composes_and_certifies(tmp_path, digits):
    td.train(config(tmp_path, digits))
    classifier = om.save(
        om.linear_model(np.full(784, 1 / 784, np.float32), b=-0.05, input_shape=(1, 28, 28), batch=1),
        tmp_path / "clf.onnx",
    )
    path = compose_files(tmp_path / "den.onnx", classifier, tmp_path / "dc.onnx")
    clf = OnnxClassifier(path, device="cpu")
    cert = SmoothedClassifier(clf, sigma=0.5, seed=0, batch_size=100).certify(
        np.zeros((1, 28, 28), np.float32), n0=10, n=100, alpha=0.01
    )
    assert cert.n == 100 and cert.predict in (-1, 0, 1)


def test_explicit_pads_match_same_upper():
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(2, 1, 4, 4)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", kernel_shape=[4, 4], strides=[2, 2])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    fixed = td.explicit_pads(model)
    attrs = {a.name: helper.get_attribute_value(a) for a in fixed.graph.node[0].attribute}
    assert "auto_pad" not in attrs and attrs["pads"] == [1, 1, 2, 2]
    x = np.random.default_rng(1).random((1, 1, 9, 9), dtype=np.float32)
    outs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (model, fixed)
    ]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAS_ONNX2TORCH, reason="onnx2torch is not installed (pip install onnx2torch)")
def test_stability_objective_trains_through_an_onnx_classifier(tmp_path, digits):
    td.train(config(tmp_path, digits, out=str(tmp_path / "mse.onnx")))
    w = np.random.default_rng(0).normal(size=(2, 784)).astype(np.float32) / 28
    classifier = om.save(om.reshape_model(w, input_shape=(784, 1), batch=1, shape=[1, 784]), tmp_path / "flat.onnx")
    _, summary = td.train(
        config(
            tmp_path,
            digits,
            objective="stability",
            classifier=str(classifier),
            mse_weight=0.1,
            init=str(tmp_path / "mse.pt"),
            out=str(tmp_path / "stab.onnx"),
        )
    )
    assert np.isfinite(summary["history"][0]["loss"])
    assert "acc_denoised" in summary["history"][0]
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "stab.onnx")).metadata_props}
    assert props["rs_onnx.denoiser_objective"] == "stability"


def test_cli(tmp_path, digits):
    out = tmp_path / "cli.onnx"
    args = [
        "--sigma",
        "0.25",
        "--out",
        str(out),
        "--data",
        str(digits),
        "--depth",
        "2",
        "--width",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--holdout-per-class",
        "2",
        "--max-steps",
        "2",
        "--threads",
        "1",
    ]
    result = CliRunner().invoke(td.main, args)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = CliRunner().invoke(td.main, [*args, "--objective", "stability"])
    assert result.exit_code != 0 and "needs --classifier" in result.output
