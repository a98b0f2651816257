"""Shared test fixtures: ../shared discovery and tiny models.

``SHARED`` is the folder of real third-party models and data beside the project (see ../shared/MODELS.md);
tests that need it skip with a clear reason when it is absent (:func:`needs_shared`, the ``shared``
fixture). Long tests carry ``@pytest.mark.slow``: ``pytest -m "not slow"`` is the fast inner loop, and
the full suite (CI) runs them all.
"""

from __future__ import annotations

import logging
import signal
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
