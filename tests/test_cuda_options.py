"""CUDA-only options on a machine without CUDA (issue 29): what reaches onnxruntime, what meta.json records,
how the pinned ring and the device-noise default are chosen. What needs a GPU runs in benchmarks/gpu.py."""

from __future__ import annotations

import ctypes
import gc
import json
import weakref

import numpy as np
import onnxruntime as ort
import pytest

from rs_onnx import OnnxClassifier, cuda, devices, loader
from rs_onnx.config import RunConfig, build_config
from rs_onnx.errors import ConfigError
from rs_onnx.preprocess import Preprocessor, PreprocessSpec
from rs_onnx.sampling import HostClassifier, Sampler, Task
from tests.conftest import invoke_cli


def test_algo_search_is_case_insensitive_and_checked():
    assert devices.cuda_provider_options("heuristic", True) == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "prefer_nhwc": "1",
    }
    assert devices.cuda_provider_options() == {}  # onnxruntime's defaults: nothing set, nothing claimed
    with pytest.raises(ConfigError, match="expected one of EXHAUSTIVE, HEURISTIC, DEFAULT"):
        devices.parse_algo_search("fast")
    cfg, _ = build_config({"cudnn_algo_search": "Exhaustive", "prefer_nhwc": True}, {})
    assert cfg.cudnn_algo_search == "EXHAUSTIVE" and cfg.prefer_nhwc
    with pytest.raises(ConfigError, match="cudnn_algo_search 'quick'"):
        RunConfig(cudnn_algo_search="quick").validate()


def _placement(**kw) -> loader.Placement:
    return loader.Placement("m.onnx", "cuda", "cuda:1", 1, True, ort.SessionOptions(), **kw)


def test_cuda_sessions_get_the_options_and_tensorrt_excludes_random_normal():
    p = _placement(cuda_options={"cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1"})
    (name, opts), cpu = p.providers()
    assert name == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert opts == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1"}
    assert p.providers(cuda_graph=True)[0][1]["enable_cuda_graph"] == "1"
    trt = _placement(tensorrt=True)
    (first, topts), (second, _), _ = trt.providers()
    assert first == "TensorrtExecutionProvider" and topts["trt_op_types_to_exclude"] == "RandomNormalLike"
    assert second == "CUDAExecutionProvider"
    assert trt.providers(cuda_graph=True)[0][0] == "CUDAExecutionProvider"  # no TensorRT in a CUDA graph
    cpu_only = loader.Placement("m.onnx", "cpu", "cpu", 0, False, ort.SessionOptions(), {"prefer_nhwc": "1"}, False)
    assert cpu_only.providers() == ["CPUExecutionProvider"]


def test_tensorrt_is_probed_never_required():
    try:
        ctypes.CDLL(devices.TENSORRT_LIBRARY)
        present = devices.TENSORRT_PROVIDER in ort.get_available_providers()
    except OSError:
        present = False
    assert devices.tensorrt_available() == present


def test_cuda_options_on_a_cpu_run_are_recorded_not_applicable(tmp_path, bundled_digits, caplog):
    model, data = bundled_digits
    out = tmp_path / "r.tsv"
    args = [
        "certify", model, data, "--device", "cpu", "--n0", "10", "--n", "50", "--end", "2", "--seed", "0",
        "--cudnn-algo-search", "heuristic", "--prefer-nhwc", "--tensorrt", "--out", str(out),
    ]  # fmt: skip
    res = invoke_cli(args)
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "r.tsv.meta.json").read_text())
    sig = meta["model"]["signature"]
    assert meta["config"]["cudnn_algo_search"] == "HEURISTIC" and meta["config"]["prefer_nhwc"]
    assert sig["cuda_provider_options"] == {
        "cudnn_conv_algo_search": "not applicable (device cpu)",
        "prefer_nhwc": "not applicable (device cpu)",
    }
    assert sig["tensorrt"] is False and sig["host_ring"] == "pageable" and sig["noise"] == "host"
    assert "do not apply; recorded as not applicable" in caplog.text


def test_a_bad_algo_search_flag_is_one_line(bundled_digits):
    from rs_onnx.cli import main

    with pytest.raises(SystemExit) as e:
        main(["certify", *bundled_digits, "--cudnn-algo-search", "fastest", "--device", "cpu"])
    assert e.value.code != 0


def test_device_noise_default_only_for_large_gaussian_inputs_on_cuda():
    big = devices.DEVICE_NOISE_MIN_VALUES
    assert devices.device_noise_default(True, 3 * 224 * 224, True, False, None)
    assert devices.device_noise_default(True, big, True, False, "gaussian")
    assert not devices.device_noise_default(True, 3 * 32 * 32, True, False, None)  # CIFAR: host noise
    assert not devices.device_noise_default(False, big, True, False, None)  # CPU: minstd LCG, never
    assert not devices.device_noise_default(True, big, False, False, None)  # fixed batch
    assert not devices.device_noise_default(True, big, True, True, None)  # CUDA graph would replay one noise
    assert not devices.device_noise_default(True, big, True, False, "laplace")


def test_device_noise_auto_on_cpu_is_host_noise_and_refusals_stay(bundled_digits):
    clf = OnnxClassifier(bundled_digits[0], device="cpu", device_noise="auto")
    assert clf.device_noise is False
    for yes in (True, 1, np.True_):
        with pytest.raises(ConfigError, match="minstd"):
            OnnxClassifier(bundled_digits[0], device="cpu", device_noise=yes)
    with pytest.raises(ConfigError, match="replay the same noise"):
        OnnxClassifier(bundled_digits[0], device="cpu", device_noise=True, cuda_graph=True, max_batch=4)
    with pytest.raises(ConfigError, match="expected True, False or 'auto'"):
        OnnxClassifier(bundled_digits[0], device="cpu", device_noise="yes")


