"""``optimize --dry-run``: what a recipe will do to a model, checked before anything trains.

``plan_optimize`` goes through the steps a real ``optimize`` run takes before its first epoch,
with the same functions: the recipe is loaded, OUTDIR checked (never created), the data read
and matched against the model's inputs, the model loaded as the worker loads it (nested models
flattened, augmentation dropped), every pass checked against it, the qat preparation applied
(BatchNormalization/ReLU folded, activations moved out). Then, pass by pass, it asks each pass
which layers it works on (``Prune.selected``, ``Cluster.selected`` and ``cluster_count``,
``LowRank.plan``, ``qat_unsupported``), and carries the model forward the way the pass changes
its structure (``low_rank`` splits layers, ``distill`` replaces the model by its student), so
the later passes are planned on the layers they will see. Nothing trains, nothing converts.

An error is the one the real run would raise at the same point (``RecipeError``,
``DataError``, ``ModelLoadError``, ``OutputError``, ``UsageError``). The model is loaded in this
process with tf_keras, as ``tfedge inspect`` does.

Example:
    >>> plan = plan_optimize("model.keras", "prune-cluster-qat", "train.npz")
    >>> [layer.layer for layer in plan.passes[0].touch]
    ['conv1', 'conv2', 'fc1', 'logits']
    >>> print(format_plan(plan))
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfedge.errors import UsageError
from tfedge.fsutil import check_not_input
from tfedge.io.data import load_data
from tfedge.optimize.recipe import Recipe, load_recipe

SHOWN = 8  # names listed per group in the text; the rest summarised (``--json`` has them all)


@dataclass
class LayerNote:
    """A layer a pass touches (``detail``: e.g. the rank) or skips (``reason``)."""

    layer: str
    type: str
    reason: str = ""


@dataclass
class PassPlan:
    """What one pass will do: the layers it works on, and the others with the reason."""

    index: int
    name: str
    settings: dict
    touch: list[LayerNote]
    skip: list[LayerNote]
    notes: list[str] = field(default_factory=list)


@dataclass
class OptimizePlan:
    """The dry run of one ``optimize``: passes, conversion, and what was checked."""

    model: str
    recipe: str
    recipe_source: str
    layers: int
    prepare: list[str]
    passes: list[PassPlan]
    convert: dict
    checks: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def plan_optimize(
    model,
    recipe,
    data=None,
    eval_data=None,
    output=None,
    *,
    overrides: Sequence[str] = (),
    trust_model: bool = False,
) -> OptimizePlan:
    """Check ``recipe`` against ``model`` and list, per pass, the layers it touches and skips.

    Args:
        model: a Keras model file or an in-memory model, as for ``optimize``.
        recipe: a built-in recipe name, a recipe file, or a ``Recipe``.
        data: training data (optional): read, and checked against the model's inputs and
            the recipe (labels for training passes).
        eval_data: evaluation data (optional, needs ``data``): checked the same way.
        output: OUTDIR (optional): checked as the run checks it; never created.
        overrides: ``PASS.KEY=VALUE`` changes to the recipe (as ``load_recipe`` takes them).
        trust_model: load Keras layers that carry Python code (Lambda).

    Returns:
        OptimizePlan (``format_plan`` prints it).

    Raises:
        RecipeError, DataError, ModelLoadError, OutputError, UsageError: what the run would
        raise before its first pass.
    """
    from tfedge.io.models import trusting

    if eval_data is not None and data is None:
        raise UsageError("--eval without --data", "give the training data with --data too")
    with trusting(trust_model):
        return _plan(model, load_recipe(recipe, overrides), data, eval_data, output)


def _plan(model, recipe: Recipe, data, eval_data, output) -> OptimizePlan:
    from tfedge.optimize.pipeline import check_outdir, require_labels  # the run's own checks

    checks = ["recipe ok"]
    if output is not None:
        out = check_outdir(output)
        check_not_input(out, [model, data, eval_data, recipe.source], folder=True)
        replaced = ", an earlier run there is replaced" if out.exists() else ", not created now"
        checks.append(f"output writable ({out}{replaced})")
    else:
        checks.append("output not checked (no -o)")
    train = load_data(data) if data is not None else None
    evals = load_data(eval_data) if eval_data is not None else None
    if train is not None:
        require_labels(recipe, train)
    keras_model = _load(model, recipe)
    ctx = _context(recipe, keras_model, train, evals)
    checks.append(_data_check(train, evals))
    layers = len(keras_model.layers) if not isinstance(keras_model, str) else 0
    prepare: list[str] = []
    passes: list[PassPlan] = []
    if recipe.passes:
        from tfedge.io.flatten import dropped_layers

        dropped = dropped_layers(keras_model)
        if dropped:
            prepare.append(f"dropped (augmentation, the identity at inference): {_names(dropped)}")
        for p in recipe.passes:  # the worker checks every pass before any training
            p.check(keras_model, ctx)
        passes = _plan_passes(recipe, keras_model, ctx, prepare)
    return OptimizePlan(
        model=_describe(model),
        recipe=recipe.name,
        recipe_source=recipe.source,
        layers=layers,
        prepare=prepare,
        passes=passes,
        convert=_options(recipe.convert),
        checks=checks,
    )


def _load(model, recipe: Recipe):
    """The model the worker would start from (a tf_keras model for passes; see the worker)."""
    from tfedge.io.models import load_tf_keras_model
    from tfedge.optimize.worker import load_model_for

    if isinstance(model, (str, os.PathLike)):
        return load_model_for(str(model), recipe)
    return load_tf_keras_model(model) if recipe.passes else model


def _context(recipe: Recipe, model, train, evals):
    """The passes' context: the worker's own (which checks the data against the model's
    inputs), or one without data when none was given."""
    from tfedge.optimize.worker import pass_context
    from tfedge.passes.base import PassContext

    if train is not None:
        return pass_context(recipe, model, train, evals or train, False, None)
    empty = np.zeros((0, 1), np.float32)
    return PassContext(x=empty, y=np.zeros(0, np.int64), train=recipe.train, seed=recipe.seed)


def _data_check(train, evals) -> str:
    if train is None:
        return "data not checked (no --data)"
    counts = f"{_samples(train)} training"
    if evals is not None:
        counts += f", {_samples(evals)} evaluation"
    return f"data fits the model ({counts} samples)"


def _samples(ds) -> int:
    from tfedge.io.data import num_samples

    return num_samples(ds.x)


# ---- the passes ----------------------------------------------------------------------------


def _plan_passes(recipe: Recipe, model, ctx, prepare: list[str]) -> list[PassPlan]:
    """Each pass planned on the model it will receive, the way the worker hands it on."""
    if "qat" in recipe.pass_names:  # the worker's ``fold`` job, before the first pass
        from tfedge.passes.rebuild import fold_for_qat

        model, folded, moved = fold_for_qat(model)
        if folded:
            pairs = ", ".join(f"{bn} -> {dense}" for bn, dense in folded.items())
            prepare.append(f"for qat, folded into the Dense before them: {pairs}")
        if moved:
            prepare.append(f"for qat, activation moved into its own layer: {_names(list(moved))}")
    plans = []
    applied: tuple[str, ...] = ()
    for i, p in enumerate(recipe.passes):
        p.check(model, ctx)  # as the pass checks its selection on the model it receives
        planner = PLANNERS.get(p.pass_name, _plan_other)
        plan, model = planner(p, model, ctx, applied)
        plan.index, plan.settings = i, _settings(p)
        plans.append(plan)
        applied += (p.pass_name,)
    return plans


def _plan_prune(p, model, ctx, applied):
    chosen = set(p.selected(model))
    compat = _compat_notes(model, "prune")
    touch, skip = [], []
    for layer in _layers(model):
        if layer.name in chosen:
            touch.append(_note(layer))
        else:
            skip.append(_note(layer, _prune_reason(p, layer, compat)))
    return PassPlan(0, "prune", {}, touch, skip), model


def _prune_reason(p, layer, compat: dict[str, str]) -> str:
    from tfedge.passes.base import kernel_of
    from tfedge.passes.prune import prunable

    unmatched = _unmatched(p, layer)
    if unmatched:
        return unmatched
    if not prunable(layer):
        return compat.get(layer.name) or _no_weights_reason(layer) or "tfmot cannot prune it"
    kernel = kernel_of(layer)
    size = 0 if kernel is None else int(np.prod(kernel.shape))
    if size < p.min_weights:
        return f"{size} weights < min_weights {p.min_weights}"
    if p.structure == "2:4":
        return "2:4 needs a Dense/Conv kernel whose input channels are a multiple of 4"
    if tuple(p.block_size) != (1, 1):
        return "block_size needs a 2-D (Dense) kernel"
    return "not selected"


def _plan_cluster(p, model, ctx, applied):
    from tfedge.passes.base import kernel_of
    from tfedge.passes.cluster import clusterable

    selected = set(p.selected(model))
    keep_zeros = p.keeps_sparsity(applied)
    counts, skipped = p.layer_counts(model, selected, applied)
    compat = _compat_notes(model, "cluster")
    touch, skip = [], []
    for layer in _layers(model):
        if layer.name not in selected:
            reason = _unmatched(p, layer)
            if not reason and not clusterable(layer):
                reason = compat.get(layer.name) or _no_weights_reason(layer) or ""
            if not reason:
                kernel = kernel_of(layer)
                size = 0 if kernel is None else int(np.prod(kernel.shape))
                reason = f"{size} weights: not more than clusters ({p.clusters})"
            skip.append(_note(layer, reason))
            continue
        if layer.name in counts:  # as Cluster.apply decides, on the weights the model has now
            k = counts[layer.name]
            touch.append(_note(layer, f"{k} clusters" if k != p.clusters else ""))
        else:
            skip.append(_note(layer, skipped[layer.name]))
    notes = []
    if keep_zeros:
        notes.append("zeros kept (preserve_sparsity)")
    if "prune" in applied:
        notes.append(
            "counted on the weights before pruning: a kernel left with too few non-zero "
            "weights after prune is skipped at run time"
        )
    return PassPlan(0, "cluster", {}, touch, skip, notes), model


def _plan_qat(p, model, ctx, applied):
    """As ``Qat.apply`` prepares the model: fold, check, scalar ops as layers, then annotate all
    but the layers tfmot cannot quantize and the input preprocessing the converter calibrates."""
    from tfedge.passes.compat import qat_unsupported
    from tfedge.passes.qat_configs import hard_swish_inner, input_preprocessing, ops_as_layers
    from tfedge.passes.rebuild import fold_for_qat

    model, _, _ = fold_for_qat(model)
    p.check(model, ctx)
    model, _ = ops_as_layers(model)
    unsupported = {s.split(" (")[0] for s in qat_unsupported(model)}
    calibrated = set(input_preprocessing(model))
    inner = set(hard_swish_inner(model))
    compat = _compat_notes(model, "qat")
    touch, skip = [], []
    for layer in _layers(model):
        if layer.name in unsupported:
            why = compat.get(layer.name, "tfmot cannot quantize it").split(";")[0]
            skip.append(_note(layer, f"{why}; left to post-training quantization"))
        elif layer.name in calibrated:
            skip.append(_note(layer, "input preprocessing: calibrated by the converter"))
        else:
            touch.append(_note(layer, "part of a HARD_SWISH" if layer.name in inner else ""))
    notes = [f"scheme {p.chosen_scheme(applied)}"]
    return PassPlan(0, "qat", {}, touch, skip, notes), model


def _plan_low_rank(p, model, ctx, applied):
    from tfedge.io.data import num_samples
    from tfedge.passes.low_rank import DEFAULT_MAX_DROP, factorise

    on_data = p.by_data and num_samples(ctx.x) > 0  # ranks chosen on the training data
    plans = {f.layer: f for f in p.plan(model, ctx if on_data else None)}
    selected = set(p.selected(model))
    outputs = set(model.output_names)
    touch, skip = [], []
    for layer in _layers(model):
        if layer.name in plans:
            f = plans[layer.name]
            touch.append(
                _note(layer, f"rank {f.rank}, {f.params_before} -> {f.params_after} params")
            )
            continue
        reason = _unmatched(p, layer)
        if not reason and layer.name in selected:
            reason = "no rank the settings allow has fewer parameters"
        elif not reason and p.skip_output and layer.name in outputs:
            reason = "produces the model's output (skip_output)"
        elif not reason:
            reason = "only Dense and 1x1 Conv2D layers are factorised"
        skip.append(_note(layer, reason))
    if on_data:
        budget = DEFAULT_MAX_DROP if p.max_drop is None else p.max_drop
        source = f"ranks chosen on the training data (max_drop {budget} points)"
    elif p.by_data:
        source = "ranks chosen on data at run time; without --data shown for energy 0.9"
    else:
        source = "ranks from the current weights"
    notes = [f"{source}; a later pass sees the split layers (NAME_lr)"]
    return PassPlan(0, "low_rank", {}, touch, skip, notes), factorise(model, list(plans.values()))


def _plan_distill(p, model, ctx, applied):
    from tfedge.io.models import load_tf_keras_model

    teacher = load_tf_keras_model(p.teacher) if p.teacher else model
    student = p.build_student(teacher, ctx, seed_offset=0)
    p._check_layers(teacher, student)  # what Distill.apply checks before training
    source = p.student or (f"builder {p.builder}" if p.builder else "the teacher")
    width = f" x width {p.width or 0.5}" if not p.student else ""
    touch = [_note(layer) for layer in _layers(student)]
    notes = [
        f"student: {source}{width}, {student.count_params():,} params "
        f"(teacher {teacher.count_params():,}); every student layer trains",
    ]
    return PassPlan(0, "distill", {}, touch, [], notes), student


def _plan_channels(p, model, ctx, applied):
    from tfedge.io.data import num_samples
    from tfedge.passes.channel_graph import ChannelGraph
    from tfedge.passes.channels import keras_macs, plan_counts, prune_channels

    p.check(model, ctx)  # as the run: a model with nothing to remove is its RecipeError
    graph = ChannelGraph(model)
    by_data = p.target_macs is not None
    has_data = num_samples(ctx.x) > 0
    on_data = by_data and has_data  # the sensitivity, on the training data
    if (by_data or p.criterion == "taylor") and not has_data:  # taylor ranks at run time
        counts = _fixed_counts(p, model, graph) if by_data else _keep_counts(p, model, graph)
        keep = plan_counts(model, graph, counts, "l1")
    else:  # the whole target in one step, as the last step of the run reaches it
        sizes = {g.id: g.size for g in graph.groups}
        keep, _ = p.step_plan(model, graph, ctx, sizes, keras_macs(model), p.steps)
    touch, skip = [], []
    for group in graph.groups:
        for name in group.members:
            layer = model.get_layer(name)
            if group.id in keep:
                touch.append(_note(layer, f"{group.size} -> {len(keep[group.id])} channels"))
            elif group.prunable and by_data and not on_data:
                touch.append(_note(layer, f"{group.size} channels: count chosen at run time"))
            elif group.prunable:
                whole = "left whole by the MACs target" if by_data else "at the minimum already"
                skip.append(_note(layer, f"{group.size} channels: {whole}"))
            else:
                skip.append(_note(layer, "; ".join(group.reasons)))
    thinner = prune_channels(model, keep, graph)
    before, after = keras_macs(model), keras_macs(thinner)
    notes = [f"MACs {before:,} -> {after:,} (before fine-tuning)"]
    if on_data:
        notes.append(f"target_macs {p.target_macs:g}: counts chosen by sensitivity on the data")
    elif by_data:
        notes = [
            f"MACs {before:,} -> about {before * p.target_macs:,.0f} (target_macs "
            f"{p.target_macs:g}): counts chosen at run time by sensitivity on the data "
            "(give --data to see them)"
        ]
    if p.criterion == "taylor" and not has_data:
        notes.append("taylor ranks the channels on the data at run time (shown: l1)")
    if p.steps > 1:
        notes.append(f"in {p.steps} steps, fine-tuned after each")
    return PassPlan(0, "channels", {}, touch, skip, notes), thinner


def _keep_counts(p, model, graph) -> dict[int, int]:
    """The channel counts of ``keep`` (and ``ratios``) in one step."""
    from tfedge.passes.channels import kept_count

    counts = {
        g.id: kept_count(g.size, p.keep_ratio, p.round_to, p.minimum)
        for g in graph.groups
        if g.prunable
    }
    return {**counts, **_fixed_counts(p, model, graph)}


def _fixed_counts(p, model, graph) -> dict[int, int]:
    """The channel counts of the groups named in the pass's ``ratios``."""
    from tfedge.passes.channels import kept_count

    sizes = {g.id: g.size for g in graph.groups}
    return {
        g: kept_count(sizes[g], ratio, p.round_to, p.minimum)
        for g, ratio in p.fixed_ratios(model, graph).items()
    }


