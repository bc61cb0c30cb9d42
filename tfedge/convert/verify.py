"""Prove a TFLite model is full-integer: every op computes in integer.

Integer index and shape tensors (int32, int64) are fine; float32 is allowed only where the
model converts its inputs and outputs (``QUANTIZE``/``DEQUANTIZE`` at the boundary) when the
caller asked for ``--io float32``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tfedge.convert.tflite_model import FLOAT_TYPES, Op, TfliteModel

BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


@dataclass
class FloatOp:
    """An op that still computes in float, and the layer it came from."""

    op: str
    layer: str
    dtypes: list[str]

    def describe(self) -> str:
        return f"{self.op} (layer '{self.layer}')" if self.layer else self.op


def find_float_ops(model: TfliteModel, io: str = "int8") -> list[FloatOp]:
    """Ops of ``model`` that compute in float; empty for a full-integer model."""
    found = []
    for op in model.ops:
        dtypes = _op_dtypes(op)
        if not FLOAT_TYPES & set(dtypes):
            continue
        if op.name in BOUNDARY_OPS and _is_allowed_boundary(op, model, io):
            continue
        found.append(FloatOp(op.name, op.layer, dtypes))
    return _drop_island_edges(found)


def _op_dtypes(op: Op) -> list[str]:
    return [t.dtype for t in op.inputs + op.outputs]


def _is_allowed_boundary(op: Op, model: TfliteModel, io: str) -> bool:
    if io != "float32":
        return False
    graph_io = {t.index for t in model.inputs + model.outputs}
    return any(t.index in graph_io for t in op.inputs + op.outputs)


def _drop_island_edges(found: list[FloatOp]) -> list[FloatOp]:
    """QUANTIZE/DEQUANTIZE around a float op are its edges, not extra offenders."""
    compute = [f for f in found if f.op not in BOUNDARY_OPS]
    return compute or found
