"""Data files in: ``.npz`` (``x`` and optional ``y``), ``.npy`` (inputs only) or an image folder.

Everything is checked before any work starts: the file exists and is not empty, the arrays
are numeric and finite, and their shape fits the model's input.

Example:
    >>> ds = load_data("models/digits/test.npz")
    >>> ds.x.shape, ds.y.shape
    ((360, 8, 8, 1), (360,))
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


@dataclass
class Dataset:
    """Inputs ``x`` and, when known, labels or targets ``y``."""

    x: np.ndarray
    y: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.x)


def load_data(path: str | Path, image_size: tuple[int, int] | None = None) -> Dataset:
    """Load ``path`` as a Dataset and check it is non-empty, numeric and finite."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data {path} does not exist", "check the path")
    if path.is_dir():
        ds = _load_image_folder(path, image_size)
    elif path.suffix == ".npz":
        ds = _load_npz(path)
    elif path.suffix == ".npy":
        ds = Dataset(_load_npy(path), None, str(path))
    else:
        raise DataError(f"{path}: unknown data format '{path.suffix}'",
                        "use .npz (arrays x, y), .npy (inputs) or a folder with one sub-folder per class")
    _check_numeric_finite(ds)
    return ds


def check_fits(x: np.ndarray, input_shape: Sequence[int | None], source: str) -> None:
    """Raise DataError unless samples ``x`` fit a model input of ``input_shape`` (batch first)."""
    want = tuple(input_shape[1:])
    got = tuple(x.shape[1:])
    if len(want) == len(got) and all(w is None or w == g for w, g in zip(want, got)):
        return
    hint = "reshape the data to the model's input shape"
    if len(got) + 1 == len(want) and want[-1] == 1:
        hint = "add a channel axis, e.g. x = x[..., None]"
    raise DataError(f"{source}: samples have shape {got}, the model expects {_fmt_shape(want)}", hint)


def draw_samples(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` samples of ``x`` drawn without replacement with a fixed seed."""
    if count <= 0:
        raise DataError(f"sample count must be positive, got {count}", "pass --calib-samples 100 or more")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(count, len(x)), replace=False)
    return x[idx]


def _fmt_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if "x" not in keys:
                raise DataError(f"{path} has no array named 'x' (found: {', '.join(sorted(keys)) or 'none'})",
                                "save inputs as x and labels as y: np.savez(path, x=x, y=y)")
            x = f["x"]
            y = f["y"] if "y" in keys else None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})", "write it with numpy.savez") from exc
    if y is not None and len(y) != len(x):
        raise DataError(f"{path}: {len(x)} inputs but {len(y)} labels", "x and y must have the same length")
    return Dataset(x, y, str(path))


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npy file ({exc})", "write it with numpy.save") from exc


def _check_numeric_finite(ds: Dataset) -> None:
    if ds.x.ndim == 0 or len(ds.x) == 0:
        raise DataError(f"{ds.source} holds no samples", "pass a file with at least one sample")
    if not (np.issubdtype(ds.x.dtype, np.number) or ds.x.dtype == np.bool_):
        raise DataError(f"{ds.source}: inputs have dtype {ds.x.dtype}, not numbers", "store inputs as float32 or uint8")
    if np.issubdtype(ds.x.dtype, np.floating) and not np.all(np.isfinite(ds.x)):
        bad = int(np.count_nonzero(~np.isfinite(ds.x)))
        raise DataError(f"{ds.source}: inputs contain {bad} NaN or Inf values", "clean or drop those samples")


def _load_image_folder(path: Path, image_size: tuple[int, int] | None) -> Dataset:
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path} has no class sub-folders", "put images in one sub-folder per class: DATA/cat/1.png")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for img in sorted((path / name).iterdir()):
            if img.suffix.lower() in IMAGE_SUFFIXES:
                xs.append(_read_image(img, image_size))
                ys.append(label)
    if not xs:
        raise DataError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})", "add images to the class folders")
    return Dataset(np.stack(xs).astype(np.float32), np.asarray(ys, np.int64), str(path))


def _read_image(path: Path, image_size: tuple[int, int] | None) -> np.ndarray:
    from ._tf import import_tf

    tf = import_tf()
    try:
        img = tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False)
    except Exception as exc:  # TF raises InvalidArgumentError for undecodable files
        raise DataError(f"{path} is not a readable image", "remove it or replace it") from exc
    if image_size:
        img = tf.image.resize(img, image_size)
    return img.numpy()
