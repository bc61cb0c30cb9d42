"""Models with several inputs: data layout, int8 conversion, evaluation and optimize, end to end.

The model is a Keras 3 Functional model with an image-like input ``image`` (8, 8, 1) and a
vector input ``meta`` (4,), given in that order. The converter puts ``meta`` first in the
TFLite model (its input order does not follow Keras's), and the inputs differ in shape and in
value range (about 16x), so a mix-up of arrays, shapes or quantization parameters fails here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import tfedge
from tfedge.convert.tflite_model import read_tflite
from tfedge.errors import DataError
from tfedge.io.data import InputSpec, arrange_inputs, draw_samples, load_data

from .conftest import assert_one_error_line

SPECS = [InputSpec("image", (None, 8, 8, 1)), InputSpec("meta", (None, 4))]
PRUNE_QAT = (
    "schema_version: 1\npasses:\n"
    "  - prune: {target_sparsity: 0.5, epochs: 1}\n  - qat: {epochs: 1}\n"
    "convert: {quant: int8}\ntrain: {batch_size: 32, validation_split: 0.1}\n"
)


def _samples(n: int, seed: int) -> dict[str, np.ndarray]:
    """Four classes that need both inputs: bright or dark image, and the sign of meta[0]."""
    rng = np.random.default_rng(seed)
    bright = rng.integers(0, 2, n)
    image = rng.uniform(0, 0.5, size=(n, 8, 8, 1)) + 0.5 * bright[:, None, None, None]
    meta = rng.normal(0, 1.2, size=(n, 4))
    meta[:, 0] += np.where(rng.integers(0, 2, n) == 1, 4.0, -4.0)
    y = 2 * bright + (meta[:, 0] > 0)
    return {
        "image": image.astype("float32"),
        "meta": meta.astype("float32"),
        "y": y.astype("int64"),
    }


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    """A trained Keras 3 two-input classifier saved as .keras, with train and test .npz files."""
    from tfedge._tf import import_keras, quiet_native_stderr

    import_keras()
    with quiet_native_stderr():
        import keras
    keras.utils.set_random_seed(0)
    d = tmp_path_factory.mktemp("two_inputs")
    L = keras.layers
    image, meta = keras.Input((8, 8, 1), name="image"), keras.Input((4,), name="meta")
    a = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, activation="relu", name="conv")(image))
    b = L.Dense(8, activation="relu", name="meta_fc")(meta)
    out = L.Dense(4, name="head")(
        L.Dense(16, activation="relu", name="fc")(L.Concatenate()([a, b]))
    )
    model = keras.Model([image, meta], out)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train, test = _samples(384, 1), _samples(128, 2)
    model.fit([train["image"], train["meta"]], train["y"], epochs=30, batch_size=32, verbose=0)
    model.save(d / "two.keras")
    np.savez(d / "train.npz", **train)
    np.savez(d / "test.npz", **test)
    return d


# ---- data layout (no TensorFlow) ------------------------------------------------------------


def test_npz_with_one_array_per_input_loads_as_named_inputs(tmp_path):
    np.savez(tmp_path / "d.npz", **_samples(10, 0))
    ds = load_data(tmp_path / "d.npz")
    assert sorted(ds.x) == ["image", "meta"] and len(ds) == 10 and ds.y.shape == (10,)
    image, meta = arrange_inputs(ds.x, SPECS, "d")
    assert image.shape == (10, 8, 8, 1) and meta.shape == (10, 4)


def test_unnamed_arrays_are_matched_by_shape_only_when_unambiguous():
    rng = np.random.default_rng(0)
    x = {"pixels": rng.normal(size=(3, 8, 8, 1)), "vector": rng.normal(size=(3, 4))}
    image, meta = arrange_inputs(x, SPECS, "d")
    assert image is x["pixels"] and meta is x["vector"]
    same_shape = [InputSpec("left", (None, 4)), InputSpec("right", (None, 4))]
    with pytest.raises(
        DataError, match="no array named 'left', 'right'.*do not tell the inputs apart"
    ):
        arrange_inputs({"p": x["vector"], "q": x["vector"]}, same_shape, "d")


def test_input_count_and_shape_are_checked_against_the_model():
    data = _samples(5, 0)
    with pytest.raises(
        DataError, match=r"holds 1 input array \(x\), the model has 2 inputs: image \(8, 8, 1\)"
    ):
        arrange_inputs(data["image"], SPECS, "d")
    with pytest.raises(DataError, match=r"holds 3 input arrays .* the model has 2 inputs") as err:
        arrange_inputs(
            {"image": data["image"], "meta": data["meta"], "extra": data["meta"]}, SPECS, "d"
        )
    assert "np.savez(path, image=..., meta=..., y=y)" in err.value.hint
    with pytest.raises(
        DataError,
        match=r"input 'image': samples have shape \(8, 8\), the model expects \(8, 8, 1\)",
    ):
        arrange_inputs({"image": data["image"][..., 0], "meta": data["meta"]}, SPECS, "d")


def test_sample_counts_must_agree_and_draws_keep_rows_together(tmp_path):
    data = _samples(6, 0)
    np.savez(tmp_path / "bad.npz", image=data["image"], meta=data["meta"][:5])
    with pytest.raises(DataError, match=r"different numbers of samples \(image 6, meta 5\)"):
        load_data(tmp_path / "bad.npz")
    drawn = draw_samples({"image": data["image"], "meta": data["meta"]}, 3, seed=1)
    rows = [int(np.flatnonzero((data["meta"] == row).all(1))[0]) for row in drawn["meta"]]
    np.testing.assert_array_equal(drawn["image"], data["image"][rows])


# ---- end to end ---------------------------------------------------------------------------


def _input_name(tensor) -> str:
    return tensor.name.split(":")[0].removeprefix("serving_default_")


@pytest.mark.slow
@pytest.mark.tf
def test_two_input_keras3_model_converts_to_full_int8_and_evaluates(two_inputs, run_cli, tmp_path):
    out = tmp_path / "two.tflite"
    result = json.loads(
        run_cli(
            "convert",
            two_inputs / "two.keras",
            "--calib",
            two_inputs / "train.npz",
            "-o",
            out,
            "--json",
        ).stdout
    )
    assert result["full_integer"] and result["float_ops"] == [] and result["keras"] == "3"
    model = read_tflite(out)
    assert [t.dtype for t in model.inputs] == ["int8", "int8"]
    by_name = {_input_name(t): t for t in model.inputs}
    assert list(by_name) == ["meta", "image"]  # not the Keras order: inputs must be matched by name
    assert by_name["meta"].scale[0] > 5 * by_name["image"].scale[0]  # each input has its own scale
    keras_acc = json.loads(
        run_cli(
            "evaluate", two_inputs / "two.keras", "--data", two_inputs / "test.npz", "--json"
        ).stdout
    )["accuracy"]
    compared = json.loads(
        run_cli(
            "evaluate",
            out,
            "--data",
            two_inputs / "test.npz",
            "--compare",
            two_inputs / "two.keras",
            "--json",
        ).stdout
    )
    assert keras_acc >= 0.9
    assert compared["a"]["accuracy"] >= keras_acc - 0.03 and compared["top1_agreement"] >= 0.95


@pytest.mark.slow
@pytest.mark.tf
def test_two_input_short_optimize_prune_qat_is_full_integer(two_inputs, run_cli, tmp_path):
    (tmp_path / "prune-qat.yaml").write_text(PRUNE_QAT)
    report = json.loads(
        run_cli(
            "optimize",
            two_inputs / "two.keras",
            "--recipe",
            tmp_path / "prune-qat.yaml",
            "--data",
            two_inputs / "train.npz",
            "--eval",
            two_inputs / "test.npz",
            "-o",
            tmp_path / "out",
            "--json",
        ).stdout
    )
    assert [s["name"] for s in report["stages"]] == ["float32", "int8", "prune", "qat"]
    assert all(s["accuracy"] >= 0.85 for s in report["stages"]), [
        s["accuracy"] for s in report["stages"]
    ]
    assert report["stages"][2]["sparsity"] > 0.3
    final = tfedge.inspect(str(tmp_path / "out" / "model.tflite"))
    assert final.full_integer and len(final.inputs) == 2


# ---- bad input: one error line, no traceback, no file --------------------------------------


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
@pytest.mark.tf
def test_single_array_for_two_inputs_is_one_error_line(two_inputs, run_cli, tmp_path):
    data = _samples(8, 0)
    calib = _save(tmp_path / "x.npz", x=data["image"])
    result = run_cli(
        "convert", two_inputs / "two.keras", "--calib", calib, "-o", tmp_path / "o.tflite", expect=1
    )
    assert_one_error_line(
        result,
        "holds 1 input array (x)",
        "the model has 2 inputs",
        "image (8, 8, 1)",
        "meta (4)",
        "np.savez(path, image=..., meta=..., y=y)",
    )
    assert not list(tmp_path.glob("*.tflite*"))


@pytest.mark.slow
@pytest.mark.tf
def test_wrong_shape_of_one_input_is_one_error_line(two_inputs, run_cli, tmp_path):
    data = _samples(8, 0)
    calib = _save(tmp_path / "bad.npz", image=data["image"][..., 0], meta=data["meta"], y=data["y"])
    result = run_cli(
        "convert", two_inputs / "two.keras", "--calib", calib, "-o", tmp_path / "o.tflite", expect=1
    )
    assert_one_error_line(result, "input 'image'", "(8, 8)", "(8, 8, 1)", "channel axis")
    optimized = run_cli(
        "optimize",
        two_inputs / "two.keras",
        "--recipe",
        "int8",
        "--data",
        two_inputs / "train.npz",
        "--eval",
        calib,
        "-o",
        tmp_path / "out",
        expect=1,
    )
    assert_one_error_line(optimized, "evaluation data", "input 'image'", "(8, 8, 1)")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.tf
def test_evaluate_tflite_with_too_many_arrays_is_one_error_line(two_inputs, run_cli, tmp_path):
    data = _samples(8, 0)
    tflite = tmp_path / "two.tflite"
    tfedge.convert(
        two_inputs / "two.keras", tflite, calib=two_inputs / "train.npz", calib_samples=32
    )
    bad = _save(
        tmp_path / "three.npz",
        image=data["image"],
        meta=data["meta"],
        extra=data["meta"],
        y=data["y"],
    )
    result = run_cli("evaluate", tflite, "--data", bad, expect=1)
    assert_one_error_line(
        result, "holds 3 input arrays (extra, image, meta)", "the model has 2 inputs"
    )
