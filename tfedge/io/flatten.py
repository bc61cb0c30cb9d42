"""Nested tf_keras models in: inline every model used as a layer into one flat graph.

tfmot wraps layers, not models: a ``keras.applications`` backbone called as one layer (the
usual transfer-learning model) cannot be pruned, clustered or quantized as it is. Flattening
works on tf_keras's config format (inbound nodes ``[layer_name, node_index, tensor_index,
kwargs]``): each nested Functional or Sequential model, at any depth and called any number of
times, is replaced by its own layers, its inputs mapped to the tensors it was called on and its
outputs to its inner output tensors. The flat model is built with ``from_config``, gets the
original weights layer by layer (a backbone called twice becomes shared layers), and is checked
on seeded inputs against the nested model; otherwise the first layer that differs is named.

Layer names stay the user's; an inner name that collides with another is prefixed with its
model's name (``backbone_conv1``). Data-augmentation layers (identity at inference) are dropped;
``dropped_layers(model)`` lists them for reports.

Example:
    >>> flat = flatten_model(nested)            # a verified flat tf_keras Functional model
    >>> dropped_layers(flat)
    ['random_flip (RandomFlip)']
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfedge.errors import ModelLoadError

MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})
# Identity at inference (training=False): dropped while flattening.
AUGMENTATION_LAYERS = frozenset(
    {
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomContrast",
        "RandomTranslation",
        "RandomBrightness",
        "RandomHeight",
        "RandomWidth",
        "RandomCrop",  # identity only when the crop is the input's size (checked below)
    }
)
CONSTANT = "_CONSTANT_VALUE"  # tf_keras's node entry for a constant first argument

_DROPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def needs_flattening(model) -> bool:
    """True if ``model`` (tf_keras) has a nested model or a data-augmentation layer."""
    return any(_is_model(layer) or _droppable(layer) for layer in getattr(model, "layers", []))


def dropped_layers(model) -> list[str]:
    """'name (Type)' of the augmentation layers flattening removed from ``model``."""
    try:
        return list(_DROPPED.get(model, []))
    except TypeError:
        return []


def flatten_model(model, verify: bool = True):
    """One flat tf_keras Functional model with ``model``'s weights and outputs.

    ``model`` is returned as it is when nothing needs flattening.
    """
    if not needs_flattening(model):
        return model
    flattener = _Flattener(model)
    config = flattener.flat_config()
    _check_refs(config)
    flat = _build(config, flattener.classes)
    for name, layer in flattener.origin.items():
        weights = layer.get_weights()
        if weights:
            flat.get_layer(name).set_weights(weights)
    if verify:
        verify_flat(model, flat, flattener.origin)
    try:
        _DROPPED[flat] = list(flattener.dropped)
    except TypeError:
        pass
    return flat


# ---- config surgery ------------------------------------------------------------------------


@dataclass
class _FlatLayer:
    entry: dict
    nodes: list = field(default_factory=list)


class _Flattener:
    def __init__(self, model) -> None:
        self.model = model
        self.layers: dict[int, _FlatLayer] = {}  # id(original layer) -> flat entry
        self.origin: dict[str, Any] = {}  # flat name -> original layer (for its weights)
        self.dropped: list[str] = []
        self.classes: dict[str, type] = {}
        self.names: set[str] = set()

    def flat_config(self) -> dict:
        config = graph_config(self.model)
        # The outer model's own layer names win: reserve them before inlining anything.
        for entry in config["layers"]:
            layer = _get_layer(self.model, entry["name"])
            if not _is_model(layer) and not _droppable(layer):
                self.names.add(entry["name"])
        input_refs = []
        for name, _, _ in _endpoints(config["input_layers"]):
            entry = next(e for e in config["layers"] if e["name"] == name)
            self._add_layer(_get_layer(self.model, name), entry, prefix="")
            input_refs.append([name, 0, 0])
        outputs = self._inline(self.model, config, input_refs, prefix="")
        return {
            "name": config.get("name", self.model.name),
            "layers": [dict(f.entry, inbound_nodes=f.nodes) for f in self.layers.values()],
            "input_layers": input_refs,
            "output_layers": outputs,
        }

    def _inline(self, model, config: dict, input_refs: list, prefix: str) -> list:
        """Add ``model``'s layers called on ``input_refs`` (flat refs); return its outputs."""
        # (layer name, node index) in this config -> ("node", flat name, flat node index)
        # or ("tensors", [flat refs]) for inputs, nested models and dropped layers.
        resolved: dict[tuple, tuple] = {}
        for (name, node, _), ref in zip(_endpoints(config["input_layers"]), input_refs):
            resolved[(name, node)] = ("tensors", [ref])
        pending = []
        for entry in config["layers"]:
            if entry["class_name"] == "InputLayer":
                continue
            skip = skipped_nodes(_get_layer(model, entry["name"]))
            for k, node in enumerate(entry.get("inbound_nodes", [])):
                pending.append((entry, k + skip, node))
        while pending:
            left = []
            for entry, k, node in pending:
                try:
                    mapped = _map_refs(node, lambda r: _resolve(resolved, r))
                except (KeyError, IndexError):
                    left.append((entry, k, node))
                    continue
                resolved[(entry["name"], k)] = self._call(model, entry, mapped, prefix)
            if len(left) == len(pending):
                raise ModelLoadError(
                    f"cannot flatten '{model.name}': its graph refers to tensors it does not hold",
                    "save the model again, or pass a flat Functional model",
                )
            pending = left
        return [_resolve(resolved, ref) for ref in _endpoints(config["output_layers"])]

    def _call(self, model, entry: dict, node, prefix: str) -> tuple:
        layer = _get_layer(model, entry["name"])
        refs = _refs_in(node)
        if _is_model(layer):
            return ("tensors", self._inline(layer, graph_config(layer), refs, layer.name))
        if _droppable(layer):
            described = f"{layer.name} ({type(layer).__name__})"
            if described not in self.dropped:
                self.dropped.append(described)
            return ("tensors", refs[:1])
        flat = self.layers.get(id(layer)) or self._add_layer(layer, entry, prefix)
        flat.nodes.append(node)
        return ("node", flat.entry["name"], len(flat.nodes) - 1)

    def _add_layer(self, layer, entry: dict, prefix: str) -> _FlatLayer:
        name = entry["name"]
        if prefix and name in self.names:
            name = self._unique(f"{prefix}_{name}")
        self.names.add(name)
        new = copy.deepcopy({k: v for k, v in entry.items() if k != "inbound_nodes"})
        new["name"] = name
        new["config"] = dict(new["config"], name=name)
        flat = _FlatLayer(new)
        self.layers[id(layer)] = flat
        self.origin[name] = layer
        self.classes[type(layer).__name__] = type(layer)
        return flat

    def _unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self.names:
            candidate, i = f"{name}_{i}", i + 1
        return candidate


