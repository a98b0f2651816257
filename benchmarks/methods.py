"""The measured loops (bare onnxruntime, rs-onnx, Cohen et al.'s PyTorch loop) and the per-model benchmark."""

from __future__ import annotations

import logging
import math
import os
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.machine import peak_rss_mib, reset_peak_rss, rss_mib
from benchmarks.models import ROOT, _num_classes, macs_per_sample, prepare_model

log = logging.getLogger("benchmarks.methods")


SIGMA, ALPHA, N0 = 0.25, 0.001, 100
CUDA_VARIANTS = ("host", "cuda-graph", "fp16", "device-noise")
# PyTorch's batch sizes to probe: smaller than rs-onnx's on CPU, where eager PyTorch is fastest at 16-128.
TORCH_BATCH_CANDIDATES = {
    "cpu": (8, 16, 32, 64, 128, 256, 512, 1024),
    "cuda": (64, 128, 256, 512, 1024, 2048, 4096, 8192),
}


@dataclass(frozen=True)
class Setting:
    n: int
    rounds: int


# (n, rounds) per model: chosen so that a full CPU run stays under ~15 minutes on 2 cores. n is large
# against the batch for the CIFAR ResNets: the n0 batch and the last partial batch run at other sizes, and
# PyTorch is faster per sample at small sizes (see the best-batch baseline), so a short n favours it.
SETTINGS = {
    ("cpu", False): {
        "digits_cnn": Setting(20_000, 3),
        "resnet20": Setting(5_000, 3),
        "resnet110": Setting(2_000, 3),
        "resnet50": Setting(64, 2),
    },
    ("cpu", True): {
        "digits_cnn": Setting(5_000, 2),
        "resnet20": Setting(1_000, 2),
        "resnet110": Setting(400, 2),
        "resnet50": Setting(32, 1),
    },
    ("cuda", False): {
        "digits_cnn": Setting(1_000_000, 3),
        "resnet20": Setting(100_000, 3),
        "resnet110": Setting(100_000, 2),
        "resnet50": Setting(100_000, 2),
    },
    ("cuda", True): {
        "digits_cnn": Setting(100_000, 2),
        "resnet20": Setting(20_000, 2),
        "resnet110": Setting(10_000, 2),
        "resnet50": Setting(2_000, 1),
    },
}
SCALING_NS = {False: (1_000, 10_000, 100_000, 1_000_000), True: (1_000, 10_000, 100_000)}


# --------------------------------------------------------------------------- the measured loops
class Ceiling:
    """A bare onnxruntime loop on one fixed batch: images per second of the model itself."""

    def __init__(self, path: Path, providers, options, batch: int, shape, seed: int = 0):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.name = self.session.get_inputs()[0].name
        self.x = np.random.default_rng(seed).random((batch, *shape), dtype=np.float32)
        self.batch = batch

    def __call__(self, samples: int) -> float:
        runs = max(1, math.ceil(samples / self.batch))
        t = time.perf_counter()
        for _ in range(runs):
            self.session.run(None, {self.name: self.x})
        return runs * self.batch / (time.perf_counter() - t)


class CohenTorch:
    """Cohen et al.'s ``_sample_noise`` in PyTorch eager: repeat, randn_like * sigma, argmax, count."""

    def __init__(self, module, image: np.ndarray, batch: int, device: str, num_classes: int):
        import torch

        self.torch = torch
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.model = module.to(self.device).eval()
        self.x = torch.from_numpy(image).to(self.device)
        self.batch, self.k = batch, num_classes

    def sample(self, num: int) -> np.ndarray:
        torch = self.torch
        counts = np.zeros(self.k, dtype=np.int64)
        with torch.inference_mode():
            for _ in range(math.ceil(num / self.batch)):
                this = min(self.batch, num)
                num -= this
                batch = self.x.repeat((this, 1, 1, 1))
                noise = torch.randn_like(batch, device=self.device) * SIGMA
                predictions = self.model(batch + noise).argmax(1)
                counts += np.bincount(predictions.cpu().numpy(), minlength=self.k)
        return counts

    def __call__(self, n0: int, n: int) -> float:
        t = time.perf_counter()
        self.sample(n0)
        self.sample(n)
        return (n0 + n) / (time.perf_counter() - t)

    def best_batch(self) -> dict:
        """PyTorch's own fastest batch size, found by rs-onnx's own batch probe
        (:func:`rs_onnx.sampling.probe_batch_size`) over :data:`TORCH_BATCH_CANDIDATES`."""
        from rs_onnx.sampling import probe_batch_size

        saved = self.batch
        try:
            return probe_batch_size(_TorchAsClassifier(self), TORCH_BATCH_CANDIDATES[self.device])
        finally:
            self.batch = saved
            if self.device == "cuda":
                self.torch.cuda.empty_cache()


