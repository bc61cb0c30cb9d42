"""Which compression passes apply to which layer, and why not where they don't.

Read by ``tfedge inspect MODEL.keras`` (so users see it before training) and by the passes
themselves (``qat`` lists what tfmot cannot quantize before it starts).

Example:
    >>> rows = layer_compat(model)
    >>> rows[1]
    LayerCompat(layer='conv1', type='Conv2D', prune='yes', cluster='yes', qat='yes', notes='')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

FOLDED_INTO = ("Conv2D", "DepthwiseConv2D", "Dense", "Conv1D", "SeparableConv2D")
NORMALISATION = ("BatchNormalization", "LayerNormalization")
# One weight per channel, no kernel (ConvNeXt's LayerScale, tfedge.io.keras3_layers).
PER_CHANNEL_SCALE = "LayerScale"
# tfmot has no rule for a BatchNormalization that does not follow a convolution or Dense: tfedge
# quantizes its output (the converter turns it into an int8 MUL and ADD).
STANDALONE_BN = "quantized at its output (not after a convolution, so nothing to fold it into)"


def standalone_batchnorms(model) -> set[str]:
    """Names of the BatchNormalization layers of ``model`` that qat quantizes at their output."""
    return {r.layer for r in layer_compat(model) if STANDALONE_BN in r.notes}


NO_WEIGHTS = "-"


@dataclass
class LayerCompat:
    """``yes``, ``no`` or ``-`` (nothing to do: no weights) for each technique, with the reasons."""

    layer: str
    type: str
    prune: str
    cluster: str
    qat: str
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def layer_compat(model) -> list[LayerCompat]:
    """One row per layer of a tf_keras ``model``.

    A layer's input comes from the model's graph, not from the layer listed before it: ResNet50
    lists ``conv2_block1_0_conv, conv2_block1_3_conv, conv2_block1_0_bn, conv2_block1_3_bn``.
    """
    from tfedge.passes.qat_configs import model_graph

    previous = dict(zip([layer.name for layer in model.layers[1:]], model.layers))
    try:
        graph = model_graph(model)
    except NotImplementedError:  # a subclassed model has no config: its layers' list order
        return [_row(layer, previous.get(layer.name)) for layer in model.layers]
    by_name = {layer.name: layer for layer in model.layers}  # a Sequential's input is not one
    return [_row(layer, by_name.get(graph.only_input(layer.name) or "")) for layer in model.layers]


def qat_unsupported(model) -> list[str]:
    """'name (Type)' of every layer tfmot's default 8-bit QAT cannot quantize."""
    return [f"{r.layer} ({r.type})" for r in layer_compat(model) if r.qat == "no"]


def _row(layer, previous) -> LayerCompat:
    reasons: list[str] = []
    prune = _prune_status(layer, reasons)
    cluster = _cluster_status(layer, reasons)
    qat = _qat_status(layer, previous, reasons)
    return LayerCompat(layer.name, type(layer).__name__, prune, cluster, qat, "; ".join(reasons))


def _prune_status(layer, reasons: list[str]) -> str:
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
        PruneRegistry,
    )

    from tfedge.passes.prune import prunable

    if not layer.trainable_weights or type(layer).__name__ in NORMALISATION:
        return NO_WEIGHTS
    if prunable(layer):
        return "yes"
    if type(layer).__name__ == PER_CHANNEL_SCALE:
        reasons.append("prune: one scale per channel, no kernel to prune")
    elif type(layer).__name__ == "DepthwiseConv2D":
        reasons.append("prune: tfmot does not prune DepthwiseConv2D kernels")
    elif PruneRegistry.supports(layer):
        reasons.append("prune: tfmot keeps its weights dense (nothing prunable)")
    else:
        reasons.append(
            f"prune: tfmot has no pruning rule for {type(layer).__name__}; "
            "exclude it with `layers:`"
        )
    return "no"


def _cluster_status(layer, reasons: list[str]) -> str:
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import (
        ClusteringRegistry,
    )

    from tfedge.passes.cluster import clusterable

    if not layer.trainable_weights or type(layer).__name__ in NORMALISATION:
        return NO_WEIGHTS
    if clusterable(layer):
        return "yes"
    if type(layer).__name__ == PER_CHANNEL_SCALE:
        reasons.append("cluster: one scale per channel, no kernel to cluster")
    elif type(layer).__name__ == "DepthwiseConv2D":
        reasons.append("cluster: tfmot leaves DepthwiseConv2D unclustered (large accuracy loss)")
    elif ClusteringRegistry.supports(layer):
        reasons.append("cluster: tfmot keeps its weights as they are (no kernel to cluster)")
    else:
        reasons.append(f"cluster: tfmot has no clustering rule for {type(layer).__name__}")
    return "no"


def _qat_status(layer, previous, reasons: list[str]) -> str:
    from tfedge.passes.qat_configs import NO, qat_rule

    kind = type(layer).__name__
    if kind == "InputLayer":
        return NO_WEIGHTS
    if kind == "BatchNormalization" and type(previous).__name__ in FOLDED_INTO:
        reasons.append(f"qat: folded into '{previous.name}'")
        return "yes"
    if kind == "BatchNormalization":  # e.g. DenseNet's pre-activation BN after a Concatenate
        reasons.append(f"qat: {STANDALONE_BN}")
        return "yes"
    how, reason = qat_rule(layer)
    if how != NO:
        if reason:  # what tfedge or tfmot does differently (a moved activation, a split)
            reasons.append(f"qat: {reason}")
        return "yes"
    reasons.append(
        f"qat: {reason}; use `unsupported: skip` in the qat pass to leave it to post-training "
        "quantization"
    )
    return "no"


def compat_rows(fmt, model) -> list[LayerCompat]:
    """Rows for an inspected model file, one per layer of the model tfmot would work on.

    Keras 3 models are judged through their tf_keras rebuild; nested models (a backbone used
    as a layer) through their flattened graph, so every inner layer has a row, and each dropped
    data-augmentation layer has a row saying so. Raises ``TfedgeError`` (the reason) when the
    model cannot be rebuilt in tf_keras: tfmot cannot work on it.
    """
    from tfedge.io.flatten import dropped_layers
    from tfedge.io.models import load_tf_keras_model

    if fmt.is_keras3 or fmt.kind == "savedmodel":
        model = load_tf_keras_model(fmt)
    else:
        model = load_tf_keras_model(model)  # a tf_keras model: flattened if nested
    rows = layer_compat(model)
    for described in dropped_layers(model):
        name, _, kind = described.partition(" (")
        rows.append(
            LayerCompat(
                name,
                kind.rstrip(")"),
                NO_WEIGHTS,
                NO_WEIGHTS,
                NO_WEIGHTS,
                "dropped: data augmentation is the identity at inference",
            )
        )
    return rows
