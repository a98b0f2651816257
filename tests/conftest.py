"""Shared test fixtures: ../shared discovery and tiny models.

``SHARED`` is the folder of real third-party models and data beside the project (see ../shared/MODELS.md);
tests that need it skip with a clear reason when it is absent (:func:`needs_shared`, the ``shared``
fixture). Long tests carry ``@pytest.mark.slow``: ``pytest -m "not slow"`` is the fast inner loop, and
the full suite (CI) runs them all.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
"""Real third-party models and data (not part of the repository)."""


def needs_shared(*parts: str):
    """A skipif marker for tests that need ``SHARED / parts`` (a file or folder)."""
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(
        not path.exists(), reason=f"{path} is absent: third-party files live in ../shared, outside the repository"
    )


@pytest.fixture
def shared() -> Path:
    """The ../shared folder; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: third-party files live in ../shared, outside the repository")
    return SHARED


@pytest.fixture(scope="session")
def bundled_digits() -> tuple[str, str]:
    """(model, data): the bundled digits CNN (rs_onnx.sigma = 0.25 in its metadata) and its evaluation set."""
    from rs_onnx.run import bundled

    return bundled("digits_cnn.onnx"), bundled("digits_eval.npz")


@pytest.fixture(scope="session")
def linear3(tmp_path_factory) -> tuple[str, str]:
    """(model, data): a 3-class linear ONNX model on 1x4x4 float32 images and 12 uint8 images with labels."""
    return write_linear3(tmp_path_factory.mktemp("linear3"))


@pytest.fixture()
def linear(tmp_path) -> tuple[str, str, Path]:
    """(model, data, tmp_path): :func:`write_linear3`'s files in this test's own folder (lin.onnx, d.npz)."""
    return (*write_linear3(tmp_path, "lin.onnx", "d.npz"), tmp_path)


def write_linear3(
    folder: Path, model_name: str = "linear3.onnx", data_name: str = "linear3.npz", count: int = 12
) -> tuple[str, str]:
    """Write a 3-class linear ONNX model on 1x4x4 float32 images, and ``count`` uint8 images labelled with its
    clean class, into ``folder``; returns their paths (model, data). The first 12 images do not depend on
    ``count``."""
    from tests.onnx_models import linear_model, save

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 16)).astype(np.float32)
    model = save(linear_model(w, np.zeros(3, np.float32), input_shape=(1, 4, 4), batch=1), folder / model_name)
    images = rng.integers(0, 256, size=(count, 4, 4), dtype=np.uint8)
    scores = images.reshape(count, -1).astype(np.float32) / 255 @ w.T
    data = folder / data_name
    np.savez(data, images=images, labels=scores.argmax(1).astype(np.uint8))
    return str(model), str(data)


# fault kind -> [faults injected, rows lost, inputs harmed, hangs, seconds], over the whole session
TALLY: dict[str, list] = defaultdict(lambda: [0, 0, 0, 0, 0.0])


@pytest.fixture(scope="session", autouse=True)
def fault_report():
    """``RS_ONNX_FAULT_REPORT=path``: the tallies of every fault test (:class:`Tally`) as docs/reliability.md's
    markdown table, written when the session ends."""
    yield
    path = os.environ.get("RS_ONNX_FAULT_REPORT")
    if path and TALLY:
        lines = [
            "| fault injected | faults | rows lost | inputs harmed | hangs | time (s) |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        lines += [f"| {k} | {v[0]} | {v[1]} | {v[2]} | {v[3]} | {v[4]:.1f} |" for k, v in TALLY.items()]
        total = [sum(v[i] for v in TALLY.values()) for i in range(5)]
        lines.append(
            f"| **all** | **{total[0]}** | **{total[1]}** | **{total[2]}** | **{total[3]}** | **{total[4]:.0f}** |"
        )
        Path(path).write_text("\n".join(lines) + "\n")


class Tally:
    """Context: adds faults, rows lost, inputs harmed, hangs (a process that had to be killed after its time
    limit) and the time taken to TALLY[kind]."""

    def __init__(self, kind: str):
        self.kind, self.faults, self.lost, self.harmed, self.hangs = kind, 0, 0, 0, 0

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        t = TALLY[self.kind]
        t[0] += self.faults
        t[1] += self.lost
        t[2] += self.harmed
        t[3] += self.hangs
        t[4] += time.perf_counter() - self.t0


def default_sigint() -> None:
    """``preexec_fn`` of a child that must react to Ctrl-C: a shell starts background jobs (``pytest &``) with
    SIGINT ignored, the child would inherit that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def invoke_cli(args: list[str], **kw):
    """``rs-onnx args`` in this process through click's CliRunner (exceptions propagate): its Result."""
    from click.testing import CliRunner

    from rs_onnx.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False, **kw)


def start_local_ray(ray) -> None:
    """A local Ray instance for the tests: 2 CPUs, no dashboard, workers' logs kept from the test output."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)


@pytest.fixture(scope="module")
def ray_cluster():
    """Ray, initialised locally for one test module (:func:`start_local_ray`); skips when Ray is not installed."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'rs-onnx[distributed]')")
    start_local_ray(ray)
    yield ray
    ray.shutdown()


def headless_chromium(profile: Path) -> list[str]:
    """The command that starts headless Chromium with a fresh profile folder (the report's and the docs
    site's browser tests); skips the test where no Chromium is installed."""
    import shutil

    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    return [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ]
