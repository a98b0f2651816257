"""Every data layout, streamed: .npy + labels, .npz read in place or decompressed once, ImageFolder with
--classes, CSV/TSV manifests; torchvision's Resize/CenterCrop; bad data refused in one line, nothing written."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rs_onnx.cli import main
from rs_onnx.data import ImageTransform, load_data, resized_size
from rs_onnx.errors import DataError
from tests.onnx_models import linear_model, save

SHARED = Path(__file__).resolve().parents[2] / "shared"
K = 5
W = np.random.default_rng(1).normal(size=(K, 3 * 8 * 8)).astype(np.float32)
FAST = ["--sigma", "0.25", "--n0", "5", "--n", "20", "--seed", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save(linear_model(W, input_shape=(3, 8, 8)), tmp_path_factory.mktemp("m") / "m.onnx")


def cli(capsys, argv: list[str], out: Path) -> tuple[int, str]:
    """Runs the CLI in-process; on failure asserts one error line, exit 1, and no output file."""
    cmd, *rest = argv
    with pytest.raises(SystemExit) as e:
        main(["-q", cmd, *rest, "--out", str(out)])
    err = capsys.readouterr().err
    if e.value.code != 0:
        lines = [line for line in err.splitlines() if line.startswith("rs-onnx: error:")]
        assert e.value.code == 1 and len(lines) == 1 and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not Path(str(out) + ".meta.json").exists()
    return e.value.code, err


def rows(out: Path) -> list[dict]:
    lines = out.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"))) for line in lines[1:]]


def jpeg(path: Path, w: int, h: int, seed: int = 0, mode: str = "RGB") -> Path:
    """A smooth random image (so JPEG keeps it close) of w x h pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


# --- arrays ---------------------------------------------------------------------------------------------------


def test_npy_with_labels_npy_or_text_certifies_and_matches_npz(capsys, tmp_path, model):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    y = rng.integers(0, K, 6)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.uint8))
    (tmp_path / "y.txt").write_text("".join(f"{v}\n" for v in y))
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    np.savez_compressed(tmp_path / "c.npz", images=x, labels=y)
    got = {}
    for name, argv in {
        "npy": [str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")],
        "txt": [str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.txt")],
        "npz": [str(tmp_path / "d.npz")],
        "npzc": [str(tmp_path / "c.npz")],
    }.items():
        out = tmp_path / f"{name}.tsv"
        assert cli(capsys, ["certify", str(model), *argv, *FAST], out)[0] == 0
        got[name] = [{k: v for k, v in r.items() if k != "time"} for r in rows(out)]
    assert [int(r["label"]) for r in got["npy"]] == list(y)
    assert got["npy"] == got["txt"] == got["npz"] == got["npzc"]
    meta = json.loads((tmp_path / "npzc.tsv.meta.json").read_text())
    assert meta["data"]["format"] == "npz" and meta["data"]["compressed"] is True


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "grey", "flat"])
def test_rows_read_in_place_equal_np_load(tmp_path, layout):
    rng = np.random.default_rng(2)
    shape = {"nchw": (7, 3, 5, 6), "nhwc": (7, 5, 6, 3), "grey": (7, 5, 6), "flat": (7, 11)}[layout]
    x = rng.random(shape).astype(np.float32)
    want = {"nchw": lambda: x, "nhwc": lambda: x.transpose(0, 3, 1, 2), "grey": lambda: x[:, None], "flat": lambda: x}[
        layout
    ]()
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "s.npz", images=x, labels=np.arange(7))
    np.savez_compressed(tmp_path / "c.npz", images=x, labels=np.arange(7))
    for data in (
        load_data(tmp_path / "x.npy", labels=_labels(tmp_path, 7)),
        load_data(tmp_path / "s.npz"),
        load_data(tmp_path / "c.npz"),
    ):
        assert data.image_shape == want.shape[1:] and len(data) == 7
        for i in (6, 0, 3):
            np.testing.assert_array_equal(data.image(i), want[i])
        np.testing.assert_array_equal(data.images[[4, 2]], want[[4, 2]])


def _labels(tmp_path: Path, n: int) -> Path:
    np.save(tmp_path / "labels.npy", np.zeros(n, np.int64))
    return tmp_path / "labels.npy"


