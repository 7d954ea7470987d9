"""A plant's own data files: NPZ arrays, a CSV table, a folder of images per class.

Each reader returns a :class:`~fedhq_sim.datasets.registry.Dataset` or raises one
:class:`~fedhq_sim.errors.InputError` that names the file (the image, for a folder) and what
is wrong with it. Nothing is written and nothing is fetched.
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path

import numpy as np

from fedhq_sim.datasets.registry import DataKind, Dataset, checked_samples, kind_of
from fedhq_sim.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


def read_npz(path: Path, *, x_key: str = "x", y_key: str = "y", kind: DataKind | None = None) -> Dataset:
    """Arrays ``x`` (N, ...) and integer labels ``y`` (N,) from a ``.npz`` file (no pickles)."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(path, "", "a single .npy array, not an .npz archive of x and y (np.savez)")
        with archive:
            missing = [k for k in (x_key, y_key) if k not in archive.files]
            if missing:
                raise InputError(
                    path, missing[0], f"no such array (the file has: {', '.join(archive.files) or 'none'})"
                )
            x, y = archive[x_key], archive[y_key]
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(path, "", f"not a readable .npz file ({type(error).__name__}: {error})") from None
    samples = checked_samples(x, y, str(path), x_key=x_key, y_key=y_key)
    shape = tuple(samples.x.shape[1:])
    classes = tuple(str(i) for i in range(int(samples.y.max()) + 1))
    return Dataset(samples, kind or kind_of(shape), classes)


def _number(text: str, path: Path, row: int, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(path, f"row {row}, column '{column}'", f"expected a number, got {text!r}") from None


def read_csv(path: Path, *, label: str, features: list[str] | None = None, standardize: bool = True) -> Dataset:
    """A table with a header: ``features`` columns (default: all but ``label``) and a label
    column of class names or integers. Features are standardized per column by default:
    readings in different units would otherwise train poorly."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(path, "", f"not a readable CSV file ({type(error).__name__}: {error})") from None
    if len(rows) < 2:
        raise InputError(path, "", "expected a header row and at least one row of samples")
    header = [h.strip() for h in rows[0]]
    if label not in header:
        raise InputError(path, f"column '{label}'", f"no such label column (columns: {', '.join(header)})")
    names = features if features is not None else [h for h in header if h != label]
    if label in names:
        raise InputError(path, f"column '{label}'", "is the label column; it cannot be a feature too")
    unknown = [n for n in names if n not in header]
    if unknown or not names:
        raise InputError(
            path, f"column '{(unknown or [''])[0]}'", f"no such feature column (columns: {', '.join(header)})"
        )
    columns = [header.index(n) for n in names]
    label_column = header.index(label)
    values, labels = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            raise InputError(path, f"row {number}", f"expected {len(header)} cells, got {len(row)}")
        values.append([_number(row[c], path, number, header[c]) for c in columns])
        labels.append(row[label_column].strip())
        if not labels[-1]:
            raise InputError(path, f"row {number}, column '{label}'", "the label is empty")
    classes = _class_names(labels)
    index = {name: i for i, name in enumerate(classes)}
    x = np.asarray(values, dtype=np.float64)
    if not np.isfinite(x).all():  # before standardizing, which would spread one NaN over its column
        row, column = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise InputError(path, f"row {row + 2}, column '{names[column]}'", "the value is NaN or infinite")
    if standardize:
        spread = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    y = np.asarray([index[v] for v in labels], dtype=np.int64)
    samples = checked_samples(x.astype(np.float32), y, str(path), x_key="features", y_key=f"column '{label}'")
    return Dataset(samples, "tabular", classes)


def _class_names(labels: list[str]) -> tuple[str, ...]:
    """Class names in order: numerically for integer labels (0..K-1 must then all occur, which
    the array check enforces), alphabetically for names."""
    unique = set(labels)
    if all(re.fullmatch(r"[0-9]+", v) for v in unique) and all(str(int(v)) == v for v in unique):
        return tuple(str(i) for i in range(max(int(v) for v in unique) + 1))
    return tuple(sorted(unique))


def read_image_folder(path: Path, *, size: tuple[int, int] | None = None, channels: int = 3) -> Dataset:
    """One sub-folder per class of PNG/JPEG images, scaled to ``size`` (height, width; default
    the first image's) and ``channels`` (1 grey or 3 RGB), values in [0, 1]."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib; only needed here

    if not path.is_dir():
        raise InputError(path, "", "no such folder (expected one sub-folder of images per class)")
    class_dirs = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if len(class_dirs) < 2:
        raise InputError(path, "", f"expected one sub-folder per class, at least two; found {len(class_dirs)}")
    images, labels = [], []
    mode = "L" if channels == 1 else "RGB"
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            (f for f in class_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES), key=lambda f: f.name
        )
        if not files:
            raise InputError(class_dir, "", "class folder holds no PNG or JPEG images")
        for file in files:
            try:
                with Image.open(file) as image:
                    image.load()
                    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                        raise InputError(file, "", f"a {image.mode} (16-bit or float) image; save 8-bit PNG/JPEG")
                    picture = image.convert(mode)
            except InputError:
                raise
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
                raise InputError(file, "", f"not a readable PNG/JPEG image ({type(error).__name__}: {error})") from None
            if size is None:
                size = (picture.height, picture.width)
            if (picture.height, picture.width) != tuple(size):
                picture = picture.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(picture, dtype=np.float32) / 255.0
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(label)
    samples = checked_samples(np.stack(images), np.asarray(labels), str(path))
    return Dataset(samples, "image", tuple(d.name for d in class_dirs))
