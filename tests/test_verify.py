"""rs-onnx verify: every row of every kind of run recomputed from its counts and meta.json; tampered,
truncated and appended files caught; --resume refuses them, analyze and report mark them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rs_onnx.verify import verify_file
from tests.conftest import Tally, invoke_cli, write_linear3

TAMPER = "tampered, truncated or appended results file, edited meta.json (verify; --resume refuses)"
COMMON = ["--sigma", "1.5", "--n0", "20", "--seed", "1", "--end", "12"]
KINDS = {
    "cohen": ["certify", *COMMON, "--n", "300"],
    "best": ["certify", *COMMON, "--n", "300", "--bound", "best"],
    "uniform": ["certify", *COMMON, "--n", "300", "--noise", "uniform"],
    "laplace": ["certify", *COMMON, "--n", "300", "--noise", "laplace"],
    "sequential": ["certify", *COMMON, "--n", "3000", "--sequential", "--radii", "0.1,0.3", "--looks", "4"],
    "precision": ["certify", *COMMON, "--n", "3000", "--sequential", "--precision", "0.05", "--looks", "4"],
    "sequential-laplace": ["certify", *COMMON, "--n", "3000", "--sequential", "--radii", "0.1", "--noise", "laplace"],
    "predict": ["predict", "--sigma", "1.5", "--seed", "1", "--end", "12", "--n", "300"],
    "audit": ["certify", "--sigma", "1.5", "--n0", "20", "--n", "300", "--end", "12", "--audit"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One finished run of each kind the project writes (12 examples of the 3-class linear model)."""
    folder = tmp_path_factory.mktemp("runs")
    model, data = write_linear3(folder)
    out = {}
    for kind, args in KINDS.items():
        tsv = folder / f"{kind}.tsv"
        r = invoke_cli(["-q", args[0], model, data, *args[1:], "--out", str(tsv)])
        assert r.exit_code == 0, (kind, r.output)
        out[kind] = tsv
    return out


def copy(run: Path, folder: Path, name: str = "t.tsv") -> Path:
    target = folder / name
    shutil.copy(run, target)
    shutil.copy(str(run) + ".meta.json", str(target) + ".meta.json")
    return target


def rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def write_rows(path: Path, table: list[list[str]]) -> None:
    path.write_text("".join("\t".join(r) + "\n" for r in table))


def edit_meta(path: Path, change) -> None:
    mp = Path(str(path) + ".meta.json")
    meta = json.loads(mp.read_text())
    change(meta)
    mp.write_text(json.dumps(meta))


def test_untouched_files_of_every_kind_reproduce(runs):
    r = invoke_cli(["verify", *map(str, runs.values())])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == len(KINDS) and all(": reproduced: 12 " in line for line in lines), r.output
    cohen = rows(runs["cohen"])
    predicts = [row[2] for row in cohen[1:]]
    assert "-1" in predicts and any(p != "-1" for p in predicts)  # abstentions and certificates both checked
    seq = rows(runs["sequential"])
    assert {row[seq[0].index("look")] for row in seq[1:]} != {"0"}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "column,value",
    [("radius", "9.99"), ("pA_lower", "0.999"), ("nA", "+"), ("correct", "flip"), ("predict", "abstain-or-class")],
)
def test_a_tampered_cell_is_caught_even_without_the_digest(runs, tmp_path, kind, column, value):
    t = copy(runs[kind], tmp_path)
    table = rows(t)
    head = table[0]
    if column not in head:
        column = {"radius": "pvalue", "pA_lower": "count_a", "nA": "count_b"}[column]
        value = {"pvalue": "0.5", "count_a": "+", "count_b": "+"}[column]
    j = head.index(column)
    row = next(r for r in table[1:] if r[head.index("predict")] != "-1")  # a row with a class
    if value == "+":
        row[j] = str(int(row[j]) + 1) if row[j] != row[head.index("n")] else str(int(row[j]) - 1)
    elif value == "flip":
        row[j] = "0" if row[j] == "1" else "1"
    elif value == "abstain-or-class":
        row[j] = "-1"
    else:
        row[j] = value
    with Tally(TAMPER) as tally:
        write_rows(t, table)
        edit_meta(t, lambda m: m.pop("rows_digest"))  # the recomputation alone catches it
        v = verify_file(t)
        tally.faults += 1
    assert not v.ok and len(v.bad) == 1, v.line()
    r = invoke_cli(["verify", str(t)])
    assert r.exit_code == 1 and "NOT REPRODUCED" in r.output and f"line {table.index(row) + 1}" in r.output


