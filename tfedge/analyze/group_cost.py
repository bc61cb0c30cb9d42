"""What each channel group costs in a ``.tflite``: MACs, parameters and time on a target.

The channels pass names its groups by Keras layers. Here the ops of a converted model are
mapped back to those layers (``tfedge.convert.layer_names``), so a group's MACs and
parameters are read from the flatbuffer itself (a BatchNormalization folded into its
convolution counts once, with the convolution), and its time is the sum of its layers'
rows in an op profile (``tfedge.analyze.op_profile``) measured on a bench target. Comparing
the stage before a channels stage with the channels stage shows where pruning paid.

Example:
    >>> costs = group_costs("stages/02-channels.tflite", [["conv1", "bn1"], ["dense"]])
    >>> costs[0].macs, costs[0].params
    (1327104, 448)
    >>> before, after = measure_groups("01-int8.tflite", "02-channels.tflite", groups, "local")
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from tfedge.analyze.inspect import estimate_macs, op_parameters
from tfedge.convert.layer_names import KerasLayers, op_layers
from tfedge.convert.tflite_model import read_tflite


@dataclass(frozen=True)
class GroupCost:
    """One group's share of a ``.tflite``: MACs, parameters, and time when measured."""

    macs: int
    params: int
    latency_us: float | None = None  # the p50 of its layers' op-profile rows
    resolved: bool = True  # False: one of its layers' time lies within the noise


@dataclass(frozen=True)
class ModelCost:
    """Per group costs of one ``.tflite`` and, when measured, its whole time."""

    groups: list[GroupCost]
    total_us: float | None = None
    target: str | None = None
    emulated: bool = False
    statistic: str | None = None  # of each round's runs, see op_profile.STATISTICS


def group_costs(
    path: str | os.PathLike, groups: Sequence[Sequence[str]], layers: KerasLayers | None = None
) -> list[GroupCost]:
    """MACs and parameters of each group (a list of Keras layer names) in ``path``."""
    model = read_tflite(path)
    macs: dict[str, int] = defaultdict(int)
    params: dict[str, int] = defaultdict(int)
    for op, layer in zip(model.ops, op_layers(model.ops, _with_groups(layers, groups))):
        macs[layer] += estimate_macs(op)
        params[layer] += op_parameters(op)
    return [
        GroupCost(sum(macs[n] for n in group), sum(params[n] for n in group)) for group in groups
    ]


def measure_groups(
    before: str | os.PathLike,
    after: str | os.PathLike,
    groups: Sequence[Sequence[str]],
    target: str | None = None,
    layers: KerasLayers | None = None,
    **bench_options,
) -> tuple[ModelCost, ModelCost]:
    """The groups' costs in ``before`` and ``after``; with ``target``, also their time there.

    Both models are profiled with one interpreter thread (each group's time is a difference
    of CPU times, clean only on one thread), ``before`` first.

    Raises:
        ModelLoadError, BenchError, TargetError: as ``op_profile``.
    """
    known = _with_groups(layers, groups)
    return tuple(  # type: ignore[return-value]
        _model_cost(path, groups, known, target, bench_options) for path in (before, after)
    )


def _model_cost(path, groups, layers, target, bench_options) -> ModelCost:
    costs = group_costs(path, groups, layers)
    if target is None:
        return ModelCost(costs)
    from tfedge.analyze.op_profile import op_profile

    profile = op_profile(path, target=target, layers=layers, **{"threads": 1, **bench_options})
    times: dict[str, list] = defaultdict(list)
    for row in profile.rows:
        times[row.name].append(row)
    timed = [
        GroupCost(
            cost.macs,
            cost.params,
            sum(row.p50_us for name in group for row in times.get(name, [])),
            all(row.resolved for name in group for row in times.get(name, [])),
        )
        for cost, group in zip(costs, groups)
    ]
    bench = profile.bench
    return ModelCost(
        timed,
        profile.total_us,
        target,
        bool(getattr(bench, "emulated", False)),
        profile.statistic,
    )


def _with_groups(layers: KerasLayers | None, groups: Sequence[Sequence[str]]) -> KerasLayers:
    """``layers`` knowing every group's layer names (a layer the channels pass added, e.g.
    low_rank's factors, may be missing from the user's model)."""
    kinds = dict(layers.kinds) if layers else {}
    for group in groups:
        for name in group:
            kinds.setdefault(name, "")
    return KerasLayers(
        layers.model if layers else "", kinds, dict(layers.aliases) if layers else {}
    )
