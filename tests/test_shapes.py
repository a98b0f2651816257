"""Symbolic input dims (issue 26, part 1): the per-example shape from the data, ``--input-shape``, a trial run at
load that refuses a graph running at one size only, token-id inputs refused, ``inspect`` exits 1 on a PROBLEM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from rs_onnx.cli import main
from rs_onnx.errors import ConfigError, ModelError
from rs_onnx.shapes import from_data, parse_input_shape, per_example, placeholder, token_input

OPTIMUM_DIMS = ["batch_size", "num_channels", "height", "width"]
RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 4)).astype(np.float32)
B = np.array([0.3, -0.2, 0.1, 0.0], np.float32)


def _save(nodes, inputs, outputs, inits, path: Path, opset: int = 13) -> Path:
    graph = helper.make_graph(nodes, "m", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rs-onnx-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def pooled_model(path: Path, dims=OPTIMUM_DIMS, name: str = "pixel_values") -> Path:
    """Runs at any H, W: global average pool over H, W, then a linear head (W [3, 4], bias B) -> logits [N, 4]."""
    nodes = [
        helper.make_node("GlobalAveragePool", [name], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "W"], ["fw"]),
        helper.make_node("Add", ["fw", "B"], ["logits"]),
    ]
    x = helper.make_tensor_value_info(name, T.FLOAT, list(dims))
    y = helper.make_tensor_value_info("logits", T.FLOAT, [dims[0], 4])
    return _save(nodes, [x], [y], [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")], path)


def pooled_scores(x: np.ndarray) -> np.ndarray:
    """:func:`pooled_model`'s logits for x [N, 3, H, W]."""
    return x.mean(axis=(2, 3)) @ W + B


def one_size_model(path: Path, size: int = 8) -> Path:
    """Declares H/W symbolic but reshapes to a fixed token count: runs at 3 x size x size only (as MobileViT at 256)."""
    wf = RNG.normal(size=(3 * size * size, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["pixel_values", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "W"], ["logits"]),
    ]
    x = helper.make_tensor_value_info("pixel_values", T.FLOAT, OPTIMUM_DIMS)
    y = helper.make_tensor_value_info("logits", T.FLOAT, ["batch_size", 4])
    inits = [
        numpy_helper.from_array(wf, "W"),
        numpy_helper.from_array(np.array([0, 3 * size * size], np.int64), "shape"),
    ]
    return _save(nodes, [x], [y], inits, path)


def token_model(path: Path, with_mask: bool = False) -> Path:
    """A text classifier: int64 input_ids [batch, sequence] -> embedding -> mean -> logits [batch, 2]."""
    emb = RNG.normal(size=(50, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["e"]),
        helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["m", "W"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("input_ids", T.INT64, ["batch_size", "sequence_length"])]
    if with_mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", T.INT64, ["batch_size", "sequence_length"]))
        nodes.append(helper.make_node("Identity", ["attention_mask"], ["unused"]))
    y = helper.make_tensor_value_info("logits", T.FLOAT, ["batch_size", 2])
    inits = [
        numpy_helper.from_array(emb, "E"),
        numpy_helper.from_array(RNG.normal(size=(4, 2)).astype(np.float32), "W"),
    ]
    mask = helper.make_tensor_value_info("unused", T.INT64, ["batch_size", "sequence_length"])
    outputs = [y] + ([mask] if with_mask else [])
    return _save(nodes, inputs, outputs, inits, path)


def coloured(count: int, shape=(3, 8, 8), seed: int = 1) -> np.ndarray:
    """Images in [0,1], float32 [count, *shape]: one random colour each plus a little texture (their pooled
    scores then differ from image to image, so a wrong preprocessing shows in the clean accuracy)."""
    rng = np.random.default_rng(seed)
    colour = rng.random((count, shape[0], 1, 1))
    return np.clip(colour + 0.05 * rng.standard_normal((count, *shape)), 0, 1).astype(np.float32)


def images_npz(path: Path, shape=(3, 8, 8), count: int = 8, seed: int = 1) -> Path:
    """:func:`coloured` images labelled with :func:`pooled_model`'s clean class."""
    x = coloured(count, shape, seed)
    labels = pooled_scores(x).argmax(1)
    assert len(set(labels)) >= 2
    np.savez(path, images=x, labels=labels)
    return path


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr); a failure is exactly one error line, no traceback."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    got = capsys.readouterr()
    code = int(e.value.code or 0)
    if code != 0 and "rs-onnx: error:" in got.err:
        errors = [line for line in got.err.splitlines() if line.startswith("rs-onnx: error:")]
        assert len(errors) == 1 and "Traceback" not in got.err, got.err
    return code, got.out, got.err


