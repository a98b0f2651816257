"""The GPU check's measurements (issue 29), one function per step; :mod:`benchmarks.gpu` runs them in order
within a time budget and writes the JSON after each. Every step also runs on the CPU with tiny sizes
(``dry``), so that the check cannot rot between the rare sessions lent a GPU; CUDA-only parts then say
"skipped (dry run)" instead of a figure.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ALGOS = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
N0 = 100


@dataclass
class Context:
    """What every step reads: the device ("cuda", or "cpu" in a dry run), the deadline (time.time()), the work
    folder (exported models), and the models prepared so far (arch -> (onnx path, torch module))."""

    device: str
    dry: bool
    deadline: float
    work: Path
    models: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.time()

    def model(self, arch: str):
        if arch not in self.models:
            from benchmarks.models import prepare_model

            self.models[arch] = prepare_model(arch, self.work)[:2]
        return self.models[arch]


def _median_seconds(f, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# ------------------------------------------------------------------ facts
def card_facts() -> dict:
    """The card from nvidia-smi: name, driver, memory, power limit, PCIe link; form factor SXM / PCIe / NVL from
    the name (PCIe and NVL cards say so in it) and the power limit (SXM boards run at 500 W and more)."""
    from benchmarks.machine import gpu_query

    fields = "name,driver_version,memory.total,power.limit,pcie.link.gen.max,pcie.link.width.max,clocks.max.sm"
    rows = gpu_query(fields)
    if not rows:
        return {"nvidia_smi": "not available"}
    values = [v.strip() for v in rows[0].split(",")]
    facts = dict(zip(fields.split(","), values))
    name = facts.get("name", "")
    try:
        watts = float(facts.get("power.limit", "0").split()[0])
    except ValueError:
        watts = 0.0
    if "pcie" in name.lower():
        form = "PCIe"
    elif "nvl" in name.lower():
        form = "NVL (PCIe card, NVLink bridge)"
    elif watts >= 500:
        form = "SXM (power limit >= 500 W)"
    else:
        form = f"unknown (power limit {watts:g} W)"
    return {**facts, "form_factor": form, "gpus": len(rows)}


def facts(ctx: Context) -> dict:
    import onnxruntime as ort

    from benchmarks.gpu import provider_facts
    from rs_onnx.devices import TENSORRT_LIBRARY, tensorrt_available

    out = provider_facts(ctx.device)
    out["card"] = card_facts()
    out["tensorrt"] = {
        "provider_listed": "TensorrtExecutionProvider" in ort.get_available_providers(),
        f"{TENSORRT_LIBRARY}_loads": tensorrt_available(),
    }
    try:
        import torch

        out["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        out["cudnn"] = None
    return out


# ------------------------------------------------------------------ shape changes per cuDNN algorithm search
def shape_changes(ctx: Context) -> dict:
    """Seconds of the first run at a new input shape (batch B, then B // 10, then B again) against a steady
    run, per ``cudnn_conv_algo_search`` (and onnxruntime's default, no option); steady samples/s at B."""
    from rs_onnx import OnnxClassifier

    arch, big = ("digits_cnn", 256) if ctx.dry else ("resnet110", 1024)
    path, _ = ctx.model(arch)
    small = max(2, big // 10)
    rows = {}
    for algo in (None, *ALGOS):
        if ctx.left() < 30:
            rows[str(algo)] = {"skipped": "out of budget"}
            continue
        options = {} if algo is None else {"cudnn_conv_algo_search": algo}
        clf = OnnxClassifier(path, device=ctx.device, cuda_options=options, one_shape=False)
        rng = np.random.default_rng(0)
        xb = rng.random((big, *clf.input_shape), dtype=np.float32)
        xs = xb[:small]
        t = time.perf_counter()
        clf.predict(xb)
        first = time.perf_counter() - t
        steady = _median_seconds(lambda: clf.predict(xb))
        t = time.perf_counter()
        clf.predict(xs)
        to_small = time.perf_counter() - t
        steady_small = _median_seconds(lambda: clf.predict(xs))
        t = time.perf_counter()
        clf.predict(xb)
        back = time.perf_counter() - t
        rows["onnxruntime default" if algo is None else algo] = {
            "first_run_seconds": first,
            "steady_seconds": steady,
            "shape_change_seconds": ((to_small - steady_small) + (back - steady)) / 2,
            "samples_per_s_at_batch": big / steady,
            "applied": clf.signature()["cuda_provider_options"],
        }
    measured = {k: v for k, v in rows.items() if "steady_seconds" in v}
    return {
        "model": arch,
        "batches": [big, small, big],
        "algos": rows,
        "fastest_steady": max(measured, key=lambda k: measured[k]["samples_per_s_at_batch"]) if measured else None,
        "cheapest_shape_change": min(measured, key=lambda k: measured[k]["shape_change_seconds"]) if measured else None,
    }


# ------------------------------------------------------------------ device noise: its law, and CUDA graphs
def _identity(dim: int):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dim])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _providers(device: str, graph: bool = False) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": "0", **({"enable_cuda_graph": "1"} if graph else {})})]


def device_noise(ctx: Context) -> dict:
    """KS of the device's noise against N(0, 1) for two very different inputs (CIFAR-size zeros at gain 0.25,
    ImageNet-size values in [-500, 500] at gain 2), fresh per call (two calls of one session differ); the CUDA
    graph demonstration (a captured graph replays one noise tensor) and rs-onnx's refusal of that pairing."""
    import onnxruntime as ort
    from scipy.stats import kstest

    from rs_onnx import OnnxClassifier
    from rs_onnx.errors import ConfigError
    from rs_onnx.graph import CLEAN_INPUT, GAIN_INPUT, INDEX_INPUT, prepend_noise
    from rs_onnx.run import bundled

    rows = 64 if ctx.dry else 512
    cases = {"cifar_zeros_gain_0.25": (3 * 32 * 32, 0.0, 0.25), "imagenet_wide_gain_2": (3 * 224 * 224, 500.0, 2.0)}
    out: dict = {"device": ctx.device, "rows": rows, "cases": {}}
    if ctx.dry:
        out["note"] = "dry run: onnxruntime's CPU RandomNormal (minstd), the code path only, not the law under test"
    for name, (dim, spread, gain) in cases.items():
        noisy = prepend_noise(_identity(dim), "x", gain_shape=(dim,), seed=1234)
        session = ort.InferenceSession(noisy.SerializeToString(), providers=_providers(ctx.device))
        clean = np.random.default_rng(0).uniform(-spread, spread, (2, dim)).astype(np.float32)
        index = np.arange(rows, dtype=np.int64) % 2
        feed = {CLEAN_INPUT: clean, INDEX_INPUT: index, GAIN_INPUT: np.full(dim, gain, np.float32)}
        draws = [(session.run(None, feed)[0] - clean[index]) / gain for _ in range(2)]
        z = [d.ravel()[:: max(1, d.size // 200_000)].astype(np.float64) for d in draws]
        ks = [kstest(v, "norm") for v in z]
        out["cases"][name] = {
            "values_tested_per_call": int(z[0].size),
            "ks_statistic": [float(k.statistic) for k in ks],
            "ks_p": [float(k.pvalue) for k in ks],
            "mean": [float(v.mean()) for v in z],
            "std": [float(v.std()) for v in z],
            "share_differing_between_calls": float((draws[0] != draws[1]).mean()),
            "law_ok": all(k.pvalue > 1e-3 for k in ks) and float((draws[0] != draws[1]).mean()) > 0.99,
        }
    try:
        OnnxClassifier(bundled("digits_cnn.onnx"), device=ctx.device, device_noise=True, cuda_graph=True, max_batch=8)
        out["cuda_graph_with_device_noise_refused"] = False
    except ConfigError as err:
        out["cuda_graph_with_device_noise_refused"] = True
        out["refusal"] = str(err)[:200]
    out["cuda_graph_replay"] = "skipped (dry run: no CUDA graph on CPU)" if ctx.dry else _replay_demo()
    return out


def _replay_demo() -> dict:
    """A RandomNormalLike graph captured as a CUDA graph, run twice through IO binding: the same noise twice."""
    import onnxruntime as ort

    from rs_onnx.graph import CLEAN_INPUT, GAIN_INPUT, INDEX_INPUT, prepend_noise

    dim, rows = 3072, 256
    noisy = prepend_noise(_identity(dim), "x", gain_shape=(dim,), seed=99)
    outs = {}
    for graph in (False, True):
        session = ort.InferenceSession(noisy.SerializeToString(), providers=_providers("cuda", graph))
        binding = session.io_binding()
        values = {
            CLEAN_INPUT: np.zeros((1, dim), np.float32),
            INDEX_INPUT: np.zeros(rows, np.int64),
            GAIN_INPUT: np.ones(dim, np.float32),
        }
        keep = []
        for k, v in values.items():
            ov = ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0)
            keep.append(ov)
            binding.bind_ortvalue_input(k, ov)
        y = ort.OrtValue.ortvalue_from_shape_and_type([rows, dim], np.float32, "cuda", 0)
        binding.bind_ortvalue_output("y", y)
        runs = []
        for _ in range(5):  # onnxruntime runs a few times before it captures; the last two are replays
            session.run_with_iobinding(binding)
            runs.append(y.numpy().copy())
        outs["captured" if graph else "plain"] = bool(np.array_equal(runs[-2], runs[-1]))
    return {"identical_noise_on_replays": outs, "why_refused": "a captured graph replays one noise tensor"}


# ------------------------------------------------------------------ CERTIFY as the CLI runs it
MODES = {
    "host (pageable)": {"device_noise": False, "pageable": True},
    "host, HEURISTIC": {"device_noise": False, "pageable": True, "cudnn_algo_search": "HEURISTIC"},
    "cuda graph": {"device_noise": False, "cuda_graph": True},
    "device noise": {"device_noise": True},
    "host, pinned ring": {"device_noise": False},
    "device noise, fp16, NHWC": {"device_noise": True, "fp16": True, "prefer_nhwc": True},
}
CUDA_ONLY = ("cuda graph", "device noise", "device noise, fp16, NHWC")


@contextlib.contextmanager
def _pageable():
    """The sampler's ring in pageable memory, as before the pinned ring (to measure what pinning gives)."""
    from rs_onnx import cuda

    saved = cuda.pinned_empty
    cuda.pinned_empty = lambda shape, dtype: (np.empty(shape, dtype), "pageable")
    try:
        yield
    finally:
        cuda.pinned_empty = saved


def certify_modes(ctx: Context, arch: str, n: int, batch: int) -> dict:
    """Per mode: prepare (load, checks) and CERTIFY of one image (``run.prepare`` + ``run.execute``, what
    ``rs-onnx certify`` does), samples/s, s/img at n = 100,000 (extrapolated when n is smaller, said so), the
    prediction and nA (host modes must agree: same noise); and the bare ceilings in fp32 and fp16 with TFLOP/s."""
    from benchmarks.models import macs_per_sample
    from rs_onnx import run
    from rs_onnx.bench import bare_loop
    from rs_onnx.config import RunConfig

    path, _ = ctx.model(arch)
    from export.models import INPUT_SHAPES

    shape = INPUT_SHAPES[arch]
    ctx.work.mkdir(parents=True, exist_ok=True)
    data = ctx.work / f"{arch}_one.npz"
    image = np.random.default_rng(1).integers(0, 256, (1, *shape[1:], shape[0]), dtype=np.uint8)
    np.savez(data, images=image[..., 0] if shape[0] == 1 else image, labels=np.array([0]))
    macs = macs_per_sample(path)
    out: dict = {"model": arch, "n": n, "n0": N0, "batch": batch, "macs_per_sample": macs, "modes": {}}
    rows: list = []
    for mode, opts in MODES.items():
        if ctx.dry and mode in CUDA_ONLY:
            out["modes"][mode] = {"skipped": "dry run: CUDA only"}
            continue
        if ctx.left() < 20:
            out["modes"][mode] = {"skipped": "out of budget"}
            continue
        cfg_opts = {k: v for k, v in opts.items() if k != "pageable"}
        cfg = RunConfig(
            model=str(path), data=str(data), sigma=0.25, n0=N0, n=n, seed=0, batch_size=batch, device=ctx.device,
            layout="nchw" if shape[0] != 1 else "auto", **cfg_opts,
        ).validate()  # fmt: skip
        try:
            with _pageable() if opts.get("pageable") else contextlib.nullcontext():
                t = time.perf_counter()
                p = run.prepare(cfg)
                prepare_s = time.perf_counter() - t
                t = time.perf_counter()
                meta = run.execute(p, "certify", None, stream=io.StringIO(), on_rows=lambda r: rows.extend(r))
                seconds = time.perf_counter() - t
        except Exception as err:  # noqa: BLE001 - recorded; the next mode runs
            out["modes"][mode] = {"error": " ".join(str(err).split())[:400]}
            continue
        rate = (N0 + n) / seconds
        row = rows.pop() if rows else {}
        out["modes"][mode] = {
            "prepare_seconds": prepare_s,
            "certify_seconds": seconds,
            "samples_per_s": rate,
            "seconds_per_image_at_100k": (N0 + 100_000) / rate,
            "extrapolated": n < 100_000,
            "predict": row.get("predict"),
            "nA": row.get("nA", row.get("n_a")),
            "signature": {k: meta["model"]["signature"].get(k) for k in ("noise", "host_ring", "precision")},
            "batch_check": meta.get("batch_check"),
        }
    out["ceilings"] = {}
    for label, fp16, nhwc in (("fp32", False, False), ("fp16 NHWC", True, True)):
        if ctx.dry and fp16:
            out["ceilings"][label] = {"skipped": "dry run"}
            continue
        from rs_onnx import OnnxClassifier

        clf = OnnxClassifier(
            path, device=ctx.device, float_type="fp16" if fp16 else "fp32",
            cuda_options={"prefer_nhwc": "1"} if nhwc else None,
        )  # fmt: skip
        rate = bare_loop(clf, batch)(max(4 * batch, n // 4))
        out["ceilings"][label] = {"samples_per_s": rate, "tflops": 2 * macs * rate / 1e12}
    base = out["ceilings"]["fp32"]["samples_per_s"]
    for v in out["modes"].values():
        if "samples_per_s" in v:
            v["over_fp32_ceiling"] = v["samples_per_s"] / base
    return out


# ------------------------------------------------------------------ the strongest PyTorch a user would write
def torch_loops(ctx: Context, arch: str, n: int, batch: int) -> dict:
    """Cohen et al.'s sampling loop on the same weights: eager fp32, channels_last + AMP fp16, torch.compile
    (last: its compilation is the slowest part). Samples/s and s/img at n = 100,000 (extrapolated when n is
    smaller)."""
    import torch

    _, module = ctx.model(arch)
    from export.models import INPUT_SHAPES

    shape = INPUT_SHAPES[arch]
    dev = "cuda" if ctx.device == "cuda" else "cpu"
    image = torch.from_numpy(np.random.default_rng(1).random(shape, dtype=np.float32)).to(dev)
    out: dict = {"model": arch, "n": n, "batch": batch, "loops": {}}
    for mode in ("eager fp32", "channels_last + AMP fp16", "torch.compile"):
        if ctx.dry and mode != "eager fp32":
            out["loops"][mode] = {"skipped": "dry run"}
            continue
        if ctx.left() < (90 if mode == "torch.compile" else 20):
            out["loops"][mode] = {"skipped": "out of budget"}
            continue
        net = module.to(dev).eval()
        if mode != "eager fp32":
            net = net.to(memory_format=torch.channels_last)
        if mode == "torch.compile":
            net = torch.compile(net)  # the default mode: max-autotune could spend the whole budget tuning
        amp = mode != "eager fp32" and dev == "cuda"

        def sample(num: int) -> None:
            with torch.inference_mode(), torch.autocast(dev, torch.float16, enabled=amp):
                for _ in range(math.ceil(num / batch)):
                    this = min(batch, num)
                    num -= this
                    x = image.repeat((this, 1, 1, 1))
                    x = x + torch.randn_like(x) * 0.25
                    if mode != "eager fp32":
                        x = x.contiguous(memory_format=torch.channels_last)
                    np.bincount(net(x).argmax(1).cpu().numpy(), minlength=2)

        try:
            t = time.perf_counter()
            sample(2 * batch)  # warm-up (and compilation)
            warm = time.perf_counter() - t
            t = time.perf_counter()
            sample(N0)
            sample(n)
            seconds = time.perf_counter() - t
        except Exception as err:  # noqa: BLE001 - recorded
            out["loops"][mode] = {"error": " ".join(str(err).split())[:400]}
            continue
        rate = (N0 + n) / seconds
        out["loops"][mode] = {
            "warmup_seconds": warm,
            "samples_per_s": rate,
            "seconds_per_image_at_100k": (N0 + 100_000) / rate,
        }
    return out