def test_skipped_examples_are_never_read(capsys, tmp_path, model):
    """--start/--end/--skip: rows not selected may hold NaN, and files not selected may be corrupt."""
    x = np.random.default_rng(0).random((6, 3, 8, 8)).astype(np.float32)
    x[1::2] = np.nan
    np.save(tmp_path / "x.npy", x)
    argv = [str(tmp_path / "x.npy"), "--labels", str(_labels(tmp_path, 6)), *FAST]
    assert cli(capsys, ["certify", str(model), *argv, "--skip", "2"], tmp_path / "a.tsv")[0] == 0
    code, err = cli(capsys, ["certify", str(model), *argv, "--start", "1", "--end", "2"], tmp_path / "b.tsv")
    assert code == 1 and "example 1 holds NaN" in err
    folder = tmp_path / "f"
    for i in range(4):
        jpeg(folder / "0" / f"{i}.jpg", 8, 8, i)
    (folder / "0" / "1.jpg").write_bytes(b"garbage")
    assert cli(capsys, ["certify", str(model), str(folder), *FAST, "--skip", "2"], tmp_path / "c.tsv")[0] == 0
    code, err = cli(capsys, ["certify", str(model), str(folder), *FAST], tmp_path / "d.tsv")
    assert code == 1 and "1.jpg: not a readable image" in err


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_values_beyond_float32_are_refused_without_a_numpy_warning(capsys, tmp_path, model):
    big = np.random.default_rng(0).random((3, 3, 8, 8))
    big[1, 0, 0, 0] = 1e300
    np.save(tmp_path / "big.npy", big)
    argv = ["certify", str(model), str(tmp_path / "big.npy"), "--labels", str(_labels(tmp_path, 3)), *FAST]
    code, err = cli(capsys, argv, tmp_path / "e.tsv")
    assert code == 1 and "example 1 holds NaN, Inf or values beyond float32" in err
    with pytest.raises(DataError, match="beyond float32"):
        load_data(tmp_path / "big.npy", labels=_labels(tmp_path, 3)).image(1)


def _npy_bytes(header_shape, dtype="|u1", payload=b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": header_shape})
    return buf.getvalue() + payload


def test_headers_declaring_huge_arrays_are_refused_before_allocating(capsys, tmp_path, model):
    (tmp_path / "big.npy").write_bytes(_npy_bytes((10**12, 3, 8, 8), payload=b"\0" * 192))
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:  # stored: the header lies about the member
        z.writestr("images.npy", _npy_bytes((10**12, 3, 8, 8), payload=b"\0" * 192))
        z.writestr("labels.npy", _npy_bytes((10**12,), "<i8", payload=b"\0" * 8))
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", _npy_bytes((10**6, 3, 8, 8), payload=b"\0" * 192))
        z.writestr("labels.npy", _npy_bytes((10**6,), "<i8", payload=b"\0" * 8))
    labels = tmp_path / "l.txt"
    labels.write_text("0\n")
    for argv, msg in (
        ([str(tmp_path / "big.npy"), "--labels", str(labels)], "declares"),
        ([str(tmp_path / "big.npz")], "declares"),
        ([str(tmp_path / "bomb.npz")], "declares"),
    ):
        code, err = cli(capsys, ["certify", str(model), *argv, *FAST], tmp_path / "o.tsv")
        assert code == 1 and msg in err, err


def test_zip_bomb_is_refused_by_declared_size(capsys, tmp_path, model):
    """A compressed member declaring more than it holds (zip's own size field forged) or more than the disk holds."""
    n = 4000
    with zipfile.ZipFile(tmp_path / "z.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", _npy_bytes((n, 3, 8, 8), payload=b"\0" * (n * 192)))
        z.writestr("labels.npy", _npy_bytes((n,), "<i8", payload=b"\0" * (n * 8)))
    raw = bytearray((tmp_path / "z.npz").read_bytes())
    info = zipfile.ZipFile(tmp_path / "z.npz").getinfo("images.npy")
    huge = 2**32 - 2  # forge the uncompressed size in the local and the central header
    cd = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"PK\x01\x02"))  # first central entry (images.npy)
    struct.pack_into("<I", raw, info.header_offset + 22, huge)
    struct.pack_into("<I", raw, cd + 24, huge)
    (tmp_path / "forged.npz").write_bytes(bytes(raw))
    code, err = cli(capsys, ["certify", str(model), str(tmp_path / "forged.npz"), *FAST], tmp_path / "o.tsv")
    assert code == 1 and ("declares" in err or "npz" in err), err


