"""The counting loop: noisy copies of several examples, packed into batches, classified and counted.

The samples of all tasks form one sequence, cut into batches of ``batch_size`` rows and, independently,
into noise blocks (:mod:`rs_onnx.noise`). Batches live in a ring of preallocated buffers. Noise threads
each take whole blocks, draw them from the block's own stream straight into the ring rows where they
belong (a block that straddles two batches is written in two pieces from the same stream), and turn
them into model inputs in place: no per-block allocation and no copy from blocks into batches when
the model takes float32. The main thread waits for the blocks of the next batch, runs the classifier
on the ring slice and counts. A block is only handed out once every ring buffer it writes to is free,
so memory is bounded by the ring (at most about ``3 * batch_size + (threads + 1) * block_size``
rows), not by n.

Results are identical whatever the batch size, the number of threads, padding or splitting, because
every sample's noise depends only on (seed, example, phase, block, row) and the counts are sums.

With a classifier that draws its own noise (``device_noise``, CUDA only) only the clean examples and the
example index of each row leave the host; that noise is reproducible only for the same seed, batch size,
order of calls, onnxruntime version and GPU (see :func:`rs_onnx.graph.prepend_noise`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import noise
from .cuda import is_out_of_memory
from .errors import ConfigError
from .preprocess import Preprocessor

logger = logging.getLogger(__name__)

CPU_BATCH_CANDIDATES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Batch sizes the automatic probe tries when the model runs on the CPU."""
CUDA_BATCH_CANDIDATES = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
"""Batch sizes the automatic probe tries on CUDA (capped by memory)."""
BATCH_TIE = 0.03
"""The automatic probe takes the smallest batch size at most this much slower per sample than the fastest."""
DEFAULT_INDEX_CLASSES = 1000
"""Classes assumed for a model that outputs class indices and does not say how many classes it has."""
HOST_BATCH_BYTES = 1 << 30
"""Largest host batch buffer (bytes) the automatic probe considers (the ring holds about three)."""


@runtime_checkable
class Classifier(Protocol):
    """Every member of a base classifier f that the sampler, the batch probe and SmoothedClassifier read.

    ``predict``: x [B, *input_shape] (``input_dtype``) -> int64 class indices [B], -1 for a non-finite
    output. ``num_classes``: K, or None when unknown (the sampler then assumes DEFAULT_INDEX_CLASSES;
    indices outside 0..K-1 count as no class).
    ``device``: "cpu" or "cuda[:i]". ``prefers_fixed_batch``: pad the last batch to the full batch size.
    ``device_noise``: the classifier draws its own noise; the sampler then calls
    ``predict_noisy(clean [E, *model_shape] float32, index int64 [B] into clean, gain float32 [*model_shape],
    seed) -> int64 [B]`` instead of ``predict``. ``cuda_graph``: the model is replayed as a captured CUDA
    graph (one fixed batch shape, so out-of-memory is not retried with smaller batches).
    Optional (``numpy.zeros`` when absent): ``host_buffer(shape, dtype) -> ndarray``, a zero-filled array the
    sampler's ring lives in (OnnxClassifier: pinned memory on CUDA, so that batches reach the device by DMA);
    without it, ``numpy.zeros``.
    :class:`rs_onnx.classifier.OnnxClassifier` implements it; :class:`HostClassifier` gives the defaults of a
    plain host-side classifier to stand-ins.
    """

    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    num_classes: int | None
    device: str
    prefers_fixed_batch: bool
    device_noise: bool
    cuda_graph: bool

    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def predict_noisy(self, clean: np.ndarray, index: np.ndarray, gain: np.ndarray, seed: int) -> np.ndarray: ...


class HostClassifier:
    """Defaults of the :class:`Classifier` members for a classifier that runs on the host and takes host noise.

    Subclasses set ``input_shape``, ``input_dtype``, ``num_classes`` and define ``predict``.
    """

    device: str = "cpu"
    prefers_fixed_batch: bool = False
    device_noise: bool = False
    cuda_graph: bool = False

    def predict_noisy(self, clean: np.ndarray, index: np.ndarray, gain: np.ndarray, seed: int) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} takes host noise (device_noise is False)")


