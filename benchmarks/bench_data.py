"""Data sets at ImageNet scale: peak memory and speed of certifying a few examples of a large data set.

    python -m benchmarks.bench_data                 # 1,000 and 50,000 JPEGs, a 2 GB .npy (~5 min on 2 cores)
    python -m benchmarks.bench_data --quick         # 1,000 and 5,000 JPEGs, a 0.5 GB .npy

Data is generated under ``--work-dir`` (default /tmp/rs-onnx-bench-data; reused when present):

- folders of 500x375 JPEGs in 1,000 class folders (``n00000000`` ...), (a) 1 per class, (b) 50 per class;
- a uint8 .npy [N, 3, 224, 224] of about 2 GB, with a text labels file;
- a tiny ImageNet-size model: [N,3,224,224] -> 8x8 average pooling -> Gemm -> 1000 logits.

Each case runs ``rs-onnx certify --end 10 --n0 10 --n 100`` in a fresh process and reports its peak RSS
(``wait4``'s ru_maxrss) and examples/s; the baseline is the same command on a 10-image .npy (the model's
own memory). Decoding speed is measured in-process: images/s through the loader (``--resize 256
--center-crop 224``), one thread and with the prefetch pool, against the rate at which sampling consumes
examples at n = 100 (the TSV's ``time`` column). Writes ``benchmarks/DATA.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 1000


def tiny_imagenet_model(path: Path) -> Path:
    """[N,3,224,224] float -> AveragePool 8x8 -> Flatten -> Gemm -> [N,1000]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.normal(size=(3 * 28 * 28, CLASSES)) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_imagenet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def jpeg_folder(root: Path, per_class: int) -> Path:
    """1,000 class folders of ``per_class`` 500x375 JPEGs (64 distinct images, written byte for byte)."""
    from PIL import Image

    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    blobs = []
    for k in range(64):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (375, 500, 3))
        im = Image.fromarray(np.clip(np.asarray(im, int) + noise, 0, 255).astype(np.uint8))
        path = root / f"blob{k}.jpg"
        root.mkdir(parents=True, exist_ok=True)
        im.save(path, quality=85)
        blobs.append(path.read_bytes())
        path.unlink()
    for c in range(CLASSES):
        d = root / f"n{c:08d}"
        d.mkdir(exist_ok=True)
        for j in range(per_class):
            (d / f"ILSVRC2012_val_{c * per_class + j:08d}.JPEG").write_bytes(blobs[(c * 7 + j) % len(blobs)])
    done.write_text("ok")
    return root


def big_npy(path: Path, gib: float) -> tuple[Path, Path, int]:
    """A uint8 [N,3,224,224] .npy of about ``gib`` GiB (and a labels text file), written in chunks."""
    row = 3 * 224 * 224
    n = int(gib * 2**30 // row)
    labels = path.with_suffix(".labels.txt")
    if not (path.exists() and path.stat().st_size >= n * row):
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, 224, 224))
        rng = np.random.default_rng(0)
        block = rng.integers(0, 256, (256, 3, 224, 224), dtype=np.uint8)
        for s in range(0, n, 256):
            arr[s : s + 256] = block[: min(256, n - s)]
        arr.flush()
        del arr
        labels.write_text("".join(f"{i % CLASSES}\n" for i in range(n)))
    return path, labels, n


