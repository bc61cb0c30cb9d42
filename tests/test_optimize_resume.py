"""A failed stage keeps its work, `optimize --resume OUTDIR`, and model.keras in the input's Keras.

One tiny Keras 3 model (Dense with ``hard_silu``, BatchNormalization; a 16-feature, 4-class
task it learns at once), float conversion (no calibration) and two short runs: one that fails
at its second pass, one that resumes it; the resumed run's model.keras is a Keras 3 file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import tfedge
from tests.conftest import assert_one_error_line
from tfedge.errors import DataError, OutputError, RecipeError, TrainingError
from tfedge.io.models import detect_format

pytestmark = pytest.mark.tf

FEATURES, CLASSES = 16, 4
# low_rank with epochs 0 and energy ~1 keeps the model as it is (fast, no training); the
# destructive prune then fails the guard for sure (1% of the weights, a tiny learning rate).
FIRST = {"low_rank": {"energy": 0.9999, "epochs": 0}}
FAILING_PRUNE = {"prune": {"target_sparsity": 0.99, "schedule": "constant", "epochs": 1}}
GENTLE_PRUNE = {"prune": {"target_sparsity": 0.2, "schedule": "constant", "epochs": 1}}
SETTINGS = {
    "train": {"learning_rate": 1e-5, "batch_size": 64},
    "convert": {"quant": "none"},
    "max_accuracy_drop": 10,
}


def _task(rng_seed: int = 0, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    centres = np.random.default_rng(1).normal(scale=3.0, size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, size=n)
    x = (centres[y] + rng.normal(size=(n, FEATURES))).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """A trained tiny Keras 3 classifier (saved by Keras 3) and its data files."""
    from tfedge._tf import import_keras3

    keras = import_keras3()
    keras.utils.set_random_seed(0)
    d = tmp_path_factory.mktemp("resume-task")
    x, y = _task(0)
    ex, ey = _task(2, 128)
    np.savez(d / "train.npz", x=x, y=y)
    np.savez(d / "test.npz", x=ex, y=ey)
    inp = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(24, activation="hard_silu", name="fc1")(inp)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    model = keras.Model(inp, keras.layers.Dense(CLASSES, activation="softmax", name="fc2")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    model.save(d / "model.keras")
    assert detect_format(d / "model.keras").is_keras3
    return {"model": d / "model.keras", "train": d / "train.npz", "test": d / "test.npz"}


def _recipe(path: Path, passes: list, **override) -> Path:
    recipe = {"schema_version": 1, "passes": passes, **SETTINGS, **override}
    path.write_text(yaml.safe_dump(recipe))
    return path


def _optimize_cli(run_cli, task, recipe, *extra, expect=0):
    return run_cli(
        "optimize",
        task["model"],
        "-r",
        recipe,
        "--data",
        task["train"],
        "--eval",
        task["test"],
        *extra,
        expect=expect,
    )


@pytest.fixture(scope="module")
def failed_run(task, tmp_path_factory) -> dict:
    """A run whose second pass fails the accuracy guard (the CLI: one Error line)."""
    from tests.conftest import Cli

    d = tmp_path_factory.mktemp("failed-run")
    recipe = _recipe(d / "recipe.yaml", [FIRST, FAILING_PRUNE])
    out = d / "out"
    result = _optimize_cli(Cli(), task, recipe, "-o", out, expect=1)
    return {"dir": d, "out": out, "result": result, "recipe": recipe}


def test_failed_stage_keeps_the_stages_before_it(failed_run):
    out = failed_run["out"]
    assert_one_error_line(
        failed_run["result"],
        "stage 'prune' lost",
        "lower target_sparsity",
        "max_accuracy_drop",
        f"--resume {out}",
    )
    assert not (out / "model.tflite").exists() and not (out / "model.keras").exists()
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["model"] is None
    assert report["failed"]["stage"] == "prune" and report["failed"]["error"] == "TrainingError"
    assert [s["name"] for s in report["stages"]] == ["float32", "int8", "low_rank"]
    assert sorted(p.name for p in (out / "stages").iterdir()) == [
        "00-float32.tflite",
        "01-int8.tflite",
        "02-low_rank.tflite",
    ]
    assert (out / "report.md").read_text().count("**FAILED at stage `prune`**") == 1
    assert (out / "checkpoints" / "00-low_rank" / "saved_model.pb").exists()
    state = json.loads((out / "resume.json").read_text())
    assert state["completed"] == 1 and state["checkpoint"] == "checkpoints/00-low_rank"
    assert (out / "recipe.yaml").read_text() == failed_run["recipe"].read_text()


def test_resume_refuses_a_changed_earlier_pass(failed_run, task, run_cli):
    changed = _recipe(
        failed_run["dir"] / "changed.yaml",
        [{"low_rank": {"energy": 0.9, "epochs": 0}}, GENTLE_PRUNE],
    )
    before = sorted(p.name for p in failed_run["out"].iterdir())
    with pytest.raises(RecipeError, match=r"passes\[0\] low_rank changed .*energy"):
        tfedge.optimize(
            task["model"], changed, task["train"], task["test"], resume=failed_run["out"]
        )
    result = _optimize_cli(
        run_cli, task, changed, "--resume", failed_run["out"], expect=1
    )  # the CLI: one line, with what to do
    assert_one_error_line(result, "passes[0] low_rank changed", "without --resume")
    np.savez(failed_run["dir"] / "other.npz", x=np.load(task["train"])["x"][:-1], y=np.zeros(255))
    with pytest.raises(DataError, match="is not the training data of the run"):
        tfedge.optimize(
            task["model"],
            failed_run["recipe"],
            failed_run["dir"] / "other.npz",
            task["test"],
            resume=failed_run["out"],
        )
    assert sorted(p.name for p in failed_run["out"].iterdir()) == before


def test_resume_continues_from_the_failed_stage(failed_run, task, run_cli, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(failed_run["out"], out)  # the other tests keep the original
    earlier = json.loads((out / "report.json").read_text())["stages"]
    train = {"learning_rate": 1e-4, "batch_size": 64}  # train may change: it shapes what is to come
    edited = _recipe(tmp_path / "edited.yaml", [FIRST, GENTLE_PRUNE], train=train)
    result = _optimize_cli(run_cli, task, edited, "--resume", out, "--json")
    summary = json.loads(result.stdout)
    assert summary["resumed"]["from_stage"] == "prune"
    trained_with = summary["resumed"]["reused_stages_trained_with"]
    assert trained_with == "train.learning_rate: 1e-05 -> 0.0001"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok" and [s["name"] for s in report["stages"]] == [
        "float32",
        "int8",
        "low_rank",
        "prune",
    ]
    # the first three rows are the earlier run's, not measured again
    assert [s["reused"] for s in report["stages"]] == [True, True, True, False]
    for old, new in zip(earlier, report["stages"][:3]):
        assert (new["seconds"], new["tflite_bytes"]) == (old["seconds"], old["tflite_bytes"])
    assert report["stages"][3]["sparsity"] > 0.1
    # the same layout as a normal run
    assert (out / "model.tflite").read_bytes() == (out / "stages" / "03-prune.tflite").read_bytes()
    assert not (out / "resume.json").exists() and not (out / "checkpoints").exists()
    assert sorted(p.name for p in (out / "stages").iterdir())[-1] == "03-prune.tflite"
    _assert_keras3_model_matches_tflite(out, task)
    with pytest.raises(OutputError, match="a finished run: nothing to resume"):
        tfedge.optimize(task["model"], edited, task["train"], task["test"], resume=out)


def _assert_keras3_model_matches_tflite(out: Path, task: dict) -> None:
    """The input was Keras 3: model.keras loads with Keras 3 (names kept, hard_silu back to
    Keras 3's own) and predicts what the float .tflite predicts."""
    from tfedge._tf import import_keras3, import_tf

    keras = import_keras3()
    assert detect_format(out / "model.keras").is_keras3
    loaded = keras.models.load_model(out / "model.keras")
    assert [layer.name for layer in loaded.layers] == ["features", "fc1", "bn", "fc2"]
    assert loaded.get_layer("fc1").get_config()["activation"] == "hard_silu"
    fc1 = loaded.get_layer("fc1").get_weights()[0]
    assert np.mean(fc1 == 0) > 0.1  # the pruned weights, not the input model's
    probe = np.load(task["test"])["x"][:8]
    interpreter = import_tf().lite.Interpreter(model_path=str(out / "model.tflite"))
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], probe.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], probe)
    interpreter.invoke()
    expected = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(np.asarray(loaded([probe])), expected, atol=1e-4)


