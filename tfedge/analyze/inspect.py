"""Reports on model files: ops, dtypes, sizes and the full-integer verdict for ``.tflite``;
layers and parameters for Keras models.

Example:
    >>> report = inspect("model.tflite")
    >>> report.full_integer, report.size_bytes
    (True, 7480)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfedge.analyze.memory import plan_memory
from tfedge.convert.sparse import SparseCheck, check_model
from tfedge.convert.tflite_model import (
    Op,
    SparseSummary,
    Tensor,
    TfliteModel,
    read_tflite,
    sparse_summary,
)
from tfedge.convert.verify import FloatOp, find_float_ops
from tfedge.errors import TfedgeError
from tfedge.io.models import detect_format, load_keras_model, trusting
from tfedge.passes.compat import compat_rows

# Ops whose integer constants past their first input are biases, and so parameters (int32 in
# an int8 model, int64 in an int16x8 one); integer constants elsewhere are shapes and axes.
# (A TRANSPOSE_CONV's first input is its output shape.)
BIASED_OPS = {
    "CONV_2D",
    "CONV_3D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "TRANSPOSE_CONV",
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "BIDIRECTIONAL_SEQUENCE_LSTM",
    "UNIDIRECTIONAL_SEQUENCE_RNN",
    "SVDF",
}
INDEX_TYPES = {"int32", "int64"}
INTEGER_ACTIVATIONS = {"int8", "uint8", "int16"}


@dataclass
class OpRow:
    op: str
    count: int
    input_dtypes: list[str]
    output_dtypes: list[str]


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str
    scale: float | None
    zero_point: int | None


@dataclass
class TfliteReport:
    path: str
    format: str
    size_bytes: int
    ops: list[OpRow]
    bytes_by_dtype: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    full_integer: bool
    float_ops: list[FloatOp]
    macs: int
    min_runtime_version: str | None
    parameters: int
    # no integer activations: float compute throughout (--quant none, float16 or dynamic)
    float_model: bool = False
    # memory (tfedge.analyze.memory): the activation arena as LiteRT's planner lays it out,
    # the most activation bytes live at once, and the constant buffers
    arena_bytes: int = 0
    activation_peak_bytes: int = 0
    weights_bytes: int = 0
    # weights stored sparse (convert --sparse): stored vs dense bytes, density; and whether
    # the model matches XNNPACK's sparse inference pattern (float models and sparse ones)
    sparse_tensors: list[SparseSummary] = field(default_factory=list)
    xnnpack_sparse: SparseCheck | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: str
    params: int


@dataclass
class KerasReport:
    path: str
    format: str
    keras: str
    keras_version: str
    layers: list[LayerRow]
    params: int
    trainable_params: int
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    compat: list = field(
        default_factory=list
    )  # tfedge.passes.compat.LayerCompat: prune/cluster/qat per layer
    # why ``compat`` is empty: the model cannot be rebuilt in tf_keras for tfmot passes
    compat_unavailable: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def inspect(path: str | Path, *, trust_model: bool = False) -> TfliteReport | KerasReport:
    """Report on a ``.tflite`` file or a Keras model file.

    A Keras model whose layers carry Python code (Lambda) is refused unless ``trust_model``:
    building it would run that code.
    """
    fmt = detect_format(path)
    if fmt.kind == "tflite":
        return inspect_tflite(path)
    with trusting(trust_model):
        return inspect_keras(fmt)


def inspect_tflite(path: str | Path) -> TfliteReport:
    model = read_tflite(path)
    float_ops = find_float_ops(model)
    memory = plan_memory(model)
    float_model = not any(t.dtype in INTEGER_ACTIVATIONS for op in model.ops for t in op.outputs)
    sparse = [sparse_summary(t) for t in model.tensors if t.sparsity is not None]
    return TfliteReport(
        path=str(path),
        format="tflite",
        size_bytes=model.size_bytes,
        ops=_op_rows(model.ops),
        bytes_by_dtype=_bytes_by_dtype(model),
        inputs=[_tensor_info(t) for t in model.inputs],
        outputs=[_tensor_info(t) for t in model.outputs],
        full_integer=not float_ops,
        float_ops=float_ops,
        macs=sum(estimate_macs(op) for op in model.ops),
        min_runtime_version=model.min_runtime_version,
        parameters=count_parameters(model),
        float_model=float_model,
        arena_bytes=memory.arena_bytes,
        activation_peak_bytes=memory.activation_peak_bytes,
        weights_bytes=memory.weights_bytes,
        sparse_tensors=sparse,
        xnnpack_sparse=check_model(model) if sparse or float_model else None,
    )


def inspect_keras(fmt) -> KerasReport:
    model = load_keras_model(fmt)
    layers = [
        LayerRow(l.name, type(l).__name__, _output_shape(l), int(l.count_params()))
        for l in model.layers
    ]
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    try:
        compat, unavailable = compat_rows(fmt, model), ""
    except TfedgeError as exc:
        compat, unavailable = [], exc.message + (f" ({exc.hint})" if exc.hint else "")
    return KerasReport(
        path=fmt.path,
        format=fmt.kind,
        keras=fmt.keras or "2",
        keras_version=fmt.keras_version,
        layers=layers,
        params=int(model.count_params()),
        trainable_params=trainable,
        inputs=[str(tuple(i.shape)) for i in model.inputs],
        outputs=[str(tuple(o.shape)) for o in model.outputs],
        compat=compat,
        compat_unavailable=unavailable,
    )


def count_parameters(model: TfliteModel) -> int:
    """Weights and biases: the constant inputs of ops, whatever their dtype (an int8 model's
    biases are int32, a float16 model's weights float16), so one network counts the same in
    every conversion. Integer constants that are not biases (shapes, axes, paddings) are left
    out. A constant counts once per op that reads it: the float converter shares one tensor
    between equal constants (the zero biases of an untrained network), which the int8 one
    keeps apart (each with its own scale). A sparse-stored weight counts its dense shape (the
    DENSIFY op reads it), so ``--sparse`` changes the file's size, not the parameters."""
    return sum(op_parameters(op) for op in model.ops)


def op_parameters(op: Op) -> int:
    """The parameters ``op`` reads (its weights and biases, see ``count_parameters``)."""
    return sum(
        t.size
        for position, t in enumerate(op.inputs)
        if t.data is not None and _is_parameter(op, position, t)
    )


def _is_parameter(op: Op, position: int, t: Tensor) -> bool:
    return t.dtype not in INDEX_TYPES or (op.name in BIASED_OPS and position > 0)


def estimate_macs(op: Op) -> int:
    """Multiply-accumulates of one op (convolutions and fully-connected layers)."""
    if not op.outputs or len(op.inputs) < 2:
        return 0
    out = int(np.prod([max(d, 1) for d in op.outputs[0].shape]))
    w = op.inputs[1].shape
    if op.name == "CONV_2D" and len(w) == 4:
        return out * w[1] * w[2] * w[3]
    if op.name == "DEPTHWISE_CONV_2D" and len(w) == 4:
        return out * w[1] * w[2]
    if op.name == "FULLY_CONNECTED" and len(w) == 2:
        return out * w[1]
    if op.name == "TRANSPOSE_CONV" and len(op.inputs) > 2 and len(op.inputs[1].shape) == 4:
        w = op.inputs[1].shape
        return int(np.prod([max(d, 1) for d in op.inputs[2].shape])) * w[0] * w[1] * w[2]
    return 0


def _op_rows(ops: list[Op]) -> list[OpRow]:
    counts: Counter = Counter()
    dtypes: dict[str, tuple[set, set]] = defaultdict(lambda: (set(), set()))
    for op in ops:
        counts[op.name] += 1
        dtypes[op.name][0].update(t.dtype for t in op.inputs)
        dtypes[op.name][1].update(t.dtype for t in op.outputs)
    return [
        OpRow(name, n, sorted(dtypes[name][0]), sorted(dtypes[name][1]))
        for name, n in counts.most_common()
    ]


def _bytes_by_dtype(model: TfliteModel) -> dict[str, int]:
    out: Counter = Counter()
    for t in model.tensors:
        out[t.dtype] += t.nbytes
    return {k: v for k, v in out.most_common() if v}


def _tensor_info(t: Tensor) -> TensorInfo:
    return TensorInfo(
        t.name,
        list(t.shape),
        t.dtype,
        t.scale[0] if t.scale else None,
        t.zero_point[0] if t.zero_point else None,
    )


def _output_shape(layer) -> str:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return "?"
    return str(tuple(shape)).replace("None", "?")
