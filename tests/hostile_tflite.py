"""Tiny hand-built ``.tflite`` files, valid and hostile, for tests/test_hostile_models.py.

Built with the TFLite flatbuffer schema (the module tfedge reads models with), without
TensorFlow: a full-int8 ``FULLY_CONNECTED`` model, then copies edited field by field, and a
few files written table by table to share offsets or repeat tables millions of times.

Example:
    >>> write(tmp / "m.tflite", zero_scale())
"""

from __future__ import annotations

import struct
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as s

INT8, INT32, BOOL, FLOAT32 = s.TensorType.INT8, s.TensorType.INT32, s.TensorType.BOOL, 0


def _q(scale, zero_point, dim=0) -> s.QuantizationParametersT:
    q = s.QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = list(scale), list(zero_point), dim
    return q


def _tensor(name, shape, dtype, buffer=0, q=None) -> s.TensorT:
    t = s.TensorT()
    t.name, t.shape, t.type, t.buffer, t.quantization = name.encode(), list(shape), dtype, buffer, q
    return t


def _buffer(data: bytes | None = None) -> s.BufferT:
    b = s.BufferT()
    b.data = list(data) if data else None
    return b


def _opcode(code: int) -> s.OperatorCodeT:
    c = s.OperatorCodeT()
    c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
    return c


def _op(index, inputs, outputs, options_type=0, options=None) -> s.OperatorT:
    o = s.OperatorT()
    o.opcodeIndex, o.inputs, o.outputs = index, list(inputs), list(outputs)
    o.builtinOptionsType, o.builtinOptions = options_type, options
    return o


def base() -> s.ModelT:
    """Full int8: x int8 [1,4] -> FULLY_CONNECTED (weights [3,4], bias [3]) -> y int8 [1,3]."""
    m = s.ModelT()
    m.version = 3
    m.operatorCodes = [_opcode(s.BuiltinOperator.FULLY_CONNECTED)]
    weights = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    m.buffers = [
        _buffer(),
        _buffer(weights.tobytes()),
        _buffer(np.array([10, -20, 30], np.int32).tobytes()),
        _buffer(),
        _buffer(),
    ]
    g = s.SubGraphT()
    g.tensors = [
        _tensor("serving_default_x:0", [1, 4], INT8, 3, _q([0.05], [-3])),
        _tensor("sequential/dense/MatMul", [3, 4], INT8, 1, _q([0.02, 0.03, 0.04], [0, 0, 0])),
        _tensor("sequential/dense/BiasAdd", [3], INT32, 2, _q([0.001, 0.0015, 0.002], [0, 0, 0])),
        _tensor("StatefulPartitionedCall:0", [1, 3], INT8, 4, _q([0.1], [5])),
    ]
    fc = s.FullyConnectedOptionsT()
    g.operators = [_op(0, [0, 1, 2], [3], s.BuiltinOptions.FullyConnectedOptions, fc)]
    g.inputs, g.outputs, g.name = [0], [3], b"main"
    m.subgraphs = [g]
    m.description = b"hostile_tflite base"
    return m


def pack(model: s.ModelT) -> bytes:
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def write(path: Path, content: s.ModelT | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else pack(content))
    return path


def graph(m: s.ModelT) -> s.SubGraphT:
    return m.subgraphs[0]


# ---------------------------------------------------------------- the runtime crashes on these
def reshape_with_bias_as_shape() -> s.ModelT:
    """A RESHAPE after the FC whose shape input is the int32 bias ([10, -20, 30])."""
    m = base()
    g = graph(m)
    m.operatorCodes.append(_opcode(s.BuiltinOperator.RESHAPE))
    m.buffers.append(_buffer())
    g.tensors.append(_tensor("reshaped", [1, 3], INT8, len(m.buffers) - 1, _q([0.1], [5])))
    g.operators.append(_op(1, [3, 2], [4]))
    g.outputs = [4]
    return m


def add_with_zero_output_scale() -> s.ModelT:
    """x int8 + x int8 -> y int8 whose scale is 0 (the runtime divides by it)."""
    m = s.ModelT()
    m.version = 3
    m.operatorCodes = [_opcode(s.BuiltinOperator.ADD)]
    m.buffers = [_buffer(), _buffer(), _buffer()]
    g = s.SubGraphT()
    g.tensors = [
        _tensor("x", [1, 4], INT8, 1, _q([0.05], [0])),
        _tensor("y", [1, 4], INT8, 2, _q([0.0], [0])),
    ]
    g.operators = [_op(0, [0, 0], [1], s.BuiltinOptions.AddOptions, s.AddOptionsT())]
    g.inputs, g.outputs = [0], [1]
    m.subgraphs = [g]
    return m


