"""The search space: which passes and settings a trial may pick, and the recipe a pick makes.

A space is a YAML file (``tfedge search --space space.yaml``) validated like a recipe
(``tfedge.config``: unknown keys are refused with a "did you mean"). Every block is optional;
a pass set to ``false`` is left out of the search. The defaults:

    channels: {keep: [0.25, 1.0]}        # keep ratio of the channel pass (range); groups: N
                                         # gives the N groups with the most MACs their own
    low_rank: {param_ratio: [0.2, 0.9]}  # parameters after / before per factorised layer
    prune: {target_sparsity: [0.3, 0.9]} # unstructured sparsity
    cluster: {clusters: [8, 16, 32]}     # choices
    qat: false                           # may add quantization-aware training (int8 only)
    distill: [false]                     # the channels pass fine-tunes by distillation?
    precision: false                     # or {layers: 2, choices: [int16, float]}: the most
                                         # sensitive layers of an int8 model may stay int16/float
    quant: [int8, int16x8, float16, dynamic, float32]
    epochs: [1, 2]                       # fine-tuning epochs of every pass (range)
    budgets: {latency: 0.5, size: 0.1}   # relative budgets on a stand-in target
    measure: {runs: 50, warmup: 1, min_secs: 1.0}

A trial's parameters form a fixed set (every dimension is sampled every time, so the
multivariate TPE sampler sees one space); ``recipe_data`` turns them into a recipe in the
order the recipe rules allow (channels, low_rank, prune, cluster, qat). New passes join by
adding a block here and a line in ``recipe_data``.

Example:
    >>> space = parse_space("prune: {target_sparsity: [0.5, 0.8]}\\nquant: [int8]\\n")
    >>> recipe_data({"prune": True, "prune.target_sparsity": 0.6, "epochs": 1}, space)["passes"]
    [{'prune': {'target_sparsity': 0.6, 'epochs': 1}}]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from tfedge.config import Config, validate
from tfedge.errors import RecipeError

Quant = Literal["int8", "int16x8", "float16", "dynamic", "float32"]
LayerPrecision = Literal["int16", "float"]
INTEGER_QUANTS = ("int8", "int16x8")
Ratio = Annotated[float, Field(gt=0, le=1)]
Sparsity = Annotated[float, Field(gt=0, lt=1)]
Epochs = Annotated[int, Field(ge=0, le=1000)]
PASS_BLOCKS = ("channels", "low_rank", "prune", "cluster")  # in recipe order
OPTIONAL_BLOCKS = (*PASS_BLOCKS, "precision")  # ``false`` turns these off


def _tuple(value: Any) -> Any:
    """A YAML list becomes a tuple (strict models take tuples only; the space stays hashable)."""
    return tuple(value) if isinstance(value, list) else value


AsTuple = BeforeValidator(_tuple)


def _choices(value: Any) -> Any:
    """``true`` / ``false`` is a single choice; a list becomes a tuple."""
    return (value,) if isinstance(value, bool) else _tuple(value)


def _check_range(low: float, high: float, name: str) -> None:
    if low > high:
        raise ValueError(f"{name} = [{low}, {high}] is empty (hint: write [low, high])")


class ChannelsSpace(Config):
    """Channel pruning: the global keep ratio, a range ``[low, high]``; ``groups: N`` gives
    the N groups with the most MACs their own ratio in that range."""

    keep: Annotated[tuple[Ratio, Ratio], AsTuple] = (0.25, 1.0)
    groups: int = Field(default=0, ge=0, le=16, description="groups with their own keep ratio")

    @model_validator(mode="after")
    def _ordered(self) -> ChannelsSpace:
        _check_range(*self.keep, "keep")
        return self


class LowRankSpace(Config):
    """Low-rank factorisation: parameters after / before per layer, a range."""

    param_ratio: Annotated[tuple[Sparsity, Sparsity], AsTuple] = (0.2, 0.9)

    @model_validator(mode="after")
    def _ordered(self) -> LowRankSpace:
        _check_range(*self.param_ratio, "param_ratio")
        return self


class PruneSpace(Config):
    """Unstructured magnitude pruning: the target sparsity, a range."""

    target_sparsity: Annotated[tuple[Sparsity, Sparsity], AsTuple] = (0.3, 0.9)

    @model_validator(mode="after")
    def _ordered(self) -> PruneSpace:
        _check_range(*self.target_sparsity, "target_sparsity")
        return self


class ClusterSpace(Config):
    """Weight clustering: the numbers of clusters to choose from."""

    clusters: Annotated[tuple[Annotated[int, Field(ge=2, le=256)], ...], AsTuple] = Field(
        default=(8, 16, 32), min_length=1
    )


class PrecisionSpace(Config):
    """Per-layer precision of int8 trials: each of the ``layers`` most sensitive layers (ranked
    once per study, ``tfedge.convert.mixed.rank_layers``) stays int8 or takes one of
    ``choices`` (``tfedge convert --int16 / --float``)."""

    layers: int = Field(default=2, ge=1, le=8, description="how many of the most sensitive layers")
    choices: Annotated[tuple[LayerPrecision, ...], AsTuple] = Field(
        default=("int16", "float"), min_length=1
    )


class RelativeBudgets(Config):
    """Budgets on a stand-in target (local for another device, qemu), against references
    measured on that same target."""

    latency: float | None = Field(
        default=0.5, gt=0, description="p50 latency <= this x the int8 post-training model's"
    )
    size: float | None = Field(
        default=0.1, gt=0, description="gzip bytes <= this x the float32 model's .tflite bytes"
    )


class Measure(Config):
    """How each trial's model is benchmarked (as `tfedge bench --runs --warmup --min-secs`)."""

    runs: int = Field(default=50, ge=1, le=100000)
    warmup: int = Field(default=1, ge=0, le=1000)
    min_secs: float = Field(default=1.0, ge=0, le=3600)


