"""Exit codes: 2 for usage errors (as click and argparse), 1 for data, model, device and output errors;
counts beyond what the int64 counters hold are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rs_onnx.cli import _main
from rs_onnx.config import RunConfig
from rs_onnx.errors import UsageError
from rs_onnx.inputs import MAX_COUNT

HUGE = "1000000000000000000000"
DIGITS = Path(__file__).resolve().parents[1] / "rs_onnx" / "data" / "digits_cnn.onnx"


def run(args, capsys) -> tuple[int, str]:
    code = _main(args, False)
    return code, capsys.readouterr().err


def one_error(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("rs-onnx: error")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize(
    "args,words",
    [
        (["certify", "--nope"], "No such option"),
        (["nocommand"], "No such command"),
        (["certify", "--n", "abc"], "not a valid integer"),
        (["certify", "--sigma", "x"], "not a valid float"),
        (["certify", "--layout", "weird"], "is not one of"),
        (["analyze", "a.tsv", "--format", "word"], "is not one of"),
        (["certify", "--batch-size", "many"], "positive integer or auto"),
        (["bench", str(DIGITS), "--batch-size", "many"], "positive integer or auto"),
        (["certify", "--n", HUGE], "int64 counters"),
        (["certify", "--n0", HUGE], "int64 counters"),
        (["certify", "--sequential", "--n-first", HUGE], None),
        (["certify", "--looks", HUGE, "--sequential"], "int64 counters"),
        (["certify", "--end", HUGE], "int64 counters"),
        (["certify", "--n", str(MAX_COUNT), "--n0", "2"], "n0 + n"),
    ],
)
def test_usage_errors_exit_2(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run([*args, "--dump-config"] if args[0] == "certify" else args, capsys)
    assert code == 2, err
    line = one_error(err)
    if words:
        assert words in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["n", "n0", "start", "end", "skip", "looks"])
def test_yaml_counts_beyond_the_counters_are_refused(key, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"{key}: {HUGE}\n")
    code, err = run(["certify", "--config", str(config), "--dump-config"], capsys)
    assert code == 2 and "int64 counters" in one_error(err)
    with pytest.raises(UsageError):
        RunConfig(**{key: int(HUGE)}).validate()


def test_data_model_and_output_errors_keep_exit_1(tmp_path, capsys):
    missing = tmp_path / "nothing.onnx"
    code, err = run(["certify", str(missing), str(tmp_path / "d.npz"), "--sigma", "0.25"], capsys)
    assert code == 1
    one_error(err)
    code, err = run(["verify", str(tmp_path / "none.tsv")], capsys)
    assert code == 1
