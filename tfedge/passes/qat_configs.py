"""Which layers ``qat`` can quantize, and how: tfmot's own 8-bit rules plus tfedge's.

tfmot's 8-bit scheme has no rule for the layers today's architectures use: preprocessing
(``Rescaling``, ``Normalization``, ``Resizing``, ``CenterCrop``), ``Multiply`` (squeeze-and-excite),
hard-swish / hard-sigmoid activations and the ``TFOpLambda`` layers tf_keras's MobileNetV3 builds
them from (``x + 3``, ``x * (1/6)``), ConvNeXt's ``LayerNormalization`` and ``LayerScale``.
tfedge gives those an output-only ``QuantizeConfig`` (the layer's output gets a fake-quant;
TFLite runs it as int8 ops). ``AveragePooling2D`` gets none at all: TFLite's int8
``AVERAGE_POOL_2D`` needs its input's scale at its output. Inside a hard-swish written
out as ops (``x * relu6(x + 3) * (1/6)``) the three inner layers get a no-op config, so that the
converter sees the whole pattern and fuses it into one int8 ``HARD_SWISH``.

The table is here once: ``qat_rule`` (read by ``tfedge inspect`` through ``compat``) and
``quantize_config_for`` (read by the ``qat`` pass).

Example:
    >>> qat_rule(keras.layers.Rescaling(1 / 255))
    ('output', '')
    >>> qat_rule(keras.layers.Lambda(lambda x: x))[0]
    'no'
"""

from __future__ import annotations

import collections
import functools

# Activations tfmot's Default8BitActivationQuantizeConfig handles itself.
TFMOT_ACTIVATIONS = frozenset(
    {"relu", "swish", "gelu", "relu6", "linear", "softmax", "sigmoid", "tanh"}
)
# Activations tfmot's QuantizeAwareActivation handles inside a Conv2D / DepthwiseConv2D / Dense.
LAYER_ACTIVATIONS = frozenset({"linear", "relu", "swish", "gelu", "softmax", "sigmoid", "tanh"})
# Activations tfedge quantizes at the output (each becomes int8 TFLite ops; hard-swish one
# HARD_SWISH). ``silu`` is ``swish`` in tf_keras; tfedge's own ``tfedge>...`` functions
# (``tfedge.io.activations``) are matched by name too.
OUTPUT_ACTIVATIONS = frozenset({"hard_sigmoid", "hard_silu", "hard_swish", "silu", "leaky_relu"})
# Activations whose TFLite op stays in float in a full-int8 model, whatever QAT does.
FLOAT_ONLY_ACTIVATIONS = {
    "elu": "TFLite keeps ELU in float32 in a full-int8 model",
    "selu": "TFLite keeps SELU's ELU in float32 in a full-int8 model",
    "softplus": "TFLite has no int8 softplus (log(exp(x) + 1))",
    "mish": "TFLite has no int8 softplus, which mish uses",
}
# Layers tfmot's 8-bit layout transform replaces (depthwise + pointwise) before quantizing.
SPLIT_BY_TFMOT = frozenset({"SeparableConv2D", "SeparableConv1D"})
# Layers whose output tfedge quantizes (their weights, if any, stay float in QAT).
OUTPUT_LAYERS = frozenset(
    {
        "Rescaling",
        "Normalization",
        "Resizing",
        "CenterCrop",
        "Multiply",
        "Subtract",
        "Maximum",
        "Minimum",
        "TfedgeScalarOp",
        # ConvNeXt's x * gamma (tfedge.io.keras3_layers): gamma stays float in QAT and the
        # converter quantizes it as the constant of an int8 MUL
        "LayerScale",
        # mean, variance, rsqrt, scale and shift: its output gets QAT's range, the converter
        # calibrates the ops inside (each an int8 TFLite op)
        "LayerNormalization",
    }
)
# Layers TFLite runs as one int8 op with the same scale in and out (``AVERAGE_POOL_2D``): tfmot
# quantizes their output, so the output's range differs a little from the input's and the
# converter refuses the model ("violate the same scale constraint", DenseNet's transition
# ``Conv2D -> AveragePooling2D``). tfedge leaves their output alone: it keeps the input's scale.
INPUT_SCALE_LAYERS = frozenset({"AveragePooling1D", "AveragePooling2D"})
INPUT_SCALE_REASON = (
    "its output keeps its input's scale (TFLite's AVERAGE_POOL_2D needs the same scale in and out)"
)
# TFOpLambda symbols (``tf.<symbol>``) tfedge quantizes when every argument but the first is a
# Python number: elementwise ops with a scalar constant, and unary activations.
SCALAR_OPS = frozenset(
    {
        "__operators__.add",
        "math.add",
        "math.subtract",
        "math.multiply",
        "math.truediv",
        "math.divide",
        "nn.relu",
        "nn.relu6",
        "math.sigmoid",
        "nn.sigmoid",
        "math.tanh",
        "nn.silu",
        "nn.swish",
        "math.maximum",
        "math.minimum",
    }
)

