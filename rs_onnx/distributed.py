"""A Ray backend for :func:`rs_onnx.run.execute`: examples spread over workers on many GPUs and machines.

Each worker (a Ray actor) holds its own onnxruntime session, built from the run's configuration and
the model's bytes (shipped through the object store, so workers need no shared file system). Groups
of examples go to whichever worker is free; answers come back in any order and are yielded in the
order of ``todo``. Because the noise of example i depends only on (seed, i, phase, block), the TSV
is identical (apart from the time column) to a single-process run with the same seed.

A worker that dies is restarted by Ray and its groups retried; a worker that cannot be restarted
has its groups resubmitted to the others. Answers are keyed by group, so none is lost or duplicated.
Ray is imported only when a backend is built: ``import rs_onnx`` never needs it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NoReturn

import numpy as np

from .errors import ConfigError, RsOnnxError
from .guard import escape

if TYPE_CHECKING:
    from .smoothing import SmoothedClassifier

log = logging.getLogger(__name__)

VERSION_KEYS = ("rs_onnx", "onnxruntime", "numpy")
"""Versions that must agree between the driver and every worker for identical results."""


class WorkerError(RsOnnxError):
    """Distributed workers could not start or kept dying."""


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError("backend 'ray' needs Ray; expected it installed: pip install 'rs-onnx[distributed]'") from e
    return ray


# ---------------------------------------------------------------------------------------------- model shipping
def _external_files(model_path: Path) -> list[str]:
    """Relative paths of the external-data files an ONNX model refers to (empty for most models)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    names: set[str] = set()

    def walk(graph):
        tensors = list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                tensors += [attr.t] if attr.HasField("t") else []
                tensors += list(attr.tensors)
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                names.update(e.value for e in t.external_data if e.key == "location")

    walk(model.graph)
    return sorted(names)


def model_bundle(model_path) -> dict[str, bytes]:
    """The model file and its external-data files as {relative name: bytes}, to ship to workers."""
    path = Path(model_path)
    bundle = {path.name: path.read_bytes()}
    for name in _external_files(path):
        bundle[name] = (path.parent / name).read_bytes()
    return bundle


def unpack_bundle(bundle: dict[str, bytes], sha256: str, root: str | None = None) -> Path:
    """Write a bundle once per node under ``<tmp>/rs-onnx-models/<sha256>/`` (atomically); returns the model path.

    The first key is the model file. Workers on one node share the copy; it is kept for later runs.
    """
    folder = Path(root or tempfile.gettempdir()) / "rs-onnx-models" / sha256
    for name, data in bundle.items():
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            raise ConfigError(f"model file {name!r}: outside the model's folder; expected a relative path")
        if target.exists() and target.stat().st_size == len(data):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return folder / next(iter(bundle))