def while_forever() -> s.ModelT:
    """A WHILE whose condition subgraph returns a constant ``true``: it never ends."""
    m = s.ModelT()
    m.version = 3
    m.operatorCodes = [_opcode(s.BuiltinOperator.WHILE), _opcode(s.BuiltinOperator.ADD)]
    m.buffers = [_buffer(), _buffer(), _buffer(), _buffer(b"\x01"), _buffer()]
    main = s.SubGraphT()
    main.tensors = [_tensor("x", [1, 1], INT32, 1), _tensor("y", [1, 1], INT32, 2)]
    options = s.WhileOptionsT()
    options.condSubgraphIndex, options.bodySubgraphIndex = 1, 2
    main.operators = [_op(0, [0], [1], s.BuiltinOptions.WhileOptions, options)]
    main.inputs, main.outputs, main.name = [0], [1], b"main"
    cond = s.SubGraphT()
    cond.tensors = [_tensor("c_in", [1, 1], INT32), _tensor("always", [], BOOL, 3)]
    cond.operators = []
    cond.inputs, cond.outputs, cond.name = [0], [1], b"cond"
    body = s.SubGraphT()
    body.tensors = [_tensor("b_in", [1, 1], INT32), _tensor("b_out", [1, 1], INT32)]
    body.operators = [_op(1, [0, 0], [1], s.BuiltinOptions.AddOptions, s.AddOptionsT())]
    body.inputs, body.outputs, body.name = [0], [1], b"body"
    m.subgraphs = [main, cond, body]
    return m


# ---------------------------------------------------------------- structurally invalid
INVALID = {
    # name: (what to edit, its attribute, the new value, a fragment of the reason)
    "buffer-index": ("tensor 1", "buffer", 99, "buffer 99"),
    "opcode-index": ("op 0", "opcodeIndex", 7, "opcode 7"),
    "op-input-index": ("op 0", "inputs", [0, 1, 9], "tensor 9"),
    "op-output-index": ("op 0", "outputs", [-5], "tensor -5"),
    "graph-input-index": ("graph", "inputs", [42], "tensor 42"),
    "input-is-output": ("graph", "outputs", [0], "its own output"),
    "short-buffer": ("tensor 1", "shape", [3, 40], "holds 12 bytes"),
    "negative-dim": ("tensor 3", "shape", [1, -3], "negative dimension"),
    "absurd-dim": ("tensor 0", "shape", [1, 2**31 - 1, 2**31 - 1], "absurd size"),
    "rank": ("tensor 0", "shape", [1] * 40, "rank 40"),
    "scale-count": ("quantization 1", "scale", [0.02, 0.03], "2 scales"),
    "zero-point-count": ("quantization 1", "zeroPoint", [0], "zero points"),
    "quantized-dimension": ("quantization 1", "quantizedDimension", 5, "dimension 5"),
    "zero-scale": ("quantization 3", "scale", [0.0], "scale 0"),
    "nan-scale": ("quantization 0", "scale", [float("nan")], "scale nan"),
    "inf-scale": ("quantization 0", "scale", [float("inf")], "scale inf"),
    "negative-scale": ("quantization 3", "scale", [-0.1], "scale -0.1"),
    "tensor-type": ("tensor 3", "type", 120, "type 120"),
    "write-into-constant": ("op 0", "outputs", [1], "writes into constant tensor 1"),
    "schema-version": ("model", "version", 2, "schema version 2"),
}


def invalid(case: str) -> s.ModelT:
    """The base model with the one edit of ``INVALID[case]``."""
    where, attr, value, _ = INVALID[case]
    m = base()
    kind, _, number = where.partition(" ")
    target = {
        "model": lambda: m,
        "graph": lambda: graph(m),
        "tensor": lambda: graph(m).tensors[int(number)],
        "quantization": lambda: graph(m).tensors[int(number)].quantization,
        "op": lambda: graph(m).operators[int(number)],
    }[kind]()
    setattr(target, attr, value)
    return m


