"""`tfedge optimize` end to end: real tfmot, real training (few epochs), real conversion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import tfedge
from tests.conftest import assert_one_error_line
from tfedge.convert.tflite_model import read_tflite
from tfedge.convert.verify import find_float_ops
from tfedge.errors import TrainingError
from tfedge.optimize.recipe import RECIPE_DIR, load_recipe

pytestmark = pytest.mark.slow
STAGE_KEYS = {
    "name",
    "accuracy",
    "tflite_bytes",
    "gzip_bytes",
    "params",
    "nonzero_params",
    "unique_weights",
}


def _recipe(tmp_path: Path, passes: list, **top) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"schema_version": 1, "passes": passes, **top}))
    return path


def _quick(tmp_path: Path, builtin: str) -> Path:
    """A built-in recipe with every pass cut to one epoch."""
    data = yaml.safe_load((RECIPE_DIR / f"{builtin}.yaml").read_text())
    for entry in data["passes"]:
        (options,) = entry.values()
        options["epochs"] = 1
    data.pop("max_accuracy_drop", None)
    path = tmp_path / f"{builtin}-quick.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_prune_cluster_qat_cli_end_to_end(digits, run_cli, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "optimize",
        digits.model,
        "--recipe",
        "prune-cluster-qat",
        "--set",
        "prune.target_sparsity=0.7",
        "--data",
        digits.train,
        "--eval",
        digits.test,
        "-o",
        out,
        "--json",
    )
    printed = json.loads(result.stdout)
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["float32", "int8", "prune", "cluster", "qat"]
    assert all(STAGE_KEYS <= set(s) for s in report["stages"])
    assert printed["stages"][-1]["gzip_bytes"] == report["stages"][-1]["gzip_bytes"]
    final = report["stages"][-1]
    assert final["metrics"]["scheme"] == "pcqat"
    model = read_tflite(out / "model.tflite")
    assert not find_float_ops(model)  # still full-integer after PCQAT
    for layer in ("conv1", "conv2", "fc1", "logits"):  # measured in the final int8 file
        stats = final["layers"][layer]
        assert abs(stats["sparsity"] - 0.7) <= 0.02, (layer, stats)  # --set
        assert stats["max_unique_per_channel"] <= 16 + 1, (layer, stats)
    assert report["stages"][0]["tflite_bytes"] / final["gzip_bytes"] >= 10
    assert report["stages"][0]["accuracy"] - final["accuracy"] <= 0.02
    recipe_text = (out / "recipe.yaml").read_bytes()
    assert hashlib.sha256(recipe_text).hexdigest() == report["recipe"]["sha256"]
    written = load_recipe(out / "recipe.yaml")  # the recipe as run, --set included
    assert written.passes[0].target_sparsity == 0.7
    assert written.canonical_sha256 == report["recipe"]["canonical_sha256"]
    assert "| qat |" in (out / "report.md").read_text()
    assert (out / "model.keras").exists() and not (out / "INCOMPLETE").exists()
    assert _leftovers(tmp_path) == []


def test_int8_recipe_is_convert_and_evaluate(digits, tmp_path):
    result = tfedge.optimize(digits.model, "int8", digits.train, digits.test, tmp_path / "out")
    assert [s.name for s in result.stages] == ["float32", "int8"]
    assert result.stage("float32").accuracy - result.final.accuracy <= 0.005
    assert result.final.tflite_bytes < result.stage("float32").tflite_bytes / 3
    assert Path(result.model).read_bytes() == (tmp_path / "out" / result.final.tflite).read_bytes()


@pytest.mark.parametrize("builtin", ["distill-lowrank-int8", "max-compress"])
def test_builtin_recipes_run_end_to_end(builtin, digits, tmp_path):
    result = tfedge.optimize(
        digits.model, _quick(tmp_path, builtin), digits.train, digits.test, tmp_path / "out"
    )
    assert [s.name for s in result.stages][2:] == [p for p in load_recipe(builtin).pass_names]
    assert not find_float_ops(read_tflite(result.model))
    low_rank = result.stage("low_rank")
    layers = low_rank.metrics["layers"]
    assert layers and low_rank.metrics["params_after"] == low_rank.metrics["params_before"] - sum(
        v["params_before"] - v["params_after"] for v in layers.values()
    )
    assert low_rank.params == low_rank.metrics["params_after"]


def _nan_prone_model(tmp_path: Path) -> Path:
    from tfedge._tf import import_keras

    k = import_keras()
    model = k.Sequential(
        [
            k.layers.InputLayer(input_shape=(8, 8, 1)),
            k.layers.Flatten(),
            k.layers.Dense(64, activation="relu", name="fc1"),
            k.layers.Dense(10, name="logits"),
        ]
    )
    path = tmp_path / "tiny.keras"
    model.save(path)
    return path


def test_nan_loss_stops_and_leaves_outdir_as_it_was(digits, run_cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"previous": true}')
    recipe = _recipe(
        tmp_path,
        [{"low_rank": {"param_ratio": 0.25, "epochs": 2}}],
        train={"optimizer": "sgd", "learning_rate": 0.99},
        convert={"quant": "none"},
    )
    x = np.load(digits.train)
    np.savez(tmp_path / "loud.npz", x=x["x"] * 1e6, y=x["y"])
    result = run_cli(
        "optimize",
        _nan_prone_model(tmp_path),
        "--recipe",
        recipe,
        "--data",
        tmp_path / "loud.npz",
        "--eval",
        digits.test,
        "-o",
        out,
        expect=1,
    )
    assert_one_error_line(result, "stage 'low_rank'", "NaN", "--resume")
    # The first pass failed: OUTDIR now holds the float32 and int8 stages, marked FAILED.
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["model"] is None
    assert [s["name"] for s in report["stages"]] == ["float32", "int8"]
    assert not (out / "model.tflite").exists() and (out / "resume.json").is_file()
    assert "FAILED at stage `low_rank`" in (out / "report.md").read_text()
    assert _leftovers(tmp_path) == []


def test_accuracy_guard_names_the_stage(digits, tmp_path):
    recipe = _recipe(
        tmp_path,
        [{"prune": {"target_sparsity": 0.99, "schedule": "constant", "epochs": 1}}],
        max_accuracy_drop=0.5,
    )
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="stage 'prune' lost .* points") as failed:
        tfedge.optimize(digits.model, recipe, digits.train, digits.test, out)
    assert "target_sparsity" in failed.value.hint and "--resume" in failed.value.hint
    assert not (out / "model.tflite").exists() and _leftovers(tmp_path) == []
    # The first pass failed: --resume with an edited pass reuses float32 and int8, trains prune.
    recipe = _recipe(tmp_path, [{"prune": {"target_sparsity": 0.3, "epochs": 1}}])
    result = tfedge.optimize(digits.model, recipe, digits.train, digits.test, resume=out)
    assert [(s.name, s.reused) for s in result.stages] == [
        ("float32", True),
        ("int8", True),
        ("prune", False),
    ]
    assert Path(result.model).is_file() and not (out / "resume.json").exists()


def test_interrupt_leaves_nothing_behind(digits, tmp_path):
    """Not even the missing parents of OUTDIR that the run created (``mkdir -p``)."""

    def interrupt(message):
        if message.startswith("[2/"):
            assert (tmp_path / "new" / "deeper").is_dir()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        out = tmp_path / "new" / "deeper" / "out"
        tfedge.optimize(digits.model, "int8", digits.train, digits.test, out, log=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_inspect_shows_the_compatibility_table(digits, run_cli):
    text = run_cli("inspect", digits.model).stdout
    assert "prune" in text and "cluster" in text and "qat" in text
    row = next(line for line in text.splitlines() if line.startswith("conv1 ") and "yes" in line)
    assert row.split()[1:4] == ["yes", "yes", "yes"]
    report = json.loads(run_cli("inspect", digits.model, "--json").stdout)
    assert {c["layer"]: c["prune"] for c in report["compat"]}["pool"] == "-"
