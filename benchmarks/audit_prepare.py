"""Audit mode's prepare on image folders: with and without decoding every selected image for the grid check.

    python -m benchmarks.audit_prepare                   # 500 28x28 PNGs and 300 224x224 JPEGs, ~1 min on 2 cores
    python -m benchmarks.audit_prepare --repeats 5

Audit mode refuses off-grid images (pixel != k/255) before any output file exists. Image files decode to
uint8 by construction (``Dataset.uint8_pixels``), so ``run.prepare`` skips that decode for them; float
arrays are still checked. This times ``run.prepare`` (audit, --batch-size given: no probe) side by side in
one process, interleaved: ``checked`` forces the per-image decode (``ImageFiles.uint8_pixels`` patched to
False, the path float arrays take), ``skipped`` is what image folders now do. Both still decode the first image (the
magnitude check) and the clean-accuracy images (the first 100 selected). Data is generated in a temporary
folder: class folders of grey 28x28 PNGs for the bundled digits CNN, and of 224x224 RGB JPEGs for an
average-pooling + Gemm model on [N,3,224,224].
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_data import tiny_imagenet_model
from rs_onnx import data, images, run
from rs_onnx.config import RunConfig


def image_folder(root: Path, count: int, shape: tuple[int, ...], suffix: str, classes: int = 10) -> Path:
    """``count`` random images of ``shape`` (HxW grey or HxWx3) in class folders 0..classes-1."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(count):
        folder = root / str(k % classes)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(folder / f"{k:05d}{suffix}")
    return root


def time_prepare(values: dict, checked: bool) -> tuple[float, int]:
    """(seconds, images decoded) of one audit prepare; ``checked``: every selected image decoded for the grid check."""
    cfg = RunConfig(**values, audit=True, n0=10, n=100, batch_size=110, device="cpu").validate()
    saved, decode = data.ImageFiles.uint8_pixels, images.decode
    calls = [0]

    def counted(*a, **k):
        calls[0] += 1
        return decode(*a, **k)

    images.decode = counted  # where ImageFiles looks it up
    if checked:
        data.ImageFiles.uint8_pixels = property(lambda self: False)  # type: ignore[method-assign,assignment]
    try:
        t = time.perf_counter()
        run.prepare(cfg)
        return time.perf_counter() - t, calls[0]
    finally:
        data.ImageFiles.uint8_pixels, images.decode = saved, decode  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pngs", type=int, default=500)
    ap.add_argument("--jpegs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("rs_onnx").setLevel(logging.ERROR)  # random images: the clean-accuracy warning
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        cases: dict[str, dict] = {
            f"{args.pngs} PNGs 28x28 grey (digits CNN)": {
                "model": run.bundled("digits_cnn.onnx"),
                "data": str(image_folder(root / "png", args.pngs, (28, 28), ".png")),
            },
            f"{args.jpegs} JPEGs 224x224 RGB (tiny ImageNet model)": {
                "model": str(tiny_imagenet_model(root / "tiny.onnx")),
                "data": str(image_folder(root / "jpg", args.jpegs, (224, 224, 3), ".jpg")),
                "sigma": 0.25,
            },
        }
        print(f"data generated in {time.perf_counter() - t:.1f} s; prepare timed {args.repeats}x each, interleaved")
        print("| data | prepare, decode check: s (images decoded) | prepare, no decode: s (decoded) | ratio |")
        print("|---|---|---|---|")
        for name, values in cases.items():
            time_prepare(values, checked=False)  # warm the page cache and the imports
            times: dict[bool, list[float]] = {True: [], False: []}
            decoded: dict[bool, int] = {}
            for _ in range(args.repeats):
                for checked in (True, False):
                    seconds, decoded[checked] = time_prepare(values, checked)
                    times[checked].append(seconds)
            a, b = statistics.median(times[True]), statistics.median(times[False])
            print(f"| {name} | {a:.3f} ({decoded[True]}) | {b:.3f} ({decoded[False]}) | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
