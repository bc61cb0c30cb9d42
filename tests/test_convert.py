"""`tfedge convert`: real TensorFlow conversion, verified with the real flatbuffer."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tfedge
from tfedge.convert.tflite_model import read_tflite
from tfedge.errors import UsageError, VerificationError

from .conftest import assert_one_error_line

pytestmark = [pytest.mark.slow, pytest.mark.tf]


def test_int8_default_is_full_integer(run_cli, digits, tmp_path):
    out = tmp_path / "d.tflite"
    result = run_cli("convert", digits.model, "--calib", digits.train, "-o", out, "--json")
    report = json.loads(result.stdout)
    assert report["full_integer"] is True and report["float_ops"] == []
    assert "converting" not in result.stderr  # --json is quiet
    model = read_tflite(out)
    assert model.inputs[0].dtype == "int8" and model.outputs[0].dtype == "int8"
    assert {op.name for op in model.ops} >= {"CONV_2D", "FULLY_CONNECTED"}


def test_same_seed_gives_byte_identical_model(digits, tmp_path):
    a = tfedge.convert(
        digits.model, tmp_path / "a.tflite", calib=digits.train, seed=3, calib_samples=64
    )
    b = tfedge.convert(
        digits.model, tmp_path / "b.tflite", calib=digits.train, seed=3, calib_samples=64
    )
    assert (tmp_path / "a.tflite").read_bytes() == (tmp_path / "b.tflite").read_bytes()
    assert a.calib_samples == b.calib_samples == 64


def test_float32_io_is_still_full_integer(digits, tmp_path):
    result = tfedge.convert(digits.model, tmp_path / "f.tflite", calib=digits.train, io="float32")
    model = read_tflite(result.output)
    assert model.inputs[0].dtype == "float32"
    assert result.full_integer, result.float_ops


def test_int16x8_uses_int16_activations(digits, tmp_path):
    result = tfedge.convert(
        digits.model, tmp_path / "a16.tflite", calib=digits.train, quant="int16x8"
    )
    model = read_tflite(result.output)
    assert result.full_integer and result.io == "int16"
    conv = next(op for op in model.ops if op.name == "CONV_2D")
    assert conv.outputs[0].dtype == "int16" and conv.inputs[1].dtype == "int8"


@pytest.mark.parametrize("quant", ["float16", "dynamic", "none"])
def test_float_modes_convert_without_calibration(digits, digits_int8, tmp_path, quant):
    """Also: inspect counts the same parameters as for the int8 file (its int32 biases
    included) and as Keras; the float ops name the digits layers."""
    from tfedge.analyze.inspect import inspect
    from tfedge.io.models import detect_format, load_keras_model

    result = tfedge.convert(digits.model, tmp_path / f"{quant}.tflite", quant=quant)
    assert result.size_bytes > 0 and not result.full_integer
    keras_params = load_keras_model(detect_format(digits.model)).count_params()
    assert inspect(result.output).parameters == inspect(digits_int8).parameters == keras_params
    layers = {f.layer for f in result.float_ops if f.op in ("CONV_2D", "FULLY_CONNECTED")}
    assert layers == {"conv1", "conv2", "fc1", "logits"}


def test_float_op_is_named_and_no_file_left(run_cli, float_op_model, tmp_path):
    model, calib = float_op_model
    out = tmp_path / "sin.tflite"
    result = run_cli("convert", model, "--calib", calib, "-o", out, "--trust-model", expect=1)
    assert_one_error_line(result, "SIN", "layer 'sine'", "--allow-float-ops")
    assert list(tmp_path.iterdir()) == []


def test_allow_float_ops_keeps_the_model_and_lists_ops(float_op_model, tmp_path):
    model, calib = float_op_model
    result = tfedge.convert(
        model, tmp_path / "sin.tflite", calib=calib, allow_float_ops=True, trust_model=True
    )
    assert not result.full_integer
    assert [(op.op, op.layer) for op in result.float_ops] == [("SIN", "sine")]


def test_verification_error_carries_the_ops(float_op_model, tmp_path):
    model, calib = float_op_model
    with pytest.raises(VerificationError) as info:
        tfedge.convert(model, tmp_path / "sin.tflite", calib=calib, trust_model=True)
    assert info.value.float_ops[0].op == "SIN"


def test_in_memory_model_converts(digits, tmp_path):
    from tfedge.io.models import detect_format, load_keras_model

    model = load_keras_model(detect_format(digits.model))
    x = np.load(digits.train)["x"][:32]
    assert tfedge.convert(model, tmp_path / "m.tflite", calib=x).full_integer


def test_h5_and_savedmodel_inputs(digits, tmp_path):
    from tfedge.io.models import detect_format, load_keras_model

    model = load_keras_model(detect_format(digits.model))
    model.save(tmp_path / "m.h5")
    model.save(tmp_path / "sm", save_format="tf")
    for src in (tmp_path / "m.h5", tmp_path / "sm"):
        result = tfedge.convert(
            src, tmp_path / f"{src.stem}.tflite", calib=digits.train, calib_samples=32
        )
        assert result.full_integer


def test_int8_without_calibration_is_a_usage_error(digits, tmp_path):
    with pytest.raises(UsageError, match="--calib"):
        tfedge.convert(digits.model, tmp_path / "x.tflite")


def test_converter_crash_is_a_clear_error(run_cli, tmp_path):
    """A Lambda that kills its own process with SIGSEGV when the model is built: a real crash."""
    from tfedge._tf import import_keras

    k = import_keras()
    crash = "lambda t: (__import__('os').kill(__import__('os').getpid(), 11), t)[1]"
    crashing = k.Sequential(
        [k.layers.InputLayer(input_shape=(4,)), k.layers.Lambda(lambda t: t, name="boom")]
    )
    crashing.layers[0].function = eval(
        crash
    )  # swapped in after building, so only the child runs it
    crashing.save(tmp_path / "crash.h5")
    result = run_cli(
        "convert",
        tmp_path / "crash.h5",
        "--quant",
        "none",
        "-o",
        tmp_path / "c.tflite",
        "--trust-model",
        expect=1,
    )
    assert_one_error_line(result, "converter crashed (SIGSEGV)")
    assert "converting" in result.stderr  # the stage line, terminal or not
    assert not (tmp_path / "c.tflite").exists()


def test_recurrent_layer_failure_names_the_fix(tmp_path):
    from tfedge._tf import import_keras
    from tfedge.errors import ConversionError

    k = import_keras()
    model = k.Sequential(
        [k.layers.InputLayer(input_shape=(5, 4)), k.layers.GRU(4), k.layers.Dense(2)]
    )
    model.save(tmp_path / "gru.keras")
    x = np.random.default_rng(0).normal(size=(8, 5, 4)).astype(np.float32)
    with pytest.raises(ConversionError, match="recurrent layer 'gru' \\(GRU\\)") as info:
        tfedge.convert(tmp_path / "gru.keras", tmp_path / "gru.tflite", calib=x)
    assert "unroll=True" in info.value.hint and "--quant dynamic" in info.value.hint
    assert not (tmp_path / "gru.tflite").exists()


def test_profile_budget_failure_names_the_number(run_cli, digits, tmp_path):
    import yaml

    from tfedge.targets.profiles import load_profile

    base = load_profile("rpi4")
    doc = yaml.safe_load(open(base.source).read())
    doc["name"] = "tiny-board"
    doc["budgets"]["max_model_bytes"] = 10_000
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "d.tflite"
    result = run_cli(
        "convert",
        digits.model,
        "--calib",
        digits.train,
        "-o",
        out,
        "--profile",
        tmp_path / "tiny.yaml",
        expect=1,
    )
    assert_one_error_line(result, "10,000")
    assert not out.exists()
    assert run_cli(
        "convert", digits.model, "--calib", digits.train, "-o", out, "--profile", "rpi4", "--json"
    )
    assert out.exists()


def test_in_memory_quantization_aware_model_converts(digits, tmp_path):
    """QAT models cannot round-trip through .keras/.h5; convert must still take them in memory."""
    import tensorflow_model_optimization as tfmot

    from tfedge.io.models import detect_format, load_keras_model

    qat = tfmot.quantization.keras.quantize_model(load_keras_model(detect_format(digits.model)))
    x = np.load(digits.train)["x"][:32]
    result = tfedge.convert(qat, tmp_path / "qat.tflite", calib=x)
    assert result.full_integer
    assert {op.layer for op in read_tflite(result.output).ops} >= {
        "quant_conv1",
        "quant_conv2",
    }  # tfmot wrappers
    from tfedge.convert.keras_layers import keras_layers
    from tfedge.convert.layer_names import op_layers

    named = op_layers(read_tflite(result.output).ops, keras_layers(qat))
    assert {"conv1", "conv2", "fc1", "logits"} <= set(named)  # the user's names, unwrapped


def test_a_tf_keras_model_converts_from_its_inference_alone_to_keras_bytes(tmp_path):
    """The converter reads a SavedModel of the model's inference function (no per-layer Keras
    traces); with two named outputs, the bytes are still ``from_keras_model``'s own."""
    import contextlib
    import importlib

    from tfedge._tf import import_keras, import_tf

    worker = importlib.import_module("tfedge.convert.worker")
    k, tf = import_keras(), import_tf()
    inp = k.Input((6,), name="features")
    hidden = k.layers.Dense(8, activation="relu", name="hidden")(inp)
    model = k.Model(
        inp, [k.layers.Dense(3, name="b_scores")(hidden), k.layers.Dense(1, name="a_value")(hidden)]
    )
    with contextlib.ExitStack() as stack:
        specs = worker.keras_input_specs(model)
        assert worker._lean_savedmodel(tf, model, specs, stack) is not None  # no fallback
    tfedge.convert(model, tmp_path / "m.tflite", quant="none", in_process=True)
    direct = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    assert (tmp_path / "m.tflite").read_bytes() == direct
    outputs = read_tflite(tmp_path / "m.tflite").outputs
    assert sorted(tuple(o.shape)[1:] for o in outputs) == [(1,), (3,)]
