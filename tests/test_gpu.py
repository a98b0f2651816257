"""The CUDA path, checked on a GPU (``pytest -m gpu``; run by ``benchmarks/gpu_check.sh``).

Each test runs on the device that :func:`device` picks: CUDA where a session really runs on it; else, with
``RS_ONNX_GPU_DRY_RUN=1`` (the check's ``--dry-run``), the CPU, so that the checks themselves cannot rot on
machines without a GPU (CUDA-only features then skip); else the test skips with the reason.

Every test also records what it measured in ``RS_ONNX_GPU_FACTS`` (a JSON-lines file, when set), which the
check copies into its report.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import chi2, norm

from rs_onnx import OnnxClassifier, SmoothedClassifier
from rs_onnx.cli import cli
from rs_onnx.devices import working_providers
from rs_onnx.run import bundled
from tests.onnx_models import linear_model, save

pytestmark = pytest.mark.gpu

MODEL, DATA = bundled("digits_cnn.onnx"), bundled("digits_eval.npz")
RUN = [
    "--sigma",
    "0.25",
    "--seed",
    "0",
    "--n0",
    "64",
    "--n",
    "2000",
    "--alpha",
    "0.001",
    "--skip",
    "50",
    "--batch-size",
    "500",
]


def _cuda() -> bool:
    return "CUDAExecutionProvider" in working_providers()


@pytest.fixture(scope="module")
def device() -> str:
    """'cuda' where CUDA works, 'cpu' in a dry run, else skip."""
    if _cuda():
        return "cuda"
    if os.environ.get("RS_ONNX_GPU_DRY_RUN") == "1":
        return "cpu"
    pytest.skip("the CUDA execution provider does not work here (GPU checks: benchmarks/gpu_check.sh)")


def cuda_only(device: str) -> None:
    if device != "cuda":
        pytest.skip("CUDA-only feature (dry run on CPU)")


def record(test: str, **facts) -> None:
    """Append one line of measured facts for the check's report."""
    path = os.environ.get("RS_ONNX_GPU_FACTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": test, **facts}, default=str) + "\n")


