"""A Ray worker of rs-onnx: the model shipped to it, its own session, and its answers and counts.

:class:`Worker` is wrapped into a Ray actor by :mod:`rs_onnx.distributed`; it runs in-process too (tests).
The model's bytes (with any external-data files) travel as a bundle through Ray's object store and are
unpacked once per node, so workers need no shared file system. Ray is imported only inside a worker.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .dispatch import WorkerError
from .errors import ConfigError

if TYPE_CHECKING:
    from .smoothing import SmoothedClassifier

log = logging.getLogger("rs_onnx.distributed")


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
    fault_dir : testing only: a file ``crash-<idx>`` there makes the worker given example idx exit, once;
        ``stall-<idx>`` makes it sleep for an hour on example idx, once.
    batch_mode : the driver's classifier's batch mode after its checks (rs_onnx.checks): "per-sample"
        makes the worker run one sample per session run too.
    batch_auto : no batch size was given: this worker resolves its own (probe and host memory, on its own
        hardware, as a local run does) instead of ``cfg["batch_size"]`` (the driver's, from the driver's
        hardware); with a given batch size the worker checks that it fits in its host's memory.
    total_samples : the run's noisy samples (whether a probe repays itself, as in a local run).
    image_shape : the data's image shape (the model input the memory check sizes); None: not checked.
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
        batch_auto: bool = False,
        total_samples: int = 0,
        image_shape: tuple | None = None,
    ) -> None:
        self._args = (cfg, sha256, sigma, entropy, device, threads)
        self._fault_dir = fault_dir
        self._batch_mode = batch_mode
        self._batch_auto = batch_auto
        self._total_samples = int(total_samples)
        self._image_shape = tuple(int(d) for d in image_shape) if image_shape is not None else None
        self.smoothed: SmoothedClassifier | None = None
        self.resolved: dict = {}

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
        batch, probe = self._resolve_batch(spec)
        # the driver checked batches at its own batch size: a worker that resolved another checks its own
        checked = {"result": "checked by the driver"} if batch == self.cfg.batch_size else None
        self.smoothed = open_smoothed(  # the driver's entropy; its batch check's decision came as batch_mode
            self.cfg,
            self.classifier,
            spec,
            sigma,
            entropy,
            noise_threads,
            batch_size=batch,
            audit_seed_override=True,
            batch_check=checked,
        )
        self.resolved = {"batch_size": batch, "batch_probe": probe, "batch_auto": self._batch_auto}

    def _resolve_batch(self, spec) -> tuple[int, dict | None]:
        """(batch size, probe) on this worker's hardware: resolved as a local run does when no batch size was
        given; else the given one, refused (ConfigError naming this host) when it does not fit in memory here."""
        import platform

        from .preprocess import Preprocessor
        from .run import memory_check, memory_fits, resolve_batch

        cfg = self.cfg
        shape, clf = self._image_shape, self.classifier
        pre = Preprocessor(spec, shape, clf.input_shape, clf.input_dtype) if shape is not None else None
        try:
            if self._batch_auto:
                fits = memory_fits(cfg, self.classifier, pre) if pre is not None else None
                return resolve_batch(self.classifier, self._total_samples, fits)
            if pre is not None:
                memory_check(cfg, self.classifier, pre, int(cfg.batch_size or 1))
        except ConfigError as e:
            raise ConfigError(f"Ray worker on {platform.node()}: {e}") from None
        return int(cfg.batch_size or 1), None

    def ready(self, model) -> dict:
        """Build the session; returns where this worker runs and with which versions."""
        import platform

        from .results import versions

        self._setup(model)
        c = self.classifier
        node = None
        try:
            import ray

            if ray.is_initialized():  # inside a Ray worker (never start Ray from here)
                node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - no Ray (tests run a Worker in-process)
            pass
        return {
            "host": platform.node(),
            "pid": os.getpid(),
            "node": node,
            "device": c.device,
            "device_name": getattr(c, "device_name", None),
            "providers": list(c.providers),
            "versions": versions(),
            **self.resolved,
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

    def counts(
        self, model, example: int, image: np.ndarray, phase: int, block: int, n: int
    ) -> tuple[np.ndarray, float]:
        """Counts (int64 [K + 1]) of ``n`` samples of example ``example`` (``image``: its row of the data set)
        under noise ``phase``, from noise block ``block`` on: a piece of a split example; and its seconds."""
        from .data import Dataset

        self._setup(model)
        self._maybe_crash([example])
        x = Dataset(image[None], np.zeros(1, np.int64), "shipped rows").image(0)
        t = time.time()
        assert self.smoothed is not None  # built by _setup
        counts = self.smoothed.count([x], [example], phase, n, first_block=block)[0]
        return counts, time.time() - t

    def _maybe_crash(self, group: list[int]) -> None:
        if not self._fault_dir:
            return
        for i in group:
            for kind in ("crash", "stall"):
                try:
                    os.remove(os.path.join(self._fault_dir, f"{kind}-{i}"))
                except FileNotFoundError:
                    continue
                log.warning("fault injection: worker %d %s on example %d", os.getpid(), kind, i)
                if kind == "crash":
                    os._exit(1)
                time.sleep(3600)