TFMOT = "tfmot"  # tfmot's own registry quantizes it
OUTPUT = "output"  # tfedge's output-only config
INPUT_SCALE = "input-scale"  # not quantized: the converter gives the output its input's scale
NO = "no"


def custom_activations() -> dict:
    """tfedge's registered activation functions by name (``tfedge.io.activations``), if any."""
    try:
        from tfedge.io import activations
    except ImportError:
        return {}
    found = getattr(activations, "CUSTOM_ACTIVATIONS", {})
    return dict(found) if isinstance(found, dict) else {}


def activation_name(fn) -> str:
    """The name of an activation function: tfedge's registered name, else ``__name__``."""
    for name, custom in custom_activations().items():
        if fn is custom:
            return str(name)
    return str(getattr(fn, "__name__", type(fn).__name__))


def _bare(name: str) -> str:
    return name.split(">")[-1]  # "tfedge>hard_silu" -> "hard_silu"


def _op_arguments(layer) -> list:
    """Every argument but the input tensor of a TFOpLambda layer's call."""
    extra: list = []
    for node in getattr(layer, "_inbound_nodes", [])[:1]:  # clones of a model share the layer
        extra.extend(list(getattr(node, "call_args", ()))[1:])
        kwargs = dict(getattr(node, "call_kwargs", {}) or {})
        kwargs.pop("name", None)
        extra.extend(kwargs.values())
    return extra


# The merge layer that computes a TFOpLambda op on two tensors of one shape.
MERGE_LAYERS = {
    "add": "Add",
    "subtract": "Subtract",
    "multiply": "Multiply",
    "maximum": "Maximum",
    "minimum": "Minimum",
}


def _merge_layer_for(layer) -> str | None:
    """The merge layer class name for a ``TFOpLambda`` ``x <op> y`` on two tensors of the same
    shape (a residual written ``x + y`` in tf_keras), else None."""
    op = _OP_FUNCTIONS.get(str(getattr(layer, "symbol", "")))
    nodes = getattr(layer, "_inbound_nodes", [])[:1]
    others = _op_arguments(layer)
    if op not in MERGE_LAYERS or not nodes or len(others) != 1:
        return None
    pair = [*list(getattr(nodes[0], "call_args", ()))[:1], others[0]]
    if len(pair) != 2 or any(type(t).__name__ != "KerasTensor" for t in pair):
        return None  # a constant array is no layer's output
    return MERGE_LAYERS[op] if tuple(pair[0].shape) == tuple(pair[1].shape) else None


def _is_number(value) -> bool:
    import numpy as np

    return isinstance(value, (int, float)) or (isinstance(value, np.ndarray) and value.ndim == 0)