def test_decompression_needs_room_on_disk(tmp_path, monkeypatch):
    import shutil as sh

    x = np.zeros((1000, 3, 8, 8), np.uint8)
    np.savez_compressed(tmp_path / "c.npz", images=x, labels=np.zeros(1000, np.int64))
    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr("rs_onnx.arrays.shutil.disk_usage", lambda p: usage._replace(free=(256 << 20) + 1000))
    with pytest.raises(DataError, match="room to decompress"):
        load_data(tmp_path / "c.npz")


def test_labels_beyond_int64_and_bad_labels_files(capsys, tmp_path, model):
    x = np.zeros((2, 3, 8, 8), np.uint8)
    np.savez(tmp_path / "u.npz", images=x, labels=np.array([0, 2**63], np.uint64))
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "big.txt").write_text("0\n9223372036854775808\n")
    (tmp_path / "short.txt").write_text("0\n")
    (tmp_path / "word.txt").write_text("0\ncat\n")
    np.save(tmp_path / "f.npy", np.zeros(2, np.float32))
    cases = [
        ([str(tmp_path / "u.npz")], "exceeds int64"),
        ([str(tmp_path / "x.npy"), "--labels", str(tmp_path / "big.txt")], "exceeds int64"),
        ([str(tmp_path / "x.npy"), "--labels", str(tmp_path / "short.txt")], "1 lines for 2 images"),
        ([str(tmp_path / "x.npy"), "--labels", str(tmp_path / "word.txt")], "not an integer"),
        ([str(tmp_path / "x.npy"), "--labels", str(tmp_path / "f.npy")], "expected integers"),
        ([str(tmp_path / "x.npy")], "expected --labels"),
        ([str(tmp_path / "x.npy"), "--labels", str(tmp_path / "nope.txt")], "not found"),
        ([str(tmp_path / "u.npz"), "--resize", "8"], "--resize given"),
    ]
    for argv, msg in cases:
        code, err = cli(capsys, ["certify", str(model), *argv, *FAST], tmp_path / "o.tsv")
        assert code == 1 and msg in err, (argv, err)


# --- image folders, manifests, images -----------------------------------------------------------------------------


