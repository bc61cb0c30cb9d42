"""The layer names of a Keras model, for naming the ops of its TFLite conversion.

Kept apart from ``tfedge.convert.layer_names`` (which the verifier, and so targets and OTA,
import): reading a model file goes through ``tfedge.io.models``.

Example:
    >>> keras_layers("model.keras")
    KerasLayers(model='sequential', kinds={'conv2d': 'Conv2D', 'dense': 'Dense'})
"""

from __future__ import annotations

import os

from tfedge.convert.layer_names import KerasLayers
from tfedge.errors import TfedgeError
from tfedge.io.models import _model_configs, detect_format  # the config, read as data

# Wrappers tfedge's passes put around a user's layer (QAT, pruning, clustering): an op is
# named after the wrapped layer.
TFMOT_WRAPPERS = {"QuantizeWrapper", "QuantizeWrapperV2", "PruneLowMagnitude", "ClusterWeights"}


def keras_layers(model) -> KerasLayers | None:
    """The layers of ``model`` (a path, or an in-memory Keras model); None when unknown.

    A path's layers come from its JSON config, read as data (nothing is loaded): ``.keras``,
    ``.h5`` and tf_keras SavedModels. A Keras 3 export (SavedModel) keeps no layer names.
    """
    if isinstance(model, (str, os.PathLike)):
        return _layers_from_file(model)
    kinds: dict[str, str] = {}
    aliases: dict[str, str] = {}
    _walk_layers(model, kinds, aliases)
    return KerasLayers(str(getattr(model, "name", "")), kinds, aliases) if kinds else None


def _walk_layers(model, kinds: dict[str, str], aliases: dict[str, str]) -> None:
    for layer in getattr(model, "layers", []):
        kinds[layer.name] = type(layer).__name__
        inner = getattr(layer, "layer", None)  # wrappers (TimeDistributed, QAT, prune)
        if inner is not None and hasattr(inner, "name"):
            kinds.setdefault(inner.name, type(inner).__name__)
            if type(layer).__name__ in TFMOT_WRAPPERS:  # 'quant_conv1' is the user's 'conv1'
                kinds[layer.name] = type(inner).__name__
                aliases[layer.name] = inner.name
        _walk_layers(layer, kinds, aliases)


def _layers_from_file(path) -> KerasLayers | None:
    try:
        fmt = detect_format(path)
        configs = _model_configs(fmt) if fmt.kind != "tflite" else []
    except TfedgeError:
        return None
    kinds: dict[str, str] = {}
    for config in configs:
        _walk_config(config, kinds)
    if not configs or not kinds:
        return None
    root = configs[0] if isinstance(configs[0], dict) else {}
    config = root.get("config")
    model = root.get("name") or (config.get("name") if isinstance(config, dict) else "") or ""
    kinds.pop(model, None)
    return KerasLayers(str(model), kinds)


def _walk_config(node, kinds: dict[str, str]) -> None:
    """Record ``name -> class`` for each layer config under ``node``."""
    if isinstance(node, list):
        for item in node:
            _walk_config(item, kinds)
        return
    if not isinstance(node, dict):
        return
    kind, config = node.get("class_name"), node.get("config")
    if isinstance(kind, str) and isinstance(config, dict):
        name = node.get("name") or config.get("name")
        if isinstance(name, str) and name and not kind.endswith("Policy"):
            kinds.setdefault(name, kind)
    for key, value in node.items():
        if key != "compile_config":  # the optimizer's, loss's and metrics' names
            _walk_config(value, kinds)