def _plan_other(p, model, ctx, applied):
    return PassPlan(0, p.pass_name, {}, [], [], ["no layer plan for this pass"]), model


PLANNERS = {
    "channels": _plan_channels,
    "prune": _plan_prune,
    "cluster": _plan_cluster,
    "qat": _plan_qat,
    "low_rank": _plan_low_rank,
    "distill": _plan_distill,
}


# ---- layers and reasons --------------------------------------------------------------------


def _layers(model) -> list:
    return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]


def _note(layer, reason: str = "") -> LayerNote:
    return LayerNote(layer.name, type(layer).__name__, reason)


def _unmatched(p, layer) -> str:
    """Why ``layer`` is outside the pass's ``layers``/``layer_types``, or ''."""
    patterns, types = tuple(getattr(p, "layers", ())), tuple(getattr(p, "layer_types", ()))
    if patterns and not any(fnmatch.fnmatchcase(layer.name, pat) for pat in patterns):
        return f"not in layers: [{', '.join(patterns)}]"
    if types and type(layer).__name__ not in types:
        return f"not in layer_types: [{', '.join(types)}]"
    return ""


def _no_weights_reason(layer) -> str:
    kind = type(layer).__name__
    if kind == "BatchNormalization":
        return "folded into the layer before it at conversion"
    if not layer.trainable_weights:
        return "no weights"
    return ""