def qat_rule(layer) -> tuple[str, str]:
    """``(how, reason)``: ``how`` is ``tfmot``, ``output`` (tfedge's output-only config),
    ``input-scale`` (left unquantized, the input's scale carries through) or ``no``; ``reason``
    says why not (``no``) or what tfedge does differently."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (  # noqa: E501 (a module path)
        Default8BitQuantizeRegistry,
    )

    kind = type(layer).__name__
    if kind == "Activation":
        name = activation_name(layer.activation)
        if name in TFMOT_ACTIVATIONS:
            return TFMOT, ""
        if _bare(name) in OUTPUT_ACTIVATIONS:
            return OUTPUT, ""
        if _bare(name) in FLOAT_ONLY_ACTIVATIONS:
            return NO, f"activation '{name}': {FLOAT_ONLY_ACTIVATIONS[_bare(name)]}"
        return NO, (
            f"activation '{name}' has no 8-bit rule (tfedge quantizes "
            f"{', '.join(sorted(TFMOT_ACTIVATIONS | OUTPUT_ACTIVATIONS))})"
        )
    if kind == "TFOpLambda":
        symbol = str(getattr(layer, "symbol", ""))
        if symbol not in SCALAR_OPS:
            return NO, f"tf.{symbol} has no 8-bit rule (tfedge quantizes scalar elementwise ops)"
        if all(_is_number(a) for a in _op_arguments(layer)):
            return OUTPUT, ""
        merge = _merge_layer_for(layer)
        if merge is None:
            return NO, (
                f"tf.{symbol} takes a tensor of another shape, an array or several arguments "
                "besides its input; use an Add / Multiply layer"
            )
        return OUTPUT, f"two tensors: qat makes it a {merge} layer"
    if kind in OUTPUT_LAYERS:
        return OUTPUT, ""
    if kind in INPUT_SCALE_LAYERS:
        return INPUT_SCALE, INPUT_SCALE_REASON
    if kind in SPLIT_BY_TFMOT:
        name = activation_name(layer.activation)
        if name not in LAYER_ACTIVATIONS:
            return NO, (
                f"tfmot cannot quantize activation '{name}' inside a {kind}; "
                "move it to its own Activation layer"
            )
        return TFMOT, "tfmot splits it into a depthwise and a pointwise convolution for qat"
    if Default8BitQuantizeRegistry().supports(layer):
        inner = getattr(layer, "activation", None)
        name = activation_name(inner) if inner is not None else "linear"
        if kind in ("Conv2D", "DepthwiseConv2D", "Dense") and name not in LAYER_ACTIVATIONS:
            if movable_activation(layer):
                return TFMOT, f"activation '{name}' moves to its own Activation layer for qat"
            return NO, (
                f"tfmot cannot quantize activation '{name}' inside a {kind}; "
                "move it to its own Activation layer"
            )
        return TFMOT, ""
    if kind == "Lambda":
        return NO, "a Lambda layer runs Python code tfmot cannot see into; use built-in layers"
    return NO, f"tfmot's 8-bit scheme has no rule for {kind}"


def movable_activation(layer) -> bool:
    """A Conv2D / DepthwiseConv2D / Dense, called once, whose activation tfmot cannot quantize
    inside it but tfedge can as its own ``Activation`` layer (``rebuild.split_activations``)."""
    from tfedge._tf import import_keras

    if type(layer).__name__ not in ("Conv2D", "DepthwiseConv2D", "Dense"):
        return False
    name = activation_name(layer.activation)
    if name in LAYER_ACTIVATIONS or len(getattr(layer, "inbound_nodes", [])) > 1:
        return False
    return qat_rule(import_keras().layers.Activation(layer.activation))[0] != NO


def moved_activations(model) -> list[str]:
    """The layers of ``model`` whose activation moves out before QAT (``movable_activation``)."""
    return [layer.name for layer in model.layers if movable_activation(layer)]


def quantize_config_for(layer):
    """The ``QuantizeConfig`` tfedge gives ``layer``, or None (tfmot's own rule, or none at all:
    ``qat_rule`` says which and why)."""
    how = qat_rule(layer)[0]
    if how == INPUT_SCALE:
        return noop_config()
    return output_config() if how == OUTPUT else None


def output_config():
    """tfmot's config that quantizes a layer's output only (its weights stay float in QAT)."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs import (  # noqa: E501 (a module path)
        Default8BitOutputQuantizeConfig,
    )

    return Default8BitOutputQuantizeConfig()


def noop_config():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs import (  # noqa: E501 (a module path)
        NoOpQuantizeConfig,
    )

    return NoOpQuantizeConfig()


def model_graph(model) -> _Graph:
    """Which layer feeds which in ``model`` (see ``_Graph``)."""
    return _Graph(model)


class _Graph:
    """Which layer feeds which in ``model``, read from its config: a layer object may also
    belong to earlier clones of the model (tfmot's strip functions reuse them), so its own
    ``_inbound_nodes`` and ``_outbound_nodes`` count those too."""

    def __init__(self, model) -> None:
        self.model = model
        config = model.get_config()
        entries = config.get("layers", [])
        self.inputs: dict[str, list[str]] = {}
        self.model_inputs = {
            e["config"]["name"] for e in entries if e["class_name"] == "InputLayer"
        }
        previous: list[str] = []
        for entry in entries:
            name = entry["config"]["name"]
            refs: list[str] = []
            if "inbound_nodes" in entry:
                _refs(entry["inbound_nodes"], refs)
            else:  # Sequential: a chain
                refs = previous
            self.inputs[name] = refs
            previous = [name]
        self.uses = collections.Counter(n for refs in self.inputs.values() for n in refs)
        for ref in config.get("output_layers", []):
            self.uses[ref[0]] += 1
        if "output_layers" not in config and previous:  # Sequential: its last layer
            self.uses[previous[0]] += 1

    def layer(self, name: str):
        return self.model.get_layer(name)

    def only_input(self, name: str) -> str | None:
        refs = self.inputs.get(name, [])
        return refs[0] if len(refs) == 1 else None

    def feeds_only(self, name: str) -> bool:
        return self.uses[name] == 1


