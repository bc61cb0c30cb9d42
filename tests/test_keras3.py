"""Keras 3 models in: the verified bridge into tf_keras, and the direct conversion path."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tfedge
from tfedge.errors import ModelLoadError
from tfedge.io.keras3_bridge import bridge_keras3_model, verify_same_outputs
from tfedge.io.models import detect_format, load_tf_keras_model

pytestmark = [pytest.mark.slow, pytest.mark.tf]


@pytest.fixture(scope="module")
def keras3():
    from tfedge._tf import import_keras, quiet_native_stderr

    import_keras()
    with quiet_native_stderr():
        import keras
    keras.utils.set_random_seed(0)
    return keras


def _one_layer_model(keras, name: str):
    """A small Keras 3 model around the layer ``name``."""
    L = keras.layers
    image = lambda: keras.Input((8, 8, 3))  # noqa: E731
    seq = lambda: keras.Input((6, 4))  # noqa: E731
    vec = lambda: keras.Input((6,))  # noqa: E731
    cases = {
        "InputLayer": (vec, lambda x: x),
        "Dense": (vec, lambda x: L.Dense(3, activation="relu")(x)),
        "Conv1D": (seq, lambda x: L.Conv1D(3, 2)(x)),
        "Conv2D": (image, lambda x: L.Conv2D(4, 3, strides=2, padding="same")(x)),
        "DepthwiseConv2D": (image, lambda x: L.DepthwiseConv2D(3, depth_multiplier=2)(x)),
        "SeparableConv2D": (image, lambda x: L.SeparableConv2D(4, 3)(x)),
        "BatchNormalization": (image, lambda x: L.BatchNormalization(momentum=0.9)(x)),
        "LayerNormalization": (seq, lambda x: L.LayerNormalization()(x)),
        "Activation": (vec, lambda x: L.Activation("swish")(x)),
        "ReLU": (vec, lambda x: L.ReLU(max_value=0.5)(x)),
        "Softmax": (vec, lambda x: L.Softmax()(x)),
        "LeakyReLU": (vec, lambda x: L.LeakyReLU(negative_slope=0.2)(x)),
        "ELU": (vec, lambda x: L.ELU()(x)),
        "MaxPooling2D": (image, lambda x: L.MaxPooling2D(2)(x)),
        "AveragePooling2D": (image, lambda x: L.AveragePooling2D(2)(x)),
        "GlobalAveragePooling2D": (image, lambda x: L.GlobalAveragePooling2D()(x)),
        "Flatten": (image, lambda x: L.Flatten()(x)),
        "Reshape": (image, lambda x: L.Reshape((64, 3))(x)),
        "Dropout": (vec, lambda x: L.Dropout(0.5)(x)),
        "Add": (vec, lambda x: L.Add()([x, L.Dense(6)(x)])),
        "Concatenate": (vec, lambda x: L.Concatenate()([x, L.Dense(2)(x)])),
        "Multiply": (vec, lambda x: L.Multiply()([x, L.Dense(6)(x)])),
        "ZeroPadding2D": (image, lambda x: L.ZeroPadding2D(((1, 0), (2, 1)))(x)),
        "Rescaling": (image, lambda x: L.Rescaling(1 / 127.5, offset=-1)(x)),
        "LSTM": (seq, lambda x: L.LSTM(5)(x)),
        "GRU": (seq, lambda x: L.GRU(5, return_sequences=True)(x)),
    }
    make_input, body = cases[name]
    inp = make_input()
    return keras.Model(inp, body(inp))


LAYERS = [
    "InputLayer",
    "Dense",
    "Conv1D",
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "BatchNormalization",
    "LayerNormalization",
    "Activation",
    "ReLU",
    "Softmax",
    "LeakyReLU",
    "ELU",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "Flatten",
    "Reshape",
    "Dropout",
    "Add",
    "Concatenate",
    "Multiply",
    "ZeroPadding2D",
    "Rescaling",
    "LSTM",
    "GRU",
]


@pytest.mark.parametrize("layer", LAYERS)
def test_each_listed_layer_bridges_exactly(keras3, layer):
    model3 = _one_layer_model(keras3, layer)
    for weight in model3.weights:  # non-trivial values, e.g. BatchNorm statistics
        weight.assign(
            np.random.default_rng(1).normal(size=weight.shape).astype("float32") * 0.3
            + (1.0 if "variance" in weight.path else 0.0)
        )
    model2 = bridge_keras3_model(model3)
    assert type(model2).__module__.startswith("tf_keras")
    x = np.random.default_rng(2).normal(size=(4, *model3.inputs[0].shape[1:])).astype("float32")
    np.testing.assert_allclose(model3(x), model2(x), rtol=1e-5, atol=1e-6)


def test_embedding_bridges(keras3):
    L = keras3.layers
    inp = keras3.Input((7,), dtype="int32")
    model3 = keras3.Model(inp, L.GlobalAveragePooling1D()(L.Embedding(20, 4)(inp)))
    model2 = bridge_keras3_model(model3)
    tokens = np.arange(14).reshape(2, 7).astype("int32")
    np.testing.assert_allclose(model3(tokens), model2(tokens), rtol=1e-5, atol=1e-6)


def test_verification_names_the_layer_that_diverged(keras3):
    from tfedge._tf import import_keras

    model3 = _one_layer_model(keras3, "Conv2D")
    k2 = import_keras()
    twin = k2.models.clone_model(bridge_keras3_model(model3))
    conv = next(l for l in twin.layers if l.weights)
    conv.set_weights([w + 0.01 for w in model3.get_layer(conv.name).get_weights()])
    with pytest.raises(ModelLoadError, match=f"first at layer '{conv.name}'"):
        verify_same_outputs(model3, twin)


def test_subclassed_model_is_refused(keras3):
    class Tiny(keras3.Model):
        def __init__(self):
            super().__init__()
            self.d = keras3.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    model = Tiny()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ModelLoadError, match="subclassed Keras model .Tiny.") as info:
        bridge_keras3_model(model)
    assert "Functional" in info.value.hint


def test_custom_layer_is_named(keras3):
    class Scale(keras3.layers.Layer):
        def call(self, x):
            return 2 * x

    inp = keras3.Input((3,))
    model = keras3.Model(inp, keras3.layers.Dense(2, name="head")(Scale(name="my_scale")(inp)))
    with pytest.raises(ModelLoadError, match=r"cannot translate these layers: my_scale \(Scale\)"):
        bridge_keras3_model(model)


def _convnext_block(keras):
    """ConvNeXt as ``keras.applications`` writes it: a patchify stem with LayerNormalization,
    one block (grouped 7x7 convolution, LayerNormalization, Dense, GELU, Dense, ``LayerScale``,
    identity, residual ``+``), then the downsampling LayerNormalization and strided conv."""
    from keras.src.applications.convnext import LayerScale

    L = keras.layers
    inp = keras.Input((8, 8, 3))
    h = L.Normalization(mean=[120.0, 115.0, 100.0], variance=[3000.0, 3000.0, 3000.0])(inp)
    h = L.Conv2D(16, 2, strides=2, name="stem")(h)
    h = L.LayerNormalization(epsilon=1e-6, name="stem_ln")(h)
    x = L.Conv2D(16, 7, padding="same", groups=16, name="depthwise_conv")(h)
    x = L.LayerNormalization(epsilon=1e-6, name="layernorm")(x)
    x = L.Dense(64, name="pointwise_conv_1")(x)
    x = L.Activation("gelu", name="gelu")(x)
    x = L.Dense(16, name="pointwise_conv_2")(x)
    x = LayerScale(1e-6, 16, name="layer_scale")(x)
    h = h + L.Activation("linear", name="identity")(x)
    h = L.LayerNormalization(epsilon=1e-6, name="down_ln")(h)
    h = L.Conv2D(32, 2, strides=2, name="down")(h)
    model = keras.Model(inp, L.Dense(4, name="logits")(L.GlobalAveragePooling2D()(h)))
    gamma = np.linspace(0.2, 1.0, 16, dtype="float32")  # trained: not the 1e-6 start
    model.get_layer("layer_scale").set_weights([gamma])
    return model


def test_convnext_layer_scale_bridges_to_a_registered_twin(keras3, tmp_path):
    from tfedge._tf import import_keras
    from tfedge.io.keras3_export import to_keras3

    model3 = _convnext_block(keras3)
    model2 = bridge_keras3_model(model3)  # verified on seeded inputs
    twin = model2.get_layer("layer_scale")
    assert type(twin).__name__ == "LayerScale" and type(twin).__module__.startswith("tfedge")
    np.testing.assert_array_equal(twin.get_weights()[0], np.linspace(0.2, 1.0, 16, dtype="float32"))
    model2.save(tmp_path / "tf_keras.keras")  # a later tfedge process loads it again
    again = import_keras().models.load_model(tmp_path / "tf_keras.keras", compile=False)
    x = np.random.default_rng(0).uniform(0, 255, size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(again(x), model3(x), rtol=1e-4, atol=1e-5)
    back = to_keras3(again)  # optimize's Keras 3 model.keras: Keras 3's own LayerScale, verified
    assert type(back.get_layer("layer_scale")).__module__ == "keras.src.applications.convnext"


def test_convnext_block_qat_to_full_int8(keras3, tmp_path):
    """LayerNormalization and LayerScale get their output quantized (the converter calibrates
    the mean / variance / rsqrt ops inside the norm): no `unsupported: skip` needed."""
    import collections

    from tfedge.convert.tflite_model import read_tflite
    from tfedge.passes import PassContext, TrainConfig, build_pass
    from tfedge.passes.compat import layer_compat, qat_unsupported

    model2 = bridge_keras3_model(_convnext_block(keras3))
    assert qat_unsupported(model2) == []
    scale = {row.layer: row for row in layer_compat(model2)}["layer_scale"]
    assert (scale.prune, scale.qat) == ("no", "yes") and "no kernel to prune" in scale.notes
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(32, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 127.5).astype("int64")
    ctx = PassContext(x=x, y=y, train=TrainConfig(batch_size=32), seed=0)
    result = build_pass("qat", {"epochs": 1}).apply(model2, ctx)
    assert "quant_layer_scale" in {layer.name for layer in result.model.layers}
    out = tmp_path / "convnext.tflite"
    converted = tfedge.convert(result.model, out, calib=x, calib_samples=16, in_process=True)
    assert converted.full_integer, converted.float_ops
    ops = collections.Counter(op.name for op in read_tflite(out).ops)
    assert ops["GELU"] == 1 and ops["RSQRT"] == 3 and ops["CONV_2D"] == 3, ops


def test_keras3_layer_normalization_converts_to_full_int8(keras3, tmp_path, run_cli):
    """Keras 3 computes the norm's shift as ``-mean * inv + beta``: a float NEG in the int8
    file, until conversion traces it as ``beta - mean * inv`` (the same float32 bits)."""
    import collections

    from tfedge.convert.keras3_ops import integer_friendly_keras3_ops
    from tfedge.convert.tflite_model import read_tflite

    L = keras3.layers
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 4, 4, 6)).astype("float32")
    for options in ({}, {"center": False}, {"scale": False}, {"axis": (1, 2, 3)}):
        inp = keras3.Input((4, 4, 6))
        norm = L.LayerNormalization(**options)
        model = keras3.Model(inp, norm(inp))
        shapes = [tuple(w.shape) for w in norm.weights]
        norm.set_weights([np.linspace(0.5, 2.0, int(np.prod(s))).reshape(s) for s in shapes])
        before = np.asarray(model(x))
        with integer_friendly_keras3_ops():
            during = np.asarray(model(x))
        np.testing.assert_array_equal(during, before, err_msg=str(options))
    out = tmp_path / "convnext.tflite"
    calib = np.random.default_rng(1).uniform(0, 255, size=(16, 8, 8, 3)).astype("float32")
    converted = tfedge.convert(_convnext_block(keras3), out, calib=calib, in_process=True)
    assert converted.full_integer, converted.float_ops
    ops = collections.Counter(op.name for op in read_tflite(out).ops)
    assert ops["NEG"] == 0 and ops["RSQRT"] == 3 and ops["SUB"] >= 3, ops
    # optimize's post-training recipes export the Keras 3 model for the worker: the same form
    _convnext_block(keras3).save(tmp_path / "convnext.keras")
    data = _classification_data(tmp_path, (8, 8, 3), n=32)
    _optimize(run_cli, tmp_path / "convnext.keras", "int8", data, tmp_path / "out")
    assert tfedge.inspect(str(tmp_path / "out" / "model.tflite")).full_integer


def _residual_mobilenet_like(keras):
    L = keras.layers
    inp = keras.Input((16, 16, 3), name="image")
    x = L.Rescaling(1 / 255.0)(inp)
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(max_value=6.0)(x)
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU(max_value=6.0)(y)
    y = L.Conv2D(8, 1, use_bias=False)(y)
    y = L.BatchNormalization()(y)
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(4)(x), name="mobilenet_like")


def _two_inputs(keras):
    L = keras.layers
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    x = L.Concatenate()([L.Dense(5, activation="relu")(a), L.Dense(5, activation="relu")(b)])
    return keras.Model([a, b], [L.Dense(3, name="cls")(x), L.Dense(1, name="reg")(x)])


def test_keras3_file_converts_directly_and_bridges(keras3, tmp_path, run_cli):
    model3 = _residual_mobilenet_like(keras3)
    path = tmp_path / "k3.keras"
    model3.save(path)
    assert detect_format(path).is_keras3
    x = np.random.default_rng(0).uniform(0, 255, size=(64, 16, 16, 3)).astype("float32")
    np.savez(tmp_path / "calib.npz", x=x)
    result = json.loads(
        run_cli(
            "convert",
            path,
            "--calib",
            tmp_path / "calib.npz",
            "-o",
            tmp_path / "k3.tflite",
            "--json",
        ).stdout
    )
    assert result["full_integer"] and result["keras"] == "3"
    model2 = load_tf_keras_model(path)
    assert type(model2).__module__.startswith("tf_keras")
    report = json.loads(run_cli("inspect", path, "--json").stdout)
    assert report["keras"] == "3" and report["keras_version"].startswith("3.")
    assert "Keras 3." in run_cli("inspect", path).stdout


def test_keras3_h5_and_two_inputs_bridge(keras3, tmp_path):
    model3 = _two_inputs(keras3)
    model3.save(tmp_path / "two.h5")
    fmt = detect_format(tmp_path / "two.h5")
    assert fmt.kind == "h5" and fmt.is_keras3
    model2 = load_tf_keras_model(fmt)
    assert [o.shape[-1] for o in model2.outputs] == [3, 1]


def test_lstm_classifier_bridges_and_converts(keras3, tmp_path):
    """Recurrent layers convert with a fixed batch size of 1 (a dynamic batch fails to convert)."""
    L = keras3.layers
    inp = keras3.Input((10,), batch_size=1, dtype="int32")
    model3 = keras3.Model(inp, L.Dense(3)(L.LSTM(8)(L.Embedding(30, 8)(inp))))
    model3.save(tmp_path / "lstm.keras")
    assert load_tf_keras_model(tmp_path / "lstm.keras") is not None
    result = tfedge.convert(tmp_path / "lstm.keras", tmp_path / "lstm.tflite", quant="dynamic")
    assert result.size_bytes > 0


def test_exported_savedmodel_converts_but_cannot_take_tfmot_passes(keras3, tmp_path):
    model3 = _residual_mobilenet_like(keras3)
    model3.export(tmp_path / "exported", verbose=False)
    x = np.random.default_rng(0).uniform(0, 255, size=(32, 16, 16, 3)).astype("float32")
    assert tfedge.convert(tmp_path / "exported", tmp_path / "e.tflite", calib=x).full_integer
    with pytest.raises(ModelLoadError, match="exported SavedModel"):
        load_tf_keras_model(tmp_path / "exported")


# ---- a short optimize on Keras 3 models --------------------------------------------------

PRUNE_ONLY = (
    "schema_version: 1\npasses:\n  - prune: {target_sparsity: 0.5, epochs: 1}\n"
    "convert: {quant: int8}\n"
)


def _classification_data(tmp_path, shape, classes=4, n=96, integer_vocab=None):
    rng = np.random.default_rng(0)
    x = (
        rng.integers(0, integer_vocab, size=(n, *shape)).astype("int32")
        if integer_vocab
        else rng.normal(size=(n, *shape)).astype("float32")
    )
    y = rng.integers(0, classes, size=n)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    return tmp_path / "train.npz"


def _optimize(run_cli, model_path, recipe, data, out):
    return json.loads(
        run_cli(
            "optimize",
            model_path,
            "--recipe",
            recipe,
            "--data",
            data,
            "--eval",
            data,
            "-o",
            out,
            "--json",
        ).stdout
    )


def test_keras3_residual_model_short_optimize(keras3, tmp_path, run_cli):
    model3 = _residual_mobilenet_like(keras3)
    model3.save(tmp_path / "k3.keras")
    (tmp_path / "prune.yaml").write_text(PRUNE_ONLY)
    data = _classification_data(tmp_path, (16, 16, 3))
    _optimize(run_cli, tmp_path / "k3.keras", tmp_path / "prune.yaml", data, tmp_path / "out")
    report = tfedge.inspect(str(tmp_path / "out" / "model.tflite"))
    assert report.full_integer


def test_keras3_lstm_classifier_prune_only(keras3, tmp_path, run_cli):
    """tfmot's QAT does not cover LSTM/Embedding: the compatibility report says so; prune works."""
    L = keras3.layers
    inp = keras3.Input((10,), dtype="int32")
    model3 = keras3.Model(inp, L.Dense(4)(L.LSTM(8, unroll=True)(L.Embedding(30, 8)(inp))))
    model3.save(tmp_path / "lstm.keras")
    compat = {
        row["type"]: row
        for row in json.loads(run_cli("inspect", tmp_path / "lstm.keras", "--json").stdout)[
            "compat"
        ]
    }
    assert compat["LSTM"]["qat"] == "no" and compat["Embedding"]["qat"] == "no"
    assert compat["LSTM"]["prune"] == "yes"
    (tmp_path / "prune.yaml").write_text(PRUNE_ONLY)
    data = _classification_data(tmp_path, (10,), integer_vocab=30)
    _optimize(run_cli, tmp_path / "lstm.keras", tmp_path / "prune.yaml", data, tmp_path / "out")
    assert (tmp_path / "out" / "model.tflite").exists()


def test_untranslatable_keras3_model_takes_the_direct_path(keras3, tmp_path, run_cli):
    @keras3.saving.register_keras_serializable(package="tfedge_tests")
    class TimesTwo(keras3.layers.Layer):
        def call(self, x):
            return 2.0 * x

    inp = keras3.Input((8,))
    model3 = keras3.Model(inp, keras3.layers.Dense(3)(TimesTwo(name="double")(inp)))
    model3.save(tmp_path / "custom.keras")
    data = _classification_data(tmp_path, (8,), classes=3)
    result = _optimize(run_cli, tmp_path / "custom.keras", "int8", data, tmp_path / "out")
    assert result["stages"][-1]["name"] == "int8"
    assert tfedge.inspect(str(tmp_path / "out" / "model.tflite")).full_integer
    (tmp_path / "prune.yaml").write_text(PRUNE_ONLY)
    failed = run_cli(
        "optimize",
        tmp_path / "custom.keras",
        "--recipe",
        tmp_path / "prune.yaml",
        "--data",
        data,
        "--eval",
        data,
        "-o",
        tmp_path / "out2",
        expect=1,
    )
    assert "double (TimesTwo)" in failed.stderr and not (tmp_path / "out2").exists()
