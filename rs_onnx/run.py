"""A certification or prediction run over a data set: model + data + config -> TSV rows + meta.json.

Rows are appended and flushed as examples finish; the meta file says whether the run is
``running``, ``complete``, ``interrupted`` or ``failed``, so partial output is never passed off as
complete. ``resume=True`` continues an interrupted run after checking that nothing that decides the
results has changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .config import RunConfig
from .data import Dataset, load_from_config
from .errors import ConfigError, DataError, ModelError
from .guard import escape
from .preprocess import PreprocessSpec
from .results import (TsvWriter, answer_row, columns_for, command_line, meta_path, sha256_file, versions,
                      write_json_atomic)
from .smoothing import SmoothedClassifier

if TYPE_CHECKING:
    from .classifier import OnnxClassifier

log = logging.getLogger(__name__)

# Keys that must match for --resume to continue a run.
RESUME_KEYS = ("sigma", "n0", "n", "alpha", "seed", "input_name", "output_name", "layout", "scale", "mean", "std",
               "dtype", "label", "bound", "extra_inputs", "sequential", "radii", "precision", "looks", "n_first",
               "final_share", "futility_beta", "denoiser", "fp16", "device_noise", "audit", "labels", "classes",
               "path_column", "label_column", "label_from_filename", "resize", "center_crop")


def bundled(name: str) -> str:
    """Path of a file shipped in rs_onnx/data (the embedded default model and digits)."""
    return str(resources.files("rs_onnx") / "data" / name)


def open_classifier(cfg: RunConfig):
    """The base classifier and the preprocessing still to apply in NumPy (none when a denoiser is
    composed in front: the classifier's preprocessing then sits inside the composed graph)."""
    from .classifier import OnnxClassifier

    if cfg.denoiser:
        return OnnxClassifier(composed_model(cfg), output_name=cfg.output_name, device=cfg.device), PreprocessSpec()
    extra = None
    if cfg.extra_inputs:
        try:
            extra = {name: np.asarray(value) for name, value in cfg.extra_inputs.items()}
        except ValueError as e:
            raise ConfigError(f"extra_inputs: {e}; expected a number or a nested list per input") from e
    clf = OnnxClassifier(cfg.model, input_name=cfg.input_name, output_name=cfg.output_name, device=cfg.device,
                         extra_inputs=extra, float_type="fp16" if cfg.fp16 else "fp32", cuda_graph=cfg.cuda_graph,
                         device_noise=cfg.device_noise, max_batch=cfg.batch_size if cfg.cuda_graph else None)
    return clf, cfg.preprocess_spec()


def composed_model(cfg: RunConfig) -> Path:
    """``cfg.denoiser`` composed with ``cfg.model`` and its preprocessing (rs_onnx.compose), cached by content."""
    from .compose import compose_files

    assert cfg.denoiser is not None and cfg.model is not None  # prepare() checked them
    for what, value in (("denoiser", cfg.denoiser), ("model", cfg.model)):
        p = Path(value)
        if not p.is_file():
            raise ModelError(f"{what} {escape(value)}: {'a directory' if p.is_dir() else 'no such file'}; "
                             "expected an .onnx file")
    spec = cfg.preprocess_spec()
    key = hashlib.sha256("|".join([sha256_file(cfg.denoiser), sha256_file(cfg.model), repr(spec),
                                   str(cfg.input_name)]).encode()).hexdigest()[:20]
    path = Path(tempfile.gettempdir()) / "rs-onnx-composed" / f"{key}.onnx"
    if not path.exists():
        tmp = path.with_name(f"{key}.{os.getpid()}.tmp.onnx")
        compose_files(cfg.denoiser, cfg.model, tmp, spec, classifier_input_name=cfg.input_name)
        os.replace(tmp, path)
    log.info("certifying denoiser %s + classifier %s, composed into %s", cfg.denoiser, cfg.model, path)
    return path


def resolve_sigma(cfg: RunConfig, clf) -> float:
    """--sigma, else the model's ``rs_onnx.sigma`` metadata (and say so), else a clear error. ``cfg`` is
    only read."""
    if cfg.sigma is not None:
        return float(cfg.sigma)
    meta = getattr(clf, "metadata", {}) or {}
    if "rs_onnx.sigma" in meta:
        text = meta["rs_onnx.sigma"]
        try:
            sigma = float(text)
        except (TypeError, ValueError):
            sigma = float("nan")
        if not (np.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"the model's rs_onnx.sigma metadata is {escape(repr(text)[:80])}; expected a positive "
                              "number (the noise level in [0,1] pixel units), or pass --sigma")
        log.info("no --sigma given: using sigma=%g from the model's metadata (rs_onnx.sigma)", sigma)
        return sigma
    raise ConfigError("no --sigma given and the model has no rs_onnx.sigma metadata; expected --sigma "
                      "(noise level in [0,1] pixel units)")


def image_geometry(clf, layout: str) -> tuple[int | None, tuple[int, int] | None]:
    """(channels, (height, width)) of the model's image input, to read image files; (None, None) if flat."""
    shape = tuple(clf.input_shape)
    if len(shape) != 3:
        return None, None
    if layout == "nhwc" or (layout == "auto" and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)):
        return shape[-1], shape[:2]
    return shape[0], shape[1:]


