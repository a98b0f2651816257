"""Image-file layouts: a folder (torchvision's ImageFolder, or images at its top with explicit labels), a
CSV/TSV manifest of image paths, a single image; each an :class:`~rs_onnx.images.ImageFiles`."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from .arrays import read_labels
from .dataset import MAX_EXAMPLES, Dataset, int_label, open_file, show
from .errors import DataError
from .images import IMAGE_SUFFIXES, ImageFiles, ImageTransform


def _images_under(folder: str) -> list[str]:
    """Image files below ``folder``, in torchvision's order: sorted os.walk (following links), sorted names."""

    def walk():
        seen: set[tuple[int, int]] = set()
        for root, dirs, names in os.walk(folder, followlinks=True):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen:  # a symbolic link back to a folder already walked: no loop
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # hidden folders (.ipynb_checkpoints) skipped
            yield root, names

    out: list[str] = []
    for root, names in sorted(walk()):
        out.extend(
            os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")
        )
    return out


def read_classes(path: str | Path) -> list[str]:
    """Class names, one per line (line number = class index); what follows the first space or tab of a line
    is ignored, so ImageNet's ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``) works as is."""
    path = Path(path)
    what = f"classes file {show(path)}"
    f = open_file(path, "a text file with one class name per line")
    with f:
        if os.fstat(f.fileno()).st_size > 64 << 20:
            raise DataError(f"{what}: larger than 64 MiB; expected one class name per line")
        text = f.read().decode("utf-8", errors="replace")
    names = []
    for k, line in enumerate(text.splitlines()):
        if not line.strip():
            raise DataError(f"{what}: line {k + 1} is empty; expected one class name per line (line number = index)")
        names.append(line.split()[0])
    if not names:
        raise DataError(f"{what}: is empty; expected one class name per line")
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            raise DataError(f"{what}: {show(name)!r} on lines {seen[name] + 1} and {k + 1}; expected each class once")
        seen[name] = k
    return names


_TRAILING_LABEL = re.compile(r"_(\d+)$")


def load_folder(
    path: str | Path,
    transform: ImageTransform,
    size: tuple[int, int] | None = None,
    *,
    labels: str | Path | None = None,
    label: int | None = None,
    classes: str | Path | None = None,
    label_from_filename: bool = False,
) -> Dataset:
    """A folder of images: class subfolders (ImageFolder), or images at its top with explicit labels."""
    root = str(path)
    what = f"folder {show(root)}"
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{what}: cannot be listed ({e.strerror}); expected a folder of images") from e
    subdirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    top = [
        os.path.join(root, e.name)
        for e in entries
        if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".")
    ]
    per_class = {d: _images_under(os.path.join(root, d)) for d in subdirs}
    n_sub = sum(len(v) for v in per_class.values())
    if top and n_sub:
        raise DataError(
            f"{what}: holds images both at its top ({show(os.path.basename(top[0]))}) and in class "
            "subfolders; expected one layout (class subfolders, or images at the top with --labels)"
        )
    if not top and not n_sub:
        raise DataError(
            f"{what}: holds no images; expected class subfolders of images ({', '.join(IMAGE_SUFFIXES)}) "
            "or images at its top"
        )
    if n_sub:
        if labels is not None or label is not None or label_from_filename:
            raise DataError(
                f"{what}: has class subfolders, which give the labels; expected no --labels, --label or "
                "--label-from-filename"
            )
        if classes is not None:
            names = read_classes(classes)
            index = {n: k for k, n in enumerate(names)}
            for d in subdirs:
                if d not in index:
                    raise DataError(
                        f"{what}: class folder {show(d)!r} is not in --classes {show(classes)} "
                        f"({len(names)} names, e.g. {show(names[0])!r}); expected every folder listed"
                    )
            how = f"class folders, indices from --classes {classes}"
        elif all(d.isdigit() for d in subdirs):
            index = {d: int(d) for d in subdirs}
            how = "class folders named by their integer class index"
        else:
            index = {d: k for k, d in enumerate(subdirs)}
            how = "class folders, sorted names give the indices (torchvision ImageFolder)"
        files = [f for d in subdirs for f in per_class[d]]
        lab = np.array([index[d] for d in subdirs for _ in per_class[d]], np.int64)
        info = {"format": "image-folder", "labels_from": how, "classes": len(index)}
    else:
        files = top
        if classes is not None:
            raise DataError(
                f"{what}: --classes names class subfolders, and this folder has none; expected class "
                "subfolders, or --labels FILE"
            )
        given = [k for k, v in (("--labels", labels), ("--label", label)) if v is not None]
        if label_from_filename:
            given.append("--label-from-filename")
        if len(given) != 1:
            raise DataError(
                f"{what}: images at its top {'with ' + ' and '.join(given) if given else 'with no labels'}; "
                "expected exactly one of --labels FILE (one per image, in sorted name order), --label N "
                "(all images), --label-from-filename (a trailing _<digits>), or class subfolders"
            )
        if labels is not None:
            lab = read_labels(labels, len(files))
            how = f"labels file {labels} (sorted file names)"
        elif label is not None:
            lab = np.full(len(files), int(label), np.int64)
            how = f"--label {label} for every image"
        else:
            found = []
            for f in files:
                m = _TRAILING_LABEL.search(Path(f).stem)
                if not m:
                    raise DataError(
                        f"{show(f)}: no trailing _<digits> label in the file name; expected every file "
                        "named like NAME_<label>.png with --label-from-filename"
                    )
                found.append(int_label(m.group(1), show(f)))
            lab = np.array(found, np.int64)
            how = "file names (trailing _<digits>, --label-from-filename)"
        info = {"format": "image-folder (flat)", "labels_from": how}
    if len(files) > MAX_EXAMPLES:
        raise DataError(f"{what}: {len(files):,} images; expected at most {MAX_EXAMPLES:,}")
    return ImageFiles(files, lab, root, transform, size, info)


