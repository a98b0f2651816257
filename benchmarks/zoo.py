"""The zoo: classifiers exported exactly as their ecosystems export them today, certified from the CLI.

    python3 benchmarks/zoo.py OUT [--only NAME,...] [--torch-python PY] [--tf-python PY] [--rebuild]

Builds (nothing is committed as a binary; everything goes under OUT):
  - Hugging Face transformers (tiny configs, random weights): optimum's ``main_export`` (what
    ``optimum-cli export onnx`` runs, with ``preprocessor_config.json`` and ``config.json`` beside
    ``model.onnx``) and ``torch.onnx.export`` (dynamo and legacy);
  - timm models (random weights), ``torch.onnx.export`` dynamo and legacy;
  - torchvision models (random weights) and a small CNN trained on scikit-learn's digits;
  - Keras 3 ``model.export(format="onnx")`` and tf2onnx (a CNN trained on digits, MobileNetV3Small);
  - scikit-learn via skl2onnx (zipmap default and False), XGBoost and LightGBM via onnxmltools;
  - onnxruntime quantization (dynamic, static QDQ) and fp16 conversion of some of these.

The torch models are built by ``--torch-python`` (default /tmp/venv-tv/bin/python when it exists: torch,
torchvision, transformers, timm, optimum-onnx), the Keras ones by ``--tf-python`` (default
/tmp/venv-tf/bin/python: tensorflow-cpu, tf2onnx); a group whose interpreter or packages are missing is
reported as skipped, with the reason. Each case writes ``card.json``: the preprocessing its model card or
processor states, as rs-onnx flags (never a shape, output or scale flag), and ``ref.npy``: the zoo's
images as the ecosystem itself preprocesses them (its own processor / transform).

Then, in this interpreter, for each case: plain onnxruntime classifies ``ref.npy`` (the label output of a
classical ML model, else the argmax of the scores), those classes become the labels of the data, and
``rs-onnx certify`` runs with the card's flags only. rs-onnx's clean-accuracy pass (one forward pass of
the base classifier per example) then measures its agreement with onnxruntime: 100% means that rs-onnx fed
the model exactly what its ecosystem feeds it, on every image. Results: OUT/zoo.json and OUT/MODELS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SIZES = [(320, 240), (240, 320), (500, 375), (256, 256), (300, 200), (224, 224), (640, 480), (260, 300)]
"""(width, height) of the zoo's RGB images: shapes that make resizing and cropping matter."""
DIGITS_EVAL = 40
"""Digits held out of training: the data of the digits models (images and features)."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CERTIFY = ["--n0", "16", "--n", "64", "--seed", "0", "--device", "cpu"]
SIGMA = {"images": "0.25", "digits": "0.25", "features": "0.5"}
GROUPS = ("sklearn", "torch", "keras", "derived")
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
"""PIL's resampling codes (a processor's ``resample``) by their --resample names."""


def floats(values) -> str:
    return ",".join(f"{v:g}" for v in values)


# =============================================================================================== data
def make_images(folder: Path) -> list[Path]:
    """Smooth random RGB scenes of several sizes (PNG), the same on every run."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(IMAGE_SIZES):
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        chans = []
        for _ in range(3):
            a, b, c = rng.uniform(2, 14, 3)
            chans.append(
                np.sin(a * xx + rng.uniform(0, 6)) * np.cos(b * yy + rng.uniform(0, 6)) + 0.3 * np.sin(c * (xx + yy))
            )
        img = np.stack(chans, -1)
        for _ in range(4):  # a few blobs
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * max(w, h)
            mask = ((np.mgrid[0:h, 0:w][1] - cx) ** 2 + (np.mgrid[0:h, 0:w][0] - cy) ** 2) < r * r
            img[mask] += rng.uniform(-1, 1, 3)
        img = (img - img.min()) / (img.max() - img.min())
        arr = np.clip(255 * img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def make_digits(folder: Path) -> None:
    """scikit-learn's digits: train.npz (uint8 8x8 images, pixel = 16 * value clipped to 255, labels), the
    held-out images as PNGs and their 64 raw features (0..16) in features.npy."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    pix = np.clip(x * 16, 0, 255).astype(np.uint8).reshape(-1, 8, 8)
    np.savez(folder / "train.npz", images=pix[:-DIGITS_EVAL], labels=y[:-DIGITS_EVAL], features=x[:-DIGITS_EVAL])
    np.save(folder / "features.npy", x[-DIGITS_EVAL:].astype(np.float32))
    for i, im in enumerate(pix[-DIGITS_EVAL:]):
        Image.fromarray(im).save(folder / f"d{i:02d}.png")


def zoo_images(out: Path) -> list[Path]:
    return sorted((out / "images").glob("img*.png"), key=lambda p: int(p.stem[3:]))


def digit_images(out: Path) -> list[Path]:
    return sorted((out / "digits").glob("d*.png"))


# =============================================================================================== cases
def write_case(out: Path, name: str, card: dict, ref: np.ndarray, extra_files=()) -> None:
    """Write OUT/name/card.json and ref.npy (the model is already at OUT/name/model.onnx)."""
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "ref.npy", np.ascontiguousarray(ref))
    (d / "card.json").write_text(json.dumps({**card, "name": name}, indent=1))


def case_dir(out: Path, name: str, rebuild: bool) -> Path | None:
    """The case's folder, emptied; None when the case is already built and ``rebuild`` is off."""
    d = out / name
    if (d / "card.json").exists() and (d / "model.onnx").exists() and not rebuild:
        return None
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def record_failure(out: Path, name: str, exporter: str, model: str, err: BaseException) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    msg = " ".join(f"{type(err).__name__}: {err}".split())[:400]
    (d / "card.json").write_text(json.dumps({"name": name, "exporter": exporter, "model": model, "build_error": msg}))
    print(f"zoo: {name}: the export failed: {msg}", file=sys.stderr)


def guarded(out: Path, name: str, exporter: str, model: str, rebuild: bool, build) -> None:
    """Run ``build(folder)`` for one case; an export that fails is recorded, never fatal."""
    d = case_dir(out, name, rebuild)
    if d is None:
        return
    t0 = time.time()
    try:
        build(d)
        print(f"zoo: built {name} in {time.time() - t0:.0f} s", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - the exporter's failure is a result of the zoo
        traceback.print_exc()
        record_failure(out, name, exporter, model, err)


# ----------------------------------------------------------------------------------------- sklearn
def build_sklearn(out: Path, rebuild: bool) -> None:
    """scikit-learn (skl2onnx), XGBoost and LightGBM (onnxmltools), trained on digits' 64 features."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    xt, yt = x[:-DIGITS_EVAL].astype(np.float32), y[:-DIGITS_EVAL]
    ref = x[-DIGITS_EVAL:].astype(np.float32)
    card = {"data": "features", "flags": [], "preprocessing": "the 64 raw digit features (0..16), as trained"}

    def skl(name, make, zipmap):
        def build(d):
            from skl2onnx import to_onnx

            model = make().fit(xt, yt)
            options = None if zipmap else {id(model): {"zipmap": False}}
            onx = to_onnx(model, xt[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
            (d / "model.onnx").write_bytes(onx.SerializeToString())
            what = "default (ZipMap: a sequence of maps)" if zipmap else "zipmap=False"
            write_case(out, name, {**card, "exporter": f"skl2onnx to_onnx, {what}", "model": type(model).__name__}, ref)

        guarded(out, name, "skl2onnx", make.__name__ if hasattr(make, "__name__") else name, rebuild, build)

    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    skl("skl-logreg-zipmap", lambda: LogisticRegression(max_iter=3000), True)
    skl("skl-logreg", lambda: LogisticRegression(max_iter=3000), False)
    skl("skl-randomforest", lambda: RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0), False)
    skl("skl-gradientboosting", lambda: GradientBoostingClassifier(n_estimators=15, max_depth=2, random_state=0), False)
    skl("skl-mlp-zipmap", lambda: MLPClassifier((32,), max_iter=400, random_state=0), True)
    skl("skl-svc-proba", lambda: SVC(probability=True, random_state=0), False)

    def xgb(d):
        import onnxmltools
        import xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(xt, yt)
        onx = onnxmltools.convert_xgboost(
            model, initial_types=[("input", FloatTensorType([None, 64]))], target_opset=15
        )
        (d / "model.onnx").write_bytes(onx.SerializeToString())
        write_case(out, "xgboost", {**card, "exporter": "onnxmltools convert_xgboost", "model": "XGBClassifier"}, ref)

    def lgbm(d):
        import lightgbm
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, random_state=0, verbose=-1).fit(xt, yt)
        onx = onnxmltools.convert_lightgbm(
            model, initial_types=[("input", FloatTensorType([None, 64]))], target_opset=15
        )
        (d / "model.onnx").write_bytes(onx.SerializeToString())
        write_case(
            out, "lightgbm", {**card, "exporter": "onnxmltools convert_lightgbm", "model": "LGBMClassifier"}, ref
        )

    guarded(out, "xgboost", "onnxmltools", "XGBClassifier", rebuild, xgb)
    guarded(out, "lightgbm", "onnxmltools", "LGBMClassifier", rebuild, lgbm)


# ----------------------------------------------------------------------------------------- torch
def _export(torch, module, x, path: Path, dynamo: bool, input_name="pixel_values", output_name="logits") -> None:
    """torch.onnx.export as its documentation shows it: dynamo with a dynamic batch dim, or the legacy
    TorchScript exporter with ``dynamic_axes`` on the batch dim."""
    module = module.eval()
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamo=True,
            dynamic_shapes=({0: batch},),
            external_data=False,
        )
    else:
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamo=False,
            opset_version=17,
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )


def build_torch(out: Path, rebuild: bool) -> None:
    """transformers, timm, torchvision and a small trained CNN (run by --torch-python)."""
    import torch
    from PIL import Image

    torch.manual_seed(0)
    images = [Image.open(p).convert("RGB") for p in zoo_images(out)]
    build_hf(out, rebuild, torch, images)
    build_timm(out, rebuild, torch, images)
    build_torchvision(out, rebuild, torch, images)
    build_digits_cnn(out, rebuild, torch)


def build_hf(out: Path, rebuild: bool, torch, images) -> None:
    import transformers as tr

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).logits

    tiny = {"num_labels": 10}
    # ViT and DeiT share one tiny transformer (random weights: the check is on preprocessing, not accuracy)
    tiny_vit = dict(
        image_size=224,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **tiny,
    )
    specs = {
        "vit": (
            "ViTForImageClassification",
            tr.ViTConfig(**tiny_vit),
            tr.ViTImageProcessor(),
        ),
        "deit": (
            "DeiTForImageClassification",
            tr.DeiTConfig(**tiny_vit),
            tr.DeiTImageProcessor(),
        ),
        "resnet": (
            "ResNetForImageClassification",
            tr.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], **tiny),
            tr.ConvNextImageProcessor(  # as the hub's configs (the class defaults to 384 and mean/std 0.5)
                size={"shortest_edge": 224}, crop_pct=0.875, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
            ),
        ),
        "convnext": (
            "ConvNextForImageClassification",
            tr.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], **tiny),
            tr.ConvNextImageProcessor(  # as the hub's configs (the class defaults to 384 and mean/std 0.5)
                size={"shortest_edge": 224}, crop_pct=0.875, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
            ),
        ),
        "mobilevit": (
            "MobileViTForImageClassification",
            tr.MobileViTConfig(
                image_size=256,
                hidden_sizes=[16, 24, 32],
                neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                num_attention_heads=2,
                **tiny,
            ),
            tr.MobileViTImageProcessor(size={"shortest_edge": 288}, crop_size={"height": 256, "width": 256}),
        ),
        "swin": (
            "SwinForImageClassification",
            tr.SwinConfig(
                image_size=224, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=7, **tiny
            ),
            tr.ViTImageProcessor(),
        ),
    }
    exports = [
        ("vit", "optimum"),
        ("vit", "dynamo"),
        ("vit", "legacy"),
        ("deit", "optimum"),
        ("resnet", "optimum"),
        ("resnet", "legacy"),
        ("convnext", "optimum"),
        ("mobilevit", "optimum"),
        ("swin", "optimum"),
    ]
    for arch, how in exports:
        cls, config, processor = specs[arch]
        name = f"hf-{arch}-{how}"

        def build(d, cls=cls, config=config, processor=processor, how=how, name=name):
            torch.manual_seed(0)
            model = getattr(tr, cls)(config).eval()
            ref = processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
            card = {"data": "images", "model": f"{cls} (tiny config, random weights)"}
            if how == "optimum":
                from optimum.exporters.onnx import main_export

                src = d / "_pretrained"
                model.save_pretrained(src)
                processor.save_pretrained(src)
                main_export(str(src), output=str(d), task="image-classification", no_post_process=False)
                shutil.rmtree(src)
                card.update(
                    exporter="optimum main_export (optimum-cli export onnx), task image-classification",
                    flags=[],
                    preprocessing="preprocessor_config.json shipped beside model.onnx (no flags)",
                )
            else:
                _export(torch, Logits(model), torch.from_numpy(ref[:2]), d / "model.onnx", how == "dynamo")
                card.update(
                    exporter=f"torch.onnx.export {'dynamo=True' if how == 'dynamo' else 'legacy (dynamo=False)'}",
                    flags=processor_flags(processor),
                    preprocessing=f"{type(processor).__name__} defaults, as flags",
                )
            write_case(out, name, card, ref)

        guarded(out, name, how, cls, rebuild, build)


def processor_flags(p) -> list[str]:
    """What a transformers image processor does, as rs-onnx flags (resize, crop, mean/std, resample, BGR)."""
    flags: list[str] = []
    size = dict(p.size or {})
    crop = dict(getattr(p, "crop_size", None) or {}) if getattr(p, "do_center_crop", False) else {}
    if "height" in size:
        flags += ["--resize", f"{size['height']}x{size['width']}"]
    elif "shortest_edge" in size:
        edge = size["shortest_edge"]
        if getattr(p, "crop_pct", None) is not None:  # ConvNextImageProcessor
            flags += ["--resize", str(int(edge / p.crop_pct)), "--center-crop", str(edge)] if edge < 384 else []
            flags += ["--resize", f"{edge}x{edge}"] if edge >= 384 else []
        else:
            flags += ["--resize", str(edge)]
    if crop:
        flags += ["--center-crop", f"{crop['height']}x{crop['width']}"]
    if getattr(p, "do_normalize", False):
        flags += ["--mean", floats(p.image_mean), "--std", floats(p.image_std)]
    resample = PIL_RESAMPLE.get(int(getattr(p, "resample", 2)), "bilinear")
    if resample != "bilinear":
        flags += ["--resample", resample]
    if getattr(p, "do_flip_channel_order", False):
        flags += ["--channel-order", "bgr"]
    return flags


def build_timm(out: Path, rebuild: bool, torch, images) -> None:
    import timm
    from timm.data import create_transform, resolve_data_config

    for arch, how in [
        ("resnet18", "dynamo"),
        ("resnet18", "legacy"),
        ("mobilenetv3_small_050", "legacy"),
        ("vit_tiny_patch16_224", "dynamo"),
        ("convnext_atto", "dynamo"),
        ("efficientnet_b0", "legacy"),
    ]:
        name = f"timm-{arch.replace('_', '-')}-{how}"

        def build(d, arch=arch, how=how, name=name):
            torch.manual_seed(0)
            model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
            cfg = resolve_data_config({}, model=model)
            transform = create_transform(**cfg)
            ref = np.stack([transform(im).numpy() for im in images]).astype(np.float32)
            size = cfg["input_size"][-1]
            resize = math.floor(size / cfg["crop_pct"])
            flags = ["--resize", str(resize), "--center-crop", str(size), "--mean", floats(cfg["mean"])]
            flags += ["--std", floats(cfg["std"])]
            if cfg["interpolation"] != "bilinear":
                flags += ["--resample", cfg["interpolation"]]
            _export(torch, model, torch.from_numpy(ref[:2]), d / "model.onnx", how == "dynamo", "input", "output")
            card = {
                "data": "images",
                "model": f"timm {arch} (random weights)",
                "exporter": f"torch.onnx.export {'dynamo=True' if how == 'dynamo' else 'legacy (dynamo=False)'}",
                "flags": flags,
                "preprocessing": f"timm resolve_data_config: {cfg['interpolation']} resize, crop_pct {cfg['crop_pct']}",
                "interpolation": cfg["interpolation"],
            }
            write_case(out, name, card, ref)

        guarded(out, name, how, arch, rebuild, build)


def build_torchvision(out: Path, rebuild: bool, torch, images) -> None:
    import torchvision.models as tvm

    for arch, weights, how in [
        ("resnet18", "ResNet18_Weights", "dynamo"),
        ("mobilenet_v3_small", "MobileNet_V3_Small_Weights", "legacy"),
        ("squeezenet1_1", "SqueezeNet1_1_Weights", "dynamo"),
    ]:
        name = f"tv-{arch.replace('_', '-')}-{how}"

        def build(d, arch=arch, weights=weights, how=how):
            torch.manual_seed(0)
            model = getattr(tvm, arch)(weights=None, num_classes=10).eval()
            transform = getattr(tvm, weights).IMAGENET1K_V1.transforms()
            ref = np.stack([transform(im).numpy() for im in images]).astype(np.float32)
            resize, crop = transform.resize_size[0], transform.crop_size[0]
            _export(torch, model, torch.from_numpy(ref[:2]), d / "model.onnx", how == "dynamo", "input", "output")
            card = {
                "data": "images",
                "model": f"torchvision {arch} (random weights)",
                "exporter": f"torch.onnx.export {'dynamo=True' if how == 'dynamo' else 'legacy (dynamo=False)'}",
                "flags": ["--resize", str(resize), "--center-crop", str(crop), "--preset", "imagenet"],
                "preprocessing": f"{weights}.IMAGENET1K_V1.transforms()",
            }
            write_case(out, name, card, ref)

        guarded(out, name, how, arch, rebuild, build)


def build_digits_cnn(out: Path, rebuild: bool, torch) -> None:
    nn = torch.nn

    def build(d):
        torch.manual_seed(0)
        train = np.load(out / "digits" / "train.npz")
        x = torch.from_numpy(train["images"][:, None].astype(np.float32) / 255)
        y = torch.from_numpy(train["labels"].astype(np.int64))
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(60):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        from PIL import Image

        ref = np.stack([np.asarray(Image.open(p), np.float32)[None] / 255 for p in digit_images(out)])
        _export(torch, model, torch.from_numpy(ref[:2]), d / "model.onnx", False, "input", "logits")
        card = {
            "data": "digits",
            "model": "small CNN trained on digits (torch)",
            "exporter": "torch.onnx.export legacy (dynamo=False)",
            "flags": [],
            "preprocessing": "grey 8x8 pixels / 255",
        }
        write_case(out, "torch-cnn-digits", card, ref)

    guarded(out, "torch-cnn-digits", "torch", "CNN", rebuild, build)


# ----------------------------------------------------------------------------------------- keras
def build_keras(out: Path, rebuild: bool) -> None:
    """Keras 3 (TensorFlow backend): model.export(format="onnx") and tf2onnx.convert.from_keras."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from PIL import Image

    train = np.load(out / "digits" / "train.npz")
    x, y = train["images"][..., None].astype(np.float32), train["labels"]
    digits_ref = np.stack([np.asarray(Image.open(p), np.float32)[..., None] for p in digit_images(out)])

    def cnn():
        keras.utils.set_random_seed(0)
        m = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Rescaling(1 / 255),
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
            ]
        )
        m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(x, y, epochs=20, batch_size=64, verbose=0)
        return m

    card = {
        "data": "digits",
        "model": "Keras CNN with Rescaling(1/255), trained on digits",
        "flags": [],
        "preprocessing": "0..255 pixels (the model rescales)",
    }

    def export(d):
        cnn().export(str(d / "model.onnx"), format="onnx")
        write_case(out, "keras-cnn-export", {**card, "exporter": 'Keras 3 model.export(format="onnx")'}, digits_ref)

    def tf2(d):
        import tensorflow as tf
        import tf2onnx

        m = cnn()
        spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)
        try:
            tf2onnx.convert.from_keras(m, input_signature=spec, output_path=str(d / "model.onnx"))
            how = "tf2onnx.convert.from_keras"
        except KeyError as err:  # tf2onnx 1.17's from_keras does not read Keras 3 models' output names
            fn = tf.function(lambda x: m(x), input_signature=spec)
            tf2onnx.convert.from_function(fn, input_signature=spec, output_path=str(d / "model.onnx"))
            how = f"tf2onnx.convert.from_function (from_keras fails on Keras 3: KeyError {err})"
        write_case(out, "keras-cnn-tf2onnx", {**card, "exporter": how}, digits_ref)

    def mobilenet(d):
        keras.utils.set_random_seed(0)
        m = keras.applications.MobileNetV3Small(
            input_shape=(224, 224, 3), weights=None, classes=10, include_preprocessing=True
        )
        m(np.zeros((1, 224, 224, 3), np.float32))  # export refuses a model never called
        m.export(str(d / "model.onnx"), format="onnx")
        images = [Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR) for p in zoo_images(out)]
        ref = np.stack([np.asarray(im, np.float32) for im in images])
        write_case(
            out,
            "keras-mobilenetv3-export",
            {
                "data": "images",
                "model": "keras.applications.MobileNetV3Small (random weights, include_preprocessing)",
                "exporter": 'Keras 3 model.export(format="onnx")',
                "flags": ["--resize", "224x224"],
                "preprocessing": "images resized to 224x224 (image_dataset_from_directory), 0..255 pixels",
            },
            ref,
        )

    guarded(out, "keras-cnn-export", "keras", "CNN", rebuild, export)
    guarded(out, "keras-cnn-tf2onnx", "tf2onnx", "CNN", rebuild, tf2)
    guarded(out, "keras-mobilenetv3-export", "keras", "MobileNetV3Small", rebuild, mobilenet)