CERTIFY = ["--sigma", "0.12", "--n0", "10", "--n", "64", "--seed", "0", "--batch-size", "64"]


# ------------------------------------------------------------------ the flag's forms
@pytest.mark.parametrize(
    "text, name, dims",
    [
        ("3,224,224", None, [3, 224, 224]),
        ("3x224x224", None, [3, 224, 224]),
        ("[3, 224, 224]", None, [3, 224, 224]),
        ("pixel_values:[1,3,224,224]", "pixel_values", [1, 3, 224, 224]),  # Polygraphy's --input-shapes
        ("1,3,224,224", None, [1, 3, 224, 224]),  # onnxruntime's make_dynamic_shape_fixed --input_shape
        ([3, 8, 8], None, [3, 8, 8]),  # YAML list
        ("input_1:0:[1,224,224,3]", "input_1:0", [1, 224, 224, 3]),  # a TensorFlow name holds a colon
    ],
)
def test_input_shape_forms(text, name, dims):
    assert parse_input_shape(text) == (name, dims)


@pytest.mark.parametrize("bad", ["", "3,,-1", "3,a,4", "0,8,8", "[3,8.5,8]", [3, True], "x:", "[[3,8]]", "3,8]"])
def test_bad_input_shapes_name_the_flag(bad):
    with pytest.raises(ConfigError, match="--input-shape"):
        parse_input_shape(bad)


def test_per_example_drops_the_batch_dim_and_checks_fixed_dims():
    assert per_example(["c", "h", "w"], [1, 3, 8, 8], "m", "x") == (3, 8, 8)
    assert per_example([3, "h", "w"], [3, 8, 8], "m", "x") == (3, 8, 8)
    with pytest.raises(ConfigError, match=r"--input-shape 1,8,8: model m input 'x' has per-example dims \[3, h, w\]"):
        per_example([3, "h", "w"], [1, 8, 8], "m", "x")


def test_shape_from_data_picks_the_layout_the_dims_allow():
    assert from_data(["c", "h", "w"], (3, 8, 6), "auto", "m", "x")[0] == (3, 8, 6)
    assert from_data(["h", "w", 3], (3, 8, 6), "auto", "m", "x")[0] == (8, 6, 3)  # Keras: channels last
    assert from_data(["h", "w", "c"], (3, 8, 6), "nhwc", "m", "x")[0] == (8, 6, 3)
    assert from_data(["d"], (1, 4, 4), "auto", "m", "x")[0] == (16,)
    with pytest.raises(ModelError, match=r"shaped \[48\].*expected --input-shape C,H,W"):
        from_data(["c", "h", "w"], (48,), "auto", "m", "x")
    assert placeholder([3, "h", "w"]) == "3,H,W" and placeholder(["h", "w", 3]) == "H,W,3"


