"""The ``channels`` pass on keras.applications models (random weights, no download), 32 px.

EfficientNetB0 and ResNet50 in tf_keras, and MobileNetV2 (alpha 0.35) as a Keras 3 ``.keras``
file loaded the way the optimize worker loads it (``load_model_for``: the verified Keras 3
bridge): ``target_macs: 0.5`` with ``epochs: 0`` keeps the output shape, lands within 5% of the
target, and the result converts to verified full-int8 (the MACs read from the ``.tflite``: the
Keras count) with a handful of calibration samples. MobileNetV3Small: the pass runs and names
what it left whole. (The ``keep`` target is tested on digits in ``test_channels.py``.)

Each int8 conversion of these graphs takes tens of seconds here, so each model is converted
once.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.tf, pytest.mark.slow]

SIZE = (32, 32, 3)
TARGET = 0.5
TOLERANCE = 0.05


def _keras():
    from tfedge._tf import import_keras

    return import_keras()


@pytest.fixture(scope="module")
def ctx():
    """Twenty random images and labels: the held-out two score the sensitivity analysis."""
    from tfedge.passes import PassContext

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, *SIZE)).astype(np.float32)
    return PassContext(x=x, y=rng.integers(0, 10, 20).astype(np.int64), seed=0)


def _apply(model, ctx, **options):
    from tfedge.passes import build_pass

    ctx.seed_all()
    return build_pass("channels", {"epochs": 0, **options}).apply(model, ctx)


def _check_thinner(model, result, target: float | None = None, most: float = 0.6) -> dict:
    """Same output shape, fewer parameters, MACs at ``target`` (within 5%) or below ``most``
    of the model's."""
    metrics = result.metrics
    thin = result.model
    assert thin.output_shape == model.output_shape
    assert metrics["groups_pruned"] >= 1 and metrics["params_after"] < metrics["params_before"]
    fraction = metrics["macs_after"] / metrics["macs_before"]
    if target is None:
        assert fraction < most, fraction
    else:
        assert abs(fraction - target) <= TOLERANCE * target, fraction
    return metrics


def _converts_to_int8(thin, ctx, path, macs: int) -> None:
    """Verified full-int8 (``convert`` raises otherwise) with the MACs the Keras model has."""
    import tfedge

    result = tfedge.convert(thin, path, calib=ctx.x, calib_samples=4, in_process=True)
    assert result.full_integer
    report = tfedge.inspect(path)
    assert report.macs == macs
    assert tuple(report.outputs[0].shape)[1:] == tuple(thin.output_shape)[1:]


@pytest.mark.parametrize("name", ["EfficientNetB0", "ResNet50"])
def test_target_macs_half_converts_to_int8(ctx, tmp_path, name) -> None:
    k = _keras()
    model = getattr(k.applications, name)(input_shape=SIZE, weights=None, classes=10)
    result = _apply(model, ctx, target_macs=TARGET)
    metrics = _check_thinner(model, result, target=TARGET)
    _converts_to_int8(result.model, ctx, tmp_path / f"{name}.tflite", metrics["macs_after"])


def test_mobilenetv3small_runs_and_names_what_it_left_whole(ctx) -> None:
    k = _keras()
    model = k.applications.MobileNetV3Small(input_shape=SIZE, weights=None, classes=10)
    result = _apply(model, ctx, keep=0.5)
    metrics = _check_thinner(model, result, most=0.8)
    assert np.all(np.isfinite(result.model.predict(ctx.x[:2], verbose=0)))
    whole = [g for g in metrics["groups"] if "left_whole" in g]
    pruned = [g for g in metrics["groups"] if g["channels_after"] < g["channels_before"]]
    assert whole and pruned
    assert all(g["left_whole"] and g["channels_after"] == g["channels_before"] for g in whole)
    reasons = " ".join(g["left_whole"] for g in whole)
    assert "does not follow" in reasons  # the hard-swish / squeeze-excite TFOpLambdas
    assert "model output" in reasons or "softmax" in reasons


def test_mobilenetv2_from_a_keras3_file_through_the_bridge(ctx, tmp_path) -> None:
    from tfedge._tf import import_keras3
    from tfedge.optimize.recipe import load_recipe
    from tfedge.optimize.worker import load_model_for
    from tfedge.passes.channel_graph import ChannelGraph

    keras = import_keras3()
    keras.utils.set_random_seed(0)
    model3 = keras.applications.MobileNetV2(input_shape=SIZE, alpha=0.35, weights=None, classes=10)
    path = tmp_path / "mobilenetv2_k3.keras"
    model3.save(path)
    recipe = tmp_path / "channels.yaml"
    recipe.write_text(f"schema_version: 1\npasses:\n  - channels: {{target_macs: {TARGET}}}\n")
    model = load_model_for(str(path), load_recipe(recipe))  # as the optimize worker loads it
    assert type(model).__module__.startswith("tf_keras")
    graph = ChannelGraph(model)
    assert sum(g.prunable for g in graph.groups) == len(graph.groups) - 1  # all but the head
    result = _apply(model, ctx, target_macs=TARGET)
    metrics = _check_thinner(model, result, TARGET)
    _converts_to_int8(result.model, ctx, tmp_path / "mobilenetv2.tflite", metrics["macs_after"])
