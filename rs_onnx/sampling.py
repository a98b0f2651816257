"""The counting loop: noisy copies of several examples, packed into batches, classified and counted.

Noise threads fill blocks (numpy releases the GIL while drawing) ahead of the classifier through a
bounded window of futures; the main thread packs block rows into fixed-size batches, runs the
model, and adds the predicted classes to per-task counts. Memory is bounded by the window, not by n.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import noise
from .preprocess import Preprocessor

if TYPE_CHECKING:
    from .classifier import Classifier


@dataclass(frozen=True)
class Task:
    """n noisy samples of one clean example (model layout, normalised), counted under ``phase``."""

    clean: np.ndarray
    example: int
    phase: int
    n: int


def default_noise_threads() -> int:
    """Half the cores (the other half runs the model on CPU), at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class Sampler:
    """Counts the base classifier's answers on Gaussian perturbations.

    Parameters
    ----------
    classifier : maps model inputs [B, *model_shape] to int64 classes [B] (-1 for non-finite outputs).
    preprocessor : builds model inputs from clean + sigma * noise.
    sigma : noise standard deviation, in [0,1] pixel units.
    entropy : seed of every noise stream.
    batch_size : samples per model call.
    noise_threads : threads drawing noise; 0 draws in the calling thread.
    """

    def __init__(self, classifier: "Classifier", preprocessor: Preprocessor, sigma: float, entropy: int,
                 batch_size: int, noise_threads: int | None = None) -> None:
        self.classifier = classifier
        self.pre = preprocessor
        self.sigma = float(sigma)
        self.entropy = int(entropy)
        self.batch_size = int(batch_size)
        self.noise_threads = default_noise_threads() if noise_threads is None else int(noise_threads)
        self.block_size = noise.block_size_for(int(np.prod(preprocessor.model_shape)))
        self.num_classes = int(classifier.num_classes or 0)

    def _noisy_block(self, task: Task, block: noise.Block) -> tuple[int, np.ndarray]:
        eps = noise.draw(self.entropy, block, self.pre.model_shape)
        return block.slot, self.pre.noisy(task.clean, eps, self.sigma)

    def _blocks(self, tasks: Sequence[Task], pool: ThreadPoolExecutor | None):
        """Yields (slot, model inputs) block by block, in order, at most a bounded window ahead."""
        jobs = ((tasks[s], b) for s, t in enumerate(tasks)
                for b in noise.split(s, t.example, t.phase, t.n, self.block_size))
        if pool is None:
            for task, block in jobs:
                yield self._noisy_block(task, block)
            return
        window = []
        depth = 2 * self.noise_threads + 2
        for task, block in jobs:
            window.append(pool.submit(self._noisy_block, task, block))
            if len(window) >= depth:
                yield window.pop(0).result()
        for fut in window:
            yield fut.result()

    def count(self, tasks: Sequence[Task], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Counts per task: int64 [len(tasks), K + 1]; column K counts non-finite model outputs."""
        counts = np.zeros((len(tasks), self.num_classes + 1), dtype=np.int64)
        batch = np.empty((self.batch_size, *self.pre.model_shape), dtype=self.pre.dtype)
        slots = np.empty(self.batch_size, dtype=np.int64)
        fill = 0

        def flush(rows: int) -> None:
            nonlocal counts
            classes = self.classifier.predict(batch[:rows])
            k = counts.shape[1] - 1
            top = int(classes.max(initial=-1))
            if top >= k:  # more classes than announced (index outputs of unknown range)
                grown = np.zeros((len(tasks), top + 2), dtype=np.int64)
                grown[:, :k] = counts[:, :k]
                grown[:, -1] = counts[:, -1]
                counts, k = grown, top + 1
            classes = np.where(classes < 0, k, classes)
            counts += np.bincount(slots[:rows] * (k + 1) + classes, minlength=counts.size).reshape(counts.shape)
            if progress:
                progress(rows)

        pool = ThreadPoolExecutor(self.noise_threads) if self.noise_threads > 0 else None
        try:
            for slot, rows in self._blocks(tasks, pool):
                start = 0
                while start < len(rows):
                    take = min(len(rows) - start, self.batch_size - fill)
                    batch[fill:fill + take] = rows[start:start + take]
                    slots[fill:fill + take] = slot
                    fill += take
                    start += take
                    if fill == self.batch_size:
                        flush(fill)
                        fill = 0
            if fill:
                flush(fill)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return counts
