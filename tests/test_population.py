"""Population lower bounds on certified accuracy (stats.population_lower, docs/certificate-population.md),
the ``--require`` gate, and the samples spent per example (rs_onnx.population, analyze, --json, report).

Soundness is checked two ways: exactly (the worst case, certificates false at rate alpha on every
non-robust example, makes the certified count Binomial(N, p + alpha (1 - p)); its exact tail at the
critical p is the miss probability, which must be <= 1 - confidence and which any inflation of the bound
pushes above it) and by simulating test sets of a smoothed classifier whose non-robust examples sit just
below the radius' threshold (Cohen's CERTIFY then fails at nearly rate alpha).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from rs_onnx import analysis, population
from rs_onnx.cli import main
from rs_onnx.errors import ConfigError, RequirementError
from rs_onnx.population import Requirement, parse_requirements, samples_spent, samples_text
from rs_onnx.results import Results
from rs_onnx.stats import cp_lower, population_lower
from tests.conftest import invoke_cli as invoke


def invoke_caught(args: list[str]):
    """``rs-onnx args`` through CliRunner with the exception kept on the Result (its output too)."""
    from click.testing import CliRunner

    from rs_onnx.cli import cli

    return CliRunner().invoke(cli, args)


# ------------------------------------------------------------------------------------------ exact


def worst_miss(bound, n: int, alpha: float, confidence: float) -> float:
    """sup over p of P(bound(K) > p) when K ~ Binomial(n, p + alpha (1 - p)) (false certificates at rate
    alpha on every non-robust example: the worst case the derivation allows), exactly.

    The miss probability jumps at each value the bound takes; its supremum is approached from just below
    them, so it is evaluated there (and on a grid)."""
    ks = np.arange(n + 1)
    values = np.asarray(bound(ks, n, alpha, confidence), dtype=np.float64)
    ps = np.concatenate([values[values > 0] * (1 - 1e-12) - 1e-15, np.linspace(0, 1, 201)])
    ps = ps[(ps >= 0) & (ps <= 1)]
    q = ps + alpha * (1 - ps)
    pmf = binom.pmf(ks[None, :], n, q[:, None])  # [p, k]
    miss = (pmf * (values[None, :] > ps[:, None])).sum(axis=1)
    return float(miss.max())


CASES = [(n, a, c) for n in (1, 20, 100, 500) for a in (0.0, 0.001, 0.05, 0.2) for c in (0.9, 0.95, 0.99)]


@pytest.mark.parametrize("n,alpha,confidence", CASES)
def test_population_lower_holds_its_level_exactly_and_is_tight(n, alpha, confidence):
    delta = 1 - confidence
    miss = worst_miss(population_lower, n, alpha, confidence)
    assert miss <= delta * (1 + 1e-9), (miss, delta)
    if n >= 20:
        assert miss >= 0.99 * delta, (miss, delta)  # not loose either: the level is (nearly) attained


@pytest.mark.parametrize("n,alpha,confidence", [(100, 0.05, 0.95), (500, 0.001, 0.95), (20, 0.2, 0.9)])
def test_the_exact_check_fails_an_inflated_bound(n, alpha, confidence):
    delta = 1 - confidence

    def inflated(k, n_, a, c):
        return np.minimum(1.0, population_lower(k, n_, a, c) * (1 + 1e-3))

    def alpha_ignored(k, n_, a, c):  # Clopper-Pearson as if every certificate were true
        return cp_lower(k, n_, 1 - c)

    assert worst_miss(inflated, n, alpha, confidence) > delta
    assert worst_miss(alpha_ignored, n, alpha, confidence) > delta * 1.05


def test_population_lower_values_and_guards():
    ks = np.arange(0, 51)
    plain = population_lower(ks, 50, 0.0, 0.95)
    assert np.all(plain <= cp_lower(ks, 50, 0.05)) and np.allclose(plain, cp_lower(ks, 50, 0.05), atol=1e-11)
    lower = population_lower(ks, 50, 0.01, 0.95)
    assert lower[0] == 0.0 and np.all(np.diff(lower) >= 0) and np.all(lower <= plain)
    assert population_lower(50, 50, 0.01, 0.95) == pytest.approx((0.05 ** (1 / 50) - 0.01) / 0.99, abs=1e-10)
    assert population_lower(50, 50, 0.01, 0.99) < population_lower(50, 50, 0.01, 0.9)  # more confidence, lower
    for alpha, conf in ((1.0, 0.95), (-0.1, 0.95), (0.001, 1.0), (0.001, 0.0), (float("nan"), 0.95)):
        with pytest.raises(ValueError, match="expected 0 <= alpha < 1"):
            population_lower(5, 10, alpha, conf)
    with pytest.raises(ConfigError, match="confidence"):
        population.population_bounds([0.5], 10, 0.001, 1.5)


# ------------------------------------------------------------------------------------- simulation

M = 20_000  # simulated test sets per case


def tolerated(delta: float) -> float:
    """Largest miss rate over M simulated test sets that is consistent with a true miss of at most delta
    (one-sided, 1e-7: the assertion holds for every seed but a vanishing few)."""
    return float(binom.ppf(1 - 1e-7, M, delta)) / M


def test_simulated_adversarial_certificates_are_covered():
    """Robust examples always certified; non-robust ones falsely certified at rate alpha (the worst
    allowed), at the population value where the bound's miss is largest."""
    n, alpha, confidence = 200, 0.05, 0.95
    delta = 1 - confidence
    ks = np.arange(n + 1)
    values = population_lower(ks, n, alpha, confidence)
    # the critical p with the largest exact miss
    ps = values[values > 0] * (1 - 1e-12)
    q = ps + alpha * (1 - ps)
    exact = np.array([binom.sf(np.argmax(values > p) - 1, n, qq) for p, qq in zip(ps, q)])
    p = float(ps[np.argmax(exact)])
    rng = np.random.default_rng(7)
    robust = rng.random((M, n)) < p
    false_cert = ~robust & (rng.random((M, n)) < alpha)
    k = (robust | false_cert).sum(axis=1)
    miss = float(np.mean(population_lower(k, n, alpha, confidence) > p))
    assert miss <= tolerated(delta), (miss, exact.max())
    assert abs(miss - exact.max()) < 6 * math.sqrt(delta / M)  # the simulation is the model the exact check uses
    naive = float(np.mean(cp_lower(k, n, delta) > p))
    assert naive > tolerated(delta)  # the same simulation catches a bound that ignores alpha


