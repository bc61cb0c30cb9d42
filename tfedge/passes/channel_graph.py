"""Which output channels of a tf_keras model must be removed together (a dependency graph).

Every tensor's last axis gets a list of labels, one per position: a label is one output channel
of a producer (Conv1D, Conv2D, Dense, SeparableConv2D), or ``None`` for a position that cannot
change (a model input, what an unknown layer emits). Layers that pass channels through
(activations, BatchNormalization, DepthwiseConv2D, pooling, padding, Flatten, ...) copy their
input's labels; Add, Subtract, Multiply, Maximum and Average tie their inputs' labels position
by position; Concatenate on the last axis joins them. Tied labels form classes (union-find);
the producers linked through them form a group, pruned as one. A group touching a model output,
a model input or a layer the graph cannot follow is not prunable, with the reason recorded.

Example:
    >>> graph = ChannelGraph(model)
    >>> [(g.id, g.size, g.prunable) for g in graph.groups]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Label = int | None

PRODUCERS = ("Conv1D", "Conv2D", "Dense", "SeparableConv2D")
COUPLING = ("Add", "Subtract", "Multiply", "Maximum", "Average")
PASS_THROUGH = (
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "PReLU",
    "ThresholdedReLU",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "MaxPooling1D",
    "MaxPooling2D",
    "AveragePooling1D",
    "AveragePooling2D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "Cropping1D",
    "Cropping2D",
    "UpSampling1D",
    "UpSampling2D",
    "BatchNormalization",
    "LayerNormalization",
    "DepthwiseConv2D",
    "Reshape",
    "Flatten",
)
_CROSS_CHANNEL_ACTIVATIONS = ("softmax", "log_softmax")


@dataclass
class ChannelGroup:
    """Output channels removed together. ``members[layer][c]`` is the group channel that
    channel ``c`` of producer ``layer`` belongs to; ``size`` group channels in all."""

    id: int
    members: dict[str, list[int]]
    size: int
    prunable: bool = True
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "layers": list(self.members),
            "channels": self.size,
            "prunable": self.prunable,
            "reasons": self.reasons,
        }


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class ChannelGraph:
    """Labels of every layer's output (``outputs``) and input (``inputs``), the producers'
    labels and the groups, read from ``model``'s config (a flat Sequential or Functional)."""

    def __init__(self, model) -> None:
        self.model = model
        self.uf = _UnionFind()
        self.fixed = self.uf.add()  # the class of positions that must stay
        self.blocked: dict[int, list[str]] = {}  # label -> reasons
        self.inputs: dict[str, list[list[Label]]] = {}
        self.outputs: dict[str, list[Label]] = {}
        self.producers: dict[str, list[int]] = {}
        self.order: list[str] = []
        self._read(model)
        self.groups = self._groups()

    # -- reading -------------------------------------------------------------------------------
    def _read(self, model) -> None:
        config = model.get_config()
        entries = config.get("layers", [])
        names = {e["config"]["name"] for e in entries}
        previous: list[str] = []
        for entry in entries:
            name = entry["config"]["name"]
            if "inbound_nodes" in entry:
                refs = _layer_refs(entry["inbound_nodes"], names)
                many_nodes = len(entry["inbound_nodes"]) > 1
            else:  # Sequential: a chain
                refs, many_nodes = previous, False
            previous = [name]
            self.order.append(name)
            if entry["class_name"] == "InputLayer":  # a Sequential's is not in model.layers
                options = entry["config"]
                shape = options.get("batch_input_shape") or options.get("batch_shape")
                self.outputs[name] = [None] * _channels(shape)
                continue
            layer = model.get_layer(name)
            fresh: list[Label] = [None] * (0 if refs else _in_channels(layer))
            ins = [self.outputs[r] for r in refs] if refs else [fresh]
            self.inputs[name] = ins
            if many_nodes:
                self.outputs[name] = self._unknown(name, ins, "is called more than once", layer)
            else:
                try:
                    self.outputs[name] = self._layer(name, entry["class_name"], layer, ins)
                except ValueError as error:  # an unknown size, mismatched channels
                    self.outputs[name] = self._unknown(
                        name, ins, f"cannot be followed: {error}", layer
                    )
        last = [r[0] for r in config.get("output_layers", [])] or previous
        for name in last:
            self._block(self.outputs[name], f"'{name}' is a model output")

    def _layer(self, name: str, kind: str, layer, ins: list[list[Label]]) -> list[Label]:
        why = _unsupported(kind, layer, ins)
        if why:
            return self._unknown(name, ins, why, layer)
        if kind in PRODUCERS:
            labels = [self.uf.add() for _ in range(_channels(layer.output.shape))]
            self.producers[name] = labels
            if layer.get_config().get("activation") in _CROSS_CHANNEL_ACTIVATIONS:
                self._block(labels, f"'{name}' applies {layer.activation.__name__} across channels")
            return list(labels)
        if kind in COUPLING:
            for other in ins[1:]:
                for a, b in zip(ins[0], other, strict=True):
                    self._tie(a, b)
            return list(ins[0])
        if kind == "Concatenate":
            if _is_last_axis(layer.axis, len(layer.output.shape)):
                return [label for labels in ins for label in labels]
            for other in ins[1:]:
                for a, b in zip(ins[0], other, strict=True):
                    self._tie(a, b)
            return list(ins[0])
        if kind == "DepthwiseConv2D":
            return [label for label in ins[0] for _ in range(layer.depth_multiplier)]
        if kind == "Flatten":
            return list(ins[0]) * _positions(layer.input.shape)
        return list(ins[0])

    def _unknown(self, name: str, ins: list[list[Label]], why: str, layer) -> list[Label]:
        for labels in ins:
            self._block(labels, f"'{name}' {why}")
        try:
            return [None] * _channels(layer.output.shape)
        except (AttributeError, TypeError, ValueError):  # several outputs
            return []

    def _tie(self, a: Label, b: Label) -> None:
        self.uf.union(self.fixed if a is None else a, self.fixed if b is None else b)

    def _block(self, labels: Sequence[Label], reason: str) -> None:
        for label in labels:
            if label is not None:
                reasons = self.blocked.setdefault(label, [])
                if reason not in reasons:
                    reasons.append(reason)

    # -- groups --------------------------------------------------------------------------------
    def _groups(self) -> list[ChannelGroup]:
        fixed = self.uf.find(self.fixed)
        component: dict[int, int] = {}  # class root -> group index
        groups: list[ChannelGroup] = []
        classes: list[dict[int, int]] = []  # per group: class root -> group channel
        for name in self.order:
            labels = self.producers.get(name)
            if labels is None:
                continue
            roots = [self.uf.find(label) for label in labels]
            found = {component[r] for r in roots if r in component}
            if not found:
                groups.append(ChannelGroup(len(groups), {}, 0))
                classes.append({})
                found = {len(groups) - 1}
            index = min(found)
            for other in sorted(found - {index}, reverse=True):
                self._merge(groups, classes, component, index, other)
            group, channel_of = groups[index], classes[index]
            for root in roots:
                if root not in channel_of:
                    channel_of[root] = len(channel_of)
                component[root] = index
            group.members[name] = [channel_of[r] for r in roots]
            group.size = len(channel_of)
            for label, root in zip(labels, roots, strict=True):
                for reason in self.blocked.get(label, []):
                    _add_reason(group, reason)
                if root == fixed:
                    _add_reason(group, "its channels are tied to a model input")
        kept = [g for g in groups if g.members]
        for i, group in enumerate(kept):
            group.id = i
            group.prunable = not group.reasons
        return kept

    @staticmethod
    def _merge(groups, classes, component, index: int, other: int) -> None:
        target, source = groups[index], groups[other]
        channel_of = classes[index]
        remap = {}
        for root, channel in classes[other].items():
            remap[channel] = channel_of.setdefault(root, len(channel_of))
            component[root] = index
        for name, channels in source.members.items():
            target.members[name] = [remap[c] for c in channels]
        for reason in source.reasons:
            _add_reason(target, reason)
        target.size = len(channel_of)
        source.members, source.reasons = {}, []
        classes[other] = {}

    def label_kept(self, keep: dict[int, set[int]]):
        """A function telling whether a label survives when each group ``g`` keeps the
        group channels ``keep[g]`` (groups absent from ``keep`` keep everything)."""
        survives: dict[int, bool] = {}
        for group in self.groups:
            if group.id not in keep:
                continue
            for name, channels in group.members.items():
                for label, channel in zip(self.producers[name], channels, strict=True):
                    survives[label] = channel in keep[group.id]
        return lambda label: label is None or survives.get(label, True)


