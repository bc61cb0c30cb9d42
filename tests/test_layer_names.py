"""Float ops are named after the user's Keras layers, not the converter's graph names; float
ops are summarised where float was asked; parameters count the same in every conversion.

Ops and tensors are built by hand with the names the converter writes (seen on real models:
tf_keras and Keras 3 CNNs, a nested MobileNetV3Small, LSTMs); ``test_convert_names_keras3_layers``
checks one real Keras 3 conversion end to end.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tfedge.analyze.inspect import count_parameters
from tfedge.cli.convert import float_op_lines
from tfedge.convert.keras_layers import keras_layers
from tfedge.convert.layer_names import KerasLayers, op_layers
from tfedge.convert.tflite_model import Op, Tensor, TfliteModel
from tfedge.convert.verify import FloatOp, find_float_ops, summarize_float_ops


def _t(name: str, dtype: str = "float32", data=None) -> Tensor:
    return Tensor(0, name, dtype, (1,), data=None if data is None else np.asarray(data))


def _op(kind: str, out: str, *inputs: Tensor) -> Op:
    return Op(0, kind, 1, list(inputs), [_t(out)])


def _model(ops: list[Op]) -> TfliteModel:
    return TfliteModel("m.tflite", 0, [], ops, [], [], {}, 1)


def test_a_conv_fused_with_a_relu_layer_names_the_conv():
    """The issue's case: the fused op's output is named after the ReLU layer."""
    layers = KerasLayers("sequential", {"conv2d": "Conv2D", "re_lu_1": "ReLU", "dense": "Dense"})
    conv = _op("CONV_2D", "sequential/re_lu_1/Relu;sequential/conv2d/BiasAdd;sequential/conv2d/x")
    assert op_layers([conv], layers) == ["conv2d"]
    assert op_layers([conv], None) == ["conv2d"]  # the guess picks the conv's part too


def test_keras3_renamed_scopes_map_back_to_the_saved_names():
    """A loaded Keras 3 model traces as 'sequential_1/dense_1' for its layer 'dense', and
    'dense_1_2' for its layer 'dense_1': the names the user saved are printed."""
    layers = KerasLayers("sequential", {"conv2d": "Conv2D", "dense": "Dense", "dense_1": "Dense"})
    ops = [
        _op("CONV_2D", "sequential_1/conv2d_1/Relu;sequential_1/conv2d_1/convolution"),
        _op("FULLY_CONNECTED", "sequential_1/dense_1/MatMul1"),
        _op("FULLY_CONNECTED", "sequential_1/dense_1_2/MatMul1"),
    ]
    assert op_layers(ops, layers) == ["conv2d", "dense", "dense_1"]
    # The last component is the TensorFlow op, even where a layer is called 'add' too.
    nested = KerasLayers("functional", {"backbone": "Functional", "rescaling": "Rescaling"})
    ops = [_op("ADD", "functional_1/backbone_1/rescaling_1/add")]
    assert op_layers(ops, KerasLayers("functional", {**nested.kinds, "add": "Add"})) == [
        "rescaling"
    ]
    # Not renamed (tf_keras): the names are taken as they are.
    ops = [_op("FULLY_CONNECTED", "sequential/dense_1/MatMul1")]
    assert op_layers(ops, layers) == ["dense_1"]


def test_a_wrapped_layer_is_named_as_the_user_built_it():
    """tfedge's QAT wraps 'conv1' as 'quant_conv1' (an in-memory model from optimize)."""
    layers = KerasLayers(
        "digits_cnn",
        {"quant_conv1": "Conv2D", "conv1": "Conv2D", "quant_fc": "Dense", "fc": "Dense"},
        {"quant_conv1": "conv1", "quant_fc": "fc"},
    )
    ops = [
        _op("CONV_2D", "digits_cnn/quant_conv1/Relu;digits_cnn/quant_conv1/BiasAdd"),
        _op("FULLY_CONNECTED", "tfl.fully_connected"),
    ]
    assert op_layers(ops, layers) == ["conv1", "fc"]


