"""Fault injection: nothing a user computed or owns is lost, overwritten or mixed, whatever goes wrong.

Each test injects faults (write errors at the k-th write, kills, a second run, outputs that are inputs,
resume with other data, a never-ending model, a planted cache file) and checks that no finished row was
lost or duplicated, no input changed, and meta.json tells the truth. The figures are tallied per kind;
``RS_ONNX_FAULT_REPORT=path`` writes them as docs/reliability.md's markdown table (tests.conftest.Tally).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rs_onnx import outputs, results, run
from rs_onnx.cli import main
from rs_onnx.config import RunConfig
from rs_onnx.errors import OutputError
from rs_onnx.outputs import RunLock, WriteError, data_identity, lock_path
from rs_onnx.results import meta_path
from tests.conftest import Tally, default_sigint
from tests.onnx_models import linear_model, save

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = run.bundled("digits_cnn.onnx"), run.bundled("digits_eval.npz")
EXAMPLES = 8


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def rows_of(path) -> list[str]:
    """Data rows without the time column (the only column that differs between identical runs)."""
    lines = Path(path).read_text().split("\n")
    header = lines[0].split("\t")
    t = header.index("time")
    assert lines[-1] == "", "a result file must end with a complete row"
    return ["\t".join(c for j, c in enumerate(line.split("\t")) if j != t) for line in lines[1:-1]]


def meta_of(out) -> dict:
    return json.loads(meta_path(out).read_text())


def cfg(**kw) -> RunConfig:
    values = {
        "model": MODEL,
        "data": DATA,
        "sigma": 0.25,
        "n0": 20,
        "n": 100,
        "alpha": 0.001,
        "seed": 0,
        "end": EXAMPLES,
        "batch_size": 100,
        "noise_threads": 0,
    }
    values.update(kw)
    return RunConfig(**values).validate()


@pytest.fixture(scope="module")
def prepared():
    return run.prepare(cfg())


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.tsv"
    meta = run.execute(prepared, "certify", out)
    assert meta["status"] == "complete"
    return rows_of(out)


def cli(args, capsys) -> tuple[int, str]:
    """rs-onnx in this process: (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr().err


def assert_one_error_line(err: str, *words):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rs-onnx: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def check_prefix_of_reference(out, reference, kind: Tally) -> list[str]:
    """The file's rows: each a reference row, none twice, in order (a failed run keeps a prefix)."""
    got = rows_of(out) if out.exists() and out.stat().st_size else []
    assert len(set(got)) == len(got), "a row is duplicated"
    assert got == reference[: len(got)], "a row differs from the reference run"
    return got


# ---------------------------------------------------------------- 1. clobbering, 2. destroying inputs
BASE = [
    "-q",
    "certify",
    MODEL,
    DATA,
    "--sigma",
    "0.25",
    "--n0",
    "20",
    "--n",
    "100",
    "--seed",
    "0",
    "--end",
    str(EXAMPLES),
    "--batch-size",
    "100",
]


RAY_REFUSAL = "address" if importlib.util.find_spec("ray") else "Ray is not installed"


@pytest.fixture()
def finished(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    code, err = cli([*BASE, "--out", str(out)], capsys)
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    "extra,words",
    [
        ([], ["already holds 8 rows", "--resume", "--overwrite"]),
        (["--overwrite", "--sequential", "--radii", "inf"], ["radii"]),
        (["--resume", "--sequential", "--radii", "inf"], ["radii"]),
        (["--overwrite", "--n", "0"], ["n"]),
        # without Ray (README's test install has no extras) the same command is refused for that reason
        (["--overwrite", "--backend", "ray", "--address", "bad address"], [RAY_REFUSAL]),
        (["--resume", "--sigma", "0.5"], ["different sigma"]),
        (["--resume", "--overwrite"], ["--resume with --overwrite"]),
    ],
)
def test_refused_commands_leave_the_earlier_run_untouched(finished, capsys, extra, words):
    with Tally("refused command on an --out with rows") as t:
        before = {p: sha(p) for p in (finished, meta_path(finished))}
        code, err = cli([*BASE, "--out", str(finished), *extra], capsys)
        t.faults += 1
        assert code == 1
        assert_one_error_line(err, *words)
        t.lost += sum(sha(p) != h for p, h in before.items())
        assert t.lost == 0
        assert not lock_path(finished).exists() and sorted(os.listdir(finished.parent)) == ["r.tsv", "r.tsv.meta.json"]


def test_ray_missing_is_refused_before_any_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # imports of ray fail, as without it
    code, err = cli([*BASE, "--out", str(tmp_path / "r.tsv"), "--backend", "ray"], capsys)
    assert code == 1 and "Ray is not installed" in err and os.listdir(tmp_path) == []


def free_port() -> int:
    """A TCP port on this machine with nothing listening on it (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def test_unreachable_ray_cluster_is_refused_at_once_before_any_file(tmp_path, capsys):
    """--address where no Ray cluster listens: one line naming it, exit 1, no file, in seconds (ray.init
    alone would retry for many minutes); run.execute, for library callers, joins before creating anything."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'rs-onnx[distributed]')")
    from rs_onnx.distributed import ray_backend
    from rs_onnx.errors import ConfigError

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process: the address would be ignored")
    address = f"127.0.0.1:{free_port()}"
    with Tally("unreachable Ray cluster (--address)") as t:
        t0 = time.perf_counter()
        code, err = cli([*BASE, "--out", str(tmp_path / "r.tsv"), "--backend", "ray", "--address", address], capsys)
        seconds = time.perf_counter() - t0
        t.faults += 1
        assert code == 1
        assert_one_error_line(err, f"Ray address {address}", "nothing accepts a connection", "expected")
        assert os.listdir(tmp_path) == [], "a refused command created files"
        assert seconds < 20, f"the refusal took {seconds:.1f} s"
        p = run.prepare(RunConfig(model=MODEL, data=DATA, sigma=0.25, n0=20, n=100, seed=0, end=2).validate())
        t.faults += 1
        with pytest.raises(ConfigError, match=f"Ray address {address}"):
            run.execute(p, "certify", tmp_path / "r.tsv", backend=ray_backend(address, workers=1))
        assert os.listdir(tmp_path) == [] and not ray.is_initialized()


