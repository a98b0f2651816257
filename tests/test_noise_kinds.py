"""Uniform and Laplace noise end to end: streams, scale conventions, exact linear oracles, CLI, API and Ray.

The oracle: for f(x) = 1[w.x + b > 0] and noise symmetric about 0, the smoothed classifier equals f, so its
exact lp robust radius at x is |w.x + b| / ||w||_q (q the dual norm: l2 -> 2, l1 -> inf, linf -> 1). Every
certified radius, in every norm column, must stay at or below it; where a certificate is tight (the
configurations below) it must also come close, so a bound inflated by 1.5x would fail.
"""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import laplace, norm, uniform

from rs_onnx import bounds, noise
from rs_onnx.classifier import OnnxClassifier
from rs_onnx.cli import cli, main
from rs_onnx.errors import ConfigError
from rs_onnx.sampling import HostClassifier
from rs_onnx.sequential import sequential_certify_many
from rs_onnx.smoothing import SmoothedClassifier
from tests.onnx_models import linear_model, save

KINDS = ("gaussian", "uniform", "laplace")
DUAL = {"l2": 2, "l1": np.inf, "linf": 1}


# ------------------------------------------------------------------------------------------------ streams


@pytest.mark.parametrize("kind", KINDS)
def test_a_block_drawn_in_odd_pieces_equals_one_draw(kind):
    b = noise.Block(0, example=3, phase=1, block=5, size=11)
    whole = noise.draw(42, b, (7,), kind)  # 77 values: the pieces below split 32-bit words unevenly
    rng, out = noise.generator(42, b), np.empty((11, 7), np.float32)
    for lo, hi in ((0, 3), (3, 4), (4, 11)):
        noise.KINDS[kind].fill(rng, out[lo:hi])
    np.testing.assert_array_equal(out, whole)
    assert not np.array_equal(whole, noise.draw(43, b, (7,), kind))


def test_gaussian_bytes_are_unchanged():
    b = noise.Block(0, 1, 1, 0, 5)
    seq = np.random.SeedSequence(7, spawn_key=(1, 1, 0))
    ref = np.random.Generator(np.random.SFC64(seq)).standard_normal((5, 3), dtype=np.float32)
    np.testing.assert_array_equal(noise.draw(7, b, (3,)), ref)
    np.testing.assert_array_equal(noise.draw(7, b, (3,), "gaussian"), ref)


@pytest.mark.parametrize("kind,dist", [("gaussian", norm()), ("uniform", uniform(-1, 2)), ("laplace", laplace())])
def test_unit_scale_distribution_and_symmetry(kind, dist):
    z = noise.draw(0, noise.Block(0, 0, 0, 0, 1000), (200,), kind).ravel().astype(np.float64)
    for q in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):  # 200,000 values: quantiles within a few standard errors
        assert abs(np.mean(z <= dist.ppf(q)) - q) < 5 * np.sqrt(q * (1 - q) / z.size), (kind, q)
    if kind == "uniform":
        assert z.min() > -1 and z.max() < 1
    if kind != "gaussian":  # the 2^24 float32 values are exactly symmetric about 0
        u = np.random.default_rng(0).random(1000, dtype=np.float32)
        out = np.empty(1000, np.float32)
        out[:] = u
        v = noise.fill_uniform(np.random.Generator(np.random.SFC64(1)), out.copy())
        assert np.all(np.abs(v) < 1)
        grid = np.arange(2**24, dtype=np.float64) / 2**24 * 2 - 1 + 2.0**-24
        assert grid[0] == -grid[-1]


def test_unknown_kind_is_refused():
    with pytest.raises(ConfigError, match="noise='cauchy'"):
        noise.get_kind("cauchy")
    with pytest.raises(ValueError, match="already registered"):
        noise.register(noise.KINDS["uniform"])


class Recorder(HostClassifier):
    """Records the noisy inputs it sees; class 1 iff the first value is positive."""

    def __init__(self, dim=3):
        self.input_shape, self.input_dtype, self.num_classes, self.rows = (dim,), np.dtype(np.float32), 2, []

    def predict(self, x):
        self.rows.append(np.array(x))
        return (x[:, 0] > 0).astype(np.int64)