# ------------------------------------------------------------------ certify: the shape from the data
def test_optimum_style_symbolic_model_certifies_with_the_shape_from_the_data(tmp_path, capsys):
    """pixel_values [batch_size, num_channels, height, width], every dim symbolic: no flag needed (main: 'pass
    input_shape', exit 1)."""
    model = pooled_model(tmp_path / "model.onnx")
    data = images_npz(tmp_path / "d.npz")
    out = tmp_path / "r.tsv"
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--out", str(out)])
    assert code == 0, err
    assert "per-example shape 3,8,8 from the data" in err
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["config"]["input_shape"] == [3, 8, 8]
    assert meta["preprocess"]["model_shape"] == [3, 8, 8]
    assert meta["clean_accuracy"]["accuracy"] == 1.0  # the model ran on the images as they are


def test_symbolic_model_with_image_files_of_any_size_after_resize(tmp_path, capsys):
    from PIL import Image

    model = pooled_model(tmp_path / "model.onnx")
    for k, (h, w) in enumerate([(12, 9), (7, 15), (10, 10)]):
        folder = tmp_path / "imgs" / str(k % 2)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    code, _, err = run(capsys, ["certify", str(model), str(tmp_path / "imgs"), *CERTIFY, "--out", "-"])
    assert code == 1 and "images of different sizes" in err and "--resize HxW" in err
    code, out, err = run(
        capsys, ["certify", str(model), str(tmp_path / "imgs"), *CERTIFY, "--resize", "6x5", "--out", "-"]
    )
    assert code == 0, err
    assert "per-example shape 3,6,5 from the data" in err and len(out.strip().splitlines()) == 4  # header + 3 rows


def test_data_that_cannot_fill_the_dims_asks_for_input_shape(tmp_path, capsys):
    """Flat rows for a [N, C, H, W] model: the error names --input-shape (not the Python name input_shape), and
    the flag, in its Polygraphy form too, makes it run; no file is created by the refusal."""
    model = pooled_model(tmp_path / "model.onnx")
    x = coloured(5, (3, 4, 4))
    np.savez(tmp_path / "flat.npz", images=x.reshape(5, -1), labels=pooled_scores(x).argmax(1))
    out = tmp_path / "r.tsv"
    code, _, err = run(capsys, ["certify", str(model), str(tmp_path / "flat.npz"), *CERTIFY, "--out", str(out)])
    assert code == 1 and "expected --input-shape C,H,W" in err and "input_shape" not in err.replace("--input-shape", "")
    assert not out.exists() and not Path(f"{out}.meta.json").exists()
    for flag in ("3,4,4", "pixel_values:[1,3,4,4]"):
        code, _, err = run(
            capsys,
            [
                "certify",
                str(model),
                str(tmp_path / "flat.npz"),
                *CERTIFY,
                "--input-shape",
                flag,
                "--out",
                str(out),
                "--overwrite",
            ],
        )
        assert code == 0, err
        meta = json.loads(Path(f"{out}.meta.json").read_text())
        assert meta["config"]["input_shape"] == [3, 4, 4] and meta["clean_accuracy"]["accuracy"] == 1.0


def test_input_shape_yaml_key_and_a_wrong_fixed_dim(tmp_path, capsys):
    model = pooled_model(tmp_path / "model.onnx", dims=["N", 3, "h", "w"])
    data = images_npz(tmp_path / "d.npz")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input_shape: [3, 8, 8]\n")
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--config", str(cfg), "--out", "-"])
    assert code == 0, err
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--input-shape", "1,8,8", "--out", "-"])
    assert code == 1 and "--input-shape 1,8,8" in err and "[3, h, w]" in err


