"""``qat``: tfmot 8-bit quantization-aware training, the last training pass.

After ``prune`` and/or ``cluster`` it uses tfmot's collaborative schemes (PQAT, CQAT,
PCQAT) so fine-tuning keeps the zeros and the shared weights. tfmot cannot strip QAT
wrappers, so the quantize-wrapped model goes straight to the converter.

Example (recipe):
    passes:
      - prune: {target_sparsity: 0.75}
      - cluster: {clusters: 16}
      - qat: {epochs: 1, unsupported: stop}     # -> PCQAT
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tfedge.errors import RecipeError
from tfedge.passes.base import (
    OptionalRate,
    PassConfig,
    PassResult,
    clone_with_weights,
    import_tfmot,
    where_of,
)
from tfedge.passes.compat import qat_unsupported, standalone_batchnorms
from tfedge.passes.qat_configs import (
    annotate_scope,
    hard_swish_inner,
    input_preprocessing,
    noop_config,
    ops_as_layers,
    output_config,
    qat_rule,
    quantize_config_for,
)


class Qat(PassConfig):
    """Fine-tune with simulated 8-bit quantization.

    Args:
        epochs: fine-tuning epochs.
        scheme: ``auto`` (PQAT after prune, CQAT after cluster, PCQAT after both), or one of
            ``default``, ``pqat``, ``cqat``, ``pcqat``.
        unsupported: ``stop`` (default) stops before training when tfmot cannot quantize a layer
            and lists them; ``skip`` leaves those layers to post-training quantization.
        learning_rate: defaults to a tenth of ``train.learning_rate``.
    """

    pass_name: ClassVar[str] = "qat"
    guard_hint: ClassVar[str] = "add epochs or lower its learning_rate"

    epochs: int = Field(default=1, ge=1, le=1000)
    scheme: Literal["auto", "default", "pqat", "cqat", "pcqat"] = "auto"
    unsupported: Literal["stop", "skip"] = "stop"
    learning_rate: OptionalRate = None

    def check(self, model, ctx) -> None:
        """Stop before any training if tfmot cannot quantize some layers and the recipe says so."""
        bad = qat_unsupported(model)
        if bad and self.unsupported == "stop":
            why = "; ".join(
                f"{name}: {qat_rule(model.get_layer(name.split(' (')[0]))[1]}" for name in bad
            )
            raise RecipeError(
                f"{where_of(self)}: tfmot cannot quantize {len(bad)} layer(s): {why}",
                "set `unsupported: skip` in the qat pass to leave them to post-training "
                "quantization, or replace those layers",
            )

    def chosen_scheme(self, applied) -> str:
        if self.scheme != "auto":
            return self.scheme
        pruned, clustered = "prune" in applied, "cluster" in applied
        return (
            "pcqat"
            if pruned and clustered
            else "cqat"
            if clustered
            else "pqat"
            if pruned
            else "default"
        )

    def apply(self, model, ctx) -> PassResult:
        from tfedge.passes.rebuild import fold_for_qat

        model, folded, moved = fold_for_qat(model)  # tfmot folds BN into Conv2D only; see rebuild
        self.check(model, ctx)
        model, _ = ops_as_layers(model)  # TFOpLambda -> TfedgeScalarOp (same names, results)
        tfmot = import_tfmot()
        scheme_name = self.chosen_scheme(ctx.applied)
        skipped = qat_unsupported(model)
        annotated = _annotate(tfmot, clone_with_weights(model), {s.split(" (")[0] for s in skipped})
        with tfmot.quantization.keras.quantize_scope(annotate_scope()):
            wrapped = tfmot.quantization.keras.quantize_apply(
                annotated, _KeepSkipped(_scheme(scheme_name))
            )
        ctx.compile(wrapped, learning_rate=self.learning_rate or ctx.train.learning_rate / 10)
        ctx.fit(wrapped, self.epochs, "qat")
        return PassResult(
            wrapped,
            {
                "scheme": scheme_name,
                "skipped_layers": skipped,
                "folded_into_dense": folded,
                "activations_moved_out": moved,
            },
            quantize_wrapped=True,
        )


def _annotate(tfmot, model, skip: set[str]):
    """Annotate every layer but ``skip``: tfedge's config where tfmot has none (``qat_configs``),
    no quantization inside a hard-swish written as layers (so it converts to ``HARD_SWISH``)."""
    from tfedge._tf import import_keras

    quant = tfmot.quantization.keras
    inner = hard_swish_inner(model)
    calibrated = set(input_preprocessing(model))
    standalone = standalone_batchnorms(model)

    def annotate(layer):
        if layer.name in skip or layer.name in calibrated:
            return layer
        if layer.name in inner:
            config = noop_config()
        elif layer.name in standalone:
            config = output_config()
        else:
            config = quantize_config_for(layer)
        return quant.quantize_annotate_layer(layer, quantize_config=config)

    return import_keras().models.clone_model(model, clone_function=annotate)


class _KeepSkipped:
    """A tfmot scheme whose registry leaves alone what the default 8-bit registry cannot quantize.

    tfmot quantizes the output of an unannotated layer that feeds an annotated one when the
    scheme's registry ``supports`` it; the collaborative registries (PQAT, CQAT, PCQAT) say yes
    to every layer without trainable weights, then fail in ``get_quantize_config``. Skipped layers
    stay unquantized in every scheme, as in the default one."""

    def __init__(self, scheme):
        self.scheme = scheme

    def get_layout_transformer(self):
        return self.scheme.get_layout_transformer()

    def get_quantize_registry(self):
        return _SupportedOnly(self.scheme.get_quantize_registry())


class _SupportedOnly:
    def __init__(self, registry):
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (  # noqa: E501 (a module path)
            Default8BitQuantizeRegistry,
        )

        self.registry = registry
        self.default = Default8BitQuantizeRegistry()

    def supports(self, layer) -> bool:
        return bool(self.registry.supports(layer) and self.default.supports(layer))

    def get_quantize_config(self, layer):
        return self.registry.get_quantize_config(layer)


def _scheme(name: str):
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (  # noqa: E501 (a module path)
        default_8bit_cluster_preserve_quantize_scheme as cluster_preserve,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (  # noqa: E501 (a module path)
        default_8bit_prune_preserve_quantize_scheme as prune_preserve,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_scheme as default,
    )

    if name == "pcqat":
        return cluster_preserve.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
    if name == "cqat":
        return cluster_preserve.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False)
    if name == "pqat":
        return prune_preserve.Default8BitPrunePreserveQuantizeScheme()
    return default.Default8BitQuantizeScheme()
