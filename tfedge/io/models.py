"""Model files in: detect what a path holds and load it as a Keras model.

Format detection reads only file headers (no TensorFlow), so bad input fails fast.
Loading imports TensorFlow lazily.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tfedge.errors import ModelLoadError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class ModelFormat:
    """What a model path holds.

    kind: ``keras`` (.keras zip), ``h5``, ``savedmodel`` or ``tflite``.
    keras: ``2`` (tf_keras), ``3`` (Keras 3) or ``""`` when unknown (SavedModel, TFLite).
    """

    path: str
    kind: str
    keras: str = ""
    keras_version: str = ""

    @property
    def is_keras3(self) -> bool:
        return self.keras == "3"


def detect_format(path: str | os.PathLike[str]) -> ModelFormat:
    """Tell what ``path`` holds from its headers; raise ModelLoadError if it is no model."""
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name over 255 bytes
        raise ModelLoadError(
            f"cannot read model {path} ({exc.strerror})", "check the path"
        ) from exc
    if not exists:
        raise ModelLoadError(f"model {path} does not exist", "check the path")
    if path.is_dir():
        return _detect_savedmodel(path)
    head = _head(path)
    if head[4:8] == b"TFL3":
        return ModelFormat(str(path), "tflite")
    if head.startswith(b"PK"):
        return _detect_keras_zip(path)
    if head.startswith(HDF5_SIGNATURE):
        return _detect_h5(path)
    raise ModelLoadError(
        f"{path} is not a model file tfedge can read",
        "pass a Keras .keras or .h5 file, a SavedModel directory, or a .tflite file",
    )


def load_keras_model(fmt: ModelFormat, compile: bool = False):
    """Load a ``.keras``/``.h5``/SavedModel as a Keras model.

    tf_keras, or Keras 3 for files saved by Keras 3.
    """
    if fmt.kind == "tflite":
        raise ModelLoadError(
            f"{fmt.path} is already a TFLite model", "pass the Keras model instead"
        )
    if fmt.is_keras3:
        from tfedge._tf import import_keras3

        return _load_with(import_keras3().models.load_model, fmt, compile)
    from tfedge._tf import import_keras

    keras2 = import_keras()
    return _load_with(keras2.models.load_model, fmt, compile)


def load_tf_keras_model(model):
    """A tf_keras (Keras 2) model for tfmot from a path, a ModelFormat or an in-memory model.

    Keras 3 files and models go through the verified bridge (``tfedge.io.keras3_bridge``).
    Nested models (a backbone used as a layer) come back flat, data-augmentation layers
    dropped (``tfedge.io.flatten``), so tfmot can wrap every layer.
    """
    from tfedge.io.flatten import flatten_model
    from tfedge.io.keras3_bridge import bridge_keras3_file, bridge_keras3_model

    if not isinstance(model, (str, os.PathLike, ModelFormat)):
        return flatten_model(bridge_keras3_model(model) if _is_keras3_object(model) else model)
    fmt = model if isinstance(model, ModelFormat) else detect_format(model)
    if fmt.kind == "savedmodel" and fmt.keras != "2":
        raise ModelLoadError(
            f"{fmt.path} is an exported SavedModel: it holds a graph, not Keras layers",
            "pass the .keras file for tfmot passes; a SavedModel converts directly with "
            "`tfedge convert` or the post-training `int8` recipe",
        )
    return flatten_model(bridge_keras3_file(fmt.path) if fmt.is_keras3 else load_keras_model(fmt))


def _is_keras3_object(model) -> bool:
    return type(model).__module__.split(".")[0] == "keras"


def _load_with(loader, fmt: ModelFormat, compile: bool):
    try:
        return loader(fmt.path, compile=compile)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        if _needs_tfmot_scope(exc):
            return _load_in_tfmot_scope(loader, fmt, compile)
        raise ModelLoadError(
            f"cannot load {fmt.path}: {_first_line(exc)}",
            "check that the file is complete and was saved by Keras; "
            "custom layers must be registered",
        ) from exc


def _needs_tfmot_scope(exc: Exception) -> bool:
    text = str(exc)
    return any(
        w in text
        for w in ("QuantizeWrapper", "PruneLowMagnitude", "ClusterWeights", "QuantizeLayer")
    )


def _load_in_tfmot_scope(loader, fmt: ModelFormat, compile: bool):
    import tensorflow_model_optimization as tfmot

    with (
        tfmot.quantization.keras.quantize_scope(),
        tfmot.clustering.keras.cluster_scope(),
        tfmot.sparsity.keras.prune_scope(),
    ):
        return loader(fmt.path, compile=compile)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _head(path: Path) -> bytes:
    from tfedge.fsutil import open_regular  # a FIFO or device named *.tflite would block a read

    with open_regular(path, "model", ModelLoadError, "pass a model file") as f:
        head = f.read(16)
    if not head:
        raise ModelLoadError(f"model {path} is empty", "re-save the model")
    return head


def _detect_savedmodel(path: Path) -> ModelFormat:
    if not (path / "saved_model.pb").exists():
        raise ModelLoadError(
            f"{path} is a directory without saved_model.pb",
            "pass a SavedModel directory, or a .keras/.h5 file",
        )
    keras = (
        "3"
        if (path / "fingerprint.pb").exists() and not (path / "keras_metadata.pb").exists()
        else ""
    )
    return ModelFormat(
        str(path), "savedmodel", keras="2" if (path / "keras_metadata.pb").exists() else keras
    )


def _detect_keras_zip(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            names = set(zf.namelist())
            meta = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path} is a damaged .keras file ({_first_line(exc)})",
            "the file looks truncated; save the model again",
        ) from exc
    if bad is not None or "config.json" not in names:
        raise ModelLoadError(
            f"{path} is a damaged .keras file", "the file looks truncated; save the model again"
        )
    version = str(meta.get("keras_version", ""))
    return ModelFormat(str(path), "keras", keras=version[:1] or "2", keras_version=version)


def _detect_h5(path: Path) -> ModelFormat:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version", "")
            has_model = "model_config" in f.attrs
    except OSError as exc:
        raise ModelLoadError(
            f"{path} is a damaged .h5 file ({_first_line(exc)})",
            "the file looks truncated; save the model again",
        ) from exc
    version = version.decode() if isinstance(version, bytes) else str(version)
    if not has_model:
        raise ModelLoadError(
            f"{path} holds weights only, not a model",
            "save the whole model with model.save('model.h5') or model.save('model.keras')",
        )
    return ModelFormat(str(path), "h5", keras=version[:1] or "2", keras_version=version)
