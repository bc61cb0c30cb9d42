"""`tfedge inspect` and `tfedge evaluate` with the real LiteRT interpreter."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tfedge

pytestmark = [pytest.mark.slow, pytest.mark.tf]


def test_inspect_tflite_json(run_cli, digits_int8):
    report = json.loads(run_cli("inspect", digits_int8, "--json").stdout)
    assert {"size_bytes", "ops", "full_integer", "float_ops", "inputs", "outputs"} <= set(report)
    assert report["size_bytes"] == digits_int8.stat().st_size
    assert report["full_integer"] is True
    conv = next(o for o in report["ops"] if o["op"] == "CONV_2D")
    assert conv["count"] == 2 and conv["output_dtypes"] == ["int8"]
    assert report["inputs"][0]["shape"] == [1, 8, 8, 1] and report["inputs"][0]["scale"] > 0
    # conv1 3*3*1*16 per pixel, conv2 3*3*16*32 per pixel on 8x8, fc1 512*64, logits 64*10
    assert report["macs"] == 64 * 9 * 16 + 64 * 9 * 16 * 32 + 512 * 64 + 64 * 10


def test_inspect_tflite_table_names_float_ops(run_cli, float_op_model, tmp_path):
    model, calib = float_op_model
    out = tmp_path / "sin.tflite"
    tfedge.convert(model, out, calib=calib, allow_float_ops=True, trust_model=True)
    text = run_cli("inspect", out).stdout
    assert "full-integer: NO" in text and "SIN (layer 'sine')" in text


def test_inspect_keras_layers(run_cli, digits):
    report = json.loads(run_cli("inspect", digits.model, "--json").stdout)
    assert [l["name"] for l in report["layers"]] == [
        "conv1",
        "conv2",
        "pool",
        "flatten",
        "fc1",
        "logits",
    ]
    assert report["params"] == 160 + 4640 + 32832 + 650
    assert report["keras"] == "2"


def test_evaluate_float_and_int8(run_cli, digits, digits_int8):
    float_acc = json.loads(
        run_cli("evaluate", digits.model, "--data", digits.test, "--json").stdout
    )
    int8_acc = json.loads(run_cli("evaluate", digits_int8, "--data", digits.test, "--json").stdout)
    assert float_acc["samples"] == int8_acc["samples"] == 360
    assert float_acc["accuracy"] > 0.9
    assert abs(float_acc["accuracy"] - int8_acc["accuracy"]) <= 0.02


def test_evaluate_compare(run_cli, digits, digits_int8):
    result = json.loads(
        run_cli(
            "evaluate", digits_int8, "--data", digits.test, "--compare", digits.model, "--json"
        ).stdout
    )
    assert result["top1_agreement"] > 0.95
    assert 0 < result["max_abs_diff"] < 5
    text = run_cli("evaluate", digits_int8, "--data", digits.test, "--compare", digits.model).stdout
    assert "top-1 agreement" in text


def test_evaluate_regression_reports_mse(tmp_path):
    from tfedge._tf import import_keras

    k = import_keras()
    model = k.Sequential([k.layers.InputLayer(input_shape=(4,)), k.layers.Dense(2)])
    x = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
    y = model.predict(x, verbose=0) + 0.5
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    model.save(tmp_path / "reg.keras")
    result = tfedge.evaluate(str(tmp_path / "reg.keras"), tmp_path / "reg.npz")
    assert result.task == "regression" and result.mse == pytest.approx(0.25, rel=1e-4)