def _refs(value, out: list[str]) -> None:
    """Names of the layers in a config's ``inbound_nodes`` (``[name, node, tensor, kwargs]``)."""
    if (
        isinstance(value, list)
        and len(value) == 4
        and isinstance(value[0], str)
        and isinstance(value[3], dict)
    ):
        out.append(value[0])
    elif isinstance(value, (list, tuple)):
        for item in value:
            _refs(item, out)


def _op(layer) -> tuple[str | None, float | None]:
    """``(op, scalar)`` of a scalar-op layer (``TFOpLambda`` or ``TfedgeScalarOp``)."""
    kind = type(layer).__name__
    if kind == "TfedgeScalarOp":
        return layer.op, layer.value
    if kind != "TFOpLambda":
        return None, None
    values = _op_arguments(layer)
    scalar = float(values[0]) if len(values) == 1 and _is_number(values[0]) else None
    return _OP_FUNCTIONS.get(str(getattr(layer, "symbol", ""))), scalar


def _hard_sigmoid_of(graph: _Graph, gate: str) -> tuple[str, list[str]] | None:
    """``(x, [inner layers])`` if layer ``gate`` computes ``relu6(x + 3) * (1/6)`` with layers
    used once, else None."""
    op, factor = _op(graph.layer(gate))
    if op == "truediv" and factor:
        op, factor = "multiply", 1 / factor
    if op != "multiply" or factor is None or abs(factor - 1 / 6) > 1e-6:
        return None
    relu = graph.only_input(gate)
    if relu is None or not (graph.feeds_only(gate) and graph.feeds_only(relu)):
        return None
    six = graph.layer(relu)
    if type(six).__name__ == "ReLU":
        options = six.get_config()
        if options.get("max_value") != 6.0 or options.get("negative_slope"):
            return None
        if options.get("threshold"):
            return None
    elif _op(six)[0] != "relu6":
        return None
    add = graph.only_input(relu)
    if add is None or not graph.feeds_only(add) or _op(graph.layer(add)) != ("add", 3.0):
        return None
    x = graph.only_input(add)
    return None if x is None else (x, [add, relu, gate])


def hard_swish_inner(model) -> dict[str, str]:
    """``{inner layer: Multiply}`` for every hard-swish written as layers,
    ``Multiply([x, relu6(x + 3) * (1/6)])`` (tf_keras's MobileNetV3): the inner layers stay
    unquantized so that the converter fuses the pattern into one ``HARD_SWISH``."""
    graph = _Graph(model)
    inner: dict[str, str] = {}
    for layer in model.layers:
        inputs = graph.inputs.get(layer.name, [])
        if type(layer).__name__ != "Multiply" or len(inputs) != 2:
            continue
        for x, gate in (inputs, inputs[::-1]):
            found = _hard_sigmoid_of(graph, gate)
            if found and found[0] == x:
                inner.update(dict.fromkeys(found[1], layer.name))
                break
    return inner


def annotate_scope() -> dict:
    """Custom objects ``quantize_apply`` needs to clone a model the qat pass annotated."""
    cls = scalar_op_class()
    return {cls.__name__: cls, f"tfedge>{cls.__name__}": cls}


_OP_FUNCTIONS = {
    "__operators__.add": "add",
    "math.add": "add",
    "math.subtract": "subtract",
    "math.multiply": "multiply",
    "math.truediv": "truediv",
    "math.divide": "truediv",
    "math.maximum": "maximum",
    "math.minimum": "minimum",
    "nn.relu": "relu",
    "nn.relu6": "relu6",
    "math.sigmoid": "sigmoid",
    "nn.sigmoid": "sigmoid",
    "math.tanh": "tanh",
    "nn.silu": "silu",
    "nn.swish": "silu",
}


