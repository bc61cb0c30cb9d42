"""Data files in: ``.npz`` (``x`` and optional ``y``), ``.npy`` (inputs only) or an image folder.

A model with several inputs takes an ``.npz`` holding one array per input, named after the
input (``keras.Input(..., name="image")``), and optionally ``y``:
``np.savez("train.npz", image=images, meta=vectors, y=labels)``. Its ``Dataset.x`` is then a
dict of arrays; ``arrange_inputs`` puts them in the order a model (Keras or TFLite) wants,
matching by name, or by shape when the model's names are not in the file.

Everything is checked before any work starts: the file exists and is not empty, the arrays
are numeric and finite, hold the same number of samples, and their count and shapes fit the
model's inputs.

Example:
    >>> ds = load_data("models/digits/test.npz")
    >>> ds.x.shape, ds.y.shape
    ((360, 8, 8, 1), (360,))
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfedge.errors import DataError
from tfedge.fsutil import check_regular_file
from tfedge.io.npyfile import (  # noqa: F401  (check_data_file, max_data_bytes: API here too)
    MAX_DATA_BYTES,
    check_data_file,
    max_data_bytes,
    read_npy,
    read_npz,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}

Inputs = np.ndarray | dict[str, np.ndarray]
"""One array (a single-input model) or one array per input, keyed by the input's name."""


@dataclass
class Dataset:
    """Inputs ``x`` and, when known, labels or targets ``y``.

    ``x`` is an array, or a dict of arrays for several inputs.
    """

    x: Inputs
    y: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return num_samples(self.x)


@dataclass(frozen=True)
class InputSpec:
    """One input of a model: its name, shape (batch first) and dtype name."""

    name: str
    shape: tuple
    dtype: str = "float32"

    def describe(self) -> str:
        return f"{self.name} {_fmt_shape(self.shape[1:])}"


def load_data(path: str | Path, image_size: tuple[int, int] | None = None) -> Dataset:
    """Load ``path`` as a Dataset and check it is non-empty, numeric and finite."""
    path = Path(path)
    if _is_dir(path):
        ds = _load_image_folder(path, image_size)
    elif path.suffix == ".npz":
        ds = _load_npz(path)
    elif path.suffix == ".npy":
        ds = Dataset(read_npy(path), None, str(path))
    else:
        raise DataError(
            f"{path}: unknown data format '{path.suffix}'",
            "use .npz (arrays x, y), .npy (inputs) or a folder with one sub-folder per class",
        )
    return check_dataset(ds)


def check_dataset(ds: Dataset) -> Dataset:
    """``ds`` after the checks ``load_data`` makes: non-empty, numeric, finite, as many labels
    as samples (for data given in memory)."""
    for name, array in _named_arrays(ds.x):
        _check_numeric_finite(array, ds.source if name is None else f"{ds.source}, array '{name}'")
    if ds.y is not None:
        _check_labels_array(ds.y, ds.source)
    _check_sample_counts(ds)
    return ds


def check_labels(y: np.ndarray, num_classes: int, source: str) -> None:
    """Raise DataError unless class labels ``y`` are whole numbers in ``[0, num_classes)``."""
    flat = np.asarray(y).reshape(-1)
    if not np.issubdtype(flat.dtype, np.integer):
        return
    bad = (flat < 0) | (flat >= num_classes)
    if np.any(bad):
        first = int(flat[np.argmax(bad)])
        raise DataError(
            f"{source}: {int(np.count_nonzero(bad))} label(s) outside the model's "
            f"{num_classes} classes 0..{num_classes - 1} (e.g. {first})",
            "labels are class indices counted from 0, in the model's output order",
        )


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder (of images); DataError if it is missing or unreadable."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        check_regular_file(path, "data", DataError, "check the path")  # says what is wrong
        raise
    return stat.S_ISDIR(mode)


def _check_labels_array(y: np.ndarray, source: str) -> None:
    if y.ndim == 0:
        raise DataError(
            f"{source}: y is a single value, not one label per sample",
            "save one label per sample: np.savez(path, x=x, y=y) with y of shape (N,)",
        )
    _check_finite_numbers(
        y, f"{source}: labels", "store labels as integers (classes) or floats (targets)"
    )