def _add_reason(group: ChannelGroup, reason: str) -> None:
    if reason not in group.reasons:
        group.reasons.append(reason)


def _unsupported(kind: str, layer, ins: list[list[Label]]) -> str | None:
    """Why the graph cannot follow channels through ``layer`` (None when it can)."""
    if kind not in PRODUCERS + COUPLING + PASS_THROUGH + ("Concatenate",):
        return f"is a {kind} the channel graph does not follow"
    options = layer.get_config()
    if options.get("data_format", "channels_last") != "channels_last":
        return "is channels_first"
    if options.get("groups", 1) != 1:
        return "is a grouped convolution"
    activation = options.get("activation")
    if (activation in _CROSS_CHANNEL_ACTIVATIONS and kind not in PRODUCERS) or kind == "Softmax":
        return f"applies {activation} across channels"
    if kind in COUPLING and len({len(labels) for labels in ins}) != 1:
        return "broadcasts its inputs over the channel axis"
    if kind == "BatchNormalization" and not _is_last_axis(layer.axis, len(layer.input.shape)):
        return "normalizes another axis than the channels"
    if kind == "LayerNormalization" and _is_last_axis(layer.axis, len(layer.input.shape), True):
        return "normalizes across channels"
    if kind == "PReLU" and not _is_shared_but_channels(layer):
        return "has per-position PReLU slopes"
    if kind == "Reshape" and not _keeps_last_axis(layer):
        return "moves the channel axis"
    if kind == "Dense" and len(layer.input.shape) < 2:
        return "has no feature axis"
    return None


