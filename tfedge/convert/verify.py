"""The one full-integer verifier: does every op of a TFLite model compute in integer?

Used by ``convert``, ``optimize`` (through ``convert``), ``inspect``, ``bench --profile`` and
``ota publish``, so they always agree. The decision comes from the graph alone:

* integer index and shape tensors (int32, int64) are fine;
* a ``QUANTIZE`` that reads a float *model input*, or a ``DEQUANTIZE`` that writes a float
  *model output*, is the model's float I/O (``--io float32``), not float compute;
* every other op that reads or writes a float tensor computes in float. That includes a
  ``DEQUANTIZE``/``QUANTIZE`` pair inside the graph, which the converter leaves where two
  quantization ranges disagree: the values between them are float.

Example:
    >>> [op.describe() for op in find_float_ops(read_tflite("model_int8.tflite"))]
    []
    >>> [op.describe() for op in find_float_ops(read_tflite("island.tflite"))]
    ["DEQUANTIZE (layer 'dense')", "QUANTIZE (layer 'dense')"]

Ops are named after the user's Keras layers when ``layers`` (``keras_layers(model)``) is given,
else after the best guess from their tensor names (see ``tfedge.convert.layer_names``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tfedge.convert.layer_names import KerasLayers, op_layers, op_tensor
from tfedge.convert.tflite_model import FLOAT_TYPES, Op, Tensor, TfliteModel

BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


@dataclass
class FloatOp:
    """An op that still computes in float, the Keras layer it came from ('' when unknown) and
    its output tensor's name (shown when no layer is known)."""

    op: str
    layer: str
    dtypes: list[str]
    tensor: str = ""

    def describe(self) -> str:
        if self.layer:
            return f"{self.op} (layer '{self.layer}')"
        return f"{self.op} (tensor '{self.tensor}')" if self.tensor else self.op


def find_float_ops(model: TfliteModel, layers: KerasLayers | None = None) -> list[FloatOp]:
    """Ops of ``model`` that compute in float; empty for a full-integer model.

    ``layers``: the Keras model's layers (``keras_layers``), to name each op's layer.
    """
    found = [
        FloatOp(op.name, layer, _op_dtypes(op), op_tensor(op))
        for op, layer in zip(model.ops, op_layers(model.ops, layers), strict=True)
        if _touches_float(op) and not _is_float_io(op, model)
    ]
    return _drop_island_edges(found)


def summarize_float_ops(float_ops: list[FloatOp], kinds: int = 6) -> str:
    """One line for many float ops: '108 float ops (CONV_2D 52, ADD 20, ..., 3 more kinds)'."""
    counts = Counter(f.op for f in float_ops).most_common()
    shown = ", ".join(f"{name} {n}" for name, n in counts[:kinds])
    extra = len(counts) - kinds
    more = f", {extra} more kind{'s' if extra > 1 else ''}" if extra > 0 else ""
    return f"{len(float_ops)} float op{'s' if len(float_ops) != 1 else ''} ({shown}{more})"


def float_io(model: TfliteModel) -> list[Tensor]:
    """The model's inputs and outputs that are float (empty for ``--io int8``)."""
    return [t for t in model.inputs + model.outputs if t.dtype in FLOAT_TYPES]


def _op_dtypes(op: Op) -> list[str]:
    return [t.dtype for t in op.inputs + op.outputs]


def _touches_float(op: Op) -> bool:
    return bool(FLOAT_TYPES & set(_op_dtypes(op)))


def _is_float_io(op: Op, model: TfliteModel) -> bool:
    """A QUANTIZE of a float model input, or a DEQUANTIZE into a float model output."""
    if op.name == "QUANTIZE":
        return _only_float_in(op.inputs, model.inputs) and not _any_float(op.outputs)
    if op.name == "DEQUANTIZE":
        return _only_float_in(op.outputs, model.outputs) and not _any_float(op.inputs)
    return False


def _only_float_in(tensors: list[Tensor], graph_io: list[Tensor]) -> bool:
    # Identity, not index: control-flow subgraphs number their tensors from 0 too.
    io_ids = {id(t) for t in graph_io}
    return all(id(t) in io_ids for t in tensors if t.dtype in FLOAT_TYPES)


def _any_float(tensors: list[Tensor]) -> bool:
    return any(t.dtype in FLOAT_TYPES for t in tensors)


def _drop_island_edges(found: list[FloatOp]) -> list[FloatOp]:
    """QUANTIZE/DEQUANTIZE around a float op are its edges, not extra offenders."""
    compute = [f for f in found if f.op not in BOUNDARY_OPS]
    return compute or found
