"""Per-layer precision (``convert --int16/--float``): ai-edge-quantizer's recipes on the real
float32 conversion of the digits model, checked in the written flatbuffer and in LiteRT."""

from __future__ import annotations

import json

import pytest

import tfedge
from tfedge.convert.keras_layers import keras_layers
from tfedge.convert.layer_names import op_layers
from tfedge.convert.mixed import apply_layer_precision, rank_layers
from tfedge.convert.tflite_model import read_tflite
from tfedge.errors import ProfileError, UsageError

from .conftest import assert_one_error_line

pytestmark = [pytest.mark.slow, pytest.mark.tf]


@pytest.fixture(scope="module")
def digits_f32(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "digits_f32.tflite"
    tfedge.convert(digits.model, out, quant="none")
    return out


def compute_types(path, model) -> dict[str, set[str]]:
    """``{layer: the types its compute ops write}`` in the .tflite at ``path``."""
    report = read_tflite(path)
    types: dict[str, set[str]] = {}
    for op, layer in zip(report.ops, op_layers(report.ops, keras_layers(model))):
        if op.name not in ("QUANTIZE", "DEQUANTIZE"):
            types.setdefault(layer, set()).add(op.outputs[0].dtype)
    return types


def test_cli_int16_and_float_layers(run_cli, digits, tmp_path):
    out = tmp_path / "mixed.tflite"
    result = run_cli(
        "convert", digits.model, "--calib", digits.train, "--int16", "conv2",
        "--float", "fc1", "-o", out, "--json",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["layers"] == [
        {"layer": "conv2", "precision": "int16", "ops": ["CONV_2D"]},
        {"layer": "fc1", "precision": "float", "ops": ["FULLY_CONNECTED"]},
    ]
    assert report["full_integer"] is False and report["io"] == "int8"
    assert [f["layer"] for f in report["float_ops"]] == ["fc1"]
    types = compute_types(out, digits.model)
    assert types.pop("conv2") == {"int16"} and types.pop("fc1") == {"float32"}
    assert set(types) == {"conv1", "pool", "flatten", "logits"}
    assert all(t == {"int8"} for t in types.values()), types
    fc1_weights = [op.inputs[1] for op in read_tflite(out).ops if op.name == "FULLY_CONNECTED"]
    assert [w.dtype for w in fc1_weights] == ["float32", "int8"]  # fc1 stays float32


def test_most_sensitive_layer_in_int16_keeps_int8_accuracy(
    digits, digits_int8, digits_f32, tmp_path
):
    ranked = rank_layers(digits_f32, digits.train, keras_layers(digits.model))
    assert {s.layer for s in ranked} == {"conv1", "conv2", "pool", "flatten", "fc1", "logits"}
    assert [s.error for s in ranked] == sorted((s.error for s in ranked), reverse=True)
    top = ranked[0].layer
    out = tmp_path / "top_int16.tflite"
    result = apply_layer_precision(
        digits_f32,
        out,
        digits.train,
        {top: "int16"},
        layers=keras_layers(digits.model),
        profile="rpi3b",  # full-integer: int16 activations are integer
    )
    assert result.full_integer and result.float_ops == []
    types = compute_types(out, digits.model)
    assert types.pop(top) == {"int16"}
    assert all(t == {"int8"} for t in types.values()), types
    mixed = tfedge.evaluate(out, digits.test).accuracy
    plain = tfedge.evaluate(digits_int8, digits.test).accuracy
    assert mixed is not None and plain is not None
    assert mixed * 100 >= plain * 100 - 0.5, (top, mixed, plain)


def test_float_layer_refused_by_full_integer_profile(digits, digits_f32, tmp_path):
    out = tmp_path / "x.tflite"
    with pytest.raises(ProfileError, match="rpi-zero-2w requires a full-integer model.*fc1"):
        apply_layer_precision(
            digits_f32, out, digits.train, {"fc1": "float"}, profile="rpi-zero-2w"
        )
    assert not out.exists()


def test_quantized_model_is_not_a_starting_point(digits, digits_int8, tmp_path):
    with pytest.raises(UsageError, match="not a float32 model"):
        apply_layer_precision(digits_int8, tmp_path / "x.tflite", digits.train, {"fc1": "int16"})


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["--int16", "conv9"], 2, ["no layer 'conv9'", "did you mean 'conv2'", "fc1, logits"]),
        (["--int16", "fc1", "--float", "fc1"], 2, ["both --int16 and --float"]),
        (["--float", "fc1", "--quant", "float16"], 2, ["--quant float16"]),
        (["--float", "fc1", "--profile", "rpi3b"], 1, ["rpi3b requires a full-integer", "fc1"]),
    ],
)
def test_bad_layer_options(run_cli, digits, tmp_path, args, code, fragments):
    out = tmp_path / "x.tflite"
    model_bytes = open(digits.model, "rb").read()
    result = run_cli(
        "convert", digits.model, "--calib", digits.train, *args, "-o", out, expect=code
    )
    assert_one_error_line(result, *fragments)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert open(digits.model, "rb").read() == model_bytes
