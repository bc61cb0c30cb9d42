"""Read a ``.tflite`` flatbuffer in pure Python (no interpreter, no TensorFlow).

Parsing never runs model code, so a malformed or hostile file becomes a ModelLoadError
instead of a crash. Inspection, full-integer verification and the compression metrics
(sparsity, distinct weight values) all read models through this module.

Example:
    >>> m = read_tflite("model.tflite")
    >>> [op.name for op in m.ops][:3]
    ['QUANTIZE', 'CONV_2D', 'CONV_2D']
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from tfedge.errors import ModelLoadError

FLOAT_TYPES = frozenset({"float32", "float16", "float64", "bfloat16", "complex64", "complex128"})
_NUMPY_TYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "bool": np.bool_,
}


@dataclass
class Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: list[float] = field(default_factory=list)
    zero_point: list[int] = field(default_factory=list)
    quantized_dimension: int = 0
    data: np.ndarray | None = None  # constant tensors only

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else int(self.data.nbytes)


@dataclass
class Op:
    index: int
    name: str
    version: int
    inputs: list[Tensor]
    outputs: list[Tensor]

    @property
    def layer(self) -> str:
        """Best guess at the Keras layer an op came from, from the first tensor that names one."""
        for t in self.outputs + self.inputs:
            if "/" in t.name:
                return layer_from_tensor_name(t.name)
        return ""


@dataclass
class TfliteModel:
    path: str
    size_bytes: int
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[Tensor]
    outputs: list[Tensor]
    metadata: dict[str, bytes]
    subgraphs: int

    @property
    def min_runtime_version(self) -> str | None:
        raw = self.metadata.get("min_runtime_version")
        return raw.rstrip(b"\0").decode("ascii", "replace") if raw else None


def read_tflite(path: str | os.PathLike[str]) -> TfliteModel:
    """Parse ``path`` into a TfliteModel; raise ModelLoadError for anything that is not one."""
    path = Path(path)
    raw = _read_bytes(path)
    return parse_tflite(raw, str(path))


def parse_tflite(raw: bytes, name: str = "<bytes>") -> TfliteModel:
    """Parse flatbuffer bytes; raise ModelLoadError if they are not a valid TFLite model."""
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise ModelLoadError(
            f"{name} is not a TFLite model (no TFL3 identifier)",
            "pass a .tflite file written by the TFLite converter or `tfedge convert`",
        )
    try:
        return _build(raw, name)
    except ModelLoadError:
        raise
    except Exception as exc:  # garbage offsets surface as IndexError, struct.error, ...
        raise ModelLoadError(
            f"{name} is a damaged TFLite model ({type(exc).__name__})",
            "re-convert the model; the file may be truncated or corrupted",
        ) from exc


def layer_from_tensor_name(name: str) -> str:
    """'sequential/conv2d_1/Relu;sequential/conv2d_1/BiasAdd' -> 'conv2d_1'."""
    first = name.split(";")[0]
    parts = [p for p in first.split("/") if p]
    if len(parts) >= 3:
        return parts[1]
    return parts[0] if parts else name


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist", "check the path")
    if path.is_dir():
        raise ModelLoadError(
            f"{path} is a directory, not a .tflite file", "pass the .tflite file itself"
        )
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{path} is empty", "re-convert the model")
    return data


def _build(raw: bytes, name: str) -> TfliteModel:
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    if not model.subgraphs:
        raise ModelLoadError(f"{name} has no subgraphs", "re-convert the model")
    opcodes = [_opcode_name(c) for c in (model.operatorCodes or [])]
    versions = [int(c.version or 1) for c in (model.operatorCodes or [])]
    graph = model.subgraphs[0]
    tensors = [_tensor(i, t, model.buffers or [], raw) for i, t in enumerate(graph.tensors or [])]
    ops = [_op(i, o, tensors, opcodes, versions) for i, o in enumerate(graph.operators or [])]
    for sub in model.subgraphs[1:]:  # control-flow bodies: count their ops too
        sub_tensors = [
            _tensor(i, t, model.buffers or [], raw) for i, t in enumerate(sub.tensors or [])
        ]
        ops += [
            _op(len(ops) + i, o, sub_tensors, opcodes, versions)
            for i, o in enumerate(sub.operators or [])
        ]
    return TfliteModel(
        path=name,
        size_bytes=len(raw),
        tensors=tensors,
        ops=ops,
        inputs=[tensors[i] for i in _ints(graph.inputs)],
        outputs=[tensors[i] for i in _ints(graph.outputs)],
        metadata=_metadata(model, raw),
        subgraphs=len(model.subgraphs),
    )


@lru_cache(maxsize=1)
def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@lru_cache(maxsize=1)
def _enum_names(enum_name: str) -> dict[int, str]:
    enum = getattr(_schema(), enum_name)
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


def _opcode_name(code) -> str:
    if code.customCode:
        custom = code.customCode
        return "CUSTOM:" + (custom.decode() if isinstance(custom, bytes) else str(custom))
    builtin = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
    return _enum_names("BuiltinOperator").get(builtin, f"OP_{builtin}")


def _tensor(index: int, t, buffers, raw: bytes) -> Tensor:
    dtype = _enum_names("TensorType").get(int(t.type), f"type{t.type}").lower()
    name = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name or "")
    shape = tuple(int(d) for d in _ints(t.shape))
    q = t.quantization
    return Tensor(
        index=index,
        name=name,
        dtype=dtype,
        shape=shape,
        scale=[float(s) for s in _floats(q.scale)] if q else [],
        zero_point=[int(z) for z in _ints(q.zeroPoint)] if q else [],
        quantized_dimension=int(q.quantizedDimension or 0) if q else 0,
        data=_constant(t, buffers, raw, dtype, shape),
    )


def _constant(t, buffers, raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if not t.buffer or t.buffer >= len(buffers):
        return None
    buf = buffers[t.buffer]
    if buf.offset and buf.offset > 1:
        data = np.frombuffer(raw, np.uint8, count=int(buf.size), offset=int(buf.offset))
    elif buf.data is not None and len(buf.data):
        data = np.asarray(buf.data, dtype=np.uint8)
    else:
        return None
    np_type = _NUMPY_TYPES.get(dtype)
    if np_type is None:
        return data
    values: np.ndarray = data.view(np_type)
    return values.reshape(shape) if int(np.prod(shape)) == values.size else values


def _op(index: int, o, tensors: list[Tensor], opcodes: list[str], versions: list[int]) -> Op:
    return Op(
        index=index,
        name=opcodes[o.opcodeIndex],
        version=versions[o.opcodeIndex],
        inputs=[tensors[i] for i in _ints(o.inputs) if i >= 0],
        outputs=[tensors[i] for i in _ints(o.outputs) if i >= 0],
    )


def _metadata(model, raw: bytes) -> dict[str, bytes]:
    out = {}
    for m in model.metadata or []:
        name = m.name.decode() if isinstance(m.name, bytes) else str(m.name)
        buf = model.buffers[m.buffer]
        if buf.offset and buf.offset > 1:
            out[name] = raw[buf.offset : buf.offset + buf.size]
        elif buf.data is not None:
            out[name] = bytes(np.asarray(buf.data, dtype=np.uint8))
    return out


def _ints(values) -> list[int]:
    return [] if values is None else [int(v) for v in values]


def _floats(values) -> list[float]:
    return [] if values is None else [float(v) for v in values]