def test_a_graph_that_runs_at_one_size_only_is_refused_at_load_in_one_line(tmp_path, capsys):
    """Declared [batch_size, num_channels, height, width] but reshaped to 3*8*8 values: at 10x10 the trial run at
    load refuses it, naming the shape tried, before any file exists; at 8x8 it runs."""
    model = one_size_model(tmp_path / "model.onnx", size=8)
    out = tmp_path / "r.tsv"
    code, _, err = run(
        capsys, ["certify", str(model), str(images_npz(tmp_path / "d10.npz", (3, 10, 10))), *CERTIFY, "--out", str(out)]
    )
    assert code == 1
    line = next(x for x in err.splitlines() if x.startswith("rs-onnx: error:"))
    assert "the graph rejects input 'pixel_values' shaped [1, 3, 10, 10]" in line
    assert "--input-shape" in line and "--resize" in line
    assert not out.exists() and not Path(f"{out}.meta.json").exists()
    code, _, err = run(
        capsys, ["certify", str(model), str(images_npz(tmp_path / "d8.npz", (3, 8, 8))), *CERTIFY, "--out", "-"]
    )
    assert code == 0, err


# ------------------------------------------------------------------ inspect
def test_inspect_exits_1_on_a_problem_and_names_the_flag(tmp_path, capsys):
    model = pooled_model(tmp_path / "model.onnx")
    code, out, _ = run(capsys, ["inspect", str(model), "--device", "cpu"])
    assert code == 1 and "PROBLEM" in out and "--input-shape C,H,W" in out
    code, out, _ = run(capsys, ["inspect", str(model), "--device", "cpu", "--input-shape", "3,16,16"])
    assert code == 0 and "PROBLEM" not in out and "from --input-shape" in out
    code, out, _ = run(capsys, ["inspect", str(one_size_model(tmp_path / "one.onnx")), "--input-shape", "3,9,9"])
    assert code == 1 and "the graph rejects input 'pixel_values' shaped [1, 3, 9, 9]" in out


# ------------------------------------------------------------------ token inputs
def test_token_id_inputs_are_refused_in_one_line_before_any_file(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    np.savez(tmp_path / "ids.npz", images=np.ones((2, 6), np.int64), labels=np.zeros(2, np.int64))
    for model in (token_model(tmp_path / "text.onnx"), token_model(tmp_path / "text2.onnx", with_mask=True)):
        code, _, err = run(capsys, ["certify", str(model), str(tmp_path / "ids.npz"), *CERTIFY, "--out", str(out)])
        assert code == 1, err
        assert "input 'input_ids' is int64 [batch_size, sequence_length], token ids" in err
        assert "embedding space" in err
        assert not out.exists() and not Path(f"{out}.meta.json").exists()
        code, out_text, _ = run(capsys, ["inspect", str(model)])
        assert code == 1 and "token ids" in out_text


def test_token_rule_keeps_uint8_images_and_fixed_integer_features():
    assert token_input("input_ids", np.dtype(np.int64), ["s"])
    assert token_input("tokens", np.dtype(np.int32), [16])
    assert token_input("x", np.dtype(np.int64), ["sequence"])  # a sequence of ids, whatever its name
    assert not token_input("x", np.dtype(np.uint8), ["s"])  # uint8 pixels
    assert not token_input("x", np.dtype(np.int64), [784])  # integer features of a fixed size
    assert not token_input("x", np.dtype(np.int64), [1, 28, 28])
    assert not token_input("input_ids", np.dtype(np.float32), ["s"])


def test_uint8_image_model_still_runs(tmp_path, capsys):
    """The token rule must not catch integer image inputs (quantised models take uint8 pixels)."""
    from tests import onnx_models as om

    w = np.random.default_rng(0).normal(size=(10, 784)).astype(np.float32)
    model = om.save(om.uint8_model(w), tmp_path / "u8.onnx")
    code, out, _ = run(capsys, ["inspect", str(model)])
    assert code == 0 and "PROBLEM" not in out


# ------------------------------------------------------------------ torch exports with dynamic H/W
@pytest.fixture(scope="module")
def torch_exports(tmp_path_factory):
    """A tiny CNN exported with H/W dynamic by both torch exporters: {"legacy" | "dynamo": path}, and the net."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'rs-onnx[train]')")
    folder = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()
    with torch.no_grad():  # answers that depend on the image's colours (not a constant class)
        net[0].bias.zero_()
        net[4].bias.zero_()
        net[4].weight.mul_(10)
    x = torch.rand(2, 3, 12, 12)
    paths = {"legacy": folder / "legacy.onnx", "dynamo": folder / "dynamo.onnx"}
    torch.onnx.export(
        net,
        (x,),
        str(paths["legacy"]),
        dynamo=False,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
    )
    try:
        from torch.export import Dim

        torch.onnx.export(
            net,
            (x,),
            str(paths["dynamo"]),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes=({0: Dim("batch"), 2: Dim("height", min=4, max=512), 3: Dim("width", min=4, max=512)},),
        )
    except Exception as e:  # noqa: BLE001 - the dynamo exporter needs onnxscript; the legacy case still runs
        paths.pop("dynamo")
        print(f"dynamo export unavailable: {e}")
    return paths, net


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_torch_export_with_dynamic_hw_certifies_at_the_data_size(torch_exports, exporter, tmp_path, capsys):
    """Exported at 12x12 with H/W symbolic, certified on 16x16 images with no shape flag; rs-onnx's clean
    answers are torch's on every image."""
    import torch

    paths, net = torch_exports
    if exporter not in paths:
        pytest.skip("the dynamo exporter is not available here (onnxscript)")
    x = coloured(10, (3, 16, 16))
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).numpy().argmax(1)
    assert len(set(labels)) >= 2
    np.savez(tmp_path / "d.npz", images=x, labels=labels)
    out = tmp_path / "r.tsv"
    code, _, err = run(capsys, ["certify", str(paths[exporter]), str(tmp_path / "d.npz"), *CERTIFY, "--out", str(out)])
    assert code == 0, err
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["config"]["input_shape"] == [3, 16, 16]
    assert meta["clean_accuracy"]["accuracy"] == 1.0


