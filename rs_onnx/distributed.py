"""A Ray backend for :func:`rs_onnx.run.execute`: examples spread over workers on many GPUs and machines.

Each worker (a Ray actor) holds its own onnxruntime session, built from the run's configuration and
the model's bytes (shipped through the object store, so workers need no shared file system). Groups
of examples go to whichever worker is free; answers come back in any order and are yielded in the
order of ``todo``. Because the noise of example i depends only on (seed, i, phase, block), the TSV
is identical (apart from the time column) to a single-process run with the same seed.

The driver's loop (:mod:`rs_onnx.dispatch`) resends the work of a worker that is lost (its process or its
node died) or frozen (nothing finished for the stall timeout) to the others, keeps the first answer of
each unit (answers are deterministic), ends the run in one resumable line when the cluster is gone or no
worker is left, and splits one example's samples across workers when examples are few or n is large.
Workers resolve the batch size on their own hardware when none was given. Ray is imported only when a
backend is built: ``import rs_onnx`` never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Iterator, NoReturn

import numpy as np

from .dispatch import Dispatcher, WorkerError, piece_size, plan
from .errors import ConfigError
from .guard import escape
from .ray_worker import Worker, model_bundle, unpack_bundle

if TYPE_CHECKING:
    pass

__all__ = ["RayBackend", "Worker", "WorkerError", "backend_from_config", "model_bundle", "ray_backend", "unpack_bundle"]

log = logging.getLogger(__name__)

VERSION_KEYS = ("rs_onnx", "onnxruntime", "numpy")
"""Versions that must agree between the driver and every worker for identical results."""


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError("backend 'ray' needs Ray; expected it installed: pip install 'rs-onnx[distributed]'") from e
    return ray


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


@contextlib.contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """Restore the Python handlers of SIGTERM, SIGINT and SIGHUP after the block (``ray.init`` replaces
    SIGTERM's with one that exits at once, without rs-onnx's meta file and --resume hint). Main thread only."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kinds = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    saved = {s: signal.getsignal(s) for s in kinds}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None and signal.getsignal(s) is not handler:
                signal.signal(s, handler)


