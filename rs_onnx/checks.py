"""Checks run before certifying, on the first example: batch equivalence and clean accuracy.

* :func:`check_batch_equivalence`: the base classifier must give each noisy sample the class it gives
  that sample alone, at the batch size the run really uses (and one other). The load check in
  :class:`~rs_onnx.classifier.OnnxClassifier` only tries 8 random inputs; a model that mixes rows above
  batch 8 (train-mode batch norm, a batch-wide softmax, a bad export) passes it and then makes the
  results depend on ``--batch-size``. On failure the smoothed classifier switches to one sample per run
  (``OnnxClassifier.one_by_one``, in ``SmoothedClassifier.verify_batches``), or the run is refused when it cannot.
* :func:`clean_accuracy`: one forward pass per clean example; near chance usually means wrong
  preprocessing (mean/std, layout, scale), which no certificate can reveal.
"""

from __future__ import annotations

import logging

import numpy as np

from .cuda import is_out_of_memory
from .errors import ModelError
from .stats import ABSTAIN

log = logging.getLogger(__name__)

SINGLE_ROWS = 32
"""Noisy samples run one by one as the reference, at most (the check costs about 1.5 batches and this many runs)."""
MIN_SINGLE_ROWS = 4
"""Noisy samples run one by one at least (when the batch has that many rows)."""
CHECK_SHARE = 0.25
"""Share of a run's samples the check may add to its full batch: a short run checks a smaller second batch and
fewer one-by-one rows (the full batch, the size the run uses, is always checked)."""
NOISE_SEED = 20240501
"""Seed of the check's own noise (independent of the certification's noise streams)."""


