"""The model card's preprocessing (issue 26, part 2): preprocessor_config.json and config.json's id2label beside
the model, --channel-order, --resize HxW, a Keras graph that rescales 0..255 itself, and inspect's basis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from rs_onnx.errors import ConfigError
from rs_onnx.modelcard import class_names, graph_rescale, read_card
from rs_onnx.preprocess import Preprocessor, PreprocessSpec
from tests.test_shapes import CERTIFY, _save, coloured, pooled_model, run

RNG = np.random.default_rng(3)
VIT_CARD = {
    "image_processor_type": "ViTImageProcessor",
    "do_resize": True,
    "size": {"height": 6, "width": 5},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
NAMES = ["tench", "goldfish", "great white shark", "tiger shark"]


def write_card(folder: Path, card: dict, names: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(card))
    if names is not None:
        (folder / "config.json").write_text(json.dumps({"id2label": {str(i): n for i, n in enumerate(names)}}))
    return folder / "preprocessor_config.json"


# ------------------------------------------------------------------ reading the card
@pytest.mark.parametrize(
    "card, expected",
    [
        (VIT_CARD, {"scale": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "6x5"}),
        (  # transformers' ConvNextImageProcessor (microsoft/resnet-50, facebook/convnext-*): crop_pct below 384
            {
                "image_processor_type": "ConvNextImageProcessor",
                "size": {"shortest_edge": 224},
                "crop_pct": 0.875,
                "resample": 3,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            },
            {
                "scale": 1.0,
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "resize": 256,
                "center_crop": "224x224",
                "resample": "bicubic",
            },
        ),
        (  # ConvNeXt at 384: warped, no crop
            {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 384}, "crop_pct": 0.875},
            {"scale": 1.0, "resize": "384x384"},
        ),
        (  # MobileViT: no normalisation, channels flipped to BGR, shortest edge then crop
            {
                "image_processor_type": "MobileViTImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": 288},
                "do_center_crop": True,
                "crop_size": {"height": 256, "width": 256},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_flip_channel_order": True,
            },
            {
                "scale": 1.0,
                "mean": [0.0],
                "std": [1.0],
                "channel_order": "bgr",
                "resize": 288,
                "center_crop": "256x256",
            },
        ),
        (  # an older feature extractor: integer size is square for ViT-like processors
            {
                "feature_extractor_type": "BeitFeatureExtractor",
                "size": 224,
                "do_normalize": True,
                "image_mean": 0.5,
                "image_std": 0.5,
            },
            {"scale": 1.0, "mean": [0.5], "std": [0.5], "resize": "224x224"},
        ),
        (  # CLIP-style: an integer size is the shorter side; crop
            {"image_processor_type": "CLIPImageProcessor", "size": 224, "do_center_crop": True, "crop_size": 224},
            {"scale": 1.0, "resize": 224, "center_crop": "224x224"},
        ),
        ({"do_rescale": False, "do_normalize": False}, {"scale": 255.0, "mean": [0.0], "std": [1.0]}),  # 0..255 pixels
        (  # EfficientNet: x * 255/127.5 - 1, normalised, then divided by std again (include_top)
            {
                "image_processor_type": "EfficientNetImageProcessor",
                "rescale_factor": 1 / 127.5,
                "rescale_offset": True,
                "do_normalize": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.47853944, 0.4732864, 0.47434163],
                "include_top": True,
            },
            {"scale": 2.0, "mean": [1.485, 1.456, 1.406], "std": [0.47853944**2, 0.4732864**2, 0.47434163**2]},
        ),
    ],
)
def test_read_card_maps_hugging_face_processors(tmp_path, card, expected):
    got = read_card(write_card(tmp_path, card)).values
    for key, value in expected.items():
        assert got[key] == pytest.approx(value) if isinstance(value, (float, list)) else got[key] == value, key
    assert set(got) <= {"scale", "mean", "std", "resize", "center_crop", "resample", "channel_order"}


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        "{not json",
        '{"size": {"height": -3}}',
        '{"do_normalize": true, "image_mean": ["a"]}',
        '{"size": 8, "resample": true}',
    ],
)
def test_a_bad_card_is_one_config_error(tmp_path, text):
    (tmp_path / "preprocessor_config.json").write_text(text)
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        read_card(tmp_path / "preprocessor_config.json")


def test_class_names_need_ids_0_to_k_minus_1(tmp_path):
    model = tmp_path / "model.onnx"
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "b", "0": "a"}}))
    assert class_names(str(model)) == ["a", "b"]
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "a", "2": "c"}}))
    assert class_names(str(model)) is None


# ------------------------------------------------------------------ certify with the card beside the model
def _vit_folder(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """An optimum-style folder (model.onnx with every dim symbolic, preprocessor_config.json, config.json) and
    image files of several sizes, labelled with plain onnxruntime's answers on the card's preprocessing."""
    from PIL import Image

    folder = tmp_path / "vit"
    model = pooled_model(folder / "model.onnx")
    write_card(folder, VIT_CARD, NAMES)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    sizes = [(9, 7), (12, 12), (6, 15), (20, 11), (8, 8), (16, 9)]
    images = [
        (255 * coloured(1, (3, h, w), seed=k)[0].transpose(1, 2, 0)).astype(np.uint8) for k, (h, w) in enumerate(sizes)
    ]
    inputs = []
    for im in images:
        x = np.asarray(Image.fromarray(im).resize((5, 6), Image.Resampling.BILINEAR), np.float32) / 255
        inputs.append(((x - 0.5) / 0.5).transpose(2, 0, 1))
    labels = session.run(None, {"pixel_values": np.stack(inputs)})[0].argmax(1)
    data = tmp_path / "imgs"
    for k, (im, label) in enumerate(zip(images, labels)):
        (data / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(data / str(label) / f"{k}.png")
    return model, data, labels


def test_optimum_folder_certifies_with_the_card_and_agrees_with_onnxruntime(tmp_path, capsys):
    model, data, labels = _vit_folder(tmp_path)
    assert len(set(labels)) >= 2
    out = tmp_path / "r.tsv"
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--out", str(out)])
    assert code == 0, err
    assert "preprocessing from" in err and "resize 6x5" in err and "mean 0.5,0.5,0.5" in err
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["config"]["resize"] == "6x5" and meta["config"]["mean"] == [0.5] * 3
    assert meta["config"]["preprocessor"].endswith("preprocessor_config.json")
    assert meta["class_names"] == NAMES
    assert meta["clean_accuracy"]["accuracy"] == 1.0  # every image as plain onnxruntime classifies it
    # flags override the card, and the log says so
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--mean", "0", "--std", "1", "--out", "-"])
    assert code == 0 and "not taken: mean, std" in err
    # --preprocessor none ignores it: the images then have several sizes
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--preprocessor", "none", "--out", "-"])
    assert code == 1 and "images of different sizes" in err


def test_card_resize_is_not_applied_to_arrays_and_resample_is_taken(tmp_path, capsys):
    """An .npz is used as it is (the card's resize/crop/resample are for image files); a bicubic card resizes
    image files bicubic."""
    from PIL import Image

    from tests.test_shapes import images_npz

    folder = tmp_path / "m"
    model = pooled_model(folder / "model.onnx")
    write_card(folder, {**VIT_CARD, "resample": 3})
    out = tmp_path / "r.tsv"
    code, _, err = run(
        capsys, ["certify", str(model), str(images_npz(tmp_path / "d.npz")), *CERTIFY, "--out", str(out)]
    )
    assert code == 0, err
    assert "not applied to arrays, used as they are: resample, resize" in err
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["config"]["resize"] is None and meta["config"]["mean"] == [0.5] * 3
    im = (255 * coloured(1, (3, 11, 13))[0].transpose(1, 2, 0)).astype(np.uint8)
    Image.fromarray(im).save(tmp_path / "a.png")
    code, _, err = run(
        capsys,
        ["certify", str(model), str(tmp_path / "a.png"), "--label", "0", *CERTIFY, "--out", str(out), "--overwrite"],
    )
    assert code == 0, err
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["config"]["resample"] == "bicubic" and meta["data"]["transform"]["resize_method"].startswith(
        "PIL bicubic"
    )


def test_resample_filters_match_pil(tmp_path):
    from PIL import Image

    from rs_onnx.data import ImageTransform

    im = Image.fromarray(RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8))
    for name in ("bilinear", "bicubic", "nearest", "lanczos"):
        want = np.asarray(im.resize((5, 7), Image.Resampling[name.upper()])).transpose(2, 0, 1)
        np.testing.assert_array_equal(ImageTransform(resize=(7, 5), resample=name)(im), want)


def test_preprocessor_flag_reads_a_card_elsewhere(tmp_path, capsys):
    model, data, _ = _vit_folder(tmp_path)
    card = tmp_path / "vit" / "preprocessor_config.json"
    moved = tmp_path / "cards" / "pp.json"
    moved.parent.mkdir()
    card.rename(moved)
    code, out, err = run(
        capsys, ["certify", str(model), str(data), *CERTIFY, "--preprocessor", str(moved), "--dump-config"]
    )
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["resize"] == "6x5" and cfg["std"] == [0.5] * 3 and cfg["preprocessor"] == str(moved)
    code, _, err = run(capsys, ["certify", str(model), str(data), "--preprocessor", str(tmp_path / "nope.json")])
    assert code == 1 and "--preprocessor" in err and "not found" in err


# ------------------------------------------------------------------ channel order
def test_bgr_reverses_rgb_before_mean_std():
    x = RNG.random((3, 4, 5)).astype(np.float32)
    spec = PreprocessSpec(mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), channel_order="bgr")
    bgr = Preprocessor(spec, (3, 4, 5), (3, 4, 5), np.float32)
    rgb = Preprocessor(PreprocessSpec(mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7)), (3, 4, 5), (3, 4, 5), np.float32)
    np.testing.assert_array_equal(bgr.clean(x), rgb.clean(x[::-1]))
    nhwc = Preprocessor(PreprocessSpec(layout="nhwc", channel_order="bgr"), (3, 4, 5), (4, 5, 3), np.float32)
    np.testing.assert_array_equal(nhwc.clean(x), x[::-1].transpose(1, 2, 0))
    rgba = Preprocessor(PreprocessSpec(channel_order="bgr"), (4, 2, 2), (4, 2, 2), np.float32)
    y = RNG.random((4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(rgba.clean(y), y[[2, 1, 0, 3]])  # alpha stays last
    assert bgr.describe()["channel_order"] == "bgr"
    with pytest.raises(ConfigError, match="channel_order bgr for images shaped \\[1, 4, 4\\]"):
        Preprocessor(PreprocessSpec(channel_order="bgr"), (1, 4, 4), (1, 4, 4), np.float32)


def test_composed_preprocessing_flips_as_numpy_does():
    from rs_onnx.compose import preprocessing_model

    pre = Preprocessor(PreprocessSpec(mean=(0.4,), std=(0.2,), channel_order="bgr"), (3, 4, 5), (3, 4, 5), np.float32)
    m = preprocessing_model(pre, opset=13, ir_version=8)
    x = RNG.random((2, 3, 4, 5)).astype(np.float32)
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(got, np.stack([pre.clean(v) for v in x]), rtol=1e-6, atol=1e-6)


def test_audit_grid_follows_the_channel_order():
    from rs_onnx.audit import AuditPreprocessor, GridNoise

    grid = GridNoise(0.25)
    x = RNG.integers(0, 256, (3, 2, 2)).astype(np.float32) / 255
    pre = AuditPreprocessor(PreprocessSpec(channel_order="bgr"), (3, 2, 2), (3, 2, 2), np.float32, grid)
    np.testing.assert_array_equal(pre.clean(x), np.rint(x[::-1] * 255).astype(np.int32))


def test_channel_order_flag_and_yaml_key(tmp_path, capsys):
    """A model trained on BGR images: right on every image with --channel-order BGR (any case), not without."""
    from tests.test_shapes import pooled_scores

    model = pooled_model(tmp_path / "m.onnx", dims=["N", 3, 8, 8])
    x = coloured(12)
    labels = pooled_scores(x[:, ::-1]).argmax(1)
    assert (labels != pooled_scores(x).argmax(1)).any()
    np.savez(tmp_path / "d.npz", images=x, labels=labels)
    out = tmp_path / "r.tsv"
    code, _, err = run(
        capsys, ["certify", str(model), str(tmp_path / "d.npz"), *CERTIFY, "--channel-order", "BGR", "--out", str(out)]
    )
    assert code == 0, err
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["config"]["channel_order"] == "bgr" and meta["preprocess"]["channel_order"] == "bgr"
    assert meta["clean_accuracy"]["accuracy"] == 1.0
    (tmp_path / "c.yaml").write_text("channel_order: Bgr\n")
    code, _, err = run(
        capsys,
        [
            "certify",
            str(model),
            str(tmp_path / "d.npz"),
            *CERTIFY,
            "--config",
            str(tmp_path / "c.yaml"),
            "--out",
            str(out),
            "--overwrite",
        ],
    )
    assert code == 0 and json.loads(Path(f"{out}.meta.json").read_text())["clean_accuracy"]["accuracy"] == 1.0
    code, _, err = run(
        capsys, ["certify", str(model), str(tmp_path / "d.npz"), *CERTIFY, "--out", str(out), "--overwrite"]
    )
    assert code == 0 and json.loads(Path(f"{out}.meta.json").read_text())["clean_accuracy"]["accuracy"] < 1.0
    code, _, err = run(capsys, ["certify", str(model), str(tmp_path / "d.npz"), *CERTIFY, "--channel-order", "gbr"])
    assert code == 2 and "gbr" in err  # a choice not offered: a usage error


# ------------------------------------------------------------------ --resize HxW
def test_resize_hxw_stretches_and_shorter_side_still_works(tmp_path, capsys):
    from PIL import Image

    from rs_onnx.data import ImageTransform, parse_resize

    assert parse_resize("224x200") == (224, 200) and parse_resize(" 256 ") == 256 and parse_resize(7) == 7
    for bad in ("0", "224x", "x", "224x224x3", "70000", True):
        with pytest.raises(Exception, match="--resize"):
            parse_resize(bad)
    im = Image.fromarray(RNG.integers(0, 256, (10, 30, 3), dtype=np.uint8))
    assert ImageTransform(resize=(4, 6))(im).shape == (3, 4, 6)  # exactly HxW, aspect not kept
    assert ImageTransform(resize=5)(im).shape == (3, 5, 15)  # shorter side, aspect kept
    model = pooled_model(tmp_path / "m.onnx", dims=["N", 3, 4, 6])
    im.save(tmp_path / "a.png")
    code, _, err = run(
        capsys,
        ["certify", str(model), str(tmp_path / "a.png"), "--label", "0", *CERTIFY, "--resize", "4X6", "--out", "-"],
    )
    assert code == 0, err
    (tmp_path / "c.yaml").write_text("resize: 4x6\n")
    code, _, err = run(
        capsys,
        [
            "certify",
            str(model),
            str(tmp_path / "a.png"),
            "--label",
            "0",
            *CERTIFY,
            "--config",
            str(tmp_path / "c.yaml"),
            "--out",
            "-",
        ],
    )
    assert code == 0, err
    code, _, err = run(
        capsys, ["certify", str(model), str(tmp_path / "a.png"), "--label", "0", *CERTIFY, "--resize", "4x0"]
    )
    assert code == 1 and "resize" in err


# ------------------------------------------------------------------ Keras: the graph rescales 0..255 itself
def keras_model(path: Path, divide: bool = False) -> tuple[Path, np.ndarray, np.ndarray]:
    """NHWC [N, 8, 8, 3] taking 0..255 (Mul by 1/255 or Div by 255 first, as Keras Rescaling), pooled, softmax."""
    w = (4 * np.random.default_rng(5).normal(size=(3, 4))).astype(np.float32)
    b = np.array([0.2, 0.0, -0.1, 0.1], np.float32)
    first = helper.make_node("Div", ["x", "k"], ["r"]) if divide else helper.make_node("Mul", ["x", "k"], ["r"])
    nodes = [
        first,
        helper.make_node("ReduceMean", ["r"], ["g"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["g", "W"], ["gw"]),
        helper.make_node("Add", ["gw", "B"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probs"], axis=1),
    ]
    k = np.array(255.0 if divide else 1 / 255, np.float32)
    inits = [numpy_helper.from_array(k, "k"), numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    x = helper.make_tensor_value_info("x", T.FLOAT, ["unk__0", 8, 8, 3])
    y = helper.make_tensor_value_info("probs", T.FLOAT, ["unk__0", 4])
    return _save(nodes, [x], [y], inits, path), w, b


@pytest.mark.parametrize("divide", [False, True])
def test_keras_rescaling_sets_scale_255_and_inspect_suggests_it(tmp_path, capsys, divide):
    model, w, b = keras_model(tmp_path / "keras.onnx", divide)
    assert graph_rescale(str(model)) is not None
    x = coloured(16)
    labels = (x.mean(axis=(2, 3)) @ w + b).argmax(1)
    assert len(set(labels)) >= 2  # a constant answer cannot score 100%
    np.savez(tmp_path / "d.npz", images=x, labels=labels)
    out = tmp_path / "r.tsv"
    code, _, err = run(capsys, ["certify", str(model), str(tmp_path / "d.npz"), *CERTIFY, "--out", str(out)])
    assert code == 0, err
    assert "it takes 0..255 pixels, so scale 255" in err
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["config"]["scale"] == 255.0 and meta["clean_accuracy"]["accuracy"] == 1.0
    # an explicit --scale wins, silently (and here it is wrong: the clean accuracy drops)
    code, _, err = run(
        capsys,
        ["certify", str(model), str(tmp_path / "d.npz"), *CERTIFY, "--scale", "1", "--out", str(out), "--overwrite"],
    )
    assert code == 0 and "0..255" not in err
    assert json.loads(Path(f"{out}.meta.json").read_text())["clean_accuracy"]["accuracy"] < 0.9
    # inspect suggests it, and its suggestion runs right
    code, text, _ = run(capsys, ["inspect", str(model), "--json"])
    report = json.loads(text)
    assert code == 0 and report["suggested_config"]["scale"] == 255.0 and report["suggested_config"]["preset"] == "none"
    assert report["basis"].startswith("from the graph")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(report["suggested_config"]))
    code, _, err = run(
        capsys,
        [
            "certify",
            "--config",
            str(tmp_path / "s.yaml"),
            str(model),
            str(tmp_path / "d.npz"),
            *CERTIFY,
            "--out",
            str(out),
            "--overwrite",
        ],
    )
    assert code == 0, err
    assert json.loads(Path(f"{out}.meta.json").read_text())["clean_accuracy"]["accuracy"] == 1.0


def test_plain_normalisation_is_not_read_as_rescaling(tmp_path):
    from tests.test_inspection import normalised_model

    path = tmp_path / "norm.onnx"
    onnx.save(normalised_model(), str(path))
    assert graph_rescale(str(path)) is None


# ------------------------------------------------------------------ inspect: guesses are labelled, the card preferred
def _imagenet_shaped(path: Path) -> Path:
    w = RNG.normal(size=(3, 1000)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["pixel_values"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "W"], ["logits"]),
    ]
    x = helper.make_tensor_value_info("pixel_values", T.FLOAT, ["batch_size", 3, 224, 224])
    y = helper.make_tensor_value_info("logits", T.FLOAT, ["batch_size", 1000])
    return _save(nodes, [x], [y], [numpy_helper.from_array(w, "W")], path)


def test_inspect_labels_a_preset_guess_and_prefers_the_shipped_card(tmp_path, capsys):
    model = _imagenet_shaped(tmp_path / "plain" / "model.onnx")
    code, text, _ = run(capsys, ["inspect", str(model)])
    assert code == 0 and "preset: imagenet" in text and "GUESS" in text and "0.5" in text
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model.read_bytes())
    write_card(folder, {**VIT_CARD, "size": {"height": 224, "width": 224}}, [f"c{i}" for i in range(1000)])
    code, text, _ = run(capsys, ["inspect", str(folder / "model.onnx"), "--json"])
    report = json.loads(text)
    assert code == 0 and "preset" not in report["suggested_config"]
    assert report["suggested_config"]["mean"] == [0.5] * 3 and report["suggested_config"]["resize"] == "224x224"
    assert report["basis"].startswith("from ") and "preprocessor_config.json" in report["basis"]
    assert report["class_names"][:2] == ["c0", "c1"]


def test_inspect_takes_the_shape_of_a_symbolic_model_from_the_card(tmp_path, capsys):
    folder = tmp_path / "hf"
    model = pooled_model(folder / "model.onnx")
    write_card(folder, VIT_CARD)
    code, text, _ = run(capsys, ["inspect", str(model)])
    assert code == 0, text
    assert "[3, 6, 5] per example, from the crop/resize of" in text


# ------------------------------------------------------------------ against transformers' own processors
HF_PROCESSORS = {
    "ViTImageProcessor": {"size": {"height": 16, "width": 20}, "resample": 2},
    "ConvNextImageProcessor": {"size": {"shortest_edge": 28}, "crop_pct": 0.875, "resample": 3},
    "MobileViTImageProcessor": {"size": {"shortest_edge": 28}, "crop_size": {"height": 24, "width": 24}},
    "DeiTImageProcessor": {"size": {"height": 30, "width": 30}, "crop_size": {"height": 24, "width": 24}},
    "BeitImageProcessor": {"size": {"height": 20, "width": 20}},
    "EfficientNetImageProcessor": {"size": {"height": 20, "width": 20}, "resample": 2},
    "LevitImageProcessor": {"size": {"shortest_edge": 28}, "crop_size": {"height": 24, "width": 24}},
    "CLIPImageProcessor": {"size": {"shortest_edge": 28}, "crop_size": {"height": 24, "width": 24}},
    "BitImageProcessor": {"size": {"shortest_edge": 30}, "crop_size": {"height": 24, "width": 24}},
}


@pytest.mark.parametrize("name", sorted(HF_PROCESSORS))
def test_card_reproduces_the_transformers_processor(tmp_path, name):
    """The card a transformers processor saves, read by rs-onnx and applied by its own image transform and
    preprocessing, gives the processor's pixel_values to within one uint8 level (resampling rounds)."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (test extra)")
    from PIL import Image

    from rs_onnx.data import ImageTransform, parse_crop, parse_resize

    processor = getattr(transformers, name)(**HF_PROCESSORS[name])
    processor.save_pretrained(tmp_path)
    card = read_card(tmp_path / "preprocessor_config.json").values
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    want = np.asarray(processor(images=im, return_tensors="np")["pixel_values"][0], np.float64)
    transform = ImageTransform(
        parse_resize(card.get("resize")), parse_crop(card.get("center_crop")), 3, card.get("resample", "bilinear")
    )
    x = transform(im).astype(np.float32) / 255
    spec = PreprocessSpec(
        scale=card["scale"],
        mean=tuple(card["mean"]),
        std=tuple(card["std"]),
        channel_order=card.get("channel_order", "rgb"),
    )
    got = Preprocessor(spec, x.shape, x.shape, np.float32).clean(x)
    assert got.shape == want.shape
    level = card["scale"] / 255 / min(card["std"])
    assert np.abs(got - want).max() <= 1.01 * level, (card, np.abs(got - want).max())


def test_class_names_from_classes_file_first_and_never_a_wrong_count(tmp_path, capsys):
    from tests.test_shapes import images_npz

    folder = tmp_path / "m"
    model = pooled_model(folder / "model.onnx")  # 4 classes
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b", "2": "c"}}))
    data = images_npz(tmp_path / "d.npz")
    out = tmp_path / "r.tsv"
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--out", str(out)])
    assert code == 0 and "names 3 classes (id2label) and the model has 4" in err
    assert json.loads(Path(f"{out}.meta.json").read_text())["class_names"] is None
    (tmp_path / "names.txt").write_text("w\nx\ny\nz\n")
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    for name in ("w", "x"):
        (tmp_path / "imgs" / name).mkdir()
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "imgs" / name / "a.png")
    code, _, err = run(
        capsys,
        ["certify", str(model), str(tmp_path / "imgs"), "--classes", str(tmp_path / "names.txt"), *CERTIFY]
        + ["--out", str(out), "--overwrite"],
    )
    assert code == 0, err
    assert json.loads(Path(f"{out}.meta.json").read_text())["class_names"] == ["w", "x", "y", "z"]


