"""QAT (and PQAT / CQAT / PCQAT) on the layers of today's architectures, to verified full-int8.

Preprocessing first (``Rescaling``), hard-swish and squeeze-and-excite written as tf_keras's
MobileNetV3 writes them (``TFOpLambda`` + ``ReLU(6.)`` + ``Multiply``), ``Activation`` layers
with modern activations, and ``unsupported: skip`` with a layer no scheme can quantize.
"""

from __future__ import annotations

import collections
import functools

import numpy as np
import pytest

from tfedge.errors import RecipeError
from tfedge.passes import PassContext, TrainConfig, build_pass

pytestmark = pytest.mark.tf


def _data(shape, n: int = 256, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape)).astype(np.float32)
    y = (x.reshape(n, -1).mean(axis=1) > 127.5).astype(np.int64) % classes
    return x, y


def _ctx(x, y) -> PassContext:
    return PassContext(x=x, y=y, train=TrainConfig(batch_size=64), seed=0)


def _int8_ops(model, x, tmp_path, name: str = "m") -> collections.Counter:
    """Convert ``model`` to full-int8 (tfedge verifies it) and count the ops of the file."""
    import tfedge
    from tfedge.convert.tflite_model import read_tflite

    out = tmp_path / f"{name}.tflite"
    result = tfedge.convert(model, out, calib=x, calib_samples=16, in_process=True)
    assert result.full_integer, result.float_ops
    return collections.Counter(op.name for op in read_tflite(out).ops)


@functools.cache
def _halve_class():
    from tfedge._tf import import_keras

    k = import_keras()

    @k.utils.register_keras_serializable(package="tests")
    class Halve(k.layers.Layer):
        """A custom layer: tfmot has no rule for it."""

        def call(self, inputs):
            return inputs * 0.5

    return Halve


def _rescaling_cnn():
    """A tutorial CNN: ``Rescaling(1/255)`` first, EfficientNet's ``Normalization``, a custom
    layer no scheme can quantize, and the activations that compute several ops (the converter
    calibrates their inner tensors on top of the QAT ranges, as it does the skipped layer)."""
    from tfedge._tf import import_keras
    from tfedge.passes.qat_configs import custom_activations

    k = import_keras()
    hard_sigmoid = custom_activations().get("tfedge>hard_sigmoid", "hard_sigmoid")
    inp = k.Input((16, 16, 1), name="image")
    h = k.layers.Rescaling(1 / 255, name="rescale")(inp)
    h = k.layers.Normalization(mean=0.5, variance=0.3**2, name="norm")(h)
    h = k.layers.Conv2D(8, 3, padding="same", name="conv0")(h)
    h = k.layers.Activation(hard_sigmoid, name="gate")(h)
    h = k.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(h)
    h = _halve_class()(name="halve")(h)
    h = k.layers.MaxPooling2D(name="pool")(h)
    h = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = k.layers.GlobalAveragePooling2D(name="gap")(h)
    return k.Model(inp, k.layers.Dense(4, name="out")(h))


def test_qat_check_passes_preprocessing_and_names_the_reason_for_the_rest():
    from tfedge.passes.compat import layer_compat

    model = _rescaling_cnn()
    x, y = _data((16, 16, 1), n=16)
    with pytest.raises(
        RecipeError, match=r"1 layer\(s\): halve \(Halve\): tfmot's 8-bit scheme has no rule"
    ):
        build_pass("qat", {}).check(model, _ctx(x, y))
    rows = {r.layer: r for r in layer_compat(model)}
    assert rows["rescale"].qat == "yes" and rows["halve"].qat == "no"
    assert "no rule for Halve" in rows["halve"].notes


_OPTIONS = {"prune": {"target_sparsity": 0.5, "epochs": 1}, "cluster": {"clusters": 8, "epochs": 1}}


@pytest.fixture(scope="module")
def pruned():
    """The Rescaling CNN after ``prune``, shared by the PQAT and PCQAT tests."""
    x, y = _data((16, 16, 1), n=128)
    ctx = _ctx(x, y)
    model = build_pass("prune", _OPTIONS["prune"]).apply(_rescaling_cnn(), ctx).model
    return model, x, y


