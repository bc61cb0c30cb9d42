"""Remove whole output channels from a tf_keras model and rebuild it thinner (no masks).

``ChannelGraph`` (``channel_graph.py``) groups the channels that must go together (across
residual Adds, Concatenates, depthwise blocks, BatchNormalization and Flatten). ``prune_channels``
rebuilds the model from its config with fewer filters/units and copies the surviving weights:
kernels sliced on their output axis and on their consumers' input axis, biases, BatchNormalization
statistics, depthwise kernels, and the rows of a Dense after a Flatten.

The ``channels`` pass of a recipe keeps the most important ``keep`` share of every prunable
group, or removes channels until the model keeps ``target_macs`` of its MACs, spread over the
groups by the sensitivity analysis (``channel_sensitivity.py``); ``ratios`` fix single layers'
shares. Importance: filter norm (``l1``, ``l2``), BatchNormalization |gamma| (``bn``) or
first-order Taylor on training data (``taylor``). Counts are rounded to ``round_to``; the
thinner model is fine-tuned (optionally distilled from the unpruned one), in ``steps`` rounds.

Example:
    >>> graph = ChannelGraph(model)
    >>> keep = plan_keep(model, graph, ratio=0.5, round_to=8)
    >>> thinner = prune_channels(model, keep, graph)

    passes:
      - channels: {keep: 0.5, round_to: 8, criterion: l1, epochs: 2}
      - channels: {target_macs: 0.5, criterion: bn, epochs: 3, distill: true, steps: 2}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from tfedge.config import did_you_mean
from tfedge.errors import RecipeError
from tfedge.passes.base import OptionalRate, PassConfig, PassResult
from tfedge.passes.channel_graph import ChannelGraph, ChannelGroup
from tfedge.passes.rebuild import from_config, layer_entry, model_config

_CRITERIA = ("l1", "l2", "bn")  # from the weights; taylor needs data (taylor_scores)
TAYLOR_SAMPLES = 256  # training samples taylor's gradients are summed over, at most
MACS_TOLERANCE = 0.05  # a MACs target is met within this share of it


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
# A criterion's name, or the scores of every group's channels computed before (``taylor``).
Criterion = str | Mapping[int, np.ndarray]


def importance(
    model, graph: ChannelGraph, group: ChannelGroup, criterion: Criterion = "l1"
) -> np.ndarray:
    """Per group channel: the norm of its filters summed over the group's producers (``l1``,
    ``l2``), or the |gamma| of the BatchNormalization right after them (``bn``; a group
    without one falls back to ``l1``, see ``criterion_used``), or ``criterion[group.id]``
    for scores computed before (``taylor_scores``)."""
    if not isinstance(criterion, str):
        return np.asarray(criterion[group.id])
    if criterion == "taylor":
        raise RecipeError(
            "channels: the taylor criterion needs data",
            "compute the scores with taylor_scores(model, graph, x, y) and pass them",
        )
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


def criterion_used(model, graph: ChannelGraph, group: ChannelGroup, criterion: Criterion) -> str:
    """``criterion``, or ``l1`` where ``bn`` finds no BatchNormalization after the group
    (``taylor`` for scores computed before)."""
    if not isinstance(criterion, str):
        return "taylor"
    if criterion == "bn" and not _bn_after(model, graph, group):
        return "l1"
    return criterion


def taylor_scores(
    model, graph: ChannelGraph, x, y, samples: int = 256, batch_size: int = 32
) -> dict[int, np.ndarray]:
    """First-order Taylor importance of every prunable group's channels: |sum over positions
    of activation x gradient of the loss| of each producer's output channel, summed over the
    first ``samples`` samples of (x, y) and over the producers sharing the channel."""
    from tfedge._tf import import_keras, import_tf
    from tfedge.passes.base import ends_in_softmax

    tf, k = import_tf(), import_keras()
    groups = [g for g in graph.groups if g.prunable]
    names = [name for g in groups for name in g.members]
    if not names:
        return {}
    probe = k.Model(model.inputs, [model.get_layer(n).output for n in names] + [model.outputs[0]])
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.integer):
        loss = k.losses.SparseCategoricalCrossentropy(
            from_logits=not ends_in_softmax(model), reduction="sum"
        )
    else:
        loss = k.losses.MeanSquaredError(reduction="sum")
    totals = {name: np.zeros(model.get_layer(name).output.shape[-1]) for name in names}
    count = min(samples, sample_count(x))
    for start in range(0, count, batch_size):
        rows = slice(start, min(start + batch_size, count))
        with tf.GradientTape() as tape:
            *acts, out = probe(take_rows(x, rows), training=False)
            value = loss(y[rows].reshape(out.shape[0], -1), tf.reshape(out, (out.shape[0], -1)))
        grads = tape.gradient(value, acts)
        for name, act, grad in zip(names, acts, grads, strict=True):
            spatial = list(range(1, len(act.shape) - 1))
            per_sample = tf.reduce_sum(act * grad, axis=spatial) if spatial else act * grad
            totals[name] += np.abs(per_sample.numpy()).sum(axis=0)
    scores = {}
    for group in groups:
        scores[group.id] = np.zeros(group.size)
        for name, channels in group.members.items():
            np.add.at(scores[group.id], np.array(channels), totals[name])
    return scores


def sample_count(x) -> int:
    """Samples in ``x``: an array, a list of arrays (one per input) or a dict of them."""
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    return len(x[0]) if isinstance(x, (list, tuple)) else len(x)


def take_rows(x, rows: slice | np.ndarray):
    """Rows of ``x``: an array, a list of arrays (one per input) or a dict of them."""
    if isinstance(x, dict):
        return {key: np.asarray(value)[rows] for key, value in x.items()}
    if isinstance(x, (list, tuple)):
        return [np.asarray(value)[rows] for value in x]
    return np.asarray(x)[rows]


def _bn_after(model, graph: ChannelGraph, group: ChannelGroup) -> dict[str, str]:
    """``{producer: BatchNormalization with a scale reading exactly its output}``."""
    found = {}
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization" or not layer.scale:
            continue
        ins = graph.inputs[layer.name]
        for member in group.members:
            if _reads(layer, member) and ins and ins[0] == graph.producers[member]:
                found[member] = layer.name
    return found


def _reads(layer, name: str) -> bool:
    """Whether ``layer`` is called on the output of the layer ``name`` itself."""
    nodes = getattr(layer, "inbound_nodes", None) or getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1:
        return False
    inbound = nodes[0].inbound_layers
    inbound = inbound if isinstance(inbound, (list, tuple)) else [inbound]
    return [getattr(other, "name", None) for other in inbound] == [name]


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
    model, graph: ChannelGraph, counts: Mapping[int, int], criterion: Criterion = "l1"
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
    return _macs(_mac_terms(layer), channels_in, channels_out)


def _mac_terms(layer) -> tuple[str, int, int, int]:
    """What a layer's MACs depend on besides its channels: kind, output positions, window
    and depth multiplier."""
    kind = type(layer).__name__
    positions = int(np.prod([d or 1 for d in layer.output.shape[1:-1]]))
    window = int(np.prod(getattr(layer, "kernel_size", (1,))))
    return kind, positions, window, int(getattr(layer, "depth_multiplier", 1))


def _macs(terms: tuple[str, int, int, int], channels_in: int, channels_out: int) -> int:
    kind, positions, window, multiplier = terms
    if kind not in MAC_LAYERS:
        return 0
    if kind == "DepthwiseConv2D":
        return positions * window * channels_out
    if kind == "SeparableConv2D":
        depthwise = positions * channels_in * multiplier
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
        layers = [layer for layer in model.layers if type(layer).__name__ in MAC_LAYERS]
        # Each layer's MACs are a*in*out + b*in + c*out in its live channels in and out.
        terms = [_mac_coefficients(_mac_terms(k)) for k in layers]
        self._terms = np.array(terms, np.int64).reshape(-1, 3)
        self._ins = _Segments([self._index(graph.inputs[k.name][0]) for k in layers])
        self._outs = _Segments([self._index(graph.outputs[k.name]) for k in layers])

    def _index(self, labels) -> np.ndarray:
        """Positions in the flat survival vector; -1 (its last entry, always alive) for
        positions that never change."""
        return np.array([self._where.get(label, -1) for label in labels], dtype=np.int64)

    def macs(self, keep: Mapping[int, Iterable[int]]) -> int:
        alive = np.ones(self._total + 1, dtype=bool)
        for group_id, channels in keep.items():
            start, size = self._spans[group_id]
            block = np.zeros(size, dtype=bool)
            block[channels if isinstance(channels, np.ndarray) else list(channels)] = True
            alive[start : start + size] = block
        cin, cout = self._ins.live(alive), self._outs.live(alive)
        a, b, c = self._terms.T
        return int(np.sum(a * cin * cout + b * cin + c * cout))


def _mac_coefficients(terms: tuple[str, int, int, int]) -> tuple[int, int, int]:
    """``_macs`` as (a, b, c) of a*in*out + b*in + c*out."""
    kind, positions, window, multiplier = terms
    if kind == "DepthwiseConv2D":
        return 0, 0, positions * window
    if kind == "SeparableConv2D":
        return positions * multiplier, positions * multiplier * window, 0
    return positions * window, 0, 0


class _Segments:
    """Index lists, one per layer, flattened so that their live counts take one numpy pass
    (the MACs target's planner counts MACs thousands of times on ResNet-sized graphs)."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        self._flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        self._filled = sizes > 0  # reduceat needs increasing starts inside the array
        self._starts = (np.cumsum(sizes) - sizes)[self._filled]

    def live(self, alive: np.ndarray) -> np.ndarray:
        """How many positions of each part are alive."""
        counts = np.zeros(len(self._filled), np.int64)
        if len(self._starts):
            live = alive[self._flat].astype(np.int64)
            counts[self._filled] = np.add.reduceat(live, self._starts)
        return counts


class Channels(PassConfig):
    """Remove whole output channels (filters, units) and fine-tune the thinner model.

    Args:
        keep: share of each prunable group's channels to keep, in (0, 1] (default 0.5 when
            neither keep nor target_macs is given).
        target_macs: share of the model's MACs to keep, in (0, 1]; the channels to remove are
            spread over the groups by the sensitivity analysis on the held-out training data.
        ratios: ``{layer: keep}`` per-layer shares overriding keep / target_macs for the
            layer's group.
        round_to: channel counts are rounded up to a multiple of this (8: the int8 kernels'
            SIMD width).
        minimum: no group keeps fewer channels than this.
        criterion: importance of a channel: l1 or l2 norm of its filters (summed over the
            layers that share it), bn: |gamma| of the BatchNormalization after them (l1
            where there is none), or taylor: |activation x gradient| on the training data.
        epochs: fine-tuning epochs after each removal step (0: none).
        learning_rate: defaults to ``train.learning_rate``.
        distill: fine-tune by distillation from the unpruned model (classification only).
        steps: reach the target in this many equal steps, fine-tuning after each.
    """

    pass_name: ClassVar[str] = "channels"
    guard_hint: ClassVar[str] = "raise keep or target_macs, add epochs, or raise minimum"

    keep: float | None = Field(default=None, gt=0, le=1)
    target_macs: float | None = Field(default=None, gt=0, le=1)
    ratios: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=dict)
    round_to: int = Field(default=8, ge=1, le=1024)
    minimum: int = Field(default=8, ge=1, le=1 << 16)
    criterion: Literal["l1", "l2", "bn", "taylor"] = "l1"
    epochs: int = Field(default=2, ge=0, le=1000)
    learning_rate: OptionalRate = None
    distill: bool = False
    steps: int = Field(default=1, ge=1, le=100)

    @model_validator(mode="after")
    def _one_target(self) -> Channels:
        if self.keep is not None and self.target_macs is not None:
            raise ValueError(
                "keep and target_macs exclude each other (hint: give keep, the share of "
                "channels, or target_macs, the share of MACs)"
            )
        if self.distill and self.epochs == 0:
            raise ValueError("distill needs training (hint: set epochs to 1 or more)")
        return self

    @property
    def keep_ratio(self) -> float:
        return 0.5 if self.keep is None else self.keep

    @property
    def _rounding(self) -> tuple[int, int]:
        return self.round_to, self.minimum

    def check(self, model, ctx) -> None:
        graph = ChannelGraph(model)
        if not any(group.prunable for group in graph.groups):
            raise RecipeError(
                f"{self.where}: no channel of the model can be removed",
                f"every group reaches a model output or a layer the pass cannot follow: "
                f"{_blocked(graph)}",
            )
        fixed = self.fixed_ratios(model, graph)
        if self.distill and not ctx.classification:
            raise RecipeError(
                f"{self.where}: distill needs class labels (integer y)",
                "drop distill: true for a regression model",
            )
        if self.target_macs is not None:
            counts = {
                g: kept_count(_size(graph, g), r, self.round_to, self.minimum)
                for g, r in fixed.items()
            }
            by = "l1" if self.criterion == "taylor" else self.criterion  # no data needed
            lowest = lowest_macs_fraction(model, graph, self.round_to, self.minimum, counts, by)
            if lowest > self.target_macs * (1 + MACS_TOLERANCE):
                raise RecipeError(
                    f"{self.where}: target_macs {self.target_macs:g} cannot be reached: with "
                    f"every group at its minimum the model keeps {lowest:.3f} of its MACs",
                    f"raise target_macs to {math.ceil(lowest * 1000) / 1000:g} or more, or "
                    "lower minimum / round_to",
                )

    def fixed_ratios(self, model, graph: ChannelGraph) -> dict[int, float]:
        """``{group: keep}`` from ``ratios``; RecipeError for a name that names no layer, a
        layer without channels of its own, one the pass must leave whole, or two layers of a
        group asking for different ratios."""
        names = [layer.name for layer in model.layers]
        fixed: dict[int, float] = {}
        named: dict[int, str] = {}
        for name, ratio in self.ratios.items():
            if name not in names:
                raise RecipeError(
                    f"{self.where}: ratios names no layer '{name}'",
                    did_you_mean(name, names, "layers"),
                )
            group = next((g for g in graph.groups if name in g.members), None)
            if group is None:
                kind = type(model.get_layer(name)).__name__
                raise RecipeError(
                    f"{self.where}: ratios: '{name}' is a {kind}, it has no output channels "
                    "of its own",
                    "name a Conv1D, Conv2D, SeparableConv2D or Dense layer (DepthwiseConv2D "
                    "and BatchNormalization follow their input's channels)",
                )
            if not group.prunable:
                raise RecipeError(
                    f"{self.where}: ratios: the channels of '{name}' cannot be removed",
                    "; ".join(group.reasons),
                )
            if group.id in fixed and fixed[group.id] != ratio:
                raise RecipeError(
                    f"{self.where}: ratios: '{named[group.id]}' and '{name}' share their "
                    f"channels but ask for {fixed[group.id]:g} and {ratio:g}",
                    "give them the same ratio, or name only one of them",
                )
            fixed[group.id], named[group.id] = ratio, name
        return fixed

    def apply(self, model, ctx) -> PassResult:
        self.check(model, ctx)
        graph = ChannelGraph(model)
        original = {g.id: g.size for g in graph.groups}
        base_macs = keras_macs(model)
        current, sizes, tables = model, dict(original), []
        for step in range(1, self.steps + 1):
            step_graph = graph if current is model else ChannelGraph(current)
            plan, table = self.step_plan(current, step_graph, ctx, original, base_macs, step)
            tables.append(table)
            current = prune_channels(current, plan, step_graph)
            sizes.update({g: len(kept) for g, kept in plan.items()})
            if plan and self.epochs:
                self._fine_tune(model, current, ctx, step)
        return PassResult(current, self._metrics(model, current, graph, sizes, tables))

    def step_plan(
        self,
        model,
        graph: ChannelGraph,
        ctx,
        original: Mapping[int, int],
        base_macs: int,
        step: int,
    ) -> tuple[dict[int, list[int]], list]:
        """``{group: channels kept}`` after ``step`` of ``steps`` (a share ``step / steps`` of
        the way from the whole model to the target), for ``model`` as it is before the step
        (its groups had ``original`` sizes in the incoming model, which had ``base_macs``),
        and the sensitivity table the target was spread with ([] for keep)."""
        ranking = self.ranking(model, graph, ctx)
        counts, table = self._step_counts(model, graph, ctx, original, base_macs, step, ranking)
        return plan_counts(model, graph, counts, ranking), table

    def ranking(self, model, graph: ChannelGraph, ctx) -> Criterion:
        """The criterion, with taylor's scores computed on a sample of the training data."""
        if self.criterion != "taylor":
            return self.criterion
        x, y = _training_sample(ctx, model, TAYLOR_SAMPLES)
        return taylor_scores(model, graph, x, y, TAYLOR_SAMPLES, ctx.train.batch_size)

    def _step_counts(
        self,
        model,
        graph: ChannelGraph,
        ctx,
        original: Mapping[int, int],
        base_macs: int,
        step: int,
        ranking: Criterion,
    ) -> tuple[dict[int, int], list]:
        share = step / self.steps

        def count(group: ChannelGroup, ratio: float) -> int:
            wanted = kept_count(original[group.id], 1 - (1 - ratio) * share, *self._rounding)
            return min(group.size, wanted)

        fixed = self.fixed_ratios(model, graph)
        counts = {g.id: count(g, fixed[g.id]) for g in graph.groups if g.id in fixed}
        if self.target_macs is None:
            for group in graph.groups:
                if group.prunable and group.id not in counts:
                    counts[group.id] = count(group, self.keep_ratio)
            return counts, []
        from tfedge.passes.channel_sensitivity import channel_sensitivity, plan_macs_target
        from tfedge.passes.low_rank import held_out

        free = [g.id for g in graph.groups if g.prunable and g.id not in counts]
        x, y = held_out(ctx, model)
        table = channel_sensitivity(
            model,
            graph,
            x,
            y,
            criterion=ranking,
            round_to=self.round_to,
            minimum=self.minimum,
            groups=free,
        )
        goal = (1 - (1 - self.target_macs) * share) * base_macs / max(keras_macs(model), 1)
        counts = plan_macs_target(
            model,
            graph,
            table,
            min(goal, 1.0),
            self.round_to,
            self.minimum,
            ranking,
            counts,
        )
        return counts, table

    def _metrics(self, model, thinner, graph: ChannelGraph, sizes: dict, tables: list) -> dict:
        groups: list[dict] = []
        for group in graph.groups:
            row = {"layers": list(group.members), "channels_before": group.size}
            row["channels_after"] = sizes[group.id]
            row["keep"] = round(sizes[group.id] / group.size, 4)
            if not group.prunable:
                row["left_whole"] = "; ".join(group.reasons)
            elif self.criterion == "bn":
                row["criterion"] = criterion_used(model, graph, group, "bn")
            groups.append(row)
        macs_before, macs_after = keras_macs(model), keras_macs(thinner)
        metrics = {
            "groups": groups,
            "groups_pruned": sum(sizes[g.id] < g.size for g in graph.groups),
            "params_before": int(model.count_params()),
            "params_after": int(thinner.count_params()),
            "macs_before": macs_before,
            "macs_after": macs_after,
            "macs_fraction": round(macs_after / max(macs_before, 1), 4),
            "criterion": self.criterion,
            "steps": self.steps,
            "distilled": self.distill,
        }
        if self.target_macs is not None:
            metrics["target_macs"] = self.target_macs
            metrics["sensitivity"] = [s.to_json() for s in tables[0]]
        return metrics

    def _fine_tune(self, teacher, student, ctx, step: int) -> None:
        stage = "channels" if self.steps == 1 else f"channels step {step}"
        if self.distill:
            from tfedge.passes.distill import Distill

            trainer = Distill(epochs=self.epochs, learning_rate=self.learning_rate)
            trainer.train(teacher, student, ctx)
            return
        ctx.compile(student, learning_rate=self.learning_rate)
        ctx.fit(student, self.epochs, stage)