_WRAPPER = """import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_certify(model: Path, data: list[str], out: Path) -> dict:
    """One ``rs-onnx certify --end 10`` in a fresh process: peak RSS (MiB), wall seconds, examples/s."""
    for p in (out, Path(str(out) + ".meta.json")):
        p.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "rs_onnx.cli",
        "-q",
        "certify",
        str(model),
        *data,
        "--sigma",
        "0.25",
        "--n0",
        "10",
        "--n",
        "100",
        "--end",
        "10",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--batch-size",
        "110",
        "--out",
        str(out),
    ]
    t = time.perf_counter()
    # A small wrapper process starts the run: a child forked from this (large) process would inherit its
    # memory high-water mark, and ru_maxrss would report ours.
    res = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seconds = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"bench_data: {' '.join(cmd)} failed: {res.stderr.strip().splitlines()[-1:]}")
    maxrss_kib = int(res.stdout.split()[-1])
    times = [float(line.split("\t")[5]) for line in out.read_text().splitlines()[1:]]
    return {
        "rss_mib": maxrss_kib / 1024,
        "seconds": seconds,
        "examples_per_s": 10 / seconds,
        "sampling_s_per_example": float(np.mean(times)),
    }


def decode_rate(folder: Path, count: int, workers: int) -> float:
    """Images/s through the loader with --resize 256 --center-crop 224 (``workers`` decoding threads)."""
    sys.path.insert(0, str(ROOT))
    from rs_onnx.data import load_data

    data = load_data(folder, size=(224, 224), channels=3, resize=256, center_crop=224)
    idx = list(range(0, len(data), max(1, len(data) // count)))[:count]
    data.check_selection(idx[:1])
    groups = [idx[i : i + 8] for i in range(0, len(idx), 8)]
    t = time.perf_counter()
    if workers <= 1:
        for g in groups:
            [data.image(i) for i in g]
    else:
        for _ in data.iter_groups(groups, workers=workers):
            pass
    return len(idx) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work-dir", default="/tmp/rs-onnx-bench-data")
    ap.add_argument("--quick", action="store_true", help="5,000 JPEGs instead of 50,000, a 0.5 GiB .npy")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "DATA.md"))
    args = ap.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    big_per_class, gib = (5, 0.5) if args.quick else (50, 2.0)
    t0 = time.perf_counter()
    model = tiny_imagenet_model(work / "tiny_imagenet.onnx")
    print("generating data ...", file=sys.stderr)
    t = time.perf_counter()
    small = jpeg_folder(work / "jpeg_1000", 1)
    big = jpeg_folder(work / f"jpeg_{CLASSES * big_per_class}", big_per_class)
    gen_jpeg = time.perf_counter() - t
    t = time.perf_counter()
    npy, npy_labels, n_npy = big_npy(work / f"images_{gib:g}GiB.npy", gib)
    gen_npy = time.perf_counter() - t
    base = work / "base10.npy"
    np.save(base, np.load(npy, mmap_mode="r")[:10])
    (work / "base10.txt").write_text("".join(f"{i}\n" for i in range(10)))
    crop = ["--resize", "256", "--center-crop", "224"]
    cases = [
        ("model alone: 10-image .npy", [str(base), "--labels", str(work / "base10.txt")]),
        (f"{npy.stat().st_size / 2**30:.2f} GiB .npy ({n_npy:,} images)", [str(npy), "--labels", str(npy_labels)]),
        ("(a) 1,000 JPEGs, 1,000 class folders", [str(small), *crop]),
        (f"(b) {CLASSES * big_per_class:,} JPEGs, 1,000 class folders", [str(big), *crop]),
    ]
    results = []
    for name, data in cases:
        print(f"certify --end 10: {name}", file=sys.stderr)
        runs = [run_certify(model, data, work / "o.tsv") for _ in range(2)]
        results.append((name, min(runs, key=lambda r: r["seconds"]), max(r["rss_mib"] for r in runs)))
    dec1 = decode_rate(big, 200, 1)
    decp = decode_rate(big, 200, min(4, os.cpu_count() or 1))
    consume = 1 / results[3][1]["sampling_s_per_example"]
    lines = [
        "# Data sets at ImageNet scale",
        "",
        (
            f"Generated by `python -m benchmarks.bench_data{' --quick' if args.quick else ''}` on "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} in {time.perf_counter() - t0:.0f} s "
            f"({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, possibly shared; python "
            f"{platform.python_version()}, numpy {np.__version__}). Data generated in {gen_jpeg:.0f} s (JPEGs) and "
            f"{gen_npy:.0f} s (.npy) under {work}."
        ),
        "",
        (
            "`rs-onnx certify TINY.onnx DATA --end 10 --n0 10 --n 100 --batch-size 110` in a fresh process (JPEG cases "
            "with `--resize 256 --center-crop 224`); the tiny model is 8x8 average pooling + Gemm to 1000 logits on "
            "[N,3,224,224]. Peak RSS is the larger of 2 runs, examples/s (wall, start-up included) the faster."
        ),
        "",
        "| data | peak RSS MiB | above the model's own | examples/s (wall) | sampling s per example |",
        "|---|---|---|---|---|",
    ]
    base_rss = results[0][2]
    for name, r, rss in results:
        lines.append(
            f"| {name} | {rss:.0f} | {rss - base_rss:+.0f} | {r['examples_per_s']:.2f} | "
            f"{r['sampling_s_per_example']:.3f} |"
        )
    lines += [
        "",
        (
            f"Decoding 500x375 JPEGs with `--resize 256 --center-crop 224` (200 images of (b)): **{dec1:.0f} images/s** on "
            f"one thread, **{decp:.0f} images/s** with the prefetch pool; sampling at n = 100 (n0 = 10) consumes "
            f"**{consume:.1f} examples/s**: decoding is **{dec1 / consume:.1f}x** (one thread) faster than the model "
            "consumes examples (target: 4x)."
        ),
        "",
        (
            "Targets: the same peak RSS for (a) and (b) (difference: "
            f"{results[3][2] - results[2][2]:+.0f} MiB), under 300 MiB above the model's own for the .npy "
            f"({results[1][2] - base_rss:+.0f} MiB)."
        ),
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