class Space(Config):
    """What a trial may choose. A pass block set to ``false`` (or null) is not searched."""

    channels: ChannelsSpace | None = ChannelsSpace()
    low_rank: LowRankSpace | None = LowRankSpace()
    prune: PruneSpace | None = PruneSpace()
    cluster: ClusterSpace | None = ClusterSpace()
    qat: bool = False
    distill: Annotated[tuple[bool, ...], BeforeValidator(_choices)] = Field(
        default=(False,),
        min_length=1,
        description="fine-tune the channels pass by distillation from the unpruned model "
        "(classification only): [false], [true] or [false, true] to search it",
    )
    quant: Annotated[tuple[Quant, ...], AsTuple] = Field(
        default=("int8", "int16x8", "float16", "dynamic", "float32"), min_length=1
    )
    precision: PrecisionSpace | None = None
    epochs: Annotated[tuple[Epochs, Epochs], AsTuple] = (
        1,
        2,
    )
    budgets: RelativeBudgets = RelativeBudgets()
    measure: Measure = Measure()

    @model_validator(mode="before")
    @classmethod
    def _false_is_off(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {
                k: None if (k in OPTIONAL_BLOCKS and v is False) else v for k, v in data.items()
            }
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Space:
        _check_range(*self.epochs, "epochs")
        return self

    @property
    def sha256(self) -> str:
        """Hash of the normalised space: a study may only continue under the same space."""
        content = self.model_dump(mode="json", exclude={"measure"})
        if self.distill == (False,):  # the default: the hash of a space from before distill
            content.pop("distill")
        if self.precision is None:  # the default: the hash of a space from before precision
            content.pop("precision")
        if self.channels is not None and not self.channels.groups:  # likewise
            content["channels"].pop("groups")
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def parse_space(text: str, source: str = "<space>") -> Space:
    """Validate a space's YAML ``text``; RecipeError names the key path."""
    from tfedge.safe_yaml import load_yaml

    data = load_yaml(text, f"space {source}", RecipeError, "check the `key: value` pairs")
    if data is None:
        data = {}
    return validate(Space, data, f"space {source}")


def load_space(path: str | Path | None) -> Space:
    """The space in ``path``, or the default space when ``path`` is None."""
    if path is None:
        return Space()
    from tfedge.fsutil import read_text_file

    text = read_text_file(
        Path(path), "search space", RecipeError, "give the path of a space .yaml file"
    )
    return parse_space(text, str(path))


def for_profile(space: Space, requires_full_integer: bool) -> tuple[Space, list[str]]:
    """``space`` without the float quantizations (and float layers) when the device requires
    full-integer models."""
    if not requires_full_integer:
        return space, []
    space, notes = _integer_precision(space)
    kept = tuple(q for q in space.quant if q in INTEGER_QUANTS)
    dropped = [q for q in space.quant if q not in INTEGER_QUANTS]
    if not kept:
        raise RecipeError(
            f"the space's quant choices ({', '.join(space.quant)}) are all float, but the "
            "profile requires full-integer models",
            "add int8 (or int16x8) to quant:",
        )
    if dropped:
        notes.append(f"quant {', '.join(dropped)} left out: the profile requires full-integer")
    return space.model_copy(update={"quant": kept}), notes


def _integer_precision(space: Space) -> tuple[Space, list[str]]:
    """Float layers left out of the precision block (int16 is integer)."""
    if space.precision is None or "float" not in space.precision.choices:
        return space, []
    kept = tuple(c for c in space.precision.choices if c != "float")
    precision = space.precision.model_copy(update={"choices": kept}) if kept else None
    note = "precision float left out: the profile requires full-integer"
    return space.model_copy(update={"precision": precision}), [note]


def dimensions(space: Space) -> dict[str, tuple[str, Any]]:
    """``{name: (kind, values)}`` of every sampled dimension; kind is float, int or choice.

    A range whose ends are equal and a single choice are constants, not dimensions.
    """
    dims: dict[str, tuple[str, Any]] = {}
    ranges = {
        "channels.keep": space.channels and space.channels.keep,
        "low_rank.param_ratio": space.low_rank and space.low_rank.param_ratio,
        "prune.target_sparsity": space.prune and space.prune.target_sparsity,
    }
    for name, bounds in ranges.items():
        if bounds:
            dims[name.split(".")[0]] = ("choice", (False, True))
            if bounds[0] < bounds[1]:
                dims[name] = ("float", bounds)
    if space.cluster:
        dims["cluster"] = ("choice", (False, True))
        if len(space.cluster.clusters) > 1:
            dims["cluster.clusters"] = ("choice", space.cluster.clusters)
    if space.channels and space.channels.keep[0] < space.channels.keep[1]:
        for rank in range(space.channels.groups):
            dims[f"channels.group.{rank}"] = ("float", space.channels.keep)
    if space.channels and len(set(space.distill)) > 1:
        dims["distill"] = ("choice", (False, True))
    if space.qat and "int8" in space.quant:
        dims["qat"] = ("choice", (False, True))
    if len(space.quant) > 1:
        dims["quant"] = ("choice", space.quant)
    if space.precision is not None and "int8" in space.quant:
        for rank in range(space.precision.layers):
            dims[f"precision.{rank}"] = ("choice", ("int8", *space.precision.choices))
    if space.epochs[0] < space.epochs[1]:
        dims["epochs"] = ("int", space.epochs)
    if not dims:
        raise RecipeError(
            "the search space is empty: every pass is off and quant has one choice",
            "turn a pass on (e.g. `prune: {target_sparsity: [0.3, 0.9]}`) or list several quant",
        )
    return dims


def suggest(trial, space: Space) -> dict[str, Any]:
    """Sample every dimension of ``space`` on an Optuna ``trial``."""
    params: dict[str, Any] = {}
    for name, (kind, values) in dimensions(space).items():
        if kind == "float":
            params[name] = trial.suggest_float(name, *values)
        elif kind == "int":
            params[name] = trial.suggest_int(name, *values)
        else:
            params[name] = trial.suggest_categorical(name, list(values))
    return params


def recipe_data(
    params: dict[str, Any],
    space: Space,
    ranked: Sequence[str] = (),
    groups: Sequence[str] = (),
) -> dict:
    """The recipe (as a YAML mapping) that ``params`` pick from ``space``.

    Constants of the space (one-value ranges and choices) fill in what ``params`` lack.
    ``ranked``: the model's layers, most sensitive first, that ``precision.N`` refer to;
    ``groups``: a layer of each channel group that ``channels.group.N`` refer to.
    """
    epochs = int(params.get("epochs", space.epochs[0]))
    trained = max(1, epochs)  # prune and cluster need at least one epoch
    passes: list[dict] = []
    if space.channels is not None and params.get("channels"):
        keep = params.get("channels.keep", space.channels.keep[0])
        options: dict[str, Any] = {"keep": round(float(keep), 3), "epochs": epochs}
        ratios = {
            layer: round(float(params[f"channels.group.{rank}"]), 3)
            for rank, layer in enumerate(groups)
            if f"channels.group.{rank}" in params
        }
        if ratios:
            options["ratios"] = ratios
        if epochs >= 1 and params.get("distill", space.distill[0]):
            options["distill"] = True  # distillation is fine-tuning: never with 0 epochs
        passes.append({"channels": options})
    if space.low_rank is not None and params.get("low_rank"):
        ratio = params.get("low_rank.param_ratio", space.low_rank.param_ratio[0])
        passes.append({"low_rank": {"param_ratio": round(float(ratio), 3), "epochs": epochs}})
    if space.prune is not None and params.get("prune"):
        sparsity = params.get("prune.target_sparsity", space.prune.target_sparsity[0])
        passes.append({"prune": {"target_sparsity": round(float(sparsity), 3), "epochs": trained}})
    if space.cluster is not None and params.get("cluster"):
        clusters = params.get("cluster.clusters", space.cluster.clusters[0])
        passes.append({"cluster": {"clusters": int(clusters), "epochs": trained}})
    quant = params.get("quant", space.quant[0])
    if quant == "int8" and params.get("qat"):
        passes.append({"qat": {"epochs": trained}})
    convert: dict[str, Any] = {"quant": "none" if quant == "float32" else quant}
    if quant == "int8" and not params.get("qat"):  # a QAT model keeps its own ranges
        if precision := layer_precision(params, ranked):
            convert["precision"] = precision
    return {"schema_version": 1, "passes": passes, "convert": convert}


def layer_precision(params: dict[str, Any], ranked: Sequence[str]) -> dict[str, str]:
    """``{layer: int16|float}`` of the ranked layers whose ``precision.N`` is not int8."""
    picks = {name: params.get(f"precision.{rank}", "int8") for rank, name in enumerate(ranked)}
    return {name: pick for name, pick in picks.items() if pick != "int8"}


BASELINE_RECIPE = {"schema_version": 1, "passes": [], "convert": {"quant": "int8"}}


def widest_recipe(space: Space) -> dict:
    """Every searched pass on, at the setting that reaches furthest (the low end of each range,
    the fewest clusters): the recipe that ``check_applies`` plans on the model."""
    params: dict[str, Any] = {name: True for name in (*PASS_BLOCKS, "qat")}
    params["distill"] = True in space.distill
    params["epochs"] = space.epochs[1]
    params["quant"] = "int8" if "int8" in space.quant else space.quant[0]
    if space.cluster is not None:
        params["cluster.clusters"] = min(space.cluster.clusters)
    return recipe_data(params, space)


def check_applies(space: Space, model, trust_model: bool = False) -> None:
    """RecipeError naming a searched pass that would touch no layer of ``model``.

    Plans ``widest_recipe`` on the model like ``tfedge optimize --dry-run`` (loads the model,
    trains nothing), so a space that cannot apply fails before the first trial.
    """
    from tfedge.optimize.plan import plan_optimize
    from tfedge.optimize.recipe import parse_recipe

    data = widest_recipe(space)
    if not data["passes"]:
        return
    recipe = parse_recipe(json.dumps(data), "the widest recipe of the space")
    try:
        plan = plan_optimize(model, recipe, trust_model=trust_model)
    except RecipeError as err:
        raise RecipeError(f"space: {err.message}", f"{err.hint}; or turn that pass off") from None
    for step in plan.passes:
        if not step.touch:
            reasons = sorted({f"{n.layer}: {n.reason}" for n in step.skip})[:3]
            raise RecipeError(
                f"space: {step.name} does not apply to this model ({'; '.join(reasons)})",
                f"set `{step.name}: false` in --space",
            )
