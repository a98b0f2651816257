"""The Ray backend under the faults a real cluster has: one head and two worker nodes on this machine
(loopback only, one CPU each: tests/ray_nodes.py), and an ``rs-onnx`` driver in its own process.

Each fault used to hang the driver or end it with a misleading message; every driver here runs under a
timeout, so a hang fails the test instead of blocking CI. After each test no Ray process of the cluster or
of the driver is left (LocalCluster.stop asserts it; the SIGTERM test checks its own local instance).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rs_onnx import run
from rs_onnx.config import RunConfig
from tests.conftest import write_linear3

pytestmark = pytest.mark.slow  # multi-node Ray clusters: tens of seconds each

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'rs-onnx[distributed]')")

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 240
"""Seconds a driver may take: more than any run here needs under load, less than forever (a hang fails)."""
EXAMPLES, N = 160, 100_000
"""A run of a few tens of seconds on two one-CPU workers, in groups of one example (not split)."""


@contextlib.contextmanager
def stopped(pids: list[int]):
    """Processes frozen with SIGSTOP (a wedged GPU looks the same) for the block, then thawed."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def strip_time(path) -> list[list[str]]:
    lines = [line.split("\t") for line in Path(path).read_text().splitlines()]
    t = lines[0].index("time")
    return [line[:t] + line[t + 1 :] for line in lines]


def data_rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except OSError:
        return 0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(model, data, local reference TSV) for the runs below."""
    folder = tmp_path_factory.mktemp("faults")
    model, data = write_linear3(folder, "lin.onnx", "d.npz", count=EXAMPLES)
    reference = folder / "local.tsv"
    cfg = RunConfig(model=model, data=data, sigma=0.5, n0=100, n=N, seed=1, batch_size=1000).validate()
    run.execute(run.prepare(cfg), "certify", reference)
    return model, data, reference


@pytest.fixture(scope="module")
def cluster():
    from tests.ray_nodes import LocalCluster

    c = LocalCluster(workers=2, cpus=1)
    try:
        c.wait_for_cpus(2)
        yield c
    finally:
        c.stop()


def driver(files, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    model, data, _ = files
    args = [sys.executable, "-m", "rs_onnx.cli", "certify", model, data, "--sigma", "0.5", "--n0", "100"]
    args += ["--n", str(N), "--seed", "1", "--batch-size", "1000", "--backend", "ray", "--out", str(out), *extra]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        **(env or {}),
    }
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); a driver still running after RUN_TIMEOUT is killed and the test fails."""
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the driver hung for {RUN_TIMEOUT} s; stderr tail:\n{err[-3000:]}")
    return proc.returncode, out, err