def test_a_label_edited_with_its_correct_is_caught_by_the_digest(runs, tmp_path):
    t = copy(runs["cohen"], tmp_path)
    table = rows(t)
    row = table[1]
    with Tally(TAMPER) as tally:
        tally.faults += 1
    row[1] = str((int(row[1]) + 1) % 3)
    row[4] = str(int(row[2] == row[1]))
    write_rows(t, table)
    v = verify_file(t)
    assert not v.ok and "differ from those the run wrote" in v.line()


def test_truncated_and_appended_files_are_caught(runs, tmp_path):
    with Tally(TAMPER) as tally:
        tally.faults += 3
        _truncated_and_appended(runs, tmp_path)


def _truncated_and_appended(runs, tmp_path):
    t = copy(runs["cohen"], tmp_path)
    table = rows(t)
    write_rows(t, table[:-1])
    assert "truncated" in verify_file(t).line()
    t = copy(runs["cohen"], tmp_path, "u.tsv")
    extra = list(table[-1])
    extra[0] = "11"  # outside the selection would also be caught; make it look like a fresh example
    with open(t, "a") as f:
        f.write("\t".join(extra) + "\n")
    v = verify_file(t)
    assert not v.ok and ("appended" in v.line() or "again" in v.line()), v.line()
    # an appended row of a new example, with the digest gone, is caught by the count of a complete run
    t = copy(runs["cohen"], tmp_path, "w.tsv")
    write_rows(t, table[:-1])
    edit_meta(t, lambda m: m.pop("rows_digest"))
    assert "11 rows in a complete run of 12" in verify_file(t).line()


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["config"].update(alpha=0.01),
        lambda m: m["config"].update(n=301),
        lambda m: (m["config"].update(sigma=0.4), m["noise"].update(sigma=0.4)),
        lambda m: m["config"].update(n="many"),
        lambda m: m.update(mode="train"),
    ],
)
def test_an_edited_meta_config_is_caught(runs, tmp_path, change):
    t = copy(runs["cohen"], tmp_path)
    with Tally(TAMPER) as tally:
        edit_meta(t, change)
        r = invoke_cli(["verify", str(t)])
        tally.faults += 1
    assert r.exit_code == 1 and ("NOT REPRODUCED" in r.output or "UNCHECKED" in r.output), r.output


def test_a_file_without_meta_is_unchecked_never_reproduced(runs, tmp_path):
    t = tmp_path / "cohen_own.tsv"
    shutil.copy(runs["cohen"], t)
    r = invoke_cli(["verify", str(t)])
    assert r.exit_code == 1 and "UNCHECKED" in r.output


