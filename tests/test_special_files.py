"""Outputs that are not regular files (devices, FIFOs, sockets, folders, this process's stdout) are refused
before any file is created and without opening them; SIGTERM ends a running certify within a second; a folder
removed under a running --out is reported as such."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Tally, default_sigint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
QUICK = ["certify", "--n0", "10", "--n", "100", "--end", "3", "-q"]


SPECIAL = "--out a FIFO, device, socket, folder or this process's stdout"


def rs_onnx(args, tally: Tally | None = None, **kw) -> subprocess.CompletedProcess:
    """The CLI in a child process; a child still running after 120 s is killed and counted as a hang."""
    try:
        res = subprocess.run(
            [sys.executable, "-m", "rs_onnx.cli", *args], env=ENV, capture_output=True, text=True, timeout=120, **kw
        )
    except subprocess.TimeoutExpired:
        if tally is not None:
            tally.hangs += 1
        raise
    if tally is not None:
        tally.faults += 1
    return res


def one_error(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rs-onnx: error: "), err
    for w in words:
        assert w in lines[0], err


def listing(folder: Path) -> set[str]:
    return set(os.listdir(folder))


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a writer's open would succeed now: it must not happen
    try:
        with Tally(SPECIAL) as t:
            res = rs_onnx([*QUICK, "--out", str(fifo)], t, cwd=tmp_path)
            t.harmed += int(listing(tmp_path) != {"pipe.tsv"})
        assert res.returncode == 1
        one_error(res.stderr, "FIFO", "--out -")
        assert os.read(reader, 100) == b""  # nothing was written into it
    finally:
        os.close(reader)
    assert listing(tmp_path) == {"pipe.tsv"}  # no meta file, no lock


@pytest.mark.parametrize("device", ["/dev/full", "/dev/null"])
def test_devices_are_refused_and_nothing_is_created_beside_them(tmp_path, device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    before = listing(Path("/dev"))
    with Tally(SPECIAL) as t:
        res = rs_onnx([*QUICK, "--out", device], t, cwd=tmp_path)
        t.harmed += len(listing(Path("/dev")) - before)
    assert res.returncode == 1
    one_error(res.stderr, "character device", "--out -")
    assert listing(Path("/dev")) - before == set() and listing(tmp_path) == set()


def test_a_folder_and_a_socket_are_refused(tmp_path):
    with Tally(SPECIAL) as t:
        res = rs_onnx([*QUICK, "--out", str(tmp_path)], t, cwd=tmp_path)
        assert res.returncode == 1
        one_error(res.stderr, "is a folder")
        sock_path = tmp_path / "s.tsv"
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(sock_path))
            res = rs_onnx([*QUICK, "--out", str(sock_path)], t, cwd=tmp_path)
        finally:
            sock.close()
        t.harmed += int(listing(tmp_path) != {"s.tsv"})
    assert res.returncode == 1
    one_error(res.stderr, "socket", "--out -")
    assert listing(tmp_path) == {"s.tsv"}


def test_dev_stdout_into_a_file_is_refused(tmp_path):
    if not os.path.exists("/dev/stdout"):
        pytest.skip("no /dev/stdout here")
    captured = tmp_path / "captured.txt"
    with open(captured, "w") as stdout, Tally(SPECIAL) as t:
        t.faults += 1
        proc = subprocess.run(
            [sys.executable, "-m", "rs_onnx.cli", *QUICK, "--out", "/dev/stdout"],
            env=ENV,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    assert proc.returncode == 1
    one_error(proc.stderr, "stdout", "--out -")
    assert captured.read_text() == "" and listing(tmp_path) == {"captured.txt"}


def test_report_compose_and_plot_refuse_special_outputs(tmp_path, capsys):
    from rs_onnx.cli import _main

    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    tsv = tmp_path / "r.tsv"
    assert _main([*QUICK, "--out", str(tsv)], False) == 0
    capsys.readouterr()
    for args in (["report", str(tsv), "-o", str(fifo)], ["analyze", str(tsv), "--plot", str(fifo)]):
        assert _main(args, False) == 1
        one_error(capsys.readouterr().err, "FIFO")
    assert _main(["compose", "m.onnx", "--denoiser", "d.onnx", "-o", str(fifo)], False) == 1
    one_error(capsys.readouterr().err, "FIFO")


def _running(out: Path, extra=()) -> subprocess.Popen:
    args = [sys.executable, "-m", "rs_onnx.cli", "certify", "--n0", "20", "--n", "3000", "--end", "200"]
    args += ["--batch-size", "500", "--out", str(out), *extra]
    return subprocess.Popen(
        args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )


def _wait_rows(out: Path, proc: subprocess.Popen, rows: int = 2) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") > rows:
            return
        time.sleep(0.02)
    raise AssertionError(f"no rows appeared: {proc.communicate(timeout=30)}")


@pytest.mark.slow
def test_sigterm_ends_a_running_certify_within_a_second(tmp_path):
    out = tmp_path / "r.tsv"
    with Tally("SIGTERM to a running certify (exit within 1 s)") as t:
        proc = _running(out)
        _wait_rows(out, proc)
        kept = out.read_bytes()[: out.read_bytes().rfind(b"\n") + 1]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        t.faults += 1
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            t.hangs += 1
            proc.kill()
            raise
        took = time.monotonic() - t0
        t.lost += int(not out.read_bytes().startswith(kept))
    assert proc.returncode == 143, err
    assert took < 1.0, f"SIGTERM took {took:.2f} s to end the run"
    assert "--resume" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_folder_removed_under_a_running_out_is_reported(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    out = folder / "r.tsv"
    with Tally("--out's folder removed during the run") as t:
        proc = _running(out)
        _wait_rows(out, proc)
        shutil.rmtree(folder)
        t.faults += 1
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            t.hangs += 1
            proc.kill()
            raise
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.startswith("rs-onnx: error")]
    assert len(lines) == 1 and "removed with its folder during the run" in lines[0], err
    assert "not found" not in err and "Traceback" not in err