def wait_rows(proc: subprocess.Popen, out: Path, rows: int = 1) -> None:
    deadline = time.time() + RUN_TIMEOUT
    while data_rows(out) < rows:
        if proc.poll() is not None:
            pytest.fail(f"the driver ended before {rows} rows: {proc.stderr.read()[-3000:] if proc.stderr else ''}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"no {rows} rows within {RUN_TIMEOUT} s")
        time.sleep(0.2)


def wait_busy(cluster, nodes: list[str]) -> None:
    """Until the rs-onnx worker on each of ``nodes`` runs a task (its process title names the method): a fault
    then hits a worker with work, not one still starting."""
    deadline = time.time() + RUN_TIMEOUT
    while not all(_busy(cluster, node) for node in nodes):
        if time.time() > deadline:
            pytest.fail(f"the workers on {nodes} never ran a task")
        time.sleep(0.2)


def _busy(cluster, node: str) -> bool:
    for pid in cluster.worker_pids(node):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(("ray::Worker.answers", "ray::Worker.counts")):
            return True
    return False


def meta(out: Path) -> dict:
    return json.loads(Path(f"{out}.meta.json").read_text())


def error_lines(err: str) -> list[str]:
    """The lines that end a run (log lines start with "rs-onnx: " too)."""
    ends = ("rs-onnx: error:", "rs-onnx: internal error:", "rs-onnx: terminated", "rs-onnx: interrupted")
    return [line for line in err.splitlines() if line.startswith(ends)]


def test_a_worker_node_lost_while_the_cluster_is_full(cluster, files, tmp_path):
    """Node w1 is killed mid-run; Ray cannot restart its worker anywhere (the other node is busy): its work
    goes to the live worker and the TSV is the local run's. Before: the driver waited forever."""
    out = tmp_path / "r.tsv"
    proc = driver(files, out, "--address", cluster.address, "--workers", "2", "--stall-timeout", "30")
    wait_rows(proc, out)
    wait_busy(cluster, ["w1", "w2"])
    cluster.kill_node("w1")
    try:
        code, _, err = finish(proc)
        assert code == 0, err[-3000:]
        assert strip_time(out) == strip_time(files[2])  # nothing lost, nothing twice
        assert meta(out)["status"] == "complete" and meta(out)["ray"]["resent_units"] >= 1, err[-3000:]
        assert "lost" in err
    finally:
        cluster.add_worker("w3")  # the cluster full again for the next tests
        cluster.wait_for_cpus(2)


def test_a_frozen_worker_has_its_work_resent(cluster, files, tmp_path):
    """The worker process of node w2 is stopped (SIGSTOP: a wedged GPU looks the same): after the stall
    timeout its work goes to the other worker. Before: nothing detected it, the run stalled."""
    out = tmp_path / "r.tsv"
    proc = driver(files, out, "--address", cluster.address, "--workers", "2", "--stall-timeout", "6")
    wait_rows(proc, out)
    wait_busy(cluster, ["w2"])
    frozen = cluster.worker_pids("w2")
    assert frozen, "no rs-onnx worker on node w2"
    with stopped(frozen):
        code, _, err = finish(proc)
    assert code == 0, err[-3000:]
    assert "finished nothing" in err and strip_time(out) == strip_time(files[2])
    assert meta(out)["ray"]["resent_units"] >= 1


def test_every_worker_frozen_ends_the_run_in_one_resumable_line(cluster, files, tmp_path):
    """Both workers stopped: nothing progresses for the stall timeout, the run ends with one error line and
    the --resume hint, rows kept; --resume (workers thawed) then finishes the local run's TSV."""
    out = tmp_path / "r.tsv"
    proc = driver(files, out, "--address", cluster.address, "--workers", "2", "--stall-timeout", "6")
    wait_rows(proc, out)
    workers = [node for node in cluster.nodes if node != "head" and cluster.pids(node)]
    wait_busy(cluster, workers)
    frozen = [pid for node in workers for pid in cluster.worker_pids(node)]
    with stopped(frozen):
        code, _, err = finish(proc)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1, err[-3000:]
    assert "no Ray worker finished anything" in lines[0] and "--resume" in lines[0]
    assert meta(out)["status"] == "failed" and 0 < data_rows(out) < EXAMPLES
    resumed = driver(files, out, "--address", cluster.address, "--workers", "2", "--resume")
    code, _, err = finish(resumed)
    assert code == 0, err[-3000:]
    assert strip_time(out) == strip_time(files[2])


def test_sigterm_to_a_driver_that_started_ray_itself(files, tmp_path):
    """No --address: the driver starts a local Ray instance (ray.init installs its own SIGTERM handler).
    SIGTERM ends the run as a local run ends: exit 143, meta 'interrupted', the --resume hint, and the
    local instance stopped. Before: exit 15, meta 'failed', no hint."""
    out = tmp_path / "r.tsv"
    ray_tmp = Path(f"/tmp/rsst{os.getpid()}")  # Ray's socket paths are short: not under tmp_path
    proc = driver(files, out, "--workers", "1", env={"RAY_TMPDIR": str(ray_tmp)})
    try:
        wait_rows(proc, out)
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
        assert code == 143, err[-3000:]
        lines = error_lines(err)
        assert len(lines) == 1 and "terminated" in lines[0] and "--resume" in lines[0], err[-3000:]
        assert meta(out)["status"] == "interrupted"
        deadline = time.time() + 30
        while _processes_under(ray_tmp) and time.time() < deadline:
            time.sleep(0.5)
        assert not _processes_under(ray_tmp), "Ray processes of the driver's local instance are left"
    finally:
        for pid in _processes_under(ray_tmp):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def _processes_under(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder`` (a Ray instance's temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(folder).encode() in cmd and state != "Z":
                found.append(int(entry))
    return found


def test_the_whole_cluster_lost(cluster, files, tmp_path):
    """Every node killed (last: the module's cluster is gone after it): one error line that says the cluster
    was lost (not that an example crashes the worker) with the --resume hint, within a minute (measured:
    17.5 s); Ray's pushed messages stay off stdout and stderr. Before: ~60 lines of Ray errors and 'examples ...: lost ... (do they crash
    the worker?)'."""
    out = tmp_path / "r.tsv"
    proc = driver(files, out, "--address", cluster.address, "--workers", "2", "--stall-timeout", "30")
    wait_rows(proc, out)
    t0 = time.time()
    for node in list(cluster.nodes):
        cluster.kill_node(node)
    code, stdout, err = finish(proc)
    seconds = time.time() - t0
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1, err[-3000:]
    assert "cluster was lost" in lines[0] and "--resume" in lines[0] and "crash" not in lines[0]
    assert seconds < 60 and stdout == ""
    assert [line for line in err.splitlines() if not line.startswith("rs-onnx")] == []  # no Ray noise (measured: 0)
    assert meta(out)["status"] == "failed" and data_rows(out) > 0