def test_run_config_leaves_device_noise_to_auto_only_when_nothing_rules_it_out():
    from rs_onnx.run import _device_noise

    assert _device_noise(RunConfig()) == "auto"
    assert _device_noise(RunConfig(device_noise=False)) is False
    assert _device_noise(RunConfig(noise="uniform")) is False
    assert _device_noise(RunConfig(cuda_graph=True)) is False
    assert _device_noise(RunConfig(audit=True)) is False


def test_pinned_memory_falls_back_to_pageable_without_cuda():
    arr, how = cuda.pinned_empty((3, 5), np.float32)
    assert arr.shape == (3, 5) and arr.dtype == np.float32
    if "CUDAExecutionProvider" not in devices.working_providers():
        assert how == "pageable"


def test_a_view_of_foreign_memory_keeps_its_owner_alive():
    class Owner:
        def __init__(self):
            self.block = np.arange(24, dtype=np.float32)

    owner = Owner()
    gone = weakref.ref(owner)
    view = cuda.as_array(owner.block.ctypes.data, owner.block.nbytes, owner, (2, 3), np.float64)
    del owner
    gc.collect()
    assert gone() is not None  # the array holds it
    assert view.shape == (2, 3) and view.view(np.float32).ravel()[0] == 0.0
    del view
    gc.collect()
    assert gone() is None


class _RingOwner(HostClassifier):
    """A host classifier that hands the sampler its ring (as OnnxClassifier does with pinned memory on CUDA)."""

    input_shape, input_dtype, num_classes = (4,), np.dtype(np.float32), 2

    def __init__(self):
        self.rings = []

    def host_buffer(self, shape, dtype):
        ring = np.zeros(shape, dtype)
        self.rings.append(ring)
        return ring

    def predict(self, x):
        assert any(np.shares_memory(x, r) for r in self.rings)  # batches are read from the ring given
        return (x[:, 0] > 0.5).astype(np.int64)


class _Plain(HostClassifier):
    input_shape, input_dtype, num_classes = (4,), np.dtype(np.float32), 2

    def predict(self, x):
        return (x[:, 0] > 0.5).astype(np.int64)


def test_the_sampler_draws_into_the_classifiers_host_buffer():
    pre = Preprocessor(PreprocessSpec(), (4,), (4,), np.float32)
    tasks = [Task(pre.clean(np.full(4, 0.5, np.float32)), 0, 1, 100)]
    clf = _RingOwner()
    with_ring = Sampler(clf, pre, 0.5, entropy=3, batch_size=16, noise_threads=1).count(tasks)
    assert len(clf.rings) == 1 and with_ring.sum() == 100
    plain = Sampler(_Plain(), pre, 0.5, entropy=3, batch_size=16, noise_threads=1).count(tasks)
    assert with_ring.tolist() == plain.tolist()


def test_resume_reads_an_older_device_noise_false_as_unset_and_checks_the_noise_source(tmp_path, bundled_digits):
    from rs_onnx import run

    model, data = bundled_digits
    cfg = RunConfig(model=model, data=data, sigma=0.25, n0=10, n=50, end=4, seed=0, device="cpu").validate()
    out = tmp_path / "r.tsv"
    run.execute(run.prepare(RunConfig(**{**cfg.to_dict(), "end": 2}).validate()), "certify", out)
    meta_file = tmp_path / "r.tsv.meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["config"]["device_noise"] is None
    meta["config"]["device_noise"] = False  # what rs-onnx wrote before device noise had an automatic default
    meta_file.write_text(json.dumps(meta))
    resumed = run.execute(run.prepare(cfg), "certify", out, resume=True)
    assert resumed["status"] == "complete" and resumed["examples_done"] == 4
    meta = json.loads(meta_file.read_text())
    meta["model"]["signature"]["noise"] = "device: onnxruntime RandomNormalLike"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="noise source"):
        run.execute(run.prepare(cfg), "certify", out, resume=True)


def test_check_sessions_plan_with_heuristic_search_and_never_build_tensorrt(bundled_digits, monkeypatch):
    """The checks run several shapes once each on a scratch session: cuDNN's HEURISTIC search there (a new shape
    costs milliseconds, not a search); the probe and the ceiling keep the run's own search."""
    import dataclasses

    loaded = OnnxClassifier(bundled_digits[0], device="cpu")._loaded
    placement = dataclasses.replace(
        loaded.placement, device="cuda:0", cuda_options={"cudnn_conv_algo_search": "EXHAUSTIVE"}, tensorrt=True
    )
    on_cuda = dataclasses.replace(loaded, placement=placement)
    seen = []
    monkeypatch.setattr(
        loader.Placement, "session", lambda self, source, cuda_graph=False: seen.append(self.providers())
    )
    on_cuda.fresh_session(quick_plans=True)
    on_cuda.fresh_session()
    on_cuda.fresh_session(tensorrt=True)
    (check, _), (probe, _), (ceiling, _, _) = seen
    assert check == ("CUDAExecutionProvider", {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC"})
    assert probe[1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert ceiling[0] == "TensorrtExecutionProvider"
