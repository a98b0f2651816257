"""rs_onnx.run: the batch size chosen when none is given."""

from types import SimpleNamespace

import numpy as np

from rs_onnx.run import DEFAULT_BATCH, PROBE_MIN_SAMPLES, resolve_batch, resolve_batch_size


def _clf(shape, dtype=np.float32):
    return SimpleNamespace(input_shape=shape, input_dtype=np.dtype(dtype), device="cpu")


def test_short_runs_use_the_default_capped_by_input_bytes_and_by_the_run():
    assert resolve_batch_size(_clf((1, 28, 28)), 100_100) == DEFAULT_BATCH
    assert resolve_batch_size(_clf((3, 32, 32)), 150) == 150
    # ImageNet-size float32 input (602 KB): 111 images are 64 MiB, not 1000 images (600 MB + activations)
    assert resolve_batch_size(_clf((3, 224, 224)), 100_100) == (64 << 20) // (3 * 224 * 224 * 4) == 111
    assert resolve_batch_size(_clf((3, 224, 224), np.uint8), 100_100) == 445
    assert resolve_batch_size(_clf((3, 4096, 4096)), 100_100) == 1


def test_long_runs_probe(monkeypatch):
    import rs_onnx.sampling as sampling

    probe = {"batch_size": 48, "seconds_per_sample": {"48": 1e-5}, "stopped": "test", "probe_seconds": 0.1}
    monkeypatch.setattr(sampling, "probe_batch_size", lambda clf, fits=None: probe)
    assert resolve_batch_size(_clf((1, 28, 28)), PROBE_MIN_SAMPLES) == 48
    assert resolve_batch(_clf((1, 28, 28)), PROBE_MIN_SAMPLES) == (48, probe)  # returned, for meta.json
    assert resolve_batch(_clf((1, 28, 28)), PROBE_MIN_SAMPLES - 1) == (DEFAULT_BATCH, None)