def test_guard_hint_is_the_failed_pass_own(task, tmp_path):
    """distill's hint is about distillation, not sparsity or clusters."""
    from tfedge.optimize.recipe import load_recipe
    from tfedge.optimize.resume import guard
    from tfedge.optimize.stages import Stage

    recipe = load_recipe(_recipe(tmp_path / "r.yaml", [{"distill": {"width": 0.5, "epochs": 1}}]))
    row = dict.fromkeys(("keras_accuracy", "mse"), None)
    sizes = dict.fromkeys(("params", "nonzero_params", "unique_weights"), 1)
    sizes |= dict.fromkeys(("tflite_bytes", "gzip_bytes", "xz_bytes"), 1)
    base = Stage("float32", 0.9, sparsity=0.0, seconds=0, tflite="", quant="", **row, **sizes)
    bad = Stage("distill", 0.5, sparsity=0.0, seconds=0, tflite="", quant="", **row, **sizes)
    with pytest.raises(TrainingError) as caught:
        guard(recipe, base, bad, recipe.passes[0])
    assert "temperature" in caught.value.hint and "max_accuracy_drop" in caught.value.hint
    assert "sparsity" not in caught.value.hint and "cluster" not in caught.value.hint


def test_keras3_export_refuses_a_model_keras3_computes_differently():
    """tf_keras's hard_sigmoid (0.2x + 0.5) is not Keras 3's: the check on seeded inputs says so
    (optimize then writes model_tf_keras.keras, never a model.keras that computes otherwise)."""
    from tfedge._tf import import_keras
    from tfedge.io.keras3_export import KerasExportError, to_keras3

    k = import_keras()
    inp = k.Input((FEATURES,), name="features")
    same = k.Model(inp, k.layers.Dense(3, activation="tfedge>hard_silu", name="fc")(inp))
    assert to_keras3(same).get_layer("fc").get_config()["activation"] == "hard_silu"
    other = k.Model(inp, k.layers.Dense(3, activation="hard_sigmoid", name="fc")(inp))
    with pytest.raises(KerasExportError, match="differs"):
        to_keras3(other)


