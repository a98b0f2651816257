"""A Ray cluster of several nodes on this machine (loopback only), for the fault tests of the Ray backend.

Each node is started by its own ``ray start`` in a new session, so every process of a node (GCS, raylet,
agents, the workers it spawns) shares that session's process group: a node is "lost" by killing exactly
those processes (SIGKILL) or "frozen" by stopping them (SIGSTOP). :meth:`LocalCluster.stop` kills every
process of every node it started, by process id, so no Ray process outlives a test. ``ray stop`` is never
used: it would stop the Ray processes of everybody on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, process group)} of the live (not zombie) processes, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def _group(pgid: int) -> list[int]:
    """Process ids in process group ``pgid`` and their descendants (Ray workers a raylet spawned)."""
    table = _processes()
    found = {pid for pid, (_, group) in table.items() if group == pgid}
    grew = True
    while grew:
        more = {pid for pid, (parent, _) in table.items() if parent in found and pid not in found}
        found |= more
        grew = bool(more)
    return sorted(found)


class LocalCluster:
    """A head node (no CPUs: it runs no actors) and worker nodes with ``cpus`` CPUs each, on 127.0.0.1.

    ``address`` is the head's GCS address (``host:port``) for ``--address``; ``nodes`` maps a node name
    ("head", "w1", "w2", ...) to the process group of its processes.
    """

    def __init__(self, workers: int = 2, cpus: int = 1, head_cpus: int = 0) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rsray", dir="/tmp"))  # short: Ray's socket paths are limited
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, int] = {}
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
            "RAY_AUTH_MODE": "disabled",  # loopback only; every node and driver of the test uses this env
        }
        self.env.pop("RAY_ADDRESS", None)
        # Ray workers import rs_onnx from this checkout, as the driver does
        repo = str(Path(__file__).resolve().parents[1])
        self.env["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])])
        try:
            self._start(
                "head",
                [
                    "--head",
                    f"--port={self.port}",
                    "--node-ip-address=127.0.0.1",
                    f"--num-cpus={head_cpus}",
                    "--num-gpus=0",
                    "--include-dashboard=false",
                    "--disable-usage-stats",
                    f"--temp-dir={self.root}",
                    f"--ray-client-server-port={_free_port()}",
                    f"--dashboard-agent-listen-port={_free_port()}",
                ],
            )
            for i in range(1, workers + 1):
                self.add_worker(f"w{i}", cpus)
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, args: list[str]) -> None:
        proc = subprocess.Popen(
            [*RAY, "start", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.nodes[name] = proc.pid  # its session's process group
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{out[-3000:]}")

    def add_worker(self, name: str, cpus: int = 1) -> None:
        """A worker node with ``cpus`` CPUs and the custom resource ``name`` (1)."""
        self._start(
            name,
            [
                f"--address={self.address}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={cpus}",
                "--num-gpus=0",
                f"--resources={json.dumps({name: 1})}",
                "--disable-usage-stats",
            ],
        )

    def wait_for_cpus(self, cpus: float, timeout: float = 120) -> None:
        """Until the cluster reports ``cpus`` CPUs (nodes registered), in a subprocess (no Ray in this one)."""
        code = (
            "import ray, time, sys\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
            f"t = time.time() + {timeout}\n"
            f"while ray.cluster_resources().get('CPU', 0) < {cpus} and time.time() < t: time.sleep(0.5)\n"
            f"sys.exit(0 if ray.cluster_resources().get('CPU', 0) >= {cpus} else 1)\n"
        )
        subprocess.run([sys.executable, "-c", code], env=self.env, check=True, timeout=timeout + 60)

    def pids(self, name: str) -> list[int]:
        return _group(self.nodes[name])

    def worker_pids(self, name: str) -> list[int]:
        """Process ids of the rs-onnx Ray workers (actors, titled ``ray::Worker...``) on node ``name``."""
        found = []
        for pid in self.pids(name):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::Worker"):
                found.append(pid)
        return found

    def signal_node(self, name: str, sig: int) -> list[int]:
        """Send ``sig`` to every process of node ``name``; returns their ids."""
        pids = self.pids(name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def kill_node(self, name: str) -> None:
        self.signal_node(name, signal.SIGKILL)

    def stop(self) -> None:
        """Kill every process of every node (SIGCONT first, for frozen ones), then remove the temp folder."""
        for name in list(self.nodes):
            self.signal_node(name, signal.SIGCONT)
            self.kill_node(name)
        deadline = time.time() + 10
        while any(self.pids(n) for n in self.nodes) and time.time() < deadline:
            time.sleep(0.2)
        left = [pid for n in self.nodes for pid in self.pids(n)]
        shutil.rmtree(self.root, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
