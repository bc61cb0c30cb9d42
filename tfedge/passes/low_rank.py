"""``low_rank``: replace Dense (and 1x1 Conv2D) layers by a truncated-SVD pair, then fine-tune.

A kernel ``W`` (in x out) becomes ``Dense(r, use_bias=False)`` then ``Dense(out)`` with
kernels ``U_r sqrt(S_r)`` and ``sqrt(S_r) V_r^T``, only where ``r (in + out) < in out``.
The rank keeps ``energy`` of the squared singular values, or meets ``param_ratio``.

Example (recipe):
    passes:
      - low_rank: {param_ratio: 0.4, epochs: 2}
      - low_rank: {energy: 0.95, layers: [pw*]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

from tfedge.config import Names
from tfedge.passes.base import (
    OptionalRate,
    PassConfig,
    PassResult,
    check_selection,
    select_layers,
)
from tfedge.passes.rebuild import copy_weights, from_config, model_config, split_layer


@dataclass
class Factorisation:
    """The plan for one layer: its rank and the two new kernels."""

    layer: str
    rank: int
    params_before: int
    params_after: int
    head: np.ndarray
    tail: np.ndarray

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "params_before": self.params_before,
            "params_after": self.params_after,
        }


class LowRank(PassConfig):
    """Factorise the selected layers.

    Args:
        energy: share of the squared singular values to keep (default 0.9 when no ratio is given).
        param_ratio: target parameters after / before for each layer (instead of ``energy``).
        epochs: fine-tuning epochs (0: none).
        conv1x1: also factorise 1x1 Conv2D layers.
        skip_output: leave the layer that produces the model's output alone.
        learning_rate: defaults to ``train.learning_rate``.
        layers: layer-name patterns; layer_types: layer class names (``Dense``, ``Conv2D``).
    """

    pass_name: ClassVar[str] = "low_rank"
    guard_hint: ClassVar[str] = "raise energy or param_ratio, add epochs, or factorise fewer layers"

    energy: float | None = Field(default=None, gt=0, le=1)
    param_ratio: float | None = Field(default=None, gt=0, lt=1)
    epochs: int = Field(default=2, ge=0, le=1000)
    conv1x1: bool = True
    skip_output: bool = True
    learning_rate: OptionalRate = None
    layers: Names = ()
    layer_types: Names = ()

    @model_validator(mode="after")
    def _one_target(self) -> LowRank:
        if self.energy is not None and self.param_ratio is not None:
            raise ValueError("give energy or param_ratio, not both (hint: remove one of them)")
        return self

    def selected(self, model) -> list[str]:
        outputs = set(model.output_names) if self.skip_output else set()
        return select_layers(
            model,
            self.layers,
            self.layer_types,
            lambda l: l.name not in outputs and self._factorisable(l),
        )

    def check(self, model, ctx) -> None:
        check_selection(self, model, self.selected(model), "factorised")

    def plan(self, model) -> list[Factorisation]:
        """The layers worth factorising (fewer parameters), with their ranks and kernels."""
        plans = [self._plan_layer(model.get_layer(name)) for name in self.selected(model)]
        return [p for p in plans if p is not None]

    def apply(self, model, ctx) -> PassResult:
        plans = self.plan(model)
        new = factorise(model, plans)
        if plans and self.epochs:
            ctx.compile(new, learning_rate=self.learning_rate)
            ctx.fit(new, self.epochs, "low_rank")
        return PassResult(
            new,
            {
                "layers": {p.layer: p.to_dict() for p in plans},
                "params_before": int(model.count_params()),
                "params_after": int(new.count_params()),
            },
        )

    def rank_for(self, singular: np.ndarray, n_in: int, n_out: int) -> int:
        if self.param_ratio is not None:
            return max(1, int(self.param_ratio * n_in * n_out / (n_in + n_out)))
        energy = np.cumsum(singular**2) / np.sum(singular**2)
        return int(np.searchsorted(energy, self.energy or 0.9) + 1)

    def _factorisable(self, layer) -> bool:
        kind = type(layer).__name__
        if kind == "Dense":
            return True
        return (
            kind == "Conv2D"
            and self.conv1x1
            and tuple(layer.kernel_size) == (1, 1)
            and layer.groups == 1
            and tuple(layer.dilation_rate) == (1, 1)
        )

    def _plan_layer(self, layer) -> Factorisation | None:
        kernel = layer.kernel.numpy()
        matrix = kernel.reshape(-1, kernel.shape[-1])
        n_in, n_out = matrix.shape
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        rank = min(self.rank_for(s, n_in, n_out), len(s))
        if rank * (n_in + n_out) >= n_in * n_out:
            return None
        root = np.sqrt(s[:rank])
        head, tail = u[:, :rank] * root, root[:, None] * vt[:rank]
        bias = n_out if layer.use_bias else 0
        shape = kernel.shape[:-2]  # (1, 1) for a 1x1 conv, () for Dense
        return Factorisation(
            layer.name,
            rank,
            n_in * n_out + bias,
            rank * (n_in + n_out) + bias,
            head.reshape(*shape, n_in, rank),
            tail.reshape(*shape, rank, n_out),
        )


def factorise(model, plans: list[Factorisation]):
    """A new model with each planned layer split in two; all other weights copied."""
    config = model_config(model)
    for p in plans:
        first, second = _split_options(model.get_layer(p.layer), p.rank)
        split_layer(config, p.layer, first, second)
    new = from_config(model, config)
    names = {p.layer for p in plans}
    copy_weights(model, new, skip=names | {f"{n}_lr" for n in names})
    for p in plans:
        new.get_layer(f"{p.layer}_lr").set_weights([p.head])
        bias = model.get_layer(p.layer).get_weights()[1:]
        new.get_layer(p.layer).set_weights([p.tail, *bias])
    return new


def _split_options(layer, rank: int) -> tuple[dict, dict]:
    if type(layer).__name__ == "Dense":
        return {"units": rank, "use_bias": False, "activation": "linear"}, {}
    return (
        {"filters": rank, "use_bias": False, "activation": "linear"},
        {"strides": (1, 1), "padding": "valid"},
    )
