"""Throughput of the Ray backend against the number of workers, beside a single-process run.

Run from the repository root::

    python -m benchmarks.bench_distributed                      # local Ray instance on this machine
    python -m benchmarks.bench_distributed --address auto --workers 1 2 4 8 --gpus-per-worker 1 \\
        --n 100000 --examples 200                               # on a Ray cluster (from any of its nodes)

Certifies the bundled digits CNN on the bundled digits with a fixed seed, once in this process and
once per worker count on Ray, checks that every TSV matches the local one (apart from the time column)
and prints a Markdown table. "samples/s" counts the whole run, actor start-up included; "steady" counts
from the first finished group on. On a machine with 2 shared cores more workers cannot go faster: the
local run already uses both cores, so the table then shows Ray's overhead, not its scaling.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from rs_onnx import run
from rs_onnx.config import RunConfig
from rs_onnx.distributed import ray_backend

log = logging.getLogger("benchmarks.bench_distributed")


def _strip_time(path: Path) -> list[list[str]]:
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    t = lines[0].index("time")
    return [line[:t] + line[t + 1 :] for line in lines]


def _timed(backend):
    """Wrap a backend to record when its first group arrives."""
    marks = {}

    def wrapped(p, mode, todo, progress=None):
        for item in (backend or run.local_answers)(p, mode, todo, progress):
            marks.setdefault("first", (time.perf_counter(), len(item[0])))
            yield item

    return wrapped, marks


def measure(p, out: Path, backend=None) -> dict:
    """Runs CERTIFY over the prepared examples; returns wall seconds, samples/s and steady samples/s."""
    per_example = p.cfg.n0 + p.cfg.n
    wrapped, marks = _timed(backend)
    t0 = time.perf_counter()
    run.execute(p, "certify", out, backend=wrapped)
    t1 = time.perf_counter()
    first, first_n = marks["first"]
    rest = (len(p.indices) - first_n) * per_example
    return {
        "seconds": t1 - t0,
        "rate": len(p.indices) * per_example / (t1 - t0),
        "steady": rest / (t1 - first) if t1 > first and rest else float("nan"),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--address", default=None, help="Ray address (default: start a local instance).")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--gpus-per-worker", type=float, default=None)
    ap.add_argument("--cpus-per-worker", type=float, default=None)
    ap.add_argument("--n", type=int, default=2000, help="Samples per example (default 2000).")
    ap.add_argument("--examples", type=int, default=64, help="Examples certified (default 64).")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("rs_onnx").setLevel(logging.WARNING)

    import ray

    cfg = RunConfig(
        model=run.bundled("digits_cnn.onnx"),
        data=run.bundled("digits_eval.npz"),
        n0=100,
        n=args.n,
        seed=0,
        end=args.examples,
        batch_size=args.batch_size,
        device=args.device,
    ).validate()
    p = run.prepare(cfg)
    samples = len(p.indices) * (cfg.n0 + cfg.n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "local.tsv"
        r = measure(p, local)
        rows.append(("local (1 process)", r))
        log.info("local: %.1f s", r["seconds"])
        ray.init(
            address=args.address,
            include_dashboard=False if args.address is None else None,
            logging_level=logging.WARNING,
        )
        try:
            cluster = ray.cluster_resources()
            for w in args.workers:
                out = Path(tmp) / f"ray{w}.tsv"
                backend = ray_backend(
                    workers=w, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker
                )
                r = measure(p, out, backend)
                same = _strip_time(out) == _strip_time(local)
                r["same"] = same
                rows.append((f"ray, {w} worker{'s' if w > 1 else ''}", r))
                log.info("ray %d workers: %.1f s, identical TSV: %s", w, r["seconds"], same)
        finally:
            ray.shutdown()
    res = {k: v for k, v in cluster.items() if k in ("CPU", "GPU")}
    print(
        f"\nCERTIFY, bundled digits CNN, {len(p.indices)} examples x (n0={cfg.n0} + n={cfg.n}) = {samples} "
        f"samples, batch {p.batch_size}; driver: {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; Ray cluster {res}\n"
    )
    print("| run | seconds | samples/s | steady samples/s | TSV identical to local |")
    print("|---|---:|---:|---:|---|")
    for name, r in rows:
        same = "(reference)" if "same" not in r else ("yes" if r["same"] else "**NO**")
        print(f"| {name} | {r['seconds']:.1f} | {r['rate']:,.0f} | {r['steady']:,.0f} | {same} |")


if __name__ == "__main__":
    main()
