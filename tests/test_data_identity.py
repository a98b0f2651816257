"""A run's data identity covers every file a CSV/TSV manifest names: --resume refuses a manifest whose
images changed while the manifest did not (one TSV from two data sets), and rs-onnx verify sees it too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rs_onnx.outputs import data_identity
from tests.conftest import Tally, invoke_cli

PIL = pytest.importorskip("PIL.Image", reason="Pillow is a dependency of rs-onnx")


def images_and_manifest(folder: Path, count: int = 20) -> tuple[Path, list[Path]]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        f = folder / "img" / f"{i}.png"
        f.parent.mkdir(exist_ok=True)
        PIL.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(f)
        files.append(f)
    manifest = folder / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"img/{i}.png,{i % 3}\n" for i in range(count)))
    return manifest, files


@pytest.fixture()
def setup(tmp_path, linear3):
    model, _ = linear3
    manifest, files = images_and_manifest(tmp_path)
    base = ["-q", "certify", model, str(manifest), "--sigma", "0.5", "--n0", "10", "--n", "100", "--seed", "0"]
    return tmp_path, base, files


@pytest.mark.parametrize("changed", [5, 15])  # an image already certified, and one still to come
def test_resume_refuses_a_manifest_whose_images_changed(setup, capsys, changed):
    from rs_onnx.cli import _main

    tmp, base, files = setup
    out = tmp / "r.tsv"
    assert invoke_cli([*base, "--end", "10", "--out", str(out)]).exit_code == 0
    meta = json.loads((tmp / "r.tsv.meta.json").read_text())
    assert meta["data"]["identity"]["kind"] == "manifest"
    before = out.read_bytes()
    with Tally("--resume after images of a CSV/TSV manifest changed") as t:
        PIL.fromarray(np.full((4, 4), 7, np.uint8)).save(files[changed])  # the manifest itself is unchanged
        code = _main([*base, "--end", "20", "--out", str(out), "--resume"], False)
        t.faults += 1
        t.lost += int(out.read_bytes() != before)
    err = capsys.readouterr().err
    assert code == 1 and "data (contents)" in err, err
    assert out.read_bytes() == before


def test_resume_continues_when_nothing_changed_and_verify_hashes_the_images(setup):
    from rs_onnx.verify import verify_file

    tmp, base, files = setup
    out = tmp / "r.tsv"
    assert invoke_cli([*base, "--end", "10", "--out", str(out)]).exit_code == 0
    assert invoke_cli([*base, "--end", "20", "--out", str(out), "--resume"]).exit_code == 0
    assert verify_file(out).ok
    PIL.fromarray(np.full((4, 4), 7, np.uint8)).save(files[3])
    v = verify_file(out)
    assert not v.ok and "contents are not those meta.json records" in v.line()


def test_identity_of_a_manifest_sees_each_named_file(tmp_path):
    manifest, files = images_and_manifest(tmp_path, 3)
    names = [str(f) for f in files]
    first = data_identity(manifest, 0, None, 1, names)
    assert first["kind"] == "manifest" and first["manifest_sha256"] == data_identity(manifest)["sha256"]
    files[2].write_bytes(files[2].read_bytes() + b"\0")
    assert data_identity(manifest, 0, None, 1, names)["sha256"] != first["sha256"]