def test_simulated_smoothing_population_is_covered():
    """Test sets of N examples from a population of which 60% are robust at r (pA well above the
    threshold Phi(r / sigma)) and 40% sit just below it, certified by Cohen et al.'s CERTIFY (nA of n
    samples, Clopper-Pearson at alpha): the false certificates then come at nearly rate alpha."""
    sigma, r, n_samples, alpha, confidence, n_examples = 0.5, 0.5, 100, 0.1, 0.95, 100
    delta = 1 - confidence
    threshold = norm.cdf(r / sigma)
    p_true = 0.6
    rng = np.random.default_rng(11)
    robust = rng.random((M, n_examples)) < p_true
    p_a = np.where(robust, 0.9999, threshold - 1e-6)
    n_a = rng.binomial(n_samples, p_a)
    radius = sigma * norm.ppf(np.maximum(cp_lower(n_a, n_samples, alpha), 0.5))
    certified = radius >= r
    false_rate = certified[~robust].mean()
    assert 0.5 * alpha < false_rate <= alpha * 1.05  # near the worst the certificates allow
    k = certified.sum(axis=1)
    miss = float(np.mean(population_lower(k, n_examples, alpha, confidence) > p_true))
    assert miss <= tolerated(delta), miss
    naive = float(np.mean(cp_lower(k, n_examples, delta) > p_true))
    assert naive > tolerated(delta), naive  # ignoring alpha would overclaim here


# ---------------------------------------------------------------------------------- --require parsing


@pytest.mark.parametrize(
    "specs,expected",
    [
        (["0.5:0.8"], [(0.5, 0.8)]),
        (["0.5:80%"], [(0.5, 0.8)]),
        ([" 0.25 : 0.9 ,1:50%", "0:1"], [(0.25, 0.9), (1.0, 0.5), (0.0, 1.0)]),
        (["2e-1:.75"], [(0.2, 0.75)]),
    ],
)
def test_requirements_parse(specs, expected):
    got = [(r.radius, r.at_least) for r in parse_requirements(specs)]
    assert len(got) == len(expected)  # flat: pytest >= 9's approx refuses nested sequences
    assert [x for pair in got for x in pair] == pytest.approx([x for pair in expected for x in pair])


