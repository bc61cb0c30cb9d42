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

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tfedge.errors import RecipeError
from tfedge.passes.base import (
    PassResult,
    check_choice,
    check_names,
    check_number,
    check_selection,
    clone_with_weights,
    import_tfmot,
    kernel_of,
    select_layers,
    where_of,
)

SCHEDULES = ("polynomial", "constant")
STRUCTURES = ("unstructured", "2:4")


@dataclass(frozen=True)
class Prune:
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

    target_sparsity: float = 0.5
    schedule: str = "polynomial"
    initial_sparsity: float = 0.0
    ramp: float = 0.7
    epochs: int = 2
    structure: str = "unstructured"
    block_size: tuple = (1, 1)
    layers: tuple = ()
    layer_types: tuple = ()
    min_weights: int = 0

    def __post_init__(self):
        check_number(self, "target_sparsity", 0, 1, lo_open=True, hi_open=True)
        check_choice(self, "schedule", SCHEDULES)
        check_number(self, "initial_sparsity", 0, self.target_sparsity, hi_open=True)
        check_number(self, "ramp", 0, 1, lo_open=True)
        check_number(self, "epochs", 1, 1000, integer=True)
        if self.structure == 124:  # YAML 1.1 reads an unquoted 2:4 as the base-60 number 124
            raise RecipeError(
                f'{where_of(self)}: structure must be the string "2:4"',
                'quote it: structure: "2:4"',
            )
        check_choice(self, "structure", STRUCTURES)
        check_names(self, "layers")
        check_names(self, "layer_types")
        check_number(self, "min_weights", 0, 10**9, integer=True)
        self._check_block()

    def _check_block(self) -> None:
        block = self.block_size
        if not (
            isinstance(block, tuple)
            and len(block) == 2
            and all(isinstance(b, int) and b >= 1 for b in block)
        ):
            raise RecipeError(
                f"{where_of(self)}: block_size must be two positive integers, got {block!r}",
                "e.g. block_size: [1, 4]",
            )
        if block != (1, 1) and self.structure == "2:4":
            raise RecipeError(
                f"{where_of(self)}: block_size and structure 2:4 cannot be combined",
                "choose one of them",
            )

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