@pytest.mark.parametrize("scheme", ["pqat", "cqat", "pcqat"])
def test_rescaling_cnn_with_skip_through_every_collaborative_scheme(scheme, pruned, tmp_path):
    model, x, y = pruned
    ctx = _ctx(x, y)
    ctx.applied += ("prune",)
    if scheme == "cqat":
        model, ctx.applied = _rescaling_cnn(), ()
    if scheme != "pqat":
        model = build_pass("cluster", _OPTIONS["cluster"]).apply(model, ctx).model
        ctx.applied += ("cluster",)
    result = build_pass("qat", {"epochs": 1, "unsupported": "skip"}).apply(model, ctx)
    assert result.metrics["scheme"] == scheme
    assert result.metrics["skipped_layers"] == ["halve (Halve)"]
    wrapped = {layer.name for layer in result.model.layers}
    assert "quant_rescale" in wrapped and "halve" in wrapped  # Rescaling quantized, Halve not
    if scheme == "pcqat":  # the converter does the same for the three (two conversions each:
        _int8_ops(result.model, x, tmp_path)  # QAT ranges, then calibrated for the skipped layer)


def _modern_model():
    """MobileNetV3's stem and an inverted-residual block with squeeze-and-excite, built by
    tf_keras's own MobileNetV3 functions (hard-swish and hard-sigmoid as ``TFOpLambda`` ops,
    ``ReLU(6.)`` and ``Multiply``), after ``Rescaling``
    and ``Resizing``, then ``Activation`` layers with today's activations. Every layer here is
    one int8 op (or a fused pattern), so the converter needs no calibration on top of QAT."""
    from tf_keras.src.applications import mobilenet_v3 as v3

    from tfedge._tf import import_keras
    from tfedge.passes.qat_configs import custom_activations

    k = import_keras()
    names = ["swish", "gelu", "leaky_relu"]  # one op each (the rest: in _rescaling_cnn)
    names += [n for n in custom_activations() if n.split(">")[-1] == "hard_silu"]
    inp = k.Input((12, 12, 3))
    h = k.layers.Rescaling(1 / 255, name="rescale")(inp)
    h = k.layers.Resizing(8, 8, name="resize")(h)
    h = k.layers.Conv2D(16, 3, padding="same", use_bias=False, name="Conv")(h)
    h = k.layers.BatchNormalization(name="Conv/BatchNorm")(h)
    h = v3.hard_swish(h)
    h = v3._inverted_res_block(h, 3, 16, 3, 1, 0.25, v3.hard_swish, 1)
    for i, name in enumerate(names):
        h = k.layers.Conv2D(8, 1, name=f"conv{i}")(h)
        h = k.layers.Activation(custom_activations().get(name, name), name=f"act{i}")(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    return k.Model(inp, k.layers.Dense(4)(h)), names


def test_hard_swish_squeeze_excite_activations_and_preprocessing_qat_to_full_int8(tmp_path):
    from tfedge.passes.compat import qat_unsupported
    from tfedge.passes.qat_configs import hard_swish_inner

    model, names = _modern_model()
    assert qat_unsupported(model) == []
    assert len(set(hard_swish_inner(model).values())) == 3  # stem, expand, depthwise
    x, y = _data((12, 12, 3), n=128)
    result = build_pass("qat", {"epochs": 1}).apply(model, _ctx(x, y))
    ops = _int8_ops(result.model, x, tmp_path)
    assert ops["HARD_SWISH"] >= 3, ops  # one int8 op each, not ADD, RELU6, MUL, MUL
    assert ops["LOGISTIC"] >= 1 and ops["RESIZE_BILINEAR"] == 1 and ops["GELU"] == 1, ops
    if "tfedge>hard_silu" in names:  # Keras 3's hard_silu through the bridge: one more
        assert ops["HARD_SWISH"] >= 4, ops


def test_input_preprocessing_is_left_to_calibration():
    from tfedge._tf import import_keras
    from tfedge.passes.qat_configs import input_preprocessing

    k = import_keras()
    inp = k.Input((4,))
    h = k.layers.Normalization(mean=1.0, variance=4.0, name="first")(inp)
    h = k.layers.Normalization(mean=1.0, variance=4.0, name="second")(h)
    assert input_preprocessing(k.Model(inp, k.layers.Dense(2)(h))) == ["first"]
    h = k.layers.Rescaling(2.0, offset=-1.0, name="rescale")(inp)
    h = k.layers.Rescaling(0.5, name="again")(h)
    assert input_preprocessing(k.Model(inp, k.layers.Dense(2)(h))) == ["rescale"]
    h = k.layers.Rescaling(1 / 255, name="scale_only")(inp)  # one MUL: quantization-aware
    assert input_preprocessing(k.Model(inp, k.layers.Dense(2)(h))) == []


def test_activation_inside_a_layer_that_tfmot_cannot_quantize_is_named_before_training():
    from tfedge._tf import import_keras
    from tfedge.passes.qat_configs import qat_rule

    k = import_keras()
    how, reason = qat_rule(k.layers.Dense(4, activation="elu"))
    assert how == "no" and "activation 'elu' inside a Dense" in reason
    assert qat_rule(k.layers.Activation("elu"))[1].startswith("activation 'elu': TFLite keeps")
    assert qat_rule(k.layers.Activation("relu6"))[0] == "tfmot"


def test_activation_written_inside_a_layer_moves_out_and_quantizes(tmp_path):
    """``Conv2D(activation="relu6")``, ``Dense(activation="hard_silu")``: as users write them."""
    from tfedge._tf import import_keras
    from tfedge.passes.qat_configs import qat_rule
    from tfedge.passes.rebuild import fold_for_qat

    k = import_keras()
    inp = k.Input((8, 8, 1))
    h = k.layers.Conv2D(8, 3, activation="relu6", name="conv")(inp)
    h = k.layers.GlobalAveragePooling2D(name="pool")(h)
    h = k.layers.Dense(16, activation="tfedge>hard_silu", name="fc")(h)
    model = k.Model(inp, k.layers.Dense(4, name="logits")(h))
    assert qat_rule(model.get_layer("conv")) == (
        "tfmot",
        "activation 'relu6' moves to its own Activation layer for qat",
    )
    x, y = _data((8, 8, 1), n=128)
    split, _, moved = fold_for_qat(model)
    assert moved == {"conv": "conv_activation", "fc": "fc_activation"}
    np.testing.assert_allclose(split.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0))
    result = build_pass("qat", {"epochs": 1}).apply(model, _ctx(x, y))
    assert result.metrics["activations_moved_out"] == moved
    names = [layer.name for layer in result.model.layers]
    assert "quant_conv_activation" in names and "quant_fc_activation" in names
    ops = _int8_ops(result.model, x, tmp_path)  # verified full-int8
    assert ops["HARD_SWISH"] == 1, ops


