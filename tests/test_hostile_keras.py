"""Keras files that carry code: reading or converting one must not run it without --trust-model.

Each model's Lambda writes a marker file when called (its path is the lambda's default
argument, saved with the bytecode). Keras calls it while rebuilding the model, so the marker
appears exactly when a load ran the file's code.
"""

from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import pytest

import tfedge
from tests.conftest import assert_one_error_line
from tfedge.errors import ModelLoadError
from tfedge.io.models import code_bearing_layers, detect_format


def _tf_keras():
    from tfedge._tf import import_keras

    return import_keras()


def _keras3():
    from tfedge._tf import import_keras, quiet_native_stderr

    import_keras()
    with quiet_native_stderr():
        import keras
    return keras


def _evil_model(k, marker, nested: bool = False):
    # The path is a constant of the lambda's own bytecode (Keras 3 cannot restore defaults).
    writes = eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]")
    inp = k.Input((4,))
    if nested:
        inner_in = k.Input((4,))
        inner = k.Model(inner_in, k.layers.Lambda(writes, name="evil")(inner_in), name="inner")
        x = inner(inp)
    else:
        x = k.layers.Lambda(writes, name="evil")(inp)
    model = k.Model(inp, k.layers.Dense(2, name="head")(x))
    return model


def _save(model, path, marker, **kwargs):
    model.save(path, **kwargs)
    marker.unlink(missing_ok=True)  # building the model called the lambda: start clean
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """name -> (model path, marker path) for the tf_keras and Keras 3 cases."""
    d = tmp_path_factory.mktemp("hostile_keras")
    k2 = _tf_keras()
    files = {}
    for name, nested, suffix in [
        ("h5", False, "h5"),
        ("keras2", False, "keras"),
        ("nested_h5", True, "h5"),
    ]:
        marker = d / f"{name}.ran"
        files[name] = (
            _save(_evil_model(k2, marker, nested), d / f"{name}.{suffix}", marker),
            marker,
        )
    marker = d / "savedmodel.ran"
    files["savedmodel"] = (
        _save(_evil_model(k2, marker), d / "savedmodel", marker, save_format="tf"),
        marker,
    )
    k3 = _keras3()
    marker = d / "keras3.ran"
    files["keras3"] = (_save(_evil_model(k3, marker), d / "keras3.keras", marker), marker)
    np.savez(d / "data.npz", x=np.zeros((4, 4), np.float32), y=np.zeros((4, 2), np.float32))
    return d, files


@pytest.mark.tf
@pytest.mark.parametrize("name", ["h5", "keras2", "keras3", "nested_h5", "savedmodel"])
def test_loading_refuses_code_without_trust(hostile, name):
    d, files = hostile
    path, marker = files[name]
    with pytest.raises(ModelLoadError, match="evil") as info:
        tfedge.inspect(path)
    assert "--trust-model" in info.value.hint and "trust_model=True" in info.value.hint
    assert not marker.exists(), "the model's code ran"
    if name == "nested_h5":
        assert "inner/evil" in info.value.message
    with pytest.raises(ModelLoadError, match="evil"):
        tfedge.evaluate(path, d / "data.npz")
    assert not marker.exists()


@pytest.mark.tf
@pytest.mark.parametrize("name", ["h5", "keras2", "keras3", "nested_h5"])
def test_trust_model_loads_and_runs_the_code(hostile, name):
    _, files = hostile
    path, marker = files[name]
    report = tfedge.inspect(path, trust_model=True)
    assert "head" in [layer.name for layer in report.layers]
    assert marker.exists()
    marker.unlink()


@pytest.mark.tf
@pytest.mark.slow
def test_cli_inspect_and_convert_refuse_then_trust(hostile, run_cli, tmp_path):
    _, files = hostile
    path, marker = files["h5"]
    result = run_cli("inspect", path, expect=1)
    assert_one_error_line(result, "evil", "--trust-model")
    out = tmp_path / "evil.tflite"
    result = run_cli("convert", path, "--quant", "none", "-o", out, expect=1)
    assert_one_error_line(result, "evil", "--trust-model")
    assert not marker.exists() and not out.exists()
    assert list(tmp_path.iterdir()) == []
    run_cli("convert", path, "--quant", "none", "-o", out, "--trust-model")
    assert marker.exists() and out.exists()  # the worker loaded it, trusted
    marker.unlink()


def test_crafted_configs_are_read_as_data(tmp_path):
    """Without TensorFlow: a marshalled function anywhere in a config is found and named."""
    keras3_activation = {
        "class_name": "Sequential",
        "config": {
            "name": "seq",
            "layers": [
                {
                    "class_name": "Dense",
                    "config": {
                        "name": "d",
                        "activation": {"class_name": "__lambda__", "config": {"code": "4w=="}},
                    },
                }
            ],
        },
    }
    h5 = tmp_path / "m.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["model_config"] = json.dumps(keras3_activation)
        f.attrs["keras_version"] = "3.5.0"
    assert code_bearing_layers(detect_format(h5)) == [
        "'seq/d' (Dense with a marshalled Python function)"
    ]
    tf_keras_shape = {
        "class_name": "Functional",
        "config": {
            "name": "f",
            "layers": [
                {
                    "class_name": "Custom",
                    "name": "c",
                    "config": {"name": "c", "output_shape_type": "lambda"},
                }
            ],
        },
    }
    archive = tmp_path / "m.keras"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("config.json", json.dumps(tf_keras_shape))
        zf.writestr("metadata.json", json.dumps({"keras_version": "2.15.0"}))
    assert code_bearing_layers(detect_format(archive)) == [
        "'f/c' (Custom with a marshalled Python function)"
    ]
    with pytest.raises(ModelLoadError, match="f/c"):
        tfedge.inspect(archive)
