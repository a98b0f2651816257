"""Data sets to certify, streamed: one loader per layout behind one interface (:class:`Dataset`).

DATA may be
  - an ``.npz`` with ``images`` and ``labels`` (stored members are read in place, compressed ones are
    decompressed once to an anonymous temporary file, never wholly into memory);
  - an ``.npy`` of images with ``labels=`` an ``.npy`` or a text file of one integer per line (read in place);
  - a folder of images: torchvision's ImageFolder convention (class subfolders; names that are all
    integers give their value, else sorted names give the indices; ``classes=`` a file of one folder
    name per line, line number = class index), or images at its top with ``labels=``, ``label=`` or
    ``label_from_filename`` (a trailing ``_<digits>`` in the file name);
  - a CSV/TSV manifest (``path`` and ``label`` columns by default, paths relative to the manifest);
  - a single image with ``label=``.

Every data set serves example i as ``raw(i)`` (channels first, [C,H,W] or the array's own shape) and
``image(i)``: float32 in [0,1] pixel units (uint8 divided by 255, floats taken as they are). Image files
go through an :class:`ImageTransform` (mode conversion, torchvision-style ``Resize`` and ``CenterCrop``).
Nothing is read before it is asked for, except the headers of the selected image files and the selected
rows of float arrays, checked by :meth:`Dataset.check_selection` before any result is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .arrays import NpyFile, load_npy, load_npz, read_labels
from .dataset import INT64_MAX, MAX_EXAMPLES, Dataset, as_labels, expand_grey, show
from .errors import DataError
from .folders import load_folder, load_image, load_manifest, read_classes
from .images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    RESAMPLING,
    ImageFiles,
    ImageTransform,
    decode,
    parse_crop,
    parse_resize,
    resized_size,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "INT64_MAX",
    "MAX_EXAMPLES",
    "MAX_PIXELS",
    "RESAMPLING",
    "Dataset",
    "ImageFiles",
    "ImageTransform",
    "NpyFile",
    "as_labels",
    "decode",
    "expand_grey",
    "load_data",
    "load_folder",
    "load_from_config",
    "load_image",
    "load_manifest",
    "load_npy",
    "load_npz",
    "manifest_files",
    "parse_crop",
    "parse_resize",
    "read_classes",
    "read_labels",
    "resized_size",
]

log = logging.getLogger(__name__)


def load_data(
    path: str | Path,
    label: int | None = None,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    *,
    labels: str | Path | None = None,
    classes: str | Path | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    label_from_filename: bool = False,
    resize: int | str | None = None,
    center_crop: str | int | None = None,
    resample: str = "bilinear",
) -> Dataset:
    """The data set at ``path``, by what it is: folder, image file, .csv/.tsv manifest, .npy or .npz.

    ``size`` (height, width) and ``channels`` describe the model's image input (None when unknown or flat);
    ``resize``/``center_crop`` transform image files. Options that do not apply to the layout are refused.
    """
    from . import tabular

    p = Path(path)
    suffix = p.suffix.lower()
    kind = (
        "folder"
        if p.is_dir()
        else "image"
        if suffix in IMAGE_SUFFIXES
        else "manifest"
        if tabular.csv_suffix(p)
        else "npy"
        if suffix == ".npy"
        else "npz"
    )
    if kind == "manifest" and path_column is None and p.is_file() and tabular.is_numeric(p):
        kind = "features table"  # numbers only: features and a label column, not image paths
    if resample not in RESAMPLING:
        raise DataError(f"--resample {show(resample)!r}: expected one of {', '.join(RESAMPLING)}")
    transform = ImageTransform(parse_resize(resize), parse_crop(center_crop), channels, resample)
    given = {
        "--labels": labels is not None,
        "--classes": classes is not None,
        "--label": label is not None,
        "--path-column": path_column is not None,
        "--label-column": label_column is not None,
        "--label-from-filename": bool(label_from_filename),
        "--resize": resize is not None,
        "--center-crop": center_crop is not None,
        "--resample": resample != "bilinear",
    }
    allowed = {
        "folder": {
            "--labels",
            "--classes",
            "--label",
            "--label-from-filename",
            "--resize",
            "--center-crop",
            "--resample",
        },
        "image": {"--label", "--resize", "--center-crop", "--resample"},
        "manifest": {"--classes", "--path-column", "--label-column", "--resize", "--center-crop", "--resample"},
        "npy": {"--labels"},
        "npz": set(),
        "features table": {"--label-column"},
    }[kind]
    wrong = [k for k, v in given.items() if v and k not in allowed]
    if wrong:
        raise DataError(
            f"{', '.join(wrong)} given, but DATA {show(p)} is {'an' if kind[0] in 'aeinou' else 'a'} "
            f"{kind}; expected {', '.join(sorted(allowed)) or 'no data options'} for this layout "
            "(see rs-onnx certify --help)"
        )
    if resample != "bilinear" and transform.resize is None:
        log.warning("--resample %s has no effect without --resize (images are not resized)", resample)
    if kind == "folder":
        return load_folder(
            p, transform, size, labels=labels, label=label, classes=classes, label_from_filename=label_from_filename
        )
    if kind == "image":
        return load_image(p, label, transform, size)
    if kind == "features table":
        features, values, info = tabular.read_numeric(p, None if label_column is None else str(label_column))
        log.info(
            "data: %s holds only numbers: read as a features table (%d features, labels from %s), "
            "not as a manifest of image paths",
            show(p),
            info["features"],
            info["labels_from"],
        )
        return Dataset(features, as_labels(values, len(values), f"{show(p)} labels"), str(p), info)
    if kind == "manifest":
        if p.is_file() and p.name.lower().endswith(".gz"):
            raise DataError(
                f"manifest {show(p)}: a compressed manifest of image paths; expected a plain .csv/.tsv "
                "(compressed CSVs are read only as features tables: numbers only)"
            )
        if p.is_file():
            log.info("data: %s holds words: read as a manifest of image paths", show(p))
        return load_manifest(
            p, transform, size, path_column=path_column or "path", label_column=label_column or "label", classes=classes
        )
    if kind == "npy":
        return expand_grey(load_npy(p, labels), channels, size)
    if not p.exists():
        raise DataError(f"data {show(p)}: not found; expected an .npz, .npy, .csv/.tsv manifest, image file or folder")
    if suffix != ".npz":
        raise DataError(
            f"data {show(p)}: a {show(suffix) or 'file without a suffix'} is none of the layouts; expected "
            f"an .npz, .npy, .csv/.tsv manifest, image file ({', '.join(IMAGE_SUFFIXES)}) or folder"
        )
    return expand_grey(load_npz(p), channels, size)


def manifest_files(cfg) -> list[str] | None:
    """The image files a CSV/TSV manifest ``cfg.data`` names, in its order (None when the data is not a
    manifest): what a run's data identity hashes besides the manifest (``rs-onnx verify``, without the model)."""
    p = Path(str(cfg.data))
    if p.is_dir() or p.suffix.lower() not in (".csv", ".tsv"):
        return None
    data = load_manifest(
        p,
        ImageTransform(None, None, None),
        path_column=cfg.path_column or "path",
        label_column=cfg.label_column or "label",
        classes=cfg.classes,
    )
    assert isinstance(data, ImageFiles)
    return list(data.files)


def load_from_config(cfg, size: tuple[int, int] | None, channels: int | None) -> Dataset:
    """:func:`load_data` with the data options of a RunConfig."""
    data = load_data(
        cfg.data,
        cfg.label,
        size,
        channels,
        labels=cfg.labels,
        classes=cfg.classes,
        path_column=cfg.path_column,
        label_column=cfg.label_column,
        label_from_filename=cfg.label_from_filename,
        resize=cfg.resize,
        center_crop=cfg.center_crop,
        resample=cfg.resample,
    )
    info = data.describe()
    transform = info.get("transform")
    log.info(
        "data: %s, %d examples, labels from %s%s",
        info.get("format"),
        len(data),
        show(info.get("labels_from")),
        f", resize {transform['resize']}, center crop {transform['center_crop']}" if transform else "",
    )
    return data
