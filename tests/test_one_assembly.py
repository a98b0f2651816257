"""One assembly: a Ray worker builds the same classifier and smoothed classifier as a local run.

The worker's code runs in this process (no Ray): for fp16, extra inputs and a denoiser, its model
signature and its rows must equal a local run's (apart from the time column).
"""

from __future__ import annotations

import numpy as np
import pytest

from rs_onnx import run
from rs_onnx.config import RunConfig
from rs_onnx.distributed import Worker, model_bundle
from rs_onnx.results import CERTIFY_COLUMNS, PREDICT_COLUMNS, answer_row, format_value
from tests import onnx_models as om
from tests.test_compose import denoiser

N = 6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("assembly")
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 16)).astype(np.float32)
    om.save(om.linear_model(w, input_shape=(1, 4, 4), batch="N"), tmp / "lin.onnx")
    om.save(om.two_input_model(w), tmp / "two.onnx")
    om.save(denoiser((1, 4, 4), gain=0.8), tmp / "den.onnx")
    images = rng.integers(0, 256, size=(N, 4, 4), dtype=np.uint8)
    labels = (images.reshape(N, -1) / 255 @ w.T).argmax(1)
    np.savez(tmp / "d.npz", images=images, labels=labels)
    np.savez(tmp / "flat.npz", images=images.reshape(N, 16), labels=labels)
    return tmp


CASES = {
    "fp16": {"model": "lin.onnx", "data": "d.npz", "fp16": True},
    "extra_inputs": {
        "model": "two.onnx",
        "data": "flat.npz",
        "input_name": "x",
        "extra_inputs": {"offset": [0.4, -0.3, 0.1]},
    },
    "denoiser": {"model": "lin.onnx", "data": "d.npz", "denoiser": "den.onnx", "mean": [0.5], "std": [0.5]},
}


def _config(files, case, **kw):
    values = dict(CASES[case])
    for key in ("model", "data", "denoiser"):
        if key in values:
            values[key] = str(files / values[key])
    return RunConfig(**{"sigma": 0.4, "n0": 20, "n": 300, "seed": 7, "batch_size": 64, **values, **kw}).validate()


def _local_rows(p, mode, tmp_path):
    out = tmp_path / f"{mode}.tsv"
    run.execute(p, mode, out)
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    return [dict(zip(lines[0], line)) for line in lines[1:]]


@pytest.mark.parametrize("mode", ["certify", "predict"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("shipped", [False, True], ids=["same-path", "shipped"])
def test_worker_assembles_like_a_local_run(files, tmp_path, case, mode, shipped):
    p = run.prepare(_config(files, case))
    want = _local_rows(p, mode, tmp_path)
    w = Worker(p.cfg.to_dict(), p.classifier.sha256, p.smoothed.sigma, p.smoothed.entropy, "cpu", 1)
    model = None
    if shipped:
        model = [model_bundle(p.cfg.model)] + ([model_bundle(p.cfg.denoiser)] if p.cfg.denoiser else [])
    w.ready(model)
    assert w.classifier.signature() == p.classifier.signature()
    assert w.smoothed.spec == p.smoothed.spec and w.smoothed.sigma == p.smoothed.sigma
    group = list(range(N))
    answers, seconds = w.answers(model, mode, group, p.data.images[group])
    columns = CERTIFY_COLUMNS if mode == "certify" else PREDICT_COLUMNS
    got = [
        {c: format_value(v) for c, v in answer_row(mode, i, int(p.data.labels[i]), a, seconds).items() if c in columns}
        for i, a in zip(group, answers)
    ]
    for g, r in zip(got, want):
        g.pop("time"), r.pop("time")
    assert got == [{c: r[c] for c in g} for g, r in zip(got, want)]
    assert len(got) == N


def test_fp16_really_runs_on_the_worker(files):
    p = run.prepare(_config(files, "fp16"))
    w = Worker(p.cfg.to_dict(), p.classifier.sha256, p.smoothed.sigma, p.smoothed.entropy, "cpu", 1)
    w.ready(None)
    assert w.classifier.float_type == "fp16" and w.classifier.signature()["precision"] == "fp16"


def test_denoiser_with_extra_inputs_is_refused(files):
    from rs_onnx.errors import ConfigError

    cfg = _config(files, "extra_inputs", denoiser=str(files / "den.onnx"))
    with pytest.raises(ConfigError, match="extra_inputs"):
        run.open_classifier(cfg)
