"""How much a model suffers when only one channel group is thinned, and a MACs target from it.

``channel_sensitivity`` scores the model (accuracy in points for integer labels, mean squared
error otherwise; ``tfedge.passes.sensitivity.score``) with one prunable group at a time cut to
each keep ratio (its least important channels removed, no fine-tuning), on at most
``max_samples`` samples, and records the whole model's MACs with that cut. The cut is done by
zeroing the removed channels' rows in every layer that reads them, which gives exactly the
outputs of the thinner model ``prune_channels`` builds, without building one per ratio.

``plan_macs_target`` distributes a MACs target over the groups in the spirit of NetAdapt and
AMC: starting from the whole model, it repeatedly removes ``round_to`` channels from the group
whose step costs the least score per MAC saved (the drop read from the sensitivity, linear
between the measured ratios), until the MACs reach the target.

Example:
    >>> graph = ChannelGraph(model)
    >>> table = channel_sensitivity(model, graph, x, y, ratios=(0.75, 0.5, 0.25))
    >>> table[0].to_json()["rows"][1]
    {'keep': 0.5, 'channels': 16, 'score': 91.2, 'drop': 3.1, 'macs': 81920, ...}
    >>> counts = plan_macs_target(model, graph, table, 0.5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tfedge.errors import RecipeError
from tfedge.passes.channel_graph import ChannelGraph, ChannelGroup
from tfedge.passes.channels import (
    MAC_LAYERS,
    MACS_TOLERANCE,
    Criterion,
    MacCounter,
    allowed_counts,
    criterion_used,
    importance,
    kept_count,
    layer_macs,
    sample_count,
    take_rows,
    taylor_scores,
)
from tfedge.passes.sensitivity import compiled, drop_of, score

MAX_SAMPLES = 512  # samples the analysis scores on, at most


@dataclass(frozen=True)
class RatioScore:
    """The model with one group cut to ``channels`` (asked: ``keep``): its score, how much
    worse than the baseline (points, or percent more squared error), and its MACs."""

    keep: float
    channels: int
    score: float
    drop: float
    macs: int
    macs_fraction: float


@dataclass
class GroupSensitivity:
    """One prunable group: its layers, size, share of the model's MACs, and a row per ratio."""

    group: int
    layers: list[str]
    channels: int
    metric: str  # "accuracy" (points, higher is better) or "mse" (lower is better)
    baseline: float
    macs_share: float  # share of the model's MACs in the layers reading or writing the group
    criterion: str  # the criterion used (bn falls back to l1 without a BatchNormalization)
    rows: list[RatioScore] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "group": self.group,
            "layers": self.layers,
            "channels": self.channels,
            "metric": self.metric,
            "baseline": self.baseline,
            "macs_share": self.macs_share,
            "criterion": self.criterion,
            "rows": [
                {
                    "keep": r.keep,
                    "channels": r.channels,
                    "score": r.score,
                    "drop": r.drop,
                    "macs": r.macs,
                    "macs_fraction": r.macs_fraction,
                }
                for r in self.rows
            ],
        }

    def drop_at(self, channels: int) -> float:
        """The drop with ``channels`` kept: 0 whole, linear between the measured counts on
        their running maximum (a cut never helps), extended past the smallest one."""
        points = sorted({(self.channels, 0.0), *((r.channels, r.drop) for r in self.rows)})[::-1]
        counts = [c for c, _ in points]
        drops = np.maximum.accumulate([max(d, 0.0) for _, d in points]).tolist()
        if channels >= counts[0]:
            return 0.0
        for (c0, d0), (c1, d1) in zip(zip(counts, drops), zip(counts[1:], drops[1:])):
            if c1 <= channels <= c0:
                return d0 + (d1 - d0) * (c0 - channels) / max(c0 - c1, 1)
        if len(counts) < 2:
            return 0.0
        slope = (drops[-1] - drops[-2]) / max(counts[-2] - counts[-1], 1)
        return drops[-1] + max(slope, 0.0) * (counts[-1] - channels)


def channel_sensitivity(
    model,
    graph: ChannelGraph,
    x,
    y,
    ratios: Sequence[float] = (0.75, 0.5, 0.25),
    criterion: Criterion = "l1",
    round_to: int = 8,
    minimum: int = 8,
    *,
    max_samples: int = MAX_SAMPLES,
    groups: Sequence[int] | None = None,
) -> list[GroupSensitivity]:
    """Score ``model`` on (x, y) with each prunable group alone cut to each keep ratio.

    ``groups`` limits the analysis to those group ids. ``model`` is left unchanged (the cuts
    happen in a copy); no training.
    """
    from tfedge.passes.base import clone_with_weights

    classification = np.issubdtype(np.asarray(y).dtype, np.integer)
    x, y = _sample(x, y, max_samples)
    if criterion == "taylor":
        criterion = taylor_scores(model, graph, x, y)
    work = clone_with_weights(model)
    run = compiled(work)
    baseline = score(run, x, y, classification)
    counter = MacCounter(model, graph)
    base_macs = max(counter.macs({}), 1)
    metric = "accuracy" if classification else "mse"
    results = []
    for group in graph.groups:
        if not group.prunable or (groups is not None and group.id not in groups):
            continue
        order = np.argsort(-importance(model, graph, group, criterion), kind="stable")
        found = GroupSensitivity(
            group.id,
            list(group.members),
            group.size,
            metric,
            baseline,
            _macs_share(model, graph, group, base_macs),
            criterion_used(model, graph, group, criterion),
        )
        for ratio in ratios:
            count = kept_count(group.size, ratio, round_to, minimum)
            kept = sorted(order[:count].tolist())
            whole = count == group.size
            value = baseline if whole else _cut_score(work, run, graph, group, kept, x, y)
            macs = counter.macs({group.id: kept})
            found.rows.append(
                RatioScore(
                    float(ratio),
                    count,
                    value,
                    drop_of(baseline, value, classification),
                    macs,
                    macs / base_macs,
                )
            )
        results.append(found)
    return results


