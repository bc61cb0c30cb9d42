"""Name the user's Keras layer that a TFLite op came from.

The converter names tensors after its TensorFlow graph, not after the Keras layers:
``sequential/re_lu_1/Relu;sequential/conv2d/BiasAdd`` (fused ops joined by ``;``, the last
op first), ``functional/mobilenetv3small/expanded_conv_depthwise/depthwise`` for a nested
model, ``StatefulPartitionedCall:0`` for a model output. Keras 3 may trace a loaded model
under renamed scopes (``sequential_1/conv2d_1/...`` for the layer ``conv2d``).

With the Keras model's layer names at hand (``keras_layers``), an op is named after the Keras
layer that appears as a path component of its tensors' names, preferring a layer of the op's
own kind (a CONV_2D fused with a ReLU names the convolution). Without them, the layer is a
guess from the op's output tensor name, and an output tensor name without a layer path gives
no layer at all: the raw tensor name is shown instead.

Example:
    >>> layers = keras_layers("model.keras")  # tfedge.convert.keras_layers
    >>> op_layer(op, layers)  # CONV_2D writing 'sequential/re_lu_1/Relu;sequential/conv2d/...'
    'conv2d'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tfedge.convert.tflite_model import Op

# Keras layer classes each TFLite op kind comes from, to pick the right one of fused layers.
OP_LAYER_KINDS = {
    "CONV_2D": {"Conv1D", "Conv2D", "Convolution1D", "Convolution2D", "SeparableConv2D"},
    "DEPTHWISE_CONV_2D": {"DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv2D"},
    "TRANSPOSE_CONV": {"Conv2DTranspose", "Convolution2DTranspose"},
    "FULLY_CONNECTED": {"Dense", "EinsumDense"},
    "BATCH_MATMUL": {"Dense", "EinsumDense", "Dot"},
    "UNIDIRECTIONAL_SEQUENCE_LSTM": {"LSTM"},
    "MAX_POOL_2D": {"MaxPooling1D", "MaxPooling2D", "MaxPool1D", "MaxPool2D"},
    "AVERAGE_POOL_2D": {"AveragePooling1D", "AveragePooling2D", "AvgPool2D"},
    "MEAN": {"GlobalAveragePooling1D", "GlobalAveragePooling2D"},
    "SOFTMAX": {"Softmax", "Activation"},
    "ADD": {"Add"},
    "MUL": {"Multiply"},
    "CONCATENATION": {"Concatenate"},
    "RESHAPE": {"Reshape", "Flatten"},
}
# The TensorFlow ops (name prefixes) each TFLite op kind fuses, to find its part of a fused name.
TF_OPS = {
    "CONV_2D": ("Conv2D", "convolution", "BiasAdd"),
    "DEPTHWISE_CONV_2D": ("depthwise", "BiasAdd"),
    "FULLY_CONNECTED": ("MatMul", "BiasAdd"),
}
_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class KerasLayers:
    """The layer names of a Keras model (nested models included) and their classes."""

    model: str
    kinds: dict[str, str] = field(default_factory=dict)
    # a wrapper's name -> the user's layer it wraps ('quant_conv1' -> 'conv1')
    aliases: dict[str, str] = field(default_factory=dict)


def op_layers(ops: list[Op], layers: KerasLayers | None) -> list[str]:
    """The Keras layer each of ``ops`` came from ('' when none is known), in order.

    With ``layers``, an op whose tensors name no layer (a fused LSTM writes
    'tfl.unidirectional_sequence_lstm') is named after the only layer of its kind, else after
    the op that produced its weights or its input (the slice that takes an LSTM's last step is
    the LSTM's).
    """
    if layers is None:
        return [_guess(op) for op in ops]
    names: list[str] = []
    producers: dict[int, str] = {}
    for op in ops:
        name = op_layer(op, layers) or _only_layer_of_kind(op, layers)
        if not name:  # weights (a float16 model's come from a DEQUANTIZE) before data
            inputs = op.inputs[1:] + op.inputs[:1]
            name = next((producers[id(t)] for t in inputs if id(t) in producers), "")
        names.append(name)
        producers.update((id(t), name) for t in op.outputs if name)
    return names


def op_layer(op: Op, layers: KerasLayers | None) -> str:
    """The Keras layer ``op``'s tensor names give; '' when they give none.

    Its outputs are asked first, then its constant inputs (its weights); its other inputs
    are other ops' outputs.
    """
    if layers is None:
        return _guess(op)
    for tensors in (op.outputs, [t for t in op.inputs if t.is_constant]):
        found = [
            layer
            for t in tensors
            for part in t.name.split(";")
            for layer in _layers_in(part, layers)
        ]
        if found:
            wanted = OP_LAYER_KINDS.get(op.name, set())
            name = next((name for name in found if layers.kinds[name] in wanted), found[0])
            return layers.aliases.get(name, name)
    return ""


def _only_layer_of_kind(op: Op, layers: KerasLayers) -> str:
    wanted = OP_LAYER_KINDS.get(op.name, set())
    of_kind = [
        name for name, kind in layers.kinds.items() if kind in wanted and name not in layers.aliases
    ]
    return of_kind[0] if len(of_kind) == 1 else ""


def op_tensor(op: Op) -> str:
    """The op's output tensor name, first of its fused parts (shown when no layer is known)."""
    return op.outputs[0].name.split(";")[0] if op.outputs else ""


def _guess(op: Op) -> str:
    """The scope path in the op's own output tensor name, without the model's scope and the
    TensorFlow op: 'sequential/conv2d/Relu' -> 'conv2d'; '' when the name has no such path.

    Of fused parts, the one whose TensorFlow op is of the op's kind is taken
    ('.../re_lu/Relu;.../conv2d/BiasAdd' -> 'conv2d' for a CONV_2D).
    """
    parts = op.outputs[0].name.split(";") if op.outputs else [""]
    own = [p for p in parts if p.rsplit("/", 1)[-1].startswith(TF_OPS.get(op.name, ()))]
    components = [c for c in (own or parts)[0].split("/") if c]
    return "/".join(components[1:-1]) if len(components) >= 3 else ""


def _layers_in(part: str, layers: KerasLayers) -> list[str]:
    """Keras layers named by the path components of one fused part of a tensor name, the
    innermost first (a nested model's own name is the least precise).

    A tf_keras layer name may hold a '/' (``expanded_conv/depthwise``), so spans of components
    are tried, the longest first. Keras 3 can trace a loaded model under renamed scopes: when
    the model's own scope carries a ``_N`` suffix (``sequential_1`` for ``sequential``), so do
    its layers' (``dense_1`` is then the layer ``dense``), and the name without it is preferred.
    """
    components = [c for c in part.split("/") if c]
    renamed = bool(components) and _renamed(components[0], layers.model)
    found: list[str] = []
    # The last component is the TensorFlow op ('.../rescaling/add'), not a layer named 'add'.
    for end in range(max(len(components) - 1, 1), 0, -1):
        for start in range(end):
            match = _match("/".join(components[start:end]), layers, renamed)
            if match is not None and match not in found:
                found.append(match)
    return found


def _match(span: str, layers: KerasLayers, renamed: bool) -> str | None:
    stripped = _SUFFIX.sub("", span)
    order = (stripped, span) if renamed else (span, stripped)
    return next((name for name in order if name in layers.kinds), None)


def _renamed(component: str, model: str) -> bool:
    return bool(model) and component != model and _SUFFIX.sub("", component) == model
