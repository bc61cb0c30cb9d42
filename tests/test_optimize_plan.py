"""`tfedge optimize --dry-run` (``plan_optimize``): the layers each pass will touch and skip,
checked against what the passes really do; errors before any training; nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import assert_one_error_line
from tfedge.errors import DataError, RecipeError
from tfedge.optimize import format_plan, plan_optimize

pytestmark = pytest.mark.tf


def _recipe(folder: Path, passes: list, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"schema_version": 1, "passes": passes}))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small tf_keras CNN with the layers passes skip: Rescaling, BatchNormalization, ReLU,
    DepthwiseConv2D, Flatten; and its data (x, y) plus data of the wrong shape."""
    from tfedge._tf import import_keras

    k = import_keras()
    k.utils.set_random_seed(0)
    d = tmp_path_factory.mktemp("plan")
    inp = k.Input((8, 8, 1), name="image")
    h = k.layers.Rescaling(1 / 255.0, name="rescaling")(inp)
    h = k.layers.Conv2D(8, 3, name="conv2d")(h)
    h = k.layers.BatchNormalization(name="bn")(h)
    h = k.layers.ReLU(name="relu")(h)
    h = k.layers.DepthwiseConv2D(3, name="dw")(h)
    h = k.layers.Conv2D(4, 1, name="conv2d_1")(h)
    h = k.layers.Flatten(name="flatten")(h)
    h = k.layers.Dense(16, activation="relu", name="dense")(h)
    model = k.Model(inp, k.layers.Dense(3, activation="softmax", name="logits")(h))
    model.save(d / "tiny.keras")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 64)
    np.savez(d / "data.npz", x=rng.uniform(0, 255, (64, 8, 8, 1)).astype("f4"), y=y)
    np.savez(d / "wide.npz", x=rng.uniform(0, 255, (64, 9, 8, 1)).astype("f4"), y=y)
    return d


def _real_apply(model_path: Path, data: Path, p):
    """One real pass on the model the run would give it (loaded as the worker loads it)."""
    from tfedge.io.data import load_data
    from tfedge.io.models import load_tf_keras_model
    from tfedge.passes.base import PassContext

    model = load_tf_keras_model(model_path)
    ds = load_data(data)
    ctx = PassContext(x=ds.x.astype("f4"), y=ds.y, eval_x=ds.x, eval_y=ds.y)
    return p.apply(model, ctx)


def test_prune_and_cluster_plans_touch_exactly_the_layers_the_passes_change(tiny):
    from tfedge.optimize.recipe import load_recipe

    recipe = _recipe(
        tiny,
        [
            {"prune": {"target_sparsity": 0.6, "epochs": 1, "min_weights": 40}},
            {"cluster": {"clusters": 8, "epochs": 1}},
        ],
    )
    plan = plan_optimize(tiny / "tiny.keras", recipe, tiny / "data.npz", tiny / "data.npz")
    prune, cluster = plan.passes
    assert [n.layer for n in prune.touch] == ["conv2d", "dense", "logits"]
    skipped = {n.layer: n.reason for n in prune.skip}
    assert skipped["conv2d_1"] == "32 weights < min_weights 40"
    assert "DepthwiseConv2D" in skipped["dw"] and "no weights" == skipped["rescaling"]
    assert "folded" in skipped["bn"] and set(skipped) | {n.layer for n in prune.touch} == {
        "rescaling", "conv2d", "bn", "relu", "dw", "conv2d_1", "flatten", "dense", "logits"
    }  # fmt: skip
    loaded = load_recipe(recipe)
    pruned = _real_apply(tiny / "tiny.keras", tiny / "data.npz", loaded.passes[0])
    assert set(pruned.metrics["sparsity_by_layer"]) == {n.layer for n in prune.touch}
    clustered = _real_apply(tiny / "tiny.keras", tiny / "data.npz", loaded.passes[1])
    assert set(clustered.metrics["clusters_by_layer"]) == {n.layer for n in cluster.touch}
    assert "conv2d_1" in {n.layer for n in cluster.touch}  # min_weights is prune's only
    text = format_plan(plan)
    assert "pass 1 prune (target_sparsity 0.6, epochs 1, min_weights 40): 3 layer(s)" in text
    assert "touch: conv2d, dense, logits (Conv2D, Dense)" in text
    assert "checks: recipe ok; output not checked (no -o); data fits the model" in text


