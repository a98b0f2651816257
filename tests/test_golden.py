"""The reproducibility contract: a seeded run gives these exact rows, byte for byte, on every refactor.

The rows of three seeded runs of the bundled digits model (CERTIFY, PREDICT and sequential CERTIFY, 13
examples at sigma = 0.75 so that some abstain) are pinned in ``tests/golden/*.json``. Every pinned column
must match its pinned text exactly (the ``time`` column is not pinned); columns added later are allowed.
A deliberate change of the numbers (never a refactor) regenerates them with
``RS_ONNX_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py`` and says why in the commit.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from rs_onnx.cli import cli
from rs_onnx.run import bundled

GOLDEN = Path(__file__).parent / "golden"
COMMON = ["--sigma", "0.75", "--seed", "0", "--skip", "83", "--batch-size", "150"]
RUNS = {
    "certify": ["certify", "--n0", "64", "--n", "400", "--alpha", "0.001"],
    "predict": ["predict", "--n", "300", "--alpha", "0.001"],
    "sequential": ["certify", "--n0", "64", "--n", "3000", "--alpha", "0.001", "--sequential", "--radii", "0.25,0.5"],
}


def _rows(tmp_path: Path, name: str) -> list[dict[str, str]]:
    out = tmp_path / f"{name}.tsv"
    cmd, *opts = RUNS[name]
    args = ["-q", cmd, bundled("digits_cnn.onnx"), bundled("digits_eval.npz"), *COMMON, *opts, "--out", str(out)]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:
        row.pop("time")
    return rows


@pytest.mark.parametrize("name", sorted(RUNS))
def test_seeded_rows_are_pinned(tmp_path, name):
    rows = _rows(tmp_path, name)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("RS_ONNX_REGEN_GOLDEN"):
        path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    pinned = json.loads(path.read_text(encoding="utf-8"))
    assert len(rows) == len(pinned) == 13
    for got, want in zip(rows, pinned):
        assert {k: got.get(k) for k in want} == want, f"example {want['idx']} of the {name} run changed"
