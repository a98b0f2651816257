"""Every certify row can be re-checked from its own columns (issue 14, "every row can be re-checked").

pA_lower is the Clopper-Pearson lower bound of nA in n at level alpha_pA (alpha; alpha/2 with --bound
best, whose radius uses that split bound; before the fix the column showed the bound at alpha while
the radius used alpha/2), and for sequential rows of look_nA in look_n at the deciding look's level.
"""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from rs_onnx import stats
from rs_onnx.cli import cli
from rs_onnx.run import bundled
from rs_onnx.config import RunConfig
from rs_onnx.sequential import geometric_schedule

SIGMA, ALPHA = 0.5, 0.01


def _rows(tmp_path, *opts):
    out = tmp_path / "r.tsv"
    args = [
        "-q",
        "certify",
        bundled("digits_cnn.onnx"),
        bundled("digits_eval.npz"),
        "--sigma",
        str(SIGMA),
        "--seed",
        "0",
        "--skip",
        "60",
        "--n0",
        "32",
        "--alpha",
        str(ALPHA),
        *opts,
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with open(out, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("bound", ["cohen", "best"])
def test_fixed_n_rows_recompute(tmp_path, bound):
    rows = _rows(tmp_path, "--n", "300", "--bound", bound)
    assert len(rows) >= 15
    level = ALPHA / 2 if bound == "best" else ALPHA
    for r in rows:
        assert float(r["alpha_pA"]) == level
        p = stats.clopper_pearson_lower(int(r["nA"]), int(r["n"]), float(r["alpha_pA"]))
        assert float(r["pA_lower"]) == p
        if int(r["predict"]) < 0:
            assert float(r["radius"]) == 0.0
        elif bound == "cohen":
            assert float(r["radius"]) == stats.cohen_radius(p, SIGMA)
        else:  # the larger of Cohen's radius at alpha/2 and the two-class radius at the same split
            assert float(r["radius"]) == pytest.approx(
                max(stats.cohen_radius(p, SIGMA), float(r["radius_2class"])), rel=1e-9, abs=1e-12
            )
    assert any(int(r["predict"]) >= 0 for r in rows) and any(int(r["nA"]) < int(r["n"]) for r in rows)


def test_sequential_rows_name_the_deciding_look(tmp_path):
    """Union-bound design (precision mode): pA_lower is the deciding look's Clopper-Pearson bound at its level."""
    n, looks = 4000, 4
    rows = _rows(tmp_path, "--n", str(n), "--sequential", "--precision", "0.05", "--looks", str(looks))
    schedule = geometric_schedule(n, ALPHA, looks, final_share=RunConfig().final_share)
    seen = set()
    for r in rows:
        look = int(r["look"])
        if look == 0:
            assert float(r["pA_lower"]) == 0.0 and int(r["predict"]) < 0
            continue
        seen.add(look)
        assert float(r["alpha_pA"]) == schedule.alphas[look - 1]
        assert int(r["look_n"]) == schedule.sizes[look - 1] <= int(r["n"])
        assert int(r["look_nA"]) <= int(r["nA"])
        p = stats.clopper_pearson_lower(int(r["look_nA"]), int(r["look_n"]), float(r["alpha_pA"]))
        assert float(r["pA_lower"]) == p
        if int(r["predict"]) >= 0:
            assert float(r["radius"]) == stats.cohen_radius(p, SIGMA)
    assert seen, "no row decided at any look"


def test_calibrated_sequential_rows_carry_the_threshold_they_passed(tmp_path):
    """Calibrated design (the default with --radii): radius is a requested radius, pA_lower its threshold,
    alpha_pA the plan's level, look_n the deciding look's size."""
    from rs_onnx.sequential import calibration_threshold

    n, looks, radii = 4000, 4, (0.25, 0.5)
    rows = _rows(tmp_path, "--n", str(n), "--sequential", "--radii", "0.25,0.5", "--looks", str(looks))
    certified = 0
    for r in rows:
        radius, look = float(r["radius"]), int(r["look"])
        if int(r["predict"]) < 0:
            assert radius == 0.0
            continue
        assert look >= 1 and int(r["look_n"]) <= int(r["n"]) and int(r["look_nA"]) <= int(r["nA"])
        assert float(r["alpha_pA"]) <= ALPHA
        if radius > 0:
            certified += 1
            assert radius in radii and float(r["pA_lower"]) == calibration_threshold(radius, SIGMA)
    assert certified, "no row certified a requested radius"