def _is_last_axis(axis, rank: int, any_of: bool = False) -> bool:
    axes = [a % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])]
    return (rank - 1 in axes) if any_of else axes == [rank - 1]


def _is_shared_but_channels(layer) -> bool:
    rank = len(layer.input.shape)
    shared = set(layer.shared_axes or [])
    return shared == set(range(1, rank - 1))


def _keeps_last_axis(layer) -> bool:
    before, after = layer.input.shape, layer.output.shape
    return len(after) >= 2 and before[-1] is not None and before[-1] == after[-1]


def _channels(shape) -> int:
    shape = tuple(shape)
    if len(shape) < 2 or shape[-1] is None:
        raise ValueError(f"no fixed channel axis in shape {shape}")
    return int(shape[-1])


def _in_channels(layer) -> int:
    return _channels(layer.input.shape)


def _positions(shape) -> int:
    """Spatial positions of a channel-last ``shape`` (batch and channels excluded)."""
    count = 1
    for dim in tuple(shape)[1:-1]:
        if dim is None:
            raise ValueError(f"Flatten of an unknown size {tuple(shape)}")
        count *= int(dim)
    return count


def _layer_refs(value, names: set[str]) -> list[str]:
    """Layers an ``inbound_nodes`` entry reads, in order (including kwargs references)."""
    found: list[str] = []
    _collect(value, names, found)
    return found


def _collect(value, names: set[str], found: list[str]) -> None:
    if isinstance(value, (list, tuple)) and len(value) >= 3 and isinstance(value[0], str):
        if value[0] in names and isinstance(value[1], int):
            found.append(value[0])
            if len(value) == 4 and isinstance(value[3], dict):
                _collect(value[3], names, found)
            return
    if isinstance(value, dict):
        for item in value.values():
            _collect(item, names, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, names, found)