def _sample(x, y, cap: int):
    """At most ``cap`` samples of (x, y), a seeded choice kept in order."""
    total = sample_count(x)
    if total <= cap:
        return x, np.asarray(y)
    pick = np.sort(np.random.default_rng(0).choice(total, cap, replace=False))
    return take_rows(x, pick), np.asarray(y)[pick]


def _cut_score(work, run, graph: ChannelGraph, group: ChannelGroup, kept: list[int], x, y) -> float:
    """The score of ``work`` (called through ``run``, its traced inference) with the group's
    channels outside ``kept`` removed (their rows zeroed in every layer reading them);
    ``work``'s weights are restored after."""
    classification = np.issubdtype(np.asarray(y).dtype, np.integer)
    keep = set(kept)
    dead = {
        label
        for name, channels in group.members.items()
        for label, channel in zip(graph.producers[name], channels, strict=True)
        if channel not in keep
    }
    saved = []
    for layer in work.layers:
        kind = type(layer).__name__
        if kind not in ("Conv1D", "Conv2D", "Dense", "SeparableConv2D"):
            continue
        mask = np.array([label in dead for label in graph.inputs[layer.name][0]], dtype=bool)
        if not mask.any():
            continue
        kernel = layer.depthwise_kernel if kind == "SeparableConv2D" else layer.kernel
        value = kernel.numpy()
        saved.append((kernel, value))
        cut = value.copy()
        if kind == "SeparableConv2D":
            cut[:, :, mask, :] = 0
        else:
            cut[..., mask, :] = 0
        kernel.assign(cut)
    try:
        return score(run, x, y, classification)
    finally:
        for kernel, value in saved:
            kernel.assign(value)


def _macs_share(model, graph: ChannelGraph, group: ChannelGroup, base_macs: int) -> float:
    """Share of the MACs in the layers whose input or output carries the group's channels."""
    labels = {label for name in group.members for label in graph.producers[name]}
    total = 0
    for layer in model.layers:
        if type(layer).__name__ not in MAC_LAYERS:
            continue
        ins = graph.inputs[layer.name][0]
        if labels & set(ins) or labels & set(graph.outputs[layer.name]):
            total += layer_macs(layer, int(layer.input.shape[-1]), int(layer.output.shape[-1]))
    return total / base_macs


# -- a MACs target -----------------------------------------------------------------------------
def plan_macs_target(
    model,
    graph: ChannelGraph,
    table: Sequence[GroupSensitivity],
    target: float,
    round_to: int = 8,
    minimum: int = 8,
    criterion: Criterion = "l1",
    fixed: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """``{group: channels kept}`` so that the model keeps ``target`` of its MACs (within
    ``MACS_TOLERANCE`` where the channel steps allow): the groups in ``fixed`` keep their count,
    the others analysed in ``table`` are thinned greedily, the cheapest step (least drop per
    MAC saved) first. RecipeError when even every group at its minimum keeps more."""
    fixed = dict(fixed or {})
    counter = MacCounter(model, graph)
    base = counter.macs({})
    goal = target * base
    by_id = {g.id: g for g in graph.groups}
    orders = {
        g.id: np.argsort(-importance(model, graph, g, criterion), kind="stable")
        for g in graph.groups
        if g.prunable
    }
    free = {s.group: s for s in table if s.group not in fixed and s.group in orders}
    steps = {gid: allowed_counts(by_id[gid].size, round_to, minimum) for gid in free}
    counts = {**{gid: by_id[gid].size for gid in free}, **fixed}

    def macs_of(chosen: Mapping[int, int]) -> int:
        return counter.macs({gid: orders[gid][:n] for gid, n in chosen.items()})

    lowest = macs_of({**counts, **{gid: options[0] for gid, options in steps.items()}})
    if lowest > goal * (1 + MACS_TOLERANCE):
        raise RecipeError(
            f"channels: target_macs {target:g} cannot be reached: with every group at its "
            f"minimum the model keeps {lowest / base:.3f} of its MACs",
            f"raise target_macs to {np.ceil(lowest / base * 1000) / 1000:g} or more, or lower "
            "minimum / round_to",
        )
    now = macs_of(counts)
    while now > goal:
        moves = []
        for gid, options in steps.items():
            smaller = [c for c in options if c < counts[gid]]
            if not smaller:
                continue
            after = macs_of({**counts, gid: smaller[-1]})
            saved = now - after
            if saved <= 0:
                continue
            cost = free[gid].drop_at(smaller[-1]) - free[gid].drop_at(counts[gid])
            moves.append(((max(cost, 0.0) + 1e-9) / saved, gid, smaller[-1], after))
        if not moves:
            break
        landing = [m for m in moves if m[3] >= goal * (1 - MACS_TOLERANCE)]
        if not landing and now <= goal * (1 + MACS_TOLERANCE):
            break  # close enough: any further step would overshoot
        _, gid, count, now = min(landing) if landing else max(moves, key=lambda m: m[3])
        counts[gid] = count
    return counts