class _TorchAsClassifier:
    """A :class:`CohenTorch` seen by the batch probe: ``predict(x)`` samples one batch of ``len(x)`` noisy
    copies of its image (the values of ``x`` are not used)."""

    input_dtype, num_classes = np.dtype(np.float32), None

    def __init__(self, cohen: CohenTorch):
        self.cohen, self.device, self.input_shape = cohen, cohen.device, tuple(cohen.x.shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.cohen.batch = len(x)
        return self.cohen.sample(len(x))


def _classifier(path: Path, device: str, threads: int, variant: str, batch: int | None):
    from rs_onnx.classifier import default_session_options
    from rs_onnx.config import RunConfig
    from rs_onnx.run import open_classifier

    cfg = RunConfig(
        model=str(path),
        device=device,
        batch_size=batch,
        fp16=variant == "fp16",
        cuda_graph=variant == "cuda-graph",
        device_noise=variant == "device-noise",
    )
    return open_classifier(cfg, sess_options=default_session_options(device, threads))[0]


_CHECKS: dict = {}
"""(classifier id, batch) -> (classifier, the batch check's record): checked once, then passed to every timed
CERTIFY (a run checks once too; re-checking per CERTIFY timed the check and changed the session's shape)."""


def _certify(clf, image, n: int, batch: int, noise_threads: int) -> float:
    from rs_onnx import SmoothedClassifier

    key = (id(clf), batch)
    if key not in _CHECKS:
        first = SmoothedClassifier(clf, sigma=SIGMA, seed=0, batch_size=batch, noise_threads=noise_threads)
        record = first.verify_batches(image, N0 + n)
        _CHECKS[key] = (clf, first.classifier, record)  # clf kept alive: its id is never reused
    _, checked, record = _CHECKS[key]
    sc = SmoothedClassifier(
        checked, sigma=SIGMA, seed=0, batch_size=batch, noise_threads=noise_threads, batch_check=record
    )
    t = time.perf_counter()
    sc.certify_many([image], N0, n, ALPHA)
    return time.perf_counter() - t


def _summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "all": v.tolist()}


_PROBES: dict[str, dict] = {}


def _batch_for(arch: str, clf, args) -> tuple[int, dict | None]:
    """--batch, or the automatic probe's pick (probed once per model per run, so all sections agree)."""
    from rs_onnx.sampling import probe_batch_size

    if args.batch:
        return args.batch, None
    if arch not in _PROBES:
        _PROBES[arch] = probe_batch_size(clf)
    return _PROBES[arch]["batch_size"], _PROBES[arch]


