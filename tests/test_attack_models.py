"""Failure paths of the model-card, input-shape and bench features (issues 26 and 29), tried as a user would:
each refusal is one ``rs-onnx: error:`` line with the right exit code, and nothing is silently wrong."""

from __future__ import annotations


import pytest

from rs_onnx.cli import main

CERTIFY = ["--sigma", "0.12", "--n0", "10", "--n", "64", "--seed", "0", "--batch-size", "64"]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """The CLI in-process through its console entry point: (exit code, stdout, stderr); a failure is exactly
    one error line and no traceback."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    got = capsys.readouterr()
    code = int(e.value.code or 0)
    if code != 0:
        errors = [line for line in got.err.splitlines() if line.startswith("rs-onnx: error:")]
        assert len(errors) == 1 and "Traceback" not in got.err, got.err
    return code, got.out, got.err


# ------------------------------------------------------------------ exit codes of the console entry point
@pytest.mark.parametrize(
    "argv",
    [
        ["certify", "--bogus"],
        ["--bogus"],
        ["certify", "--layout", "sideways"],
        ["bench", "--cudnn-algo-search", "fastest"],
        ["inspect"],
    ],
)
def test_usage_errors_exit_2_through_the_console_entry_point(capsys, argv):
    code, out, err = run(capsys, argv)
    assert code == 2 and out == "", err