def test_resume_of_a_run_whose_shape_came_from_the_data(tmp_path, capsys):
    """The resolved shape is recorded (config.input_shape) and resolved alike on --resume; another one is refused."""
    model = pooled_model(tmp_path / "model.onnx")
    data = images_npz(tmp_path / "d.npz")
    out = tmp_path / "r.tsv"
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--end", "3", "--out", str(out)])
    assert code == 0, err
    code, _, err = run(
        capsys, ["certify", str(model), str(data), *CERTIFY, "--end", "6", "--out", str(out), "--resume"]
    )
    assert code == 0, err
    assert len(out.read_text().strip().splitlines()) == 7
    code, _, err = run(
        capsys,
        ["certify", str(model), str(data), *CERTIFY, "--input-shape", "3,8,8", "--channel-order", "bgr"]
        + ["--out", str(out), "--resume"],
    )
    assert code == 1 and "channel_order" in err


def test_denoiser_with_a_symbolic_classifier_takes_input_shape(tmp_path, capsys):
    """certify --denoiser and rs-onnx compose: a classifier with symbolic H/W needs --input-shape (named in the
    error), and with it the composed model certifies."""
    from tests.test_compose import denoiser

    model = pooled_model(tmp_path / "model.onnx")
    den = tmp_path / "den.onnx"
    onnx.save(denoiser((3, 8, 8)), str(den))
    data = images_npz(tmp_path / "d.npz")
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--denoiser", str(den), "--out", "-"])
    assert code == 1 and "--input-shape" in err
    code, _, err = run(
        capsys,
        ["certify", str(model), str(data), *CERTIFY, "--denoiser", str(den), "--input-shape", "3,8,8", "--out", "-"],
    )
    assert code == 0, err
    out = tmp_path / "dc.onnx"
    code, _, err = run(capsys, ["compose", str(model), "--denoiser", str(den), "-o", str(out)])
    assert code == 1 and "--input-shape" in err and not out.exists()
    code, _, err = run(
        capsys, ["compose", str(model), "--denoiser", str(den), "-o", str(out), "--input-shape", "3,8,8"]
    )
    assert code == 0 and out.exists(), err