def certify_cli(tmp_path: Path, name: str, *extra: str) -> tuple[list[dict], dict]:
    """Rows (without the time column) and meta.json of one seeded CLI run of the bundled digits model."""
    out = tmp_path / f"{name}.tsv"
    res = CliRunner().invoke(
        cli, ["-q", "certify", MODEL, DATA, *RUN, *extra, "--out", str(out)], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:
        row.pop("time")
    meta = json.loads(Path(f"{out}.meta.json").read_text(encoding="utf-8"))
    return rows, meta


def test_provider_is_the_device(device):
    clf = OnnxClassifier(MODEL, device=device)
    want = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    assert clf.providers[0] == want
    record("provider", device=clf.device, providers=clf.providers, name=clf.device_name)


def test_cpu_and_device_certify_alike(device, tmp_path):
    """Same seed, same data: predictions equal; counts equal except where float differences move a sample."""
    cpu, _ = certify_cli(tmp_path, "cpu", "--device", "cpu")
    dev, meta = certify_cli(tmp_path, "dev", "--device", device)
    assert meta["providers"][0] == ("CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider")
    assert [r["predict"] for r in dev] == [r["predict"] for r in cpu]
    same = float(np.mean([a == b for a, b in zip(cpu, dev)]))
    moved = max(abs(int(a["nA"]) - int(b["nA"])) for a, b in zip(cpu, dev))
    record("cpu_vs_device", rows=len(cpu), identical_rows=same, max_nA_difference=moved)
    assert moved <= 5, "more than 5 of 2000 samples changed class between CPU and the device"


def _counts(clf, seed=0, n=3000, batch=700, examples=6):
    data = np.load(DATA)
    xs = [data["images"][i].astype(np.float32)[None] / 255 for i in range(0, 600, 600 // examples)]
    g = SmoothedClassifier(clf, sigma=0.25, seed=seed, batch_size=batch, noise_threads=2)
    return np.array([c.counts for c in g.certify_many(xs, 64, n, 0.001)])


class _Padding:
    """A classifier seen with another ``prefers_fixed_batch`` (the sampler pads the last batch or not)."""

    def __init__(self, clf, fixed: bool):
        self._clf, self.prefers_fixed_batch = clf, fixed

    def __getattr__(self, name):
        return getattr(self._clf, name)


def test_io_binding_fixed_batch_and_cuda_graph_give_identical_counts(device):
    base = OnnxClassifier(MODEL, device=device, io_binding=False)
    ref = _counts(base)
    variants = {
        "io_binding": OnnxClassifier(MODEL, device=device, io_binding=True),
        "fixed_batch": _Padding(base, True),
        "unfixed_batch": _Padding(base, False),
    }
    if device == "cuda":
        variants["cuda_graph"] = OnnxClassifier(MODEL, device=device, cuda_graph=True, max_batch=700)
    same = {name: bool((_counts(clf) == ref).all()) for name, clf in variants.items()}
    record("variants_identical", **same)
    assert all(same.values()), same


def _bucket_model(tmp_path, sigma, centers):
    """Class k = the center nearest to x[0] (scores 2 c_k x0 - c_k^2), on 4 flat inputs."""
    w = np.zeros((len(centers), 4), np.float32)
    w[:, 0] = 2 * centers
    return save(linear_model(w, -(centers**2).astype(np.float32), input_shape=(4,)), tmp_path / "buckets.onnx")


def _check_gaussian(classes: np.ndarray, centers: np.ndarray, sigma: float) -> dict:
    """Chi-square of the bucket counts against N(0, sigma^2), and the mean and std they imply."""
    edges = np.concatenate([[-np.inf], (centers[1:] + centers[:-1]) / 2, [np.inf]])
    expected = np.diff(norm.cdf(edges / sigma)) * len(classes)
    counts = np.bincount(classes, minlength=len(centers))
    keep = expected > 20
    stat = float((((counts - expected) ** 2 / expected)[keep]).sum())
    p = float(chi2.sf(stat, keep.sum() - 1))
    mean = float((counts * centers).sum() / len(classes))
    std = float(np.sqrt((counts * (centers - mean) ** 2).sum() / len(classes)))
    return {"chi2_p": p, "mean": mean, "std": std}


def test_device_noise_is_gaussian_and_fresh_per_phase(device, tmp_path):
    """The on-device noise, read through a model that buckets x[0]: N(0, sigma^2) (chi-square at 1e-9), and
    the selection and estimation draws are different draws. On CPU (dry run) NumPy noise takes its place.

    The chi-square level is 1e-9, not 1e-4: the device stream (Philox) changes with the onnxruntime version and
    the device, so 1e-4 would fail one correct stream in 10,000. At 1e-9 (29 buckets kept, 200,000 draws) it still
    catches a sigma 2% off with probability 0.99993 (noncentral chi-square), and the std check catches 4%."""
    sigma, draws = 0.5, 200_000
    centers = sigma * np.arange(-4, 4.01, 0.25)
    clf = OnnxClassifier(_bucket_model(tmp_path, sigma, centers), device=device, device_noise=device == "cuda")
    clean = np.zeros((1, 4), np.float32)
    if device == "cuda":
        index, gain = np.zeros(draws, np.int64), np.full(4, sigma, np.float32)
        first, second = clf.predict_noisy(clean, index, gain, 7), clf.predict_noisy(clean, index, gain, 7)
    else:
        rng = np.random.default_rng(7)
        first, second = (clf.predict(clean + sigma * rng.standard_normal((draws, 4), np.float32)) for _ in "12")
    facts = _check_gaussian(first, centers, sigma)
    differ = float(np.mean(first != second))
    record("device_noise", draws=draws, sigma=sigma, share_of_draws_that_differ=differ, **facts)
    assert facts["chi2_p"] > 1e-9
    assert abs(facts["mean"]) < 5 * sigma / np.sqrt(draws) + 0.01 and abs(facts["std"] - sigma) < 0.02
    assert differ > 0.5, "the second call replayed the first call's noise"


def test_device_noise_certify_end_to_end(device, tmp_path):
    cuda_only(device)
    rows, meta = certify_cli(tmp_path, "dn", "--device", device, "--device-noise")
    host, _ = certify_cli(tmp_path, "host", "--device", device)
    assert meta["config"]["device_noise"] is True
    agree = float(np.mean([a["predict"] == b["predict"] for a, b in zip(rows, host)]))
    record("device_noise_certify", prediction_agreement_with_host_noise=agree)
    assert agree >= 0.9


def test_fp16_is_recorded_as_fp16(device, tmp_path):
    cuda_only(device)  # onnxruntime's CPU provider lacks fp16 kernels for most operators
    rows, meta = certify_cli(tmp_path, "fp16", "--device", device, "--fp16")
    fp32, _ = certify_cli(tmp_path, "fp32", "--device", device)
    signature = meta["model"]["signature"]
    assert meta["config"]["fp16"] is True and "fp16" in json.dumps(signature)
    agree = float(np.mean([a["predict"] == b["predict"] for a, b in zip(rows, fp32)]))
    record("fp16", signature_precision=signature.get("precision"), prediction_agreement_with_fp32=agree)
    assert agree >= 0.9


class _MemoryLimited(OnnxClassifier):
    """On CUDA: a session whose arena may use at most ``LIMIT`` bytes, so that big batches really run out."""

    LIMIT = 256 << 20

    def _setup_device(self, device, sess_options):
        super()._setup_device(device, sess_options)
        if self._want_cuda:
            self._providers_req = [
                (self._providers_req[0][0], {**self._providers_req[0][1], "gpu_mem_limit": str(self.LIMIT)}),
                "CPUExecutionProvider",
            ]


class _FailsAbove:
    """A classifier that raises onnxruntime's out-of-memory message for more than ``rows`` inputs (CPU dry run)."""

    def __init__(self, clf, rows: int):
        self._clf, self._rows = clf, rows

    def predict(self, x):
        if len(x) > self._rows:
            raise RuntimeError(f"Failed to allocate memory for requested buffer of size {len(x) * 3136}")
        return self._clf.predict(x)

    def __getattr__(self, name):
        return getattr(self._clf, name)


def test_out_of_memory_halves_and_gives_the_same_counts(device, caplog):
    batch = 16_000
    ref = _counts(OnnxClassifier(MODEL, device=device), n=batch, batch=batch, examples=2)
    limited = (
        _MemoryLimited(MODEL, device=device)
        if device == "cuda"
        else _FailsAbove(OnnxClassifier(MODEL, device=device), 5_000)
    )
    with caplog.at_level("WARNING", logger="rs_onnx"):
        got = _counts(limited, n=batch, batch=batch, examples=2)
    halvings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    same = float((got == ref).all(axis=1).mean())
    record("out_of_memory", batch=batch, halvings=halvings[:4], identical_examples=same)
    assert halvings, "no out-of-memory at a batch of 16,000 digits"
    assert "going on with 8000" in halvings[0]
    assert same == 1.0 or device == "cuda" and np.abs(got - ref).max() <= 3


def test_pinned_ring_and_one_shape_give_the_same_counts(device, tmp_path, monkeypatch):
    """Issue 29: on CUDA the ring is pinned and the run's session keeps one shape; counts are those of the
    pageable ring (same noise), and meta.json says how the ring was allocated."""
    cuda_only(device)
    pinned, meta = certify_cli(tmp_path, "pinned", "--device", device, "--no-device-noise")
    from rs_onnx import cuda

    monkeypatch.setattr(cuda, "pinned_empty", lambda shape, dtype: (np.empty(shape, dtype), "pageable"))
    pageable, meta_p = certify_cli(tmp_path, "pageable", "--device", device, "--no-device-noise")
    ring = meta["model"]["signature"]["host_ring"]
    record("pinned_ring", host_ring=ring, identical_rows=pinned == pageable)
    assert ring.startswith("pinned") and meta_p["model"]["signature"]["host_ring"] == "pageable"
    assert pinned == pageable


def test_algo_search_and_nhwc_reach_the_provider(device, tmp_path):
    cuda_only(device)
    rows, meta = certify_cli(tmp_path, "heur", "--device", device, "--cudnn-algo-search", "heuristic", "--prefer-nhwc")
    host, _ = certify_cli(tmp_path, "default", "--device", device)
    options = meta["model"]["signature"]["cuda_provider_options"]
    agree = float(np.mean([a["predict"] == b["predict"] for a, b in zip(rows, host)]))
    record("algo_search", options=options, prediction_agreement_with_default=agree)
    assert options == {"cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1"} and agree >= 0.95