def test_a_changed_model_or_data_is_caught_and_skip_inputs_skips_it(runs, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    model, data = write_linear3(folder)
    out = folder / "r.tsv"
    assert invoke_cli(["-q", "certify", model, data, *KINDS["cohen"][1:], "--out", str(out)]).exit_code == 0
    assert verify_file(out).ok
    Path(data).write_bytes(Path(data).read_bytes() + b"\0")
    assert "data" in verify_file(out).line() and not verify_file(out).ok
    assert verify_file(out, inputs=False).ok


def test_resume_refuses_a_tampered_file_and_touches_nothing(runs, tmp_path, capsys):
    from rs_onnx.cli import _main

    t = copy(runs["cohen"], tmp_path)
    table = rows(t)
    table[2][3] = "9.99"
    write_rows(t, table)
    before = (t.read_bytes(), Path(str(t) + ".meta.json").read_bytes())
    config = json.loads(Path(str(t) + ".meta.json").read_text())["config"]
    model, data = config["model"], config["data"]
    with Tally(TAMPER) as tally:
        code = _main(["certify", model, data, *KINDS["cohen"][1:], "--end", "20", "--out", str(t), "--resume"], False)
        tally.faults += 1
        tally.harmed += int((t.read_bytes(), Path(str(t) + ".meta.json").read_bytes()) != before)
    err = capsys.readouterr().err
    assert code == 1, err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "radius 9.99" in errors[0], err
    assert (t.read_bytes(), Path(str(t) + ".meta.json").read_bytes()) == before


def test_analyze_and_report_mark_rows_that_do_not_reproduce(runs, tmp_path):
    from rs_onnx.analysis import read_run, summary

    t = copy(runs["cohen"], tmp_path)
    honest = summary(read_run(t))
    table = rows(t)
    row = next(r for r in table[1:] if r[2] == "-1")
    row[2], row[3], row[4] = row[1], "9.99", "1"  # an abstention turned into a huge certificate
    write_rows(t, table)
    res = read_run(t)
    assert summary(res)["acr"] == pytest.approx(honest["acr"]) and res["reproduced"].sum() == 11
    r = invoke_cli(["analyze", str(t)])
    assert r.exit_code == 0
    warnings = [line for line in r.output.splitlines() if "NOT REPRODUCED" in line]
    assert len(warnings) == 1 and "count as not certified" in warnings[0]
    html = tmp_path / "r.html"
    assert invoke_cli(["report", str(t), "-o", str(html)]).exit_code == 0
    assert "NOT REPRODUCED" in html.read_text()


def test_the_digest_stays_valid_across_resume(runs, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    model, data = write_linear3(folder)
    out = folder / "r.tsv"
    args = ["-q", "certify", model, data, *KINDS["cohen"][1:], "--out", str(out)]
    assert invoke_cli([*args, "--end", "5"]).exit_code == 0
    assert verify_file(out).ok
    assert invoke_cli([*args, "--end", "12", "--resume"]).exit_code == 0
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["rows_digest"]["rows"] == 12 and meta["rows_digest"]["bytes"] == out.stat().st_size
    assert verify_file(out).ok


SCRIPT = (10, 17, 32, 56, 100, 180, 329, 590)  # cumulative count of the guess at looks 1..8 of 1,000 samples
SCRIPT_ARGS = ["--sigma", "1.5", "--n0", "20", "--seed", "1", "--end", "4", "--n", "1000", "--sequential"]
SCRIPT_ARGS += ["--looks", "8", "--radii", "0.05,0.1,0.15,0.2,0.3,0.5"]


@pytest.fixture
def scripted(tmp_path, monkeypatch) -> Path:
    """A calibrated run with six radii whose every example counts SCRIPT: look 3 (32 of 37) crosses the largest
    threshold certified (radius 0.2); the best Clopper-Pearson bound is at a later look and the run goes on to
    look 8, both crossing one threshold fewer (the look that decides is neither of those)."""
    from rs_onnx import sequential, stats

    model, data = write_linear3(tmp_path)
    plan = sequential.run_plan(
        1000, 0.001, 8, None, sequential.FINAL_SHARE, 1.5, (0.05, 0.1, 0.15, 0.2, 0.3, 0.5), 0.01, None, "gaussian"
    )
    sizes, cum = np.asarray(plan.schedule.sizes), np.asarray(SCRIPT)
    crossed = (cum[:, None] >= plan.k_cert).sum(axis=1)
    lower = stats.cp_lower(cum, sizes, np.asarray(plan.schedule.alphas))
    assert list(crossed) == [0, 0, 5, 4, 4, 4, 4, 4] and int(np.argmax(lower)) not in (2, 7), (crossed, lower)
    real, steps = sequential.run_looks, np.diff(cum, prepend=0)

    def run_looks(plan, sample, active, size, budget=None):
        def counts(j, idx):
            sample(j, idx)  # the samples are drawn as in any run (they feed the class totals)
            return np.full(len(idx), steps[j], np.int64)

        return real(plan, counts, active, size, budget)

    monkeypatch.setattr(sequential, "run_looks", run_looks)
    tsv = tmp_path / "scripted.tsv"
    r = invoke_cli(["-q", "certify", model, data, *SCRIPT_ARGS, "--out", str(tsv)])
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(sequential, "run_looks", real)
    return tsv


def test_calibrated_rows_reproduce_from_the_look_that_decided(scripted):
    table = rows(scripted)
    head, body = table[0], table[1:]
    classed = [r for r in body if r[head.index("predict")] != "-1"]
    assert classed, "no example predicted"
    for r in classed:  # the run records the look that crossed radius 0.2's threshold, not the best bound's
        assert (r[head.index("radius")], r[head.index("look")], r[head.index("look_nA")]) == ("0.2", "3", "32")
        assert r[head.index("n")] == "1000" and r[head.index("nA")] == "590"
    r = invoke_cli(["verify", str(scripted)])
    assert r.exit_code == 0 and f": reproduced: {len(body)} " in r.output, r.output


@pytest.mark.parametrize("column,value", [("radius", "0.3"), ("look_nA", "31"), ("look", "4")])
def test_a_calibrated_row_claiming_more_than_its_deciding_look_is_refused(scripted, column, value):
    """One threshold higher than the recorded counts justify (or the count of a look that justifies less)."""
    table = rows(scripted)
    head = table[0]
    row = next(r for r in table[1:] if r[head.index("predict")] != "-1")
    row[head.index(column)] = value
    if column == "look":
        row[head.index("look_n")], row[head.index("look_nA")] = "72", "56"
    write_rows(scripted, table)
    edit_meta(scripted, lambda m: m.pop("rows_digest"))  # the recomputation alone catches it
    v = verify_file(scripted)
    assert not v.ok and len(v.bad) == 1, v.line()
    r = invoke_cli(["verify", str(scripted)])
    assert r.exit_code == 1 and "NOT REPRODUCED" in r.output and f"line {table.index(row) + 1}" in r.output
