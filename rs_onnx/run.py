"""A certification or prediction run over a data set: model + data + config -> TSV rows + meta.json.

Rows are appended and flushed as examples finish; the meta file says whether the run is
``running``, ``complete``, ``interrupted`` or ``failed``, so partial output is never passed off as
complete. ``resume=True`` continues an interrupted run after checking that nothing that decides the
results has changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import modelcard, shapes
from .batches import DEFAULT_BATCH, group_size, largest_count, memory_check, memory_fits
from .batches import memory_need  # noqa: F401 (re-exported: callers find it in rs_onnx.run)
from .compose_cache import composed_model
from .config import RunConfig
from .data import Dataset, load_from_config
from .errors import ConfigError, DataError
from .model_defaults import image_geometry, resolve_noise, resolve_sigma
from .outputs import RunFiles, RunLock, check_output, data_identity
from .preprocess import Preprocessor, PreprocessSpec
from .provenance import build_meta
from .results import TsvWriter, answer_row, columns_for
from .resume import resume_state
from .smoothing import SmoothedClassifier

if TYPE_CHECKING:
    from .classifier import OnnxClassifier

log = logging.getLogger(__name__)


def bundled(name: str) -> str:
    """Path of a file shipped in rs_onnx/data (the embedded default model and digits)."""
    return str(resources.files("rs_onnx") / "data" / name)


def open_classifier(cfg: RunConfig, *, device: str | None = None, sess_options=None, one_shape: bool | None = None):
    """THE assembly of the base classifier from a configuration, for every path (local runs, Ray workers,
    API helpers, benchmarks): returns (classifier, preprocessing still to apply in NumPy).

    Every option that changes results (fp16, cuda_graph, device_noise, extra_inputs, denoiser, input and
    output names) is honoured here and nowhere else. With a denoiser the classifier's preprocessing sits
    inside the composed graph, so the preprocessing returned is the identity. ``device`` overrides
    ``cfg.device`` (a Ray worker's own GPU); ``sess_options``: onnxruntime session options (threads);
    ``one_shape``: see :class:`~rs_onnx.classifier.OnnxClassifier` (default: on CUDA).
    ``device_noise`` unset in ``cfg`` is "auto" (on for large inputs on CUDA) unless the noise asked for is not
    Gaussian or the run is an audit.
    """
    from .classifier import OnnxClassifier
    from .devices import cuda_provider_options

    extra = None
    if cfg.extra_inputs:
        try:
            extra = {name: np.asarray(value) for name, value in cfg.extra_inputs.items()}
        except ValueError as e:
            raise ConfigError(f"extra_inputs: {e}; expected a number or a nested list per input") from e
    if cfg.denoiser and extra:
        raise ConfigError(
            f"extra_inputs {sorted(extra)} with --denoiser: the composed model feeds only the image; "
            "expected a classifier with one input, or no denoiser"
        )
    path, input_name = (composed_model(cfg), None) if cfg.denoiser else (cfg.model, cfg.input_name)
    clf = OnnxClassifier(
        path,
        input_name=input_name,
        output_name=cfg.output_name,
        device=cfg.device if device is None else device,
        extra_inputs=extra,
        float_type="fp16" if cfg.fp16 else "fp32",
        cuda_graph=cfg.cuda_graph,
        device_noise=_device_noise(cfg),
        max_batch=cfg.batch_size if cfg.cuda_graph else None,
        sess_options=sess_options,
        cuda_options=cuda_provider_options(cfg.cudnn_algo_search, cfg.prefer_nhwc),
        tensorrt=cfg.tensorrt,
        one_shape=one_shape,
        input_shape=None if cfg.denoiser else cfg.input_shape,
    )
    return clf, (PreprocessSpec() if cfg.denoiser else cfg.preprocess_spec())


def _device_noise(cfg: RunConfig) -> bool | str:
    """``cfg.device_noise``, or "auto" when unset and nothing rules device noise out (non-Gaussian noise asked
    for, audit mode, a CUDA graph)."""
    if cfg.device_noise is not None:
        return bool(cfg.device_noise)
    if cfg.audit or cfg.cuda_graph or cfg.noise not in (None, "gaussian"):
        return False
    return "auto"


def open_smoothed(
    cfg: RunConfig,
    clf,
    spec: PreprocessSpec,
    sigma: float,
    seed: int | None,
    noise_threads: int | None = None,
    batch_size: int | None = None,
    audit_seed_override: bool | None = None,
    noise: str | None = None,
    batch_check: dict | None = None,
) -> SmoothedClassifier:
    """THE assembly of the smoothed classifier around :func:`open_classifier`'s result (local and workers).
    ``batch_size``: the resolved batch size (default ``cfg.batch_size``, set in a resolved configuration);
    ``noise``: the resolved noise kind (default: :func:`resolve_noise` of ``cfg`` and ``clf``);
    ``batch_check``: the record of a batch check already made (None: checked before the first count)."""
    threads = cfg.noise_threads if noise_threads is None else noise_threads
    batch = cfg.batch_size if batch_size is None else batch_size
    if batch is None:
        raise ConfigError("open_smoothed: no batch size; expected a resolved configuration (run.prepare)")
    override = cfg.audit_seed_override if audit_seed_override is None else audit_seed_override
    kind = noise or resolve_noise(cfg, clf)  # the driver passes its resolved kind; a worker resolves it alike
    return SmoothedClassifier(
        clf,
        sigma,
        spec,
        seed,
        batch,
        threads,
        audit=cfg.audit,
        audit_seed_override=override,
        noise=kind,
        batch_check=batch_check,
    )


PROBE_MIN_SAMPLES = 200_000
"""Runs of at least this many noisy samples probe for the fastest batch size; shorter runs use the default."""
DEFAULT_BATCH_BYTES = 64 << 20
"""The default batch holds at most this many input bytes (ImageNet-size inputs: ~110 images, not 1000)."""


def resolve_batch(clf, total_samples: int, fits: Callable[[int], bool] | None = None) -> tuple[int, dict | None]:
    """(batch size, probe): from a short probe (:func:`~rs_onnx.sampling.probe_batch_size`, a few seconds)
    when the run of ``total_samples`` noisy samples is long enough to repay it, the probe then returned
    too; else (:data:`DEFAULT_BATCH` capped by :data:`DEFAULT_BATCH_BYTES` of input and by the run, None).
    ``fits(b)``: whether batch size b fits in host memory (:func:`~rs_onnx.batches.memory_check`); a size
    that does not is never chosen (unless none does, not even 1: the check then refuses the run)."""
    from .sampling import largest_fitting, probe_batch_size

    if total_samples < PROBE_MIN_SAMPLES:
        row_bytes = int(np.prod(clf.input_shape)) * np.dtype(clf.input_dtype).itemsize
        batch = int(max(1, min(DEFAULT_BATCH, total_samples, DEFAULT_BATCH_BYTES // max(1, row_bytes))))
        return (batch if fits is None else largest_fitting(batch, fits)), None
    runner = clf.scratch() if getattr(clf, "prefers_fixed_batch", False) and hasattr(clf, "scratch") else clf
    probe = probe_batch_size(runner, fits=fits)  # on a copy where the run's session keeps one shape (CUDA)
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
    checks: dict = field(default_factory=dict)  # batch_check and clean_accuracy (rs_onnx.checks)
    audit: dict | None = None  # audit mode's record for meta.json: the graph scan, the grid, the entropy's origin
    class_names: list[str] | None = None  # by class id: --classes, else the model's config.json id2label
    batch_auto: bool = False  # the batch size was resolved here (no --batch-size): Ray workers resolve their own

    def with_entropy(self, entropy: int) -> Prepared:
        """The same run with the noise streams seeded by ``entropy`` (--resume adopting an earlier run's
        entropy): a new SmoothedClassifier, nothing overwritten."""
        if entropy == self.entropy:
            return self
        old = self.smoothed
        # An audit resumed adopts the earlier audit's recorded entropy: an explicit, recorded override.
        smoothed = SmoothedClassifier(
            self.classifier,
            self.sigma,
            old.spec,
            entropy,
            self.batch_size,
            old.noise_threads,
            old.num_classes,
            audit=old.audit,
            audit_seed_override=old.audit,
            noise=old.noise,
            batch_check=old.batch_check,  # checked once, in prepare
        )
        smoothed.preprocessor(self.data.image_shape)
        audit = None if self.audit is None else {**self.audit, "entropy": "adopted from the run resumed (--resume)"}
        return dataclasses.replace(self, smoothed=smoothed, entropy=int(entropy), audit=audit)


def prepare(cfg: RunConfig) -> Prepared:
    """Load and check model, sigma, data, labels and preprocessing; raises RsOnnxError on bad input."""
    if cfg.model is None or cfg.data is None:
        raise ConfigError(f"model={cfg.model} data={cfg.data}: expected both a model and a data set")
    log.info("loading %s", Path(str(cfg.model)).name)
    cfg, data = shapes.from_config(cfg)  # symbolic dims filled from the data (a copy; the caller's is kept)
    clf, spec = open_classifier(cfg)
    sigma = resolve_sigma(cfg, clf)
    noise_kind = resolve_noise(cfg, clf)
    if cfg.bound != "cohen" and noise_kind != "gaussian":
        raise ConfigError(
            f"bound={cfg.bound} with noise={noise_kind}: the two-class bound is Gaussian only; expected bound=cohen"
        )
    if cfg.device_noise and noise_kind != "gaussian":
        raise ConfigError(
            f"device_noise with noise={noise_kind}: the GPU draws Gaussian noise only; expected "
            "noise=gaussian or no device_noise"
        )
    selection_checked = data is not None
    if data is None:
        channels, size = image_geometry(clf, cfg.layout)
        data = load_from_config(cfg, size, channels)
    data.check_labels(clf.num_classes)
    if len(data):  # the check SmoothedClassifier.images makes per image, on the first one before any file is written
        from .inputs import check_magnitude

        first = data.image((list(range(cfg.start, len(data), cfg.skip)) or [0])[0])
        check_magnitude(float(np.abs(first).max(initial=0.0)), sigma, f"{data.source}: example {cfg.start}")
    end = len(data) if cfg.end is None else min(cfg.end, len(data))
    indices = list(range(cfg.start, end, cfg.skip))
    if not indices:
        raise DataError(
            f"{data.source}: no examples selected by start={cfg.start} end={cfg.end} skip={cfg.skip} "
            f"among {len(data)}; expected at least one"
        )
    if not selection_checked:
        data.check_selection(indices)  # headers of selected image files, finiteness of float rows: before any output
    pre = Preprocessor(spec, data.image_shape, clf.input_shape, clf.input_dtype)  # model shape and dtype
    local = (cfg.backend or "local") == "local"  # Ray workers hold their batches on their own nodes
    probe = None
    if cfg.batch_size is None:  # never a size that the memory check below would refuse
        total = len(indices) * (cfg.n0 + cfg.n)
        # Ray workers resolve their own batch size on their own hardware (rs_onnx.ray_worker); the driver's
        # serves only its checks, so it is never probed for (a CPU head would time a GPU run on its CPU)
        total = total if local else min(total, PROBE_MIN_SAMPLES - 1)
        batch_size, probe = resolve_batch(clf, total, memory_fits(cfg, clf, pre))
    else:
        batch_size = int(cfg.batch_size)
    if local:
        memory_check(cfg, clf, pre, batch_size)  # before the batch check allocates a batch, before any file
    # In audit mode the entropy is drawn here, after the model (and its sha256) is fixed.
    smoothed = open_smoothed(cfg, clf, spec, sigma, cfg.seed, batch_size=batch_size, noise=noise_kind)
    audit = None
    if smoothed.audit_info is not None:
        from .audit import to_grid

        # Refuse off-grid images before any file is written. uint8 data (image files, uint8 arrays) is on
        # the grid by construction and is not decoded here; the sampler checks every image again (to_grid).
        if not data.uint8_pixels:
            for i in indices:
                to_grid(data.image(i))
        audit = {
            **smoothed.audit_info,
            "entropy": (
                "given with --audit-seed-override"
                if cfg.seed is not None
                else f"fresh, drawn after loading the model with sha256 {clf.sha256}"
            ),
            "model_batch": batch_size if smoothed.audit_info["batched"] else 1,
        }
        log.info("audit mode: %s", audit["how"])
    smoothed.preprocessor(data.image_shape)  # checks that the images fit the model input
    # The caller's cfg is never written to: the resolved values go into a copy (given values kept as given,
    # so that meta.json's "config" is byte for byte what it always was).
    resolved = dataclasses.replace(
        cfg,
        sigma=sigma if cfg.sigma is None else cfg.sigma,
        batch_size=batch_size if cfg.batch_size is None else cfg.batch_size,
        # per example, as the loader resolved it (an --input-shape given with its batch dim loses it here)
        input_shape=list(clf.input_shape) if cfg.input_shape is not None and not cfg.denoiser else cfg.input_shape,
    )
    checks = run_checks(resolved, smoothed, data, indices)  # may switch smoothed to a one-by-one classifier
    names = modelcard.run_class_names(cfg, clf.num_classes)
    return Prepared(
        resolved,
        smoothed.classifier,
        smoothed,
        data,
        indices,
        sigma,
        batch_size,
        smoothed.entropy,
        probe,
        checks,
        audit,
        names,
        batch_auto=cfg.batch_size is None,
    )


CLEAN_EXAMPLES = 100
"""Examples whose clean accuracy is measured before certifying (one forward pass each)."""


def run_checks(cfg: RunConfig, smoothed: SmoothedClassifier, data: Dataset, indices: list[int]) -> dict:
    """Before the first sample: batch equivalence at the batch size used (rs_onnx.checks; may switch the
    classifier to one sample per run, or refuse) and the clean accuracy on the first selected examples
    (a warning when near chance). Returns the records for meta.json."""
    from .checks import clean_accuracy, near_chance

    # checked once, here, at the largest batch the run uses (a count of one group at max(n0, n) samples;
    # None in audit mode: its graph scan decides batching); the smoothed classifier keeps the record, and
    # Ray workers follow via batch_mode. A classifier that keeps one input shape (CUDA) is checked on a
    # short-lived copy with its own session (OnnxClassifier.scratch), dropped at the end of this function.
    total = len(indices) * (cfg.n0 + cfg.n)
    samples = min(total, largest_count(cfg, smoothed.batch_size))
    clf = smoothed.classifier
    t = time.perf_counter()
    one_shape = getattr(clf, "prefers_fixed_batch", False) and hasattr(clf, "scratch")
    runner = clf.scratch(quick_plans=True) if one_shape else clf
    if runner is not clf:
        log.info("check: a second session for the checks (the run's keeps one input shape): %.2f s", _since(t))
    t = time.perf_counter()
    record = None if smoothed.audit else smoothed.verify_batches(data.image(indices[0]), samples, runner, total)
    if record is not None:
        record = {**record, "seconds": round(_since(t), 3)}
        log.info(
            "check: batch equivalence at batches of %s with %d one-by-one runs (%s): %.2f s",
            "/".join(map(str, record["batch_sizes"])),
            record["rows_one_by_one"],
            record["result"],
            record["seconds"],
        )
    checks: dict = {"batch_check": record}
    if runner is not clf and record is not None and record["result"] == "per-sample fallback":
        runner = runner.one_by_one()  # the clean pass runs as the run will
    first = indices[:CLEAN_EXAMPLES]
    t = time.perf_counter()
    acc = clean_accuracy(
        runner if runner is not clf else smoothed.classifier,
        smoothed,
        [data.image(i) for i in first],
        [int(data.labels[i]) for i in first],
    )
    if acc is not None:
        acc = {**acc, "seconds": round(_since(t), 3)}
        log.info("check: clean accuracy on %d examples: %.2f s", acc["examples"], acc["seconds"])
    checks["clean_accuracy"] = acc
    if near_chance(acc):
        assert acc is not None
        log.warning(
            "the base classifier is right on only %d of %d clean examples (%.0f%%, chance %.0f%%): the "
            "preprocessing is likely wrong: check the mean/std (--mean/--std or --preset), the layout "
            "(--layout nchw/nhwc), the scale (--scale 255 for models that take 0..255) and the labels",
            acc["correct"],
            acc["examples"],
            100 * acc["accuracy"],
            100 * acc["chance"],
        )
    return checks


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def preflight(p: Prepared, mode: str) -> None:
    """Checks that can refuse a run and would otherwise only fail once sampling starts (the sequential plan);
    called before any output file is created."""
    if mode == "certify" and p.cfg.sequential:
        from .sequential import run_plan

        c = p.cfg
        run_plan(
            c.n,
            c.alpha,
            c.looks,
            c.first_look,
            c.final_share,
            p.smoothed.sigma,
            c.radii,
            c.futility_beta,
            c.precision,
            p.smoothed.noise,
        )


def answer_group(
    smoothed: SmoothedClassifier, cfg: RunConfig, mode: str, xs, group: list[int], progress=None, labels=None
):
    """CERTIFY (fixed n or sequential) or PREDICT for the images ``xs`` of examples ``group`` (``labels``: theirs,
    needed by ``guess: label``)."""
    if mode == "predict":
        return smoothed.predict_many(xs, cfg.n, cfg.alpha, group, progress)
    if cfg.sequential:
        from .sequential import sequential_certify_many

        return sequential_certify_many(
            smoothed,
            xs,
            group,
            cfg.n0,
            cfg.n,
            cfg.alpha,
            None if cfg.precision else cfg.radii,
            eps=cfg.precision,
            looks=cfg.looks,
            n_first=cfg.first_look,
            final_share=cfg.final_share,
            futility_beta=cfg.futility_beta,
            guess=cfg.guess,
            labels=labels,
            budget=cfg.budget,
            progress=progress,
        )
    return smoothed.certify_many(xs, cfg.n0, cfg.n, cfg.alpha, group, progress, cfg.bound)


def local_answers(p: Prepared, mode: str, todo: list[int], progress=None):
    """Yields (example indices, answers, seconds per example), group by group, computed in this process."""
    size = max(1, len(todo)) if p.cfg.budget else group_size(p.cfg)  # a budget is shared by every example
    groups = [todo[g : g + size] for g in range(0, len(todo), size)]
    for group, xs in p.data.iter_groups(groups):  # image files are decoded ahead, while sampling
        t = time.time()
        labels = [int(p.data.labels[i]) for i in group]
        answers = answer_group(p.smoothed, p.cfg, mode, xs, group, progress, labels)
        yield group, answers, (time.time() - t) / len(group)


def execute(
    p: Prepared,
    mode: str,
    out: Path | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_rows: Callable[[list[dict]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    stream=None,
    backend=None,
    inputs: dict | None = None,
) -> dict:
    """Run CERTIFY (mode "certify") or PREDICT ("predict") over the selected examples.

    Rows go to ``out`` (and its meta.json, under an exclusive lock; see :mod:`rs_onnx.outputs`) or,
    without ``out``, to the text stream ``stream``. An ``out`` that holds rows is refused unless
    ``resume`` (continue it) or ``overwrite`` (replace it once this run has its first row); an ``out``
    that is an input (model, data, denoiser, and ``inputs``: label -> path) is refused. ``backend(p, mode,
    todo, progress)`` computes the answers (default :func:`local_answers`); it must yield groups in the
    order of ``todo``; one with ``connect()`` and ``close()`` (the Ray backend) is connected before any
    output file is created (an unreachable cluster is refused with nothing written) and closed at the end.
    Returns the final meta dict; re-raises KeyboardInterrupt after recording the interruption; a write
    error ends the run with status ``failed`` and an OutputError.
    """
    columns = columns_for(mode, p.cfg.sequential)
    if resume and out is None:
        raise ConfigError("--resume needs --out (the TSV of the run to continue)")
    if resume and p.cfg.budget:
        raise ConfigError(
            f"--resume with --budget {p.cfg.budget}: a budget is shared by the examples of one run; expected a new run"
        )
    identity = None
    if out is not None:
        out = Path(out)
        inputs = {"MODEL": p.cfg.model, "DATA": p.cfg.data, "--denoiser": p.cfg.denoiser, **(inputs or {})}
        check_output(out, inputs, resume=resume, overwrite=overwrite)
    preflight(p, mode)
    if out is not None:
        files = p.data.files if p.data.describe().get("format") == "manifest" else None  # type: ignore[attr-defined]
        identity = data_identity(str(p.cfg.data), p.cfg.start, p.cfg.end, p.cfg.skip, files)
    with contextlib.ExitStack() as stack:
        connect = getattr(backend, "connect", None)  # a Ray backend: join the cluster before any file exists
        if connect is not None and connect():
            stack.callback(backend.close)
        files = None
        todo = list(p.indices)
        if out is not None:
            stack.enter_context(RunLock(out))
            check_output(out, inputs or {}, resume=resume, overwrite=overwrite)  # again, now that we hold the lock
            if resume:
                done, p = resume_state(out, p, mode, columns, identity)
                todo = [i for i in todo if i not in done]
                log.info("resuming %s: %d examples done, %d to go", out, len(p.indices) - len(todo), len(todo))
            files = RunFiles(out, columns, append=resume, replace=overwrite)
        return _execute_rows(p, mode, out, files, todo, identity, columns, on_rows, progress, stream, backend)


def _execute_rows(p, mode, out, files, todo, identity, columns, on_rows, progress, stream, backend) -> dict:
    from .checks import one_class_note

    t0 = time.time()
    timings = {"started": t0, "seconds": 0.0}
    extra: dict = {"examples_done": len(p.indices) - len(todo), "nonfinite_outputs": 0, "one_class": None}
    # for the one-class note, bounded by the class count (rows are streamed, never kept): answers per class
    # (abstentions included) and the labels seen
    answers_per_class: Counter[int] = Counter()
    labels_seen: set[int] = set()
    data_extra = {"identity": identity} if identity else {}
    writer = TsvWriter(stream, columns) if (files is None and stream is not None) else None
    status, error = "failed", None
    try:
        if files is not None:  # the meta file first: a TSV never exists without one
            files.begin(build_meta(p, mode, out, "running", timings, extra, data_extra))
        for group, answers, seconds in (backend or local_answers)(p, mode, todo, progress):
            rows = [answer_row(mode, i, int(p.data.labels[i]), a, seconds) for i, a in zip(group, answers)]
            if files is not None:
                files.write(rows)
            for row in rows:
                extra["nonfinite_outputs"] += row["nonfinite"]
                answers_per_class[int(row["predict"])] += 1
                labels_seen.add(int(row["label"]))
                if writer:
                    writer.write(row)
            extra["examples_done"] += len(rows)
            if on_rows:
                on_rows(rows)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
        raise
    finally:
        if writer:
            writer.close()
        timings["seconds"] = time.time() - t0
        predicted = np.repeat(list(answers_per_class), list(answers_per_class.values()))
        extra["one_class"] = one_class_note(predicted, sorted(labels_seen))
        record = getattr(backend, "record", None)  # the Ray backend: what its workers resolved
        final: dict = {**extra, **({"error": error} if error else {}), **(record() if callable(record) else {})}
        meta = build_meta(p, mode, out, status, timings, final, data_extra)
        if files is not None:
            files.finish(meta)
    if extra["one_class"]:
        log.warning("%s", extra["one_class"])
    if extra["nonfinite_outputs"]:
        log.warning(
            "%d noisy samples gave NaN/Inf model outputs or class indices out of range; they were counted "
            "as their own outcome, never for a class (column 'nonfinite')",
            extra["nonfinite_outputs"],
        )
    return meta