def load_manifest(
    path: str | Path,
    transform: ImageTransform,
    size: tuple[int, int] | None = None,
    *,
    path_column: str = "path",
    label_column: str = "label",
    classes: str | Path | None = None,
) -> Dataset:
    """A CSV (``.csv``) or TSV (``.tsv``) manifest with a header row; ``path_column`` holds image paths
    (relative to the manifest's folder), ``label_column`` integer labels (class names with ``classes``)."""
    path = Path(path)
    what = f"manifest {show(path)}"
    f = open_file(path, "a CSV/TSV manifest with a header row")
    f.close()
    names = read_classes(classes) if classes is not None else None
    index = {n: k for k, n in enumerate(names)} if names else None
    base = path.parent
    files: list[str] = []
    labels: list[int] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            header = next(reader, None)
            if not header:
                raise DataError(
                    f"{what}: is empty; expected a header row naming the {path_column!r} and {label_column!r} columns"
                )
            header = [h.strip() for h in header]
            for col, flag in ((path_column, "--path-column"), (label_column, "--label-column")):
                if col not in header:
                    raise DataError(
                        f"{what}: no column {show(col)!r} (columns: {', '.join(show(h) for h in header)}); "
                        f"expected {flag} NAME to choose one"
                    )
            pi, li = header.index(path_column), header.index(label_column)
            for row_no, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{what} line {row_no}: {len(row)} fields; expected {len(header)} as in the header")
                rel, lab = row[pi].strip(), row[li].strip()
                file = rel if os.path.isabs(rel) else os.path.join(base, rel)
                if not rel or not os.path.isfile(file):
                    raise DataError(
                        f"{what} line {row_no}: {show(rel)!r} is not a file (looked for {show(file)}); "
                        "expected paths relative to the manifest"
                    )
                if index is not None:
                    if lab not in index:
                        raise DataError(
                            f"{what} line {row_no}: label {show(lab)!r} is not in --classes {show(classes)}"
                            f" ({len(index)} names); expected one of its names"
                        )
                    labels.append(index[lab])
                else:
                    labels.append(int_label(lab, f"{what} line {row_no}"))
                files.append(file)
                if len(files) > MAX_EXAMPLES:
                    raise DataError(f"{what}: more than {MAX_EXAMPLES:,} rows; expected fewer")
    except UnicodeDecodeError as e:
        raise DataError(f"{what}: not UTF-8 text ({e.reason}); expected a CSV/TSV manifest") from e
    except csv.Error as e:
        raise DataError(f"{what}: not a readable CSV/TSV ({show(e)})") from e
    if not files:
        raise DataError(f"{what}: lists no images; expected one row per image")
    info = {
        "format": "manifest",
        "labels_from": f"column {label_column}" + (f" via --classes {classes}" if names else ""),
        "path_column": path_column,
    }
    return ImageFiles(files, np.array(labels, np.int64), str(path), transform, size, info)


def load_image(
    path: str | Path, label: int | None, transform: ImageTransform | None = None, size: tuple[int, int] | None = None
) -> Dataset:
    """One image file with its ``label``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {show(path)}: not found")
    if label is None:
        raise DataError(f"image {show(path)}: no label; expected --label N (its class index)")
    label = int_label(str(label), "--label")
    return ImageFiles(
        [str(path)],
        np.array([label], np.int64),
        str(path),
        transform or ImageTransform(),
        size,
        {"format": "image", "labels_from": "--label"},
    )