def _compat_notes(model, technique: str) -> dict[str, str]:
    """``inspect``'s compatibility reasons for ``technique``, by layer (``passes.compat``)."""
    from tfedge.passes.compat import NO_WEIGHTS, layer_compat

    notes = {}
    for row in layer_compat(model):
        if getattr(row, technique) == NO_WEIGHTS:
            notes[row.layer] = _no_weights_reason_of(row)
            continue
        prefix = f"{technique}: "
        for part in row.notes.split("; "):
            if part.startswith(prefix):
                notes[row.layer] = part[len(prefix) :]
    return notes


def _no_weights_reason_of(row) -> str:
    if row.type == "BatchNormalization":
        return "folded into the layer before it at conversion"
    if row.type == "LayerNormalization":
        return "normalisation: left as it is"
    return "no weights"


# ---- settings and text ---------------------------------------------------------------------


def _options(config) -> dict:
    """A pass's or block's options as a plain dict (dataclass or pydantic model)."""
    if hasattr(config, "model_dump"):
        return dict(config.model_dump())
    if dataclasses.is_dataclass(config):
        return asdict(config)  # type: ignore[arg-type]
    return dict(vars(config))


def _settings(p) -> dict:
    """The options that differ from the pass's defaults, and its epochs."""
    options = _options(p)
    try:
        defaults = _options(type(p)())
    except Exception:  # noqa: BLE001  (a pass without defaults for every option: show all)
        return options
    return {
        key: value
        for key, value in options.items()
        if key == "epochs" or defaults.get(key, object()) != value
    }


