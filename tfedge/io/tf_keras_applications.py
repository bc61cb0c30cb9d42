"""Layers of tf_keras's own ``applications`` that tf_keras cannot load back by itself.

tf_keras's ConvNeXt defines ``LayerScale`` and ``StochasticDepth`` without registering them, so
a model saved with a tf_keras ``ConvNeXtTiny`` inside does not load again, in tf_keras itself
either (``'str' object is not callable``: the layer comes back as its class name). tfedge
registers them under the names the file gives, unless a class already holds the name (the
user's own registration wins).
"""

from __future__ import annotations

import importlib

# module of tf_keras -> the unregistered layer classes a saved model names
UNREGISTERED = {"tf_keras.src.applications.convnext": ("LayerScale", "StochasticDepth")}


def register(tf_keras) -> None:
    """Make the classes loadable by name (idempotent). ``tf_keras``: the imported module."""
    registered = tf_keras.saving.get_custom_objects()
    for module_name, names in UNREGISTERED.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # another tf_keras layout: nothing to register
            continue
        for name in names:
            cls = getattr(module, name, None)
            if cls is not None:
                registered.setdefault(name, cls)