def test_resnet_projection_block_batchnorms_fold_where_the_graph_says(tmp_path):
    """ResNet50 lists ``0_conv, 3_conv, 0_bn, 3_bn``: each BN follows its conv in the graph,
    not in the layer list. Both fold (tfmot's Conv2D + BatchNormalization transform)."""
    from tfedge._tf import import_keras
    from tfedge.passes.compat import qat_unsupported

    k = import_keras()
    inp = k.Input((8, 8, 3))
    h = k.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    shortcut = k.layers.Conv2D(8, 1, name="block_0_conv")(h)
    main = k.layers.Conv2D(8, 1, name="block_3_conv")(h)
    shortcut = k.layers.BatchNormalization(name="block_0_bn")(shortcut)
    main = k.layers.BatchNormalization(name="block_3_bn")(main)
    h = k.layers.ReLU(name="block_out")(k.layers.Add(name="block_add")([shortcut, main]))
    h = k.layers.GlobalAveragePooling2D()(h)
    model = k.Model(inp, k.layers.Dense(2, name="logits")(h))
    order = [layer.name for layer in model.layers]
    assert order.index("block_0_bn") == order.index("block_3_conv") + 1  # as in ResNet50
    assert qat_unsupported(model) == []
    x, y = _data((8, 8, 3), n=64, classes=2)
    result = build_pass("qat", {"epochs": 1}).apply(model, _ctx(x, y))
    ops = _int8_ops(result.model, x, tmp_path)
    assert ops["CONV_2D"] == 3 and ops["ADD"] == 1, ops  # BNs folded, nothing left in float


def test_separable_convolutions_qat_through_tfmots_split(tmp_path):
    """NASNet and Xception are SeparableConv2D + BatchNormalization: tfmot's layout transform
    splits each into a depthwise and a pointwise convolution and folds the BN."""
    from tfedge._tf import import_keras
    from tfedge.passes.compat import layer_compat, qat_unsupported

    k = import_keras()
    inp = k.Input((8, 8, 3))
    h = k.layers.SeparableConv2D(8, 3, padding="same", name="sep")(inp)
    h = k.layers.BatchNormalization(name="sep_bn")(h)
    h = k.layers.ReLU(name="relu")(h)
    h = k.layers.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep_relu")(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    model = k.Model(inp, k.layers.Dense(2, name="logits")(h))
    assert qat_unsupported(model) == []
    notes = {row.layer: row.notes for row in layer_compat(model)}
    assert "folded into 'sep'" in notes["sep_bn"] and "splits it" in notes["sep"]
    x, y = _data((8, 8, 3), n=64, classes=2)
    result = build_pass("qat", {"epochs": 1}).apply(model, _ctx(x, y))
    ops = _int8_ops(result.model, x, tmp_path)
    assert ops["DEPTHWISE_CONV_2D"] == 2 and ops["CONV_2D"] == 2, ops