def _describe(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(Path(model))
    return f"an in-memory {type(model).__name__} model"


def _names(names: list[str], shown: int = SHOWN) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])}, ... (+{len(names) - shown} more)"


def _value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def format_plan(plan: OptimizePlan) -> str:
    """The plan as text: one block per pass, layers grouped, long lists summarised."""
    lines = [
        f"recipe {plan.recipe} ({plan.recipe_source}) on {plan.model}"
        + (f" ({plan.layers} layers)" if plan.layers else "")
    ]
    lines += [f"prepare: {line}" for line in plan.prepare]
    for p in plan.passes:
        settings = ", ".join(f"{k} {_value(v)}" for k, v in p.settings.items())
        head = f"pass {p.index + 1} {p.name}" + (f" ({settings})" if settings else "")
        lines.append(f"{head}: {len(p.touch)} layer(s)")
        if p.touch:
            lines.append(f"  touch: {_touch_text(p.touch)}")
        if p.skip:
            lines.append(f"  skip:  {_skip_text(p.skip)}")
        lines += [f"  note:  {note}" for note in p.notes]
    convert = plan.convert
    lines.append(
        f"convert: {convert.get('quant')}, calibration {convert.get('calib_samples')} samples, "
        f"io {convert.get('io') or 'default'}"
    )
    lines.append("checks: " + "; ".join(plan.checks))
    return "\n".join(lines)


def _touch_text(notes: list[LayerNote]) -> str:
    names = [n.layer + (f" ({n.reason})" if n.reason else "") for n in notes]
    types = sorted({n.type for n in notes})
    return f"{_names(names)} ({_names(types)})"


def _skip_text(notes: list[LayerNote]) -> str:
    groups: dict[str, list[LayerNote]] = {}
    for note in notes:
        groups.setdefault(note.reason, []).append(note)
    parts = []
    for reason, members in groups.items():
        names = _names([n.layer for n in members])
        types = sorted({n.type for n in members})
        parts.append(f"{names} ({_names(types, 3)}: {reason})")
    return "; ".join(parts)
