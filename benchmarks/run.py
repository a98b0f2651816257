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
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.run")

ARCHS = ("digits_cnn", "resnet20", "resnet110", "resnet50")
ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DIGITS = ROOT / "rs_onnx" / "data" / "digits_cnn.onnx"
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


# --------------------------------------------------------------------------- machine facts
def _cpu_model() -> str:
    from rs_onnx.devices import cpu_name

    return cpu_name()


def _gpu_names() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    import onnx
    import onnxruntime as ort

    import rs_onnx

    facts = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": _gpu_names(),
        "platform": platform.platform(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "rs_onnx": rs_onnx.__version__,
        },
        "providers": ort.get_available_providers(),
        "git": _git_commit(),
    }
    try:
        import torch

        facts["versions"]["torch"] = torch.__version__
    except ImportError:
        pass
    return facts


def fma_peak_gflops(threads: int, work_dir: Path) -> float | None:
    """The CPU's float32 FMA peak in GFLOP/s on ``threads`` threads (benchmarks/fma_peak.c), or None
    when no C compiler with OpenMP is there or the program fails."""
    exe = work_dir / "fma_peak"
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                os.environ.get("CC", "cc"),
                "-O3",
                "-march=native",
                "-fopenmp",
                str(ROOT / "benchmarks" / "fma_peak.c"),
                "-o",
                str(exe),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        out = subprocess.run(
            [str(exe)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        ).stdout
        return float(out.split("GFLOPS")[1].split()[0])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as err:
        log.info("no FMA peak measured (%s)", err)
        return None


def macs_per_sample(path: Path) -> int:
    """Multiply-accumulates of one sample through the Conv, Gemm and MatMul nodes of an ONNX file
    (shapes from ONNX shape inference at batch 1; nodes of unknown shape count 0)."""
    import onnx
    from onnx import shape_inference

    from rs_onnx import graph

    model = graph.strip_initializer_inputs(onnx.load(str(path)))
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    dims = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)
    }
    dims.update({t.name: list(t.dims) for t in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        out, w = dims.get(node.output[0]), dims.get(node.input[1]) if len(node.input) > 1 else None
        if not out or not w or 0 in out or 0 in w:
            continue
        if node.op_type == "Conv":  # every output value: Cin/group x kernel MACs
            macs += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            macs += int(np.prod(out[1:])) * (
                w[-1] if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute) else w[0]
            )
    return macs


# --------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return (kib or 0) / 1024


# --------------------------------------------------------------------------- models
def _num_classes(arch: str) -> int:
    return 1000 if arch == "resnet50" else 10


def _torch_from_onnx(arch: str, path: Path):
    """The torch module of ``arch`` with the weights of the ONNX file (names as torch.onnx exports them)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from export.models import build

    model_proto = onnx.load(str(path))
    meta = {p.key: p.value for p in model_proto.metadata_props}
    mean = json.loads(meta.get("rs_onnx.mean", "[0.5]"))
    std = json.loads(meta.get("rs_onnx.std", "[0.25]"))
    module = build(arch, _num_classes(arch), mean, std).eval()
    inits = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    state = module.state_dict()
    for key, value in state.items():
        if key.startswith("0."):  # Normalize buffers: rebuilt from the metadata
            continue
        if key not in inits or tuple(inits[key].shape) != tuple(value.shape):
            raise ValueError(f"{path.name}: no initializer {key} {tuple(value.shape)}")
        state[key] = torch.from_numpy(np.array(inits[key]))
    module.load_state_dict(state)
    return module


def prepare_model(arch: str, work_dir: Path, seed: int = 0, exporter: str = "auto"):
    """(onnx path, torch module, description): the same network in both."""
    import torch

    from export.export_onnx import ParityError, check_parity, export_onnx
    from export.models import INPUT_SHAPES, build

    shape = INPUT_SHAPES[arch]
    if arch == "digits_cnn" and BUNDLED_DIGITS.is_file():
        try:
            module = _torch_from_onnx(arch, BUNDLED_DIGITS)
            check_parity(module, BUNDLED_DIGITS, shape, batch_sizes=(1, 7))
            return BUNDLED_DIGITS, module, "bundled rs_onnx/data/digits_cnn.onnx (trained)"
        except (ValueError, ParityError, RuntimeError) as err:
            log.warning("bundled digits model not usable for the baseline (%s); exporting an untrained one", err)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"{arch}_seed{seed}.onnx"
    side = path.with_suffix(".json")
    mean, std = [0.5] * shape[0], [0.25] * shape[0]
    torch.manual_seed(seed)
    module = build(arch, _num_classes(arch), mean, std).eval()
    facts = {"arch": arch, "seed": seed, "num_classes": _num_classes(arch), "torch": torch.__version__}
    if path.is_file() and side.is_file() and json.loads(side.read_text()) == facts:
        try:
            check_parity(module, path, shape, batch_sizes=(2,), atol=1e-3)
            return path, module, f"untrained (random weights, seed {seed}), exported from the torch module"
        except ParityError:
            log.info("%s: cached export differs from the torch module; exporting again", path)
    t = time.perf_counter()
    meta = {
        "rs_onnx.arch": arch,
        "rs_onnx.mean": json.dumps(mean),
        "rs_onnx.std": json.dumps(std),
        "rs_onnx.dataset": "none (untrained, random weights)",
    }
    export_onnx(module, path, shape, meta, exporter=exporter, atol=1e-3)
    side.write_text(json.dumps(facts))
    log.info("exported %s in %.1f s", path, time.perf_counter() - t)
    return path, module, f"untrained (random weights, seed {seed}), exported from the torch module"


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
        (:func:`rs_onnx.sampling.auto_batch_size`) over :data:`TORCH_BATCH_CANDIDATES`."""
        from rs_onnx.sampling import auto_batch_size

        saved, probe = self.batch, _TorchAsClassifier(self)
        try:
            auto_batch_size(probe, TORCH_BATCH_CANDIDATES[self.device])
        finally:
            self.batch = saved
            if self.device == "cuda":
                self.torch.cuda.empty_cache()
        return probe.batch_probe


class _TorchAsClassifier:
    """A :class:`CohenTorch` seen by the batch probe: ``predict(x)`` samples one batch of ``len(x)`` noisy
    copies of its image (the values of ``x`` are not used)."""

    input_dtype, num_classes = np.dtype(np.float32), None

    def __init__(self, cohen: CohenTorch):
        self.cohen, self.device, self.input_shape = cohen, cohen.device, tuple(cohen.x.shape)
        self.batch_probe: dict | None = None

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


def _certify(clf, image, n: int, batch: int, noise_threads: int) -> float:
    from rs_onnx import SmoothedClassifier

    sc = SmoothedClassifier(clf, sigma=SIGMA, seed=0, batch_size=batch, noise_threads=noise_threads)
    t = time.perf_counter()
    sc.certify_many([image], N0, n, ALPHA)
    return time.perf_counter() - t


def _summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "all": v.tolist()}


