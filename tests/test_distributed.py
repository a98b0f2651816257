"""The Ray backend: same TSV as a single process, resume, and workers that die mid-run.

The Ray tests share one local Ray instance (2 CPUs, no dashboard) started once for the module; they
are skipped when Ray is not installed (``pip install 'rs-onnx[distributed]'``).
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from rs_onnx import run
from rs_onnx.config import RunConfig
from rs_onnx.distributed import Worker, backend_from_config, model_bundle, ray_backend, unpack_bundle
from rs_onnx.errors import ConfigError
from tests.conftest import start_local_ray, write_linear3
from tests.onnx_models import linear_model

N_EXAMPLES = 30


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """conftest's 3-class linear model on 1x4x4 images, with 30 uint8 images (module-scoped: one Ray cluster)."""
    return write_linear3(tmp_path_factory.mktemp("dist"), "lin.onnx", "d.npz", count=N_EXAMPLES)


def prepared(linear, **kw):
    model, data = linear
    values = {"model": model, "data": data, "sigma": 0.5, "n0": 20, "n": 200, "seed": 3, "batch_size": 800, **kw}
    return run.prepare(RunConfig(**values).validate())


def strip_time(path):
    """TSV lines without the time column."""
    lines = [line.split("\t") for line in Path(path).read_text().splitlines()]
    t = lines[0].index("time")
    return [line[:t] + line[t + 1 :] for line in lines]


@pytest.fixture(scope="module")
def local_tsvs(linear, tmp_path_factory):
    """Single-process reference TSVs for certify and predict."""
    tmp = tmp_path_factory.mktemp("local")
    out = {}
    for mode in ("certify", "predict"):
        out[mode] = tmp / f"{mode}.tsv"
        run.execute(prepared(linear), mode, out[mode])
    return out


# ---------------------------------------------------------------------------------------------- without Ray
def test_worker_in_process_matches_local(linear):
    p = prepared(linear, end=8)
    w = Worker(p.cfg.to_dict(), p.classifier.sha256, p.smoothed.sigma, p.smoothed.entropy, "cpu", 1)
    model = model_bundle(p.cfg.model)
    group = [2, 5, 7]
    got, _ = w.answers(model, "certify", group, p.data.images[group])
    want = p.smoothed.certify_many([p.data.image(i) for i in group], 20, 200, 0.001, group)
    assert [(a.predict, a.radius, a.n_a) for a in got] == [(a.predict, a.radius, a.n_a) for a in want]


def test_bundle_ships_external_data(tmp_path):
    w = np.arange(3 * 400, dtype=np.float32).reshape(3, 400) / 1000
    m = linear_model(w, input_shape=(400,), batch="N")
    (tmp_path / "src").mkdir()
    onnx.save_model(
        m,
        tmp_path / "src" / "big.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="big.bin",
        size_threshold=0,
    )
    bundle = model_bundle(tmp_path / "src" / "big.onnx")
    assert list(bundle) == ["big.onnx", "big.bin"]
    path = unpack_bundle(bundle, "abc", root=str(tmp_path / "cache"))
    assert path == tmp_path / "cache" / "rs-onnx-models" / "abc" / "big.onnx"
    assert (path.parent / "big.bin").read_bytes() == bundle["big.bin"]
    assert unpack_bundle(bundle, "abc", root=str(tmp_path / "cache")) == path  # second time: reused
    with pytest.raises(ConfigError, match="outside"):
        unpack_bundle({"m.onnx": b"", "../evil": b""}, "abc", root=str(tmp_path / "cache"))


def test_options_are_checked():
    assert backend_from_config(RunConfig()) is None
    with pytest.raises(ConfigError, match="workers=0"):
        ray_backend(workers=0)
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        ray_backend(gpus_per_worker=-1)
    with pytest.raises(ConfigError, match="address"):
        ray_backend(address="headnode")
    cfg = RunConfig()
    cfg.backend = "dask"
    with pytest.raises(ConfigError, match="'local' or 'ray'"):
        backend_from_config(cfg)