def test_densenet_pre_activation_batchnorm_and_transition_pool_to_full_int8(tmp_path):
    """DenseNet: Concatenate -> BatchNormalization -> ReLU -> Conv2D. tfmot has no rule for a
    BN with no convolution before it; tfedge quantizes its output, so qat needs no skip. The
    transition's ``Conv2D -> AveragePooling2D`` keeps one scale: tfmot would quantize the pool's
    output too, and the converter refuses an AVERAGE_POOL_2D whose two scales differ."""
    from tfedge._tf import import_keras
    from tfedge.passes.compat import layer_compat, qat_unsupported, standalone_batchnorms

    k = import_keras()
    inp = k.Input((8, 8, 3))
    h = k.layers.Conv2D(8, 3, padding="same", name="stem")(inp)
    grown = k.layers.Conv2D(4, 1, name="grow")(h)
    h = k.layers.Concatenate(name="concat")([h, grown])
    h = k.layers.BatchNormalization(name="pre_bn")(h)
    h = k.layers.ReLU(name="pre_relu")(h)
    h = k.layers.Conv2D(8, 1, use_bias=False, name="transition")(h)
    pooled = k.layers.AveragePooling2D(2, strides=2, name="transition_pool")(h)
    h = k.layers.BatchNormalization(name="block_bn")(pooled)
    h = k.layers.ReLU(name="block_relu")(h)
    h = k.layers.Conv2D(4, 3, padding="same", name="block_conv")(h)
    h = k.layers.Concatenate(name="block_concat")([pooled, h])
    h = k.layers.GlobalAveragePooling2D()(h)
    model = k.Model(inp, k.layers.Dense(2, name="logits")(h))
    assert qat_unsupported(model) == []
    assert standalone_batchnorms(model) == {"pre_bn", "block_bn"}
    notes = {row.layer: row.notes for row in layer_compat(model)}
    assert "keeps its input's scale" in notes["transition_pool"]
    x, y = _data((8, 8, 3), n=64, classes=2)
    result = build_pass("qat", {"epochs": 1}).apply(model, _ctx(x, y))
    ops = _int8_ops(result.model, x, tmp_path)  # verified full-integer
    assert ops["CONV_2D"] == 4 and ops["CONCATENATION"] == 2, ops
    assert ops["AVERAGE_POOL_2D"] == 1, ops


def test_residuals_written_as_operators_on_two_tensors_become_merge_layers(tmp_path):
    """tf_keras records ``h + x`` (ConvNeXt's residual), ``h - x`` and ``tf.maximum(h, x)`` as
    TFOpLambda layers, which tfmot cannot wrap: qat makes them Add / Subtract / Maximum layers of
    the same name, with the same outputs. A broadcast (``h * pooled``) is still named."""
    import tensorflow as tf

    from tfedge._tf import import_keras
    from tfedge.passes.compat import layer_compat, qat_unsupported
    from tfedge.passes.qat_configs import ops_as_layers

    k = import_keras()
    inp = k.Input((8, 8, 3))
    h = k.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    x = k.layers.Conv2D(8, 3, padding="same", name="branch")(h)
    h = h + x
    h = tf.maximum(h, k.layers.Conv2D(8, 1, name="gate")(h)) - x
    model = k.Model(inp, k.layers.Dense(2, name="logits")(k.layers.GlobalAveragePooling2D()(h)))
    ops = [layer.name for layer in model.layers if type(layer).__name__ == "TFOpLambda"]
    assert len(ops) == 3 and qat_unsupported(model) == []
    notes = {row.layer: row.notes for row in layer_compat(model)}
    assert "makes it a Add layer" in notes[ops[0]], notes
    rebuilt, swapped = ops_as_layers(model)
    assert sorted(swapped) == sorted(ops)
    kinds = {type(rebuilt.get_layer(name)).__name__ for name in ops}
    assert kinds == {"Add", "Maximum", "Subtract"}
    x_in, y = _data((8, 8, 3), n=64, classes=2)
    np.testing.assert_allclose(rebuilt(x_in[:8]), model(x_in[:8]), rtol=1e-6, atol=1e-6)
    result = build_pass("qat", {"epochs": 1}).apply(model, _ctx(x_in, y))
    counts = _int8_ops(result.model, x_in, tmp_path)
    assert counts["ADD"] >= 1 and counts["SUB"] == 1 and counts["MAXIMUM"] == 1, counts

    pooled = k.layers.GlobalAveragePooling2D(keepdims=True)(h)
    broadcast = k.Model(inp, h * pooled)
    last = [layer.name for layer in broadcast.layers][-1]
    assert qat_unsupported(broadcast) == [f"{last} (TFOpLambda)"]