_PROBES: dict[str, dict] = {}


def _batch_for(arch: str, clf, args) -> tuple[int, dict | None]:
    """--batch, or the automatic probe's pick (probed once per model per run, so all sections agree)."""
    from rs_onnx.sampling import auto_batch_size

    if args.batch:
        return args.batch, None
    if arch not in _PROBES:
        auto_batch_size(clf)
        _PROBES[arch] = clf.batch_probe
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
        else [("CUDAExecutionProvider", {"device_id": str(clf._index)}), "CPUExecutionProvider"]
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


# --------------------------------------------------------------------------- report
def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _ratio(m: dict, key: str) -> str:
    r = m["ratios"].get(key)
    if not r:
        return "-"
    return f"**{r['median']:.2f}** ({r['min']:.2f}-{r['max']:.2f})"


def markdown(res: dict) -> str:
    mach = res["machine"]
    lines = [
        "# rs-onnx benchmarks",
        "",
        f"Generated by `{res['command']}` on {res['date']} in {res['seconds']:.0f} s "
        "(this file and `results.json` are overwritten by that command).",
        "",
        "## Machine",
        "",
        f"- CPU: {mach['cpu']}, {mach['cores']} logical cores ({mach['cores_usable']} usable)",
        f"- GPU: {', '.join(mach['gpus']) if mach['gpus'] else 'none'}",
        f"- load average (1, 5, 15 min) at start: {_loads(mach.get('load_average_start'))}, at end: "
        f"{_loads(res.get('load_average_end'))}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()),
        f"- onnxruntime providers: {', '.join(mach['providers'])}; git: {mach.get('git')}",
        f"- threads: onnxruntime intra-op = torch.set_num_threads = {res['threads']}",
        "",
    ]
    if res.get("shared_note"):
        lines += [res["shared_note"], ""]
    lines += [
        "## Throughput of one CERTIFY",
        "",
        f"One image, n0 = {N0}, alpha = {ALPHA}, sigma = {SIGMA}; samples/s = (n0 + n) / seconds, medians. "
        f"Each round runs every method back to back {res.get('pairs', 2)} times (`--pairs`), the order "
        "alternating; ratios are medians of the ratios of neighbouring runs (min-max in brackets).",
        "",
        "| model | params | batch | n | rounds | ceiling img/s | rs-onnx samples/s | rs / ceiling | "
        "ORT-defaults img/s | rs / ORT defaults | PyTorch samples/s | rs / PyTorch | s per image (rs, PyTorch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in res["models"]:
        sps = m["samples_per_second"]
        get = lambda k: sps[k]["median"] if k in sps else None  # noqa: E731
        spi = m["seconds_per_image"]
        lines.append(
            f"| {m['model']} | {m['params']:,} | {m['batch']} | {m['n']:,} | {m['rounds']} | {_fmt(get('ceiling'))} | "
            f"{_fmt(get('rs'))} | {_ratio(m, 'rs/ceiling')} | {_fmt(get('ceiling_ort_defaults'))} | "
            f"{_ratio(m, 'rs/ceiling_ort_defaults')} | {_fmt(get('pytorch'))} | {_ratio(m, 'rs/pytorch')} | "
            f"{_fmt(spi.get('rs'))}, {_fmt(spi.get('pytorch'))} |"
        )
    tuned = [m for m in res["models"] if m.get("pytorch_batch_probe")]
    if tuned:
        lines += [
            "",
            "PyTorch at its own fastest batch size (probed with the rule of rs-onnx's automatic batch size; "
            "the table above gives PyTorch rs-onnx's batch):",
            "",
            "| model | rs-onnx batch | PyTorch batch | PyTorch samples/s | rs / PyTorch | PyTorch probe, us per sample |",
            "|---|---|---|---|---|---|",
        ]
        for m in tuned:
            probe = m["pytorch_batch_probe"]
            key = _pytorch_best(m)
            sizes = ", ".join(f"{k}: {1e6 * v:.3g}" for k, v in probe["seconds_per_sample"].items())
            lines.append(
                f"| {m['model']} | {m['batch']} | {probe['batch_size']} | "
                f"{_fmt(m['samples_per_second'][key]['median'])} | {_ratio(m, 'rs/' + key)} | {sizes} |"
            )
    peak = mach.get("fma_peak_gflops")
    lines += [
        "",
        "Arithmetic rate: GFLOP/s = 2 x multiply-accumulates per sample (Conv, Gemm, MatMul nodes) x samples/s"
        + (
            f"; in brackets, the share of this CPU's float32 FMA peak on {res['threads']} threads, "
            f"{peak:.0f} GFLOP/s (`benchmarks/fma_peak.c`)"
            if peak
            else ""
        )
        + ":",
        "",
        "| model | MMAC per sample | ceiling | rs-onnx | PyTorch, rs-onnx's batch | PyTorch, its fastest batch |",
        "|---|---|---|---|---|---|",
    ]
    for m in res["models"]:
        sps = m["samples_per_second"]

        def rate(key, m=m, sps=sps):
            if key not in sps:
                return "-"
            g = 2 * m["macs_per_sample"] * sps[key]["median"] / 1e9
            return f"{g:.0f}" + (f" ({g / peak:.0%})" if peak else "")

        best = _pytorch_best(m)
        lines.append(
            f"| {m['model']} | {m['macs_per_sample'] / 1e6:.4g} | {rate('ceiling')} | {rate('rs')} | "
            f"{rate('pytorch')} | {rate(best)} |"
        )
    extra = [(m, k) for m in res["models"] for k in m["samples_per_second"] if k.startswith("rs_")]
    if extra or any(m["variant_errors"] for m in res["models"]):
        lines += [
            "",
            "Variants:",
            "",
            "| model | variant | samples/s | / ceiling | / PyTorch | s per image |",
            "|---|---|---|---|---|---|",
        ]
        for m, k in extra:
            lines.append(
                f"| {m['model']} | {k[3:]} | {_fmt(m['samples_per_second'][k]['median'])} | "
                f"{_ratio(m, k + '/ceiling')} | {_ratio(m, k + '/pytorch')} | {_fmt(m['seconds_per_image'][k])} |"
            )
        for m in res["models"]:
            for k, err in m["variant_errors"].items():
                lines.append(f"| {m['model']} | {k} | not run: {err[:160]} | | | |")
    lines += (
        _gpu_targets(res)
        if res["device"] == "cuda"
        else [
            "",
            "Targets (CPU): CERTIFY >= 0.85 of the ceiling and >= 2x the PyTorch baseline for the CIFAR "
            "ResNets (the stricter of the two ceilings counts):",
            "",
        ]
    )
    for m in res["models"]:
        if m["model"] in ("resnet20", "resnet110") and res["device"] == "cpu":
            cs = [m["ratios"][k]["median"] for k in ("rs/ceiling", "rs/ceiling_ort_defaults") if k in m["ratios"]]
            c = min(cs) if cs else None
            p = m["ratios"].get("rs/pytorch", {}).get("median")
            bare = m["ratios"].get("ceiling/pytorch", {}).get("median")
            ok_c, ok_p = c is not None and c >= 0.85, p is None or p >= 2
            best = m["ratios"].get("rs/" + _pytorch_best(m), {}).get("median")
            lines.append(
                f"- {m['model']}: rs / ceiling {_fmt(c)} ({'met' if ok_c else 'NOT met'}), rs / PyTorch "
                f"{_fmt(p)} ({'met' if ok_p else 'NOT met'}); the bare ceiling itself is {_fmt(bare)}x PyTorch; "
                f"against PyTorch at its own fastest batch size, rs / PyTorch is {_fmt(best)}"
                + _needed_rate(m, mach.get("fma_peak_gflops"))
            )
    lines += ["", "Automatic batch size (probe on random inputs: fastest run per size, seconds per sample):", ""]
    for m in res["models"]:
        p = m.get("batch_probe")
        if p:
            sizes = ", ".join(f"{k}: {1e6 * v:.3g} us" for k, v in p["seconds_per_sample"].items())
            lines.append(
                f"- {m['model']}: picked {p['batch_size']} in {p['probe_seconds']:.1f} s ({p['stopped']}); {sizes}"
            )
        else:
            lines.append(f"- {m['model']}: batch {m['batch']} given (--batch)")
    sc = res.get("scaling")
    if sc:
        fit = sc["fit"]
        lines += [
            "",
            f"## Scaling with n ({sc['model']}, batch {sc['batch']}, {sc['noise_threads']} noise thread(s))",
            "",
            "Each n runs twice (ascending, then descending n); the faster run is shown and fitted.",
            "",
            "| n | seconds | samples/s | peak RSS MiB | peak RSS increase MiB | numpy peak (tracemalloc) MiB |",
            "|---|---|---|---|---|---|",
        ]
        for r in sc["rows"]:
            lines.append(
                f"| {r['n']:,} | {r['seconds']:.3g} | {_fmt(r['samples_per_second'])} | "
                f"{r['peak_rss_mib']:.0f} | {_fmt(r['peak_rss_increase_mib'])} | {r['traced_peak_mib']:.1f} |"
            )
        lines += [
            "",
            f"Least-squares fit (relative errors): seconds = {fit['intercept_seconds']:.3g} + {fit['seconds_per_sample']:.3g} "
            f"x (n0 + n); R^2 = {fit['r2']:.4f}, largest relative residual {fit['max_relative_residual']:.1%}, "
            f"log-log slope {fit['log_log_slope']:.3f} (1 = linear). Peak memory is measured by resetting "
            "the kernel's high-water mark (VmHWM) before each run; the traced peak counts numpy buffers "
            "(the ring of batch buffers), not onnxruntime's own arena.",
            "",
            f"Noise threads ({sc['model']}, n = {sc['threads_n']:,}, rounds alternating in order):",
            "",
            "| noise threads | samples/s (median) | min | max | relative to the first row |",
            "|---|---|---|---|---|",
        ]
        for t in sc["threads"]:
            lines.append(
                f"| {t['noise_threads']} | {_fmt(t['median'])} | {_fmt(t['min'])} | {_fmt(t['max'])} | "
                f"{t['relative_to_0']:.2f} |"
            )
    lines += ["", "## Method", "", *METHOD_NOTES]
    if res["device"] != "cuda":
        lines += ["", "## GPU", "", *GPU_NOTES]
    return "\n".join(lines) + "\n"


def _pytorch_best(m: dict) -> str:
    """The method key of PyTorch at its fastest batch size ("pytorch" when that is rs-onnx's batch)."""
    return "pytorch_best" if "pytorch_best" in m["samples_per_second"] else "pytorch"


COHEN_SECONDS = {"resnet110": 15.0, "resnet50": 150.0}
"""Cohen et al. (2019): seconds per image of CERTIFY at n = 100,000 on their GPU (CIFAR-10, ImageNet)."""


def _gpu_targets(res: dict) -> list[str]:
    """The GPU targets: host noise >= 0.9 of the ceiling, seconds per image at n = 100,000 and the fastest mode."""
    lines = [
        "",
        "Targets (GPU): CERTIFY with host noise >= 0.9 of the ceiling; seconds per image at n = 100,000 "
        "(n0 + n samples at the measured median rate) against Cohen et al.'s ~15 s (ResNet-110) and "
        "~150 s (ResNet-50) on their own, older GPU, and the fastest mode:",
        "",
    ]
    for m in res["models"]:
        sps = m["samples_per_second"]
        c = m["ratios"].get("rs/ceiling", {}).get("median")
        per_image = {
            ("host" if k == "rs" else k[3:]): (N0 + 100_000) / v["median"] for k, v in sps.items() if k.startswith("rs")
        }
        if not per_image:
            continue
        fastest = min(per_image, key=per_image.get)
        line = (
            f"- {m['model']}: rs / ceiling {_fmt(c)} ({'met' if c is not None and c >= 0.9 else 'NOT met'}); "
            "seconds per image at n = 100,000: "
            + ", ".join(f"{k} {v:.3g}" for k, v in per_image.items())
            + f"; fastest: {fastest}"
        )
        if m["model"] in COHEN_SECONDS:
            ref = COHEN_SECONDS[m["model"]]
            line += f", {ref / per_image[fastest]:.3g}x faster than Cohen et al.'s ~{ref:.0f} s"
        lines.append(line)
    return lines


def _needed_rate(m: dict, peak: float | None) -> str:
    """What 2x PyTorch at its fastest batch size would take, against the CPU's FMA peak."""
    sps = m["samples_per_second"]
    key = _pytorch_best(m)
    if not peak or key not in sps:
        return ""
    need = 4 * m["macs_per_sample"] * sps[key]["median"] / 1e9
    return f" (2x that needs {need:.0f} GFLOP/s, {need / peak:.0%} of the FMA peak)"


def _loads(v) -> str:
    return ", ".join(f"{x:.2f}" for x in v) if v else "?"


METHOD_NOTES = [
    "- ceiling: `InferenceSession.run` on one fixed random batch of the chosen size, no noise, same file, "
    "provider, intra-op threads and session options as rs-onnx's session (on CPU rs-onnx turns "
    '`session.intra_op.allow_spinning` off); "ORT defaults" is the same loop with onnxruntime\'s default '
    "options (spinning threads).",
    "- rs-onnx: `SmoothedClassifier.certify_many([x], n0, n, alpha)`: host noise (NumPy SFC64, per-block "
    "streams), noise threads as shown in results.json, the batch size from the automatic probe unless "
    "`--batch` is given.",
    "- PyTorch: the same torch module (the ONNX file is exported from it, or its weights are loaded from the "
    "bundled file and checked against it), Cohen et al.'s `_sample_noise` loop under `torch.inference_mode()` "
    "(the reference uses `torch.no_grad()`), `np.bincount` instead of the reference's Python counting loop "
    '(which favours the baseline), same n0, n and batch size; "PyTorch at its own fastest batch size" is '
    "the same loop at the batch size that a probe finds fastest for PyTorch (eager PyTorch is often faster "
    "per sample at small batches on CPU, where activations stay in cache, while onnxruntime is flat).",
    "- The machine may be shared with other processes: absolute numbers move from run to run (the load "
    "average above says how busy it was), ratios much less, since every method runs back to back with the "
    "others, in alternating order. A ratio above 1 against the ceiling is such noise (the load changed between two "
    "runs of the round), not rs-onnx beating the model. Under load, PyTorch's OpenMP threads suffer more "
    "than onnxruntime's non-spinning ones, which widens its min-max range.",
    "- Host noise shares the CPU with the model: NumPy's float32 normals cost ~7 ns a value on the 2-core "
    "AMD EPYC this file was first made on (5 us per 28x28 digit, 21 us per CIFAR image), against ~12 us of "
    "CPU per image for the digits CNN, ~400 us for ResNet-20 and ~2.2 ms for ResNet-110. That bounds "
    "rs / ceiling near 0.7 for the digits CNN and leaves the ResNets close to 1. rs-onnx cannot beat the "
    "bare model: where the ceiling itself is under 2x PyTorch, so is rs-onnx.",
    "- Big models use a smaller n (see the n column) to keep the whole run short; throughput does not depend "
    "on n beyond the first batch (see the scaling section).",
]

GPU_NOTES = [
    "This file is the CPU benchmark. The GPU is measured by `bash benchmarks/gpu_check.sh OUT` (provider, "
    "`pytest -m gpu`, CERTIFY against the bare CUDA loop and PyTorch on the same GPU), whose results are "
    "committed per GPU under `benchmarks/gpu-results/` (first: an NVIDIA H200, 2026-11-30).",
]


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