def num_samples(x: Inputs) -> int:
    """How many samples ``x`` holds (every array of a dict holds as many)."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def take(x: Inputs, index) -> Inputs:
    """The samples ``index`` of ``x``, from every array alike."""
    return {name: a[index] for name, a in x.items()} if isinstance(x, dict) else x[index]


def as_float32(x: Inputs) -> Inputs:
    """``x`` in float32, every array of a dict alike."""
    if isinstance(x, dict):
        return {name: a.astype(np.float32) for name, a in x.items()}
    return x.astype(np.float32)


def keras_input_specs(model) -> list[InputSpec]:
    """The inputs of a Keras model (Keras 3 or tf_keras), in the model's order."""
    return [InputSpec(_tensor_name(t), tuple(t.shape), _dtype_name(t.dtype)) for t in model.inputs]


def arrange_inputs(x: Inputs, specs: Sequence[InputSpec], source: str) -> list[np.ndarray]:
    """The arrays of ``x`` in the order of ``specs``, each checked to fit its input.

    A dict is matched to the inputs by name, or by shape when the file does not use the
    model's input names and every input fits exactly one array.

    Raises:
        DataError: the number of arrays differs from the number of inputs, an input has no
            array, or an array's samples do not fit its input.
    """
    if not isinstance(x, dict):
        _check_count(["x"], specs, source)
        check_fits(x, specs[0].shape, source)
        return [x]
    _check_count(sorted(x), specs, source)
    if all(s.name in x for s in specs):
        arrays = [x[s.name] for s in specs]
    else:
        arrays = _match_by_shape(x, specs, source)
    for spec, array in zip(specs, arrays):
        check_fits(array, spec.shape, f"{source}, input '{spec.name}'")
    return arrays


def check_fits(x: np.ndarray, input_shape: Sequence[int | None], source: str) -> None:
    """Raise DataError unless samples ``x`` fit a model input of ``input_shape`` (batch first)."""
    if _fits(x, input_shape):
        return
    want, got = tuple(input_shape[1:]), tuple(x.shape[1:])
    hint = "reshape the data to the model's input shape"
    if len(got) + 1 == len(want) and want[-1] == 1:
        hint = "add a channel axis, e.g. x = x[..., None]"
    raise DataError(
        f"{source}: samples have shape {got}, the model expects {_fmt_shape(want)}", hint
    )


def draw_samples(x: Inputs, count: int, seed: int) -> Inputs:
    """Up to ``count`` samples of ``x`` drawn without replacement with a fixed seed."""
    if count <= 0:
        raise DataError(
            f"sample count must be positive, got {count}", "pass --calib-samples 100 or more"
        )
    rng = np.random.default_rng(seed)
    n = num_samples(x)
    idx = rng.choice(n, size=min(count, n), replace=False)
    return take(x, idx)


def _fmt_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _tensor_name(tensor) -> str:
    return str(tensor.name).split(":")[0]


def _dtype_name(dtype) -> str:
    return getattr(dtype, "name", str(dtype))


def _named_arrays(x: Inputs) -> list[tuple[str | None, np.ndarray]]:
    return sorted(x.items()) if isinstance(x, dict) else [(None, x)]


def _check_count(names: list[str], specs: Sequence[InputSpec], source: str) -> None:
    if len(names) == len(specs):
        return
    arrays = f"{len(names)} input array{'s' if len(names) != 1 else ''} ({', '.join(names)})"
    described = ", ".join(s.describe() for s in specs)
    inputs = f"{len(specs)} input{'s' if len(specs) != 1 else ''}: {described}"
    raise DataError(f"{source} holds {arrays}, the model has {inputs}", _layout_hint(specs))


def _layout_hint(specs: Sequence[InputSpec]) -> str:
    if len(specs) == 1:
        return "save a single-input model's inputs as x: np.savez(path, x=x, y=y)"
    named = ", ".join(f"{s.name}=..." for s in specs)
    return f"save one array per input, named after it: np.savez(path, {named}, y=y)"