def test_keras3_export_writes_scalar_ops_as_rescaling():
    """tf_keras records ``x + 3``, ``x * (1/6)``, ``3 - x`` and ``x / 2`` as TFOpLambda, which
    Keras 3 cannot load (MobileNetV3's hard-sigmoid is written so): they go out as Rescaling
    layers of the same names, and the Keras 3 model computes the same."""
    from tfedge._tf import import_keras
    from tfedge.io.keras3_export import to_keras3

    k = import_keras()
    inp = k.Input((FEATURES,), name="features")
    h = k.layers.Dense(8, name="fc")(inp)
    a = k.layers.ReLU(6.0, name="relu6")(h + 3.0) * (1.0 / 6.0)
    b = (3.0 - h) / 2.0
    model = k.Model(inp, k.layers.Concatenate(name="cat")([a, b]))
    ops = [layer.name for layer in model.layers if type(layer).__name__ == "TFOpLambda"]
    assert len(ops) == 4

    model3 = to_keras3(model)  # verified on seeded inputs inside

    assert {type(model3.get_layer(name)).__name__ for name in ops} == {"Rescaling"}
    x = np.random.default_rng(0).normal(size=(8, FEATURES)).astype(np.float32)
    np.testing.assert_allclose(model3(x), model(x), rtol=1e-5, atol=1e-6)