def _get_layer(model, name: str):
    for layer in [*getattr(model, "_input_layers", []), *model.layers]:
        if layer.name == name:
            return layer
    return model.get_layer(name)


def _resolve(resolved: dict, ref) -> list:
    found = resolved[(ref[0], ref[1])]
    if found[0] == "node":
        return [found[1], found[2], ref[2]]
    return list(found[1][ref[2]])


def graph_config(model) -> dict:
    """The functional config (layers with inbound nodes) of a tf_keras Functional/Sequential."""
    if type(model).__name__ != "Sequential":
        return model.get_config()
    inputs = list(getattr(model, "_input_layers", None) or [])
    if not getattr(model, "_is_graph_network", False) or len(inputs) != 1:
        raise ModelLoadError(
            f"cannot flatten the Sequential model '{model.name}': it has no input shape",
            "give its first layer an input shape (keras.Input) before using it as a layer",
        )
    from tfedge._tf import import_keras

    k2 = import_keras()
    first = inputs[0]
    layers = [
        {"class_name": "InputLayer", "config": first.get_config(), "name": first.name},
    ]
    previous = [first.name, 0, 0]
    for layer in model.layers:
        entry = dict(k2.layers.serialize(layer), name=layer.name)
        entry["inbound_nodes"] = [[[*previous, {}]]]
        layers.append(entry)
        previous = [layer.name, skipped_nodes(layer), 0]
    return {
        "name": model.name,
        "layers": layers,
        "input_layers": [[first.name, 0, 0]],
        "output_layers": [previous],
    }


def skipped_nodes(layer) -> int:
    """1 for a model built on its own Input: its first node is internal, not in configs."""
    from tf_keras.src.engine import functional

    return int(functional._should_skip_first_node(layer))


def _is_ref(value) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) in (3, 4)
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and (len(value) == 3 or isinstance(value[3], dict))
    )