def _match_by_shape(x: dict, specs: Sequence[InputSpec], source: str) -> list[np.ndarray]:
    """Arrays for ``specs`` when each input fits exactly one array of ``x``, all different."""
    chosen = [[name for name, a in x.items() if _fits(a, spec.shape)] for spec in specs]
    if all(len(c) == 1 for c in chosen) and len({c[0] for c in chosen}) == len(specs):
        return [x[c[0]] for c in chosen]
    missing = [s.name for s in specs if s.name not in x]
    raise DataError(
        f"{source} has no array named {', '.join(repr(m) for m in missing)} "
        f"(found: {', '.join(sorted(x))}), and its shapes do not tell the inputs apart "
        f"(the model's inputs: {', '.join(s.describe() for s in specs)})",
        _layout_hint(specs),
    )


def _fits(x: np.ndarray, input_shape: Sequence[int | None]) -> bool:
    want, got = tuple(input_shape[1:]), tuple(x.shape[1:])
    return len(want) == len(got) and all(w is None or w == g for w, g in zip(want, got))


def _load_npz(path: Path) -> Dataset:
    arrays, y = read_npz(path)
    names = _npz_input_names(set(arrays) | ({"y"} if y is not None else set()), path)
    picked = {name: arrays[name] for name in names}
    return Dataset(picked["x"] if names == ["x"] else picked, y, str(path))


def _npz_input_names(keys: set[str], path: Path) -> list[str]:
    """``x`` for a single input; otherwise every array but ``y``, one per input (at least two)."""
    if "x" in keys:
        return ["x"]
    names = sorted(keys - {"y"})
    if len(names) >= 2:
        return names
    raise DataError(
        f"{path} has no array named 'x' (found: {', '.join(sorted(keys)) or 'none'})",
        "save inputs as x and labels as y: np.savez(path, x=x, y=y); for a model with several "
        "inputs, one array per input named after it",
    )


def _check_sample_counts(ds: Dataset) -> None:
    counts = {name: len(a) for name, a in _named_arrays(ds.x)}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in counts.items())
        raise DataError(
            f"{ds.source}: the input arrays hold different numbers of samples ({listed})",
            "every input array (and y) must hold one row per sample",
        )
    if ds.y is not None and len(ds.y) != len(ds):
        raise DataError(
            f"{ds.source}: {len(ds)} inputs but {len(ds.y)} labels",
            "x and y must have the same length",
        )


def _check_numeric_finite(x: np.ndarray, source: str) -> None:
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{source} holds no samples", "pass a file with at least one sample")
    _check_finite_numbers(x, f"{source}: inputs", "store inputs as float32 or uint8")


def _check_finite_numbers(a: np.ndarray, what: str, dtype_hint: str) -> None:
    """``a`` holds numbers (or booleans), none of them NaN or infinite."""
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DataError(f"{what} have dtype {a.dtype}, not numbers", dtype_hint)
    if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise DataError(f"{what} contain {bad} NaN or Inf values", "clean or drop those samples")


def _load_image_folder(path: Path, image_size: tuple[int, int] | None) -> Dataset:
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(
            f"{path} has no class sub-folders",
            "put images in one sub-folder per class: DATA/cat/1.png",
        )
    xs, ys, first = [], [], None
    for label, name in enumerate(classes):
        for img in sorted((path / name).iterdir()):
            if img.suffix.lower() in IMAGE_SUFFIXES:
                check_regular_file(img, "image", DataError, "remove it or replace it")
                xs.append(_read_image(img, image_size))
                ys.append(label)
                first = first or (img, xs[-1].shape)
                if xs[-1].shape != first[1]:
                    raise DataError(
                        f"{path}: images differ in size: {first[0].relative_to(path)} is "
                        f"{_fmt_size(first[1])}, {img.relative_to(path)} is "
                        f"{_fmt_size(xs[-1].shape)}",
                        "resize every image to the model's input size (same width, height "
                        "and channels)",
                    )
    if not xs:
        raise DataError(
            f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
            "add images to the class folders",
        )
    return Dataset(np.stack(xs).astype(np.float32), np.asarray(ys, np.int64), str(path))


def _fmt_size(shape: tuple) -> str:
    return "x".join(str(d) for d in shape)


def _read_image(path: Path, image_size: tuple[int, int] | None) -> np.ndarray:
    from tfedge._tf import import_tf

    tf = import_tf()
    try:
        img = tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False)
    except Exception as exc:  # TF raises InvalidArgumentError for undecodable files
        raise DataError(f"{path} is not a readable image", "remove it or replace it") from exc
    if image_size:
        img = tf.image.resize(img, image_size)
    return img.numpy()