def _bundle_key(bundle: dict[str, bytes]) -> str:
    """SHA-256 of a bundle's names and bytes: the folder it is unpacked into (one per content)."""
    import hashlib

    h = hashlib.sha256()
    for name, data in bundle.items():
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- the worker
class Worker:
    """One worker's onnxruntime session and smoothed classifier (wrapped into a Ray actor by the backend).

    The session is built on the first call (``ready`` or ``answers``), from the ``model`` passed with
    every call: a restarted actor rebuilds it, and Ray keeps no by-reference constructor arguments.

    Parameters
    ----------
    cfg : RunConfig as a dict (``model`` is replaced by the shipped copy).
    sha256 : the driver's model hash; the worker's copy must match.
    sigma, entropy : the driver's resolved noise level and seed (identical noise everywhere).
    device : onnxruntime device for this worker ("cuda" on a Ray GPU: Ray sets CUDA_VISIBLE_DEVICES).
    threads : CPU threads of this worker (onnxruntime intra-op and noise threads, unless configured).
    fault_dir : testing only: a file ``crash-<idx>`` there makes the worker given example idx exit, once.
    batch_mode : the driver's classifier's batch mode after its checks (rs_onnx.checks): "per-sample"
        makes the worker run one sample per session run too.
    """

    def __init__(
        self,
        cfg: dict,
        sha256: str,
        sigma: float,
        entropy: int,
        device: str,
        threads: int,
        fault_dir: str | None = None,
        batch_mode: str | None = None,
    ) -> None:
        self._args = (cfg, sha256, sigma, entropy, device, threads)
        self._fault_dir = fault_dir
        self._batch_mode = batch_mode
        self.smoothed: SmoothedClassifier | None = None

    def _setup(self, model) -> None:
        """Build the session once, through :func:`rs_onnx.run.open_classifier` (the one assembly, so every
        option a local run honours is honoured here). ``model``: {name: bytes} (the model's bundle), a list
        of such bundles or of ObjectRefs to them ([model] or [model, denoiser]), or None (open cfg's paths)."""
        if self.smoothed is not None:
            return
        import onnxruntime as ort

        from .config import RunConfig
        from .run import open_classifier, open_smoothed

        cfg, sha256, sigma, entropy, device, threads = self._args
        self.cfg = RunConfig(**cfg)
        bundles = model if isinstance(model, (list, tuple)) else [model] if model is not None else []
        if bundles and not isinstance(bundles[0], dict):
            import ray

            bundles = [ray.get(ref) for ref in bundles]
        if bundles:
            self.cfg.model = str(unpack_bundle(bundles[0], _bundle_key(bundles[0])))
        if len(bundles) > 1:
            self.cfg.denoiser = str(unpack_bundle(bundles[1], _bundle_key(bundles[1])))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = max(1, int(threads))
        self.classifier, spec = open_classifier(self.cfg, device=device, sess_options=opts)
        if self.classifier.sha256 != sha256:
            raise WorkerError(
                f"model {self.cfg.model}: sha256 {self.classifier.sha256[:12]} on this worker; "
                f"expected the driver's {sha256[:12]} (a different file under the same path?)"
            )
        if self._batch_mode == "per-sample" and self.classifier.batch_mode != "per-sample":
            self.classifier = self.classifier.one_by_one()  # as the driver's batch check decided
        noise_threads = self.cfg.noise_threads if self.cfg.noise_threads is not None else max(1, int(threads))
        assert self.cfg.batch_size is not None  # the driver's resolved configuration
        self.smoothed = open_smoothed(  # the driver's entropy; its batch check's decision came as batch_mode
            self.cfg,
            self.classifier,
            spec,
            sigma,
            entropy,
            noise_threads,
            audit_seed_override=True,
            batch_check={"result": "checked by the driver"},
        )

    def ready(self, model) -> dict:
        """Build the session; returns where this worker runs and with which versions."""
        import platform

        from .results import versions

        self._setup(model)
        c = self.classifier
        return {
            "host": platform.node(),
            "pid": os.getpid(),
            "device": c.device,
            "providers": list(c.providers),
            "versions": versions(),
        }

    def answers(self, model, mode: str, group: list[int], images: np.ndarray) -> tuple[list, float]:
        """Answers for the examples ``group`` (rows ``images`` of the data set), and seconds per example."""
        from .data import Dataset

        self._setup(model)
        self._maybe_crash(group)
        data = Dataset(images, np.zeros(len(images), np.int64), "shipped rows")
        xs = [data.image(j) for j in range(len(group))]
        from .run import answer_group

        t = time.time()
        assert self.smoothed is not None  # built by _setup
        out = answer_group(self.smoothed, self.cfg, mode, xs, group)
        return out, (time.time() - t) / len(group)

    def _maybe_crash(self, group: list[int]) -> None:
        if not self._fault_dir:
            return
        for i in group:
            try:
                os.remove(os.path.join(self._fault_dir, f"crash-{i}"))
            except FileNotFoundError:
                continue
            log.warning("fault injection: worker %d exits on example %d", os.getpid(), i)
            os._exit(1)


# ---------------------------------------------------------------------------------------------- the backend
def _worker_device(device: str, gpus: float) -> str:
    """The device inside a worker: its own GPU (Ray numbers them from 0) when it has one, else the CPU
    under "auto" (a worker without a GPU reservation must not crowd a GPU it happens to see)."""
    if gpus > 0 and device != "cpu":
        return "cuda"
    return "cpu" if device == "auto" else device


