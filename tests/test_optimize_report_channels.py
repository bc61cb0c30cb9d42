"""optimize's report of a channels stage: the per-group table and the sensitivity plot."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tfedge.optimize.recipe import load_recipe
from tfedge.optimize.reports import write_reports
from tfedge.optimize.stages import Stage


def _row(keep: float, channels: int, score: float, fraction: float) -> dict:
    return {
        "keep": keep,
        "channels": channels,
        "score": score,
        "drop": 98.0 - score,
        "macs": int(1000 * fraction),
        "macs_fraction": fraction,
    }


def _group(group: int, layer: str, scores: tuple[float, float]) -> dict:
    return {
        "group": group,
        "layers": [layer],
        "channels": 16,
        "metric": "accuracy",
        "baseline": 98.0,
        "macs_share": 0.5,
        "criterion": "l1",
        "rows": [_row(0.75, 12, scores[0], 0.8), _row(0.5, 8, scores[1], 0.6)],
    }


def _stage(name: str, metrics: dict) -> Stage:
    return Stage(
        name,
        0.98,
        0.98,
        None,
        1000,
        1000,
        0.0,
        100,
        4000,
        3000,
        2900,
        1.0,
        f"stages/{name}.tflite",
        "int8",
        metrics=metrics,
    )


def test_a_channels_stage_reports_its_groups_and_plots_its_sensitivity(tmp_path) -> None:
    metrics = {
        "groups": [
            {"layers": ["conv1"], "channels_before": 16, "channels_after": 8, "keep": 0.5},
            {
                "layers": ["logits"],
                "channels_before": 10,
                "channels_after": 10,
                "left_whole": "'logits' is a model output",
            },
        ],
        "macs_before": 2000,
        "macs_after": 1000,
        "params_before": 900,
        "params_after": 500,
        "target_macs": 0.5,
        "sensitivity": [_group(0, "conv1", (97.0, 90.0)), _group(1, "conv2", (98.0, 96.0))],
    }
    stages = [_stage("float32", {}), _stage("int8", {}), _stage("channels", metrics)]
    write_reports(tmp_path, load_recipe("int8"), stages, 1.0)
    report = (tmp_path / "report.md").read_text()
    assert "MACs 2,000 -> 1,000 (50.0%)" in report and "target_macs 0.5" in report
    assert "| conv1 | 16 | 8 |" in report
    assert "| logits | 10 | 10 | 'logits' is a model output |" in report
    assert "![sensitivity of channels](sensitivity-channels.svg)" in report
    svg = ET.parse(tmp_path / "sensitivity-channels.svg").getroot()
    titles = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert any("conv1" in t for t in titles) and any("conv2" in t for t in titles)


def test_a_channels_stage_with_a_keep_ratio_has_no_plot(tmp_path) -> None:
    metrics = {
        "groups": [],
        "macs_before": 2,
        "macs_after": 1,
        "params_before": 2,
        "params_after": 1,
    }
    stages = [_stage("float32", {}), _stage("int8", {}), _stage("channels", metrics)]
    write_reports(tmp_path, load_recipe("int8"), stages, 1.0)
    assert "MACs 2 -> 1" in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob("*.svg"))