BIG = ["--n", "100000", "--end", "2"]  # one example's estimation count: 100,000 samples of 1x28x28 float32


def test_a_batch_too_large_for_the_memory_is_refused_before_any_file(tmp_path, capsys, monkeypatch):
    """MemAvailable patched to 100 MiB: a batch of 100,000 digits (the count of 100,000 samples is one
    batch: 0.30 GiB) is refused with both figures in GiB and the largest batch size that fits, which
    the check then accepts."""
    from rs_onnx import devices

    monkeypatch.setattr(devices, "available_memory", lambda: 100 << 20)
    with Tally("batch too large for the memory available") as t:
        t0 = time.perf_counter()
        code, err = cli([*BASE, *BIG, "--out", str(tmp_path / "r.tsv"), "--batch-size", "100000"], capsys)
        t.faults += 1
        assert code == 1 and os.listdir(tmp_path) == []
        assert_one_error_line(err, "batch size 100,000", "0.30 GiB", "0.098 GiB available", "--batch-size")
        assert time.perf_counter() - t0 < 30
    fitting = int(err.split("at most ")[1].split(" ")[0].replace(",", ""))
    cfg = RunConfig(model=MODEL, data=DATA, sigma=0.25, n0=20, n=100_000, seed=0, end=2, batch_size=fitting)
    p = run.prepare(cfg.validate())  # accepted at the size the refusal named
    assert run.memory_need(p.cfg, p.classifier, p.smoothed.preprocessor(p.data.image_shape), fitting) <= 100 << 20


@pytest.mark.parametrize("n,end", [(100_000, 2), (100, 1000)], ids=["probed", "default"])
def test_the_automatic_batch_size_fits_in_the_memory(monkeypatch, n, end):
    """With 12 MiB available the batch probe tries, and a short run's default takes, only batch sizes the
    check accepts (unpatched: the probe would try up to 4096, the default here would be 21,399)."""
    from rs_onnx import devices
    from rs_onnx.sampling import CPU_BATCH_CANDIDATES

    available = 12 << 20
    monkeypatch.setattr(devices, "available_memory", lambda: available)
    monkeypatch.setattr(run, "DEFAULT_BATCH", 100_000)  # capped by DEFAULT_BATCH_BYTES alone: 21,399 digits
    p = run.prepare(RunConfig(model=MODEL, data=DATA, sigma=0.25, n0=20, n=n, seed=0, end=end).validate())
    pre = p.smoothed.preprocessor(p.data.image_shape)

    def fits(b):
        return run.memory_need(p.cfg, p.classifier, pre, b) <= available

    assert (p.batch_probe is not None) == (n > 1000)
    if p.batch_probe is not None:
        tried = [int(b) for b in p.batch_probe["seconds_per_sample"]]
        assert tried and all(fits(b) for b in tried) and p.batch_size in tried
        assert not all(fits(b) for b in CPU_BATCH_CANDIDATES)  # the memory, not the probe, stopped it
    else:
        assert fits(p.batch_size) and 1 < p.batch_size < 21_399 and not fits(21_399)


def test_nothing_fits_is_refused_with_the_automatic_batch_size(tmp_path, capsys, monkeypatch):
    from rs_onnx import devices

    monkeypatch.setattr(devices, "available_memory", lambda: 1 << 10)  # 1 KiB: not one sample fits
    code, err = cli([*BASE[:-2], "--out", str(tmp_path / "r.tsv")], capsys)  # BASE without --batch-size
    assert code == 1 and os.listdir(tmp_path) == []
    assert_one_error_line(err, "batch size 1:", "GiB", "not even a batch of 1 fits")


