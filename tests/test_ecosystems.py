"""One recipe per ecosystem, as docs/models/ shows it: a small model exported exactly as its ecosystem
exports it, certified from the CLI with only the preprocessing its model card states, and rs-onnx's base
classifier checked against plain onnxruntime on the same preprocessing, on every example (the data's labels
are onnxruntime's classes, so the clean-accuracy pass must be 100%). Each test skips, with the reason,
when its ecosystem's package is not installed (``pip install 'rs-onnx[ecosystems]'``)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import invoke_cli as run

FAST = ["--sigma", "0.25", "--n0", "8", "--n", "32", "--seed", "0", "--device", "cpu"]
SIZES = [(40, 30), (30, 44), (36, 36)]
"""(width, height) of the test images: resizing and cropping matter."""


def _images(folder, count=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES[:count]):
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        img = np.stack([np.sin(rng.uniform(2, 9) * xx + rng.uniform(0, 3) * yy + c) for c in range(3)], -1)
        arr = np.clip(127.5 * (img + 1) + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def _ort_classes(model, x):
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outs = s.run(None, {s.get_inputs()[0].name: x})
    for o in outs:  # a classical ML model's label output: its predict()
        if isinstance(o, np.ndarray) and o.dtype.kind in "iu" and o.size == len(x):
            return o.reshape(-1)
    return next(o for o in outs if isinstance(o, np.ndarray) and o.dtype.kind == "f").reshape(len(x), -1).argmax(1)


def _manifest(folder, paths, labels):
    path = folder / "data.csv"
    path.write_text("path,label\n" + "".join(f"{p.name},{int(y)}\n" for p, y in zip(paths, labels)))
    return path


def _certify(model, data, *flags, tmp):
    out = tmp / "r.tsv"
    res = run(["certify", str(model), str(data), *flags, *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp / "r.tsv.meta.json").read_text())
    acc = meta["clean_accuracy"]
    assert acc["correct"] == acc["examples"], f"rs-onnx disagrees with onnxruntime: {acc}\n{res.output}"
    return meta, res


# ------------------------------------------------------------------ Hugging Face transformers
def _hf(arch):
    tr = pytest.importorskip("transformers", reason="transformers is not installed (rs-onnx[ecosystems])")
    torch = pytest.importorskip("torch", reason="torch is not installed")
    torch.manual_seed(0)
    if arch == "vit":
        cfg = tr.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=5,
        )
        return torch, tr.ViTForImageClassification(cfg).eval(), tr.ViTImageProcessor(size={"height": 32, "width": 32})
    cfg = tr.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}  # defaults vary by version
    proc = tr.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, **imagenet)
    return torch, tr.ResNetForImageClassification(cfg).eval(), proc


def test_transformers_vit_exported_by_optimum_certifies_with_its_shipped_config(tmp_path):
    """optimum-cli export onnx: pixel_values [batch_size, num_channels, height, width] and the processor's
    preprocessor_config.json beside model.onnx; rs-onnx takes the preprocessing from it (no flags)."""
    torch, model, proc = _hf("vit")
    pytest.importorskip("optimum.exporters.onnx", reason="optimum (optimum-onnx) is not installed")
    from optimum.exporters.onnx import main_export

    src, exported = tmp_path / "vit", tmp_path / "vit_onnx"
    model.save_pretrained(src)
    proc.save_pretrained(src)
    main_export(str(src), output=str(exported), task="image-classification")
    paths = _images(tmp_path)
    from PIL import Image

    ref = proc(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="np")["pixel_values"]
    labels = _ort_classes(exported / "model.onnx", ref.astype(np.float32))
    meta, _ = _certify(exported / "model.onnx", _manifest(tmp_path, paths, labels), tmp=tmp_path)
    assert meta["model"]["signature"]["input_shape"] == [3, 32, 32]


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_transformers_resnet_torch_export_with_the_card_flags(tmp_path, dynamo):
    """torch.onnx.export of a transformers ResNet; the processor (ConvNextImageProcessor: shorter side
    32 / 0.875 = 36, centre crop 32, ImageNet mean/std) as flags."""
    torch, model, proc = _hf("resnet")

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).logits

    from PIL import Image

    paths = _images(tmp_path)
    ref = proc(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="np")["pixel_values"]
    ref = ref.astype(np.float32)
    path = tmp_path / "resnet.onnx"
    kw = (
        {"dynamo": True, "dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=1024)},)}
        if dynamo
        else {"dynamo": False, "dynamic_axes": {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}}
    )
    torch.onnx.export(
        Logits(model),
        (torch.from_numpy(ref[:2]),),
        str(path),
        input_names=["pixel_values"],
        output_names=["logits"],
        **kw,
    )
    labels = _ort_classes(path, ref)
    flags = ["--resize", "36", "--center-crop", "32", "--preset", "imagenet"]
    meta, _ = _certify(path, _manifest(tmp_path, paths, labels), *flags, tmp=tmp_path)
    assert meta["model"]["signature"]["output_name"] == "logits"


# ------------------------------------------------------------------ timm
@pytest.mark.slow
def test_timm_dynamo_export_with_the_data_config_as_flags(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is not installed (rs-onnx[ecosystems])")
    import torch
    from PIL import Image

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    size = cfg["input_size"][-1]  # resnet10t: 176, crop_pct 0.875, bicubic
    # timm's eval transform (torchvision's Resize/CenterCrop on PIL images): shorter side to
    # floor(size / crop_pct) with the config's interpolation, centre crop, mean/std; written with PIL
    # here, since PyPI's torchvision may not import beside torch
    paths = _images(tmp_path)
    resize, crop = int(size / cfg["crop_pct"]), size
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[cfg["interpolation"]]

    def pre(p):
        im = Image.open(p).convert("RGB")
        w, h = im.size
        s = resize / min(w, h)
        im = im.resize((resize, int(s * h)) if w <= h else (int(s * w), resize), resample)
        left, top = round((im.width - crop) / 2), round((im.height - crop) / 2)
        x = np.asarray(im.crop((left, top, left + crop, top + crop)), np.float32).transpose(2, 0, 1) / 255
        return (x - np.array(cfg["mean"], np.float32)[:, None, None]) / np.array(cfg["std"], np.float32)[:, None, None]

    ref = np.stack([pre(p) for p in paths]).astype(np.float32)
    path = tmp_path / "timm.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(model, (torch.from_numpy(ref[:2]),), str(path), dynamo=True, dynamic_shapes=({0: batch},))
    labels = _ort_classes(path, ref)
    flags = ["--resize", str(resize), "--center-crop", str(size), "--resample", cfg["interpolation"]]
    flags += ["--mean", ",".join(map(str, cfg["mean"])), "--std", ",".join(map(str, cfg["std"]))]
    _certify(path, _manifest(tmp_path, paths, labels), *flags, tmp=tmp_path)


# ------------------------------------------------------------------ torchvision
@pytest.mark.slow
def test_torchvision_dynamo_export_with_the_weights_transforms_as_flags(tmp_path):
    try:
        import torchvision.models as tvm
    except Exception as e:  # noqa: BLE001 - PyPI's torchvision 0.29 fails to import beside torch 2.13
        pytest.skip(f"torchvision does not import here ({type(e).__name__}); needs a torch it was built for")
    import torch
    from PIL import Image

    torch.manual_seed(0)
    model = tvm.mobilenet_v3_small(weights=None, num_classes=5).eval()
    transform = tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1.transforms()
    paths = _images(tmp_path)
    ref = np.stack([transform(Image.open(p).convert("RGB")).numpy() for p in paths]).astype(np.float32)
    path = tmp_path / "tv.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(model, (torch.from_numpy(ref[:2]),), str(path), dynamo=True, dynamic_shapes=({0: batch},))
    labels = _ort_classes(path, ref)
    flags = ["--resize", "256", "--center-crop", "224", "--preset", "imagenet"]
    _certify(path, _manifest(tmp_path, paths, labels), *flags, tmp=tmp_path)


# ------------------------------------------------------------------ Keras
@pytest.mark.slow
def test_keras_export_with_rescaling_inside(tmp_path):
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    pytest.importorskip("tensorflow", reason="tensorflow is not installed (tensorflow-cpu; see docs/models/keras.md)")
    keras = pytest.importorskip("keras", reason="keras is not installed")
    from PIL import Image

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(5),
        ]
    )
    model(np.zeros((1, 12, 12, 3), np.float32))  # Keras 3.15 refuses to export a model never called
    model.export(str(tmp_path / "keras.onnx"), format="onnx")
    paths = _images(tmp_path)
    ims = [Image.open(p).convert("RGB").resize((12, 12), Image.Resampling.BILINEAR) for p in paths]
    ref = np.stack([np.asarray(im, np.float32) for im in ims])  # 0..255: the model rescales
    labels = _ort_classes(tmp_path / "keras.onnx", ref)
    meta, _ = _certify(tmp_path / "keras.onnx", _manifest(tmp_path, paths, labels), "--resize", "12x12", tmp=tmp_path)
    assert meta["preprocess"]["scale"] == 255.0


# ------------------------------------------------------------------ scikit-learn, XGBoost, LightGBM
def _digits():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed (rs-onnx[ecosystems])")
    x, y = datasets.load_digits(return_X_y=True)
    return x[:-30].astype(np.float32), y[:-30], x[-30:].astype(np.float32)


def _features_csv(tmp, x, labels):
    path = tmp / "features.csv"
    path.write_text("".join(",".join(f"{v:g}" for v in row) + f",{int(y)}\n" for row, y in zip(x, labels)))
    return path


@pytest.mark.parametrize("zipmap", [True, False])
def test_skl2onnx_logistic_regression(tmp_path, zipmap):
    """skl2onnx's default (ZipMap: probabilities as a sequence of maps) and zipmap=False (label + a
    probabilities tensor): both certify with no flag, from a numeric CSV."""
    xt, yt, xe = _digits()
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (rs-onnx[ecosystems])")
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=500).fit(xt[:400], yt[:400])
    options = None if zipmap else {id(clf): {"zipmap": False}}
    onx = skl2onnx.to_onnx(clf, xt[:1], options=options)
    path = tmp_path / "logreg.onnx"
    path.write_bytes(onx.SerializeToString())
    labels = _ort_classes(path, xe)
    np.testing.assert_array_equal(labels, clf.predict(xe))
    meta, _ = _certify(path, _features_csv(tmp_path, xe, labels), tmp=tmp_path)
    sig = meta["model"]["signature"]
    assert sig["output_name"] == ("output_label" if zipmap else "label")
    assert sig["output_kind"] == "indices" and sig["num_classes"] == 10


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_onnxmltools_boosted_trees(tmp_path, library):
    xt, yt, xe = _digits()
    onnxmltools = pytest.importorskip("onnxmltools", reason="onnxmltools is not installed (rs-onnx[ecosystems])")
    lib = pytest.importorskip(library, reason=f"{library} is not installed (rs-onnx[ecosystems])")
    from onnxmltools.convert.common.data_types import FloatTensorType

    types = [("input", FloatTensorType([None, 64]))]
    if library == "xgboost":
        clf = lib.XGBClassifier(n_estimators=8, max_depth=3).fit(xt, yt)
        onx = onnxmltools.convert_xgboost(clf, initial_types=types)
    else:
        clf = lib.LGBMClassifier(n_estimators=8, num_leaves=8, verbose=-1).fit(xt, yt)
        onx = onnxmltools.convert_lightgbm(clf, initial_types=types)
    path = tmp_path / f"{library}.onnx"
    path.write_bytes(onx.SerializeToString())
    labels = _ort_classes(path, xe)
    np.testing.assert_array_equal(labels, clf.predict(xe))
    meta, _ = _certify(path, _features_csv(tmp_path, xe, labels), tmp=tmp_path)
    assert meta["model"]["signature"]["output_kind"] == "indices"