# ----------------------------------------------------------------------------------------- derived
def build_derived(out: Path, rebuild: bool) -> None:
    """onnxruntime quantization (dynamic, static QDQ) and fp16 conversion of cases built above."""

    def source(name):
        d = out / name
        if not (d / "model.onnx").exists() or "build_error" in json.loads((d / "card.json").read_text()):
            raise FileNotFoundError(f"{name} was not built")
        return d, json.loads((d / "card.json").read_text())

    def dynamic(d, name):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        src, card = source(name)
        quantize_dynamic(str(src / "model.onnx"), str(d / "model.onnx"), weight_type=QuantType.QInt8)
        card = {**card, "exporter": f"onnxruntime quantize_dynamic (QInt8) of {name}"}
        write_case(out, f"quant-dynamic-{name}", card, np.load(src / "ref.npy"))

    def static(d):
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        src, card = source("torch-cnn-digits")
        ref = np.load(src / "ref.npy")

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.rows = iter([{"input": ref[i : i + 1]} for i in range(len(ref))])

            def get_next(self):
                return next(self.rows, None)

        quantize_static(str(src / "model.onnx"), str(d / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ)
        card = {**card, "exporter": "onnxruntime quantize_static (QDQ, calibrated on the data) of torch-cnn-digits"}
        write_case(out, "quant-static-torch-cnn-digits", card, ref)

    def fp16(d, name, keep_io):
        import onnx

        try:
            from onnxconverter_common.float16 import convert_float_to_float16

            tool = "onnxconverter_common"
        except ImportError:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            tool = "onnxruntime.transformers.float16"
        src, card = source(name)
        half = convert_float_to_float16(onnx.load(str(src / "model.onnx")), keep_io_types=keep_io)
        onnx.save(half, str(d / "model.onnx"))
        for sidecar in ("preprocessor_config.json", "config.json"):
            if (src / sidecar).exists():
                shutil.copy(src / sidecar, d / sidecar)
        ref = np.load(src / "ref.npy")
        io = "float32 I/O (keep_io_types)" if keep_io else "float16 I/O"
        card = {**card, "exporter": f"{tool} convert_float_to_float16, {io}, of {name}", "io_float16": not keep_io}
        write_case(
            out, f"fp16-{name}" + ("-keepio" if keep_io else ""), card, ref if keep_io else ref.astype(np.float16)
        )

    for name in ("tv-resnet18-dynamo", "tv-mobilenet-v3-small-legacy"):
        guarded(out, f"quant-dynamic-{name}", "quantize_dynamic", name, rebuild, lambda d, n=name: dynamic(d, n))
    guarded(out, "quant-static-torch-cnn-digits", "quantize_static", "CNN", rebuild, static)
    guarded(out, "fp16-hf-vit-optimum", "fp16", "ViT", rebuild, lambda d: fp16(d, "hf-vit-optimum", False))
    guarded(
        out,
        "fp16-timm-resnet18-legacy-keepio",
        "fp16",
        "resnet18",
        rebuild,
        lambda d: fp16(d, "timm-resnet18-legacy", True),
    )


BUILDERS = {"sklearn": build_sklearn, "torch": build_torch, "keras": build_keras, "derived": build_derived}


# =============================================================================================== checks
def ort_classes(path: Path, ref: np.ndarray) -> np.ndarray:
    """What plain onnxruntime answers on the ecosystem's own preprocessing: the int64 label output when the
    model has one (scikit-learn's predict), else the argmax of the first float output."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    out = [np.asarray(o) if isinstance(o, np.ndarray) else o for o in s.run(None, {inp.name: ref})]
    for o in out:
        if isinstance(o, np.ndarray) and o.dtype.kind in "iu" and o.size == len(ref):
            return o.reshape(-1).astype(np.int64)
    scores = next(o for o in out if isinstance(o, np.ndarray) and o.dtype.kind == "f")
    return scores.reshape(len(ref), -1).argmax(1)


def write_data(out: Path, d: Path, card: dict, labels: np.ndarray) -> Path:
    """The case's data with onnxruntime's classes as labels: a manifest of the zoo's image files, or a
    numeric CSV of the digit features (label last)."""
    if card["data"] == "features":
        feats = np.load(out / "digits" / "features.npy")
        path = d / "data.csv"
        with open(path, "w") as f:
            for row, lab in zip(feats, labels):
                f.write(",".join(f"{v:g}" for v in row) + f",{int(lab)}\n")
        return path
    files = zoo_images(out) if card["data"] == "images" else digit_images(out)
    path = d / "data.csv"
    with open(path, "w") as f:
        f.write("path,label\n")
        for p, lab in zip(files, labels):
            f.write(f"{os.path.relpath(p, d)},{int(lab)}\n")
    return path


def inferred(meta: dict) -> dict:
    """What rs-onnx resolved, from a run's meta.json."""
    sig = meta["model"]["signature"]
    pre = meta.get("preprocess") or {}
    transform = (meta.get("data") or {}).get("transform") or {}
    return {
        "input": f"{sig['input_name']} {sig['input_shape']} {sig['input_dtype']}",
        "layout": pre.get("layout"),
        "scale": pre.get("scale"),
        "mean": pre.get("mean"),
        "std": pre.get("std"),
        "channel_order": (pre.get("channel_order") or "rgb") if len(pre.get("model_shape") or []) == 3 else "-",
        "resize": transform.get("resize"),
        "crop": transform.get("center_crop"),
        "output": f"{sig['output_name']} ({sig['output_kind']}, K={sig['num_classes']})",
        "batch_mode": sig.get("batch_mode"),
    }


def check_case(out: Path, d: Path, timeout: int) -> dict:
    card = json.loads((d / "card.json").read_text())
    row = {k: card.get(k) for k in ("name", "exporter", "model", "flags", "preprocessing", "interpolation")}
    if "build_error" in card:
        return {**row, "status": "export failed", "error": card["build_error"]}
    ref = np.load(d / "ref.npy")
    try:
        labels = ort_classes(d / "model.onnx", ref)
    except Exception as err:  # noqa: BLE001
        return {**row, "status": "onnxruntime failed", "error": " ".join(str(err).split())[:300]}
    data = write_data(out, d, card, labels)
    res = d / "r.tsv"
    for f in (res, d / "r.tsv.meta.json"):
        f.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "rs_onnx.cli", "certify", str(d / "model.onnx"), str(data)]
    cmd += [*card["flags"], "--sigma", SIGMA[card["data"]], *CERTIFY, "--out", str(res)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"rs-onnx timed out ({timeout} s)"}
    row["command"] = "rs-onnx certify model.onnx data.csv " + " ".join(card["flags"])
    row["seconds"] = round(time.time() - t0, 1)
    (d / "rs-onnx.log").write_text(proc.stderr)
    if proc.returncode != 0:
        err = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines()[-1:]
        return {**row, "status": "rs-onnx refused", "error": (err[-1] if err else "")[:400]}
    meta = json.loads((d / "r.tsv.meta.json").read_text())
    acc = meta.get("clean_accuracy") or {}
    examples = max(1, int(meta.get("examples_done") or 0))
    row.update(
        status="ok" if acc.get("correct") == acc.get("examples") else "disagrees",
        agreement=f"{acc.get('correct')}/{acc.get('examples')}",
        s_per_img=round(float(meta["timings"]["seconds"]) / examples, 3),
        inferred=inferred(meta),
        warnings=[w for w in proc.stderr.splitlines() if "WARNING" in w or "warning" in w.lower()][:5],
    )
    return row


