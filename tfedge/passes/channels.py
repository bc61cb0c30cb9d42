"""Remove whole output channels from a tf_keras model and rebuild it thinner (no masks).

``ChannelGraph`` (``channel_graph.py``) groups the channels that must go together (across
residual Adds, Concatenates, depthwise blocks, BatchNormalization and Flatten). ``prune_channels``
rebuilds the model from its config with fewer filters/units and copies the surviving weights:
kernels sliced on their output axis and on their consumers' input axis, biases, BatchNormalization
statistics, depthwise kernels, and the rows of a Dense after a Flatten.

The ``channels`` pass of a recipe keeps the most important ``keep`` share of every prunable
group (filter norm), rounded to ``round_to``, then fine-tunes the thinner model.

Example:
    >>> graph = ChannelGraph(model)
    >>> keep = plan_keep(model, graph, ratio=0.5, round_to=8)
    >>> thinner = prune_channels(model, keep, graph)

    passes:
      - channels: {keep: 0.5, round_to: 8, criterion: l1, epochs: 2}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from tfedge.errors import RecipeError
from tfedge.passes.base import OptionalRate, PassConfig, PassResult
from tfedge.passes.channel_graph import ChannelGraph, ChannelGroup
from tfedge.passes.rebuild import from_config, layer_entry, model_config

_CRITERIA = ("l1", "l2", "bn")


def prune_channels(model, keep: Mapping[int, Iterable[int]], graph: ChannelGraph | None = None):
    """A new, thinner model: group ``g`` keeps the group channels ``keep[g]`` (see
    ``ChannelGroup.members``); groups absent from ``keep`` stay whole. ``model`` is unchanged."""
    graph = graph or ChannelGraph(model)
    chosen = _checked_keep(graph, keep)
    survives = graph.label_kept(chosen)

    def mask(labels) -> np.ndarray:
        return np.array([survives(label) for label in labels], dtype=bool)

    in_masks = {name: [mask(labels) for labels in ins] for name, ins in graph.inputs.items()}
    out_masks = {name: mask(labels) for name, labels in graph.outputs.items()}
    config = model_config(model)
    for name in graph.inputs:
        _resize(layer_entry(config, name), int(out_masks[name].sum()))
    thinner = from_config(model, config)
    for layer in thinner.layers:
        if layer.weights:
            old = model.get_layer(layer.name)
            kind = type(old).__name__
            layer.set_weights(_sliced(kind, old, in_masks[layer.name], out_masks[layer.name]))
    return thinner


def _checked_keep(graph: ChannelGraph, keep: Mapping[int, Iterable[int]]) -> dict[int, set[int]]:
    by_id = {group.id: group for group in graph.groups}
    chosen = {}
    for group_id, channels in keep.items():
        group = by_id.get(group_id)
        if group is None:
            raise RecipeError(
                f"channels: no channel group {group_id}", f"groups: 0..{len(by_id) - 1}"
            )
        kept = set(int(c) for c in channels)
        if not group.prunable and len(kept) < group.size:
            raise RecipeError(
                f"channels: group {group_id} ({', '.join(group.members)}) cannot be pruned",
                "; ".join(group.reasons),
            )
        if not kept or not kept <= set(range(group.size)):
            raise RecipeError(
                f"channels: group {group_id} must keep 1 to {group.size} of its channels "
                f"(0..{group.size - 1})",
                "give the indices of the channels to keep",
            )
        chosen[group_id] = kept
    return chosen


def _resize(entry: dict, channels: int) -> None:
    options = entry["config"]
    kind = entry["class_name"]
    if kind in ("Conv1D", "Conv2D", "SeparableConv2D"):
        options["filters"] = channels
    elif kind == "Dense":
        options["units"] = channels
    elif kind == "Reshape" and options["target_shape"][-1] != -1:
        options["target_shape"] = [*options["target_shape"][:-1], channels]


def _sliced(kind: str, layer, in_masks: list[np.ndarray], out_mask: np.ndarray) -> list:
    weights = layer.get_weights()
    keep_in = in_masks[0] if in_masks else np.ones(0, dtype=bool)
    if kind in ("Conv1D", "Conv2D", "Dense"):
        kernel = np.compress(keep_in, weights[0], axis=-2)
        return [np.compress(out_mask, kernel, axis=-1), *_bias(weights[1:], out_mask)]
    if kind == "DepthwiseConv2D":
        return [np.compress(keep_in, weights[0], axis=2), *_bias(weights[1:], out_mask)]
    if kind == "SeparableConv2D":
        expanded = np.repeat(keep_in, layer.depth_multiplier)
        pointwise = np.compress(expanded, weights[1], axis=2)
        return [
            np.compress(keep_in, weights[0], axis=2),
            np.compress(out_mask, pointwise, axis=-1),
            *_bias(weights[2:], out_mask),
        ]
    if kind in ("BatchNormalization", "PReLU"):
        return [np.compress(keep_in, w, axis=-1) for w in weights]
    return weights  # no channel axis in its weights (e.g. LayerNormalization over other axes)


def _bias(rest: list, out_mask: np.ndarray) -> list:
    return [np.compress(out_mask, w, axis=-1) for w in rest]


# -- importance and plans ----------------------------------------------------------------------
def importance(
    model, graph: ChannelGraph, group: ChannelGroup, criterion: str = "l1"
) -> np.ndarray:
    """Per group channel: the norm of its filters summed over the group's producers (``l1``,
    ``l2``), or the |gamma| of the BatchNormalization right after them (``bn``; a group
    without one falls back to ``l1``, see ``criterion_used``)."""
    if criterion not in _CRITERIA:
        raise RecipeError(f"channels: unknown criterion '{criterion}'", f"one of {_CRITERIA}")
    if criterion == "bn":
        scores = _bn_scores(model, graph, group)
        return scores if scores is not None else importance(model, graph, group, "l1")
    scores = np.zeros(group.size)
    for name, channels in group.members.items():
        layer = model.get_layer(name)
        kernel = layer.get_weights()[1 if type(layer).__name__ == "SeparableConv2D" else 0]
        flat = np.abs(kernel.reshape(-1, kernel.shape[-1]))
        norms = flat.sum(axis=0) if criterion == "l1" else np.sqrt((flat**2).sum(axis=0))
        np.add.at(scores, np.array(channels), norms / max(flat.shape[0], 1))
    return scores


def criterion_used(model, graph: ChannelGraph, group: ChannelGroup, criterion: str) -> str:
    """``criterion``, or ``l1`` where ``bn`` finds no BatchNormalization after the group."""
    if criterion == "bn" and not _bn_after(model, graph, group):
        return "l1"
    return criterion


def _bn_after(model, graph: ChannelGraph, group: ChannelGroup) -> dict[str, str]:
    """``{producer: BatchNormalization with a scale reading exactly its output}``."""
    found = {}
    for name, ins in graph.inputs.items():
        layer = model.get_layer(name)
        if type(layer).__name__ != "BatchNormalization" or not layer.scale:
            continue
        for member in group.members:
            if ins and ins[0] == graph.producers[member]:
                found[member] = name
    return found


def _bn_scores(model, graph: ChannelGraph, group: ChannelGroup) -> np.ndarray | None:
    after = _bn_after(model, graph, group)
    if not after:
        return None
    scores = np.zeros(group.size)
    for member, bn in after.items():
        gamma = np.abs(model.get_layer(bn).get_weights()[0])
        np.add.at(scores, np.array(group.members[member]), gamma)
    return scores


def kept_count(size: int, ratio: float, round_to: int = 8, minimum: int = 8) -> int:
    """Channels a group of ``size`` keeps at ``ratio``: rounded up to a multiple of
    ``round_to``, at least ``minimum``, at most ``size``."""
    if not 0 < ratio <= 1:
        raise RecipeError(f"channels: keep ratio {ratio} is outside (0, 1]", "e.g. keep: 0.5")
    wanted = (
        math.ceil(size * ratio / round_to) * round_to if round_to > 1 else math.ceil(size * ratio)
    )
    return min(size, max(wanted, minimum, 1))


def allowed_counts(size: int, round_to: int = 8, minimum: int = 8) -> list[int]:
    """Every channel count a group of ``size`` may keep (see ``kept_count``), ascending."""
    return sorted({kept_count(size, c / size, round_to, minimum) for c in range(1, size + 1)})


def plan_counts(
    model, graph: ChannelGraph, counts: Mapping[int, int], criterion: str = "l1"
) -> dict[int, list[int]]:
    """``{group: channels to keep}``: the ``counts[group]`` most important channels of each
    group (groups whose count is their size are left out)."""
    plan = {}
    for group in graph.groups:
        count = counts.get(group.id, group.size)
        if count < group.size:
            scores = importance(model, graph, group, criterion)
            plan[group.id] = sorted(np.argsort(-scores, kind="stable")[:count].tolist())
    return plan


def plan_keep(
    model,
    graph: ChannelGraph,
    ratio: float,
    round_to: int = 8,
    minimum: int = 8,
    criterion: str = "l1",
) -> dict[int, list[int]]:
    """``{group: channels to keep}`` keeping the most important ``ratio`` of every prunable
    group (see ``kept_count``)."""
    counts = {
        g.id: kept_count(g.size, ratio, round_to, minimum) for g in graph.groups if g.prunable
    }
    return plan_counts(model, graph, counts, criterion)


MAC_LAYERS = ("Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")


def layer_macs(layer, channels_in: int, channels_out: int) -> int:
    """Multiply-accumulates of one convolution or Dense ``layer`` for one sample with
    ``channels_in`` input and ``channels_out`` output channels (0 for other layers)."""
    kind = type(layer).__name__
    if kind not in MAC_LAYERS:
        return 0
    positions = int(np.prod([d or 1 for d in layer.output.shape[1:-1]]))
    window = int(np.prod(getattr(layer, "kernel_size", (1,))))
    if kind == "DepthwiseConv2D":
        return positions * window * channels_out
    if kind == "SeparableConv2D":
        depthwise = positions * channels_in * layer.depth_multiplier
        return depthwise * window + depthwise * channels_out
    return positions * window * channels_in * channels_out


def keras_macs(model) -> int:
    """Multiply-accumulates of ``model``'s convolutions and Dense layers for one sample,
    counted as ``tfedge inspect`` counts them in the ``.tflite`` (before converting)."""
    return sum(
        layer_macs(layer, int(layer.input.shape[-1]), int(layer.output.shape[-1]))
        for layer in model.layers
        if type(layer).__name__ in MAC_LAYERS
    )


class MacCounter:
    """``keras_macs`` of the model ``prune_channels`` would build from a plan, without
    building it: every layer's channels in and out counted from the surviving labels."""

    def __init__(self, model, graph: ChannelGraph) -> None:
        offset, self._where, self._spans = 0, {}, {}
        for group in graph.groups:
            for name, channels in group.members.items():
                for label, channel in zip(graph.producers[name], channels, strict=True):
                    self._where[label] = offset + channel
            self._spans[group.id] = (offset, group.size)
            offset += group.size
        self._total = offset
        self._layers = [
            (
                layer,
                self._index(graph.inputs[layer.name][0]),
                self._index(graph.outputs[layer.name]),
            )
            for layer in model.layers
            if type(layer).__name__ in MAC_LAYERS
        ]

    def _index(self, labels) -> np.ndarray:
        """Positions in the flat survival vector; -1 (its last entry, always alive) for
        positions that never change."""
        return np.array([self._where.get(label, -1) for label in labels], dtype=np.int64)

    def macs(self, keep: Mapping[int, Iterable[int]]) -> int:
        alive = np.ones(self._total + 1, dtype=bool)
        for group_id, channels in keep.items():
            start, size = self._spans[group_id]
            block = np.zeros(size, dtype=bool)
            block[list(channels)] = True
            alive[start : start + size] = block
        return sum(
            layer_macs(layer, int(alive[ins].sum()), int(alive[outs].sum()))
            for layer, ins, outs in self._layers
        )