def test_nested_model_with_preprocessing_is_planned_on_its_flattened_layers(tmp_path):
    """A backbone used as a layer, a RandomFlip and a Rescaling with an offset (tfedge's
    test_nested builds the same kind of model): the plan names the inner layers, the dropped
    augmentation, and the preprocessing qat leaves to the converter's calibration."""
    from tfedge._tf import import_keras

    k = import_keras()
    pixels = k.Input((16, 16, 3))
    h = k.layers.Conv2D(8, 3, strides=2, activation="relu6", name="stem")(pixels)
    h = k.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    backbone = k.Model(pixels, h, name="backbone")
    image = k.Input((16, 16, 3), name="image")
    h = k.layers.RandomFlip(name="flip")(image)
    h = k.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(h)
    h = k.layers.GlobalAveragePooling2D(name="pool")(backbone(h))
    k.Model(image, k.layers.Dense(4, name="head")(h)).save(tmp_path / "nested.keras")
    recipe = _recipe(tmp_path, [{"prune": {"epochs": 1}}, {"qat": {"epochs": 1}}])
    plan = plan_optimize(tmp_path / "nested.keras", recipe)
    prune, qat = plan.passes
    assert [n.layer for n in prune.touch] == ["stem", "head"]
    assert "backbone" not in {n.layer for n in prune.skip}
    assert any("flip (RandomFlip)" in line for line in plan.prepare)
    assert any("stem" in line and "activation moved" in line for line in plan.prepare)
    assert {n.layer: n.reason for n in qat.skip} == {
        "rescale": "input preprocessing: calibrated by the converter"
    }
    assert {"stem", "stem_activation", "dw", "pool", "head"} <= {n.layer for n in qat.touch}
    assert qat.notes == ["scheme pqat"]


def test_a_selection_emptied_by_an_earlier_pass_is_the_runs_error(tiny):
    """low_rank splits `dense` (1,024 weights) into two smaller kernels: the run would train
    low_rank, then stop at prune; the dry run says so at once."""
    recipe = _recipe(
        tiny,
        [
            {"low_rank": {"param_ratio": 0.5, "epochs": 1}},
            {"prune": {"epochs": 1, "min_weights": 1000}},
        ],
    )
    with pytest.raises(RecipeError, match=r"passes\[1\] prune: no layer .* can be pruned") as info:
        plan_optimize(tiny / "tiny.keras", recipe)
    assert "dense_lr" in info.value.hint


def test_default_low_rank_is_planned_on_the_data_when_given(tiny):
    """low_rank's default ranks come from the data (max_drop): the plan says which it used."""
    recipe = _recipe(tiny, [{"low_rank": {"epochs": 1}}], "lr.yaml")
    with_data = plan_optimize(tiny / "tiny.keras", recipe, tiny / "data.npz")
    assert "chosen on the training data" in with_data.passes[0].notes[0]
    without = plan_optimize(tiny / "tiny.keras", recipe)
    assert "without --data shown for energy 0.9" in without.passes[0].notes[0]


def test_data_of_the_wrong_shape_is_the_runs_data_error(tiny):
    with pytest.raises(DataError, match="training data"):
        plan_optimize(tiny / "tiny.keras", "prune-cluster-qat", tiny / "wide.npz")


def test_cli_dry_run_json_and_text_write_nothing(tiny, run_cli):
    out = tiny / "out"
    args = ["optimize", tiny / "tiny.keras", "-r", "prune-cluster-qat", "--dry-run", "-o", out]
    printed = json.loads(run_cli(*args, "--data", tiny / "data.npz", "--json").stdout)
    assert [p["name"] for p in printed["passes"]] == ["prune", "cluster", "qat"]
    assert {n["layer"] for n in printed["passes"][0]["touch"]} == {
        "conv2d", "conv2d_1", "dense", "logits"
    }  # fmt: skip
    assert printed["convert"]["quant"] == "int8" and not out.exists()
    text = run_cli(*args).stdout
    assert "pass 3 qat" in text and "output writable" in text and not out.exists()
    bad = _recipe(tiny, [{"prune": {"layers": ["conv9*"]}}], "bad.yaml")
    failed = run_cli("optimize", tiny / "tiny.keras", "-r", bad, "--dry-run", expect=1)
    assert_one_error_line(failed, "no layer of the model can be pruned")
    assert not out.exists()


def test_cli_dry_run_usage(tiny, run_cli):
    model = tiny / "tiny.keras"
    both = run_cli("optimize", model, "-r", "int8", "--dry-run", "--resume", tiny, expect=2)
    assert_one_error_line(both, "--resume")
    missing = run_cli("optimize", model, "-r", "int8", "-o", tiny / "o2", expect=2)
    assert_one_error_line(missing, "missing option '--data'")


def test_channels_pass_is_planned_with_its_groups(tiny):
    recipe = _recipe(tiny, [{"channels": {"keep": 0.5, "round_to": 4, "minimum": 4}}], "ch.yaml")
    plan = plan_optimize(tiny / "tiny.keras", recipe)
    channels = plan.passes[0]
    assert channels.touch and all("->" in n.reason for n in channels.touch)
    assert any("model output" in n.reason for n in channels.skip)
    assert channels.notes[0].startswith("MACs ")