def _plan(ray, workers, gpus_per_worker, cpus_per_worker, device: str, groups: int) -> tuple[int, float, float]:
    """(workers, GPUs each, CPUs each), defaults filled from the cluster's resources."""
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0)) if gpus_per_worker is None else float(gpus_per_worker)
    if gpus_per_worker is None:
        gpus = 1.0 if gpus >= 1 and device != "cpu" else 0.0
    cpus = 1.0 if cpus_per_worker is None else float(cpus_per_worker)
    if workers is None:
        workers = int(res.get("GPU", 0) // gpus) if gpus > 0 else int(res.get("CPU", 1) // max(cpus, 1e-9))
    workers = max(1, min(int(workers), groups))
    need = {"GPU": workers * gpus, "CPU": workers * cpus}
    short = [f"{need[k]:g} {k}s" for k in need if need[k] > float(res.get(k, 0)) + 1e-9]
    if short:
        log.warning(
            "%d workers need %s; the cluster has %s now: some start only when resources appear",
            workers,
            " and ".join(short),
            {k: res.get(k, 0) for k in need},
        )
    return workers, gpus, cpus


RAY_REACH_TIMEOUT_S = 10.0
"""Seconds a TCP connection to a Ray cluster's address may take before the address is refused."""
RAY_CONNECT_TIMEOUT_S = 120.0
"""Seconds ``ray.init`` may take to join a cluster that answers on its address (Ray's own wait for a slow
GCS is about as long); then the run is refused. A local Ray instance starts without this limit."""


def _target(address: str) -> tuple[str, int] | None:
    """(host, port) that joining ``address`` ("auto", "host:port", "ray://host:port") connects to first, as Ray
    resolves it (localhost becomes the node's address; "auto" is RAY_ADDRESS or the cluster started on this
    node); None when Ray's resolver is unavailable for "auto". ConfigError when "auto" finds no cluster."""
    if address.startswith("ray://"):  # Ray Client: the client server's host and port, as given
        text = address[len("ray://") :].split("/", 1)[0]
    else:
        text = address
        try:
            from ray._private.services import canonicalize_bootstrap_address

            text = canonicalize_bootstrap_address(address) or address
        except ImportError:  # a Ray without this helper: the address as given ("auto": no TCP check)
            pass
        except ConnectionError as e:  # "auto" and no cluster recorded on this node
            raise ConfigError(
                f"Ray address {escape(address)}: {escape(' '.join(str(e).split())[:200])}; expected a running "
                "Ray cluster (ray start --head), or no --address for a local Ray instance"
            ) from None
        except Exception:  # noqa: BLE001 - an unparsable address: the checks below refuse it
            pass
    host, sep, port = text.rpartition(":")
    if address == "auto" and not sep:
        return None
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        _bad_address(address)
    return host.strip("[]"), int(port)


def _bad_address(address: str) -> NoReturn:
    raise ConfigError(f"Ray address {escape(address)}: expected 'auto', 'host:port' or 'ray://host:port'")


def check_reachable(address: str, timeout: float = RAY_REACH_TIMEOUT_S) -> None:
    """Refuse (ConfigError, one line) a Ray ``address`` where nothing accepts a TCP connection within
    ``timeout`` seconds: a wrong host or port fails here, quickly, instead of ``ray.init`` retrying for
    minutes. Creates nothing; a cluster that accepts the connection is joined later by ``ray.init``."""
    import socket

    target = _target(address)
    if target is None:
        return
    host, port = target
    t0 = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = "no answer" if isinstance(e, socket.timeout) else (e.strerror or type(e).__name__).lower()
        raise ConfigError(
            f"Ray address {escape(address)}: nothing accepts a connection at {escape(host)}:{port} "
            f"({why} after {time.monotonic() - t0:.1f} s); expected the address of a running Ray cluster's "
            "head node (ray start --head prints it), or no --address for a local Ray instance"
        ) from None


class _QuietThreadWarning(logging.Filter):
    """Drops Ray's note that it set no SIGTERM handler (ray.init off the main thread): rs-onnx keeps its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class RayBackend:
    """A backend for :func:`rs_onnx.run.execute` that runs on a Ray cluster (built by :func:`ray_backend`).

    ``connect()`` joins the cluster (or starts a local Ray instance) and ``close()`` leaves what it joined;
    :func:`rs_onnx.run.execute` connects before it creates any output file, so that an unreachable
    cluster is refused with nothing written. Calling the backend connects too when it is not connected.
    """

    def __init__(self, address, workers, gpus_per_worker, cpus_per_worker, **options) -> None:
        self.address = address
        self.workers, self.gpus_per_worker, self.cpus_per_worker = workers, gpus_per_worker, cpus_per_worker
        self.options = options
        self._own = False  # this backend called ray.init (and so calls ray.shutdown)

    def _joined_address(self) -> str | None:
        """The cluster ray.init joins: ``address``, else RAY_ADDRESS (Ray reads it), else None (start locally)."""
        return self.address if self.address is not None else (os.environ.get("RAY_ADDRESS") or None)

    def check_reachable(self) -> None:
        """:func:`check_reachable` for the cluster this backend joins (nothing for a local instance)."""
        address = self._joined_address()
        if address is not None and not _import_ray().is_initialized():
            check_reachable(address, min(RAY_REACH_TIMEOUT_S, self.options["connect_timeout"]))

    def connect(self) -> bool:
        """Join the cluster (or start a local Ray instance) unless Ray is already initialised in this process;
        True when this call did (then :meth:`close` leaves it). A remote address must accept a TCP connection
        within 10 s and ``ray.init`` must return within ``connect_timeout`` seconds, else ConfigError (one line).
        """
        ray = _import_ray()
        if ray.is_initialized():
            return False
        address = self._joined_address()
        kwargs = {"address": self.address, "logging_level": logging.WARNING, **(self.options["init_kwargs"] or {})}
        if address is None:
            # A local instance, started on this thread: Ray ties the processes it starts to the thread that
            # starts them (they die with it), and no network is waited for.
            kwargs.setdefault("include_dashboard", False)
            ray.init(**kwargs)
        else:
            self.check_reachable()
            self._join(ray, address, kwargs)
        self._own = True
        return True

    def _join(self, ray, address: str, kwargs: dict) -> None:
        """ray.init on a helper thread, waited for at most ``connect_timeout`` seconds."""
        import threading

        outcome: dict = {}

        def join() -> None:
            try:
                ray.init(**kwargs)
                outcome["ok"] = True
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                outcome["error"] = e

        timeout = float(self.options["connect_timeout"])
        quiet = _QuietThreadWarning()
        ray_log = logging.getLogger("ray._private.worker")
        ray_log.addFilter(quiet)
        try:
            thread = threading.Thread(target=join, name="rs-onnx-ray-connect", daemon=True)
            thread.start()
            thread.join(timeout)
        finally:
            ray_log.removeFilter(quiet)
        if "ok" in outcome:
            return
        error = outcome.get("error")
        why = (
            f"ray.init failed: {escape(' '.join(str(error).split())[:200])}"
            if error is not None
            else f"ray.init did not return within {timeout:g} s"
        )
        raise ConfigError(
            f"Ray address {escape(address)}: {why}; expected a running Ray cluster of the same Ray version "
            "that accepts this driver, or no --address for a local Ray instance"
        )

    def close(self) -> None:
        """Leave the cluster (stop the local instance) when :meth:`connect` joined it; else nothing."""
        if self._own:
            self._own = False
            _import_ray().shutdown()

    def __call__(self, p, mode: str, todo: list[int], progress=None) -> Iterator[tuple[list[int], list, float]]:
        """Yields (example indices, answers, seconds per example) in the order of ``todo``."""
        if not todo:
            return
        ray = _import_ray()
        opened = self.connect()
        o = self.options
        try:
            yield from _run(
                ray,
                p,
                mode,
                todo,
                progress,
                self.workers,
                self.gpus_per_worker,
                self.cpus_per_worker,
                o["tasks_per_worker"],
                o["max_restarts"],
                o["max_attempts"],
                o["ship_model"],
                o["fault_dir"],
            )
        finally:
            if opened:
                self.close()


def ray_backend(
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None,
    *,
    tasks_per_worker: int = 2,
    max_restarts: int = 3,
    max_attempts: int = 4,
    ship_model: bool = True,
    init_kwargs: dict | None = None,
    connect_timeout: float = RAY_CONNECT_TIMEOUT_S,
    _fault_dir: str | None = None,
) -> RayBackend:
    """A backend for :func:`rs_onnx.run.execute` that runs on a Ray cluster.

    Parameters
    ----------
    address : None (start a local Ray instance, or join RAY_ADDRESS when set), "auto" (the cluster this
        node belongs to) or "host:port" / "ray://host:10001". Ignored when Ray is already initialised in
        this process.
    workers : number of actors (default: one per GPU when GPUs are used, else one per CPU).
    gpus_per_worker : GPUs per actor, fractions allowed (default: 1 when the cluster has GPUs and the
        device is not "cpu", else 0).
    cpus_per_worker : CPUs per actor (default 1); also its onnxruntime and noise threads.
    tasks_per_worker : groups queued on each actor, so it never waits for the next one.
    max_restarts : Ray restarts of a dead actor; its in-flight groups are retried on the new process.
    max_attempts : times a group may be lost with its actor before the run fails.
    ship_model : send the model's bytes through the object store (False: workers open the same path).
    init_kwargs : more arguments for ``ray.init`` (e.g. ``runtime_env``, ``num_cpus``).
    connect_timeout : seconds ``ray.init`` may take to join a remote cluster (after its address accepted a
        TCP connection within 10 s); then ConfigError.

    Returns
    -------
    A :class:`RayBackend`: ``backend(p, mode, todo, progress)`` yields (example indices, answers, seconds
    per example) in the order of ``todo`` and calls ``progress(samples)`` as each group finishes;
    ``connect()`` / ``close()`` join and leave the cluster (run.execute connects before writing anything).
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers}: expected at least 1")
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise ConfigError(f"gpus_per_worker={gpus_per_worker}: expected 0 or more (fractions allowed)")
    if cpus_per_worker is not None and cpus_per_worker <= 0:
        raise ConfigError(f"cpus_per_worker={cpus_per_worker}: expected more than 0")
    if address is not None and not (address == "auto" or ":" in address):
        raise ConfigError(f"address={address!r}: expected 'auto', 'host:port' or 'ray://host:port'")
    if not connect_timeout > 0:
        raise ConfigError(f"connect_timeout={connect_timeout}: expected more than 0 seconds")
    return RayBackend(
        address,
        workers,
        gpus_per_worker,
        cpus_per_worker,
        tasks_per_worker=tasks_per_worker,
        max_restarts=max_restarts,
        max_attempts=max_attempts,
        ship_model=ship_model,
        init_kwargs=init_kwargs,
        connect_timeout=connect_timeout,
        fault_dir=_fault_dir,
    )


