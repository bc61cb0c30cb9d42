"""Nested models (a backbone used as a layer) flatten into one tf_keras graph, in both Keras
versions; Keras 3's modern activations and scalar op layers translate through the bridge."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tfedge
from tfedge.convert.tflite_model import read_tflite
from tfedge.errors import ModelLoadError
from tfedge.io.flatten import dropped_layers, flatten_model
from tfedge.io.keras3_bridge import bridge_keras3_model
from tfedge.io.models import load_tf_keras_model

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def k2():
    from tfedge._tf import import_keras

    k = import_keras()
    k.utils.set_random_seed(0)
    return k


@pytest.fixture(scope="module")
def keras3(k2):
    from tfedge._tf import import_keras3

    keras = import_keras3()
    keras.utils.set_random_seed(0)
    return keras


def _same(a, b, x) -> None:
    np.testing.assert_allclose(
        np.asarray(a(x, training=False)), np.asarray(b(x, training=False)), rtol=1e-5, atol=1e-6
    )


def _transfer(keras, backbone, name="model"):
    inp = keras.Input(tuple(backbone.input.shape[1:]), name="image")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inp))
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="head")(x), name=name)


@pytest.fixture(scope="module")
def k3_mobilenet_v3(keras3):
    base = keras3.applications.MobileNetV3Small(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.75
    )
    model3 = _transfer(keras3, base)
    return model3, load_tf_keras_model(model3)


def _is_nested(layer) -> bool:
    return hasattr(layer, "layers")


def test_keras3_nested_mobilenet_v3_bridges_flat(keras3, k3_mobilenet_v3):
    model3, flat = k3_mobilenet_v3
    assert type(flat).__module__.startswith("tf_keras")
    assert not any(_is_nested(l) for l in flat.layers)
    names = [l.name for l in flat.layers]
    assert {"image", "pool", "head"} <= set(names) and len(names) > 100
    activations = {
        getattr(l.activation, "__name__", "")
        for l in flat.layers
        if type(l).__name__ == "Activation"
    }
    assert "hard_silu" in activations  # Keras 3's hard_silu, as tfedge>hard_silu
    ops = {l.get_config()["function"] for l in flat.layers if type(l).__name__ == "TFOpLambda"}
    assert ops == {"__operators__.add", "math.multiply"}  # x + 3.0, * (1/6): as tf_keras writes
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
    _same(model3, flat, x)


def test_flattened_keras3_mobilenet_v3_converts_to_full_int8(k3_mobilenet_v3, tmp_path):
    """Saved (tf_keras format, custom activation inside) and converted in a converter child."""
    _, flat = k3_mobilenet_v3
    flat.save(tmp_path / "flat.keras")
    calib = np.random.default_rng(0).uniform(0, 255, size=(16, 32, 32, 3)).astype("float32")
    result = tfedge.convert(
        tmp_path / "flat.keras", tmp_path / "flat.tflite", calib=calib, calib_samples=16
    )
    assert result.full_integer
    ops = {op.name for op in read_tflite(tmp_path / "flat.tflite").ops}
    assert "HARD_SWISH" in ops


def test_tf_keras_nested_mobilenet_v2_flattens(k2):
    base = k2.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35
    )
    model = _transfer(k2, base)
    flat = load_tf_keras_model(model)
    assert not any(_is_nested(l) for l in flat.layers)
    assert [l.name for l in flat.layers][-2:] == ["pool", "head"]
    assert flat.count_params() == model.count_params()
    _same(model, flat, np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype("float32"))


def test_a_saved_tf_keras_convnext_block_loads_and_flattens(k2, tmp_path):
    """tf_keras's ConvNeXt never registered its LayerScale: tf_keras cannot load such a file
    itself ('str' object is not callable); tfedge registers the class and loads it."""
    from tf_keras.src.applications.convnext import LayerScale

    from tfedge.io.models import detect_format, load_keras_model

    L = k2.layers
    inner_in = k2.Input((8, 8, 3))
    h = L.Conv2D(4, 2, strides=2, name="stem")(inner_in)
    x = L.LayerNormalization(epsilon=1e-6, name="ln")(L.DepthwiseConv2D(3, padding="same")(h))
    x = LayerScale(0.5, 4, name="layer_scale")(L.Dense(4, name="pw")(x))
    backbone = k2.Model(inner_in, L.Add()([h, x]), name="convnext_like")
    inp = k2.Input((8, 8, 3))
    model = k2.Model(inp, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(backbone(inp))))
    model.save(tmp_path / "convnext.keras")
    loaded = load_keras_model(detect_format(tmp_path / "convnext.keras"))
    flat = load_tf_keras_model(tmp_path / "convnext.keras")
    assert type(flat.get_layer("layer_scale")) is LayerScale
    x = np.random.default_rng(4).normal(size=(4, 8, 8, 3)).astype("float32")
    _same(model, loaded, x)
    _same(model, flat, x)


def test_nested_in_nested_with_a_name_collision(k2):
    L = k2.layers
    inner_in = k2.Input((6,))
    inner = k2.Model(inner_in, L.Dense(5, activation="relu", name="dense")(inner_in), name="inner")
    middle = k2.Sequential([k2.Input((6,)), inner, L.Dense(4, name="mid_dense")], name="middle")
    inp = k2.Input((6,), name="x")
    out = L.Dense(3, name="dense")(middle(L.Dense(6, name="pre")(inp)))  # 'dense' twice
    model = k2.Model(inp, out)
    flat = flatten_model(model)
    names = [l.name for l in flat.layers]
    assert names == ["x", "pre", "inner_dense", "mid_dense", "dense"]
    assert all("/" not in n for n in names)
    _same(model, flat, np.random.default_rng(3).normal(size=(8, 6)).astype("float32"))


def test_backbone_called_twice_becomes_shared_layers(keras3):
    L = keras3.layers
    b_in = keras3.Input((8,))
    backbone = keras3.Model(b_in, L.Dense(4, activation="gelu", name="embed")(b_in), name="bb")
    a, b = keras3.Input((8,), name="a"), keras3.Input((8,), name="b")
    merged = L.Concatenate(name="cat")([backbone(a), backbone(b)])
    model3 = keras3.Model([a, b], L.Dense(2, name="head")(merged))
    flat = load_tf_keras_model(model3)
    embed = flat.get_layer("embed")
    assert len(embed.inbound_nodes) == 2 and not any(_is_nested(l) for l in flat.layers)
    rng = np.random.default_rng(4)
    x = [rng.normal(size=(8, 8)).astype("float32") for _ in range(2)]
    _same(model3, flat, x)


def test_augmentation_layer_is_dropped_and_recorded(keras3):
    L = keras3.layers
    inp = keras3.Input((8, 8, 3))
    x = L.RandomFlip(name="flip")(inp)
    x = L.Conv2D(4, 3, activation="hard_sigmoid", name="conv")(x)
    model3 = keras3.Model(inp, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    flat = load_tf_keras_model(model3)
    assert "flip" not in [l.name for l in flat.layers]
    assert dropped_layers(flat) == ["flip (RandomFlip)"]
    assert flat.get_layer("conv").activation.__name__ == "hard_sigmoid"  # Keras 3's relu6(x+3)/6
    x = np.random.default_rng(5).normal(size=(4, 8, 8, 3)).astype("float32") * 4
    _same(model3, flat, x)


def _small_nested_keras3(keras3):
    L = keras3.layers
    b_in = keras3.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="b_conv")(b_in)
    x = L.Activation("hard_silu", name="b_act")(x)
    x = L.Multiply(name="b_se")([x, (L.Conv2D(4, 1, name="b_gate")(x) + 3.0) * (1 / 6)])
    backbone = keras3.Model(b_in, x, name="backbone")
    inp = keras3.Input((8, 8, 3), name="image")
    y = L.GlobalAveragePooling2D(name="pool")(backbone(L.RandomFlip(name="flip")(inp)))
    return keras3.Model(inp, L.Dense(3, activation="silu", name="head")(y))


def test_inspect_lists_the_inner_layers_of_a_nested_keras3_file(keras3, tmp_path, run_cli):
    _small_nested_keras3(keras3).save(tmp_path / "nested.keras")
    report = json.loads(run_cli("inspect", tmp_path / "nested.keras", "--json").stdout)
    compat = {row["layer"]: row for row in report["compat"]}
    assert {"b_conv", "b_act", "b_gate", "b_se", "pool", "head"} <= set(compat)
    assert "backbone" not in compat and report["compat_unavailable"] == ""
    assert compat["flip"]["notes"].startswith("dropped")
    text = run_cli("inspect", tmp_path / "nested.keras").stdout
    assert "b_conv" in text and "compression passes" in text


def test_custom_layer_in_a_nested_model_is_named_as_custom(keras3, tmp_path, run_cli):
    class Scale(keras3.layers.Layer):
        def call(self, x):
            return 2 * x

    b_in = keras3.Input((3,))
    backbone = keras3.Model(b_in, Scale(name="my_scale")(b_in), name="backbone")
    inp = keras3.Input((3,))
    model = keras3.Model(inp, keras3.layers.Dense(2, name="head")(backbone(inp)))
    with pytest.raises(ModelLoadError, match=r"my_scale \(Scale\) in 'backbone'") as info:
        bridge_keras3_model(model)
    assert "custom" in info.value.hint and "use built-in layers" not in info.value.hint


def test_inspect_says_why_compression_is_not_available(keras3, tmp_path, run_cli):
    @keras3.saving.register_keras_serializable(package="tfedge_tests")
    class Doubler(keras3.layers.Layer):
        def call(self, x):
            return 2 * x

    b_in = keras3.Input((3,))
    backbone = keras3.Model(b_in, Doubler(name="doubler")(b_in), name="backbone")
    inp = keras3.Input((3,))
    keras3.Model(inp, keras3.layers.Dense(2)(backbone(inp))).save(tmp_path / "custom.keras")
    report = json.loads(run_cli("inspect", tmp_path / "custom.keras", "--json").stdout)
    assert report["compat"] == [] and "doubler (Doubler)" in report["compat_unavailable"]
    text = run_cli("inspect", tmp_path / "custom.keras").stdout
    assert "compression: not available: the Keras 3 bridge cannot translate" in text


def test_tf_keras_transfer_learning_model_through_prune_and_qat(k2, tmp_path):
    """A tf_keras backbone nested as one layer (relu6 inside its convolutions, squeeze-and-excite)
    with a new head goes through prune -> PQAT to verified full-int8, keeping the layer names."""
    pixels = k2.Input((16, 16, 3))
    h = k2.layers.Conv2D(16, 3, strides=2, activation="relu6", name="stem")(pixels)
    h = k2.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    gate = k2.layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")(h)
    gate = k2.layers.Conv2D(16, 1, activation="sigmoid", name="se_gate")(gate)
    h = k2.layers.Multiply(name="se_scale")([h, gate])
    backbone = k2.Model(pixels, h, name="backbone")
    image = k2.Input((16, 16, 3), name="image")
    h = k2.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(image)
    h = k2.layers.GlobalAveragePooling2D(name="pool")(backbone(h))
    model = k2.Model(image, k2.layers.Dense(4, name="head")(h))
    path = tmp_path / "transfer.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 192)
    x = (rng.uniform(0, 255, (192, 16, 16, 3)) * 0.3 + 40 * y[:, None, None, None]).astype("f4")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "schema_version: 1\npasses:\n  - prune: {target_sparsity: 0.5, epochs: 1}\n"
        "  - qat: {epochs: 1}\nconvert: {quant: int8}\n"
    )
    data = tmp_path / "data.npz"
    result = tfedge.optimize(str(path), str(recipe), data, data, tmp_path / "out")
    assert [s.name for s in result.stages] == ["float32", "int8", "prune", "qat"]
    ops = {op.name for op in read_tflite(result.model).ops}
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["keras_model"] == "model.keras"
    from tfedge.io.models import detect_format, load_keras_model

    flat = load_keras_model(detect_format(tmp_path / "out" / "model.keras"))
    names = {layer.name for layer in flat.layers}
    assert {"stem", "stem_activation", "dw", "se_scale", "head"} <= names
