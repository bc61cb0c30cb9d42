"""Keras 3 activations tf_keras lacks (or defines differently), as tf_keras custom functions.

tf_keras has no ``hard_silu`` / ``hard_swish``, and its ``hard_sigmoid`` is ``0.2x + 0.5``
(clipped) where Keras 3's is ``relu6(x + 3) / 6``. The Keras 3 bridge translates those
activation strings to the functions below, registered with tf_keras as ``tfedge>hard_silu``
and ``tfedge>hard_sigmoid``. They are written as the pattern TensorFlow's TFLite converter
fuses (``x * relu6(x + 3) * (1/6)`` becomes one ``HARD_SWISH`` op).

``register()`` runs whenever tfedge imports tf_keras (``tfedge._tf.import_keras``), so every
model tfedge saved with these activations loads again, in any tfedge process.

Example:
    >>> CUSTOM_ACTIVATIONS["tfedge>hard_silu"]  # name -> function, for QuantizeConfigs
    <function hard_silu ...>
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PACKAGE = "tfedge"


def hard_sigmoid(x):
    """Keras 3's hard sigmoid: ``relu6(x + 3) / 6`` (not tf_keras's ``0.2x + 0.5``)."""
    import tensorflow as tf

    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def hard_silu(x):
    """Hard swish / hard SiLU: ``x * relu6(x + 3) / 6`` (one HARD_SWISH op in TFLite)."""
    import tensorflow as tf

    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


# Registered name (what a saved tf_keras config holds) -> function.
CUSTOM_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    f"{PACKAGE}>hard_silu": hard_silu,
    f"{PACKAGE}>hard_sigmoid": hard_sigmoid,
}

# Keras 3 activation name -> the tf_keras name that computes the same function.
KERAS3_TO_TF_KERAS = {
    "hard_silu": f"{PACKAGE}>hard_silu",
    "hard_swish": f"{PACKAGE}>hard_silu",
    "hard_sigmoid": f"{PACKAGE}>hard_sigmoid",
    "silu": "swish",
}


def register(tf_keras=None) -> None:
    """Register the functions with tf_keras (idempotent). ``tf_keras``: the imported module."""
    if tf_keras is None:
        from tfedge._tf import import_keras

        tf_keras = import_keras()  # registers through this function
        return
    from tfedge.io import keras3_layers, tf_keras_applications

    keras3_layers.register(tf_keras)  # and the layer twins (ConvNeXt's LayerScale)
    tf_keras_applications.register(tf_keras)  # and tf_keras's own unregistered ConvNeXt layers
    registered = tf_keras.saving.get_custom_objects()
    for full_name, fn in CUSTOM_ACTIVATIONS.items():
        if registered.get(full_name) is not fn:
            package, name = full_name.split(">")
            tf_keras.saving.register_keras_serializable(package=package, name=name)(fn)


def translate(name: str) -> str:
    """The tf_keras activation name for a Keras 3 activation name (unchanged if the same)."""
    return KERAS3_TO_TF_KERAS.get(name, name)