# ---------------------------------------------------------------------------------------------- joining
def test_a_cluster_that_never_answers_is_refused_within_the_timeout(tmp_path):
    """A port that accepts connections and says nothing (not a Ray GCS): ray.init would wait for minutes;
    the backend gives up after connect_timeout with one ConfigError. In a subprocess, since the abandoned
    ray.init keeps retrying in the background until that process exits."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'rs-onnx[distributed]')")
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))  # every interface: Ray turns 127.0.0.1 into this node's address
        server.listen(16)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        code = (
            "from rs_onnx.distributed import ray_backend\n"
            "from rs_onnx.errors import ConfigError\n"
            "try:\n"
            f"    ray_backend({address!r}, connect_timeout=3).connect()\n"
            "except ConfigError as e:\n"
            "    print('refused:', e)\n"
        )
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False
        )
        seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"refused: Ray address {address}: ray.init did not return within 3 s"), done
    assert seconds < 30 and os.listdir(tmp_path) == []


def test_a_local_ray_starts_before_any_file_and_stops_at_the_end(linear, local_tsvs, tmp_path, monkeypatch, request):
    """No address: run.execute starts a local Ray instance (before creating any file), uses it, and stops it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'rs-onnx[distributed]')")
    init = ray.init
    if ray.is_initialized():  # the shared instance, when tests run in another order: stopped here, started after
        ray.shutdown()
        request.addfinalizer(lambda: start_local_ray(ray))
    files_at_init = []

    def watched_init(*args, **kwargs):
        files_at_init.append(sorted(os.listdir(tmp_path)))
        return init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", watched_init)
    out = tmp_path / "ray.tsv"
    backend = ray_backend(workers=1, init_kwargs={"num_cpus": 2, "log_to_driver": False})
    meta = run.execute(prepared(linear, end=6), "certify", out, backend=backend)
    assert files_at_init == [[]] and not ray.is_initialized()
    assert meta["status"] == "complete" and strip_time(out) == strip_time(local_tsvs["certify"])[:7]


# ---------------------------------------------------------------------------------------------- on Ray
@pytest.mark.parametrize("mode,workers", [("certify", 2), ("predict", 1)])
def test_same_tsv_as_one_process(ray_cluster, linear, local_tsvs, tmp_path, mode, workers):
    out = tmp_path / "ray.tsv"
    seen = []
    meta = run.execute(prepared(linear), mode, out, backend=ray_backend(workers=workers), progress=seen.append)
    assert meta["status"] == "complete" and meta["examples_done"] == N_EXAMPLES
    assert strip_time(out) == strip_time(local_tsvs[mode])
    assert sum(seen) == N_EXAMPLES * (220 if mode == "certify" else 200)


def test_resume_on_ray(ray_cluster, linear, local_tsvs, tmp_path):
    out = tmp_path / "r.tsv"
    run.execute(prepared(linear, end=7), "certify", out)
    out.write_text(out.read_text() + "7\t1\t")  # a row cut by a crash: dropped and recomputed
    meta = run.execute(prepared(linear), "certify", out, resume=True, backend=ray_backend(workers=2))
    assert meta["status"] == "complete"
    assert strip_time(out) == strip_time(local_tsvs["certify"])


@pytest.mark.slow  # Ray actors killed and restarted
@pytest.mark.parametrize("restarts,crashes", [(3, (5, 21)), (0, (5,))], ids=["actor-restarted", "groups-moved"])
def test_dead_worker_loses_and_duplicates_nothing(ray_cluster, linear, local_tsvs, tmp_path, restarts, crashes):
    """Workers exit on the first group holding a crash example: its units are resent to the live workers
    (first answer kept), and Ray restarts the dead worker, or (no restarts allowed) it stays gone."""
    faults = tmp_path / "faults"
    faults.mkdir()
    for i in crashes:
        (faults / f"crash-{i}").touch()
    out = tmp_path / "ray.tsv"
    backend = ray_backend(workers=2, max_restarts=restarts, _fault_dir=str(faults))
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("rs_onnx.distributed")
    logger.addHandler(handler)
    try:
        meta = run.execute(prepared(linear), "certify", out, backend=backend)
    finally:
        logger.removeHandler(handler)
    assert not list(faults.iterdir()), "the injected faults did not fire"
    lost = [m for m in messages if " lost (" in m and "go to the others" in m]
    assert len(lost) == len(crashes), messages  # each crash: the worker's units resent once
    assert meta["status"] == "complete"
    assert strip_time(out) == strip_time(local_tsvs["certify"])


@pytest.mark.slow  # a CNN on Ray workers
def test_same_tsv_for_a_cnn_with_other_thread_counts(ray_cluster, tmp_path):
    """The bundled digits CNN: workers run onnxruntime on 1 thread, the local run on its default."""
    cfg = RunConfig(
        model=run.bundled("digits_cnn.onnx"),
        data=run.bundled("digits_eval.npz"),
        n0=50,
        n=400,
        seed=1,
        end=12,
        batch_size=500,
    ).validate()
    local, ray_out = tmp_path / "local.tsv", tmp_path / "ray.tsv"
    run.execute(run.prepare(cfg), "certify", local)
    run.execute(run.prepare(cfg), "certify", ray_out, backend=ray_backend(workers=2))
    assert strip_time(ray_out) == strip_time(local)


