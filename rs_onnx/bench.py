"""``rs-onnx bench``: how fast certification will be, for a model on this machine, before a day is spent on it.

Side by side in one run, at one batch size (given, or the automatic probe's best): the model's bare forward
rate (the ceiling: a plain ``session.run`` loop on a fixed batch of random inputs, a fresh session of the graph
rs-onnx runs, with the same session options), rs-onnx's CERTIFY rate with the options a run would use (device,
fp16, CUDA graph, device noise, provider options, noise threads), their ratio, and seconds per image at ``n``.
The two are measured in alternating rounds of the same number of samples, so that a drift in the machine's
load hits both; the ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .config import RunConfig
from .errors import ConfigError, UsageError

log = logging.getLogger(__name__)

DEFAULT_SIGMA = 0.25
"""Sigma when neither --sigma nor the model's metadata gives one (the rate barely depends on it)."""
WARM_SAMPLES_BATCHES = 2
"""Batches in the warm-up CERTIFY that also estimates the rate (to size the measured rounds)."""


def bare_loop(clf, batch: int, seed: int = 0):
    """``rate(samples) -> samples/s`` of a bare ``session.run`` loop over one fixed random batch of ``batch``
    inputs of ``clf``'s shape and dtype, on a fresh session of the graph ``clf`` runs (its ceiling)."""
    from .model_io import random_inputs

    session, feed = clf.bare_session()
    x = random_inputs((batch, *clf.input_shape), np.dtype(clf.input_dtype), np.random.default_rng(seed))
    inputs = feed(x)
    session.run(None, inputs)  # warm-up: allocations, kernel choices for this shape

    def rate(samples: int) -> float:
        runs = max(1, -(-int(samples) // batch))
        t = time.perf_counter()
        for _ in range(runs):
            session.run(None, inputs)
        return runs * batch / (time.perf_counter() - t)

    return rate


def _image(cfg: RunConfig, clf) -> np.ndarray:
    """The first selected image of DATA in [0,1] pixel units, or (no DATA) a random image of the model's shape."""
    if cfg.data is None:
        return np.random.default_rng(1).random(tuple(clf.input_shape), dtype=np.float32)
    from .data import load_from_config
    from .run import image_geometry

    channels, size = image_geometry(clf, cfg.layout)
    data = load_from_config(cfg, size, channels)
    if not len(data) or cfg.start >= len(data):
        raise ConfigError(f"data {data.source}: no example at index {cfg.start}; expected at least one")
    return data.image(cfg.start)


def _sigma(cfg: RunConfig, clf) -> float:
    from .run import resolve_sigma

    try:
        return resolve_sigma(cfg, clf)
    except ConfigError:
        log.info("no --sigma and no rs_onnx.sigma metadata: benchmarking at sigma=%g", DEFAULT_SIGMA)
        return DEFAULT_SIGMA


def bench_config(flags: dict) -> RunConfig:
    """The RunConfig of ``rs-onnx bench``'s flags (None: not given) over the YAML file ``config_path`` (certify's
    keys): the bundled digits model and data without MODEL; ``batch_size`` an integer or "auto". A model whose
    input dims are symbolic takes DATA's per-example shape, as certify does (or ``input_shape``)."""
    from .config import build_config, load_yaml
    from .guard import check_path_name
    from .run import bundled

    flags = dict(flags)
    path = flags.pop("config_path", None)
    if path is not None:
        check_path_name(path, "--config")
    values = {**(load_yaml(path) if path else {}), **{k: v for k, v in flags.items() if v is not None}}
    if not values.get("model"):
        if values.get("data"):
            raise ConfigError("bench: DATA given without MODEL; expected both, or neither for the bundled default")
        values.update(model=bundled("digits_cnn.onnx"), data=bundled("digits_eval.npz"))
    for key in ("model", "data"):
        if values.get(key):
            check_path_name(values[key], key.upper())
    batch = values.get("batch_size")
    if batch is not None:
        text = str(batch).strip().lower()
        try:
            values["batch_size"] = None if text == "auto" else int(text)
        except ValueError:
            raise UsageError(f"--batch-size {batch!r}: expected a positive integer or auto") from None
    cfg = build_config({}, values)[0]
    if cfg.data is not None:  # symbolic dims (an optimum export's [batch, channels, height, width]): the data's shape
        from .shapes import from_config

        cfg = from_config(cfg)[0]
    return cfg


def bench(cfg: RunConfig, *, seconds: float = 10.0, rounds: int = 3) -> dict:
    """Measure the ceiling and CERTIFY side by side for ``cfg`` (model, optional data, the run's options).

    ``seconds``: about how long the measured rounds take in all; ``rounds``: pairs (ceiling, CERTIFY) measured.
    Returns the JSON-able result (see ``rs-onnx bench --help`` for its keys).
    """
    from .run import open_classifier, open_smoothed, resolve_noise
    from .sampling import probe_batch_size

    if cfg.model is None:
        raise ConfigError("bench: no model; expected MODEL (an .onnx file)")
    if not seconds > 0 or rounds < 1:  # NaN too: it compares false with everything
        raise ConfigError(f"bench --seconds {seconds} (rounds {rounds}): expected seconds > 0 and rounds >= 1")
    if cfg.cuda_graph and cfg.batch_size is None:
        raise ConfigError("bench --cuda-graph: no --batch-size; expected the batch size the CUDA graph is captured at")
    t_start = time.perf_counter()
    clf, spec = open_classifier(cfg)
    load_seconds = time.perf_counter() - t_start
    image = _image(cfg, clf)
    probe = None
    if cfg.batch_size is None:
        runner = clf.scratch() if clf.prefers_fixed_batch else clf
        probe = probe_batch_size(runner)
        del runner
    batch = int(cfg.batch_size or probe["batch_size"])  # type: ignore[index]
    sigma = _sigma(cfg, clf)
    smoothed = open_smoothed(cfg, clf, spec, sigma, 0, batch_size=batch, noise=resolve_noise(cfg, clf))
    image = smoothed.images([image])[0][0]  # the checks a run makes on an image
    t = time.perf_counter()  # checked once, as a run does; every timed CERTIFY below reuses the record
    check = smoothed.verify_batches(image, max(cfg.n0, cfg.n), total=cfg.n0 + cfg.n)
    check_seconds = time.perf_counter() - t
    ceiling = bare_loop(clf, batch)

    def certify(n: int) -> float:
        t0 = time.perf_counter()
        smoothed.certify_many([image], cfg.n0, n, cfg.alpha)
        return (cfg.n0 + n) / (time.perf_counter() - t0)

    warm = min(cfg.n, WARM_SAMPLES_BATCHES * batch)
    rate = certify(warm)
    measured_n = int(min(cfg.n, max(warm, rate * seconds / (2 * rounds))))
    ceilings, certifies = [], []
    for r in range(rounds):  # alternating order: a drift in load hits both
        pair = [lambda: ceilings.append(ceiling(cfg.n0 + measured_n)), lambda: certifies.append(certify(measured_n))]
        for step in pair if r % 2 == 0 else pair[::-1]:
            step()
    ratios = np.asarray(certifies) / np.asarray(ceilings)
    certify_rate = float(np.median(certifies))
    return {
        "model": str(cfg.model),
        "device": clf.device,
        "device_name": clf.device_name,
        "providers": list(clf.providers),
        "batch_size": batch,
        "best_batch": None if probe is None else int(probe["batch_size"]),
        "batch_probe": probe,
        "n0": cfg.n0,
        "n": cfg.n,
        "n_measured": measured_n,
        "extrapolated": measured_n < cfg.n,
        "rounds": rounds,
        "ceiling_samples_per_s": float(np.median(ceilings)),
        "certify_samples_per_s": certify_rate,
        "ratio": float(np.median(ratios)),
        "seconds_per_image": (cfg.n0 + cfg.n) / certify_rate,
        "all": {"ceiling": ceilings, "certify": certifies},
        "options": {
            "float_type": clf.float_type,
            "cuda_graph": clf.cuda_graph,
            "device_noise": clf.device_noise,
            "io_binding": clf.io_binding,
            "noise_threads": smoothed.noise_threads,
            "sigma": sigma,
            "cuda_provider_options": clf.signature()["cuda_provider_options"],
            "tensorrt": clf.signature()["tensorrt"],
            "host_ring": clf.host_ring,
        },
        "seconds": {"load": load_seconds, "batch_check": check_seconds, "total": time.perf_counter() - t_start},
        "batch_check": check,
    }


def summary(res: dict) -> str:
    """The human-readable table of :func:`bench`'s result."""
    at = f"n = {res['n']:,}" + (f" (from the rate at n = {res['n_measured']:,})" if res["extrapolated"] else "")
    best = f"best of the probe: {res['best_batch']}" if res["best_batch"] is not None else "given"
    lines = [
        f"model {res['model']} on {res['device']} ({res['device_name']}; {', '.join(res['providers'])})",
        f"batch size {res['batch_size']} ({best}); {res['rounds']} rounds of {res['n0'] + res['n_measured']:,} samples",
        f"  ceiling (bare session.run)   {res['ceiling_samples_per_s']:12,.0f} samples/s",
        f"  rs-onnx CERTIFY              {res['certify_samples_per_s']:12,.0f} samples/s   "
        f"{res['ratio']:.2f} of the ceiling",
        f"  seconds per image at {at}: {res['seconds_per_image']:.3g} s",
    ]
    return "\n".join(lines)
