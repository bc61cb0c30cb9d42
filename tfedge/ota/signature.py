"""A model's input/output signature read on the host, from the ``.tflite`` flatbuffer.

Everything else about signatures (comparing them, runtime versions) runs on devices too and
lives in :mod:`tfedge_device.signature`; it is re-exported here for host code.

Example:
    >>> sig = signature_from_tflite("kws_int8.tflite")
    >>> sig["inputs"][0]
    {'shape': [1, 49, 10, 1], 'dtype': 'int8', 'scale': ['0.0039'], 'zero_point': [-128]}
"""

from __future__ import annotations

from tfedge_device.signature import (
    LITERT_TO_TF,
    SCALE_RTOL,
    parse_version,
    quantization_notes,
    runtime_satisfies,
    signature_diff,
    signature_from_interpreter,
    tensor_entry,
    tf_equivalent,
)

__all__ = [
    "LITERT_TO_TF",
    "SCALE_RTOL",
    "parse_version",
    "quantization_notes",
    "runtime_satisfies",
    "signature_diff",
    "signature_from_interpreter",
    "signature_from_tflite",
    "tensor_entry",
    "tf_equivalent",
]


def signature_from_tflite(path) -> dict:
    """The signature of a .tflite file read on the host (no interpreter needed)."""
    from tfedge.convert.tflite_model import read_tflite

    model = read_tflite(path)
    entry = lambda t: tensor_entry(t.shape, t.dtype, t.scale, t.zero_point)  # noqa: E731
    return {
        "inputs": [entry(t) for t in model.inputs],
        "outputs": [entry(t) for t in model.outputs],
    }