PROBE_MIN_SAMPLES = 200_000
"""Runs of at least this many noisy samples probe for the fastest batch size; shorter runs use the default."""
DEFAULT_BATCH = 1000
DEFAULT_BATCH_BYTES = 64 << 20
"""The default batch holds at most this many input bytes (ImageNet-size inputs: ~110 images, not 1000)."""


def resolve_batch(clf, total_samples: int) -> tuple[int, dict | None]:
    """(batch size, probe): from a short probe (:func:`~rs_onnx.sampling.probe_batch_size`, a few seconds)
    when the run of ``total_samples`` noisy samples is long enough to repay it, the probe then returned
    too; else (:data:`DEFAULT_BATCH` capped by :data:`DEFAULT_BATCH_BYTES` of input and by the run, None)."""
    from .sampling import probe_batch_size

    if total_samples < PROBE_MIN_SAMPLES:
        row_bytes = int(np.prod(clf.input_shape)) * np.dtype(clf.input_dtype).itemsize
        return int(max(1, min(DEFAULT_BATCH, total_samples, DEFAULT_BATCH_BYTES // max(1, row_bytes)))), None
    probe = probe_batch_size(clf)
    log.info("automatic batch size: %d (from a short probe; --batch-size N to choose)", probe["batch_size"])
    return int(probe["batch_size"]), probe


def resolve_batch_size(clf, total_samples: int) -> int:
    """The batch size of :func:`resolve_batch`."""
    return resolve_batch(clf, total_samples)[0]


@dataclass(frozen=True)
class Prepared:
    """Everything checked and resolved before the first sample is drawn; never changed afterwards.

    ``cfg`` is the resolved configuration: the caller's RunConfig (left untouched) copied with the resolved
    ``sigma`` and ``batch_size``, so ``cfg.to_dict()`` is what meta.json records and --resume compares.
    ``sigma``, ``batch_size``, ``entropy`` (the seed of every noise stream) and ``batch_probe`` (the
    automatic probe, or None when the batch size was given or the run too short) are the resolved values;
    ``smoothed`` was built from them.
    """

    cfg: RunConfig
    classifier: OnnxClassifier
    smoothed: SmoothedClassifier
    data: Dataset
    indices: list[int]
    sigma: float
    batch_size: int
    entropy: int
    batch_probe: dict | None = None

    def with_entropy(self, entropy: int) -> Prepared:
        """The same run with the noise streams seeded by ``entropy`` (--resume adopting an earlier run's
        entropy): a new SmoothedClassifier, nothing overwritten."""
        if entropy == self.entropy:
            return self
        old = self.smoothed
        # An audit resumed adopts the earlier audit's recorded entropy: an explicit, recorded override.
        smoothed = SmoothedClassifier(self.classifier, self.sigma, old.spec, entropy, self.batch_size,
                                      old.noise_threads, audit=old.audit, audit_seed_override=old.audit)
        if old.audit_info is not None:
            smoothed.audit_info = {**old.audit_info, "entropy": "adopted from the run resumed (--resume)"}
        smoothed.preprocessor(self.data.image_shape)
        return dataclasses.replace(self, smoothed=smoothed, entropy=int(entropy))


def prepare(cfg: RunConfig) -> Prepared:
    """Load and check model, sigma, data, labels and preprocessing; raises RsOnnxError on bad input."""
    if cfg.denoiser and cfg.backend != "local":
        raise ConfigError("--denoiser with --backend ray: expected a composed model (rs-onnx compose --denoiser "
                          "D.onnx -o DC.onnx C.onnx) to certify on the workers")
    if cfg.model is None or cfg.data is None:
        raise ConfigError(f"model={cfg.model} data={cfg.data}: expected both a model and a data set")
    clf, spec = open_classifier(cfg)
    sigma = resolve_sigma(cfg, clf)
    channels, size = image_geometry(clf, cfg.layout)
    data = load_from_config(cfg, size, channels)
    data.check_labels(clf.num_classes)
    end = len(data) if cfg.end is None else min(cfg.end, len(data))
    indices = list(range(cfg.start, end, cfg.skip))
    if not indices:
        raise DataError(f"{data.source}: no examples selected by start={cfg.start} end={cfg.end} skip={cfg.skip} "
                        f"among {len(data)}; expected at least one")
    data.check_selection(indices)  # headers of selected image files, finiteness of float rows: before any output
    probe = None
    if cfg.batch_size is None:
        batch_size, probe = resolve_batch(clf, len(indices) * (cfg.n0 + cfg.n))
    else:
        batch_size = int(cfg.batch_size)
    # In audit mode the entropy is drawn here, after the model (and its sha256) is fixed.
    smoothed = SmoothedClassifier(clf, sigma, spec, cfg.seed, batch_size, cfg.noise_threads, audit=cfg.audit,
                                  audit_seed_override=cfg.audit_seed_override)
    if smoothed.audit_info is not None:
        from .audit import to_grid

        for i in indices:  # refuse off-grid images before any file is written
            to_grid(data.image(i))
        smoothed.audit_info["entropy"] = ("given with --audit-seed-override" if cfg.seed is not None else
                                          f"fresh, drawn after loading the model with sha256 {clf.sha256}")
        smoothed.audit_info["model_batch"] = batch_size if smoothed.audit_info["batched"] else 1
        log.info("audit mode: %s", smoothed.audit_info["how"])
    smoothed.preprocessor(data.image_shape)  # checks that the images fit the model input
    # The caller's cfg is never written to: the resolved values go into a copy (given values kept as given,
    # so that meta.json's "config" is byte for byte what it always was).
    resolved = dataclasses.replace(cfg, sigma=sigma if cfg.sigma is None else cfg.sigma,
                                   batch_size=batch_size if cfg.batch_size is None else cfg.batch_size)
    return Prepared(resolved, clf, smoothed, data, indices, sigma, batch_size, smoothed.entropy, probe)


def _meta(p: Prepared, mode: str, out: Path | None, status: str, timings: dict, extra: dict) -> dict:
    clf = p.classifier
    return {
        "status": status,
        "mode": mode,
        "config": p.cfg.to_dict(),
        "seed": p.cfg.seed,
        "entropy": str(p.smoothed.entropy),
        "preprocess": p.smoothed.preprocessor(p.data.image_shape).describe(),
        "batch_size": p.smoothed.batch_size,
        "noise_threads": p.smoothed.noise_threads,
        "batch_probe": p.batch_probe,
        "model": {"path": str(p.cfg.model), "sha256": clf.sha256, "signature": clf.signature()},
        "providers": list(clf.providers),
        "device": getattr(clf, "device", None),
        "device_name": getattr(clf, "device_name", None),
        "data": {"path": str(p.cfg.data), "examples": len(p.data), "selected": len(p.indices), **p.data.describe()},
        "versions": versions(),
        "command": command_line(),
        "timings": timings,
        "out": str(out) if out else None,
        **({"audit": p.smoothed.audit_info} if p.smoothed.audit_info is not None else {}),
        **extra,
    }


def _resume(out: Path, p: Prepared, mode: str, columns: tuple[str, ...]) -> tuple[set[int], Prepared]:
    """Indices already in ``out`` from an earlier run of the same model and configuration, and the run to
    continue with.

    Checks the meta file, adopts the earlier run's noise entropy when no seed was given (a new Prepared,
    see :meth:`Prepared.with_entropy`), and drops a last row cut short by a crash (it is recomputed).
    """
    mp = meta_path(out)
    if not mp.exists():
        if out.exists():
            raise ConfigError(f"--resume: {out} exists but {mp} does not; expected both from an earlier rs-onnx run")
        log.info("--resume: no earlier run at %s; starting one", out)
        return set(), p
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
        entropy = int(meta["entropy"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--resume: {mp} is not a readable rs-onnx meta file ({e})") from e
    old = meta.get("config", {})
    defaults = RunConfig().to_dict()  # keys an older meta file lacks had their default value
    changed = [k for k in RESUME_KEYS if old.get(k, defaults[k]) != p.cfg.to_dict()[k]]
    if meta.get("mode") != mode:
        changed.append("mode")
    if meta.get("model", {}).get("sha256") != p.classifier.sha256:
        changed.append("model (sha256)")
    if changed:
        raise ConfigError(f"--resume: {out} was made with a different {', '.join(changed)}; expected the same "
                          "model and configuration (or start a new --out)")
    if p.cfg.seed is None:
        p = p.with_entropy(entropy)
    if not out.exists():
        return set(), p
    with open(out, encoding="utf-8", newline="") as f:
        complete = f.read().split("\n")[:-1]  # a last line without its newline was cut by a crash
    if complete and complete[0] != "\t".join(columns):
        raise ConfigError(f"--resume: {out} starts with {complete[0][:60]!r}; expected the header of a {mode} TSV")
    done = {int(line.split("\t", 1)[0]) for line in complete[1:]}
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in complete))
    return done, p


def group_size(cfg: RunConfig) -> int:
    """Examples sampled together: several when n is small next to the batch, so that batches stay full
    (and 32 in sequential mode, where examples drop out between looks)."""
    if cfg.sequential:
        return 32
    return max(1, min(64, math.ceil((cfg.batch_size or DEFAULT_BATCH) / cfg.n)))


def answer_group(smoothed: SmoothedClassifier, cfg: RunConfig, mode: str, xs, group: list[int], progress=None):
    """CERTIFY (fixed n or sequential) or PREDICT for the images ``xs`` of examples ``group``."""
    if mode == "predict":
        return smoothed.predict_many(xs, cfg.n, cfg.alpha, group, progress)
    if cfg.sequential:
        from .sequential import sequential_certify_many

        return sequential_certify_many(smoothed, xs, group, cfg.n0, cfg.n, cfg.alpha,
                                       None if cfg.precision else cfg.radii, eps=cfg.precision, looks=cfg.looks,
                                       n_first=cfg.n_first, final_share=cfg.final_share,
                                       futility_beta=cfg.futility_beta, progress=progress)
    return smoothed.certify_many(xs, cfg.n0, cfg.n, cfg.alpha, group, progress, cfg.bound)


def local_answers(p: Prepared, mode: str, todo: list[int], progress=None):
    """Yields (example indices, answers, seconds per example), group by group, computed in this process."""
    size = group_size(p.cfg)
    groups = [todo[g:g + size] for g in range(0, len(todo), size)]
    for group, xs in p.data.iter_groups(groups):  # image files are decoded ahead, while sampling
        t = time.time()
        answers = answer_group(p.smoothed, p.cfg, mode, xs, group, progress)
        yield group, answers, (time.time() - t) / len(group)


def execute(p: Prepared, mode: str, out: Path | None, *, resume: bool = False,
            on_rows: Callable[[list[dict]], None] | None = None,
            progress: Callable[[int], None] | None = None, stream=None, backend=None) -> dict:
    """Run CERTIFY (mode "certify") or PREDICT ("predict") over the selected examples.

    Rows go to ``out`` (and its meta.json) or, without ``out``, to the text stream ``stream``.
    ``backend(p, mode, todo, progress)`` computes the answers (default :func:`local_answers`); it must
    yield groups in the order of ``todo``. Returns the final meta dict; re-raises KeyboardInterrupt after
    recording the interruption.
    """
    columns = columns_for(mode)
    todo = list(p.indices)
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out (the TSV of the run to continue)")
        done, p = _resume(out, p, mode, columns)
        todo = [i for i in todo if i not in done]
        log.info("resuming %s: %d examples done, %d to go", out, len(p.indices) - len(todo), len(todo))
    t0 = time.time()
    timings = {"started": t0, "seconds": 0.0}
    extra = {"examples_done": len(p.indices) - len(todo), "nonfinite_outputs": 0}
    if out:  # the meta file first: a TSV never exists without one
        write_json_atomic(meta_path(out), _meta(p, mode, out, "running", timings, extra))
    writer = TsvWriter(out if out else stream, columns, append=resume) if (out or stream) else None
    status = "failed"
    try:
        for group, answers, seconds in (backend or local_answers)(p, mode, todo, progress):
            rows = [answer_row(mode, i, int(p.data.labels[i]), a, seconds) for i, a in zip(group, answers)]
            for row in rows:
                extra["nonfinite_outputs"] += row["nonfinite"]
                if writer:
                    writer.write(row)
            extra["examples_done"] += len(rows)
            if on_rows:
                on_rows(rows)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if writer:
            writer.close()
        timings["seconds"] = time.time() - t0
        meta = _meta(p, mode, out, status, timings, extra)
        if out:
            write_json_atomic(meta_path(out), meta)
    if extra["nonfinite_outputs"]:
        log.warning("%d noisy samples gave NaN/Inf model outputs; they were counted as their own outcome, never "
                    "for a class (column 'nonfinite')", extra["nonfinite_outputs"])
    return meta

