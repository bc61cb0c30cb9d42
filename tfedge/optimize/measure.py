"""What an optimize run measures after its stages, on the ``.tflite`` files and on a target:
each channels stage's groups (MACs and parameters read from the files before and after the
stage, and with ``--target`` their time) and each stage's latency on ``--target``."""

from __future__ import annotations

from pathlib import Path

from tfedge.optimize.stages import Stage


def measure_channel_groups(work: Path, stages: list[Stage], model, target, say) -> None:
    """Add to each channels stage's groups their MACs and parameters read from the
    ``.tflite`` before and after the stage, and on ``target`` their time."""
    from tfedge.analyze.group_cost import measure_groups
    from tfedge.convert.keras_layers import keras_layers

    layers = None
    for k, stage in enumerate(stages):
        groups = stage.metrics.get("groups") if stage.name.startswith("channels") else None
        before = _earlier_stage(stages[:k], stage.quant)
        if not groups or before is None:
            continue
        if target is not None and say:
            say(f"timing {stage.name}'s groups before and after on {target} ...")
        layers = layers or keras_layers(model)
        costs = measure_groups(
            work / before.tflite,
            work / stage.tflite,
            [g["layers"] for g in groups],
            target,
            layers,
        )
        stage.metrics["costs"] = _costs_metrics(before.name, costs)


def time_stages(work: Path, stages: list[Stage], target: str, say) -> None:
    """Each stage's p50 latency on ``target`` (``tfedge bench``, its default threads), in
    the stage's metrics under ``bench``."""
    from tfedge.targets.bench import bench

    if say:
        say(f"timing the {len(stages)} stages on {target} ...")
    for stage in stages:
        path = work / stage.tflite
        if not path.is_file():  # a reused stage whose file the failed run did not keep
            continue
        result = bench(path, target=target, runs=30, min_secs=0.3)
        stage.metrics["bench"] = {
            "target": target,
            "emulated": result.emulated,
            "threads": result.threads,
            "p50_us": result.latency_us.p50,
        }


def _earlier_stage(stages: list[Stage], quant: str) -> Stage | None:
    """The last of ``stages`` converted like ``quant`` (the channels stage's baseline)."""
    return next((s for s in reversed(stages) if s.quant == quant), None)


def _costs_metrics(before: str, costs) -> dict:
    was, now = costs
    return {
        "before_stage": before,
        "target": now.target,
        "emulated": now.emulated,
        "statistic": now.statistic,
        "total_us_before": was.total_us,
        "total_us_after": now.total_us,
        "groups": [
            {
                "macs_before": b.macs,
                "macs_after": a.macs,
                "params_before": b.params,
                "params_after": a.params,
                "latency_us_before": b.latency_us,
                "latency_us_after": a.latency_us,
                "resolved": b.resolved and a.resolved,
            }
            for b, a in zip(was.groups, now.groups)
        ],
    }
