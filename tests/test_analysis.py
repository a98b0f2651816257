"""Tests of rs_onnx.analysis: reading results, certified accuracy, ACR, tables and plots."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rs_onnx import analysis
from rs_onnx.analysis import (
    average_certified_radius,
    certified_accuracy,
    plot_certified_accuracy,
    read_results,
    summary,
    table_rows,
    to_csv,
    to_latex,
    to_markdown,
)
from rs_onnx.errors import ConfigError, DataError, RsOnnxError

from tests.conftest import SHARED

COHEN = SHARED / "data" / "reference" / "cohen2019_certify_cifar10"
COHEN_025 = COHEN / "noise_0.25_sigma_0.25.tsv"
needs_cohen = pytest.mark.skipif(not COHEN_025.is_file(), reason=f"Cohen et al.'s reference logs not found at {COHEN}")

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA_lower\tradius_tv\tnote\n"
# correct rows: 0 (r 0.5), 1 (r 0.2), 4 (r 0.0); row 3 is wrong with a large radius; row 2 abstains.
SYNTH = HEADER + "".join(
    [
        "0\t1\t1\t0.5\t1\t1.0\t0.9772\t0.4\tok\n",
        "1\t2\t2\t0.2\t1\t0:00:02\t0.7881\t0.1\tok\n",
        "2\t3\t-1\t0.0\t0\t0:00:03.000000\t0.4\t0.0\tabstain\n",
        "3\t4\t5\t0.7\t0\t4\t0.99\t0.6\twrong\n",
        "4\t0\t0\t0.0\t1\t5.0\t0.5\t0.0\tok\n",
    ]
)


def write(tmp_path: Path, text: str, name: str = "r.tsv", encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


@pytest.fixture
def synth(tmp_path):
    return read_results(write(tmp_path, SYNTH))


# --------------------------------------------------------------------------------------- Cohen's files


@needs_cohen
def test_reproduces_cohen_cifar10_sigma_025():
    res = read_results(COHEN_025)
    radii = np.arange(0.0, 1.0001, 0.25)
    acc = certified_accuracy(res, radii)
    acr = average_certified_radius(res)
    print("\nCohen et al. 2019, CIFAR-10, sigma = 0.25 (500 images):")
    for r, a in zip(radii, acc):
        print(f"  certified accuracy at r = {r:.2f}: {100 * a:.1f}%")
    print(f"  ACR = {acr:.4f}; {summary(res)}")
    published = [0.75, 0.60, 0.43, 0.27]
    assert np.all(np.abs(acc[:4] - published) <= 0.01)
    assert acc.tolist() == [0.748, 0.6, 0.428, 0.266, 0.0]  # exact counts out of 500
    assert acr == pytest.approx(0.42888364, abs=1e-12)
    assert summary(res)["abstention_rate"] == pytest.approx(0.086)


@needs_cohen
@pytest.mark.parametrize("path", sorted(COHEN.glob("*.tsv")) or [COHEN_025], ids=lambda p: p.name)
def test_every_cohen_file_matches_an_independent_reading(path):
    # Both time formats occur in these files: "15.4" and "0:00:13.736080".
    res = read_results(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    correct = np.array([int(r["correct"]) for r in rows])
    radius = np.array([float(r["radius"]) for r in rows])
    assert len(res) == len(rows) == 500
    for r in (0.0, 0.25, 0.5, 1.0, 1.5):
        assert certified_accuracy(res, r) == np.mean((correct == 1) & (radius >= r))
    assert np.all((res.time > 10) & (res.time < 30))  # seconds per image on Cohen's GPU
    assert np.array_equal(res.predict == -1, np.array([r["predict"] == "-1" for r in rows]))


# ------------------------------------------------------------------------------- synthetic, by hand


def test_synthetic_hand_computed(synth):
    assert len(synth) == 5
    assert synth.names == ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "radius_tv", "note"]
    assert synth.time.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert synth.idx.dtype == np.int64 and synth.radius.dtype == np.float64
    assert synth["note"].tolist() == ["ok", "ok", "abstain", "wrong", "ok"]
    assert synth["pA_lower"].dtype == np.float64
    radii = [0.0, 0.1, 0.2, 0.25, 0.5, 0.51]
    assert certified_accuracy(synth, radii).tolist() == [0.6, 0.4, 0.4, 0.2, 0.2, 0.0]
    assert average_certified_radius(synth) == pytest.approx(0.7 / 5)
    assert certified_accuracy(synth, [0.0, 0.1, 0.4], radius_column="radius_tv").tolist() == [0.6, 0.4, 0.2]
    assert average_certified_radius(synth, "radius_tv") == pytest.approx(0.5 / 5)
    assert summary(synth) == pytest.approx(
        {"examples": 5, "accuracy": 0.6, "abstention_rate": 0.2, "time_per_image": 3.0, "acr": 0.14}
    )


def test_certified_accuracy_shapes_and_plain_dicts(synth):
    assert isinstance(certified_accuracy(synth, [0.0]), np.ndarray)
    assert certified_accuracy(synth, 0.2).shape == ()
    assert certified_accuracy(synth, np.zeros((2, 3))).shape == (2, 3)
    plain = {"correct": [1, 1, 0, 1], "radius": [0.3, 0.0, 0.9, 0.1]}
    assert certified_accuracy(plain, [0.0, 0.1, 0.3]).tolist() == [0.75, 0.5, 0.25]
    assert average_certified_radius(plain) == pytest.approx(0.1)
    with pytest.raises(DataError, match="'radius_tv'"):
        certified_accuracy(plain, 0.0, radius_column="radius_tv")
    with pytest.raises(DataError, match="'nope'"):
        synth["nope"]


def test_time_formats(tmp_path):
    text = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    text += "0\t1\t1\t0.1\t1\t0:01:02.5\n1\t1\t1\t0.1\tTrue\t1 day, 0:00:01\n2\t1\t1\t0.1\t0\t3 days, 10:00:00\n"
    res = read_results(write(tmp_path, text))
    assert res.time.tolist() == [62.5, 86401.0, 3 * 86400 + 36000.0]
    assert res.correct.tolist() == [1, 1, 0]


def test_extra_columns_and_crlf_and_trailing_blank_lines(tmp_path):
    text = SYNTH.replace("\n", "\r\n") + "\r\n\r\n"
    res = read_results(write(tmp_path, text))
    assert len(res) == 5 and res["note"][0] == "ok"


# -------------------------------------------------------------------------------------------- tables


def test_tables_contain_the_right_numbers(synth, tmp_path):
    other = read_results(
        write(tmp_path, HEADER + "0\t1\t1\t0.3\t1\t2\t0.9\t0.2\tx\n1\t1\t2\t0\t0\t4\t0.1\t0\ty\n", name="b.tsv")
    )
    runs = {"synth_a & 100%": synth, "b|c": other}
    rows = table_rows(runs, radii=(0.0, 0.25, 0.5))
    assert rows[0].certified == (0.6, 0.2, 0.2) and rows[1].certified == (0.5, 0.5, 0.0)

    md = to_markdown(rows)
    print("\n" + md)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| run | examples | r=0.00 (%) | r=0.25 (%) | r=0.50 (%) | ACR | abstain (%) | s/img |")
    assert lines[2] == "| synth_a & 100% | 5 | 60.0 | 20.0 | 20.0 | 0.140 | 20.0 | 3 |"
    assert lines[3] == "| b\\|c | 2 | 50.0 | 50.0 | 0.0 | 0.150 | 0.0 | 3 |"

    parsed = list(csv.reader(io.StringIO(to_csv(rows))))
    assert parsed[0] == [
        "run",
        "examples",
        "r=0.00",
        "r=0.25",
        "r=0.50",
        "acr",
        "abstention_rate",
        "time_per_image",
        "max_radius",
        "r=0.00 lower",
        "r=0.25 lower",
        "r=0.50 lower",
        "confidence",
        "alpha",
        "samples_mean",
        "samples_p90",
        "fixed_n",
    ]
    # no meta.json: reach, alpha (so the lower bounds) and the samples are unknown
    assert parsed[1][0] == "synth_a & 100%" and parsed[1][8] == parsed[2][8] == ""
    assert parsed[1][9:] == parsed[2][9:] == ["", "", "", "0.95", "", "", "", ""]
    assert [float(v) for v in parsed[1][1:8]] == pytest.approx([5, 0.6, 0.2, 0.2, 0.14, 0.2, 3.0])
    assert [float(v) for v in parsed[2][1:8]] == pytest.approx([2, 0.5, 0.5, 0.0, 0.15, 0.0, 3.0])

    tex = to_latex(rows)
    print(tex)
    assert r"synth\_a \& 100\% & 5 & 60.0 & 20.0 & 20.0 & 0.140 & 20.0 & 3 \\" in tex
    assert tex.startswith(r"\begin{tabular}{lrrrrrrr}") and r"\end{tabular}" in tex.splitlines()
    after = tex.splitlines()[tex.splitlines().index(r"\end{tabular}") + 1 :]
    assert after and all(line.startswith("% ") for line in after)  # what the bounds are: LaTeX comments
    assert tex.count(r"\\") == 4  # group header, header, two rows

    # a mapping is accepted directly, with the default radii 0..1
    assert "r=1.00 (%)" in to_markdown(runs)


def test_table_errors(synth):
    with pytest.raises(ConfigError, match="0 runs"):
        to_markdown([])
    with pytest.raises(ConfigError, match="TableRow"):
        to_csv([{"run": "x"}])
    mixed = table_rows({"a": synth}, (0.0,)) + table_rows({"b": synth}, (0.0, 0.5))
    with pytest.raises(ConfigError, match="different radii"):
        to_latex(mixed)


# --------------------------------------------------------------------------------------------- plots


def test_plot_png_and_pdf(synth, tmp_path):
    runs = {"synthetic": synth, "shifted": {**synth.columns, "radius": synth.radius * 2}}
    png = plot_certified_accuracy(runs, tmp_path / "sub" / "acc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    pdf = plot_certified_accuracy(runs, tmp_path / "acc.pdf", radius_max=2.0)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ConfigError, match=r"\.jpg"):
        plot_certified_accuracy(runs, tmp_path / "acc.jpg")


def test_step_curve_is_the_certified_accuracy(synth):
    x, y = analysis._curve(synth, "radius")
    # where="post": on [x_k, x_{k+1}) the curve shows y_k = certified accuracy just above x_k (segments of
    # zero width, at tied radii, are invisible and skipped)
    nonempty = np.append(x[1:] > x[:-1], True)
    for xk, yk in zip(x[nonempty], y[nonempty]):
        assert yk == pytest.approx(certified_accuracy(synth, np.nextafter(xk, np.inf)))
    assert nonempty.sum() == 3  # 0 (tied with the correct radius-0 example), 0.2, 0.5
    assert y[0] == certified_accuracy(synth, 0.0)


@needs_cohen
def test_plot_cohen_files(tmp_path):
    runs = {f"sigma={s}": read_results(COHEN / f"noise_{s}_sigma_{s}.tsv") for s in ("0.12", "0.25", "0.50", "1.00")}
    out = plot_certified_accuracy(runs, tmp_path / "cohen.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_missing_matplotlib_is_a_clear_error(synth, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RsOnnxError, match=r"install rs-onnx\[plots\]"):
        plot_certified_accuracy({"a": synth}, tmp_path / "a.png")


def test_importing_analysis_does_not_import_matplotlib():
    code = "import sys, rs_onnx.analysis, rs_onnx.bounds; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ------------------------------------------------------------------------------------------ bad files

GOOD_HEAD = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("\n\n", "empty"),
        (GOOD_HEAD, "no rows"),
        ("idx\tlabel\tpredict\tradius\ttime\n0\t1\t1\t0.1\t1\n", "lacks correct"),
        ("idx,label,predict,radius,correct,time\n0,1,1,0.1,1,1\n", "does not look tab-separated"),
        (GOOD_HEAD + "0\t1\t1\tbig\t1\t1\n", "line 2, column radius: 'big'"),
        (GOOD_HEAD + "0\t1\t1\t0.1\t1\t1\n1\t1\t1\t0.1\t1\tyesterday\n", "line 3, column time: 'yesterday'"),
        (GOOD_HEAD + "0\tcat\t1\t0.1\t1\t1\n", "column label: 'cat'"),
        (GOOD_HEAD + "0\t1\t1\t0.1\t1\n", "line 2: 5 fields; expected 6"),
        (GOOD_HEAD + "0\t1\t1\t0.1\t2\t1\n", "column correct: 2; expected 0 or 1"),
        (GOOD_HEAD + "0\t1\t1\tnan\t1\t1\n", "column radius: nan"),
        (GOOD_HEAD.replace("time", "time\tradius") + "0\t1\t1\t0.1\t1\t1\t0.2\n", "duplicate columns radius"),
        (b"idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.1\t1\t1\xff\n", "unreadable"),
    ],
)
def test_bad_files_give_data_error(tmp_path, text, match):
    with pytest.raises(DataError, match=match) as err:
        read_results(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="not found; expected a tab-separated file"):
        read_results(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="is a directory"):
        read_results(tmp_path)