@pytest.mark.parametrize(
    "bad", ["0.5", "a:b", "0.5:1.2", "0.5:120%", "-1:0.5", "inf:0.5", "nan:0.5", "0.5:0.8:1", "", ":"]
)
def test_malformed_requirements_are_refused(bad):
    with pytest.raises(ValueError, match="expected RADIUS:ACCURACY"):
        parse_requirements([bad])


# ------------------------------------------------------------------------------------------ samples


def results(columns: dict, meta: dict | None = None, kind: str = "certify") -> Results:
    n = len(next(iter(columns.values())))
    base = {"idx": np.arange(n), "label": np.zeros(n, int), "predict": np.zeros(n, int), "correct": np.ones(n, int)}
    base |= {"radius": np.ones(n), "time": np.ones(n)}
    return Results({**base, **{k: np.asarray(v) for k, v in columns.items()}}, None, kind, meta)


def test_samples_spent_reads_the_samples_column_first():
    meta = {"config": {"n0": 100, "n": 100_000, "sequential": True}}
    spent = samples_spent(results({"samples": list(range(1, 11)), "n": [5] * 10, "n0": [100] * 10}, meta))
    assert spent == {"mean": 5.5, "p90": 9.0, "total": 55, "fixed_n": 100_100}
    assert samples_text(spent) == "samples per example: mean 6, p90 9 (fixed-n equivalent: 100,100; 1.82e+04x fewer)"


def test_samples_spent_falls_back_to_n0_plus_n_then_to_the_fixed_run():
    meta = {"config": {"n0": 100, "n": 1000, "sequential": True}}
    rows = results({"n": [100, 200, 300, 400, 1000], "n0": [100] * 5}, meta)
    assert samples_spent(rows) == {"mean": 500.0, "p90": 1100.0, "total": 2500, "fixed_n": 1100}
    fixed = results({"pA_lower": [0.9] * 4}, {"config": {"n0": 10, "n": 90}})
    assert samples_spent(fixed) == {"mean": 100.0, "p90": 100.0, "total": 400, "fixed_n": 100}
    assert samples_spent(results({"pA_lower": [0.9] * 4}, meta)) is None  # sequential, no per-row counts
    assert samples_spent(results({"pA_lower": [0.9] * 4})) is None  # Cohen et al.'s file: unknown
    predict = results({"n": [50, 50]}, {"config": {"n0": 10, "n": 50}}, kind="predict")
    assert samples_spent(predict) == {"mean": 50.0, "p90": 50.0, "total": 100, "fixed_n": 50}
    assert samples_text(samples_spent(fixed)).endswith("(fixed-n equivalent: 100; the same)")


