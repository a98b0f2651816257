"""Data sources: .npz layouts, image folders, single images (resized with bilinear resampling)."""

import shutil

import numpy as np
import pytest
from PIL import Image

from rs_onnx.data import load_data, load_npz
from rs_onnx.errors import DataError

from tests.conftest import SHARED


def _png(path, shape, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def test_npz_layouts_become_channels_first(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(2, np.int64))
    np.savez(tmp_path / "b.npz", images=np.zeros((2, 28, 28), np.uint8), labels=np.zeros(2, np.int64))
    assert load_npz(tmp_path / "a.npz").image_shape == (3, 32, 32)
    b = load_npz(tmp_path / "b.npz")
    assert b.image_shape == (1, 28, 28) and b.image(0).dtype == np.float32


def test_folder_with_class_subfolders_and_trailing_labels(tmp_path):
    _png(tmp_path / "f" / "3" / "a.png", (8, 8, 3))
    _png(tmp_path / "f" / "7" / "b.png", (8, 8, 3))
    data = load_data(tmp_path / "f")
    assert list(data.labels) == [3, 7] and data.image_shape == (3, 8, 8)
    _png(tmp_path / "g" / "cifar10_00_3.png", (10, 10, 3), 255)
    _png(tmp_path / "g" / "cifar10_01_8.png", (12, 12, 3), 0)
    with pytest.raises(DataError, match="different sizes"):  # never stretched silently
        load_data(tmp_path / "g", size=(8, 8), channels=3, label_from_filename=True).check_selection([0, 1])
    with pytest.raises(DataError, match="no labels"):  # file-name labels only when asked for
        load_data(tmp_path / "g", size=(8, 8), channels=3, resize=8, center_crop=8)
    data = load_data(tmp_path / "g", size=(8, 8), channels=3, label_from_filename=True, resize=8, center_crop=8)
    data.check_selection(range(len(data)))
    assert list(data.labels) == [3, 8] and data.image_shape == (3, 8, 8)
    assert data.image(0).max() == 1.0 and data.image(1).max() == 0.0


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_data(tmp_path / "empty")
    _png(tmp_path / "m" / "a_1.png", (8, 8))
    _png(tmp_path / "m" / "b_2.png", (9, 9))
    with pytest.raises(DataError, match="different sizes"):
        load_data(tmp_path / "m", label_from_filename=True).check_selection([0, 1])
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        load_data(tmp_path / "x.png", label=1).check_selection([0])


def test_single_grey_image_for_an_rgb_model_is_converted(tmp_path):
    _png(tmp_path / "g.png", (28, 28))
    data = load_data(tmp_path / "g.png", label=4, size=(32, 32), channels=3, resize=32)
    assert data.image_shape == (3, 32, 32) and list(data.labels) == [4]


@pytest.mark.skipif(not (SHARED / "data" / "foolbox_samples").is_dir(), reason="../shared/data is absent")
def test_real_cifar10_pngs_certify_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from rs_onnx.cli import cli

    folder = tmp_path / "cifar"
    folder.mkdir()
    for f in sorted((SHARED / "data" / "foolbox_samples").glob("cifar10_*.png"))[:4]:
        shutil.copy(f, folder / f.name)
    res = CliRunner().invoke(
        cli,
        [
            "-q",
            "certify",
            str(SHARED / "models/cifar10/resnet_4b.onnx"),
            str(folder),
            "--preset",
            "cifar10",
            "--label-from-filename",
            "--sigma",
            "0.12",
            "--n0",
            "20",
            "--n",
            "200",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "r.tsv"),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "r.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[1] for r in rows] == ["3", "8", "8", "0"]  # labels from the file names, as asked
