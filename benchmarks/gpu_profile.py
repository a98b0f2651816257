"""Where the CUDA path loses time against the bare loop: one model, each layer of rs-onnx added in turn.

    python -m benchmarks.gpu_profile OUT.json [--model resnet110] [--n 50000] [--batch 1024]

Measures samples per second, interleaved over two rounds, of: the bare ``session.run`` loop (ceiling);
``OnnxClassifier.predict`` on one fixed batch (no noise) with IO binding and the appended ArgMax on or
off; CERTIFY with host noise at several noise-thread counts, with and without intra-op spinning; CERTIFY
with on-device noise; CERTIFY with a CUDA graph.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default="resnet110")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.methods import Ceiling
    from benchmarks.models import prepare_model
    from export.models import INPUT_SHAPES
    from rs_onnx import OnnxClassifier, SmoothedClassifier
    from rs_onnx.devices import default_session_options

    path, _, _ = prepare_model(args.model, ROOT / "benchmarks" / "out")
    shape, batch, n, dev = INPUT_SHAPES[args.model], args.batch, args.n, args.device
    cores = os.cpu_count() or 1
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    x = np.random.default_rng(2).random((batch, *shape), dtype=np.float32)

    def options(spin: bool):
        o = default_session_options(dev, cores)
        o.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return o

    def clf(spin=True, **kw):
        return OnnxClassifier(path, device=dev, sess_options=options(spin), **kw)

    def predict_loop(c):
        def go():
            runs = max(1, n // batch)
            t = time.perf_counter()
            for _ in range(runs):
                c.predict(x)
            return runs * batch / (time.perf_counter() - t)

        return go

    checked: dict = {}

    def certify(c, threads):
        def go():
            if id(c) not in checked:  # checked once per classifier, as a run does; the record reused
                first = SmoothedClassifier(c, sigma=0.25, seed=0, batch_size=batch, noise_threads=threads)
                checked[id(c)] = (c, first.classifier, first.verify_batches(image, 100 + n))
            _, checked_clf, record = checked[id(c)]
            g = SmoothedClassifier(
                checked_clf, sigma=0.25, seed=0, batch_size=batch, noise_threads=threads, batch_check=record
            )
            t = time.perf_counter()
            g.certify_many([image], 100, n, 0.001)
            return (100 + n) / (time.perf_counter() - t)

        return go

    providers = (
        [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
        if dev == "cuda"
        else ["CPUExecutionProvider"]
    )
    ceiling = Ceiling(path, providers, options(True), batch, shape)
    base, nospin = clf(), clf(spin=False)
    methods = {
        "ceiling": lambda: ceiling(n),
        "predict io_binding+argmax": predict_loop(base),
        "predict no io_binding": predict_loop(clf(io_binding=False)),
        "predict no argmax_in_graph": predict_loop(clf(argmax_in_graph=False)),
        "predict no spinning": predict_loop(nospin),
    }
    for t in sorted({0, 1, 4, max(1, cores - 1)}):
        methods[f"certify host, {t} noise threads"] = certify(base, t)
        methods[f"certify host, {t} noise threads, no spinning"] = certify(nospin, t)
    if dev == "cuda":
        methods["certify device noise"] = certify(clf(device_noise=True), 0)
        methods["certify cuda graph, 4 threads"] = certify(clf(cuda_graph=True, max_batch=batch), 4)
    for f in methods.values():  # warm-up
        f()
    res: dict = {k: [] for k in methods}
    for r in range(2):
        for k in list(methods) if r == 0 else list(methods)[::-1]:
            res[k].append(methods[k]())
            print(f"{k}: {res[k][-1]:.0f}/s", file=sys.stderr, flush=True)
    summary = {k: float(np.median(v)) for k, v in res.items()}
    out = {
        "model": args.model,
        "n": n,
        "batch": batch,
        "device": dev,
        "cores": cores,
        "samples_per_second": summary,
        "over_ceiling": {k: v / summary["ceiling"] for k, v in summary.items()},
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for k, v in out["over_ceiling"].items():
        print(f"{v:6.2f}  {summary[k]:9.0f}/s  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
