"""Certification throughput against the model's own speed, in one command.

    python -m benchmarks.run                  # full CPU run: 4 models, scaling, threads (~10-15 min on 2 cores)
    python -m benchmarks.run --quick          # the same, smaller n (a few minutes)
    python -m benchmarks.run --device cuda    # on a GPU machine (n = 100,000 for the ResNets; variants)

Writes ``<out-dir>/results.json`` and ``<out-dir>/RESULTS.md`` (default ``benchmarks/``). Models are
exported with random weights into ``--work-dir`` (default ``benchmarks/out/``, git-ignored) from the very
torch module that the PyTorch baseline runs, so both are the same network; the digits CNN is the bundled
``rs_onnx/data/digits_cnn.onnx`` (its weights loaded into the torch module and checked) when it exists.

For each model, one CERTIFY of one image (n0 = 100, n, alpha = 0.001, sigma = 0.25) is timed against:

- ceiling: the same ONNX file through a bare onnxruntime loop (``session.run`` on one fixed batch, no
  noise) at the same batch size, provider, threads and session options as rs-onnx's session;
- ORT defaults (CPU only): the same loop with onnxruntime's default session options (spinning threads);
- PyTorch baseline: the torch module in eager mode sampled the way Cohen et al.'s reference code does
  (``core.py`` ``_sample_noise``: repeat the image into a batch, add ``torch.randn_like * sigma``, argmax,
  count), under ``torch.inference_mode()`` (the reference uses ``no_grad``), counting with
  ``np.bincount`` (the reference loops in Python), with ``torch.set_num_threads`` = onnxruntime's threads;
  at rs-onnx's batch size and again at PyTorch's own fastest batch size (probed first).

Each rate is also given in GFLOP/s (multiply-accumulates counted from the ONNX graph) and, on CPU, as a
share of the float32 FMA peak that ``benchmarks/fma_peak.c`` measures (when a C compiler is there).

The methods run in rounds, in a rotating order, and ratios are medians of per-round ratios: on a shared
machine the other processes slow all methods of a round alike.

The code lives by concern: ``models.py`` (the networks, in ONNX and torch), ``machine.py`` (machine facts,
FMA peak, memory), ``methods.py`` (the measured loops and the per-model benchmark), ``report.py`` (this
Markdown); this file is the command.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path


from benchmarks.machine import _git_commit, fma_peak_gflops, machine
from benchmarks.methods import (
    CUDA_VARIANTS,
    SCALING_NS,
    SETTINGS,
    Ceiling,
    CohenTorch,
    Setting,
    bench_model,
    bench_scaling,
)
from benchmarks.models import ARCHS, ROOT, prepare_model
from benchmarks.report import markdown

__all__ = [
    "ARCHS",
    "CUDA_VARIANTS",
    "SCALING_NS",
    "SETTINGS",
    "Ceiling",
    "CohenTorch",
    "Setting",
    "_git_commit",
    "bench_model",
    "bench_scaling",
    "machine",
    "main",
    "markdown",
    "parse_args",
    "prepare_model",
]

log = logging.getLogger("benchmarks.run")


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smaller n and fewer rounds")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--models", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks"), help="where results.json and RESULTS.md go")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "out"), help="exported models (git-ignored)")
    p.add_argument("--n", type=int, default=None, help="n for every model (default: per model, see SETTINGS)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--pairs", type=int, default=2, help="back-to-back runs of every method per round")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the automatic probe)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op and torch threads (default: cores)")
    p.add_argument("--noise-threads", type=int, default=None, help="default: rs_onnx's default for the device")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=CUDA_VARIANTS,
        default=None,
        help="rs-onnx variants (default: all on cuda, host on cpu)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--no-ort-defaults", action="store_true", help="skip the ORT-defaults ceiling")
    p.add_argument("--no-torch-probe", action="store_true", help="skip the PyTorch baseline at its own best batch size")
    p.add_argument("--scaling-model", default="digits_cnn", choices=(*ARCHS, "none"))
    p.add_argument("--scaling-ns", type=int, nargs="+", default=None)
    p.add_argument("--threads-n", type=int, default=None, help="n of the noise-thread runs")
    p.add_argument("--thread-counts", type=int, nargs="+", default=None, help="default: 0 .. cores")
    p.add_argument("--threads-rounds", type=int, default=2)
    p.add_argument("--exporter", choices=("auto", "dynamo", "legacy"), default="auto")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("rs_onnx").setLevel(logging.WARNING)
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    threads = args.threads or os.cpu_count() or 1
    res = {
        "command": "python -m benchmarks.run"
        + (
            " " + shlex.join(sys.argv[1:] if argv is None else argv)
            if (argv if argv is not None else sys.argv[1:])
            else ""
        ),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": args.device,
        "quick": args.quick,
        "threads": threads,
        "pairs": args.pairs,
        "machine": machine(),
        "models": [],
    }
    if args.device == "cpu" and (os.cpu_count() or 1) <= 4:
        res["shared_note"] = (
            f"Caveat: {os.cpu_count()} cores, possibly shared with other busy processes; "
            "compare ratios, not absolute numbers."
        )
    if args.device == "cpu":
        res["machine"]["fma_peak_gflops"] = fma_peak_gflops(threads, Path(args.work_dir))
    if args.scaling_model != "none":  # first, so that peak RSS is not that of bigger models loaded earlier
        res["scaling"] = bench_scaling(args.scaling_model, args, threads)
    for arch in args.models:
        setting = SETTINGS[(args.device, args.quick)][arch]
        log.info("model %s", arch)
        res["models"].append(bench_model(arch, args, setting, threads))
    res["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    res["seconds"] = time.perf_counter() - t0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / "RESULTS.md").write_text(markdown(res))
    print(f"wrote {out / 'results.json'} and {out / 'RESULTS.md'} in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    from rs_onnx.errors import RsOnnxError

    try:
        sys.exit(main())
    except RsOnnxError as err:  # bad input or no working device: one line, no traceback
        print(f"python -m benchmarks.run: error: {err}", file=sys.stderr)
        sys.exit(1)
