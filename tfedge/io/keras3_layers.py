"""tf_keras twins of Keras 3 layers that tf_keras lacks: ConvNeXt's ``LayerScale``.

``keras.applications.ConvNeXt*`` multiplies each block's residual branch by a learned
per-channel ``gamma`` (``keras.src.applications.convnext.LayerScale``, ``x * gamma``). tf_keras
has no such layer, so the Keras 3 bridge builds the twin below, registered with tf_keras as
``tfedge>LayerScale`` (same arguments, same weight, same result; the bridge checks the outputs
on seeded inputs). ``register()`` runs whenever tfedge imports tf_keras, so a model tfedge saved
with it loads again in any tfedge process; ``register_keras3()`` (run by the bridge) maps the
name back to Keras 3's class for the way out.

Example:
    >>> twin_class("LayerScale", tf_keras)(1e-6, 96)   # a tf_keras layer computing x * gamma
"""

from __future__ import annotations

import functools

PACKAGE = "tfedge"
# Keras 3 class name -> the name tf_keras registers its twin under.
TWINS = {"LayerScale": f"{PACKAGE}>LayerScale"}


def twin_class(name: str, tf_keras):
    """The tf_keras twin of the Keras 3 layer class ``name``, or None."""
    return _layer_scale(tf_keras) if name == "LayerScale" else None


def register(tf_keras) -> None:
    """Register every twin with ``tf_keras`` (idempotent)."""
    for name in TWINS:
        twin_class(name, tf_keras)


def register_keras3() -> None:
    """Let Keras 3 read a twin back as its own layer: ``tfedge>LayerScale`` in a tf_keras file
    is ConvNeXt's ``LayerScale`` (``tfedge.io.keras3_export`` writes the optimized model back as
    Keras 3; the ``.keras`` file it saves names Keras 3's class, so it loads without tfedge)."""
    import keras
    from keras.src.applications.convnext import LayerScale

    keras.saving.get_custom_objects()[TWINS["LayerScale"]] = LayerScale


@functools.cache
def _layer_scale(tf_keras):
    @tf_keras.saving.register_keras_serializable(package=PACKAGE, name="LayerScale")
    class LayerScale(tf_keras.layers.Layer):
        """``x * gamma``: a learned scale per channel (the last axis)."""

        def __init__(self, init_values: float, projection_dim: int, **kwargs):
            super().__init__(**kwargs)
            self.init_values = init_values
            self.projection_dim = projection_dim

        def build(self, input_shape):
            self.gamma = self.add_weight(
                name="gamma",
                shape=(self.projection_dim,),
                initializer=tf_keras.initializers.Constant(self.init_values),
                trainable=True,
            )
            super().build(input_shape)

        def call(self, inputs):
            return inputs * self.gamma

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {
                **super().get_config(),
                "init_values": self.init_values,
                "projection_dim": self.projection_dim,
            }

    return LayerScale
