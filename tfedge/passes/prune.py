"""``prune``: tfmot magnitude pruning, fine-tuned, wrappers stripped.

The schedule is sized to the real number of training steps: a polynomial schedule ramps
from ``initial_sparsity`` to ``target_sparsity`` over the first ``ramp`` share of the steps
(updating the masks every few steps, so the target is reached), then fine-tunes with the
final mask.

Example (recipe):
    passes:
      - prune: {target_sparsity: 0.75, epochs: 2, layers: [conv2, fc*]}
      - prune: {structure: "2:4", layer_types: [Dense]}
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, Strict, field_validator, model_validator

from tfedge.config import Names
from tfedge.passes.base import (
    PassConfig,
    PassResult,
    check_selection,
    clone_with_weights,
    import_tfmot,
    kernel_of,
    select_layers,
)

# ``[h, w]``: blocks of weights pruned together
Block = Annotated[tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]], Strict(False)]


class Prune(PassConfig):
    """Magnitude-prune the selected layers' kernels to ``target_sparsity`` while fine-tuning.

    Args:
        target_sparsity: share of zeros to reach in each pruned kernel (ignored for 2:4: 0.5).
        schedule: ``polynomial`` (ramp up, then hold) or ``constant`` (prune at once).
        initial_sparsity: where the polynomial ramp starts.
        ramp: share of the training steps the ramp takes; the rest fine-tunes with the final mask
            (1.0: the ramp spans every step, as in the tfmot guides).
        epochs: fine-tuning epochs.
        structure: ``unstructured`` or ``2:4`` (two zeros in every four input channels).
        block_size: ``[h, w]`` blocks pruned together (Dense kernels only).
        layers: layer-name patterns (``fnmatch``) to prune; all prunable layers when empty.
        layer_types: layer class names to prune (e.g. ``[Conv2D, Dense]``).
        min_weights: prune only kernels with at least this many weights; small kernels (a
            first convolution, a classifier head) cost accuracy and save almost nothing.
    """

    pass_name: ClassVar[str] = "prune"
    guard_hint: ClassVar[str] = "lower target_sparsity, add epochs, or prune fewer layers (layers:)"

    target_sparsity: float = Field(default=0.5, gt=0, lt=1)
    schedule: Literal["polynomial", "constant"] = "polynomial"
    initial_sparsity: float = Field(default=0.0, ge=0, lt=1)
    ramp: float = Field(default=0.7, gt=0, le=1)
    epochs: int = Field(default=2, ge=1, le=1000)
    structure: Literal["unstructured", "2:4"] = "unstructured"
    block_size: Block = (1, 1)
    layers: Names = ()
    layer_types: Names = ()
    min_weights: int = Field(default=0, ge=0, le=10**9)

    @field_validator("structure", mode="before")
    @classmethod
    def _quoted_2_4(cls, value: Any) -> Any:
        if value == 124 and not isinstance(value, bool):  # YAML 1.1 reads 2:4 as base-60 124
            raise ValueError(
                'YAML reads an unquoted 2:4 as the number 124 (hint: quote it: structure: "2:4")'
            )
        return value

    @field_validator("block_size", mode="before")
    @classmethod
    def _two_numbers(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(
                f"must be two positive integers, got {value!r} (hint: e.g. block_size: [1, 4])"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Prune:
        if self.initial_sparsity >= self.target_sparsity:
            raise ValueError(
                f"initial_sparsity = {self.initial_sparsity} must be below target_sparsity = "
                f"{self.target_sparsity} (hint: lower initial_sparsity or raise target_sparsity)"
            )
        if self.block_size != (1, 1) and self.structure == "2:4":
            raise ValueError(
                "block_size and structure 2:4 cannot be combined (hint: choose one of them)"
            )
        return self

    def selected(self, model) -> list[str]:
        """The layers this pass prunes in ``model``."""
        return select_layers(model, self.layers, self.layer_types, self._eligible)

    def check(self, model, ctx) -> None:
        check_selection(self, model, self.selected(model), "pruned")

    def apply(self, model, ctx) -> PassResult:
        tfmot = import_tfmot()
        chosen = set(self.selected(model))
        check_selection(self, model, sorted(chosen), "pruned")
        params = self._wrapper_params(tfmot, ctx.steps_per_epoch * self.epochs)
        base = clone_with_weights(model)

        def wrap(layer):
            if layer.name in chosen:
                return tfmot.sparsity.keras.prune_low_magnitude(layer, **params)
            return layer

        wrapped = _clone_wrapping(base, wrap)
        ctx.compile(wrapped)
        ctx.fit(wrapped, self.epochs, "prune", callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        plain = tfmot.sparsity.keras.strip_pruning(wrapped)
        return PassResult(
            plain,
            {
                "sparsity_by_layer": kernel_sparsity(plain, chosen),
                "target_sparsity": self.effective_target,
            },
        )

    @property
    def effective_target(self) -> float:
        return 0.5 if self.structure == "2:4" else self.target_sparsity

    def schedule_steps(self, total_steps: int) -> tuple[int, int]:
        """(end_step, frequency): the last mask update lands on end_step, inside the run.

        ``ramp: 1.0`` is the tfmot guides' schedule instead: ``end_step`` is the number of
        training steps, the last update the last multiple of ``frequency`` before it (the
        sparsity there is within a fraction of a percent of the target), no fine-tuning after.
        """
        if self.ramp >= 1:
            end = max(1, total_steps)
            return end, max(1, min(100, end // 8))
        end = max(1, int(total_steps * self.ramp) - 1)
        frequency = max(1, min(100, end // 8))
        return max(frequency, end - end % frequency), frequency

    def _wrapper_params(self, tfmot, total_steps: int) -> dict:
        sparsity = tfmot.sparsity.keras
        end, frequency = self.schedule_steps(total_steps)
        if self.schedule == "constant" or self.structure == "2:4":
            sched = sparsity.ConstantSparsity(
                self.effective_target, begin_step=0, frequency=frequency
            )
        else:
            sched = sparsity.PolynomialDecay(
                self.initial_sparsity,
                self.target_sparsity,
                begin_step=0,
                end_step=end,
                frequency=frequency,
            )
        params = {"pruning_schedule": sched}
        if self.structure == "2:4":
            params["sparsity_m_by_n"] = (2, 4)
        if self.block_size != (1, 1):
            params["block_size"] = self.block_size
        return params

    def _eligible(self, layer) -> bool:
        return (
            prunable(layer)
            and _kernel_size(layer) >= self.min_weights
            and (self.structure != "2:4" or _fits_2_4(layer))
            and (self.block_size == (1, 1) or _is_rank2(layer))
        )


def _kernel_size(layer) -> int:
    kernel = kernel_of(layer)
    return 0 if kernel is None else int(np.prod(kernel.shape))


def prunable(layer) -> bool:
    """tfmot can prune this layer and it has a kernel to prune."""
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
        PruneRegistry,
    )

    if not layer.trainable_weights or not PruneRegistry.supports(layer):
        return False
    try:
        return bool(PruneRegistry._weight_names(layer))
    except KeyError:  # RNN layers: supported through their cells
        return True


def _fits_2_4(layer) -> bool:
    """2:4 groups run along the input channels, which must come in multiples of 4."""
    kernel = kernel_of(layer)
    return kernel is not None and len(kernel.shape) in (2, 4) and kernel.shape[-2] % 4 == 0


def _is_rank2(layer) -> bool:
    kernel = kernel_of(layer)
    return kernel is not None and len(kernel.shape) == 2


def _clone_wrapping(model, wrap):
    from tfedge._tf import import_keras

    return import_keras().models.clone_model(model, clone_function=wrap)


def kernel_sparsity(model, names) -> dict[str, float]:
    """Share of exact zeros in the kernel of each named layer."""
    out = {}
    for layer in model.layers:
        kernel = kernel_of(layer)
        if layer.name in names and kernel is not None:
            values = kernel.numpy()
            out[layer.name] = round(float(np.mean(values == 0)), 4)
    return out
