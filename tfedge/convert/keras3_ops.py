"""Keras 3 ops traced, for conversion, in a form TFLite's int8 quantizer takes.

Keras 3's layer normalization (``keras.ops.layer_normalization``, behind ``LayerNormalization``:
ConvNeXt, every transformer block) computes its shift as ``-mean * inv + beta``. The converter
keeps that negation as a float ``NEG`` between a ``DEQUANTIZE`` and a ``QUANTIZE`` (TFLite's
quantizer has no int8 ``NEG``), so such a model is never full-int8 (ConvNeXtTiny: 23 float ops).
``beta - mean * inv`` is the same float32 value bit for bit (negation is exact, and
``a + (-b) == a - b``) and converts to an int8 ``SUB``. tfedge traces every Keras 3 model it
converts or exports for conversion inside ``integer_friendly_keras3_ops()``; tf_keras models
are not concerned (their ``LayerNormalization`` computes without a negation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def integer_friendly_keras3_ops() -> Iterator[None]:
    """Within the block, Keras 3 traces layer normalization without a negation (same values).

    Does nothing when Keras 3 is not installed or its private function moved (a newer Keras):
    the conversion then shows the float op as before.
    """
    try:
        from keras.src.ops import nn
    except ImportError:
        yield
        return
    original = getattr(nn, "_layer_normalization", None)
    if original is None or not hasattr(nn, "moments") or hasattr(original, "without_negation"):
        yield  # nothing to swap, or an outer block already did
        return
    nn._layer_normalization = _layer_normalization_without_negation(nn, original)
    try:
        yield
    finally:
        nn._layer_normalization = original


def _layer_normalization_without_negation(nn, original):
    from keras.src import backend

    def layer_normalization(x, gamma=None, beta=None, axis=-1, epsilon=None, rms_scaling=False):
        if rms_scaling or backend.backend() != "tensorflow":
            return original(
                x, gamma=gamma, beta=beta, axis=axis, epsilon=epsilon, rms_scaling=rms_scaling
            )
        epsilon = backend.epsilon() if epsilon is None else epsilon
        original_dtype = backend.standardize_dtype(x.dtype)
        x = backend.convert_to_tensor(x, dtype=backend.result_type(x.dtype, "float32"))
        axes = sorted([axis] if isinstance(axis, int) else axis)
        rank = len(x.shape)
        shape = [1] * rank
        for dim in axes:
            shape[dim] = x.shape[dim]

        def broadcast(v):
            if v is None:
                return None
            v = backend.convert_to_tensor(v, x.dtype)
            return (
                backend.numpy.reshape(v, shape)
                if len(v.shape) != rank and axes != [rank - 1]
                else v
            )

        mean, variance = nn.moments(x, axes=axes, keepdims=True)
        inv = backend.math.rsqrt(variance + epsilon)
        gamma, beta = broadcast(gamma), broadcast(beta)
        if gamma is not None:
            inv = inv * gamma
        shift = mean * inv
        outputs = x * inv + (beta - shift) if beta is not None else x * inv - shift
        return backend.cast(outputs, original_dtype)

    layer_normalization.without_negation = True
    return layer_normalization
