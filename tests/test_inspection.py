"""rs-onnx inspect: facts, the reading rs-onnx will use, warnings and a suggested config."""

import json

import numpy as np
import yaml
from click.testing import CliRunner
from onnx import helper, numpy_helper

from rs_onnx.cli import cli
from rs_onnx.inspection import inspect_model, render
from tests import onnx_models as om

W = np.random.default_rng(0).normal(size=(10, 784)).astype(np.float32)


def normalised_model():
    """Sub mean / Div std by constants right after the input, then a linear head."""
    inits = [
        numpy_helper.from_array(np.array([0.1307], np.float32), "mean"),
        numpy_helper.from_array(np.array([0.3081], np.float32), "std"),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["c"]),
        helper.make_node("Div", ["c", "std"], ["n"]),
        helper.make_node("Flatten", ["n"], ["x_flat"], axis=1),
    ]
    out = om._head(nodes, inits, "x_flat", W, np.zeros(10, np.float32), "probs", 1)
    return om._model(nodes, [om._x((1, 28, 28), 1)], [out], inits)


def test_normalisation_and_softmax_are_reported(tmp_path):
    path = om.save(normalised_model(), tmp_path / "norm.onnx")
    report = inspect_model(path, device="cpu")
    text = " ".join(report["warnings"])
    assert "normalisation" in text and "Softmax" in text
    assert report["reading"]["batch_mode"] == "rewritten" and report["probe"]["output"] == "probabilities"
    assert report["suggested_config"]["preset"] == "none"  # not applied twice
    assert "suggested config" in render(report)


def test_uint8_input_suggests_scale_255(tmp_path):
    path = om.save(om.uint8_model(W), tmp_path / "u8.onnx")
    report = inspect_model(path, device="cpu")
    assert report["suggested_config"]["scale"] == 255.0
    assert any("integer input" in w for w in report["warnings"])


def test_ambiguous_outputs_are_explained_not_a_crash(tmp_path):
    path = om.save(om.two_output_model(W[:, :4]), tmp_path / "two.onnx")
    report = inspect_model(path, device="cpu")
    assert "problem" in report and "output" in report["problem"].lower()
    assert "PROBLEM" in render(report)


def test_cli_json_and_yaml_config_roundtrip(tmp_path):
    path = om.save(om.linear_model(W, input_shape=(1, 28, 28), batch=1), tmp_path / "lin.onnx")
    res = CliRunner().invoke(cli, ["inspect", str(path), "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["reading"]["input_shape"] == [1, 28, 28] and report["reading"]["num_classes"] == 10
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(report["suggested_config"]))
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 28, 28), np.uint8), labels=np.zeros(2, np.uint8))
    res = CliRunner().invoke(
        cli,
        [
            "-q",
            "certify",
            str(path),
            str(tmp_path / "d.npz"),
            "--config",
            str(cfg),
            "--n0",
            "10",
            "--n",
            "50",
            "--seed",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output  # the suggested config is a valid config