@contextlib.contextmanager
def _cluster_messages_logged() -> Iterator[None]:
    """Within the block, the messages the cluster pushes to this driver (a node or raylet died, with the
    last lines of its log; a task retried) go to rs-onnx's log at DEBUG (``--debug`` shows them) instead
    of Ray printing them to stdout, which carries the rows of ``--out -``. Best effort: a Ray without this
    printer is left as it is."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        yield
        return
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None:
        yield
        return

    def to_log(data, ignore_prefix=False) -> None:
        for line in data.get("lines") or ():
            log.debug("ray (%s): %s", data.get("pid"), " ".join(str(line).split())[:500])

    ray_worker.print_to_stdstream = to_log
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = printer


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
        self.record_workers: list[dict] = []  # what each worker resolved (meta.json's "ray")
        self.dispatcher: Dispatcher | None = None
        self._printer = None  # Ray's printer of cluster messages, while this backend's is in place

    def record(self) -> dict:
        """{"ray": ...} for the run's meta.json: the workers (host, device, the batch size each resolved on its
        own hardware), the units resent after a worker was lost or stalled, and the stall timeout."""
        d = self.dispatcher
        return {
            "ray": {
                "workers": list(self.record_workers),
                "resent_units": d.resent if d is not None else 0,
                "stall_timeout": self.options["stall_timeout"],
                "stall_seconds": d.stall_seconds() if d is not None else None,
                "split": bool(d and d.units and d.units[0].phase is not None),
            }
        }

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
        kwargs = {"address": self.address, "logging_level": logging.ERROR, **(self.options["init_kwargs"] or {})}
        with _keep_signal_handlers():  # ray.init installs its own SIGTERM handler: rs-onnx's stay
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
            with _keep_signal_handlers():
                _import_ray().shutdown()

    def __call__(self, p, mode: str, todo: list[int], progress=None) -> Iterator[tuple[list[int], list, float]]:
        """Yields (example indices, answers, seconds per example) in the order of ``todo``."""
        if not todo:
            return
        ray = _import_ray()
        opened = self.connect()
        try:
            with _cluster_messages_logged():
                yield from _run(ray, p, mode, todo, progress, self)
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
    stall_timeout: float | None = None,
    split: bool = True,
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
    stall_timeout : seconds a worker with work may finish nothing before its work goes to the other workers
        (a frozen process, a wedged GPU); when no worker can take over, the run ends (resumable). None:
        automatic, 10 times the slowest unit of work measured so far and at least 60 s (600 s until the
        first unit finished); see :mod:`rs_onnx.dispatch`.
    split : split one example's samples into pieces across workers when the examples are fewer than the
        workers can take at once or n is over 100,000 (same counts, same certificate); False: never.

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
    if stall_timeout is not None and not (math.isfinite(stall_timeout) and stall_timeout > 0):
        raise ConfigError(f"stall_timeout={stall_timeout}: expected more than 0 seconds (or None: automatic)")
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
        stall_timeout=stall_timeout,
        split=split,
        fault_dir=_fault_dir,
    )


def backend_from_config(cfg) -> RayBackend | None:
    """The backend a RunConfig asks for: None (local) or :func:`ray_backend` from its ``backend``,
    ``address``, ``workers``, ``gpus_per_worker``, ``cpus_per_worker`` and ``stall_timeout`` keys (absent
    keys: defaults)."""
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
        stall_timeout=getattr(cfg, "stall_timeout", None),
    )


def _run(ray, p, mode, todo, progress, backend: RayBackend) -> Iterator[tuple[list[int], list, float]]:
    from . import noise
    from .results import versions
    from .run import group_size

    o = backend.options
    cfg = p.cfg
    per_example = cfg.n0 + cfg.n if mode == "certify" else cfg.n
    n_workers, gpus, cpus = _plan(
        ray, backend.workers, backend.gpus_per_worker, backend.cpus_per_worker, cfg.device, len(todo)
    )
    sha = p.classifier.sha256
    # held until the end, for restarts; the denoiser travels too: workers compose it like a local run
    model = (
        [ray.put(model_bundle(cfg.model))] + ([ray.put(model_bundle(cfg.denoiser))] if cfg.denoiser else [])
        if o["ship_model"]
        else None
    )
    remote = ray.remote(Worker).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_restarts=o["max_restarts"],
        max_task_retries=0,  # a lost unit is resent by the driver, to any worker (dispatch)
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
        o["fault_dir"],
        getattr(p.classifier, "batch_mode", None),
        bool(getattr(p, "batch_auto", False)),
        len(p.indices) * per_example,
        tuple(p.data.image_shape),
    )
    actors = [remote.remote(*args) for _ in range(n_workers)]
    mine = versions()
    record = backend.record_workers
    record.clear()
    block_size = p.smoothed.sampler(p.data.image_shape).block_size
    splittable = not cfg.sequential and not getattr(p.classifier, "device_noise", False)

    def on_ready(info: dict) -> None:
        _check_versions(mine, info)
        keep = ("host", "pid", "node", "device", "device_name", "batch_size", "batch_auto")
        entry = {k: info.get(k) for k in keep}
        probe = info.get("batch_probe")
        if probe:
            entry["batch_probe_seconds"] = probe.get("probe_seconds")
        if entry not in record:
            record.append(entry)

    def make_plan(info: dict):
        # the group size follows the first ready worker's batch (values resolved there flow to the schedule)
        size = group_size(cfg, info.get("batch_size") or cfg.batch_size)
        piece = (
            piece_size(cfg.n, len(todo), n_workers, o["tasks_per_worker"], block_size)
            if splittable and o["split"]
            else None
        )
        items, units = plan(todo, size, mode, cfg.n0, cfg.n, piece, block_size)
        log.info(
            "ray: %d %s on %d workers (%g GPU, %g CPU each)%s",
            len(units),
            "groups of up to %d examples" % size if piece is None else "pieces",
            n_workers,
            gpus,
            cpus,
            "" if piece is None else f": each example's samples split into pieces of {piece:,}",
        )
        return items, units

    def submit(actor, unit):
        if unit.phase is None:
            group = list(unit.examples)
            return actor.answers.remote(model, mode, group, p.data.images[group])
        e = unit.examples[0]
        return actor.counts.remote(model, e, p.data.images[e], unit.phase, unit.block, unit.n)

    dim = p.smoothed.dim(p.data.image_shape)

    def finish(item: int, examples: list[int], parts: list) -> list:
        by_phase: dict = {}
        for unit, counts in parts:
            by_phase[unit.phase] = by_phase.get(unit.phase, 0) + np.asarray(counts, np.int64)
        if mode == "predict":
            return p.smoothed.predictions(by_phase[noise.PREDICT][None], cfg.n, cfg.alpha)
        c0, c1 = by_phase[noise.SELECT][None], by_phase[noise.ESTIMATE][None]
        return p.smoothed.certificates(c0, c1, cfg.n0, cfg.n, cfg.alpha, dim, cfg.bound)

    def samples(unit) -> int:
        return len(unit.examples) * per_example if unit.phase is None else unit.n

    dispatcher = Dispatcher(
        ray,
        actors,
        ready=lambda actor: actor.ready.remote(model),
        on_ready=on_ready,
        make_plan=make_plan,
        submit=submit,
        finish=finish,
        samples=samples,
        progress=progress,
        stall_timeout=o["stall_timeout"],
        max_attempts=o["max_attempts"],
        tasks_per_worker=o["tasks_per_worker"],
        window=max(64, 8 * n_workers * o["tasks_per_worker"]),
        gcs_address=_gcs_address(ray),
    )
    backend.dispatcher = dispatcher
    yield from dispatcher


def _gcs_address(ray) -> str | None:
    """The cluster head's GCS "host:port" as this driver knows it (None under Ray Client or when unknown)."""
    try:
        return ray.get_runtime_context().gcs_address or None
    except Exception:  # noqa: BLE001 - Ray Client and older Rays: not checked
        return None


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
