"""One home per concept: statistics live in rs_onnx.stats, no module reaches into another's private names,
the engine's contract is declared, and a prepared run never writes back into its configuration."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta, norm

from rs_onnx import stats

PACKAGE = Path(__file__).resolve().parents[1] / "rs_onnx"


# ------------------------------------------------------------------ Clopper-Pearson: one guard, one rounding
@pytest.mark.parametrize("alpha", [1e-3, 1e-6, 1e-8, 1e-10, 1e-12])
@pytest.mark.parametrize("n", [1, 10, 1000])
def test_vectorised_bounds_hold_their_exact_level_and_stay_tight(alpha, n):
    # The exact binomial tails: P(Beta(k+1, n-k) >= U) <= alpha and P(Beta(k, n-k+1) <= L) <= alpha, with no
    # tolerance. Before the guard, the vectorised upper bound missed its level at alpha = 1e-8 and 1e-10 by a
    # relative 5e-9 to 8e-8 (1 - alpha rounds away alpha's low digits).
    k = np.arange(n + 1)
    up, lo = stats.cp_upper(k, n, alpha), stats.cp_lower(k, n, alpha)
    kk = k[:-1]
    assert np.all(beta.sf(up[:-1], kk + 1, n - kk) <= alpha) and up[-1] == 1.0
    k1 = k[1:]
    assert np.all(beta.cdf(lo[1:], k1, n - k1 + 1) <= alpha) and lo[0] == 0.0
    # ... and not loose: within a relative 1e-6 of the exact quantiles (a bound inflated by 1.5x fails here).
    exact_up, exact_lo = beta.isf(alpha, kk + 1, n - kk), beta.ppf(alpha, k1, n - k1 + 1)
    assert np.all(up[:-1] <= exact_up * (1 + 1e-6) + 1e-12)
    assert np.all(lo[1:] >= exact_lo * (1 - 1e-6) - 1e-12)


def test_lower_bound_guard_where_scipy_misses_its_level():
    # beta.ppf(1e-6, 99001, 1000) misses its level; the guard must shrink it (scalar and vectorised alike).
    k, n, a = 99_001, 100_000, 1e-6
    p = stats.cp_lower(k, n, a)
    assert beta.cdf(p, k, n - k + 1) <= a
    assert p >= beta.ppf(a, k, n - k + 1) * (1 - 1e-9)
    assert stats.clopper_pearson_lower(k, n, a) == float(p)
    u = stats.cp_upper(999, 100_000, 1e-6)
    assert beta.sf(u, 1000, 100_000 - 999) <= 1e-6


@pytest.mark.parametrize("alpha", [0.001, 0.05, 1e-10])
def test_scalar_and_vectorised_bounds_are_one_implementation(alpha):
    n = 200
    k = np.arange(n + 1)
    lo, up = stats.cp_lower(k, n, alpha), stats.cp_upper(k, n, alpha)
    for i in range(n + 1):
        assert lo[i] == stats.clopper_pearson_lower(i, n, alpha)
        assert up[i] == stats.clopper_pearson_upper(i, n, alpha)
    # broadcasting over levels (the sequential schedule's looks)
    alphas = np.array([1e-4, 1e-3, 1e-2])
    np.testing.assert_array_equal(
        stats.cp_lower(150, n, alphas), [stats.clopper_pearson_lower(150, n, a) for a in alphas]
    )


def test_cohen_radii_match_the_scalar_radius_and_round_down():
    p = np.array([0.0, 0.3, 0.5, 0.5000001, 0.7, 0.99, 0.999999, 1.0 - 1e-15])
    r = stats.cohen_radii(p, 0.25)
    assert r.shape == p.shape
    for pi, ri in zip(p, r):
        assert ri == stats.cohen_radius(float(pi), 0.25)
    assert np.all(r[:3] == 0.0)
    exact = 0.25 * norm.ppf(p[3:])
    assert np.all(r[3:] < exact) and np.all(r[3:] >= exact * (1 - 1e-11))


def test_selection_rule():
    assert stats.select(np.array([3, 7, 7, 0, 99])) == 1  # ties to the lower index; last column: non-finite
    assert stats.select(np.array([0, 0, 0, 12])) == stats.ABSTAIN  # only non-finite outputs: no class
    np.testing.assert_array_equal(stats.select_many(np.array([[0, 5, 0], [4, 1, 0], [0, 0, 3]])), [1, 0, stats.ABSTAIN])
    assert stats.select_many(np.zeros((0, 3), np.int64)).shape == (0,)


# ------------------------------------------------------------------ imports
def _private_imports():
    found = []
    for f in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("rs_onnx")):
                found += [
                    f"{f.name}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, (ast.Name, ast.Attribute))
            ):
                owner = ast.unparse(node.value)
                if owner not in ("self", "cls", "os", "sys"):
                    found.append(f"{f.name}:{node.lineno} {owner}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    assert _private_imports() == []


def test_statistics_are_not_redefined_outside_stats():
    for f in sorted(PACKAGE.glob("*.py")):
        if f.name == "stats.py":
            continue
        text = f.read_text(encoding="utf-8")
        assert "beta.ppf" not in text and "beta.isf" not in text, f"{f.name} computes a Clopper-Pearson bound"
        assert not re.search(r"^_?SAFETY\s*=", text, re.M), f"{f.name} has its own rounding slack"


# ------------------------------------------------------------------ the engine's contract
def test_onnx_classifier_implements_the_sampler_protocol(tmp_path):
    from rs_onnx.classifier import OnnxClassifier
    from rs_onnx.run import bundled
    from rs_onnx.sampling import Classifier, HostClassifier

    clf = OnnxClassifier(bundled("digits_cnn.onnx"), device="cpu")
    assert isinstance(clf, Classifier)
    for member in ("device", "prefers_fixed_batch", "device_noise", "cuda_graph"):
        assert member in Classifier.__annotations__ and hasattr(HostClassifier, member)


def test_sampler_source_reads_no_member_through_getattr():
    src = (PACKAGE / "sampling.py").read_text(encoding="utf-8") + (PACKAGE / "smoothing.py").read_text(encoding="utf-8")
    assert "getattr(classifier" not in src and "getattr(self.classifier" not in src


def test_probe_is_returned_not_stored(monkeypatch):
    import rs_onnx.sampling as sampling

    class Clock(sampling.HostClassifier):
        input_dtype, num_classes, input_shape = np.dtype(np.float32), 2, (3,)

        def __init__(self):
            self.now = 0.0

        def perf_counter(self):
            return self.now

        def predict(self, x):
            self.now += 1e-6 * len(x) * (1.0 if len(x) >= 64 else 2.0)
            return np.zeros(len(x), np.int64)

    clf = Clock()
    monkeypatch.setattr(sampling, "time", clf)
    probe = sampling.probe_batch_size(clf, candidates=(16, 32, 64, 128), min_seconds=0)
    assert probe["batch_size"] == 64 and set(probe["seconds_per_sample"]) == {"16", "32", "64", "128"}
    assert not hasattr(clf, "batch_probe")
    clf.batch_probe = {"batch_size": 7}  # a stale attribute is never read back
    assert (
        sampling.Sampler(
            clf, sampling.Preprocessor(sampling_spec(), (3,), (3,), np.float32), 0.5, 0, None, 0
        ).batch_size
        == 64
    )


def sampling_spec():
    from rs_onnx.preprocess import PreprocessSpec

    return PreprocessSpec()


# ------------------------------------------------------------------ values flow down: no write-back
META_KEYS = [
    "status",
    "mode",
    "config",
    "seed",
    "entropy",
    "noise",
    "radius_norms",
    "preprocess",
    "batch_size",
    "noise_threads",
    "batch_probe",
    "model",
    "providers",
    "device",
    "device_name",
    "data",
    "versions",
    "command",
    "timings",
    "out",
    "examples_done",
    "nonfinite_outputs",
    "one_class",
    "clean_accuracy",
    "batch_check",
    "class_names",
    "rows_digest",
]


def _config(model, data, **kw):
    from rs_onnx.config import RunConfig

    return RunConfig(model=model, data=data, n0=8, n=40, end=3, **kw).validate()


def test_prepare_resolves_into_prepared_and_never_mutates_the_config(bundled_digits, tmp_path):
    import json

    from rs_onnx import run

    cfg = _config(*bundled_digits, seed=3)
    before = cfg.to_dict()
    p = run.prepare(cfg)
    assert cfg.to_dict() == before and cfg.sigma is None and cfg.batch_size is None
    # sigma from the model's metadata, the short-run default batch size, and no probe
    assert (p.sigma, p.batch_size, p.entropy, p.batch_probe) == (0.25, 3 * (8 + 40), 3, None)
    assert (p.smoothed.sigma, p.smoothed.batch_size, p.smoothed.entropy) == (0.25, 144, 3)
    assert p.cfg is not cfg and (p.cfg.sigma, p.cfg.batch_size) == (0.25, 144)
    meta = run.execute(p, "certify", tmp_path / "r.tsv")
    assert cfg.to_dict() == before
    on_disk = json.loads((tmp_path / "r.tsv.meta.json").read_text(encoding="utf-8"))
    assert list(on_disk) == META_KEYS and list(meta) == META_KEYS
    # the resolved values, recorded as before this refactor: config.sigma/batch_size hold the resolved ones
    assert on_disk["config"]["sigma"] == 0.25 and on_disk["config"]["batch_size"] == 144
    assert on_disk["batch_size"] == 144 and on_disk["batch_probe"] is None and on_disk["entropy"] == "3"


def test_given_values_are_recorded_as_given(linear3):
    from rs_onnx import run

    cfg = _config(*linear3, sigma=1, batch_size=7, seed=0)  # an int sigma, as a YAML file can give it
    p = run.prepare(cfg)
    assert p.cfg.to_dict() == cfg.to_dict() and p.cfg.to_dict()["sigma"] == 1 and p.batch_size == 7


def test_a_long_run_records_the_probe_that_chose_its_batch(linear3, monkeypatch, tmp_path):
    import json

    import rs_onnx.sampling as sampling
    from rs_onnx import run

    probe = {"batch_size": 33, "seconds_per_sample": {"16": 2e-6, "33": 1e-6}, "stopped": "test", "probe_seconds": 0.5}
    monkeypatch.setattr(sampling, "probe_batch_size", lambda clf, fits=None: probe)
    monkeypatch.setattr(run, "PROBE_MIN_SAMPLES", 10)
    cfg = _config(*linear3, sigma=0.5, seed=0)
    p = run.prepare(cfg)
    assert (p.batch_size, p.batch_probe, cfg.batch_size) == (33, probe, None)
    run.execute(p, "certify", tmp_path / "r.tsv")
    meta = json.loads((tmp_path / "r.tsv.meta.json").read_text(encoding="utf-8"))
    assert meta["batch_probe"] == probe and meta["batch_size"] == 33 and meta["config"]["batch_size"] == 33


def test_resume_adopts_the_earlier_entropy_without_overwriting_the_engine(linear3, tmp_path):
    import json

    from rs_onnx import run
    from rs_onnx.results import read_results

    full = tmp_path / "full.tsv"
    first = run.prepare(_config(*linear3, sigma=0.5))  # no seed: fresh entropy
    run.execute(first, "certify", full)
    entropy = json.loads((tmp_path / "full.tsv.meta.json").read_text(encoding="utf-8"))["entropy"]
    # an interrupted run: header + first row kept, meta from the same run without the new key (an older rs-onnx)
    part = tmp_path / "part.tsv"
    lines = full.read_text(encoding="utf-8").split("\n")
    part.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    meta = json.loads((tmp_path / "full.tsv.meta.json").read_text(encoding="utf-8"))
    del meta["batch_probe"]
    del meta["rows_digest"]  # an older rs-onnx recorded no digest of the rows either
    meta["status"] = "interrupted"
    (tmp_path / "part.tsv.meta.json").write_text(json.dumps(meta), encoding="utf-8")
    second = run.prepare(_config(*linear3, sigma=0.5))
    fresh = second.smoothed.entropy
    assert str(fresh) != entropy
    run.execute(second, "certify", part, resume=True)
    assert second.smoothed.entropy == fresh and second.entropy == fresh  # nothing written back
    with pytest.raises(AttributeError):
        second.smoothed.entropy = 5
    a, b = read_results(full), read_results(part)
    for col in ("idx", "predict", "radius", "pA_lower", "nA"):
        np.testing.assert_array_equal(a[col], b[col])
    assert json.loads((tmp_path / "part.tsv.meta.json").read_text(encoding="utf-8"))["entropy"] == entropy


# ------------------------------------------------------------------ results own their format; one version
def test_rows_written_are_read_back_by_the_reader(linear3, tmp_path):
    from rs_onnx import analysis, results, run

    p = run.prepare(_config(*linear3, sigma=0.5, seed=1))
    run.execute(p, "certify", tmp_path / "c.tsv")
    run.execute(p, "predict", tmp_path / "p.tsv")
    got = results.read_results(tmp_path / "c.tsv")
    assert got.names == list(results.columns_for("certify")) and len(got) == 3
    assert analysis.read_results is results.read_results and analysis.Results is results.Results
    assert results.read_meta(tmp_path / "p.tsv")["mode"] == "predict"
    assert (tmp_path / "p.tsv").read_text(encoding="utf-8").split("\n")[0].split("\t") == list(results.PREDICT_COLUMNS)


def test_read_meta_refuses_what_is_not_a_meta_file(tmp_path):
    from rs_onnx.errors import DataError
    from rs_onnx.results import read_meta

    with pytest.raises(DataError, match="not found"):
        read_meta(tmp_path / "none.tsv")
    (tmp_path / "a.tsv.meta.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON object"):
        read_meta(tmp_path / "a.tsv")
    (tmp_path / "b.tsv.meta.json").write_text('{"status": "runn', encoding="utf-8")
    with pytest.raises(DataError, match="not readable"):
        read_meta(tmp_path / "b.tsv")


def test_the_version_has_one_home():
    import rs_onnx
    from rs_onnx import _version, results

    assert rs_onnx.__version__ == _version.__version__ == results.versions()["rs_onnx"]
    root = PACKAGE.parent
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    assert 'version = {attr = "rs_onnx._version.__version__"}' in pyproject and '\nversion = "' not in pyproject
    for f in PACKAGE.glob("*.py"):
        if f.name != "_version.py":
            assert "__version__ = " not in f.read_text(encoding="utf-8"), f.name


def test_noise_threads_help_states_the_rule(monkeypatch):
    import os

    from click.testing import CliRunner

    from rs_onnx.cli import cli
    from rs_onnx.sampling import default_noise_threads

    text = " ".join(CliRunner().invoke(cli, ["certify", "--help"]).output.split())
    assert "a quarter of the cores, 2 to 8" in text and "all cores but one, at most 16" in text
    for cores, cpu, cuda in [(1, 2, 1), (2, 2, 1), (16, 4, 15), (64, 8, 16)]:
        monkeypatch.setattr(os, "cpu_count", lambda c=cores: c)
        assert (default_noise_threads("cpu"), default_noise_threads("cuda:0")) == (cpu, cuda)


# ------------------------------------------------------------------ ARCHITECTURE.md matches the code
def _layers() -> dict[str, int]:
    import re

    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^\| (\d) \| `(\w+)` \|", text, re.M)}


def _imports(module: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level and node.module:
                found.add(node.module.split(".")[0])
            elif node.level:
                found.update(a.name for a in node.names)
            elif (node.module or "").startswith("rs_onnx."):
                found.add(node.module.split(".")[1])
            elif node.module == "rs_onnx":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("rs_onnx."))
    return found


def test_architecture_note_lists_every_module_and_nothing_imports_upwards():
    layers = _layers()
    modules = {f.stem for f in PACKAGE.glob("*.py")}
    assert set(layers) == modules, "ARCHITECTURE.md's table must list exactly the modules of rs_onnx/"
    upward = [
        f"{m} (layer {layers[m]}) imports {d} (layer {layers[d]})"
        for m in modules
        for d in _imports(PACKAGE / f"{m}.py")
        if d in layers and layers[d] > layers[m]
    ]
    assert upward == []


def test_a_classifier_missing_protocol_members_is_refused_with_their_names():
    from rs_onnx.errors import ConfigError
    from rs_onnx.sampling import HostClassifier
    from rs_onnx.smoothing import SmoothedClassifier

    class Bare:
        input_shape, input_dtype, num_classes = (3,), np.dtype(np.float32), 2

        def predict(self, x):
            return np.zeros(len(x), np.int64)

    with pytest.raises(ConfigError, match="lacks device, prefers_fixed_batch, device_noise, cuda_graph"):
        SmoothedClassifier(Bare(), sigma=0.5)

    class Host(HostClassifier, Bare):
        pass

    cert = SmoothedClassifier(Host(), sigma=0.5, seed=0, batch_size=64).certify(np.zeros(3, np.float32), 10, 100, 0.01)
    assert cert.predict == 0 and cert.n_a == 100


# ------------------------------------------------------------------ no write-back
BUILT = {"cfg", "clf", "classifier", "smoothed", "sc", "p", "prepared", "old", "resolved", "loaded"}


def _written_back():
    """Assignments to an attribute (or an item of one) of an object built elsewhere: a configuration, a
    classifier, a smoothed classifier, a prepared run (by the names the package gives them)."""
    found = []
    for f in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    base, through_attribute = sub, False
                    while isinstance(base, (ast.Attribute, ast.Subscript)):
                        through_attribute |= isinstance(base, ast.Attribute)
                        base = base.value
                    if through_attribute and isinstance(base, ast.Name) and base.id in BUILT:
                        found.append(f"{f.name}:{node.lineno} {ast.unparse(target)}")
    return sorted(set(found))


def test_nothing_resolved_later_is_written_into_objects_built_earlier():
    # The batch check's record and the audit record travel in constructors and in Prepared; a classifier's
    # fallback to one sample per run is a new classifier (OnnxClassifier.one_by_one), the caller's left as is.
    assert _written_back() == []