# =============================================================================================== table
def table(rows: list[dict]) -> str:
    lines = [
        "| case | exporter | card's flags | rs-onnx inferred | agreement | s/img | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        inf = r.get("inferred") or {}
        mean_std = ""
        if inf and (inf.get("mean") not in ([0.0], None) or inf.get("std") not in ([1.0], None)):
            mean_std = f", mean {floats(inf['mean'])} std {floats(inf['std'])}"
        what = (
            f"{inf['input']}, {inf['layout']}, scale {inf['scale']:g}{mean_std}, {inf['channel_order']}"
            + (f", resize {inf['resize']}" if inf.get("resize") else "")
            + (f", crop {inf['crop']}" if inf.get("crop") else "")
            + f"; {inf['output']}"
            if inf
            else ""
        )
        result = r["status"] + (f": {r['error']}" if r.get("error") else "")
        flags = " ".join(r.get("flags") or []) or "(none)"
        lines.append(
            f"| {r['name']} | {r.get('exporter') or ''} | `{flags}` | {what} | {r.get('agreement', '')} | "
            f"{r.get('s_per_img', '')} | {result.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


# =============================================================================================== main
def default_python(path: str) -> str | None:
    return path if Path(path).exists() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for the models, data and results (created)")
    ap.add_argument("--only", help="comma-separated case names (prefixes) to check")
    ap.add_argument("--groups", default=",".join(GROUPS), help=f"groups to build ({', '.join(GROUPS)})")
    ap.add_argument("--torch-python", default=default_python("/tmp/venv-tv/bin/python"))
    ap.add_argument("--tf-python", default=default_python("/tmp/venv-tf/bin/python"))
    ap.add_argument("--rebuild", action="store_true", help="export again cases already built")
    ap.add_argument("--no-build", action="store_true", help="only certify what is built")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per rs-onnx run")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    skipped = {}
    if not args.no_build:
        if not (out / "images").exists():
            make_images(out / "images")
        if not (out / "digits").exists():
            make_digits(out / "digits")
        pythons = {
            "sklearn": sys.executable,
            "torch": args.torch_python,
            "keras": args.tf_python,
            "derived": sys.executable,
        }
        for group in args.groups.split(","):
            py = pythons[group]
            if py is None:
                skipped[group] = "no interpreter (see --torch-python / --tf-python)"
                continue
            t0 = time.time()
            cmd = [py, __file__, "--build", group, str(out)] + (["--rebuild"] if args.rebuild else [])
            proc = subprocess.run(cmd, text=True, capture_output=True)
            (out / f"build-{group}.log").write_text(proc.stdout + proc.stderr)
            print(f"zoo: group {group}: exit {proc.returncode} in {time.time() - t0:.0f} s", file=sys.stderr)
            if proc.returncode != 0:
                skipped[group] = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
    rows = []
    for d in sorted(p.parent for p in out.glob("*/card.json")):
        if args.only and not any(d.name.startswith(o) for o in args.only.split(",")):
            continue
        row = check_case(out, d, args.timeout)
        print(f"zoo: {row['name']}: {row['status']} {row.get('agreement', '')} {row.get('error', '')}", file=sys.stderr)
        rows.append(row)
    (out / "zoo.json").write_text(json.dumps({"rows": rows, "skipped_groups": skipped}, indent=1))
    text = table(rows)
    if skipped:
        text += "\nGroups not built: " + "; ".join(f"{g}: {why}" for g, why in skipped.items()) + "\n"
    (out / "MODELS.md").write_text(text)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"zoo: {ok} of {len(rows)} cases certify and agree with onnxruntime on every image", file=sys.stderr)
    return 0


def build_main(argv) -> int:
    group, out = argv[0], Path(argv[1])
    BUILDERS[group](out, "--rebuild" in argv)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--build":
        sys.exit(build_main(sys.argv[2:]))
    sys.exit(main())
