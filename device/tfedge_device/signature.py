"""A model's input/output signature (shape, dtype, scale, zero point) and runtime versions.

The device reads a signature from a live interpreter (:func:`signature_from_interpreter`);
the host reads the same plain dict from the flatbuffer (``tfedge.ota.signature``), so a
signature stored in a manifest or in signed TUF metadata can be compared with the model
actually loaded on the device. Standard library only.

Example:
    >>> sig = signature_from_interpreter(interp)
    >>> sig["inputs"][0]
    {'shape': [1, 49, 10, 1], 'dtype': 'int8', 'scale': ['0.0039'], 'zero_point': [-128]}
    >>> signature_diff(sig, other_sig)
    ['input 0 shape [1, 49, 10, 1] -> [1, 98, 10, 1]']
"""

from __future__ import annotations

import re

# ai-edge-litert numbers its own releases; the converter stamps TensorFlow-style minimum
# versions. Each LiteRT release maps to the TensorFlow Lite runtime it was cut from
# (conservatively the older one when a release straddles two). Later releases inherit the
# last known value, which only ever under-states what a device can run.
LITERT_TO_TF = (
    ((1, 0), (2, 18, 0)),
    ((1, 2), (2, 19, 0)),
    ((1, 3), (2, 20, 0)),
    ((2, 1), (2, 21, 0)),
)


# Scales within 0.1 % are the same: for int8 values (|q| <= 128) the quantized value moves by
# at most 0.128 of a step, so an application quantizing with either scale gets the same input.
SCALE_RTOL = 1e-3


def tensor_entry(shape, dtype: str, scales, zero_points) -> dict:
    """One tensor's entry. Scales are strings (``repr`` of the float): TUF's canonical JSON,
    which signs the metadata, has no floats."""
    return {
        "shape": [int(d) for d in shape],
        "dtype": str(dtype),
        "scale": [repr(float(s)) for s in (scales or [])],
        "zero_point": [int(z) for z in (zero_points or [])],
    }


def signature_from_interpreter(interp) -> dict:
    """The signature of a loaded interpreter (device side)."""

    def entry(detail):
        q = detail.get("quantization_parameters") or {}
        dtype = getattr(detail["dtype"], "__name__", str(detail["dtype"]))
        return tensor_entry(
            detail["shape"], dtype, list(q.get("scales", [])), list(q.get("zero_points", []))
        )

    return {
        "inputs": [entry(d) for d in interp.get_input_details()],
        "outputs": [entry(d) for d in interp.get_output_details()],
    }


def signature_diff(old: dict | None, new: dict | None) -> list[str]:
    """What an application would notice: changed input/output count, shape or dtype, or input
    quantization (the app quantizes its data with it). Empty when compatible.

    Output scale and zero point may change with retraining; an application reads them from
    the interpreter, so they are reported by :func:`quantization_notes` instead.
    """
    if not old or not new:
        return []
    changes = []
    for side, keys in (
        ("inputs", ("shape", "dtype", "scale", "zero_point")),
        ("outputs", ("shape", "dtype")),
    ):
        changes += _side_diff(side, old.get(side, []), new.get(side, []), keys)
    return changes


def quantization_notes(old: dict | None, new: dict | None) -> list[str]:
    """Changed output scale or zero point (informational)."""
    if not old or not new or len(old.get("outputs", [])) != len(new.get("outputs", [])):
        return []
    return _side_diff("outputs", old["outputs"], new["outputs"], ("scale", "zero_point"))


def _side_diff(side: str, a: list, b: list, keys) -> list[str]:
    if len(a) != len(b):
        return [f"{len(a)} {side} -> {len(b)}"]
    return [
        f"{side[:-1]} {i} {key} {x.get(key)} -> {y.get(key)}"
        for i, (x, y) in enumerate(zip(a, b))
        for key in keys
        if not _same(x.get(key), y.get(key))
    ]


def _same(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b))
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return abs(x - y) <= SCALE_RTOL * max(abs(x), abs(y), 1e-12)


# ---------------------------------------------------------------- runtime versions
def parse_version(text: str | None) -> tuple[int, ...] | None:
    """'2.14.0' -> (2, 14, 0); '1.4.0rc1' -> (1, 4, 0); None or garbage -> None."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", text or "")
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def tf_equivalent(runtime_name: str, version: str) -> tuple[int, ...] | None:
    """The TensorFlow Lite runtime version a runtime release corresponds to.

    ``tflite-runtime`` and ``tensorflow`` share TensorFlow's numbering; ``ai-edge-litert``
    restarted at 1.0 (cut from TF 2.18).

    Example:
        >>> tf_equivalent("ai-edge-litert", "2.3.0"), tf_equivalent("tflite-runtime", "2.14.0")
        ((2, 21, 0), (2, 14, 0))
    """
    parsed = parse_version(version)
    if parsed is None or runtime_name != "ai-edge-litert":
        return parsed
    known = [tf for litert, tf in LITERT_TO_TF if parsed[:2] >= litert]
    return known[-1] if known else None


def runtime_satisfies(runtime_name: str, version: str, minimum: str | None) -> bool:
    """Whether runtime ``runtime_name`` ``version`` can run a model stamped with ``minimum``."""
    needed = parse_version(minimum)
    if needed is None:
        return True
    have = tf_equivalent(runtime_name, version)
    return have is not None and _pad(have) >= _pad(needed)


def _pad(version: tuple[int, ...]) -> tuple[int, ...]:
    return (version + (0, 0, 0))[:3]