def test_imagenet_style_folder_with_classes_file_and_the_standard_crop(capsys, tmp_path, model):
    """Synset folders in an order that is not the model's; --classes gives the indices; 40x30 -> resize 9 -> crop 8."""
    synsets = ["n03", "n01", "n04", "n00", "n02"]  # the model's class order (line number = index)
    classes = tmp_path / "synsets.txt"
    classes.write_text("".join(f"{s} some words, more words\n" for s in synsets))
    folder = tmp_path / "val"
    for k, s in enumerate(["n00", "n02", "n03"]):
        for j in range(2):
            jpeg(folder / s / f"ILSVRC_{k}{j}.JPEG", 40, 30, 10 * k + j)
    (folder / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    out = tmp_path / "o.tsv"
    argv = ["certify", str(model), str(folder), "--classes", str(classes), *FAST]
    code, err = cli(capsys, argv, out)
    assert code == 1 and "--resize N --center-crop 8x8" in err and "ILSVRC_00.JPEG" in err  # refused, not stretched
    assert cli(capsys, argv + ["--resize", "9", "--center-crop", "8"], out)[0] == 0
    assert [int(r["label"]) for r in rows(out)] == [3, 3, 4, 4, 0, 0]
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["data"]["transform"]["resize"] == 9 and meta["data"]["transform"]["center_crop"] == [8, 8]
    assert meta["config"]["classes"] == str(classes)
    # without --classes: sorted names give the indices (torchvision ImageFolder)
    assert cli(capsys, argv[:3] + FAST + ["--resize", "9", "--center-crop", "8"], tmp_path / "s.tsv")[0] == 0
    assert [int(r["label"]) for r in rows(tmp_path / "s.tsv")] == [0, 0, 1, 1, 2, 2]
    # a changed transform is refused by --resume
    code, err = cli(capsys, argv + ["--resize", "10", "--center-crop", "8", "--resume"], tmp_path / "new.tsv")
    assert code == 0
    with pytest.raises(SystemExit):
        main(["-q", *argv, "--resize", "10", "--center-crop", "8", "--resume", "--out", str(out)])
    assert "different resize" in capsys.readouterr().err
    (classes).write_text("n00\nn02\n")
    code, err = cli(capsys, argv + ["--resize", "9", "--center-crop", "8"], tmp_path / "o2.tsv")
    assert code == 1 and "class folder 'n03' is not in --classes" in err


def test_folder_order_and_labels_follow_imagefolder(tmp_path):
    for path in ["b/z.png", "b/sub/a.png", "a/2.png", "a/10.png", "c/readme.txt"]:
        if path.endswith(".png"):
            jpeg(tmp_path / "f" / path, 8, 8)
        else:
            (tmp_path / "f" / path).parent.mkdir(parents=True)
            (tmp_path / "f" / path).write_text("not an image")
    data = load_data(tmp_path / "f", size=(8, 8), channels=3)
    rel = [os.path.relpath(f, tmp_path / "f") for f in data.files]
    assert rel == ["a/10.png", "a/2.png", "b/z.png", "b/sub/a.png"]  # sorted os.walk, as torchvision
    assert (
        list(data.labels)
        == [
            0,
            0,
            1,
            1,
        ]
        and data.info["classes"] == 3
    )  # empty 'c' keeps its index
    os.symlink(tmp_path / "f" / "b", tmp_path / "f" / "b" / "sub" / "loop")  # a link cycle ends, once
    jpeg(tmp_path / "f" / "b" / ".hidden" / "h.png", 8, 8)
    assert load_data(tmp_path / "f").files == data.files
    for d in ["0", "1", "10"]:  # integer names give their value, not their sorted rank
        jpeg(tmp_path / "g" / d / "x.png", 8, 8)
    assert list(load_data(tmp_path / "g").labels) == [0, 1, 10]


def test_folder_layouts_that_are_refused(tmp_path):
    jpeg(tmp_path / "mix" / "0" / "a.png", 8, 8)
    jpeg(tmp_path / "mix" / "b.png", 8, 8)
    jpeg(tmp_path / "flat" / "IMG_0003.png", 8, 8)
    jpeg(tmp_path / "flat" / "IMG_0004.png", 8, 8)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="both at its top"):
        load_data(tmp_path / "mix")
    with pytest.raises(DataError, match="with no labels"):  # IMG_0003.png never silently gets label 3
        load_data(tmp_path / "flat")
    assert list(load_data(tmp_path / "flat", label_from_filename=True).labels) == [3, 4]
    (tmp_path / "l.txt").write_text("1\n2\n")
    assert list(load_data(tmp_path / "flat", labels=tmp_path / "l.txt").labels) == [1, 2]
    assert list(load_data(tmp_path / "flat", label=4).labels) == [4, 4]
    with pytest.raises(DataError, match="exactly one of"):
        load_data(tmp_path / "flat", label=4, label_from_filename=True)
    with pytest.raises(DataError, match="holds no images"):
        load_data(tmp_path / "empty")
    with pytest.raises(DataError, match="class subfolders, which give the labels"):
        load_data(tmp_path / "mix" / "..", label_from_filename=True) if False else load_data(
            _only_classes(tmp_path), label_from_filename=True
        )


def _only_classes(tmp_path: Path) -> Path:
    jpeg(tmp_path / "cls" / "3" / "a_7.png", 8, 8)
    return tmp_path / "cls"