# ------------------------------------------------------------------------------------- CLI and files


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A fixed-n and a sequential certify run of the bundled digits model on 25 examples."""
    tmp = tmp_path_factory.mktemp("population")
    fixed, seq = tmp / "fixed.tsv", tmp / "seq.tsv"
    common = ["-q", "certify", "--skip", "40", "--seed", "0"]
    assert invoke([*common, "--n0", "20", "--n", "300", "--out", str(fixed)]).exit_code == 0
    assert invoke([*common, "--n", "2000", "--sequential", "--out", str(seq)]).exit_code == 0
    return tmp, fixed, seq


def test_json_gives_lower_bounds_beside_certified_accuracy_and_the_samples(run):
    tmp, fixed, seq = run
    out = invoke(["analyze", str(fixed), str(seq), "--json", "--radii", "0,0.25", "--confidence", "0.9"])
    assert out.exit_code == 0, out.output
    summaries = json.loads(out.stdout)
    for s, path in zip(summaries, (fixed, seq)):
        res = analysis.read_run(path)
        n = len(res)
        assert s["examples"] == n == 25 and s["confidence"] == 0.9 and s["alpha"] == 0.001
        for r in ("0", "0.25"):
            k = round(s["certified_accuracy"][r] * n)
            assert s["certified_accuracy_lower"][r] == pytest.approx(float(population_lower(k, n, 0.001, 0.9)))
            assert s["certified_accuracy_lower"][r] < s["certified_accuracy"][r]
        assert s["accuracy_lower"] == s["certified_accuracy_lower"]["0"]
        per = np.asarray(res["n0"]) + np.asarray(res["n"])
        assert s["samples_per_example"]["mean"] == pytest.approx(per.mean())
        assert s["samples_per_example"]["total"] == per.sum()
    assert summaries[0]["samples_per_example"] == {"mean": 320.0, "p90": 320.0, "total": 8000, "fixed_n": 320}
    assert summaries[1]["samples_per_example"]["fixed_n"] == 2100
    assert summaries[1]["samples_per_example"]["mean"] < 2100  # the sequential run stopped early


def test_certify_summary_shows_bounds_and_samples(tmp_path):
    res = invoke(
        ["certify", "--skip", "100", "--n0", "10", "--n", "200", "--seed", "1", "--out", str(tmp_path / "a.tsv")]
    )
    assert res.exit_code == 0, res.output
    assert "(≥ " in res.output and "lower confidence bound on the population" in res.output
    assert "from 10 examples" in res.output
    assert "samples per example: mean 210, p90 210 (fixed-n equivalent: 210; the same)" in res.output
    js = invoke(
        [
            "certify",
            "--skip",
            "100",
            "--n0",
            "10",
            "--n",
            "200",
            "--seed",
            "1",
            "--json",
            "--out",
            str(tmp_path / "b.tsv"),
        ]
    )
    s = json.loads(js.stdout)
    assert s["samples_per_example"]["fixed_n"] == 210 and set(s["certified_accuracy_lower"]) == set(
        s["certified_accuracy"]
    )


def test_tables_show_the_bounds_and_the_examples_they_rest_on(run):
    tmp, fixed, _ = run
    res = analysis.read_run(fixed)
    rows = analysis.table_rows({"f": res}, (0.0, 0.25), confidence=0.95)
    k = np.rint(np.asarray(rows[0].certified) * 25).astype(int)
    assert rows[0].lower == pytest.approx(tuple(population_lower(k, 25, 0.001, 0.95)))
    md = analysis.to_markdown(rows)
    cells = md.splitlines()[2].split(" | ")
    assert cells[2] == f"{100 * rows[0].certified[0]:.1f} (≥ {population.lower_percent(rows[0].lower[0])})"
    assert "from 25 examples" in md and "alpha = 0.001" in md
    assert "samples per example: mean 320" in md
    parsed = analysis.to_csv(rows).splitlines()
    head = parsed[0].split(",")
    assert head[7:] == [
        "max_radius",
        "r=0.00 lower",
        "r=0.25 lower",
        "confidence",
        "alpha",
        "samples_mean",
        "samples_p90",
        "fixed_n",
    ]
    row = dict(zip(head, parsed[1].split(",")))
    assert float(row["r=0.25 lower"]) == pytest.approx(rows[0].lower[1]) and row["fixed_n"] == "320"
    assert "$\\geq$" in analysis.to_latex(rows)
    assert population.lower_percent(0.3899999) == "38.9" and population.lower_percent(0.39) == "39.0"


def test_require_passes_and_fails_on_the_lower_bound(run, capsys):
    tmp, fixed, _ = run
    res = analysis.read_run(fixed)
    acc = float(analysis.certified_accuracy(res, [0.25])[0])
    lower = float(analysis.certified_accuracy_lower(res, [0.25])[0])
    assert lower < acc
    ok = invoke(["analyze", str(fixed), "--require", f"0.25:{math.floor(lower * 1e5) / 1e5}"])
    assert ok.exit_code == 0, ok.output
    # between the bound and the point estimate: the point estimate would pass, the bound does not
    between = (lower + acc) / 2
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(fixed), "--require", f"0.25:{between:.4f},0:0.01", "--radii", "0.25"])
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("rs-onnx: error:")]
    assert e.value.code == 1 and len(errors) == 1, captured.err
    assert f"--require 0.25:{between:.4f} not met by fixed" in errors[0] and "0:0.01" not in errors[0]
    assert f"{100 * acc:.1f}% of 25 examples" in errors[0] and population.lower_percent(lower) in errors[0]
    assert "| fixed | 25 |" in captured.out  # the table is still printed: a CI log shows the numbers


def test_require_uses_the_radius_column_of_the_table(run):
    tmp, fixed, _ = run
    res = analysis.read_run(fixed)
    r = float(np.median(res.radius[res.correct == 1]))
    l2 = invoke(["analyze", str(fixed), "--require", f"{r}:0.2"])
    linf = invoke_caught(["analyze", str(fixed), "--radius-column", "radius_linf", "--require", f"{r}:0.2"])
    assert l2.exit_code == 0, l2.output
    assert linf.exit_code == 1 and isinstance(linf.exception, RequirementError)
    assert f"not met by fixed (linf): certified accuracy at r = {r:g} is 0.0%" in str(linf.exception)


def test_require_json_records_each_check(run):
    tmp, fixed, seq = run
    out = invoke_caught(["analyze", str(fixed), str(seq), "--json", "--require", "0:0.5", "--require", "0.25:99%"])
    assert out.exit_code == 1 and isinstance(out.exception, RequirementError)
    summaries = json.loads(out.stdout)
    for s in summaries:
        assert [(c["radius"], c["required"]) for c in s["requirements"]] == [(0.0, 0.5), (0.25, 0.99)]
        assert [c["met"] for c in s["requirements"]] == [True, False]
        assert s["requirements"][1]["certified_accuracy_lower"] == s["certified_accuracy_lower"]["0.25"]


def test_malformed_require_is_a_usage_error_and_prints_nothing(run, capsys):
    tmp, fixed, _ = run
    res = invoke(["analyze", str(fixed), "--require", "0.5:1.2"])
    assert res.exit_code == 2 and "expected RADIUS:ACCURACY" in res.output and "| fixed" not in res.output
    for flag, value in (("--confidence", "1"), ("--confidence", "nan"), ("--alpha", "nan"), ("--alpha", "1")):
        bad = invoke(["analyze", str(fixed), flag, value])
        assert bad.exit_code == 2 and "| fixed" not in bad.output, (flag, value, bad.output)
    assert invoke(["report", str(fixed), "-o", str(tmp / "x.html"), "--confidence", "nan"]).exit_code == 2
    assert not (tmp / "x.html").exists()
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(fixed), "--require", "half:0.8", "--plot", str(tmp / "never.png")])
    captured = capsys.readouterr()
    assert e.value.code != 0 and captured.out == "" and not (tmp / "never.png").exists()
    assert [ln for ln in captured.err.splitlines() if ln.startswith("rs-onnx: error:")] == [
        ln for ln in captured.err.splitlines() if "error" in ln
    ]
    assert "'half:0.8': expected RADIUS:ACCURACY" in captured.err


def test_unknown_alpha_has_no_bound_and_refuses_a_gate(tmp_path, capsys):
    tsv = tmp_path / "cohen.tsv"
    tsv.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n" + "".join(f"{i}\t1\t1\t0.6\t1\t1.0\n" for i in range(40))
    )
    table = invoke(["analyze", str(tsv)])
    assert table.exit_code == 0 and "(≥" not in table.output.splitlines()[2]
    assert "alpha unknown (no meta.json); give --alpha" in table.output
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(tsv), "--require", "0.5:0.5", "--plot", str(tmp_path / "p.png")])
    captured = capsys.readouterr()
    assert e.value.code == 1 and captured.out == "" and "alpha is unknown" in captured.err
    assert not (tmp_path / "p.png").exists()  # refused before any output
    given = invoke(["analyze", str(tsv), "--alpha", "0.001", "--require", "0.5:0.9", "--json"])
    assert given.exit_code == 0, given.output
    s = json.loads(given.stdout)[0]
    assert s["alpha"] == 0.001
    assert s["certified_accuracy_lower"]["0.5"] == pytest.approx((0.05 ** (1 / 40) - 0.001) / 0.999, abs=1e-10)


def test_report_shows_bounds_and_samples(run):
    tmp, fixed, seq = run
    out = tmp / "r.html"
    assert invoke(["report", str(fixed), str(seq), "-o", str(out), "--confidence", "0.9"]).exit_code == 0
    text = out.read_text()
    res = analysis.read_run(fixed)
    acc = analysis.certified_accuracy(res, [0.0])[0]
    lower = analysis.certified_accuracy_lower(res, [0.0], 0.9)[0]
    assert f"<td>{100 * acc:.1f} (≥ {population.lower_percent(lower)})</td>" in text
    assert "one-sided 90% lower confidence bound" in text and "from 25 examples" in text
    assert "samples/example: mean" in text and "<td>320</td><td>320</td><td>320</td>" in text


def test_requirement_objects():
    assert str(Requirement(0.5, 0.8)) == "0.5:0.8"
    assert population.requirement_radii(parse_requirements(["1:0.1,0.5:0.2,1:0.3"])) == (0.5, 1.0)
    with pytest.raises(RequirementError, match="not met"):
        population.enforce(
            [
                {
                    "run": "a",
                    "radius": 0.5,
                    "required": 0.8,
                    "certified_accuracy": 0.85,
                    "certified_accuracy_lower": 0.79,
                    "examples": 100,
                    "confidence": 0.95,
                    "alpha": 0.001,
                    "met": False,
                }
            ]
        )
    population.enforce([])