def bench_model(arch: str, args, setting: Setting, threads: int) -> dict:
    import onnxruntime as ort

    from export.models import INPUT_SHAPES
    from rs_onnx.classifier import default_session_options
    from rs_onnx.sampling import default_noise_threads

    device = args.device
    t_prep = time.perf_counter()
    path, module, source = prepare_model(arch, Path(args.work_dir), exporter=args.exporter)
    shape = INPUT_SHAPES[arch]
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    n = args.n or setting.n
    rounds = args.rounds or setting.rounds
    clf = _classifier(path, device, threads, "host", None)
    batch, probe = _batch_for(arch, clf, args)
    noise_threads = default_noise_threads(clf.device) if args.noise_threads is None else args.noise_threads
    out = {
        "model": arch,
        "source": source,
        "onnx": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "input_shape": list(shape),
        "params": int(sum(p.numel() for p in module.parameters())),
        "macs_per_sample": macs_per_sample(path),
        "device": clf.device,
        "providers": clf.providers,
        "batch": batch,
        "batch_probe": probe,
        "n0": N0,
        "n": n,
        "rounds": rounds,
        "threads": threads,
        "noise_threads": noise_threads,
        "prepare_seconds": time.perf_counter() - t_prep,
    }
    providers = (
        clf.providers
        if device == "cpu"
        else [("CUDAExecutionProvider", {"device_id": str(clf.device_index)}), "CPUExecutionProvider"]
    )
    methods = {
        "ceiling": lambda c=Ceiling(path, providers, default_session_options(clf.device, threads), batch, shape): c(
            N0 + n
        )
    }
    if device == "cpu" and not args.no_ort_defaults:
        plain = ort.SessionOptions()
        plain.log_severity_level = 3
        plain.intra_op_num_threads = threads
        methods["ceiling_ort_defaults"] = lambda c=Ceiling(path, providers, plain, batch, shape): c(N0 + n)
    variants = args.variants or (CUDA_VARIANTS if device == "cuda" else ("host",))
    errors, warmups = {}, {}
    for variant in variants:
        try:
            vclf = clf if variant == "host" else _classifier(path, device, threads, variant, batch)
        except Exception as err:  # noqa: BLE001 - recorded: e.g. CUDA graphs refused by this model
            errors[variant] = " ".join(str(err).split())
            continue
        key = "rs" if variant == "host" else f"rs_{variant}"
        methods[key] = lambda c=vclf: (N0 + n) / _certify(c, image, n, batch, noise_threads)
        warmups[key] = vclf
    torch_ok = module is not None and not args.no_torch
    if torch_ok and clf.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            errors["pytorch"] = "torch has no CUDA here: baseline not run"
            torch_ok = False
    if torch_ok:
        import torch

        torch.set_num_threads(threads)
        cohen = CohenTorch(module, image, batch, clf.device, _num_classes(arch))
        methods["pytorch"] = lambda: cohen(N0, n)
        if not args.no_torch_probe:
            out["pytorch_batch_probe"] = probe_t = cohen.best_batch()
            if probe_t["batch_size"] != batch:
                tuned = CohenTorch(module, image, probe_t["batch_size"], clf.device, _num_classes(arch))
                methods["pytorch_best"] = lambda: tuned(N0, n)
    # warm-up: shapes, allocations, kernel choices (timings discarded)
    warm = min(n, 2 * batch)
    for name in methods:
        if name == "pytorch":
            cohen(min(N0, batch), warm)
        elif name == "pytorch_best":
            tuned(min(N0, tuned.batch), min(n, 2 * tuned.batch))
        elif name.startswith("rs"):
            _certify(warmups[name], image, warm, batch, noise_threads)
        else:
            methods[name]()
    # Every method runs back to back with the others (``--pairs`` times a round, the order alternating),
    # so each ratio compares neighbouring runs: on a shared machine the load drifts between rounds.
    results = {name: [] for name in methods}
    names = list(methods)
    for r in range(rounds):
        for k in range(args.pairs):
            for name in names if (r * args.pairs + k) % 2 == 0 else names[::-1]:
                results[name].append(methods[name]())
                log.info("%s round %d.%d %s: %.0f samples/s", arch, r + 1, k + 1, name, results[name][-1])
    out["samples_per_second"] = {name: _summary(v) for name, v in results.items()}
    ratios = {}
    for name in methods:
        if name.startswith("rs"):
            for ref in ("ceiling", "ceiling_ort_defaults", "pytorch", "pytorch_best"):
                if ref in results:
                    ratios[f"{name}/{ref}"] = _summary(np.asarray(results[name]) / np.asarray(results[ref]))
    if "pytorch" in results:
        ratios["ceiling/pytorch"] = _summary(np.asarray(results["ceiling"]) / np.asarray(results["pytorch"]))
    out["ratios"] = ratios
    out["pairs"] = args.pairs
    out["seconds_per_image"] = {
        name: (N0 + n) / s["median"]
        for name, s in out["samples_per_second"].items()
        if name.startswith(("rs", "pytorch"))
    }
    out["variant_errors"] = errors
    return out


