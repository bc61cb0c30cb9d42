"""``low_rank``: replace Dense (and 1x1 Conv2D) layers by a truncated-SVD pair, then fine-tune.

A kernel ``W`` (in x out) becomes ``Dense(r, use_bias=False)`` then ``Dense(out)`` with
kernels ``U_r sqrt(S_r)`` and ``sqrt(S_r) V_r^T``, only where ``r (in + out) < in out``.
By default each layer's rank is chosen on data (``max_drop``, ``tfedge.passes.sensitivity``):
the smallest candidate rank at which the model, with only that layer cut and no fine-tuning,
loses at most ``max_drop`` points of accuracy (or percent of squared error for regression) on
the held-out slice of the training data (``train.validation_split``, which fine-tuning does
not train on); then, with all layers cut, the loss must stay within ``2 * max_drop``, else
the most sensitive layers get the next larger rank. ``energy`` (keep a share of the squared
singular values) or ``param_ratio`` choose the ranks from the weights alone instead.

Example (recipe):
    passes:
      - low_rank: {}                       # ranks chosen on data, max_drop 0.5 points
      - low_rank: {max_drop: 1.0, epochs: 3}
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
from tfedge.passes.sensitivity import (
    SensitivityTable,
    cut_all,
    drop_of,
    rank_sensitivity,
    score,
)

DEFAULT_MAX_DROP = 0.5
HELD_OUT_CAP = 2000  # samples the rank search scores on, at most


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
        max_drop: rank chosen on data (the default, 0.5): per layer the smallest rank at which
            the model, with only that layer cut and before fine-tuning, loses at most this many
            points of accuracy (percent more squared error for regression) on the held-out
            training data; all layers together at most twice that.
        energy: share of the squared singular values to keep (instead of ``max_drop``).
        param_ratio: target parameters after / before for each layer (instead of ``max_drop``).
        epochs: fine-tuning epochs (0: none).
        conv1x1: also factorise 1x1 Conv2D layers.
        skip_output: leave the layer that produces the model's output alone.
        learning_rate: defaults to ``train.learning_rate``.
        layers: layer-name patterns; layer_types: layer class names (``Dense``, ``Conv2D``).
    """

    pass_name: ClassVar[str] = "low_rank"
    guard_hint: ClassVar[str] = (
        "lower max_drop, raise energy or param_ratio, add epochs, or factorise fewer layers"
    )

    max_drop: float | None = Field(default=None, ge=0, le=100)
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
        given = [n for n in ("max_drop", "energy", "param_ratio") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give one of max_drop, energy or param_ratio, not both {' and '.join(given)} "
                "(hint: remove one of them)"
            )
        return self

    @property
    def by_data(self) -> bool:
        """Ranks chosen by the sensitivity analysis (neither energy nor param_ratio given)."""
        return self.energy is None and self.param_ratio is None

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

    def plan(self, model, ctx=None) -> list[Factorisation]:
        """The layers worth factorising (fewer parameters), with their ranks and kernels.

        With ranks chosen on data (``max_drop``) this needs ``ctx``'s training data; without
        ``ctx`` it falls back to keeping 90% of the energy.
        """
        names = self.selected(model)
        ranks = self.data_ranks(model, names, ctx)[0] if self.by_data and ctx else None
        if ranks is not None:
            names = [n for n in names if n in ranks]
        plans = [
            self._plan_layer(model.get_layer(n), None if ranks is None else ranks[n]) for n in names
        ]
        return [p for p in plans if p is not None]

    def apply(self, model, ctx) -> PassResult:
        names = self.selected(model)
        extra: dict = {}
        ranks = None
        if self.by_data:
            ranks, table, together = self.data_ranks(model, names, ctx)
            extra = {"sensitivity": table.to_dict(), "drop_before_fine_tuning": together}
            names = [n for n in names if n in ranks]
        plans = [
            p
            for n in names
            if (p := self._plan_layer(model.get_layer(n), None if ranks is None else ranks[n]))
        ]
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
                **extra,
            },
        )

    def data_ranks(self, model, names, ctx) -> tuple[dict[str, int], SensitivityTable, float]:
        """Per layer the rank the sensitivity analysis picks, the table, and the drop together.

        Layers where no candidate rank stays within ``max_drop`` are left out.
        """
        budget = DEFAULT_MAX_DROP if self.max_drop is None else self.max_drop
        x, y = held_out(ctx, model)
        classification = ctx.classification
        table = rank_sensitivity(model, names, x, y, classification)
        options = {n: [r.rank for r in s.rows if r.drop <= budget] for n, s in table.layers.items()}
        chosen = {n: ranks[0] for n, ranks in options.items() if ranks}
        together = 0.0
        while chosen:
            value = score(cut_all(model, chosen), x, y, classification)
            together = drop_of(table.baseline, value, classification)
            if together <= 2 * budget:
                break
            _raise_worst(chosen, options, table)
        return chosen, table, together

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

    def _plan_layer(self, layer, rank: int | None = None) -> Factorisation | None:
        kernel = layer.kernel.numpy()
        matrix = kernel.reshape(-1, kernel.shape[-1])
        n_in, n_out = matrix.shape
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        rank = min(rank or self.rank_for(s, n_in, n_out), len(s))
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


def held_out(ctx, model):
    """The slice of the training data that ``fit``'s ``validation_split`` holds out (its end,
    at most ``HELD_OUT_CAP`` samples, seeded); a seeded sample of it all when nothing is."""
    from tfedge.io.data import as_float32, num_samples

    total = num_samples(ctx.x)
    n_held = int(total * ctx.train.validation_split)
    start = total - n_held if n_held else 0
    pool = np.arange(start, total)
    if len(pool) > HELD_OUT_CAP:
        pool = np.sort(np.random.default_rng(ctx.seed).choice(pool, HELD_OUT_CAP, replace=False))
    x = {k: np.asarray(v)[pool] for k, v in ctx.x.items()} if isinstance(ctx.x, dict) else None
    x = ctx.inputs_for(model, as_float32(x if x is not None else np.asarray(ctx.x)[pool]))
    return x, np.asarray(ctx.y)[pool]


def _raise_worst(chosen: dict[str, int], options: dict[str, list[int]], table) -> None:
    """Give the layer that loses most alone at its rank the next larger candidate (or drop it)."""

    def drop_at(name: str) -> float:
        return next(r.drop for r in table.layers[name].rows if r.rank == chosen[name])

    worst = max(chosen, key=drop_at)
    larger = [r for r in options[worst] if r > chosen[worst]]
    if larger:
        chosen[worst] = larger[0]
    else:
        del chosen[worst]


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
