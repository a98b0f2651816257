"""Issue 18: CLI conventions, progress, summaries and --json, out-of-reach radii, fast --help, doctor."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import beta, norm

from rs_onnx import analysis
from rs_onnx.cli import cli, main
from rs_onnx.progress import Progress
from rs_onnx.stats import population_lower
from tests.conftest import invoke_cli as invoke
from tests.onnx_models import linear_model, save

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def constant(tmp_path):
    """A model that answers class 0 whatever the input, and 5 images of class 0: every sample votes for
    the label, so each radius is exactly the largest certifiable at n and alpha."""
    w = np.zeros((3, 16), np.float32)
    model = save(linear_model(w, np.array([5.0, 0.0, 0.0], np.float32), input_shape=(1, 4, 4)), tmp_path / "c.onnx")
    data = tmp_path / "c.npz"
    np.savez(data, images=np.zeros((5, 4, 4), np.uint8), labels=np.zeros(5, np.uint8))
    return str(model), str(data), tmp_path


BASE = ["--sigma", "0.25", "--n0", "20", "--n", "200", "--seed", "0", "--batch-size", "100"]


# ------------------------------------------------------------------------------------------ conventions


def test_bare_command_prints_help_and_exits_0(capsys):
    res = invoke([])
    assert res.exit_code == 0 and "Usage:" in res.output and "certify" in res.output
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 0 and "Usage:" in capsys.readouterr().out


def test_quiet_and_debug_work_after_the_subcommand(linear):
    model, data, tmp = linear
    before = invoke(["-q", "certify", model, data, *BASE, "--out", str(tmp / "a.tsv")])
    after = invoke(["certify", model, data, *BASE, "--out", str(tmp / "b.tsv"), "-q"])
    assert before.exit_code == after.exit_code == 0, after.output
    assert "examples" not in before.stderr and "examples" not in after.stderr  # no progress when quiet
    loud = invoke(["certify", model, data, *BASE, "--out", str(tmp / "c.tsv")])
    assert "12/12 examples" in loud.stderr
    from rs_onnx.errors import RsOnnxError

    with pytest.raises(RsOnnxError):  # --debug after the subcommand: the traceback, not one line
        main(["certify", model, data, "--sigma", "0", "--debug"])
    # after --, -q is an argument (a file name here), never the global flag
    res = CliRunner().invoke(cli, ["analyze", "--", "-q"])
    assert res.exit_code != 0 and "results file -q: not found" in str(res.exception)


def test_choices_are_case_insensitive(linear):
    model, data, _ = linear
    res = invoke(
        [
            "certify",
            model,
            data,
            "--layout",
            "NCHW",
            "--preset",
            "MNIST",
            "--bound",
            "BEST",
            "--backend",
            "Local",
            "--dump-config",
        ]
    )
    assert res.exit_code == 0, res.output
    assert "layout: nchw" in res.output and "preset: mnist" in res.output and "bound: best" in res.output
    bad = invoke(["certify", model, data, "--layout", "NCWH", "--dump-config"])
    assert bad.exit_code == 2 and "nchw" in bad.output


@pytest.mark.parametrize("flag", ["--mean", "--std"])
def test_mean_and_std_take_repeated_flags_and_comma_lists(linear, flag):
    model, data, _ = linear
    values = ["0.485", "0.456", "0.406"]
    repeated = invoke(["certify", model, data, *[x for v in values for x in (flag, v)], "--dump-config"])
    listed = invoke(["certify", model, data, flag, ",".join(values), "--dump-config"])
    mixed = invoke(["certify", model, data, flag, "0.485,0.456", flag, "0.406", "--dump-config"])
    assert repeated.exit_code == listed.exit_code == mixed.exit_code == 0, listed.output
    assert repeated.output == listed.output == mixed.output
    key = flag.lstrip("-")
    assert f"{key}:\n- 0.485\n- 0.456\n- 0.406\n" in listed.output
    bad = invoke(["certify", model, data, flag, "0.4,abc", "--dump-config"])
    assert bad.exit_code == 2 and "expected numbers" in bad.output


def test_radii_take_both_forms_in_certify_and_analyze(linear):
    model, data, tmp = linear
    a = invoke(["certify", model, data, "--sequential", "--radii", "0.1,0.2", "--dump-config"])
    b = invoke(["certify", model, data, "--sequential", "--radii", "0.1", "--radii", "0.2", "--dump-config"])
    assert a.exit_code == b.exit_code == 0 and a.output == b.output and "radii:\n- 0.1\n- 0.2\n" in a.output
    out = tmp / "r.tsv"
    assert invoke(["-q", "certify", model, data, *BASE, "--out", str(out)]).exit_code == 0
    forms = [
        ["--radii", "0,0.25,0.5"],
        ["--radii", "0", "--radii", "0.25", "--radii", "0.5"],
        ["--radii", "0", "0.25", "0.5"],
    ]  # the last: Cohen-style space-separated, still accepted
    outputs = [invoke(["analyze", str(out), *f]).output for f in forms]
    assert outputs[0] == outputs[1] == outputs[2] and "r=0.50" in outputs[0] and "r=0.75" not in outputs[0]


def test_out_dash_is_stdout_and_creates_no_file(linear, monkeypatch):
    model, data, tmp = linear
    monkeypatch.chdir(tmp)
    res = invoke(["-q", "predict", model, data, "--sigma", "0.25", "--n", "100", "--seed", "0", "--out", "-"])
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0].startswith("idx\tlabel\tpredict") and len(res.stdout.splitlines()) == 13
    assert not (tmp / "-").exists() and not (tmp / "-.meta.json").exists()


def test_alpha_above_half_warns(linear):
    model, data, _ = linear
    res = invoke(["certify", model, data, "--alpha", "0.6", "--dump-config"])
    assert res.exit_code == 0 and "alpha=0.6" in res.stderr and "expected a small" in res.stderr
    assert "alpha=" not in invoke(["certify", model, data, "--alpha", "0.01", "--dump-config"]).stderr


def test_certify_help_says_what_data_may_be():
    text = invoke(["certify", "--help"]).output
    assert ".npz" in text and "--label" in text and "folder" in text and "labels" in text


def test_compose_says_wrote_once(tmp_path):
    from tests.test_compose import denoiser

    rng = np.random.default_rng(1)
    clf = save(linear_model(rng.normal(size=(3, 16)).astype(np.float32), input_shape=(1, 4, 4)), tmp_path / "c.onnx")
    den = save(denoiser((1, 4, 4)), tmp_path / "d.onnx")
    res = invoke(["compose", str(clf), "--denoiser", str(den), "-o", str(tmp_path / "dc.onnx")])
    assert res.exit_code == 0, res.output
    assert res.output.count("rs-onnx: wrote") == 1 and (tmp_path / "dc.onnx").exists()


def _imported(args: list[str]) -> set[str]:
    """Modules imported by `rs-onnx ARGS` in a fresh interpreter (python -X importtime)."""
    code = f"from rs_onnx.cli import main; main({args!r})"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["certify", "--help"], ["report", "--help"]])
def test_help_and_version_import_nothing_heavy(args):
    heavy = {"scipy", "scipy.stats", "onnx", "onnxruntime", "matplotlib", "yaml"}  # numpy: rs_onnx.guard needs it
    assert not (heavy & _imported(args))


COMMANDS = ["analyze", "bench", "certify", "compose", "doctor", "inspect", "predict", "report", "verify"]


@pytest.mark.parametrize("first", ["rs_onnx.cli", "rs_onnx.cli_run", "rs_onnx.cli_tools", "rs_onnx.cli_options"])
def test_every_command_is_registered_whichever_cli_module_is_imported_first(first):
    # The commands live in cli_run and cli_tools and register on rs_onnx.cli's group: importing one of
    # those modules before rs_onnx.cli must not lose a command (or fail on the circular import).
    code = f"import {first}, rs_onnx.cli as c; print(','.join(sorted(c.cli.commands)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [",".join(COMMANDS)]


def test_python_m_rs_onnx_cli_lists_and_runs_every_command():
    # python -m rs_onnx.cli runs cli.py as __main__: the commands must still be there (they register on the
    # package's rs_onnx.cli, which __main__ must run), as with the rs-onnx entry point.
    proc = subprocess.run(
        [sys.executable, "-m", "rs_onnx.cli", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = proc.stdout.split("Commands:")[1].split()
    assert all(c in listed for c in COMMANDS), proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "rs_onnx.cli", "verify", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0 and "Recompute every row" in proc.stdout, proc.stderr[-2000:]


def test_version_names_the_onnxruntime_build(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "rs-onnx 0.1.0" in out and "onnxruntime" in out and "doctor" in out


# ------------------------------------------------------------------------------- out-of-reach radii


@pytest.mark.parametrize("n,alpha", [(1, 0.5), (100, 0.001), (10_000, 0.001), (100_000, 1e-5)])
def test_max_certifiable_radius_is_the_exact_clopper_pearson_bound(n, alpha):
    sigma = 0.5
    # one-sided Clopper-Pearson lower bound at n successes out of n: the alpha quantile of Beta(n, 1)
    expected = sigma * norm.ppf(beta.ppf(alpha, n, 1))
    assert analysis.max_certifiable_radius(sigma, n, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bound", ["cohen", "best"])
def test_radii_reach_exactly_the_bound_and_beyond_it_are_marked(constant, bound):
    model, data, tmp = constant
    out = tmp / f"{bound}.tsv"
    res = invoke(
        [
            "-q",
            "certify",
            model,
            data,
            "--sigma",
            "0.25",
            "--n0",
            "10",
            "--n",
            "100",
            "--alpha",
            "0.001",
            "--seed",
            "0",
            "--bound",
            bound,
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    r_max = 0.25 * norm.ppf(0.001 ** (1 / 100))  # 0.375
    radii = analysis.read_results(out).radius
    assert radii.max() <= r_max * (1 + 1e-9)  # no certificate beyond the bound
    if bound == "cohen":  # every sample votes for class 0: the bound is reached, so it is not too loose
        assert radii == pytest.approx(np.full(5, r_max), rel=1e-9)
    table = res.stdout
    row = next(line for line in table.splitlines() if line.startswith("| certified accuracy"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    low = f"100.0 (≥ {analysis.lower_percent(population_lower(5, 5, 0.001, 0.95))})"  # the population bound
    assert cells[1] == "5" and cells[2:7] == [low, low, "–", "–", "–"]  # r=0.25 < 0.375 < 0.5
    assert "out of reach" in table and f"{r_max:.3f}" in table
    assert "| run | examples |" in table and "| n |" not in table


def test_json_summaries_of_certify_predict_and_analyze(constant):
    model, data, tmp = constant
    out = tmp / "c.tsv"
    res = invoke(
        [
            "-q",
            "certify",
            model,
            data,
            "--sigma",
            "0.25",
            "--n0",
            "10",
            "--n",
            "100",
            "--seed",
            "0",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    r_max = 0.25 * norm.ppf(0.001 ** (1 / 100))
    assert s["examples"] == 5 and s["accuracy"] == 1.0 and s["status"] == "complete"
    assert s["max_radius"] == pytest.approx(r_max) and s["acr"] == pytest.approx(r_max)
    assert s["certified_accuracy"] == {"0": 1.0, "0.25": 1.0, "0.5": None, "0.75": None, "1": None}
    pout = tmp / "p.tsv"
    res = invoke(
        ["-q", "predict", model, data, "--sigma", "0.25", "--n", "100", "--seed", "0", "--out", str(pout), "--json"]
    )
    p = json.loads(res.stdout)
    assert p["mode"] == "predict" and p["examples"] == 5 and p["accuracy"] == 1.0 and p["abstention_rate"] == 0.0
    res = invoke(["analyze", str(out), str(pout), "--json"])
    both = json.loads(res.stdout)
    assert [b["run"] for b in both] == ["c", "p"] and both[0]["certified_accuracy"] == s["certified_accuracy"]
    no_out = invoke(["-q", "certify", model, data, "--sigma", "0.25", "--n", "100", "--json"])
    assert no_out.exit_code == 2 and "--json needs --out" in no_out.output


def test_predict_summary_and_analyze_reads_predict_tsvs(linear):
    model, data, tmp = linear
    out = tmp / "p.tsv"
    res = invoke(
        [
            "-q",
            "predict",
            model,
            data,
            "--sigma",
            "0.5",
            "--n",
            "60",
            "--alpha",
            "0.01",
            "--seed",
            "2",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    head, rows = rows[0], rows[1:]
    correct = np.mean([int(r[head.index("correct")]) for r in rows])
    abstain = np.mean([int(r[head.index("predict")]) == -1 for r in rows])
    assert f"accuracy {100 * correct:.1f}%" in res.stdout and f"abstained {100 * abstain:.1f}%" in res.stdout
    assert "s per example" in res.stdout
    table = invoke(["analyze", str(out)]).stdout
    cells = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    low = analysis.lower_percent(population_lower(round(12 * correct), 12, 0.01, 0.95))  # PREDICT's alpha
    assert cells[1] == "12" and cells[2] == f"{100 * correct:.1f} (≥ {low})" and cells[3:8] == ["–"] * 4 + ["–"]
    assert "PREDICT certifies no radius" in table


# ------------------------------------------------------------------------------------------- progress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Tty:
    def __init__(self, tty):
        self.text, self._tty = "", tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return self._tty


def test_progress_in_a_log_is_one_plain_line_every_30_seconds():
    clock, stream = _Clock(), _Tty(False)
    p = Progress("certify", 100, stream=stream, samples_per_example=1000, clock=clock)
    for _ in range(90 * 10):  # 90 s of updates, 10 a second
        clock.t += 0.1
        p.samples(100)
    p.examples(90)
    p.close()
    lines = stream.text.splitlines()
    assert "\r" not in stream.text and 3 <= len(lines) <= 5  # at 30, 60, 90 s and the end
    assert lines[-1].startswith("rs-onnx: certify 90/100 examples") and "1k samples/s" in lines[-1]


def test_progress_on_a_terminal_redraws_one_line_with_eta():
    clock, stream = _Clock(), _Tty(True)
    p = Progress("certify", 10, done=4, stream=stream, clock=clock)  # 4 done by an earlier run (--resume)
    clock.t = 10.0
    p.examples(2)  # 2 examples in 10 s, 4 left: ETA 20 s
    assert stream.text.startswith("\r") and "6/10 examples (60%)" in stream.text and "ETA 0:20" in stream.text
    clock.t = 30.0
    p.examples(4)
    p.close()
    assert stream.text.endswith("\n") and "10/10 examples (100%)" in stream.text and "done in 0:30" in stream.text


def test_progress_ends_at_total_after_resume_and_in_sequential_runs(linear):
    model, data, tmp = linear
    out = tmp / "r.tsv"
    assert invoke(["certify", model, data, *BASE, "--end", "5", "--out", str(out)]).exit_code == 0
    res = invoke(["certify", model, data, *BASE, "--resume", "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if " examples (" in ln]
    assert lines[-1].startswith("rs-onnx: certify 12/12 examples (100%)") and "\r" not in res.stderr
    seq = invoke(
        [
            "certify",
            model,
            data,
            "--sigma",
            "0.25",
            "--n",
            "20000",
            "--seed",
            "0",
            "--sequential",
            "--out",
            str(tmp / "s.tsv"),
        ]
    )
    assert seq.exit_code == 0, seq.output
    assert [ln for ln in seq.stderr.splitlines() if " examples (" in ln][-1].startswith(
        "rs-onnx: certify 12/12 examples (100%)"
    )


# --------------------------------------------------------------------------------------------- doctor


def _fake_dist(root: Path, name: str, version: str) -> None:
    d = root / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_doctor_detects_onnxruntime_builds_side_by_side(tmp_path, monkeypatch):
    from rs_onnx import doctor

    builds = {n for n, _ in doctor.onnxruntime_distributions()}
    other = "onnxruntime" if "onnxruntime-gpu" in builds else "onnxruntime-gpu"
    assert doctor.onnxruntime_conflict() is None or len(builds) > 1
    _fake_dist(tmp_path, other, "1.17.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = doctor.onnxruntime_distributions()
    assert (other, "1.17.0") in found
    text = doctor.onnxruntime_conflict()
    assert text and "side by side" in text and "pip uninstall -y" in text and "onnxruntime-gpu" in text
    res = invoke(["doctor"])
    assert res.exit_code == 1 and "problem:" in res.output and other in res.output
    assert "warning:" in invoke(["--version"]).output


def test_doctor_passes_on_a_clean_install():
    from rs_onnx import doctor

    if doctor.onnxruntime_conflict() or doctor.has_nvidia_gpu():
        pytest.skip("this machine has clashing onnxruntime builds or a GPU: the clean-install case does not apply")
    res = invoke(["doctor"])
    assert res.exit_code == 0 and "CPUExecutionProvider" in res.output and "all checks passed" in res.output


def test_cuda_reason_names_a_cpu_build_and_a_missing_library(tmp_path):
    from rs_onnx import doctor

    assert doctor.cuda_unavailable_reason(gpu=False) is None
    cpu_build = doctor.cuda_unavailable_reason(providers=["CPUExecutionProvider"], gpu=True)
    assert "CPU build" in cpu_build and "onnxruntime-gpu" in cpu_build
    if subprocess.run(["which", "gcc"], check=False, capture_output=True).returncode:
        pytest.skip("no gcc to build a library with a missing dependency")
    (tmp_path / "dep.c").write_text("int dep(void){return 1;}\n")
    (tmp_path / "lib.c").write_text("int dep(void); int f(void){return dep();}\n")
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libcudnn_adv.so.9"), str(tmp_path / "dep.c")], check=True
    )
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-o",
            str(tmp_path / "libprov.so"),
            str(tmp_path / "lib.c"),
            str(tmp_path / "libcudnn_adv.so.9"),
        ],
        check=True,
    )
    (tmp_path / "libcudnn_adv.so.9").unlink()
    why = doctor.cuda_unavailable_reason(
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"], library=tmp_path / "libprov.so", gpu=True
    )
    assert "libcudnn_adv.so.9 is missing: this onnxruntime needs cuDNN 9" in why and "rs-onnx[cuda]" in why


def test_device_auto_with_an_unusable_gpu_says_why(linear, monkeypatch, caplog):
    from rs_onnx import doctor
    from rs_onnx.classifier import OnnxClassifier

    model, _, _ = linear
    monkeypatch.setattr(doctor, "has_nvidia_gpu", lambda: True)
    monkeypatch.setattr("rs_onnx.loader.cuda_works", lambda index=0: False)
    doctor.warn_if_gpu_unused.cache_clear()
    with caplog.at_level("WARNING", logger="rs_onnx"):
        OnnxClassifier(model, device="auto")
        OnnxClassifier(model, device="auto")
    doctor.warn_if_gpu_unused.cache_clear()
    lines = [r.getMessage() for r in caplog.records if "NVIDIA GPU" in r.getMessage()]
    assert len(lines) == 1 and "running on CPU" in lines[0]


# ----------------------------------------------------------------------------------------------- plot


def test_plot_names_each_run_marks_its_reach_and_keeps_the_legend_outside(constant, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    model, data, tmp = constant
    out = tmp / "c.tsv"
    assert (
        invoke(
            [
                "-q",
                "certify",
                model,
                data,
                "--sigma",
                "0.25",
                "--n0",
                "10",
                "--n",
                "100",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        ).exit_code
        == 0
    )
    figures = []
    save_fig = Figure.savefig

    def capture(self, *args, **kwargs):
        figures.append(self)
        return save_fig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    res = invoke(["analyze", str(out), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0 and (tmp_path / "p.png").stat().st_size > 5000
    fig = figures[-1]
    ax = fig.axes[0]
    assert "c.onnx" in ax.get_title() and "sigma=0.25" in ax.get_title() and "n=100" in ax.get_title()
    assert (
        "l2" in ax.get_xlabel()
        and "radius" in ax.get_xlabel()
        and "pixel units" in ax.get_xlabel()
        and "%" in ax.get_ylabel()
    )
    r_max = 0.25 * norm.ppf(0.001 ** (1 / 100))
    marks = [line for line in ax.get_lines() if "largest certifiable radius" in str(line.get_label())]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == pytest.approx(r_max)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # to the right of the curves, never over them