def test_default_run_does_not_overwrite_its_earlier_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "rs-onnx-default-certify.tsv"
    old.write_text("idx\tlabel\n0\t1\n")
    with Tally("refused command on an --out with rows") as t:
        code, err = cli(["-q", "certify"], capsys)
        t.faults += 1
        assert code == 1
        assert_one_error_line(err, "already holds 1 rows", "--overwrite")
        t.lost += old.read_text() != "idx\tlabel\n0\t1\n"
    assert t.lost == 0


def test_overwrite_replaces_only_after_the_first_new_row(finished, capsys, monkeypatch, reference):
    before = finished.read_bytes()
    # interrupted before its first row: the old files stay as they were
    real = run.local_answers

    def interrupted(p, mode, todo, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "local_answers", interrupted)
    with Tally("--overwrite interrupted before its first row") as t:
        code, _ = cli([*BASE, "--out", str(finished), "--overwrite", "--seed", "1"], capsys)
        t.faults += 1
        assert code == 130
        t.lost += finished.read_bytes() != before
        assert t.lost == 0 and meta_of(finished)["status"] == "complete" and meta_of(finished)["seed"] == 0
        assert sorted(os.listdir(finished.parent)) == ["r.tsv", "r.tsv.meta.json"]  # no temp file left
    monkeypatch.setattr(run, "local_answers", real)
    code, err = cli([*BASE, "--out", str(finished), "--overwrite", "--seed", "1"], capsys)
    assert code == 0 and "replaced" in err
    assert meta_of(finished)["status"] == "complete" and meta_of(finished)["seed"] == 1
    assert len(rows_of(finished)) == EXAMPLES


def _cases(tmp_path):
    """(label, files to pass, path given to --out) for every output that is an input."""
    data = tmp_path / "d.npz"
    data.write_bytes(Path(DATA).read_bytes())
    model = tmp_path / "m.onnx"
    model.write_bytes(Path(MODEL).read_bytes())
    config = tmp_path / "c.yaml"
    config.write_text("n: 100\n")
    other = tmp_path / "other.tsv"
    (tmp_path / "other.tsv.meta.json").write_text('{"status": "complete"}\n')
    other.write_text("idx\n")
    (tmp_path / "link.tsv").symlink_to(data)
    os.link(model, tmp_path / "hard.tsv")
    return (
        model,
        data,
        config,
        [
            ("MODEL", model),
            ("DATA", data),
            ("--config", config),
            ("DATA (symlink)", tmp_path / "link.tsv"),
            ("MODEL (hard link)", tmp_path / "hard.tsv"),
            ("another run's meta", tmp_path / "other.tsv.meta.json"),
        ],
    )


def test_no_output_may_be_an_input(tmp_path, capsys):
    model, data, config, cases = _cases(tmp_path)
    inputs = [model, data, config, tmp_path / "other.tsv.meta.json"]
    before = {p: sha(p) for p in inputs}
    with Tally("output path = an input") as t:
        for label, out in cases:
            for flags in ([], ["--overwrite"], ["--resume"]):
                code, err = cli(
                    [
                        "-q",
                        "certify",
                        str(model),
                        str(data),
                        "--config",
                        str(config),
                        "--sigma",
                        "0.25",
                        "--end",
                        "2",
                        "--out",
                        str(out),
                        *flags,
                    ],
                    capsys,
                )
                t.faults += 1
                assert code == 1, (label, flags, err)
                assert_one_error_line(err)
                assert "input" in err or "meta file" in err, err
        # compose -o onto the classifier or the denoiser; analyze --plot onto a results file
        for args in (
            ["compose", str(model), "--denoiser", str(model), "-o", str(model)],
            ["analyze", str(tmp_path / "other.tsv.meta.json"), "--plot", str(tmp_path / "other.tsv.meta.json")],
        ):
            code, err = cli(args, capsys)
            t.faults += 1
            assert code == 1
            assert_one_error_line(err)
        t.harmed += sum(sha(p) != h for p, h in before.items())
    assert t.harmed == 0


def test_out_inside_a_data_folder_is_refused(tmp_path):
    from rs_onnx.outputs import check_not_inputs

    (tmp_path / "images").mkdir()
    with pytest.raises(OutputError, match="lies inside the DATA"):
        check_not_inputs({"--out": tmp_path / "images" / "r.tsv"}, {"DATA": tmp_path / "images"})


