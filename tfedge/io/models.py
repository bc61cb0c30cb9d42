"""Model files in: detect what a path holds and load it as a Keras model.

Format detection reads only file headers (no TensorFlow), so bad input fails fast.
Loading imports TensorFlow lazily.

Loading never runs code a model file carries unless the caller trusts the file: a Lambda
layer holds marshalled Python bytecode (or names a Python function it will call), and Keras
runs it while it rebuilds the model. Before any load, the model's JSON config is read as
data (the HDF5 attribute, ``config.json`` in a ``.keras`` zip, the layer metadata of a
tf_keras SavedModel) and a code-bearing layer is refused unless trusted (``trust_model=True``,
``--trust-model``). A SavedModel without Keras metadata holds a TensorFlow graph only: loading
it runs graph ops, never Python.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Iterator
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


# Set (to "1") while a caller trusts the model files it loads; child processes inherit it.
TRUST_ENV = "TFEDGE_TRUST_MODEL"
TRUST_HINT = (
    "only if you trust where the file came from, pass --trust-model "
    "(trust_model=True in Python) to run its code"
)
# Config keys whose value "lambda" means marshalled bytecode (tf_keras's Lambda layer).
_CODE_TYPE_KEYS = ("function_type", "output_shape_type", "mask_type")


@contextlib.contextmanager
def trusting(trust_model: bool) -> Iterator[None]:
    """Inside the block (and in the child processes it starts) code-bearing models load."""
    if not trust_model:
        yield
        return
    saved = os.environ.get(TRUST_ENV)
    os.environ[TRUST_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = saved


def model_trusted() -> bool:
    return os.environ.get(TRUST_ENV) == "1"


def code_bearing_layers(fmt: ModelFormat) -> list[str]:
    """``"name (kind)"`` of each layer whose config carries Python code, read without loading.

    Nested models are searched too (``outer/inner``). Empty for a TFLite file and for a
    SavedModel without Keras metadata (a graph holds no Python).
    """
    found: list[str] = []
    for config in _model_configs(fmt):
        _find_code(config, [], found)
    return list(dict.fromkeys(found))


def check_model_safe(fmt: ModelFormat) -> None:
    """Refuse a model whose layers carry Python code unless the caller trusts it."""
    if model_trusted():
        return
    found = code_bearing_layers(fmt)
    if found:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise ModelLoadError(
            f"{fmt.path} holds Python code in layer {found[0]}{more}; loading it would run "
            "that code, so tfedge does not",
            TRUST_HINT,
        )


def _model_configs(fmt: ModelFormat) -> list:
    """The model's JSON config(s), parsed as data."""
    try:
        if fmt.kind == "h5":
            import h5py

            with h5py.File(fmt.path, "r") as f:
                return [json.loads(_text(f.attrs["model_config"]))]
        if fmt.kind == "keras":
            with zipfile.ZipFile(fmt.path) as zf:
                return [json.loads(zf.read("config.json"))]
        if fmt.kind == "savedmodel":
            return _savedmodel_configs(Path(fmt.path))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(
            f"cannot read the model config of {fmt.path}: {_first_line(exc)}",
            "the file looks damaged; save the model again",
        ) from exc
    return []


def _savedmodel_configs(path: Path) -> list:
    """Layer configs of a tf_keras SavedModel (``keras_metadata.pb``), which tf_keras revives."""
    meta = path / "keras_metadata.pb"
    if not meta.exists():
        return []
    configs = []
    for node in _proto_fields(meta.read_bytes(), 1):  # SavedMetadata.nodes
        for text in _proto_fields(node, 5):  # SavedObject.metadata: the layer's JSON
            with contextlib.suppress(ValueError):
                configs.append(json.loads(text))
    if not configs:
        raise ValueError("keras_metadata.pb holds no layer metadata")
    return configs


def _proto_fields(buf: bytes, wanted: int) -> list[bytes]:
    """The length-delimited fields numbered ``wanted`` of one protobuf message (wire format)."""
    out, pos = [], 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(buf) or shift > 63:
                raise ValueError("truncated protobuf")
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size = varint()
            if pos + size > len(buf):
                raise ValueError("truncated protobuf")
            if number == wanted:
                out.append(buf[pos : pos + size])
            pos += size
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return out


def _find_code(node, where: list[str], found: list[str], layer: str = "") -> None:
    """Append ``'path' (kind)`` for each layer under ``node`` whose config carries code."""
    if isinstance(node, list):
        for item in node:
            _find_code(item, where, found, layer)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("class_name")
    if _is_layer(node) and not str(kind).endswith("Policy") and not str(kind).startswith("__"):
        name = node.get("name") or node["config"].get("name")
        where, layer = ([*where, str(name)] if name else where), str(kind)
    path = "/".join(where) or "?"
    if kind == "Lambda":  # bytecode, or a Python function it names and calls
        found.append(f"'{path}' (Lambda)")
        return
    if kind == "__lambda__" or any(node.get(k) == "lambda" for k in _CODE_TYPE_KEYS):
        found.append(f"'{path}' ({layer or 'config'} with a marshalled Python function)")
    for value in node.values():
        _find_code(value, where, found, layer)


def _is_layer(node: dict) -> bool:
    return isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_keras_model(fmt: ModelFormat, compile: bool = False):
    """Load a ``.keras``/``.h5``/SavedModel as a Keras model.

    tf_keras, or Keras 3 for files saved by Keras 3. A model whose layers carry Python code
    is refused unless trusted (``trusting``).
    """
    if fmt.kind == "tflite":
        raise ModelLoadError(
            f"{fmt.path} is already a TFLite model", "pass the Keras model instead"
        )
    check_model_safe(fmt)
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
    check_model_safe(fmt)
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
    options = {} if fmt.kind == "savedmodel" else {"safe_mode": not model_trusted()}
    try:
        return loader(fmt.path, compile=compile, **options)
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
        options = {} if fmt.kind == "savedmodel" else {"safe_mode": not model_trusted()}
        return loader(fmt.path, compile=compile, **options)


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