def test_worker_errors_reach_the_driver_as_themselves(ray_cluster, linear, tmp_path):
    from rs_onnx.distributed import WorkerError

    p = prepared(linear, end=4)
    p.classifier.__dict__["sha256"] = "0" * 64  # the workers' copy no longer matches
    with pytest.raises(WorkerError, match="expected the driver's 000000000000"):
        run.execute(p, "certify", tmp_path / "r.tsv", backend=ray_backend(workers=1))
    assert '"status": "failed"' in (tmp_path / "r.tsv.meta.json").read_text()
    shutil.rmtree(Path(tempfile.gettempdir()) / "rs-onnx-models" / ("0" * 64), ignore_errors=True)


# ---------------------------------------------------------------------------------------------- splitting, batches
def _worker(p, **kw):
    return Worker(
        p.cfg.to_dict(), p.classifier.sha256, p.smoothed.sigma, p.smoothed.entropy, "cpu", 1, None, None, **kw
    )


def test_pieces_of_one_example_add_up_to_its_counts(linear):
    """A split example's pieces (whole noise blocks, counted by a worker from their first block) add up to
    the counts of the whole, bit for bit, for every phase."""
    from rs_onnx import noise

    p = prepared(linear, end=3)
    w = _worker(p)
    model = model_bundle(p.cfg.model)
    block = p.smoothed.sampler(p.data.image_shape).block_size
    assert block == 1000
    for phase, n in ((noise.SELECT, 2500), (noise.ESTIMATE, 4000), (noise.PREDICT, 999)):
        whole = p.smoothed.count([p.data.image(2)], [2], phase, n)[0]
        total, start = np.zeros_like(whole), 0
        for size in (2000, 1000, n):  # pieces start at whole blocks; the last takes the rest
            size = min(size, n - start)
            if size <= 0:
                break
            got, _ = w.counts(model, 2, p.data.images[2], phase, start // block, size)
            total += got
            start += size
        assert start == n and total.tolist() == whole.tolist() and int(whole.sum()) == n


def test_piece_size_and_plan():
    from rs_onnx.dispatch import PIECE_SAMPLES, piece_size, plan

    assert piece_size(200, 30, 2, 2, 1000) is None  # many examples, small n: whole groups
    assert piece_size(5000, 1, 2, 2, 1000) == 2000  # one example, 2 workers x 2 tasks: pieces of whole blocks
    assert piece_size(10 * PIECE_SAMPLES, 500, 2, 2, 1000) == PIECE_SAMPLES  # large n: bounded pieces
    items, units = plan([4, 9], 1, "certify", 100, 5000, 2000, 1000)
    assert items == [[4], [9]]
    mine = [(u.phase, u.block, u.n) for u in units if u.item == 0]
    assert mine == [(0, 0, 100), (1, 0, 2000), (1, 2, 2000), (1, 4, 1000)]
    assert sum(u.n for u in units if u.item == 1 and u.phase == 1) == 5000


def test_a_worker_resolves_its_own_batch_on_its_own_memory(linear, monkeypatch):
    """No --batch-size: the worker resolves the batch size on its own hardware (here: less memory than the
    driver had), and a given batch size that does not fit a worker's memory is refused in one line naming
    the worker's host. The driver's configuration is never changed."""
    from rs_onnx import devices
    from rs_onnx.preprocess import Preprocessor

    model, data = linear
    cfg = RunConfig(model=model, data=data, sigma=0.5, n0=20, n=200, seed=3, end=4).validate()
    p = run.prepare(cfg)
    assert p.batch_auto and p.cfg.batch_size == 880  # the driver's: the whole run (4 x 220) fits its memory
    pre = Preprocessor(p.smoothed.spec, p.data.image_shape, p.classifier.input_shape, p.classifier.input_dtype)
    room = run.memory_need(p.cfg, p.classifier, pre, 100)
    monkeypatch.setattr(devices, "available_memory", lambda: room)  # the worker's host: room for ~100
    w = _worker(p, batch_auto=True, total_samples=4 * 220, image_shape=p.data.image_shape)
    info = w.ready(model_bundle(p.cfg.model))
    assert 50 <= info["batch_size"] <= 100 and w.smoothed is not None  # what fits the worker's room, not 880
    assert w.smoothed.batch_size == info["batch_size"] and info["batch_auto"] is True
    assert p.cfg.batch_size == 880 and p.smoothed.batch_size == 880  # values flow down only
    got, _ = w.answers(model_bundle(p.cfg.model), "certify", [0, 1], p.data.images[[0, 1]])
    want = p.smoothed.certify_many([p.data.image(i) for i in (0, 1)], 20, 200, 0.001, [0, 1])
    assert [(a.predict, a.n_a) for a in got] == [(a.predict, a.n_a) for a in want]  # batch never changes answers
    given = _worker(p, batch_auto=False, image_shape=p.data.image_shape)  # as if --batch-size 880 was given
    with pytest.raises(ConfigError, match=r"^Ray worker on .*: batch size 880: the run needs"):
        given.ready(model_bundle(p.cfg.model))


def test_stall_timeout_is_checked_and_reaches_the_backend():
    cfg = RunConfig(backend="ray", stall_timeout=12.5)
    assert backend_from_config(cfg).options["stall_timeout"] == 12.5
    with pytest.raises(ConfigError, match="stall_timeout"):
        RunConfig(stall_timeout=0).validate()
    with pytest.raises(ConfigError, match="stall_timeout"):
        ray_backend(stall_timeout=float("nan"))


@pytest.mark.parametrize("mode", ["certify", "predict"])
def test_one_example_split_across_workers_is_certified_bit_for_bit(ray_cluster, linear, tmp_path, mode):
    """Fewer examples than workers: each example's samples go to both workers in pieces; the counts add up
    and the TSV (every certificate column) is the unsplit local run's."""
    local, out = tmp_path / "local.tsv", tmp_path / "ray.tsv"
    run.execute(prepared(linear, end=1, n=5000, n0=1500), mode, local)
    meta = run.execute(prepared(linear, end=1, n=5000, n0=1500), mode, out, backend=ray_backend(workers=2))
    assert meta["ray"]["split"] is True and meta["status"] == "complete"
    assert strip_time(out) == strip_time(local)


def test_meta_records_what_the_workers_resolved(ray_cluster, linear, tmp_path):
    model, data = linear
    p = run.prepare(RunConfig(model=model, data=data, sigma=0.5, n0=20, n=200, seed=3, end=6).validate())
    meta = run.execute(p, "certify", tmp_path / "r.tsv", backend=ray_backend(workers=1))
    (worker,) = meta["ray"]["workers"]
    assert worker["batch_auto"] is True and worker["batch_size"] >= 1 and worker["device"] == "cpu"
    assert meta["config"]["batch_size"] == p.cfg.batch_size  # the driver's own, as resolved by prepare


def test_stall_timeout_flag_and_yaml_key_are_one_setting(linear, tmp_path):
    from tests.conftest import invoke_cli

    model, data = linear
    flag = invoke_cli(["certify", model, data, "--backend", "ray", "--stall-timeout", "45", "--dump-config"])
    assert flag.exit_code == 0 and "stall_timeout: 45.0" in flag.output
    (tmp_path / "c.yaml").write_text("stall_timeout: 30\nbackend: ray\n")
    yaml = invoke_cli(["certify", model, data, "--config", str(tmp_path / "c.yaml"), "--dump-config"])
    assert yaml.exit_code == 0 and "stall_timeout: 30" in yaml.output


def test_the_driver_never_probes_a_batch_size_for_ray_workers(linear, monkeypatch):
    """A long run (a local run would probe): with backend ray the driver leaves the probe to the workers,
    on their own hardware; its batch size only serves its own checks."""
    from rs_onnx import sampling

    def no_probe(*args, **kwargs):
        raise AssertionError("the driver probed a batch size for Ray workers")

    monkeypatch.setattr(sampling, "probe_batch_size", no_probe)
    model, data = linear
    cfg = RunConfig(model=model, data=data, sigma=0.5, n0=100, n=10_000, seed=3, backend="ray").validate()
    p = run.prepare(cfg)  # 30 examples x 10,100 samples: past PROBE_MIN_SAMPLES
    assert p.batch_auto and p.batch_probe is None and p.cfg.batch_size == run.DEFAULT_BATCH
    local = RunConfig(model=model, data=data, sigma=0.5, n0=100, n=10_000, seed=3).validate()
    with pytest.raises(AssertionError, match="probed"):
        run.prepare(local)  # a local run does probe