def check_classifier(classifier) -> None:
    """Raise ConfigError naming the :class:`Classifier` members that ``classifier`` lacks."""
    members = [
        "input_shape",
        "input_dtype",
        "num_classes",
        "device",
        "prefers_fixed_batch",
        "device_noise",
        "cuda_graph",
        "predict",
    ]
    missing = [m for m in members if not hasattr(classifier, m)]
    if not missing and classifier.device_noise and not hasattr(classifier, "predict_noisy"):
        missing = ["predict_noisy"]
    if missing:
        raise ConfigError(
            f"base classifier {type(classifier).__name__} lacks {', '.join(missing)}; expected every "
            "member of rs_onnx.sampling.Classifier (subclass rs_onnx.sampling.HostClassifier for the "
            "defaults of a host-side model)"
        )


@dataclass(frozen=True)
class Task:
    """n noisy samples of one clean example (model layout, normalised), counted under ``phase``."""

    clean: np.ndarray
    example: int
    phase: int
    n: int
    block: int = 0  # first noise block: samples block * block_size .. of the (example, phase) stream


def _on_cuda(device) -> bool:
    return str(device or "cpu").startswith("cuda")


def default_noise_threads(device: str | None = "cpu") -> int:
    """Noise threads for a model on ``device``.

    CPU: one per 4 cores, at least 2, at most 8. Noise costs about 5% of a CIFAR ResNet-20's compute
    (21 us of 3072 normals against ~430 us of model per image on one core), so one thread keeps up; but
    threads only run while there is noise to draw (nothing spins), and a second one helps cheap models
    and busy machines: on 2 shared cores the digits CNN (noise ~40% of its compute) certified 1.22x
    (idle machine) to 1.45x (loaded) faster with 2 noise threads than with 0, and 1.13-1.17x with 1;
    ResNet-20 was the same with 0, 1, 2 or 3 within the noise of the measurement.
    CUDA: with host noise the noise is the bottleneck, so all cores but the one feeding the GPU, at most 16.
    """
    cores = os.cpu_count() or 2
    if _on_cuda(device):
        return max(1, min(16, cores - 1))
    return max(2, min(8, cores // 4))


def ring_slots(batch: int, total: int, block_size: int, noise_threads: int) -> int:
    """Batches in the sampler's ring for a count of ``total`` samples at ``batch`` rows per batch: those one
    block writes to, plus enough for every noise thread to draw a block ahead (never more than the count's)."""
    span = (min(block_size, total) - 1) // batch + 2  # most batches one block writes to
    ahead = max(1, math.ceil(noise_threads * block_size / batch))
    return min(-(-total // batch), span + ahead)


def host_bytes(
    batch: int,
    total: int,
    model_shape: Sequence[int],
    dtype,
    *,
    noise_threads: int,
    num_classes: int,
    pad: bool = False,
    device_noise: bool = False,
) -> int:
    """Host bytes :meth:`Sampler.count` holds at its peak for ``total`` samples at ``batch`` rows per batch.

    Counted from what the sampler allocates: the ring (:func:`ring_slots` batches of model inputs, in which
    the noise is drawn in place when the model takes float32), for other dtypes one float32 noise buffer of
    a block and the block's cast per noise thread, and per batch the model's float32 scores ([batch, K]),
    classes, validity and the counting indices. Not counted: the model's own working memory (onnxruntime's
    activations and arena), which only the model knows. With ``device_noise`` no noise is on the host.
    """
    rows = batch if pad else max(1, min(batch, total))  # the batch count() really uses
    dim = int(np.prod(tuple(model_shape), dtype=np.int64))
    item = np.dtype(dtype).itemsize
    per_row = 4 * int(num_classes) + 8 + 1 + 3 * 8  # scores, classes, validity, counting indices
    if device_noise:
        return rows * (per_row + 8)  # the example index of each row
    block = noise.block_size_for(dim)
    ring = ring_slots(rows, total, block, noise_threads) * rows * dim * item
    scratch = 0 if np.dtype(dtype) == np.float32 else max(1, noise_threads) * block * dim * (4 + item)
    return ring + scratch + rows * per_row


def largest_fitting(limit: int, fits: Callable[[int], bool]) -> int:
    """The largest batch size b <= ``limit`` with ``fits(b)``, by bisection (``fits`` need not be monotone:
    the answer is always one that fits), or 1 when none does (the caller's check then refuses it)."""
    limit = max(1, int(limit))
    if fits(limit):
        return limit
    if not fits(1):
        return 1
    lo, hi = 1, limit  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _random_batch(shape, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, 0), min(info.max, 255), shape, endpoint=True).astype(dtype)
    return rng.random(shape) < 0.5


def choose_batch(per_sample: dict[int, float]) -> tuple[int, str]:
    """The probe's rule: (the smallest size whose seconds per sample are within :data:`BATCH_TIE` of the
    fastest, the rule in words). The sizes near the top are alike within the noise of a short probe, and a
    smaller batch needs less memory and picks the same size from run to run."""
    fastest = min(per_sample, key=lambda b: (per_sample[b], b))
    best = min(b for b, t in per_sample.items() if t <= (1 + BATCH_TIE) * per_sample[fastest])
    if best == fastest:
        return best, "the fastest per sample"
    return best, (
        f"the smallest size within {100 * BATCH_TIE:g}% of the fastest per sample "
        f"(the fastest, {fastest}, was {100 * (per_sample[best] / per_sample[fastest] - 1):.1f}% faster)"
    )


def probe_batch_size(
    classifier: Classifier,
    candidates: Sequence[int] | None = None,
    *,
    max_bytes: int | None = None,
    min_seconds: float = 0.2,
    max_run_seconds: float | None = None,
    budget_seconds: float = 30.0,
    fits: Callable[[int], bool] | None = None,
) -> dict[str, Any]:
    """The fastest batch size per sample for ``classifier``, from a short probe on random inputs.

    Tries ``candidates`` in increasing order (default :data:`CPU_BATCH_CANDIDATES` or
    :data:`CUDA_BATCH_CANDIDATES` by ``classifier.device``): one warm-up run, then runs until
    ``min_seconds`` have passed (at least two), keeping the fastest run (robust to other processes on a
    shared machine). Stops at a batch over ``max_bytes`` of input, an out-of-memory error, a run longer
    than ``max_run_seconds`` (2 s on CPU, 1 s on CUDA), two sizes in a row more than 5% slower per
    sample than the best, or ``budget_seconds`` of probing. Returns the smallest size within
    :data:`BATCH_TIE` (3%) of the fastest per sample. ``fits(b)``: False for a batch size the run cannot
    hold in host memory (run.prepare's check); such sizes are never tried nor chosen (when no candidate
    fits, the largest smaller size that does, by :func:`largest_fitting`, is the only one tried).

    Returns the probe: {"batch_size": int, "seconds_per_sample": {str(size): seconds}, "stopped": why the
    probe stopped, "probe_seconds": seconds spent}; run.py records it in meta.json as ``batch_probe``.
    """
    gpu = _on_cuda(classifier.device)
    sizes = sorted({int(c) for c in (candidates or (CUDA_BATCH_CANDIDATES if gpu else CPU_BATCH_CANDIDATES))})
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"batch size candidates {list(candidates or [])}: expected positive integers")
    everything = "all candidates tried"
    if fits is not None and not all(fits(b) for b in sizes):
        sizes = [b for b in sizes if fits(b)] or [largest_fitting(sizes[0] - 1, fits)]
        everything = f"larger sizes than {sizes[-1]} do not fit in host memory"
    dtype = np.dtype(classifier.input_dtype)
    row_bytes = int(np.prod(classifier.input_shape)) * dtype.itemsize
    max_bytes = HOST_BATCH_BYTES if max_bytes is None else int(max_bytes)
    max_run = (1.0 if gpu else 2.0) if max_run_seconds is None else float(max_run_seconds)
    rng = np.random.default_rng(0)
    per_sample: dict[int, float] = {}
    stop = ""
    start = time.perf_counter()
    best: int | None = None
    worse = 0
    for b in sizes:
        if b * row_bytes > max_bytes and per_sample:
            stop = f"batch {b} over {max_bytes} bytes"
            break
        x = _random_batch((b, *classifier.input_shape), dtype, rng)
        try:
            classifier.predict(x)  # warm-up: allocations, kernel choices for this shape
            runs: list[float] = []
            t_end = time.perf_counter() + min_seconds
            while len(runs) < 2 or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                classifier.predict(x)
                runs.append(time.perf_counter() - t0)
                if runs[-1] > max_run:
                    break
        except Exception as err:  # onnxruntime raises its own types
            if not is_out_of_memory(err) or not per_sample:
                raise
            stop = f"out of memory at batch {b}"
            break
        per_sample[b] = min(runs) / b
        if best is None or per_sample[b] < per_sample[best]:
            best, worse = b, 0
        elif per_sample[b] > 1.05 * per_sample[best]:
            worse += 1
        if worse >= 2:
            stop = "two sizes in a row over 5% slower per sample than the fastest"
            break
        if min(runs) > max_run:
            stop = f"a run of batch {b} takes {min(runs):.2f} s"
            break
        if time.perf_counter() - start > budget_seconds:
            stop = f"probe budget of {budget_seconds:.0f} s spent"
            break
    best, why = choose_batch(per_sample)
    logger.info(
        "automatic batch size %d: %s (the probe stopped: %s); per sample %s",
        best,
        why,
        stop or everything,
        ", ".join(f"{k}: {1e6 * v:.3g} us" for k, v in per_sample.items()),
    )
    return {
        "batch_size": int(best),
        "seconds_per_sample": {str(k): v for k, v in per_sample.items()},
        "stopped": stop or everything,
        "probe_seconds": time.perf_counter() - start,
    }


def auto_batch_size(classifier: Classifier, candidates: Sequence[int] | None = None, **options: Any) -> int:
    """The batch size that :func:`probe_batch_size` picks (same arguments); the probe's record is
    :func:`probe_batch_size`'s return value (nothing is stored on the classifier)."""
    return int(probe_batch_size(classifier, candidates, **options)["batch_size"])


@dataclass(frozen=True)
class _Planned:
    """A block and where its rows go: global rows [start, start + size) of the count's sample sequence."""

    task: int
    block: noise.Block
    start: int
    first: int  # first batch it writes to
    last: int  # last batch it writes to


class Sampler:
    """Counts the base classifier's answers on noisy perturbations (Gaussian, uniform or Laplace).

    Parameters
    ----------
    classifier : maps model inputs [B, *model_shape] to int64 classes [B] (-1 for non-finite outputs).
    preprocessor : builds model inputs from clean + sigma * noise.
    sigma : noise scale in [0,1] pixel units: the standard deviation (gaussian) or lambda (uniform
        half-width, Laplace scale); see :mod:`rs_onnx.noise`.
    entropy : seed of every noise stream.
    batch_size : samples per model call; None: :func:`probe_batch_size` now (a few seconds; run.py probes
        once per run and passes the result down instead).
    noise_threads : threads drawing noise; 0 draws in the calling thread; None: :func:`default_noise_threads`
        for the classifier's device.
    pad : give the classifier full batches only (the last one padded with stale rows, not counted);
        None: ``classifier.prefers_fixed_batch`` (True on CUDA).
    noise_kind : a name in :data:`rs_onnx.noise.KINDS` (default gaussian).
    num_classes : K, fixed before any counting: the count columns are classes 0..K-1 and one "no class"
        column. None: ``classifier.num_classes``, else (index outputs of unknown range)
        :data:`DEFAULT_INDEX_CLASSES`. Indices outside 0..K-1 (negative, non-finite, too large) count
        as "no class", never as a class.
    """

    def __init__(
        self,
        classifier: Classifier,
        preprocessor: Preprocessor,
        sigma: float,
        entropy: int,
        batch_size: int | None = None,
        noise_threads: int | None = None,
        *,
        pad: bool | None = None,
        noise_kind: str = "gaussian",
        num_classes: int | None = None,
    ) -> None:
        self.kind = noise.get_kind(noise_kind)
        check_classifier(classifier)
        self.classifier = classifier
        self.pre = preprocessor
        self.sigma = float(sigma)
        self.entropy = int(entropy)
        if batch_size is None:
            batch_size = probe_batch_size(classifier)["batch_size"]
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch size {self.batch_size}: expected at least 1")
        self.noise_threads = default_noise_threads(classifier.device) if noise_threads is None else int(noise_threads)
        self.pad = bool(classifier.prefers_fixed_batch if pad is None else pad)
        self.device_noise = bool(classifier.device_noise)
        if self.device_noise and self.kind.name != "gaussian":
            raise ConfigError(
                f"device noise with noise={self.kind.name}: the GPU draws Gaussian noise only; expected "
                "--noise gaussian or host noise (no --device-noise)"
            )
        self.block_size = noise.block_size_for(int(np.prod(preprocessor.model_shape)))
        self.num_classes = int(num_classes or classifier.num_classes or DEFAULT_INDEX_CLASSES)
        if self.num_classes < 1:
            raise ConfigError(f"num_classes={self.num_classes}: expected at least 1")
        # the optional member host_buffer (not in the Protocol's body, so that classifiers without it still are
        # Classifiers): where the ring lives (pinned memory on CUDA), else ordinary zeroed memory
        self._ring_alloc = classifier.host_buffer if hasattr(classifier, "host_buffer") else np.zeros
        self.out_of_range = 0  # class indices outside 0..K-1 seen (counted as no class)
        self._chunk: int | None = None  # set when an out-of-memory error halved the model batch
        self._local = threading.local()

    # ------------------------------------------------------------------ model calls
    def _predict(self, x: np.ndarray) -> np.ndarray:
        """Classes of x; on out-of-memory, halves the rows per model call and goes on (same results)."""
        while True:
            chunk = self._chunk or len(x)
            try:
                if chunk >= len(x):
                    return self.classifier.predict(x)
                return np.concatenate([self.classifier.predict(x[s : s + chunk]) for s in range(0, len(x), chunk)])
            except Exception as err:  # onnxruntime raises its own types
                if chunk <= 1 or not is_out_of_memory(err) or self.classifier.cuda_graph:
                    raise
                self._chunk = max(1, min(chunk, len(x)) // 2)
                logger.warning(
                    "out of memory at %d samples per model call (%s); going on with %d",
                    chunk,
                    " ".join(str(err).split())[:200],
                    self._chunk,
                )

    # ------------------------------------------------------------------ noise
    def _scratch(self, rows: int) -> np.ndarray:
        """A per-thread float32 buffer of at least ``rows`` samples (for model dtypes other than float32)."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < rows:
            buf = self._local.buf = np.empty((max(rows, self.block_size), *self.pre.model_shape), np.float32)
        return buf[:rows]

    def _fill(self, plan: _Planned, tasks: Sequence[Task], ring: np.ndarray, batch: int, slots: int) -> None:
        """Draws one block into its ring rows and turns it into model inputs there."""
        rng = noise.generator(self.entropy, plan.block)
        clean = tasks[plan.task].clean
        direct = ring.dtype == np.float32
        g, end = plan.start, plan.start + plan.block.size
        while g < end:
            j = g // batch
            take = min(end, (j + 1) * batch) - g
            lo = (j % slots) * batch + (g - j * batch)
            if direct:
                view = self.kind.fill(rng, ring[lo : lo + take])
                self.pre.noisy(clean, view, self.sigma)  # in place for float32
            else:
                eps = self.kind.fill(rng, self._scratch(take))
                ring[lo : lo + take] = self.pre.noisy(clean, eps, self.sigma)
            g += take

    def _plan(self, tasks: Sequence[Task], batch: int) -> list[_Planned]:
        """All of :meth:`_plan_iter` as a list (small task sets only: its length grows with n)."""
        return list(self._plan_iter(tasks, batch))

    def _plan_iter(self, tasks: Sequence[Task], batch: int) -> Iterator[_Planned]:
        """The blocks in sample order with the batches they write to, one at a time (memory independent of n)."""
        g = 0
        for s, t in enumerate(tasks):
            for b in noise.iter_split(s, t.example, t.phase, t.n, self.block_size, t.block):
                yield _Planned(s, b, g, g // batch, (g + b.size - 1) // batch)
                g += b.size

    # ------------------------------------------------------------------ counting
    def count(self, tasks: Sequence[Task], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Counts per task: int64 [len(tasks), K + 1]; column K counts samples with no class: non-finite model
        outputs and class indices outside 0..K-1."""
        counts = np.zeros((len(tasks), self.num_classes + 1), dtype=np.int64)
        total = sum(int(t.n) for t in tasks)
        if total == 0:
            return counts
        # Padded (CUDA): one batch shape for every phase, even n0 < batch. A new input shape costs the CUDA
        # provider seconds (cuDNN's algorithm search): measured on an H200, ResNet-110 CERTIFY at n = 20,000
        # spent ~3.5 s of its ~4 s in the two shape changes n0 -> batch -> n0 (benchmarks/gpu-results).
        batch = self.batch_size if self.pad else min(self.batch_size, total)
        ends = np.cumsum([int(t.n) for t in tasks])
        nbatches = -(-total // batch)
        state = {"counts": counts}

        def add(i: int, classes: np.ndarray) -> None:
            g0, rows = i * batch, min(batch, total - i * batch)
            slots = np.searchsorted(ends, np.arange(g0, g0 + rows), side="right")
            counts = state["counts"]
            k = counts.shape[1] - 1  # fixed before counting: never grows, never aliases
            classes = np.asarray(classes[:rows], np.int64)
            beyond = classes >= k
            if beyond.any():
                self._note_out_of_range(classes[beyond])
            classes = np.where((classes < 0) | beyond, k, classes)
            counts += np.bincount(slots * (k + 1) + classes, minlength=counts.size).reshape(counts.shape)
            if progress:
                progress(rows)

        if self.device_noise:
            if any(t.block for t in tasks):
                raise ConfigError("device noise counts whole examples only; expected tasks that start at block 0")
            self._count_on_device(tasks, batch, nbatches, total, ends, add)
        else:
            self._count_host(tasks, batch, nbatches, total, add)
        return state["counts"]

    def _note_out_of_range(self, beyond: np.ndarray) -> None:
        if not self.out_of_range:
            logger.warning(
                "the model returned class index %d, outside 0..%d: such samples count as no class "
                "(column nonfinite), never for a class; give num_classes if the model has more classes",
                int(beyond.max()),
                self.num_classes - 1,
            )
        self.out_of_range += int(beyond.size)

    def _count_host(self, tasks, batch: int, nbatches: int, total: int, add) -> None:
        plans = self._plan_iter(tasks, batch)
        slots = ring_slots(batch, total, self.block_size, self.noise_threads)
        ring = self._ring_alloc((slots * batch, *self.pre.model_shape), self.pre.dtype)  # zeros: padded rows defined
        threads = self.noise_threads
        pool = ThreadPoolExecutor(threads, thread_name_prefix="rs-onnx-noise") if threads > 0 else None
        pending: deque = deque()  # [plan, future or None, done], in order
        nxt = next(plans, None)
        try:
            for i in range(nbatches):
                while nxt is not None and nxt.last <= i + slots - 1:  # its ring rows are free
                    p = nxt
                    fut = pool.submit(self._fill, p, tasks, ring, batch, slots) if pool else None
                    pending.append([p, fut, False])
                    nxt = next(plans, None)
                for entry in pending:  # the blocks that write to batch i, done
                    p, fut, done = entry
                    if p.first > i:
                        break
                    if not done:
                        fut.result() if fut is not None else self._fill(p, tasks, ring, batch, slots)
                        entry[1:] = [None, True]
                while pending and pending[0][0].last <= i:
                    pending.popleft()
                lo = (i % slots) * batch
                rows = min(batch, total - i * batch)
                add(i, self._predict(ring[lo : lo + (batch if self.pad else rows)]))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _count_on_device(self, tasks, batch: int, nbatches: int, total: int, ends, add) -> None:
        """Noise drawn by the model's own graph: only clean examples and row indices leave the host."""
        clean = np.stack([np.asarray(t.clean, np.float32) for t in tasks])
        gain = (
            self.pre.noisy(
                np.zeros(self.pre.model_shape, np.float32), np.ones((1, *self.pre.model_shape), np.float32), self.sigma
            )[0]
            if self.pre.dtype == np.float32
            else self.pre.noise_gain(self.sigma)
        )
        for i in range(nbatches):
            g0 = i * batch
            rows = min(batch, total - g0)
            n = batch if self.pad else rows
            index = np.searchsorted(ends, np.minimum(np.arange(g0, g0 + n), total - 1), side="right")
            lo, hi = int(index[0]), int(index[-1]) + 1
            classes = self.classifier.predict_noisy(
                clean[lo:hi], index - lo, np.asarray(gain, np.float32), self.entropy
            )
            add(i, classes)