@pytest.mark.parametrize("kind", KINDS)
def test_sigma_means_what_train_py_means(kind):
    """gaussian: std sigma; uniform: U[-sigma, sigma] (half-width lambda); laplace: scale lambda (mean |d| = lambda)."""
    clf = Recorder()
    SmoothedClassifier(clf, sigma=0.3, seed=0, noise=kind, noise_threads=0).certify(
        np.zeros(3, np.float32), 10, 20_000, 0.01
    )
    d = np.concatenate(clf.rows).ravel().astype(np.float64)
    if kind == "gaussian":
        assert abs(d.std() - 0.3) < 0.005
    elif kind == "uniform":
        assert -0.3 <= d.min() < -0.299 and 0.299 < d.max() <= 0.3
    else:
        assert abs(np.abs(d).mean() - 0.3) < 0.005


@pytest.mark.parametrize("kind", ("uniform", "laplace"))
def test_counts_do_not_depend_on_batch_size_or_threads(kind):
    xs = [np.full(3, v, np.float32) for v in (-0.1, 0.05, 0.2)]
    ref = None
    for batch, threads in ((7, 0), (1000, 2), (333, 1)):
        sc = SmoothedClassifier(Recorder(), sigma=0.5, seed=3, batch_size=batch, noise_threads=threads, noise=kind)
        got = [(c.n_a, c.predict, c.radius) for c in sc.certify_many(xs, 13, 2001, 0.01)]
        ref = ref or got
        assert got == ref
    gauss = SmoothedClassifier(Recorder(), sigma=0.5, seed=3, batch_size=7, noise_threads=0)
    assert [c.n_a for c in gauss.certify_many(xs, 13, 2001, 0.01)] != [r[0] for r in ref]


# ------------------------------------------------------------------------------------------------ oracles


def _configs():
    rng = np.random.default_rng(1)
    return {
        "axis-d1": np.array([1.0]),
        "axis-d6": np.eye(6)[0],
        "ones-d6": np.ones(6) / np.sqrt(6),
        "random-d6": rng.normal(size=6),
    }


# (noise, norm, config) where the certificate is tight: best certified / exact distance must exceed 0.8.
TIGHT = (
    {("gaussian", "l2", c) for c in _configs()}
    | {
        ("gaussian", "linf", "ones-d6"),
        ("gaussian", "l1", "axis-d6"),
        ("uniform", "l1", "axis-d6"),
        ("laplace", "l1", "axis-d6"),
    }
    | {(k, p, "axis-d1") for k in KINDS for p in DUAL}
)


@pytest.fixture(scope="module")
def oracle_runs(tmp_path_factory):
    """Certificates of 12 points per (noise, configuration) at n = 20,000, alpha = 1e-5."""
    tmp = tmp_path_factory.mktemp("oracle")
    runs = {}
    for name, w in _configs().items():
        b = 0.05
        path = save(linear_model(w.astype(np.float32), np.float32(b)), tmp / f"{name}.onnx")
        clf = OnnxClassifier(path, device="cpu")
        rng = np.random.default_rng(len(name))
        xs = [(rng.normal(size=w.size) * 0.4).astype(np.float32) for _ in range(12)]
        for kind in KINDS:
            sc = SmoothedClassifier(clf, sigma=0.3, seed=5, batch_size=20_000, noise=kind)
            runs[kind, name] = (w, b, xs, sc.certify_many(xs, 50, 20_000, 1e-5))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm_", sorted(DUAL))
def test_linear_oracle_every_noise_and_norm(oracle_runs, kind, norm_):
    for name in _configs():
        w, b, xs, certs = oracle_runs[kind, name]
        ratios = []
        for x, c in zip(xs, certs):
            margin = float(np.dot(w, x.astype(np.float64)) + b)
            exact = abs(margin) / np.linalg.norm(w, DUAL[norm_])
            got = getattr(c, f"radius_{norm_}")
            assert got <= exact, (kind, norm_, name, got, exact)
            if bounds.NATIVE_NORM[kind] == norm_:
                assert c.radius == got
            if c.predict != -1:
                assert c.predict == int(margin > 0)
            if exact > 0.02:
                ratios.append(got / exact)
        if (kind, norm_, name) in TIGHT:
            assert max(ratios) > 0.8, (kind, norm_, name, max(ratios))


def test_uniform_linf_beats_the_conversion_in_high_dimension(oracle_runs):
    for kind in ("uniform", "laplace"):
        *_, certs = oracle_runs[kind, "random-d6"]
        for c in certs:
            if c.radius > 0:
                conv = c.radius_l1 / 6
                assert (c.radius_linf > conv * (1 + 1e-9)) == (kind == "uniform")


