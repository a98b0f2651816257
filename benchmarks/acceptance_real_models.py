"""Acceptance on real third-party models: every model in ../shared/models, with the preprocessing of
../shared/MODELS.md and no edits to the model file, certifies 100 test images at sigma = 0.12, n = 1,000.

    python -m benchmarks.acceptance_real_models [--shared ../shared] [--images 100] [--n 1000]

Prints a Markdown table: smoothed accuracy (abstentions count as wrong) next to the single-draw noisy
accuracy that MODELS.md lists for sigma = 0.12 (measured there on the full test set / first 1000 images).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rs_onnx import OnnxClassifier, PreprocessSpec, SmoothedClassifier
from rs_onnx.config import PRESETS
from rs_onnx.data import load_npz

CIFAR = PRESETS["cifar10"]
COHEN = PRESETS["cifar10-cohen"]
OVAL = {"mean": [0.485, 0.456, 0.406], "std": [0.225, 0.225, 0.225]}
# model: (normalisation from MODELS.md, noisy accuracy at sigma 0.12 listed in MODELS.md)
MODELS = {
    "mnist/convnet_avgpool.onnx": ({}, 0.894),
    "mnist/mnist-8.onnx": ({}, 0.986),
    "mnist/mnist-net_256x2.onnx": ({}, 0.972),
    "mnist/mnist_relu_9_200.onnx": ({}, 0.944),
    "cifar10/resnet_4b.onnx": (CIFAR, 0.689),
    "cifar10/vit_pgd_2_3_16.onnx": (COHEN, 0.612),
    "cifar10/oval21_cifar_wide_kw.onnx": (OVAL, 0.611),
    "cifar10/sri_resnet_a.onnx": (COHEN, 0.651),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.12)
    args = ap.parse_args()
    shared = Path(args.shared)
    print(f"sigma = {args.sigma}, n0 = 100, n = {args.n}, alpha = 0.001, seed 0, first {args.images} test images\n")
    print("| model | batch mode | smoothed acc. | certified at r=0.12 | noisy acc. (MODELS.md) | abstain | s/img |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for name, (norm, noisy) in MODELS.items():
        data = load_npz(
            shared / "data" / ("mnist_test.npz" if name.startswith("mnist") else "cifar10_test_first1017.npz")
        )
        clf = OnnxClassifier(shared / "models" / name, device="cpu")
        spec = PreprocessSpec(mean=tuple(norm.get("mean", (0.0,))), std=tuple(norm.get("std", (1.0,))))
        g = SmoothedClassifier(clf, sigma=args.sigma, preprocess=spec, seed=0, batch_size=1000)
        idx = list(range(args.images))
        t = time.perf_counter()
        certs = g.certify_many([data.image(i) for i in idx], n0=100, n=args.n, alpha=0.001, examples=idx)
        secs = (time.perf_counter() - t) / len(idx)
        correct = np.array([c.predict == data.labels[i] for c, i in zip(certs, idx)])
        radius = np.array([c.radius for c in certs])
        abstain = np.mean([c.predict == -1 for c in certs])
        print(
            f"| {name} | {clf.batch_mode} | {correct.mean():.2f} | {(correct & (radius >= 0.12)).mean():.2f} | "
            f"{noisy:.3f} | {abstain:.2f} | {secs:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
