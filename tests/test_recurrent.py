"""Recurrent models (LSTM, GRU; tf_keras and Keras 3) convert from a batch-1 signature.

Tiny models (5 time steps, 3 features, 4 units) and 8 calibration samples keep this fast: the
conversions run in this process (``in_process=True``), one CLI call checks the worker path.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import tfedge
from tfedge.analyze.evaluate import predict
from tfedge.convert.tflite_model import read_tflite
from tfedge.errors import ConversionError

pytestmark = [pytest.mark.tf, pytest.mark.slow]

X = np.random.default_rng(7).normal(size=(8, 5, 3)).astype(np.float32)
# Largest |tflite - keras| output difference each mode may leave on these small models.
TOLERANCE = {"none": 1e-5, "float16": 1e-2, "dynamic": 5e-2, "int8": 0.1}


def _keras(version: str):
    from tfedge._tf import import_keras, quiet_native_stderr

    k2 = import_keras()
    if version == "2":
        return k2
    with quiet_native_stderr():
        import keras
    return keras


@pytest.fixture(scope="module")
def rnn_models(tmp_path_factory):
    """'{lstm,gru}{2,3}' (and 'ugru3', unrolled) -> (.keras path, Keras outputs on X)."""
    d = tmp_path_factory.mktemp("recurrent")
    models = {}
    for version in ("2", "3"):
        k = _keras(version)
        k.utils.set_random_seed(1)
        for kind, unroll in (("lstm", False), ("gru", False), ("ugru", True)):
            if unroll and version == "2":
                continue
            layer = k.layers.LSTM if kind == "lstm" else k.layers.GRU
            inp = k.Input((5, 3), name="seq")
            x = layer(4, name=kind, unroll=unroll)(inp)
            model = k.Model(inp, k.layers.Dense(2, name="head")(x))
            path = d / f"{kind}{version}.keras"
            model.save(path)
            models[f"{kind}{version}"] = (path, np.asarray(model.predict(X, verbose=0)))
    return models


def _check(path, expected, quant: str) -> None:
    report = read_tflite(path)
    assert [t.shape for t in report.inputs] == [(1, 5, 3)]
    got = predict(str(path), X, isolate=False)  # sample by sample, each from a fresh state
    assert np.max(np.abs(got - expected)) < TOLERANCE[quant]


@pytest.mark.parametrize(
    "name,quant",
    [
        ("lstm2", "none"),
        ("gru2", "none"),
        ("lstm3", "none"),
        ("gru3", "none"),
        ("lstm2", "float16"),
        ("gru3", "float16"),
        ("gru2", "dynamic"),
        ("lstm3", "dynamic"),
    ],
)
def test_float_modes_convert_with_batch_one(rnn_models, tmp_path, name, quant):
    path, expected = rnn_models[name]
    out = tmp_path / f"{name}.tflite"
    tfedge.convert(path, out, quant=quant, in_process=True)
    _check(out, expected, quant)


@pytest.mark.parametrize("name", ["lstm2", "ugru3"])
def test_int8_where_the_converter_quantizes_the_loop(rnn_models, tmp_path, name):
    path, expected = rnn_models[name]
    out = tmp_path / f"{name}.tflite"
    result = tfedge.convert(path, out, calib=X, in_process=True)
    assert result.full_integer
    _check(out, expected, "int8")


@pytest.mark.parametrize(
    "name,quant,layer",
    [
        ("lstm3", "int8", "'lstm' (LSTM)"),
        ("gru2", "int8", "'gru' (GRU)"),
        ("gru3", "int16x8", "'gru' (GRU)"),
        ("lstm2", "int16x8", "'lstm' (LSTM)"),  # the fused LSTM op has no int16x8 kernel
    ],
)
def test_full_integer_refusal_names_the_layer(rnn_models, tmp_path, name, quant, layer):
    path, _ = rnn_models[name]
    with pytest.raises(ConversionError, match=re.escape(f"recurrent layer {layer}")) as info:
        tfedge.convert(path, tmp_path / "x.tflite", calib=X, quant=quant, in_process=True)
    assert "unroll=True" in info.value.hint and "--quant dynamic" in info.value.hint
    assert list(tmp_path.iterdir()) == []


def test_batch_size_option_and_evaluation_in_groups(rnn_models, tmp_path):
    path, expected = rnn_models["lstm2"]
    out = tmp_path / "b3.tflite"
    tfedge.convert(path, out, quant="none", batch_size=3, in_process=True)
    assert [t.shape for t in read_tflite(out).inputs] == [(3, 5, 3)]
    got = predict(str(out), X, isolate=False)  # 8 samples: groups of 3, the last one padded
    assert got.shape == expected.shape and np.max(np.abs(got - expected)) < 1e-5


def test_other_models_keep_their_dynamic_batch_and_bytes(tmp_path):
    from tfedge._tf import import_tf

    k, tf = _keras("2"), import_tf()
    model = k.Sequential([k.Input((4,)), k.layers.Dense(3)])
    model.save(tmp_path / "dense.keras")
    tfedge.convert(tmp_path / "dense.keras", tmp_path / "d.tflite", quant="none", in_process=True)
    direct = tf.lite.TFLiteConverter.from_keras_model(
        k.models.load_model(tmp_path / "dense.keras")
    ).convert()
    assert (tmp_path / "d.tflite").read_bytes() == direct


def test_cli_converts_keras3_lstm(rnn_models, run_cli, tmp_path):
    """The issue's case: a Keras 3 LSTM, batch size unset, `convert --quant none` (worker)."""
    path, expected = rnn_models["lstm3"]
    out = tmp_path / "lstm3.tflite"
    run_cli("convert", path, "--quant", "none", "-o", out)
    _check(out, expected, "none")