def test_nested_model_names_the_inner_layer():
    """tf_keras MobileNetV3 layer names hold a '/'; the nested model's own name is not taken."""
    layers = KerasLayers(
        "model",
        {
            "MobilenetV3small": "Functional",
            "expanded_conv/depthwise": "DepthwiseConv2D",
            "re_lu_1": "ReLU",
            "head": "Dense",
        },
    )
    op = _op(
        "DEPTHWISE_CONV_2D",
        "model/MobilenetV3small/re_lu_1/Relu;model/MobilenetV3small/expanded_conv/depthwise/d",
    )
    assert op_layers([op], layers) == ["expanded_conv/depthwise"]


def test_unnamed_ops_take_the_only_layer_of_their_kind_or_their_producer():
    """A fused LSTM writes 'tfl.unidirectional_sequence_lstm'; the slice after it is the
    LSTM's; an output op named 'StatefulPartitionedCall:0' is named by its weights."""
    layers = KerasLayers("sequential", {"lstm": "LSTM", "dense": "Dense", "dense_1": "Dense"})
    lstm = _op("UNIDIRECTIONAL_SEQUENCE_LSTM", "tfl.unidirectional_sequence_lstm", _t("x"))
    last = _op("STRIDED_SLICE", "tfl.strided_slice", lstm.outputs[0])
    head = _op("FULLY_CONNECTED", "StatefulPartitionedCall:0", last.outputs[0])
    head.inputs.append(_t("sequential/dense_1/MatMul", data=[[1.0]]))
    assert op_layers([lstm, last, head], layers) == ["lstm", "lstm", "dense_1"]


def test_without_keras_the_raw_tensor_name_is_shown_not_an_invented_layer():
    ops = [
        _op("CONV_2D", "sequential/conv2d/Relu;sequential/conv2d/BiasAdd"),
        _op("SOFTMAX", "StatefulPartitionedCall:0", _t("in")),
    ]
    found = find_float_ops(_model(ops))
    assert [f.describe() for f in found] == [
        "CONV_2D (layer 'conv2d')",
        "SOFTMAX (tensor 'StatefulPartitionedCall:0')",
    ]


def test_keras_layers_read_from_a_keras3_file_without_loading_it(tmp_path):
    """Layer names of nested models come from config.json; the model's own name is apart."""
    dense = {"class_name": "Dense", "config": {"name": "dense", "units": 3}}
    inner = {"class_name": "Sequential", "config": {"name": "block", "layers": [dense]}}
    config = {
        "class_name": "Functional",
        "config": {
            "name": "functional",
            "layers": [{"class_name": "Conv2D", "config": {"name": "conv2d"}}, inner],
            "dtype": {"class_name": "DTypePolicy", "config": {"name": "float32"}},
        },
        "compile_config": {"optimizer": {"class_name": "Adam", "config": {"name": "adam"}}},
    }
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.10.0"}))
        zf.writestr("config.json", json.dumps(config))
    assert keras_layers(path) == KerasLayers(
        "functional", {"conv2d": "Conv2D", "block": "Sequential", "dense": "Dense"}
    )
    assert keras_layers(tmp_path / "missing.keras") is None


def _float_ops(kinds: dict[str, int]) -> list[FloatOp]:
    return [
        FloatOp(kind, f"{kind.lower()}_{i}", ["float32"])
        for kind, n in kinds.items()
        for i in range(n)
    ]


def test_a_float_model_prints_one_summary_line():
    ops = _float_ops({"CONV_2D": 52, "DEPTHWISE_CONV_2D": 11, "ADD": 20, "MUL": 9, "MEAN": 9})
    assert float_op_lines(ops, integer_asked=False) == [
        "float model: 101 float ops (CONV_2D 52, ADD 20, DEPTHWISE_CONV_2D 11, MUL 9, MEAN 9)"
    ]
    assert float_op_lines([], integer_asked=False) == []
    many = _float_ops({f"OP{i}": 1 for i in range(8)})
    assert summarize_float_ops(many).endswith(", OP5 1, 2 more kinds)")


