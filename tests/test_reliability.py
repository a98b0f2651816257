"""Long runs survive SIGKILL and SIGTERM with nothing lost, duplicated or truncated."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.onnx_models import linear_model, save

EXAMPLES = 60


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rel")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 784)).astype(np.float32) / 28
    model = save(linear_model(w, input_shape=(1, 28, 28), batch=1), tmp / "m.onnx")
    images = rng.integers(0, 256, size=(EXAMPLES, 28, 28), dtype=np.uint8)
    labels = (images.reshape(EXAMPLES, -1) / 255 @ w.T).argmax(1).astype(np.uint8)
    np.savez(tmp / "d.npz", images=images, labels=labels)
    args = [
        sys.executable,
        "-m",
        "rs_onnx.cli",
        "-q",
        "certify",
        str(model),
        str(tmp / "d.npz"),
        "--sigma",
        "0.5",
        "--n0",
        "100",
        "--n",
        "30000",
        "--batch-size",
        "5000",
        "--seed",
        "7",
        "--noise-threads",
        "1",
    ]
    return args, tmp


def _rows(path):
    """Complete rows without the time column; checks the file is well formed."""
    lines = path.read_text().split("\n")
    assert lines[-1] == "", "the file must end with a complete row"
    header, *rows = lines[:-1]
    assert header.startswith("idx\tlabel\tpredict\tradius\tcorrect\ttime")
    out = []
    for line in rows:
        cells = line.split("\t")
        assert len(cells) == len(header.split("\t")), line
        out.append(cells[:5] + cells[6:])
    return out


@pytest.mark.slow  # about 45% of the suite's time: ten kills of a real run, then a resume
def test_sigkill_at_random_moments_then_resume(job):
    args, tmp = job
    ref = tmp / "ref.tsv"
    subprocess.run(args + ["--out", str(ref)], check=True, timeout=300)
    expected = _rows(ref)
    out = tmp / "killed.tsv"
    rng = np.random.default_rng(2026)
    kills, attempts = 0, 0
    while kills < 10 and attempts < 60:
        attempts += 1
        proc = subprocess.Popen(args + ["--out", str(out), "--resume"], stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if out.exists():
            text = out.read_text()
            done = [r for r in text.split("\n")[1:-1]]
            idx = [int(r.split("\t")[0]) for r in done]
            assert idx == sorted(set(idx)), "no duplicated or reordered rows"
        if proc.returncode == 0:  # finished before 10 kills: check it, then start the job over
            assert _rows(out) == expected
            out.unlink()
            (tmp / "killed.tsv.meta.json").unlink()
    assert kills >= 10, f"only {kills} kills landed in {attempts} attempts"
    subprocess.run(args + ["--out", str(out), "--resume"], check=True, timeout=300)
    assert _rows(out) == expected  # byte-identical apart from the time column
    assert json.loads((tmp / "killed.tsv.meta.json").read_text())["status"] == "complete"


def test_sigterm_stops_cleanly_with_a_resume_hint(job):
    args, tmp = job
    out = tmp / "term.tsv"
    proc = subprocess.Popen(args + ["--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "--resume" in err and "Traceback" not in err
    meta = json.loads((tmp / "term.tsv.meta.json").read_text())
    assert meta["status"] == "interrupted"
    assert len(_rows(out)) == meta["examples_done"] >= 2