@functools.cache
def scalar_op_class():
    """``TfedgeScalarOp``: a ``TFOpLambda`` with a scalar constant (``x + 3``, ``x * (1/6)``,
    ``relu6(x)``) as a plain layer. tfmot's wrapper cannot quantize a ``TFOpLambda`` (it needs the
    layer's output shape, which a ``TFOpLambda`` cannot compute without its call arguments); the
    qat pass swaps them in before annotating, with the same names and the same results."""
    import tensorflow as tf

    from tfedge._tf import import_keras

    keras = import_keras()

    binary = {
        "add": tf.math.add,
        "subtract": tf.math.subtract,
        "multiply": tf.math.multiply,
        "truediv": tf.math.truediv,
        "maximum": tf.math.maximum,
        "minimum": tf.math.minimum,
    }
    unary = {
        "relu": tf.nn.relu,
        "relu6": tf.nn.relu6,
        "sigmoid": tf.math.sigmoid,
        "tanh": tf.math.tanh,
        "silu": tf.nn.silu,
    }

    @keras.utils.register_keras_serializable(package="tfedge")
    class TfedgeScalarOp(keras.layers.Layer):
        def __init__(self, op: str, value: float | None = None, **kwargs):
            super().__init__(**kwargs)
            self.op, self.value = op, value

        def call(self, inputs):
            if self.op in unary:
                return unary[self.op](inputs)
            return binary[self.op](inputs, tf.cast(self.value, inputs.dtype))

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "op": self.op, "value": self.value}

    return TfedgeScalarOp


def ops_as_layers(model):
    """``(model, names)``: ``model`` with every quantizable ``TFOpLambda`` (``qat_rule``) replaced
    by a ``TfedgeScalarOp`` of the same name; ``model`` itself when it has none."""
    swap = {
        layer.name: layer
        for layer in model.layers
        if type(layer).__name__ == "TFOpLambda"
        and qat_rule(layer)[0] == OUTPUT
        and str(getattr(layer, "symbol", "")) in _OP_FUNCTIONS
    }
    if not swap or type(model).__name__ != "Functional":
        return model, []
    from tfedge.passes.rebuild import copy_weights, model_config

    config = model_config(model)
    for entry in config["layers"]:
        layer = swap.get(entry["config"]["name"])
        if layer is None:
            continue
        nodes = entry["inbound_nodes"]
        source = nodes[0] if len(nodes) == 1 else None
        if not (isinstance(source, list) and len(source) == 4 and isinstance(source[0], str)):
            continue  # the op's input is not one tensor: leave it
        merge = _merge_layer_for(layer)
        if merge is not None:
            _as_merge_layer(entry, merge, source)  # the tensor argument is a layer's output
            continue
        values = [float(v) for v in _op_arguments(layer)]
        entry["class_name"] = "TfedgeScalarOp"
        entry["config"] = {
            "name": entry["config"]["name"],
            "trainable": False,
            "dtype": entry["config"].get("dtype", "float32"),
            "op": _OP_FUNCTIONS[str(layer.symbol)],
            "value": values[0] if values else None,
        }
        entry["inbound_nodes"] = [[[*source[:3], {}]]]
        entry.pop("module", None)
        entry.pop("registered_name", None)
    from tfedge._tf import import_keras

    cls = scalar_op_class()
    rebuilt = import_keras().Model.from_config(config, custom_objects={cls.__name__: cls})
    copy_weights(model, rebuilt)
    return rebuilt, sorted(swap)


def _as_merge_layer(entry: dict, merge: str, source: list) -> None:
    """Rewrite a config entry ``x <op> y`` (``y`` a keyword argument naming a layer's output)
    as the merge layer ``merge`` on ``[x, y]``, same name."""
    (other,) = [
        v
        for k, v in source[3].items()
        if k != "name" and isinstance(v, list) and len(v) >= 3 and isinstance(v[0], str)
    ]
    entry["class_name"] = merge
    entry["config"] = {
        "name": entry["config"]["name"],
        "trainable": True,
        "dtype": entry["config"].get("dtype", "float32"),
    }
    entry["inbound_nodes"] = [[[*source[:3], {}], [*other[:3], {}]]]
    entry.pop("module", None)
    entry.pop("registered_name", None)


def _two_op_preprocessing(layer) -> bool:
    import numpy as np

    kind = type(layer).__name__
    if kind == "Rescaling":
        return bool(np.any(np.asarray(layer.offset, dtype=float) != 0))
    return kind == "Normalization"


def input_preprocessing(model) -> list[str]:
    """Affine preprocessing of two ops fed by a model input: a ``Normalization`` (SUB, MUL), a
    ``Rescaling`` with an offset (MUL, ADD). Quantization-aware, the converter puts a float
    DEQUANTIZE / QUANTIZE pair between the int8 input and the second op; left out of QAT, the
    converter calibrates them and they run as int8 ops. (A ``Rescaling`` without offset is one
    MUL, quantized as the table says.)"""
    graph = _Graph(model)
    return [
        layer.name
        for layer in model.layers
        if _two_op_preprocessing(layer)
        and all(source in graph.model_inputs for source in graph.inputs.get(layer.name, []))
    ]