def _map_refs(node, fn):
    """``node`` with every tensor reference (and those in call kwargs) replaced by fn(ref)."""
    if _is_ref(node):
        kwargs = _map_refs(node[3], fn) if len(node) == 4 else None
        if node[0] == CONSTANT:
            head = list(node[:3])
        else:
            head = list(fn(node))[:3]
        return head + ([kwargs] if kwargs is not None else [])
    if isinstance(node, (list, tuple)):
        return [_map_refs(item, fn) for item in node]
    if isinstance(node, dict):
        return {k: _map_refs(v, fn) for k, v in node.items()}
    return node


def _refs_in(node) -> list:
    """The tensor references of a node, in order (constants excluded)."""
    if _is_ref(node):
        return [] if node[0] == CONSTANT else [list(node[:3])]
    if isinstance(node, (list, tuple)):
        return [r for item in node for r in _refs_in(item)]
    if isinstance(node, dict):
        return [r for v in node.values() for r in _refs_in(v)]
    return []


def _endpoints(value: list) -> list:
    return [value] if value and isinstance(value[0], str) else value


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_model(layer) -> bool:
    """A Functional model, or a Sequential one built on an input: a graph to inline."""
    return type(layer).__name__ in MODEL_CLASSES and bool(
        getattr(layer, "_is_graph_network", False)
    )


def _droppable(layer) -> bool:
    kind = type(layer).__name__
    if kind not in AUGMENTATION_LAYERS:
        return False
    if kind != "RandomCrop":
        return True
    try:
        return tuple(layer.input_shape) == tuple(layer.output_shape)
    except (AttributeError, RuntimeError):
        return False


def _check_refs(config: dict) -> None:
    """Every reference names a node the flat config holds (tf_keras would loop forever)."""
    nodes = {e["name"]: max(1, len(e["inbound_nodes"])) for e in config["layers"]}
    refs = [r for e in config["layers"] for r in _refs_in(e["inbound_nodes"])]
    refs += [list(r) for r in config["output_layers"]]
    bad = [r for r in refs if r[0] not in nodes or not 0 <= r[1] < nodes[r[0]]]
    if bad:
        raise ModelLoadError(
            f"cannot flatten the model: tensor {bad[0][:3]} is not in the flat graph",
            "report the model to tfedge; convert it directly with `tfedge convert` meanwhile",
        )


def _build(config: dict, classes: dict[str, type]):
    from tfedge._tf import import_keras

    k2 = import_keras()
    try:
        with k2.utils.custom_object_scope(dict(classes)):
            return k2.Model.from_config(config)
    except Exception as exc:
        raise ModelLoadError(
            f"tf_keras could not rebuild the flattened model: {_first_line(exc)}",
            "convert the model directly with `tfedge convert` or a post-training recipe",
        ) from exc


# ---- verification --------------------------------------------------------------------------


def verify_flat(nested, flat, origin: dict[str, Any] | None = None) -> None:
    """ModelLoadError naming the first flat layer that differs, unless both models agree."""
    from tfedge.io.keras3_bridge import outputs_match, predict_outputs, seeded_inputs

    x = seeded_inputs(nested, count=8)
    if outputs_match(predict_outputs(nested, x), predict_outputs(flat, x)):
        return
    layer = _first_diverging_layer(flat, origin or {}, x)
    raise ModelLoadError(
        f"the flattened model differs from the nested one (first at layer '{layer}')",
        "convert the model directly with `tfedge convert` or a post-training recipe; "
        "report the layer to tfedge",
    )


def _first_diverging_layer(flat, origin: dict[str, Any], x) -> str:
    """The first flat layer whose output differs from its original layer's on the same input."""
    from tfedge._tf import import_keras
    from tfedge.io.keras3_bridge import outputs_match

    k2 = import_keras()
    for layer in flat.layers:
        original = origin.get(layer.name)
        if original is None or type(layer).__name__ == "InputLayer":
            continue
        for k in range(len(layer.inbound_nodes)):
            probe = k2.Model(flat.inputs, [layer.get_input_at(k), layer.get_output_at(k)])
            inputs, output = probe(x if len(x) > 1 else x[0], training=False)
            expected = original(inputs, training=False)
            if not outputs_match(
                [np.asarray(o) for o in _as_list(output)],
                [np.asarray(o) for o in _as_list(expected)],
            ):
                return layer.name
    return flat.layers[-1].name


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