class Channels(PassConfig):
    """Remove whole output channels (filters, units) and fine-tune the thinner model.

    Args:
        keep: share of each prunable group's channels to keep, in (0, 1].
        round_to: channel counts are rounded up to a multiple of this (8: the int8 kernels'
            SIMD width).
        minimum: no group keeps fewer channels than this.
        criterion: importance of a channel: l1 or l2 norm of its filters (summed over the
            layers that share it).
        epochs: fine-tuning epochs after the removal (0: none).
        learning_rate: defaults to ``train.learning_rate``.
    """

    pass_name: ClassVar[str] = "channels"
    guard_hint: ClassVar[str] = "raise keep, add epochs, or raise minimum"

    keep: float = Field(default=0.5, gt=0, le=1)
    round_to: int = Field(default=8, ge=1, le=1024)
    minimum: int = Field(default=8, ge=1, le=1 << 16)
    criterion: Literal["l1", "l2"] = "l1"
    epochs: int = Field(default=2, ge=0, le=1000)
    learning_rate: OptionalRate = None

    def check(self, model, ctx) -> None:
        graph = ChannelGraph(model)
        if not any(group.prunable for group in graph.groups):
            raise RecipeError(
                f"{self.where}: no channel of the model can be removed",
                f"every group reaches a model output or a layer the pass cannot follow: "
                f"{_blocked(graph)}",
            )

    def apply(self, model, ctx) -> PassResult:
        self.check(model, ctx)
        graph = ChannelGraph(model)
        plan = plan_keep(model, graph, self.keep, self.round_to, self.minimum, self.criterion)
        thinner = prune_channels(model, plan, graph)
        if plan and self.epochs:
            ctx.compile(thinner, learning_rate=self.learning_rate)
            ctx.fit(thinner, self.epochs, "channels")
        return PassResult(thinner, _metrics(model, thinner, graph, plan))


def _blocked(graph: ChannelGraph, shown: int = 3) -> str:
    reasons = [reason for group in graph.groups for reason in group.reasons]
    more = f" (and {len(reasons) - shown} more)" if len(reasons) > shown else ""
    return "; ".join(reasons[:shown]) + more


def _metrics(model, thinner, graph: ChannelGraph, plan: dict[int, list[int]]) -> dict:
    groups: list[dict] = []
    pruned = 0
    for group in graph.groups:
        kept = len(plan.get(group.id, range(group.size)))
        pruned += kept < group.size
        row = {"layers": list(group.members), "channels_before": group.size}
        row["channels_after"] = kept
        if not group.prunable:
            row["left_whole"] = "; ".join(group.reasons)
        groups.append(row)
    return {
        "groups": groups,
        "groups_pruned": pruned,
        "params_before": int(model.count_params()),
        "params_after": int(thinner.count_params()),
        "macs_before": keras_macs(model),
        "macs_after": keras_macs(thinner),
    }
