"""``ota_base``: a new version optimized against the one devices run keeps its delta small.

v1 is the digits reference model through ``optimize`` (int8). v2 is the same model with its
head fine-tuned one epoch on other data (the rest frozen), optimized with that other data:
with ``ota_base: v1`` it is calibrated with v1's samples and its delta to v1 is a few percent
of its xz size; without, its calibration (other data) moves every scale and the delta grows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_error_line
from tfedge.errors import RecipeError
from tfedge.optimize.recipe import load_recipe, parse_recipe
from tfedge.zoo.demo import fine_tune_head

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _recipe(folder: Path, base: str, extra: str = "") -> Path:
    path = folder / "recipe.yaml"
    path.write_text(
        f"schema_version: 1\npasses: []\nconvert: {{quant: int8}}\n"
        f"ota_base: {{model: {base}{extra}}}\n"
    )
    return path


@pytest.fixture(scope="module")
def versions(digits, tmp_path_factory):
    from tfedge.optimize.pipeline import optimize

    d = tmp_path_factory.mktemp("ota_base")
    v1 = optimize(digits.model, "int8", digits.train, digits.test, d / "v1")
    v2_model, other = fine_tune_head(digits, d)  # as the demo's step 6b does
    recipe = _recipe(d, "v1/model.tflite", ", pin_scales: always")
    with_base = optimize(v2_model, recipe, other, digits.test, d / "v2")
    without = optimize(v2_model, "int8", other, digits.test, d / "v2-plain")
    return {
        "dir": d, "v1": v1, "with": with_base, "without": without, "v2": v2_model, "other": other
    }  # fmt: skip


@pytest.mark.tf
@pytest.mark.slow
def test_a_head_fine_tune_with_ota_base_has_a_small_delta(versions):
    from tfedge.optimize.ota_base import delta_summary

    v1, with_base = versions["v1"], versions["with"]
    recorded = json.loads(Path(v1.output_dir, "report.json").read_text())["calibration"]
    assert (recorded["seed"], recorded["samples"], len(recorded["data_sha256"])) == (0, 256, 64)
    report = json.loads(Path(with_base.output_dir, "report.json").read_text())
    section = report["ota_base"]
    assert section == with_base.ota_base and section["calibration_matched"] is True
    assert report["calibration"]["data_sha256"] == recorded["data_sha256"]
    unpinned = section["unpinned"]
    assert unpinned["delta_share_of_xz"] < 0.05, section  # measured 1,040 B, 2.6%
    # without ota_base, the other data calibrates v2: scales move, the delta grows
    plain = delta_summary(v1.model, Path(versions["without"].model))
    assert plain["delta_bytes"] > 1.3 * unpinned["delta_bytes"], (plain, section)  # 1,628 B


@pytest.mark.tf
@pytest.mark.slow
def test_pinned_scales_are_the_base_s_and_shrink_the_delta(versions):
    """pin_scales: always: model.tflite takes v1's quantization parameters (re-run and
    re-evaluated: kept only within 1 point of the unpinned model) and its delta shrinks."""
    from tfedge.convert.tflite_model import read_tflite

    v1, with_base = versions["v1"], versions["with"]
    section = with_base.ota_base
    assert section["scales_pinned"] and section["pinning"]["tensors"] > 0, section
    assert section["delta_bytes"] < section["unpinned"]["delta_bytes"]  # measured 556 < 1,040
    pinning = section["pinning"]
    assert 100 * (pinning["accuracy_unpinned"] - pinning["accuracy"]) <= 1.0
    base, pinned = read_tflite(v1.model), read_tflite(with_base.model)
    assert [(t.scale, t.zero_point) for t in base.tensors] == [
        (t.scale, t.zero_point) for t in pinned.tensors
    ]
    stage = read_tflite(Path(with_base.output_dir, with_base.final.tflite))
    assert [t.scale for t in stage.tensors] != [t.scale for t in base.tensors]  # unpinned kept
    assert "pinned to the base's" in Path(with_base.output_dir, "report.md").read_text()
    assert "OTA delta from the base" in Path(with_base.output_dir, "report.md").read_text()


@pytest.mark.tf
@pytest.mark.slow
def test_unknown_calibration_is_said_in_the_report(versions, digits, tmp_path):
    """A base whose calibration data cannot be found: calibrated with this run's data,
    and the report says so; a calibration_data that is not the base's is an error."""
    import shutil

    from tfedge.io.data import load_data
    from tfedge.optimize.ota_base import plan

    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(versions["v1"].model, base / "model.tflite")
    report = json.loads(Path(versions["v1"].output_dir, "report.json").read_text())
    report["calibration"]["data"] = str(tmp_path / "gone.npz")
    (base / "report.json").write_text(json.dumps(report))
    other = load_data(versions["other"])
    recipe = load_recipe(_recipe(tmp_path, "base/model.tflite"))
    unmatched = plan(recipe, other)
    assert not unmatched.matched and "could not find the data" in unmatched.note
    assert unmatched.calib is None  # this run's data calibrates
    matched = plan(recipe, load_data(digits.train))  # --data is the base's data
    assert matched.matched and matched.calib is not None
    np.savez(tmp_path / "x.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.zeros(4))
    wrong = load_recipe(_recipe(tmp_path, "base/model.tflite", ", calibration_data: x.npz"))
    with pytest.raises(RecipeError, match="is not the data"):
        plan(wrong, other)


@pytest.mark.tf
def test_freeze_and_signature_checks(digits, digits_int8, tmp_path):
    from tfedge._tf import import_keras
    from tfedge.optimize.ota_base import check_signature, freeze

    k = import_keras()
    model = k.models.load_model(digits.model)
    assert [layer.name for layer in model.layers][0] == "conv1"
    assert freeze(model, ("conv1", "fc*")) == ["conv1", "fc1"]
    assert not model.layers[0].trainable and model.layers[-1].trainable
    with pytest.raises(RecipeError, match="'nope' names no layer") as err:
        freeze(model, ("nope",))
    assert err.value.hint
    check_signature(model, str(digits_int8))  # same inputs and outputs: no error
    other = k.Sequential([k.layers.InputLayer(input_shape=(5,)), k.layers.Dense(3)])
    with pytest.raises(RecipeError, match="has inputs \\(8, 8, 1\\), the model \\(5\\)"):
        check_signature(other, str(digits_int8))


def test_recipe_option_is_validated(tmp_path):
    (tmp_path / "v1.tflite").write_bytes(b"x")
    recipe = load_recipe(_recipe(tmp_path, "v1.tflite", ", freeze: head"))
    assert recipe.ota_base.model == str(tmp_path / "v1.tflite")
    assert recipe.ota_base.freeze == ("head",)
    assert "ota_base" in recipe.to_dict() and "ota_base" not in load_recipe("int8").to_dict()
    again = parse_recipe(recipe.text, str(tmp_path / "recipe.yaml"), tmp_path)
    assert again == recipe
    with pytest.raises(RecipeError, match="ota_base: model file .*missing.tflite does not exist"):
        load_recipe(_recipe(tmp_path, "missing.tflite"))
    with pytest.raises(RecipeError, match="unknown option 'frozen'") as err:
        load_recipe(_recipe(tmp_path, "v1.tflite", ", frozen: [head]"))
    assert "freeze" in err.value.hint
    with pytest.raises(RecipeError, match="ota_base.pin_scales = 'yes' is not one of"):
        load_recipe(_recipe(tmp_path, "v1.tflite", ", pin_scales: 'yes'"))
    override = load_recipe(
        "int8", [f"ota_base.model={tmp_path / 'v1.tflite'}", "ota_base.pin_scales=never"]
    )
    assert override.ota_base.model == str(tmp_path / "v1.tflite")
    assert override.ota_base.pin_scales == "never"


def test_missing_base_is_one_clear_error(run_cli, tmp_path):
    recipe = _recipe(tmp_path, "missing.tflite")
    for name in ("m.keras", "d.npz", "e.npz"):
        (tmp_path / name).write_bytes(b"")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("recipes", "check", recipe, expect=1)
    assert_one_error_line(result, "ota_base", "missing.tflite", "does not exist")
    result = run_cli(
        "optimize", tmp_path / "m.keras", "-r", recipe, "--data", tmp_path / "d.npz",
        "--eval", tmp_path / "e.npz",
        "-o", tmp_path / "out", expect=1,
    )  # fmt: skip
    assert_one_error_line(result, "ota_base", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.tf
@pytest.mark.slow
def test_a_base_of_another_model_is_refused_before_anything_trains(versions, digits, tmp_path):
    """Through optimize: the worker checks the base against the model; nothing is written."""
    from tfedge._tf import import_keras, import_tf
    from tfedge.errors import RecipeError as Refused
    from tfedge.optimize.pipeline import optimize

    k, tf = import_keras(), import_tf()
    other = k.Sequential([k.layers.InputLayer(input_shape=(5,)), k.layers.Dense(3)])
    converter = tf.lite.TFLiteConverter.from_keras_model(other)
    (tmp_path / "other.tflite").write_bytes(converter.convert())
    recipe = _recipe(tmp_path, "other.tflite")
    with pytest.raises(Refused, match="other.tflite has inputs \\(5\\), the model \\(8, 8, 1\\)"):
        optimize(versions["v2"], recipe, digits.train, digits.test, tmp_path / "out")
    from tfedge.optimize.pin_scales import pin_scales

    raw = Path(versions["v1"].model).read_bytes()
    assert pin_scales((tmp_path / "other.tflite").read_bytes(), raw)[0] is None  # not the same
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.tf
def test_frozen_layers_keep_their_weights_through_qat(digits):
    """tfmot's QAT wrapper trains its layer's kernel even when the layer is not trainable:
    ``freeze_context`` puts the frozen layers' weights back after every step."""
    from tfedge._tf import import_keras
    from tfedge.optimize.ota_base import freeze_context
    from tfedge.passes.base import PassContext
    from tfedge.passes.registry import build_pass

    data = np.load(digits.train)
    model = import_keras().models.load_model(digits.model)
    before = {w.name: w.numpy().copy() for w in model.weights}
    ctx = PassContext(x=data["x"][:256].astype(np.float32), y=data["y"][:256])
    freeze_context(ctx, ("conv*", "fc1"))
    result = build_pass("qat", {"epochs": 1}, "qat").apply(model, ctx)
    after = {w.name: w.numpy() for w in result.model.weights if w.name in before}
    assert sorted(after) == sorted(before)
    changed = sorted(n for n in after if not np.array_equal(after[n], before[n]))
    assert changed == ["logits/bias:0", "logits/kernel:0"]