# ---------------------------------------------------------------- amplification and size
def shared_tables(subgraphs: int = 1200, tensors: int = 1200) -> bytes:
    """``subgraphs`` references to one subgraph whose ``tensors`` references are one tensor.

    About ``4 * (subgraphs + tensors)`` bytes; an object-API reader unpacks the tensor
    ``subgraphs * tensors`` times.
    """
    b = flatbuffers.Builder(1024)
    name = b.CreateString("t")
    s.TensorStartShapeVector(b, 2)
    b.PrependInt32(4)
    b.PrependInt32(1)
    shape = b.EndVector()
    s.TensorStart(b)
    s.TensorAddShape(b, shape)
    s.TensorAddName(b, name)
    s.TensorAddType(b, INT8)
    tensor = b.EndObject()
    s.SubGraphStartTensorsVector(b, tensors)
    for _ in range(tensors):
        b.PrependUOffsetTRelative(tensor)
    vec = b.EndVector()
    s.SubGraphStart(b)
    s.SubGraphAddTensors(b, vec)
    sub = b.EndObject()
    s.ModelStartSubgraphsVector(b, subgraphs)
    for _ in range(subgraphs):
        b.PrependUOffsetTRelative(sub)
    return _finish(b, b.EndVector())


def _finish(b: flatbuffers.Builder, subgraphs: int) -> bytes:
    """The Model table (version 3, one empty buffer) around a subgraphs vector."""
    s.BufferStart(b)
    empty = b.EndObject()
    s.ModelStartBuffersVector(b, 1)
    b.PrependUOffsetTRelative(empty)
    buffers = b.EndVector()
    s.ModelStart(b)
    s.ModelAddVersion(b, 3)
    s.ModelAddSubgraphs(b, subgraphs)
    s.ModelAddBuffers(b, buffers)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


def many_tensors(count: int = 3_000_000) -> bytes:
    """One subgraph with ``count`` distinct empty tensor tables: 8 bytes per tensor.

    Written byte by byte (a flatbuffers.Builder takes seconds per million tables).
    """
    head = struct.pack(
        "<I4s" "HHHHHHH2x" "iIII" "HH" "HHH2x" "II" "i" "II" "iI" "I",
        24, b"TFL3",  # 0: the root table is at 24
        14, 16, 4, 0, 8, 0, 12,  # 8: Model's vtable (version, subgraphs, buffers)
        16, 3, 32, 16,  # 24: Model: version 3, subgraphs at 64, buffers at 52
        4, 4,  # 40: the vtable of a table with no fields
        6, 8, 4,  # 44: SubGraph's vtable (tensors)
        1, 4,  # 52: buffers: one, at 60
        20,  # 60: an empty Buffer
        1, 4,  # 64: subgraphs: one, at 72
        28, 4,  # 72: SubGraph: tensors at 80
        count,  # 80: the tensors vector
    )  # fmt: skip
    entries = np.full(count, 4 * count, "<u4")  # entry k at 84 + 4k -> table at 84 + 4n + 4k
    tables = (84 + 4 * count + 4 * np.arange(count, dtype="<i8") - 40).astype("<i4")
    return head + entries.tobytes() + tables.tobytes()


def sparse_file(path: Path, size: int = 2 * 1024**3, head: bytes = b"\0\0\0\0TFL3") -> Path:
    """A ``size``-byte file that is all holes after ``head`` (a TFLite header by default)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def shared_scales(tensors: int = 20_000, channels: int = 100_000) -> bytes:
    """``tensors`` distinct tensor tables sharing one quantization with ``channels`` scales.

    About 400 KB + 12 bytes a tensor; a reader that decodes the quantization per tensor does
    ``tensors * channels`` work (2 billion floats by default).
    """
    b = flatbuffers.Builder(tensors * 16 + channels * 12 + 1024)
    s.QuantizationParametersStartScaleVector(b, channels)
    for _ in range(channels):
        b.PrependFloat32(0.5)
    scales = b.EndVector()
    s.QuantizationParametersStartZeroPointVector(b, channels)
    for _ in range(channels):
        b.PrependInt64(0)
    zero_points = b.EndVector()
    s.QuantizationParametersStart(b)
    s.QuantizationParametersAddScale(b, scales)
    s.QuantizationParametersAddZeroPoint(b, zero_points)
    quant = b.EndObject()
    s.TensorStartShapeVector(b, 1)
    b.PrependInt32(channels)
    shape = b.EndVector()
    offsets = []
    for _ in range(tensors):
        s.TensorStart(b)
        s.TensorAddShape(b, shape)
        s.TensorAddType(b, INT8)
        s.TensorAddQuantization(b, quant)
        offsets.append(b.EndObject())
    s.SubGraphStartTensorsVector(b, tensors)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    vec = b.EndVector()
    s.SubGraphStart(b)
    s.SubGraphAddTensors(b, vec)
    sub = b.EndObject()
    s.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(sub)
    return _finish(b, b.EndVector())
