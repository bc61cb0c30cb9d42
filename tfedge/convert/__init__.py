"""Conversion to full-integer TFLite.

The converter worker, the one verifier, the ``.tflite`` reader.

Example:
    >>> from tfedge.convert import convert
    >>> convert("model.keras", "model.tflite", calib="train.npz").full_integer
    True
"""

from __future__ import annotations

from tfedge.convert.converter import ConvertResult, convert

__all__ = ["ConvertResult", "convert"]