def _training_sample(ctx, model, cap: int):
    """At most ``cap`` samples of the data fine-tuning trains on (not the held-out end), a
    seeded choice, arranged for ``model``."""
    from tfedge.io.data import as_float32, num_samples, take

    total = num_samples(ctx.x)
    trained = max(total - int(total * ctx.train.validation_split), 1)
    pick = np.arange(min(trained, total))
    if len(pick) > cap:
        pick = np.sort(np.random.default_rng(ctx.seed).choice(pick, cap, replace=False))
    return ctx.inputs_for(model, as_float32(take(ctx.x, pick))), np.asarray(ctx.y)[pick]


def _size(graph: ChannelGraph, group_id: int) -> int:
    return next(g.size for g in graph.groups if g.id == group_id)


def lowest_macs_fraction(
    model,
    graph: ChannelGraph,
    round_to: int,
    minimum: int,
    fixed: Mapping[int, int],
    criterion: Criterion = "l1",
) -> float:
    """The share of its MACs ``model`` keeps with every prunable group outside ``fixed`` at
    its smallest allowed count (the groups in ``fixed`` at theirs)."""
    counts = {
        g.id: allowed_counts(g.size, round_to, minimum)[0] for g in graph.groups if g.prunable
    }
    counts.update(fixed)
    counter = MacCounter(model, graph)
    plan = plan_counts(model, graph, counts, criterion)
    return counter.macs(plan) / max(counter.macs({}), 1)


def _blocked(graph: ChannelGraph, shown: int = 3) -> str:
    reasons = [reason for group in graph.groups for reason in group.reasons]
    more = f" (and {len(reasons) - shown} more)" if len(reasons) > shown else ""
    return "; ".join(reasons[:shown]) + more