def test_an_integer_conversion_lists_float_ops_up_to_a_cap():
    ops = _float_ops({"SIN": 14})
    lines = float_op_lines(ops, integer_asked=True, shown=10)
    assert lines[0] == "float op: SIN (layer 'sin_0')" and len(lines) == 11
    assert lines[-1] == "... and 4 more float ops (--json lists them all)"
    assert len(float_op_lines(ops[:10], integer_asked=True, shown=10)) == 10


def test_parameters_count_biases_of_any_dtype_but_not_shapes():
    """The same dense layer in float and in int8 (int32 bias) counts the same; a reshape's
    int32 shape and the float converter's sharing of equal biases change nothing."""
    zeros = _t("zero_bias", "float32", np.zeros(4))
    float_model = _model(
        [
            _op("RESHAPE", "r", _t("x"), _t("shape", "int32", [1, 8])),
            _op("FULLY_CONNECTED", "a", _t("r"), _t("w1", "float32", np.ones((4, 8))), zeros),
            _op("FULLY_CONNECTED", "b", _t("a"), _t("w2", "float32", np.ones((4, 4))), zeros),
        ]
    )
    int8_model = _model(
        [
            _op("RESHAPE", "r", _t("x", "int8"), _t("shape", "int32", [1, 8])),
            _op(
                "FULLY_CONNECTED",
                "a",
                _t("r", "int8"),
                _t("w1", "int8", np.ones((4, 8))),
                _t("b1", "int32", np.zeros(4)),
            ),
            _op(
                "FULLY_CONNECTED",
                "b",
                _t("a", "int8"),
                _t("w2", "int8", np.ones((4, 4))),
                _t("b2", "int32", np.zeros(4)),
            ),
        ]
    )
    assert count_parameters(float_model) == count_parameters(int8_model) == 32 + 4 + 16 + 4


@pytest.mark.tf
@pytest.mark.slow
def test_convert_names_keras3_layers(tmp_path, run_cli):
    """A Keras 3 model with a nested block, converted the CLI's way (in a worker, from the
    saved file): every float op names a layer the user built, of the op's kind; `--quant none`
    prints one summary line, and so does `inspect`."""
    from tfedge._tf import import_keras3
    from tfedge.convert.converter import verify_converted
    from tfedge.convert.tflite_model import read_tflite

    keras = import_keras3()
    layers = keras.layers
    block = keras.Sequential(
        [keras.Input((6, 6, 4)), layers.Conv2D(4, 3, padding="same"), layers.ReLU()], name="block"
    )
    inp = keras.Input((6, 6, 1))
    x = block(layers.Conv2D(4, 3, padding="same", name="stem")(inp))
    x = layers.Dense(3)(layers.Dense(5)(layers.Flatten()(x)))
    model = keras.Model(inp, x, name="net")
    model.save(tmp_path / "net.keras")
    out = tmp_path / "net.tflite"
    text = run_cli("convert", tmp_path / "net.keras", "--quant", "none", "-o", out).stdout
    assert "float (as --quant asks)" in text and "float op:" not in text
    indented = [line for line in text.splitlines() if line.startswith("  ")]
    assert len(indented) == 1 and indented[0].startswith("  float model: ")
    assert "float ops (CONV_2D 2, FULLY_CONNECTED 2" in indented[0]
    float_ops = verify_converted(read_tflite(out), "none", "float32", layers=keras_layers(model))
    names = {layer.name for layer in model.layers} | {layer.name for layer in block.layers}
    assert {f.layer for f in float_ops} <= names
    convs = [f.layer for f in float_ops if f.op == "CONV_2D"]
    denses = [f.layer for f in float_ops if f.op == "FULLY_CONNECTED"]
    dense_names = [layer.name for layer in model.layers if isinstance(layer, layers.Dense)]
    assert convs == ["stem", block.layers[0].name] and denses == dense_names
    in_memory, saved = keras_layers(model), keras_layers(tmp_path / "net.keras")
    assert in_memory.kinds.items() <= saved.kinds.items() and in_memory.model == saved.model
    text = run_cli("inspect", out).stdout
    assert f"full-integer: no, a float model\n{indented[0]}\n" in text