def backend_from_config(cfg) -> RayBackend | None:
    """The backend a RunConfig asks for: None (local) or :func:`ray_backend` from its ``backend``,
    ``address``, ``workers``, ``gpus_per_worker`` and ``cpus_per_worker`` keys (absent keys: defaults)."""
    name = getattr(cfg, "backend", "local") or "local"
    if name == "local":
        return None
    if name != "ray":
        raise ConfigError(f"backend={name!r}: expected 'local' or 'ray'")
    return ray_backend(
        getattr(cfg, "address", None),
        getattr(cfg, "workers", None),
        getattr(cfg, "gpus_per_worker", None),
        getattr(cfg, "cpus_per_worker", None),
    )


def _raise_task_error(e) -> None:
    """Re-raise a worker's own error (e.g. a DeviceError) as itself, so the CLI prints one line."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, RsOnnxError):
        raise cause from None
    raise e


def _run(
    ray,
    p,
    mode,
    todo,
    progress,
    workers,
    gpus_per_worker,
    cpus_per_worker,
    tasks_per_worker,
    max_restarts,
    max_attempts,
    ship_model,
    fault_dir,
):
    from ray.exceptions import RayActorError, RayTaskError

    from .results import versions
    from .run import group_size

    cfg = p.cfg
    size = group_size(cfg)
    groups = [todo[g : g + size] for g in range(0, len(todo), size)]
    per_example = cfg.n0 + cfg.n if mode == "certify" else cfg.n
    n_workers, gpus, cpus = _plan(ray, workers, gpus_per_worker, cpus_per_worker, cfg.device, len(groups))
    sha = p.classifier.sha256
    # held until the end, for restarts; the denoiser travels too: workers compose it like a local run
    model = (
        [ray.put(model_bundle(cfg.model))] + ([ray.put(model_bundle(cfg.denoiser))] if cfg.denoiser else [])
        if ship_model
        else None
    )
    remote = ray.remote(Worker).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_restarts=max_restarts,
        max_task_retries=max_restarts,
        scheduling_strategy="SPREAD",
    )
    # the driver's resolved noise kind (from --noise or the model's metadata) and noise source (host or device,
    # resolved by its classifier when device_noise was left unset) travel like sigma
    args = (
        {**cfg.to_dict(), "noise": p.smoothed.noise, "device_noise": bool(p.classifier.device_noise)},
        sha,
        p.smoothed.sigma,
        p.smoothed.entropy,
        _worker_device(cfg.device, gpus),
        max(1, math.floor(cpus)),
        fault_dir,
        getattr(p.classifier, "batch_mode", None),
    )
    actors = [remote.remote(*args) for _ in range(n_workers)]
    log.info(
        "ray: %d groups of up to %d examples on %d workers (%g GPU, %g CPU each)",
        len(groups),
        size,
        n_workers,
        gpus,
        cpus,
    )
    starting = {a.ready.remote(model): a for a in actors}
    live: dict = {}  # actor -> groups in flight on it
    in_flight: dict = {}  # ref -> (actor, group number)
    pending = deque(range(len(groups)))
    attempts = [0] * len(groups)
    done: dict = {}
    next_out, window = 0, max(64, 8 * n_workers * tasks_per_worker)
    mine = versions()
    last = time.time()
    try:
        while next_out < len(groups):
            for actor in sorted(live, key=lambda a: len(live[a])):
                while len(live[actor]) < tasks_per_worker and pending and pending[0] < next_out + window:
                    g = pending.popleft()
                    ref = actor.answers.remote(model, mode, groups[g], p.data.images[groups[g]])
                    in_flight[ref] = (actor, g)
                    live[actor].add(g)
            refs = list(in_flight) + list(starting)
            if not refs:
                raise WorkerError(
                    f"all {n_workers} Ray workers died with {len(groups) - next_out} groups of "
                    "examples left; expected at least one live worker (see the Ray logs)"
                )
            finished, _ = ray.wait(refs, num_returns=1, timeout=30.0)
            if not finished and time.time() - last > 60:
                last = time.time()
                log.warning(
                    "ray: %d of %d workers started, %d groups in flight; waiting (cluster resources %s)",
                    len(live),
                    n_workers,
                    len(in_flight),
                    ray.available_resources(),
                )
            for ref in finished:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        info = ray.get(ref)
                    except RayTaskError as e:
                        _raise_task_error(e)
                    except RayActorError as e:
                        log.warning("ray: a worker died while starting (%s)", type(e).__name__)
                        continue
                    _check_versions(mine, info)
                    log.info("ray: worker %s:%d ready on %s", info["host"], info["pid"], info["device"])
                    live[actor] = set()
                    continue
                actor, g = in_flight.pop(ref)
                if actor in live:
                    live[actor].discard(g)
                try:
                    answers, seconds = ray.get(ref)
                except RayTaskError as e:
                    _raise_task_error(e)
                except RayActorError as e:
                    attempts[g] += 1
                    if attempts[g] >= max_attempts:
                        raise WorkerError(
                            f"examples {groups[g][0]}..{groups[g][-1]}: lost with {attempts[g]} "
                            "workers; expected them to finish (do they crash the worker?)"
                        ) from e
                    dead = not isinstance(e, getattr(ray.exceptions, "ActorUnavailableError", ()))
                    if dead and actor in live:
                        log.warning("ray: a worker died (%s); its groups go to the others", type(e).__name__)
                        for other in [r for r, (a, _) in in_flight.items() if a is actor]:
                            pending.appendleft(in_flight.pop(other)[1])
                        del live[actor]
                    pending.appendleft(g)
                    pending = deque(sorted(set(pending)))
                    continue
                if len(answers) != len(groups[g]):
                    raise WorkerError(f"a worker gave {len(answers)} answers for {len(groups[g])} examples")
                if g >= next_out and g not in done:
                    done[g] = (answers, seconds)
                    if progress:
                        progress(len(groups[g]) * per_example)
            while next_out in done:
                answers, seconds = done.pop(next_out)
                yield groups[next_out], answers, seconds
                next_out += 1
    finally:
        for ref in [*in_flight, *starting]:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - best effort; killing the actors drops the rest
                pass
        for actor in actors:
            ray.kill(actor)


def _check_versions(mine: dict, info: dict) -> None:
    """Warn when a worker's rs-onnx, onnxruntime or numpy differs from the driver's (results could differ)."""
    theirs = info.get("versions", {})
    diff = [f"{k} {theirs.get(k)} (driver {mine.get(k)})" for k in VERSION_KEYS if theirs.get(k) != mine.get(k)]
    if diff:
        log.warning(
            "ray: worker %s has %s; expected the same versions on every node for identical results",
            info.get("host"),
            ", ".join(diff),
        )