def test_inspect_suggestion_from_the_card_certifies_right(tmp_path, capsys):
    """The config inspect suggests for an optimum folder (shape from the card's resize) runs at 100% clean accuracy."""
    model, data, _ = _vit_folder(tmp_path)
    code, text, _ = run(capsys, ["inspect", str(model), "--json"])
    assert code == 0, text
    suggested = json.loads(text)["suggested_config"]
    assert suggested["input_shape"] == [3, 6, 5] and suggested["resize"] == "6x5"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suggested))
    out = tmp_path / "r.tsv"
    code, _, err = run(
        capsys, ["certify", "--config", str(tmp_path / "s.yaml"), str(model), str(data), *CERTIFY, "--out", str(out)]
    )
    assert code == 0, err
    assert json.loads(Path(f"{out}.meta.json").read_text())["clean_accuracy"]["accuracy"] == 1.0


def test_a_real_mobilevit_export_runs_at_its_card_size_and_is_refused_at_another(tmp_path, capsys):
    """transformers' MobileViT exported with H/W dynamic runs at one size only: with its card (shorter side,
    crop, BGR) it certifies; at another size the load-time trial run refuses it in one line."""
    torch = pytest.importorskip("torch", reason="torch is not installed (train extra)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (test extra)")
    from PIL import Image

    torch.manual_seed(0)
    config = transformers.MobileViTConfig(
        image_size=64,
        num_labels=3,
        hidden_sizes=[16, 20, 24],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        num_attention_heads=2,
        patch_size=2,
    )
    net = transformers.MobileViTForImageClassification(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).logits

    folder = tmp_path / "mobilevit"
    folder.mkdir()
    torch.onnx.export(
        Logits(net),
        (torch.rand(1, 3, 64, 64),),
        str(folder / "model.onnx"),
        dynamo=False,
        input_names=["pixel_values"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"pixel_values": {0: "batch_size", 1: "num_channels", 2: "height", 3: "width"}},
    )
    processor = transformers.MobileViTImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})
    processor.save_pretrained(folder)
    for k, (h, w) in enumerate([(80, 100), (90, 75)]):
        (tmp_path / "imgs" / "0").mkdir(parents=True, exist_ok=True)
        im = (255 * coloured(1, (3, h, w), seed=k)[0].transpose(1, 2, 0)).astype(np.uint8)
        Image.fromarray(im).save(tmp_path / "imgs" / "0" / f"{k}.png")
    out = tmp_path / "r.tsv"
    args = ["certify", str(folder / "model.onnx"), str(tmp_path / "imgs"), *CERTIFY]
    code, _, err = run(capsys, [*args, "--out", str(out)])
    assert code == 0, err
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["config"]["channel_order"] == "bgr" and meta["config"]["input_shape"] == [3, 64, 64]
    code, _, err = run(capsys, [*args, "--resize", "96x96", "--center-crop", "96", "--out", str(out), "--overwrite"])
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("rs-onnx: error:")]
    assert len(errors) == 1 and "the graph rejects input 'pixel_values' shaped [1, 3, 96, 96]" in errors[0]
