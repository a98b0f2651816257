"""Audit mode against the default float path: certified accuracy, ACR, time, and the noise path's cost.

    python -m benchmarks.audit_cost                      # digits + CIFAR-10 resnet_4b (../shared), a few minutes
    python -m benchmarks.audit_cost --examples 20 --n 1000   # quicker
    python -m benchmarks.audit_cost --chi2 100000000     # also the 10^8-draw chi-square test of the grid sampler

For each model, the same examples are certified twice (n0 = 100, n, alpha = 0.001, sigma = 0.25): once with
float Gaussian noise (seed 0) and once with ``--audit`` (fresh entropy). The two certified accuracies should
agree within sampling noise; the script prints, per radius, the difference and the two-proportion standard
error. The noise path (noise for one image turned into model inputs, one thread, float32 model input) is
timed apart: ``noise.fill`` + ``Preprocessor.noisy`` against ``random_raw`` + ``GridNoise.shifted`` +
``AuditPreprocessor.lookup`` in the sampler's pieces, median and min of 41 interleaved blocks. Writes JSON to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from rs_onnx import audit, noise, run
from rs_onnx.config import PRESETS, RunConfig
from rs_onnx.preprocess import Preprocessor, PreprocessSpec

SHARED = Path(__file__).resolve().parents[2] / "shared"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def certify(values: dict, audit_mode: bool) -> tuple[list[dict], float, dict]:
    cfg = RunConfig(**values, audit=audit_mode, seed=None if audit_mode else 0).validate()
    cfg.apply_preset(set(values) - {"preset"})
    p = run.prepare(cfg)
    rows: list[dict] = []
    t = time.perf_counter()
    meta = run.execute(p, "certify", None, on_rows=rows.extend)
    return rows, time.perf_counter() - t, meta


def summary(rows: list[dict]) -> dict:
    correct = np.array([r["correct"] for r in rows], bool)
    radius = np.array([r["radius"] for r in rows], float)
    out = {f"r={r:.2f}": float(np.mean(correct & (radius >= r) if r > 0 else correct)) for r in RADII}
    out["ACR"] = float(np.mean(np.where(correct, radius, 0.0)))
    return out


def noise_path(
    shape: tuple[int, ...], spec: PreprocessSpec, sigma: float = 0.25, rows: int = 256, repeats: int = 41
) -> dict:
    """Median and min microseconds per image of the float and the audit noise path (one thread, float32 input)."""
    pre = Preprocessor(spec, shape, shape, np.float32)
    grid = audit.GridNoise(sigma)
    apre = audit.AuditPreprocessor(spec, shape, shape, np.float32, grid)
    x = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32) / 255
    clean, aclean = pre.clean(x), apre.clean(x)
    buf = np.empty((rows, *shape), np.float32)
    block = noise.Block(0, 0, noise.ESTIMATE, 0, rows)
    base = apre.base(aclean)
    step = max(1, audit.CHUNK_VALUES // int(np.prod(shape)))
    times: dict[str, list[float]] = {"float": [], "audit": []}
    for r in range(repeats):  # interleaved, so that load from other processes hits both alike
        t = time.perf_counter()
        rng = noise.generator(r, block)
        pre.noisy(clean, noise.fill(rng, buf), sigma)
        times["float"].append(time.perf_counter() - t)
        t = time.perf_counter()
        bits = noise.generator(r, block).bit_generator
        for a in range(0, rows, step):  # as AuditSampler._fill does
            m = min(step, rows - a)
            u = bits.random_raw(m * buf[0].size).reshape(m, *shape)
            apre.lookup(grid.shifted(u, bits.random_raw), base, out=buf[a : a + m])
        times["audit"].append(time.perf_counter() - t)
    return {
        f"{k}_{stat}": 1e6 * f(v) / rows
        for k, v in times.items()
        for stat, f in (("median", statistics.median), ("min", min))
    }


def chi_square(draws: int, sigma: float = 0.25) -> dict:
    from scipy import stats

    grid = audit.GridNoise(sigma)
    p = grid.probabilities()
    counts = np.zeros(p.size, np.int64)
    bits = np.random.SFC64(np.random.SeedSequence().entropy)
    done, t = 0, time.perf_counter()
    while done < draws:
        m = min(10_000_000, draws - done)
        counts += np.bincount(grid.sample(bits.random_raw(m), bits.random_raw) + grid.M, minlength=p.size)
        done += m
    exp = p * draws
    keep = exp >= 20
    obs, exp = np.append(counts[keep], counts[~keep].sum()), np.append(exp[keep], exp[~keep].sum())
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    j = np.arange(-grid.M, grid.M + 1)
    mean = float((counts * j).sum() / draws)
    var = float((counts * j * j).sum() / draws - mean**2)
    return {
        "draws": draws,
        "cells": int(obs.size),
        "chi2": chi2,
        "pvalue": float(stats.chi2.sf(chi2, obs.size - 1)),
        "mean": mean,
        "variance": var,
        "expected_variance": (255 * sigma) ** 2 + 1 / 12,
        "boundary_draws": grid.boundary_draws,
        "seconds": time.perf_counter() - t,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=50, help="examples per model (default 50)")
    ap.add_argument("--n", type=int, default=2000, help="estimation samples per example (default 2000)")
    ap.add_argument("--rounds", type=int, default=2, help="certify runs per mode, alternating (default 2; min time)")
    ap.add_argument("--chi2", type=int, default=0, help="draws for the chi-square test (0: skip)")
    ap.add_argument("--out", help="JSON file to write")
    args = ap.parse_args()
    models = [
        (
            "digits CNN (bundled)",
            {"model": run.bundled("digits_cnn.onnx"), "data": run.bundled("digits_eval.npz")},
            (1, 28, 28),
            PreprocessSpec(),
        )
    ]
    cifar = SHARED / "models" / "cifar10" / "resnet_4b.onnx"
    if cifar.exists():
        spec = PRESETS["cifar10"]
        models.append(
            (
                "CIFAR-10 resnet_4b (../shared, --preset cifar10)",
                {"model": str(cifar), "data": str(SHARED / "data" / "cifar10_test_first1017.npz"), "preset": "cifar10"},
                (3, 32, 32),
                PreprocessSpec(mean=tuple(spec["mean"]), std=tuple(spec["std"])),
            )
        )
    else:
        print(f"skipping CIFAR-10: {cifar} not found")
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "n": args.n,
        "n0": 100,
        "alpha": 0.001,
        "sigma": 0.25,
        "models": {},
    }
    for name, values, shape, spec in models:
        step = max(1, 1000 // args.examples) if "digits" not in name else 1
        base = {
            **values,
            "sigma": 0.25,
            "n0": 100,
            "n": args.n,
            "alpha": 0.001,
            "end": step * args.examples,
            "skip": step,
            "batch_size": 1000,
            "noise_threads": 2,
        }
        result: dict = {}
        order = [False, True, True, False] * args.rounds
        for mode in order[: 2 * args.rounds]:  # alternating, so that machine load hits both alike
            rows, seconds, meta = certify(base, mode)
            key = "audit" if mode else "float"
            if key not in result:
                result[key] = {
                    **summary(rows),
                    "seconds": seconds,
                    "all_seconds": [],
                    **({"how": meta["audit"]["how"]} if mode else {}),
                }
            result[key]["all_seconds"].append(seconds)
            result[key]["seconds"] = min(result[key]["all_seconds"])
        result["noise_path_us_per_image"] = noise_path(shape, spec)
        report["models"][name] = result
        f, a = result["float"], result["audit"]
        print(f"\n{name}: {args.examples} examples, n = {args.n}")
        keys = [k for k in f if k not in ("seconds", "all_seconds", "how")]
        print("| | " + " | ".join(keys) + " | seconds (min of rounds) |")
        print("|---" * (len(RADII) + 3) + "|")
        for label, r in (("float noise", f), ("--audit", a)):
            print(f"| {label} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + f" | {r['seconds']:.1f} |")
        se = [np.sqrt(2 * 0.25 / args.examples)]
        print(f"two-proportion s.e. at most {se[0]:.3f}; audit: {a['how']}")
        npth = result["noise_path_us_per_image"]
        print(
            f"noise path, one thread, us/image (median / min of 41 interleaved blocks of 256): float "
            f"{npth['float_median']:.1f} / {npth['float_min']:.1f}, audit {npth['audit_median']:.1f} / "
            f"{npth['audit_min']:.1f}"
        )
    if args.chi2:
        report["chi_square"] = chi_square(args.chi2)
        print("\nchi-square:", json.dumps(report["chi_square"]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