# ---------------------------------------------------------------- 3./6. write faults, resume crash-safety
class Faults:
    """Replaces results.write_all: the k-th write (1-based) fails; 'transient' fails only that one (EIO),
    'disk full' fails it and every later write that would grow a file (ENOSPC), like a full disk."""

    def __init__(self, k: int, kind: str):
        self.k, self.kind, self.calls, self.real = k, kind, 0, results.write_all

    def __call__(self, fd, data):
        self.calls += 1
        if self.calls == self.k or (self.kind == "disk full" and self.calls > self.k and self._grows(fd, data)):
            if self.kind == "disk full" and len(data) > 1 and self.calls == self.k:
                self.real(fd, bytes(data)[: len(data) // 2])  # half of it made it to the disk
            raise OSError(
                errno.ENOSPC if self.kind == "disk full" else errno.EIO,
                os.strerror(errno.ENOSPC if self.kind == "disk full" else errno.EIO),
            )
        self.real(fd, data)

    @staticmethod
    def _grows(fd, data) -> bool:
        return os.lseek(fd, 0, os.SEEK_CUR) + len(data) > os.fstat(fd).st_size


def _writes_in_a_run(prepared, tmp_path, monkeypatch) -> int:
    counter = Faults(0, "transient")
    monkeypatch.setattr(results, "write_all", counter)
    run.execute(prepared, "certify", tmp_path / "count.tsv")
    monkeypatch.setattr(results, "write_all", counter.real)
    return counter.calls


@pytest.mark.parametrize("kind", ["transient", "disk full"])
def test_a_write_fault_at_every_write_keeps_every_finished_row(prepared, reference, tmp_path, monkeypatch, kind):
    n_writes = _writes_in_a_run(prepared, tmp_path, monkeypatch)
    with Tally(f"write error ({'EIO' if kind == 'transient' else 'ENOSPC'}) at the k-th write, then --resume") as t:
        for k in range(1, n_writes + 1):
            out = tmp_path / f"k{k}.tsv"
            faults = Faults(k, kind)
            monkeypatch.setattr(results, "write_all", faults)
            try:
                run.execute(prepared, "certify", out)
                failed = False
            except WriteError as e:
                failed = True
                assert "cannot write" in str(e)
            except OutputError as e:  # the very first meta write: nothing was started
                failed = True
                assert "cannot write" in str(e) and not out.exists()
            monkeypatch.setattr(results, "write_all", faults.real)
            t.faults += 1
            kept = check_prefix_of_reference(out, reference, t)
            if meta_path(out).exists():
                meta = meta_of(out)
                if failed and out.exists():
                    assert meta["status"] == "failed" and (
                        "No space" in meta["error"] or "Input/output" in meta["error"]
                    )
                    assert meta["examples_done"] == len(kept)
                elif not failed:
                    assert meta["status"] == "complete"
            else:
                assert failed and not out.exists()
            # then: resume (with a second fault at the next write: a kill/full disk during resume)
            if failed:
                faults2 = Faults(2, kind)
                monkeypatch.setattr(results, "write_all", faults2)
                try:
                    run.execute(prepared, "certify", out, resume=True)
                except OutputError:
                    pass
                monkeypatch.setattr(results, "write_all", faults2.real)
                t.faults += 1
                again = check_prefix_of_reference(out, reference, t)
                t.lost += max(0, len(kept) - len(again))
                meta = run.execute(prepared, "certify", out, resume=True)
                assert meta["status"] == "complete"
            final = rows_of(out)
            t.lost += len(set(reference) - set(final))
            assert final == reference
            assert not [f for f in os.listdir(tmp_path) if f.endswith((".tmp", ".lock"))]
    assert t.lost == 0


@pytest.mark.slow
def test_file_size_limit_efbig_fails_truthfully_then_resumes(tmp_path):
    """A real OS fault: RLIMIT_FSIZE makes the TSV's writes fail with EFBIG in a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a stored (uncompressed) copy of the data: a compressed .npz is decompressed to a temp file first, which
    # the file-size limit would refuse before the run starts (also one clean line, but not this test's fault)
    with np.load(DATA) as d:
        np.savez(tmp_path / "data.npz", images=d["images"], labels=d["labels"])
    base = [
        sys.executable,
        "-m",
        "rs_onnx.cli",
        *[str(tmp_path / "data.npz") if a == DATA else a for a in BASE],
        "--end",
        "80",
    ]
    subprocess.run(base + ["--out", str(tmp_path / "ref.tsv")], env=env, check=True, capture_output=True, timeout=120)
    reference = rows_of(tmp_path / "ref.tsv")
    out = tmp_path / "r.tsv"
    limit = 7000  # the meta file fits (with its reserve), the TSV (about 10 kB) not: EFBIG after some rows
    assert meta_path(tmp_path / "ref.tsv").stat().st_size + 2048 < limit < (tmp_path / "ref.tsv").stat().st_size
    with Tally("file-size limit (EFBIG, real), then --resume") as t:
        res = subprocess.run(
            base + ["--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
        )
        t.faults += 1
        kept = check_prefix_of_reference(out, reference, t)
        meta = meta_of(out)
        assert res.returncode == 1, res.stderr
        assert_one_error_line(res.stderr, "File too large", "--resume", f"{len(kept)} complete rows")
        assert meta["status"] == "failed" and "EFBIG" in meta["error"] and 0 < len(kept) < 80
        assert meta["examples_done"] == len(kept)
        res = subprocess.run(
            base + ["--out", str(out), "--resume"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert res.returncode == 0, res.stderr
        t.lost += len(set(reference) - set(rows_of(out)))
        assert rows_of(out) == reference and meta_of(out)["status"] == "complete"


def test_out_is_a_folder_or_unwritable(tmp_path, capsys):
    (tmp_path / "dir.tsv").mkdir()
    code, err = cli([*BASE, "--out", str(tmp_path / "dir.tsv")], capsys)
    assert code == 1
    assert_one_error_line(err, "is a folder")
    assert os.listdir(tmp_path / "dir.tsv") == [] and sorted(os.listdir(tmp_path)) == ["dir.tsv"]


def test_resume_truncates_a_cut_row_in_place_and_never_rewrites(prepared, reference, tmp_path, monkeypatch):
    out = tmp_path / "r.tsv"
    run.execute(prepared, "certify", out)
    data = out.read_bytes()
    cut = data[: data.rfind(b"\n", 0, len(data) - 1) + 1]  # drop the last row ...
    out.write_bytes(cut + b"7\t1\t1\t0.3")  # ... and leave half a row, as a crash would
    meta = meta_of(out)
    meta["status"] = "running"  # a crash: its meta file still says running, with no digest of these rows
    del meta["rows_digest"]
    results.write_json_atomic(meta_path(out), meta)
    opened = []
    real_open = os.open

    def spy(path, flags, *a, **k):
        if str(path) == str(out):
            opened.append(flags)
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", spy)
    run.execute(prepared, "certify", out, resume=True)
    assert all(not (f & os.O_TRUNC) for f in opened) and opened
    assert rows_of(out) == reference


def test_finished_rows_reads_a_torn_file_without_changing_it(tmp_path, monkeypatch):
    """outputs.finished_rows (the CLI's count of examples already done, read before the lock) and read_rows
    (--resume, under the lock) parse the same rows; only read_rows cuts the torn tail."""
    columns = results.columns_for("certify")
    out = tmp_path / "r.tsv"
    row = {c: 0 for c in columns}
    lines = ["\t".join(columns)] + [
        "\t".join(results.format_value((row | {"idx": i})[c]) for c in columns) for i in (5, 2, 7)
    ]
    torn = ("\n".join(lines) + "\n9\t1\t1\t0.3").encode("utf-8")  # three complete rows and half a row
    out.write_bytes(torn)
    before = out.stat()
    touched = []
    monkeypatch.setattr(os, "truncate", lambda *a: touched.append(a))
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *a: touched.append(flags) or real_open(path, flags, *a))
    assert outputs.finished_rows(out, columns, "certify") == [5, 2, 7]
    assert not touched and out.read_bytes() == torn and out.stat().st_mtime_ns == before.st_mtime_ns
    monkeypatch.undo()
    assert outputs.read_rows(out, columns, "certify") == [5, 2, 7]
    assert out.read_bytes() == torn[: torn.rfind(b"\n") + 1]  # read_rows cut the torn tail
    # the same refusals (one parser): another header, a short row; an empty file holds no rows
    for bad in (b"idx\tlabel\n1\t2\n", ("\t".join(columns) + "\n1\t2\n").encode("utf-8")):
        out.write_bytes(bad)
        for read in (outputs.finished_rows, outputs.read_rows):
            with pytest.raises(OutputError):
                read(out, columns, "certify")
    out.write_bytes(b"idx\tla")
    assert outputs.finished_rows(out, columns, "certify") == [] and out.read_bytes() == b"idx\tla"
    assert outputs.read_rows(out, columns, "certify") == [] and out.read_bytes() == b""


def test_progress_after_resume_counts_the_complete_rows_only(tmp_path, capsys):
    """A torn tail is not an example done: the progress line of the resumed run ends at 8/8, not beyond."""
    out = tmp_path / "r.tsv"
    code, err = cli([*BASE, "--end", "5", "--out", str(out)], capsys)
    assert code == 0, err
    with open(out, "ab") as f:
        f.write(b"5\t1\t1\t0.3")  # half of example 5's row, as a crash leaves it
    assert outputs.finished_rows(out, results.columns_for("certify"), "certify") == [0, 1, 2, 3, 4]
    code, err = cli([a for a in BASE if a != "-q"] + ["--resume", "--out", str(out)], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if " examples (" in ln]
    assert lines and lines[-1].startswith(f"rs-onnx: certify {EXAMPLES}/{EXAMPLES} examples (100%)"), err
    assert len(rows_of(out)) == EXAMPLES


def test_meta_temp_files_are_unique_per_writer(tmp_path):
    path = tmp_path / "x.meta.json"
    errors = []

    def writer(i):
        try:
            for j in range(30):
                results.write_json_atomic(path, {"writer": i, "j": j})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and json.loads(path.read_text())["j"] == 29 and os.listdir(tmp_path) == ["x.meta.json"]


# ---------------------------------------------------------------- 4. resume with other data
def test_resume_refuses_other_data_or_selection(prepared, tmp_path, capsys):
    data = tmp_path / "d.npz"
    data.write_bytes(Path(DATA).read_bytes())
    out = tmp_path / "r.tsv"
    args = [
        "-q",
        "certify",
        MODEL,
        str(data),
        "--sigma",
        "0.25",
        "--n0",
        "20",
        "--n",
        "100",
        "--seed",
        "0",
        "--end",
        "4",
        "--out",
        str(out),
    ]
    code, err = cli(args, capsys)
    assert code == 0, err
    before = out.read_bytes()
    other = tmp_path / "other.npz"
    d = dict(np.load(data))
    d["images"] = d["images"].copy()
    d["images"][0, 0, 0] ^= 1
    np.savez(other, **d)
    with Tally("--resume with other data or selection") as t:
        for change in (["--skip", "2"], ["--start", "1"]):
            code, err = cli([*args, "--resume", *change], capsys)
            t.faults += 1
            assert code == 1
            assert_one_error_line(err, "different data")
        code, err = cli([*args, "--resume", "--end", "2"], capsys)  # rows outside the selection
        t.faults += 1
        assert code == 1 and "outside this run's selection" in err
        code, err = cli([*[str(other) if a == str(data) else a for a in args], "--resume"], capsys)
        t.faults += 1
        assert code == 1 and "data (contents)" in err
        os.replace(other, data)  # the same path, rewritten
        code, err = cli([*args, "--resume"], capsys)
        t.faults += 1
        assert code == 1 and "data (contents)" in err
        t.lost += out.read_bytes() != before
    assert t.lost == 0


def test_data_identity_of_a_folder_sees_renames_and_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"1")
    (tmp_path / "a" / "y.png").write_bytes(b"2")
    first = data_identity(tmp_path, 0, None, 1)
    assert first["kind"] == "folder" and data_identity(tmp_path, 0, None, 1) == first
    (tmp_path / "a" / "y.png").write_bytes(b"3")
    assert data_identity(tmp_path, 0, None, 1)["sha256"] != first["sha256"]
    (tmp_path / "a" / "y.png").write_bytes(b"2")
    os.replace(tmp_path / "a" / "y.png", tmp_path / "a" / "z.png")
    assert data_identity(tmp_path, 0, None, 1)["sha256"] != first["sha256"]
    assert data_identity(tmp_path, 0, None, 2)["skip"] == 2


# ---------------------------------------------------------------- 5. two runs on one --out
def test_a_second_run_on_a_locked_out_is_refused_naming_the_holder(prepared, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    with Tally("second run on the same --out") as t, RunLock(out):
        for flags in ([], ["--resume"], ["--overwrite"]):
            code, err = cli([*BASE, "--out", str(out), *flags], capsys)
            t.faults += 1
            assert code == 1
            assert_one_error_line(err, "in use by another rs-onnx run", f"pid {os.getpid()}")
        assert not out.exists() and not meta_path(out).exists()
    assert not lock_path(out).exists()


@pytest.mark.slow
def test_two_concurrent_processes_never_mix_rows(tmp_path, reference):
    out = tmp_path / "r.tsv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "rs_onnx.cli", *BASE, "--out", str(out)]
    with Tally("two processes on the same --out at once") as t:
        procs = [
            subprocess.Popen(args + flags, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for flags in ([], ["--resume"], ["--overwrite"])
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        t.faults += 2
        codes = [p.returncode for p in procs]
        assert codes.count(0) >= 1, outs
        for code, (_, err) in zip(codes, outs):
            assert code == 0 or ("in use by another" in err or "already holds" in err), err
        t.lost += len(set(reference) - set(rows_of(out)))
        assert rows_of(out) == reference and meta_of(out)["status"] == "complete"


# ---------------------------------------------------------------- 6. signals, 8. hangs
def _slow_args(out):
    return [
        sys.executable,
        "-m",
        "rs_onnx.cli",
        "certify",
        MODEL,
        DATA,
        "--sigma",
        "0.25",
        "--n0",
        "20",
        "--n",
        "2000",
        "--seed",
        "0",
        "--end",
        "40",
        "--batch-size",
        "500",
        "--out",
        str(out),
    ]


def _wait_rows(out, rows, proc, timeout=60):
    t_end = time.time() + timeout
    while time.time() < t_end and proc.poll() is None:
        if out.exists() and len(out.read_bytes().split(b"\n")) > rows + 1:
            return
        time.sleep(0.05)
    raise AssertionError("no rows appeared")


@pytest.mark.parametrize("sig,code", [(signal.SIGHUP, 143), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_signals_end_the_run_as_interrupted_and_keep_rows(tmp_path, sig, code):
    out = tmp_path / "r.tsv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with Tally("SIGHUP / SIGTERM / Ctrl-C mid-run, then kill -9 during --resume") as t:
        proc = subprocess.Popen(
            _slow_args(out),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,
        )
        _wait_rows(out, 2, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        t.faults += 1
        assert proc.returncode == code, err
        assert "Traceback" not in err and "--resume" in err
        meta = meta_of(out)
        kept = rows_of(out)
        assert meta["status"] == "interrupted" and meta["examples_done"] == len(kept) >= 2
        if sig != signal.SIGHUP:
            return
        # kill -9 during the resume: the rows kept before stay, in place
        proc = subprocess.Popen(_slow_args(out) + ["--resume"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_rows(out, len(kept) + 1, proc)
        proc.kill()
        proc.communicate(timeout=60)
        t.faults += 1
        after = rows_of(out)
        t.lost += len(set(kept) - set(after))
        assert after[: len(kept)] == kept and len(set(after)) == len(after)
        assert meta_of(out)["status"] == "running"  # it was killed: nothing could say otherwise
        assert not lock_path(out).exists() or True  # a killed holder's lock file may stay; it is not held
        proc = subprocess.Popen(
            _slow_args(out) + ["--resume", "--end", "40"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_rows(out, len(after) + 1, proc)  # the stale lock file does not block a new run
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        final = rows_of(out)
        assert final[: len(after)] == after and len(set(final)) == len(final)
    assert t.lost == 0


@pytest.fixture(scope="module")
def never_ending(tmp_path_factory):
    """A classifier whose graph never finishes: a Loop with 10^15 iterations before a linear head."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    body = h.make_graph(
        [h.make_node("Add", ["v_in", "one"], ["v_out"]), h.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [
            h.make_tensor_value_info("i", T.INT64, []),
            h.make_tensor_value_info("cond_in", T.BOOL, []),
            h.make_tensor_value_info("v_in", T.FLOAT, None),
        ],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, None)],
        [h.make_tensor("one", T.FLOAT, [], [1.0])],
    )
    nodes = [
        h.make_node("Constant", [], ["M"], value=h.make_tensor("m", T.INT64, [], [10**15])),
        h.make_node("Constant", [], ["c"], value=h.make_tensor("c0", T.BOOL, [], [True])),
        h.make_node("Loop", ["M", "c", "x"], ["y"], body=body),
        h.make_node("Flatten", ["y"], ["f"]),
        h.make_node("MatMul", ["f", "W"], ["logits"]),
    ]
    graph = h.make_graph(
        nodes,
        "never",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", 1, 4, 4])],
        [h.make_tensor_value_info("logits", T.FLOAT, ["N", 3])],
        [h.make_tensor("W", T.FLOAT, [16, 3], np.ones(48, np.float32).tolist())],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path_factory.mktemp("never")
    path = folder / "never.onnx"
    onnx.save(model, path)
    np.savez(folder / "d.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.zeros(3, np.int64))
    return path, folder / "d.npz"


@pytest.mark.parametrize("command", ["certify", "inspect"])
def test_a_never_ending_model_hits_the_load_time_limit(never_ending, tmp_path, command):
    model, data = never_ending
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RS_ONNX_LOAD_TIME_LIMIT": "1"}
    args = ["-q", command, str(model)] + (
        [str(data), "--sigma", "0.25", "--out", str(tmp_path / "r.tsv")] if command == "certify" else []
    )
    with Tally("never-ending model (load-time limit, Ctrl-C, SIGTERM)") as t:
        t0 = time.time()
        res = subprocess.run(
            [sys.executable, "-m", "rs_onnx.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        t.faults += 1
        assert time.time() - t0 < 30 and "Traceback" not in res.stderr
        if command == "certify":
            assert res.returncode == 1
            assert_one_error_line(res.stderr, "did not finish within 1 s", "RS_ONNX_LOAD_TIME_LIMIT")
        else:  # inspect reports what fails in the model
            assert "did not finish within 1 s" in res.stdout
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signals_stop_a_model_call_that_never_ends(never_ending, sig, code, word):
    model, data = never_ending
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RS_ONNX_LOAD_TIME_LIMIT": "600"}
    with Tally("never-ending model (load-time limit, Ctrl-C, SIGTERM)") as t:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rs_onnx.cli", "certify", str(model), str(data), "--sigma", "0.25"],
            env=env,
            preexec_fn=default_sigint,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = proc.stderr.readline()  # "rs-onnx: loading ...": signal handlers are in place
        assert "loading" in first, first
        time.sleep(1.5)  # inside the model's first run (it never ends)
        assert proc.poll() is None
        t0 = time.time()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        t.faults += 1
        assert time.time() - t0 < 10 and proc.returncode == code, err
        assert "Traceback" not in err and f"rs-onnx: {word}" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- 7. the planted cache file
def test_a_planted_composed_model_is_never_certified(tmp_path, capsys, monkeypatch):
    from tests.test_compose import denoiser

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(4)
    w = rng.normal(size=(3, 16)).astype(np.float32)
    clf = save(linear_model(w, input_shape=(1, 4, 4), batch=1), tmp_path / "c.onnx")
    den = save(denoiser((1, 4, 4), sigma=0.25), tmp_path / "d.onnx")
    np.savez(tmp_path / "x.npz", images=rng.integers(0, 256, (4, 4, 4), dtype=np.uint8), labels=np.zeros(4, np.uint8))
    args = [
        "-q",
        "certify",
        str(clf),
        str(tmp_path / "x.npz"),
        "--denoiser",
        str(den),
        "--sigma",
        "0.25",
        "--n0",
        "20",
        "--n",
        "300",
        "--seed",
        "0",
    ]
    code, err = cli([*args, "--out", str(tmp_path / "a.tsv")], capsys)
    assert code == 0, err
    folder = tmp_path / "cache" / "rs-onnx" / "composed"
    assert folder.stat().st_mode & 0o777 == 0o700
    cached = [p for p in folder.iterdir() if p.suffix == ".onnx"]
    assert len(cached) == 1
    sha_a = meta_of(tmp_path / "a.tsv")["model"]["sha256"]
    # plant a model that always answers class 2, in the cache and where older versions looked
    planted = linear_model(np.zeros((3, 16), np.float32), np.array([0, 0, 9], np.float32), input_shape=(1, 4, 4))
    import tempfile

    old_place = Path(tempfile.gettempdir()) / "rs-onnx-composed" / cached[0].name
    old_place.parent.mkdir(exist_ok=True)
    with Tally("planted composed-model cache file") as t:
        for place in (cached[0], old_place):
            save(planted, place)
            out = tmp_path / f"b{t.faults}.tsv"
            code, err = cli([*args, "--out", str(out)], capsys)
            t.faults += 1
            assert code == 0, err
            t.harmed += rows_of(out) != rows_of(tmp_path / "a.tsv") or meta_of(out)["model"]["sha256"] != sha_a
    assert t.harmed == 0


# ---------------------------------------------------------------- memory before and during sampling
def test_a_huge_n_starts_sampling_at_once_in_bounded_memory(prepared, monkeypatch):
    """n = 10^12 reaches its first model call as fast and in the same memory as n = 10^5 (no structure
    proportional to n or to the number of noise blocks)."""
    import tracemalloc

    class StopError(Exception):
        pass

    calls = {"n": 0}
    real = prepared.classifier.predict

    def predict(x):  # the selection batch runs; the first estimation batch stops the run
        calls["n"] += 1
        if calls["n"] > 1:
            raise StopError
        return real(x)

    monkeypatch.setattr(prepared.classifier, "predict", predict)
    x = prepared.data.image(0)
    seen = {}
    for n in (10**5, 10**12):
        calls["n"] = 0
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(StopError):
            prepared.smoothed.certify_many([x], 100, n, 0.001, [0])
        seen[n] = (tracemalloc.get_traced_memory()[1], time.perf_counter() - t0)
        tracemalloc.stop()
    (small_peak, small_s), (huge_peak, huge_s) = seen[10**5], seen[10**12]
    assert huge_peak < 1.5 * small_peak + (1 << 20), seen
    assert huge_s < 2 + 3 * small_s, seen


def test_index_outputs_far_beyond_the_class_count_never_grow_the_count_table(tmp_path):
    """An index output of 10^12 is counted as no class in a table fixed at K + 1 columns (never 10^12 of them)."""
    from rs_onnx.sampling import HostClassifier, Sampler, Task

    class Huge(HostClassifier):
        num_classes, input_shape, input_dtype = 3, (1, 4, 4), np.dtype(np.float32)

        def predict(self, x):
            return np.full(len(x), 10**12, np.int64)

    from rs_onnx.preprocess import Preprocessor, PreprocessSpec

    pre = Preprocessor(PreprocessSpec(), (4, 4), (1, 4, 4), np.float32)
    sampler = Sampler(Huge(), pre, 0.25, 0, batch_size=10, noise_threads=0)
    counts = sampler.count([Task(np.zeros((1, 4, 4), np.float32), 0, 0, 20)])
    assert counts.tolist() == [[0, 0, 0, 20]]