@pytest.mark.parametrize("kind", ("uniform", "laplace"))
def test_sequential_oracle(tmp_path, kind):
    w = np.eye(4)[0].astype(np.float32)
    clf = OnnxClassifier(save(linear_model(w, np.float32(0.0)), tmp_path / "lin.onnx"), device="cpu")
    sc = SmoothedClassifier(clf, sigma=0.5, seed=2, batch_size=10_000, noise=kind)
    xs = [np.array([m, 0.3, -0.2, 0.1], np.float32) for m in (0.05, 0.2, 0.45, 0.7, -0.3)]
    certs = sequential_certify_many(sc, xs, None, 50, 20_000, 0.001, (0.0, 0.1, 0.25, 0.4, 0.6))  # 0: predict too
    for x, c in zip(xs, certs):
        assert c.radius_l1 <= abs(x[0]) and c.radius_linf <= abs(x[0]) and c.radius_l2 <= abs(x[0])
    # l1 distances 0.45 and 0.7; uniform noise of half-width 0.5 certifies at most 2 lambda (1 - 1/2) = 0.5
    assert certs[2].decided_radius == 0.4 and certs[3].decided_radius == (0.4 if kind == "uniform" else 0.6)
    assert certs[4].predict == 0 and certs[0].predict == 1


def test_best_bound_and_device_noise_are_gaussian_only(tmp_path):
    sc = SmoothedClassifier(Recorder(), sigma=0.5, seed=0, noise="uniform")
    with pytest.raises(ConfigError, match="Gaussian only"):
        sc.certify_many([np.zeros(3, np.float32)], 10, 100, 0.01, bound="best")
    with pytest.raises(ConfigError, match="noise="):
        SmoothedClassifier(Recorder(), sigma=0.5, noise="gauss")


# ------------------------------------------------------------------------------------------------ CLI / Ray


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 16)).astype(np.float32)
    model = save(linear_model(w, np.zeros(3, np.float32), input_shape=(1, 4, 4), batch=1), tmp_path / "lin.onnx")
    images = rng.integers(0, 256, size=(6, 4, 4), dtype=np.uint8)
    labels = (images.reshape(6, -1).astype(np.float32) / 255 @ w.T).argmax(1).astype(np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    return str(model), str(tmp_path / "d.npz"), tmp_path


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("kind", ("uniform", "laplace"))
def test_cli_certify_sequential_and_predict(files, kind):
    model, data, tmp = files
    common = [model, data, "--sigma", "0.5", "--seed", "1", "--noise", kind, "--batch-size", "300"]
    out = tmp / "c.tsv"
    res = CliRunner().invoke(cli, ["-q", "certify", *common, "--n0", "20", "--n", "2000", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp / "c.tsv.meta.json").read_text())
    assert meta["noise"]["kind"] == kind and meta["config"]["noise"] == kind and meta["noise"]["dim"] == 16
    assert meta["radius_norms"]["radius"] == "l1" and meta["radius_norms"]["radius_linf"] == "linf"
    rows = _rows(out)
    assert any(float(r["radius"]) > 0 for r in rows)
    for r in rows:
        assert float(r["radius"]) == float(r["radius_l1"]) and float(r["radius_2class"]) == 0.0
        assert float(r["radius_l2"]) <= float(r["radius_l1"]) and float(r["radius_linf"]) <= float(r["radius_l2"])
    api = SmoothedClassifier(OnnxClassifier(model, device="cpu"), 0.5, seed=1, batch_size=300, noise=kind)
    from rs_onnx.data import load_data

    ds = load_data(data, None, (4, 4), 1)
    certs = api.certify_many([ds.image(i) for i in range(6)], 20, 2000, 0.001)
    assert [float(r["radius"]) for r in rows] == [c.radius for c in certs]  # CLI rows = API
    seq = tmp / "s.tsv"
    res = CliRunner().invoke(
        cli,
        [
            "-q",
            "certify",
            *common,
            "--n0",
            "20",
            "--n",
            "5000",
            "--sequential",
            "--radii",
            "0.05,0.1",
            "--out",
            str(seq),
        ],
    )
    assert res.exit_code == 0, res.output
    assert {float(r["radius"]) for r in _rows(seq)} <= {0.0, 0.05, 0.1}
    pred = tmp / "p.tsv"
    res = CliRunner().invoke(cli, ["-q", "predict", *common, "--n", "500", "--out", str(pred)])
    assert res.exit_code == 0 and json.loads((tmp / "p.tsv.meta.json").read_text())["noise"]["kind"] == kind
    # resuming with another noise is refused
    res = CliRunner().invoke(
        cli,
        [
            "-q",
            "certify",
            model,
            data,
            "--sigma",
            "0.5",
            "--seed",
            "1",
            "--n0",
            "20",
            "--n",
            "2000",
            "--batch-size",
            "300",
            "--out",
            str(out),
            "--resume",
        ],
    )
    assert res.exit_code == 1 and "different noise" in str(res.exception)


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--noise", "cauchy"], "cauchy"),
        (["--noise", "uniform", "--bound", "best"], "gaussian only"),
    ],
)
def test_cli_noise_errors(files, capsys, extra, expected):
    model, data, tmp = files
    with pytest.raises(SystemExit) as e:
        main(["certify", model, data, "--sigma", "0.5", "--n", "10", "--n0", "5", *extra, "--out", str(tmp / "o.tsv")])
    err = capsys.readouterr().err
    assert e.value.code in (1, 2) and expected.lower() in err.lower() and "Traceback" not in err
    assert not (tmp / "o.tsv").exists()


