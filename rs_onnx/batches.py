"""How a run's samples are grouped and batched: examples per group, the largest count, and the host memory a
batch size needs (checked before any file is written)."""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from .config import RunConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000
"""The batch size of a short run with no --batch-size (:func:`rs_onnx.run.resolve_batch` caps it by memory)."""


def group_size(cfg: RunConfig, batch_size: int | None = None) -> int:
    """Examples sampled together: several when n is small next to the batch (``batch_size``, default
    ``cfg.batch_size``), so that batches stay full (and 32 in sequential mode, where examples drop out
    between looks)."""
    if cfg.sequential:
        return 32
    return max(1, min(64, math.ceil((batch_size or cfg.batch_size or DEFAULT_BATCH) / cfg.n)))


def largest_count(cfg: RunConfig, batch_size: int | None = None) -> int:
    """Samples in the largest count the sampler makes: a group of examples at max(n0, n) samples each (its
    batches hold at most this many rows)."""
    return group_size(cfg, batch_size) * max(cfg.n0, cfg.n)


GROUPS_HELD = 4
"""Groups of examples in memory at once at most: the one sampled and three decoded ahead (image files)."""


def memory_need(cfg: RunConfig, clf, pre, batch: int) -> int:
    """Host bytes a run at ``batch`` samples per batch holds at its peak, as far as rs-onnx allocates them:
    the sampler's buffers for its largest count (:func:`largest_count`; :func:`rs_onnx.sampling.host_bytes`)
    and the examples in flight (:data:`GROUPS_HELD` groups as float32 images, one as model inputs).
    ``pre``: the run's Preprocessor (model shape and dtype). The model's own working memory is not included."""
    from .sampling import DEFAULT_INDEX_CLASSES, default_noise_threads, host_bytes

    group = group_size(cfg, batch)
    threads = cfg.noise_threads if cfg.noise_threads is not None else default_noise_threads(clf.device)
    sampler = host_bytes(
        batch,
        largest_count(cfg, batch),
        pre.model_shape,
        pre.dtype,
        noise_threads=threads,
        num_classes=int(clf.num_classes or DEFAULT_INDEX_CLASSES),
        pad=bool(getattr(clf, "prefers_fixed_batch", False)),
        device_noise=bool(getattr(clf, "device_noise", False)),
    )
    values = int(np.prod(pre.image_shape)) * GROUPS_HELD + int(np.prod(pre.model_shape))
    return sampler + group * 4 * values


def memory_fits(cfg: RunConfig, clf, pre) -> Callable[[int], bool] | None:
    """``fits(batch)``: :func:`memory_need` at most the host memory available now
    (:func:`rs_onnx.devices.available_memory`); None where that is unknown (nothing is checked)."""
    from . import devices

    available = devices.available_memory()
    if available is None:
        return None
    return lambda batch: memory_need(cfg, clf, pre, batch) <= available


def memory_check(cfg: RunConfig, clf, pre, batch: int) -> None:
    """Refuse (ConfigError, one line) a batch size whose :func:`memory_need` exceeds the host memory available,
    before any file is written: both figures in GiB, and the largest batch size that fits."""
    from . import devices
    from .sampling import largest_fitting

    available = devices.available_memory()
    if available is None:
        log.info("host memory available unknown here: the batch size's memory is not checked")
        return
    need = memory_need(cfg, clf, pre, batch)
    if need <= available:
        return

    def fits(b: int) -> bool:
        return memory_need(cfg, clf, pre, b) <= available

    fitting = largest_fitting(batch, fits)
    if fits(fitting):
        todo = f"expected a smaller --batch-size (at most {fitting:,} fits now)"
    else:
        todo = "expected a machine with more free memory (not even a batch of 1 fits)"
    raise ConfigError(
        f"batch size {batch:,}: the run needs {_gib(need)} GiB of host memory for its batches of "
        f"{'x'.join(map(str, pre.model_shape))} {pre.dtype} inputs (noise, model inputs and outputs) and the "
        f"examples in flight, more than the {_gib(available)} GiB available; {todo}, or --batch-size auto"
    )


def _gib(nbytes: int) -> str:
    value = nbytes / 2**30
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"