def _classes_and_scores(clf, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Classes (-1: no class) and, when the classifier can give them, raw scores [B, K]: one model run (the
    classes of scores are their argmax, -1 for a row with a non-finite score, as ``predict`` gives them)."""
    if getattr(clf, "output_kind", None) == "scores" and not getattr(clf, "cuda_graph", False):
        try:
            scores = np.asarray(clf.scores(x), np.float64)
        except Exception as err:  # compare classes only (out of memory: the caller halves)
            if is_out_of_memory(err):
                raise
        else:
            classes = scores.argmax(1) if scores.shape[1] else np.full(len(scores), -1)
            return np.where(np.isfinite(scores).all(1), classes, -1).astype(np.int64), scores
    return np.asarray(clf.predict(x), np.int64), None


def check_sizes(b: int, total: int | None = None) -> tuple[int, int]:
    """(the second batch size, rows run one by one) of a check at batch ``b`` for a run of ``total`` samples:
    b // 2 + 1 and :data:`SINGLE_ROWS`, cut so that they add at most :data:`CHECK_SHARE` of ``total`` to the
    full batch (a second batch of at least 2 rows and :data:`MIN_SINGLE_ROWS` one-by-one rows are kept)."""
    other = max(2, b // 2 + 1) if b > 2 else 1
    m = min(b, SINGLE_ROWS)
    if total is not None:
        spare = max(0, int(CHECK_SHARE * int(total)) - b)
        other = min(other, max(other if b <= 2 else 2, spare // 2))
        m = min(m, max(MIN_SINGLE_ROWS, spare // 2))
    return other, m


def _differs(got: tuple, ref: tuple, rel: float = 1e-3) -> str | None:
    """None when two (classes, scores) results agree; else what differs. Scores may differ by ``rel`` times
    their scale (float rounding differs between batch sizes), and classes only where the reference's top
    two scores are within twice that (near ties); without scores, classes must be equal."""
    (c1, s1), (c0, s0) = got, ref
    k = len(c0)
    if s1 is None or s0 is None:
        bad = int((c1 != c0).sum())
        return f"gives {bad} of {k} classes different from one-by-one runs" if bad else None
    finite = np.isfinite(s0)
    if not np.array_equal(np.isfinite(s1), finite):
        return "gives non-finite scores where one-by-one runs do not, or vice versa"
    diff = float(np.abs(s1 - s0)[finite].max(initial=0.0))
    tol = rel * max(float(np.abs(s0[finite]).max(initial=0.0)), 1e-3)
    if diff > tol:
        return f"gives scores up to {diff:.3g} away from one-by-one runs (tolerance {tol:.3g})"
    top2 = np.sort(np.where(finite, s0, -np.inf), axis=1)[:, -2:]
    bad = (s1.argmax(1) != s0.argmax(1)) & (top2[:, 1] - top2[:, 0] > 2 * tol)
    return f"gives {int(bad.sum())} of {k} classes different from one-by-one runs" if bad.any() else None


def noisy_inputs(smoothed, x: np.ndarray, rows: int) -> np.ndarray:
    """``rows`` model inputs x + N(0, sigma^2) for image x ([0,1] pixel units), from the check's own seed."""
    pre = smoothed.preprocessor(np.shape(x))
    clean = pre.clean(x)
    eps = np.random.default_rng(NOISE_SEED).standard_normal((rows, *pre.model_shape), dtype=np.float32)
    return pre.noisy(clean, eps, smoothed.sigma)


def check_batch_equivalence(
    smoothed, x: np.ndarray, batch_size: int | None = None, *, runner=None, total: int | None = None
) -> dict:
    """Verify that batches of ``batch_size`` (default the smoothed classifier's) and one other size give
    the noisy copies of image ``x`` the classes they get one by one; refuse, or say "per-sample fallback"
    (then :meth:`~rs_onnx.smoothing.SmoothedClassifier.verify_batches` runs the model one sample per run).
    ``runner``: what runs the model (default the smoothed classifier; a :meth:`OnnxClassifier.scratch` copy
    keeps the run's session at one shape); ``total``: the run's samples (:func:`check_sizes`).

    Memory: one batch of model inputs (the run's sampler holds about three). Returns a record for
    meta.json: {"batch_sizes": [...], "rows_one_by_one": m, "result": "ok" | "per-sample fallback"}.
    Raises ModelError when the batches disagree and the classifier cannot run one sample at a time.
    """
    clf = smoothed.classifier
    runner = clf if runner is None else runner
    b = int(batch_size or smoothed.batch_size)
    record = {"batch_sizes": [b], "rows_one_by_one": 0, "result": "ok"}
    if b < 2 or getattr(clf, "batch_mode", None) == "per-sample" or getattr(clf, "device_noise", False):
        record["result"] = (
            "not needed (one sample per run)"
            if b < 2 or getattr(clf, "batch_mode", None) == "per-sample"
            else "not checked (device noise)"
        )
        return record
    inputs = noisy_inputs(smoothed, x, b)
    while True:  # out of memory: halve, as the sampler does for its model calls, and check that size
        try:
            full = _classes_and_scores(runner, inputs[:b])
            break
        except Exception as err:  # onnxruntime raises its own types
            if b <= 1 or not is_out_of_memory(err) or getattr(clf, "cuda_graph", False):
                raise
            b //= 2
            record["out_of_memory_at"] = 2 * b
    inputs = inputs[:b]
    other, m = check_sizes(b, total)
    half = _classes_and_scores(runner, inputs[:other])
    singles = [_classes_and_scores(runner, inputs[i : i + 1]) for i in range(m)]
    ref = (
        np.concatenate([s[0] for s in singles]),
        None if any(s[1] is None for s in singles) else np.concatenate([s[1] for s in singles]),
    )
    record.update(batch_sizes=[b, other], rows_one_by_one=m)
    rel = 1e-2 if getattr(clf, "float_type", "fp32") == "fp16" else 1e-3

    def head(r, k):
        return r[0][:k], None if r[1] is None else r[1][:k]

    reason = next(
        (
            f"a batch of {size} {why}"
            for size, why in (
                (b, _differs(head(full, m), ref, rel)),
                (other, _differs(head(half, min(m, other)), head(ref, other), rel)),
                (other, _differs(head(half, other), head(full, other), rel)),
            )
            if why
        ),
        None,
    )
    if reason is None:
        return record
    name = getattr(clf, "path", None)
    what = f"model {name.name if name is not None else type(clf).__name__}"
    can_fall_back = getattr(clf, "batch_mode", None) in ("dynamic", "rewritten") and not getattr(
        clf, "cuda_graph", False
    )
    if not can_fall_back:
        raise ModelError(
            f"{what}: on noisy copies of the first example, {reason}; expected each sample's class not to "
            "depend on the others in its batch (pass --batch-size 1, or export the model in eval mode "
            "with a dynamic batch)"
        )
    log.warning(
        "%s: on noisy copies of the first example, %s; falling back to one sample per run (slower; "
        "export the model in eval mode with a dynamic batch to avoid this)",
        what,
        reason,
    )
    record["result"] = "per-sample fallback"
    record["reason"] = reason
    return record


def check_batches_once(smoothed, x: np.ndarray, samples: int, runner=None, total: int | None = None) -> dict | None:
    """:func:`check_batch_equivalence` for an ONNX classifier (one with batch modes; None for others), at the
    batch size a count of ``samples`` samples uses: the full batch when the sampler pads (CUDA). When it pads,
    the check runs on ``runner``, by default a :meth:`~rs_onnx.classifier.OnnxClassifier.scratch` copy (its own
    session, freed after), so that the run's session sees only the run's batch shape. ``total``: the run's
    samples (default ``samples``), which bounds the check's extra rows (:func:`check_sizes`)."""
    clf = smoothed.classifier
    if getattr(clf, "batch_mode", None) is None or getattr(smoothed, "audit", False):
        return None  # not an ONNX classifier, or audit mode (its graph scan decides batching)
    padded = clf.prefers_fixed_batch
    batch = smoothed.batch_size if padded else min(smoothed.batch_size, max(1, int(samples)))
    if runner is None and padded and hasattr(clf, "scratch"):
        runner = clf.scratch(quick_plans=True)
    return check_batch_equivalence(smoothed, x, batch, runner=runner, total=samples if total is None else total)


def clean_accuracy(clf, smoothed, images: list[np.ndarray], labels: list[int]) -> dict | None:
    """The base classifier's accuracy on clean images (one forward pass each, no noise).

    images : [0,1] pixel units, one shape. labels : their labels (-1: unlabelled, skipped). Returns
    {"examples", "correct", "accuracy", "chance"} (chance 1/K, None when K is unknown) or None when no
    example has a label.
    """
    pairs = [(x, int(y)) for x, y in zip(images, labels) if int(y) >= 0]
    if not pairs:
        return None
    from .preprocess import Preprocessor

    pre = Preprocessor(smoothed.spec, np.shape(pairs[0][0]), clf.input_shape, clf.input_dtype)  # plain, no audit
    batch = np.stack([pre.cast(pre.clean(x)[None])[0] for x, _ in pairs])
    predicted = np.asarray(clf.predict(batch), np.int64)
    truth = np.array([y for _, y in pairs])
    correct = int((predicted == truth).sum())
    # chance is 1/K for the model's K (its scores, or an index output's declared classes, or num_classes given);
    # never from the labels seen: K is not known from them, and a guess from them could hide a broken model
    k = getattr(clf, "num_classes", None) or getattr(smoothed, "num_classes", None)
    chance = 1.0 / k if k else None
    return {"examples": len(pairs), "correct": correct, "accuracy": correct / len(pairs), "chance": chance}


def near_chance(record: dict | None) -> bool:
    """Accuracy within a quarter of the way from chance (1/K) to 1, on at least 10 examples (False when
    chance is unknown: an index output whose K the model does not declare)."""
    if not record or record["examples"] < 10 or record.get("chance") is None:
        return False
    chance = record["chance"]
    return record["accuracy"] <= chance + (1.0 - chance) / 4


ONE_CLASS_MIN = 10
"""Answers needed (examples not abstained on) before one class for all of them is worth a note."""


def one_class_note(predict, labels) -> str | None:
    """A note when the smoothed classifier answers one class for every example it did not abstain on (at
    least :data:`ONE_CLASS_MIN` of them) while the labels seen span several classes (or are unknown): a
    broken export, wrong preprocessing or a sigma far too large. None otherwise.

    predict, labels : int [N] (ABSTAIN = -1; labels -1 when unlabelled).
    """
    predict, labels = np.asarray(predict, np.int64), np.asarray(labels, np.int64)
    answered = predict[predict != ABSTAIN]
    if answered.size < ONE_CLASS_MIN or np.unique(answered).size != 1:
        return None
    seen = np.unique(labels[labels >= 0])
    if seen.size == 1:
        return None  # data of one class: one answer is what a good model gives
    span = f"while the labels span {seen.size} classes" if seen.size else "(no labels)"
    return (
        f"the smoothed classifier answers class {int(answered[0])} for all {answered.size} examples it did "
        f"not abstain on {span}: a broken export, wrong preprocessing (--preset, --scale, --layout) or a "
        "sigma far too large for this model"
    )