def bench_scaling(arch: str, args, threads: int) -> dict:
    """Time and peak memory of one CERTIFY against n, and throughput against the number of noise threads."""
    from export.models import INPUT_SHAPES
    from rs_onnx.sampling import default_noise_threads

    path, _, source = prepare_model(arch, Path(args.work_dir), exporter=args.exporter)
    shape = INPUT_SHAPES[arch]
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    clf = _classifier(path, args.device, threads, "host", None)
    batch, _ = _batch_for(arch, clf, args)
    noise_threads = default_noise_threads(clf.device) if args.noise_threads is None else args.noise_threads
    ns = args.scaling_ns or SCALING_NS[args.quick]
    _certify(clf, image, min(ns), batch, noise_threads)  # warm-up
    rows = {
        n: {"n": n, "seconds_all": [], "peak_rss_mib": 0.0, "peak_rss_increase_mib": None, "traced_peak_mib": 0.0}
        for n in ns
    }
    for order in (list(ns), list(ns)[::-1]):  # twice, ascending then descending: load drifts cancel
        for n in order:
            row = rows[n]
            base = rss_mib()
            exact = reset_peak_rss()
            tracemalloc.start()
            seconds = _certify(clf, image, n, batch, noise_threads)
            _, numpy_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            row["seconds_all"].append(seconds)
            row["peak_rss_mib"] = max(row["peak_rss_mib"], peak_rss_mib())
            if exact:
                row["peak_rss_increase_mib"] = max(row["peak_rss_increase_mib"] or 0.0, peak_rss_mib() - base)
            row["traced_peak_mib"] = max(row["traced_peak_mib"], numpy_peak / 2**20)
            log.info("scaling %s n=%d: %.2f s, peak RSS %.0f MiB", arch, n, seconds, peak_rss_mib())
    rows = list(rows.values())
    for row in rows:  # the faster of the two runs: the one least slowed by other processes
        row["seconds"] = min(row["seconds_all"])
        row["samples_per_second"] = (N0 + row["n"]) / row["seconds"]
    x = np.array([r["n"] + N0 for r in rows], float)
    y = np.array([r["seconds"] for r in rows], float)
    # least squares on relative errors (weights 1/y), so that small n count as much as large n
    slope, intercept = np.polyfit(x, y, 1, w=1 / y) if len(rows) >= 2 else (y[0] / x[0], 0.0)
    pred = slope * x + intercept
    ss = float(((y - y.mean()) ** 2).sum())
    fit = {
        "seconds_per_sample": float(slope),
        "intercept_seconds": float(intercept),
        "r2": 1 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0,
        "max_relative_residual": float(np.max(np.abs(y - pred) / y)),
        "log_log_slope": float(np.polyfit(np.log(x), np.log(y), 1)[0]) if len(rows) >= 2 else 1.0,
    }
    tn = args.threads_n or (20_000 if args.quick else 100_000)
    counts = args.thread_counts or list(range(0, (os.cpu_count() or 2) + 1))
    per = {t: [] for t in counts}
    for r in range(args.threads_rounds):
        for t in counts if r % 2 == 0 else counts[::-1]:
            per[t].append((N0 + tn) / _certify(clf, image, tn, batch, t))
    thread_rows = [
        {
            "noise_threads": t,
            **{k: v for k, v in _summary(per[t]).items() if k != "all"},
            "relative_to_0": float(np.median(np.asarray(per[t]) / np.asarray(per[counts[0]]))),
        }
        for t in counts
    ]
    return {
        "model": arch,
        "source": source,
        "batch": batch,
        "noise_threads": noise_threads,
        "rows": rows,
        "fit": fit,
        "threads_n": tn,
        "threads": thread_rows,
    }