def test_gtsrb_style_manifest(capsys, tmp_path, model):
    root = tmp_path / "GTSRB"
    lines = ["Width,Height,Roi.X1,Roi.Y1,Roi.X2,Roi.Y2,ClassId,Path"]
    for i, k in enumerate([4, 0, 2]):
        jpeg(root / "Test" / f"{i:05d}.png", 10 + i, 9 + i, i)
        lines.append(f"{10 + i},{9 + i},1,1,8,8,{k},Test/{i:05d}.png")
    (root / "Test.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.tsv"
    argv = ["certify", str(model), str(root / "Test.csv"), *FAST, "--resize", "8", "--center-crop", "8"]
    code, err = cli(capsys, argv, out)
    assert code == 1 and "no column 'path'" in err and "--path-column" in err
    argv += ["--path-column", "Path", "--label-column", "ClassId"]
    assert cli(capsys, argv, out)[0] == 0
    assert [int(r["label"]) for r in rows(out)] == [4, 0, 2]
    (root / "Test" / "00001.png").unlink()
    code, err = cli(capsys, argv, tmp_path / "o2.tsv")
    assert code == 1 and "line 3: 'Test/00001.png' is not a file" in err


def test_tsv_manifest_with_class_names(capsys, tmp_path, model):
    jpeg(tmp_path / "im" / "a.png", 8, 8)
    jpeg(tmp_path / "im" / "b.png", 8, 8, 1)
    (tmp_path / "classes.txt").write_text("cat\ndog\nfox\n")
    (tmp_path / "m.tsv").write_text("path\tlabel\nim/a.png\tfox\nim/b.png\tcat\n")
    out = tmp_path / "o.tsv"
    argv = ["certify", str(model), str(tmp_path / "m.tsv"), *FAST]
    code, err = cli(capsys, argv, out)
    assert code == 1 and "label 'fox' is not an integer" in err
    assert cli(capsys, argv + ["--classes", str(tmp_path / "classes.txt")], out)[0] == 0
    assert [int(r["label"]) for r in rows(out)] == [2, 0]
    (tmp_path / "m.tsv").write_text("path\tlabel\nim/a.png\twolf\n")
    code, err = cli(capsys, argv + ["--classes", str(tmp_path / "classes.txt")], tmp_path / "o2.tsv")
    assert code == 1 and "label 'wolf' is not in --classes" in err


def test_grey_rgba_palette_images_become_the_models_channels(tmp_path):
    base = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgb = Image.fromarray(base)
    for mode in ["L", "RGBA", "P", "LA", "1", "CMYK"]:
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        rgb.convert(mode).save(path)
        for channels in (1, 3):
            data = load_data(path, label=0, size=(8, 8), channels=channels)
            data.check_selection([0])
            x = data.raw(0)
            assert x.shape == (channels, 8, 8) and x.dtype == np.uint8
            ref = Image.open(path).convert("L" if channels == 1 else "RGB")
            np.testing.assert_array_equal(x, np.asarray(ref).reshape(8, 8, channels).transpose(2, 0, 1))


def test_bad_image_files_are_refused_in_one_line(capsys, tmp_path, model):
    folder = tmp_path / "f"
    jpeg(folder / "0" / "ok.png", 8, 8)
    nl = folder / "0" / "bad\nname.png"
    nl.write_bytes(b"\x89PNG not really")
    code, err = cli(capsys, ["certify", str(model), str(folder), *FAST], tmp_path / "o.tsv")
    assert code == 1 and "bad\\nname.png" in err  # the newline is escaped: one line
    nl.unlink()
    Image.new("1", (10_000, 10_000)).save(folder / "0" / "bomb.png")  # 10^8 pixels in a few KiB
    code, err = cli(capsys, ["certify", str(model), str(folder), *FAST], tmp_path / "o.tsv")
    assert code == 1 and "bomb.png: image too large" in err
    (folder / "0" / "bomb.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(folder / "0" / "deep.png")
    code, err = cli(capsys, ["certify", str(model), str(folder), *FAST], tmp_path / "o.tsv")
    assert code == 1 and "16-bit" in err


def test_truncated_jpeg_fails_when_decoded_naming_the_file(tmp_path):
    good = jpeg(tmp_path / "f" / "0" / "a.jpg", 640, 480)
    raw = good.read_bytes()
    (tmp_path / "f" / "0" / "b.jpg").write_bytes(raw[: len(raw) // 2])
    data = load_data(tmp_path / "f")
    data.check_selection([0, 1])  # the header is fine
    with pytest.raises(DataError, match="b.jpg: not a readable image"):
        list(data.iter_groups([[0], [1]]))


def test_unknown_kinds_of_data_are_named(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 1\n")
    with pytest.raises(DataError, match="a .txt is none of the layouts"):
        load_data(tmp_path / "list.txt")
    with pytest.raises(DataError, match="not found"):
        load_data(tmp_path / "nope.npz")


def test_single_image_needs_a_label(tmp_path):
    path = jpeg(tmp_path / "a.png", 8, 8)
    with pytest.raises(DataError, match="expected --label"):
        load_data(path)
    with pytest.raises(DataError, match="--labels given"):
        load_data(path, labels=tmp_path / "x.txt", label=1)


def test_prefetch_serves_the_same_images_in_order_and_stops_cleanly(tmp_path):
    for i in range(10):
        jpeg(tmp_path / "f" / str(i % 3) / f"{i}.png", 12, 9, i)
    data = load_data(tmp_path / "f", resize=8, center_crop=8)
    groups = [[0, 1, 2], [3], [4, 5, 6, 7], [8, 9]]
    got = list(data.iter_groups(groups, workers=3))
    assert [g for g, _ in got] == groups
    for g, xs in got:
        for i, x in zip(g, xs):
            np.testing.assert_array_equal(x, data.image(i))
    it = data.iter_groups(groups, workers=2)
    next(it)
    it.close()  # interrupting the run: the pool shuts down, nothing hangs


# --- the transform, against torchvision's ------------------------------------------------------------------------


def _reference_transform(im: Image.Image, size: int, crop: int) -> np.ndarray:
    """torchvision's Resize(size) + CenterCrop(crop) + PILToTensor on PIL images, written out from its source
    (transforms/functional.py: _compute_resized_output_size, resize -> PIL resize BILINEAR; center_crop)."""
    w, h = im.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.BILINEAR)
    top, left = round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)
    return np.asarray(im, np.uint8)[top : top + crop, left : left + crop].transpose(2, 0, 1)


def _imagenet_like(tmp_path: Path) -> list[Path]:
    files = [
        jpeg(tmp_path / f"g{w}x{h}.jpg", w, h, w)
        for w, h in [(500, 375), (375, 500), (333, 500), (256, 256), (1024, 257), (339, 256), (300, 451)]
    ]
    samples = sorted((SHARED / "data" / "foolbox_samples").glob("imagenet_*.jpg"))[:4]
    return files + samples


def test_resize_and_center_crop_match_torchvision_reference(tmp_path):
    t = ImageTransform(256, (224, 224), 3)
    for path in _imagenet_like(tmp_path):
        with Image.open(path) as im:
            want = _reference_transform(im.convert("RGB"), 256, 224)
            assert resized_size(im.width, im.height, 256)[0 if im.width <= im.height else 1] == 256
        data = load_data(path, label=0, size=(224, 224), channels=3, resize=256, center_crop=224)
        data.check_selection([0])
        np.testing.assert_array_equal(data.raw(0), want)
        np.testing.assert_array_equal(t(Image.open(path)), want)


def test_resize_and_center_crop_match_torch_antialiased_interpolation(tmp_path):
    """torch's own antialiased bilinear resize (torchvision's tensor path) gives the same pixels up to rounding."""
    torch = pytest.importorskip("torch")
    for path in _imagenet_like(tmp_path)[:5]:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
            w, h = im.size
        nw, nh = resized_size(w, h, 256)
        x = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32))[None]
        y = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        y = y[0].round().clamp(0, 255).numpy()
        top, left = round((nh - 224) / 2.0), round((nw - 224) / 2.0)
        want = y[:, top : top + 224, left : left + 224]
        got = load_data(path, label=0, resize=256, center_crop=224, channels=3).raw(0).astype(np.float32)
        diff = np.abs(got - want)
        assert diff.max() <= 2 and diff.mean() < 0.2, (path.name, diff.max(), diff.mean())


def _torchvision_transforms(monkeypatch):
    """torchvision.transforms, or None. When torchvision is installed but its package fails to import (its C++
    ops do not load beside torch 2.13: "operator torchvision::nms does not exist"), its pure-Python transforms
    are imported from the same files under a stub package that skips that __init__."""
    import importlib
    import importlib.util
    import sys
    import types

    try:
        from torchvision import transforms

        return transforms
    except ImportError:
        return None
    except Exception as e:  # noqa: BLE001 - installed, but broken beside this torch
        print(f"torchvision does not import ({type(e).__name__}: {e}); importing its transforms alone")
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    stub = types.ModuleType("torchvision")
    stub.__path__ = list(spec.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "torchvision", stub)
    for name in [m for m in sys.modules if m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("torchvision.transforms")
    for name in [m for m in sys.modules if m.startswith("torchvision.")]:  # leave no stubbed modules behind
        monkeypatch.setitem(sys.modules, name, sys.modules[name])
    return module


def test_resize_and_center_crop_match_torchvision_itself(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    tv = _torchvision_transforms(monkeypatch)
    if tv is None:
        pytest.skip(
            "torchvision is not installed (PyPI's 0.29 does not import beside torch 2.13; with it "
            "installed, this test imports its transforms past the broken C++ ops)"
        )
    transform = tv.Compose([tv.Resize(256), tv.CenterCrop(224), tv.PILToTensor()])
    for path in _imagenet_like(tmp_path):
        want = transform(Image.open(path).convert("RGB")).numpy()
        np.testing.assert_array_equal(load_data(path, label=0, resize=256, center_crop=224, channels=3).raw(0), want)


def test_crop_larger_than_the_image_and_bad_sizes_are_refused(capsys, tmp_path, model):
    jpeg(tmp_path / "f" / "0" / "a.png", 12, 9)
    for extra, msg in [
        (["--center-crop", "10"], "larger than the image"),
        (["--center-crop", "8x"], "center_crop"),
        (["--resize", "0"], "resize=0"),
        (["--center-crop", "0"], "center_crop"),
    ]:
        code, err = cli(capsys, ["certify", str(model), str(tmp_path / "f"), *FAST, *extra], tmp_path / "o.tsv")
        assert code == 1 and msg in err, (extra, err)


def test_help_lists_what_data_may_be(capsys):
    with pytest.raises(SystemExit):
        main(["certify", "--help"])
    text = capsys.readouterr().out
    for word in [
        ".npz",
        ".npy",
        "--labels",
        "ImageFolder",
        "--classes",
        "manifest",
        "--path-column",
        "--label N",
        "--resize 256 --center-crop 224",
        "--label-from-filename",
    ]:
        assert word in text, word


# --- any corruption of a data file: a DataError, never another exception ------------------------------------------

_FILES: dict[str, bytes] = {}


def _valid_files() -> dict[str, bytes]:
    """One valid file per format (built once): .npy, stored and compressed .npz, PNG, JPEG."""
    if not _FILES:
        x = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
        for name, save_fn in (
            ("npy", lambda b: np.save(b, x)),
            ("npz", lambda b: np.savez(b, images=x, labels=np.arange(3))),
            ("cnpz", lambda b: np.savez_compressed(b, images=x, labels=np.arange(3))),
        ):
            buf = io.BytesIO()
            save_fn(buf)
            _FILES[name] = buf.getvalue()
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            Image.fromarray(x[0].transpose(1, 2, 0)).save(buf, format=fmt)
            _FILES[fmt.lower()] = buf.getvalue()
    return _FILES


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["npy", "npz", "cnpz", "png", "jpeg"]),
    cut=st.floats(0, 1),
    pos=st.floats(0, 1),
    junk=st.binary(min_size=0, max_size=8),
)
def test_any_corrupted_data_file_is_read_or_refused_with_a_data_error(tmp_path_factory, kind, cut, pos, junk):
    raw = bytearray(_valid_files()[kind])
    at = int(pos * len(raw))
    raw[at : at + len(junk)] = junk  # overwrite a few bytes somewhere
    raw = raw[: max(1, int(len(raw) * cut))] if cut < 0.98 else raw
    d = tmp_path_factory.mktemp("c")
    suffix = {"npy": ".npy", "npz": ".npz", "cnpz": ".npz", "png": ".png", "jpeg": ".jpg"}[kind]
    path = d / f"f{suffix}"
    path.write_bytes(bytes(raw))
    (d / "l.txt").write_text("0\n1\n2\n")
    try:
        data = load_data(
            path, **({"labels": d / "l.txt"} if kind == "npy" else {"label": 0} if kind in ("png", "jpeg") else {})
        )
        data.check_selection(range(len(data)))
        for _, xs in data.iter_groups([[i] for i in range(len(data))]):
            assert all(np.isfinite(x).all() and x.dtype == np.float32 for x in xs)
    except DataError as e:
        assert "\n" not in str(e)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read the resident memory")
def test_reading_every_row_keeps_memory_flat(tmp_path):
    """96 MiB of images read row by row (.npy in place, compressed .npz via its temporary file): resident memory
    grows by far less than the data (np.load or a memory map touched throughout would add ~96 MiB)."""
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(2048, 3, 128, 128))
    x[:] = np.arange(128, dtype=np.uint8)[None, None, None, :]
    x.flush()
    del x
    np.savez_compressed(
        tmp_path / "c.npz", images=np.load(tmp_path / "x.npy", mmap_mode="r"), labels=np.zeros(2048, np.int64)
    )
    for path in (tmp_path / "x.npy", tmp_path / "c.npz"):
        before = _rss_mib()
        data = load_data(path, labels=_labels(tmp_path, 2048) if path.suffix == ".npy" else None)
        for _, xs in data.iter_groups([list(range(i, i + 64)) for i in range(0, 2048, 64)]):
            assert xs[-1][0, 0, 5] == np.float32(5 / 255)
        grown = _rss_mib() - before
        assert grown < 40, f"{path.name}: resident memory grew by {grown:.0f} MiB reading 96 MiB of rows"