@pytest.mark.slow
def test_ray_rows_equal_local_rows_for_uniform(files, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed")
    import logging

    from rs_onnx import run
    from rs_onnx.config import RunConfig
    from rs_onnx.distributed import ray_backend

    model, data, _ = files
    cfg = {
        "model": model,
        "data": data,
        "sigma": 0.5,
        "n0": 20,
        "n": 500,
        "seed": 3,
        "batch_size": 400,
        "noise": "uniform",
    }
    run.execute(run.prepare(RunConfig(**cfg).validate()), "certify", tmp_path / "local.tsv")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        run.execute(
            run.prepare(RunConfig(**cfg).validate()), "certify", tmp_path / "ray.tsv", backend=ray_backend(workers=2)
        )
    finally:
        ray.shutdown()
    strip = [
        [{k: v for k, v in r.items() if k != "time"} for r in _rows(tmp_path / f)] for f in ("local.tsv", "ray.tsv")
    ]
    assert strip[0] == strip[1] and any(float(r["radius"]) > 0 for r in strip[0])


def test_analyze_tabulates_by_norm_and_never_mixes_norms(files, capsys):
    model, data, tmp = files
    for kind in ("gaussian", "uniform"):
        res = CliRunner().invoke(
            cli,
            [
                "-q",
                "certify",
                model,
                data,
                "--sigma",
                "0.5",
                "--seed",
                "1",
                "--noise",
                kind,
                "--n0",
                "20",
                "--n",
                "1000",
                "--batch-size",
                "500",
                "--out",
                str(tmp / f"{kind}.tsv"),
            ],
        )
        assert res.exit_code == 0, res.output
    g, u = str(tmp / "gaussian.tsv"), str(tmp / "uniform.tsv")
    with pytest.raises(SystemExit) as e:
        main(["analyze", g, u])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "different norms" in err and "gaussian: l2" in err and "uniform: l1" in err
    res = CliRunner().invoke(cli, ["analyze", g, u, "--norm", "l1", "--plot", str(tmp / "l1.png")])
    assert res.exit_code == 0, res.output
    assert "gaussian (l1)" in res.output and "uniform (l1)" in res.output and (tmp / "l1.png").is_file()
    res = CliRunner().invoke(cli, ["analyze", u])  # one file: its own norm, said in the label
    assert res.exit_code == 0 and "uniform (l1)" in res.output
    from rs_onnx import analysis

    rows = {name: analysis.read_results(p) for name, p in (("g", g), ("u", u))}
    picked, unit = analysis.select_norm(rows, {"g": g, "u": u}, "linf")
    assert unit == "linf" and np.array_equal(picked["u"].radius, rows["u"]["radius_linf"])
    assert np.array_equal(picked["g"].radius, rows["g"]["radius_linf"])
    cohen = tmp / "cohen.tsv"  # Cohen et al.'s own format: l2 radii only
    cohen.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.3\t1\t0:00:01.5\n")
    with pytest.raises(SystemExit):
        main(["analyze", str(cohen), "--norm", "l1"])
    assert "no l1 radius" in capsys.readouterr().err
    res = CliRunner().invoke(cli, ["analyze", str(cohen), g])
    assert res.exit_code == 0, res.output
