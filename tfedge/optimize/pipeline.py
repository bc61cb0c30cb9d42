"""``optimize``: run a recipe's passes in order, convert, and measure every stage.

Stages: ``float32`` (the input model, converted without quantization: the size reference),
``int8`` (the input model after post-training quantization), then one stage per pass, each
converted with the recipe's settings. Every stage reports accuracy on the evaluation data
(of its converted model), parameters, non-zero parameters, unique weights, and the TFLite,
gzip and xz bytes. The last stage is the result.

OUTDIR holds model.tflite (the last stage), model.keras (the last plain Keras model: for a
recipe ending in ``qat``, the model that entered QAT; the QAT graph itself is kept as the
SavedModel ``qat_savedmodel/``), stages/*.tflite, report.json, report.md and recipe.yaml
(whose sha256 is in the reports). It is built in a sibling directory marked INCOMPLETE and
renamed into place at the end, so a NaN loss, a failed accuracy guard or Ctrl-C leaves
OUTDIR as it was.

Example:
    >>> result = optimize("models/digits/model.keras", "prune-cluster-qat", "models/digits/train.npz",
    ...                   "models/digits/test.npz", "out/digits")
    >>> result.final.gzip_bytes < result.stage("float32").tflite_bytes / 11
    True
"""

from __future__ import annotations

import contextlib
import gzip
import json
import lzma
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfedge.convert.tflite_model import read_tflite
from tfedge.errors import DataError, OutputError, TrainingError
from tfedge.fsutil import replace_dir, write_bytes_atomic
from tfedge.io.data import Dataset, arrange_inputs, as_float32, keras_input_specs, load_data
from tfedge.optimize.recipe import Recipe, load_recipe

WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"}


@dataclass
class Stage:
    """One row of the report: the model after a stage, as converted and as Keras saw it."""

    name: str
    accuracy: float | None
    keras_accuracy: float | None
    mse: float | None
    params: int
    nonzero_params: int
    sparsity: float
    unique_weights: int
    tflite_bytes: int
    gzip_bytes: int
    xz_bytes: int
    seconds: float
    tflite: str
    quant: str
    layers: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


@dataclass
class OptimizeResult:
    """What ``optimize`` wrote, and the measured stages."""

    output_dir: str
    model: str
    keras_model: str
    recipe: str
    recipe_sha256: str
    stages: list[Stage]
    seconds: float

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def to_dict(self) -> dict:
        return asdict(self)


def optimize(
    model,
    recipe,
    data,
    eval_data,
    output,
    *,
    profile=None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Compress ``model`` with ``recipe`` and write ``output``/model.tflite with its report.

    Args:
        model: a Keras model file or an in-memory tf_keras model.
        recipe: a built-in recipe name, a recipe file, or a ``Recipe``.
        data: training/calibration data (.npz with x, y; or one array per input, named after it, and y).
        eval_data: evaluation data (same layout).
        output: the output directory (created; replaced only when the run succeeds).
        profile: a device profile to check the final model against.
        progress: draw stage lines and per-epoch bars on stderr.
        log: where stage lines go (default: stderr when ``progress``).

    Returns:
        OptimizeResult.

    Raises:
        RecipeError, DataError, ModelLoadError, TrainingError, ConversionError, OutputError.
    """
    started = time.perf_counter()
    recipe = load_recipe(recipe)
    out = check_outdir(output)
    train, evals = load_data(data), load_data(eval_data)
    keras_model = _load_model(model, recipe)
    ctx = _context(recipe, keras_model, train, evals, progress, log)
    for p in recipe.passes:  # everything that can be checked is checked before training
        p.check(keras_model, ctx)
    with staging_dir(out) as work:
        runner = _Runner(recipe, ctx, train, evals, work, profile)
        last_model = runner.run(keras_model)
        _write_outputs(work, recipe, runner.stages, last_model)
        seconds = round(time.perf_counter() - started, 2)
        _write_reports(work, recipe, runner.stages, seconds)
    return OptimizeResult(
        str(out),
        str(out / "model.tflite"),
        str(out / "model.keras"),
        recipe.name,
        recipe.sha256,
        runner.stages,
        seconds,
    )


class _Runner:
    """Runs the stages of one recipe and keeps their measurements."""

    def __init__(
        self, recipe: Recipe, ctx, train: Dataset, evals: Dataset, work: Path, profile
    ) -> None:
        self.recipe, self.ctx, self.train, self.evals = recipe, ctx, train, evals
        self.work, self.profile = work, profile
        self.stages: list[Stage] = []
        (work / "stages").mkdir()

    def run(self, model):
        total = len(self.recipe.passes) + 2
        self._step(1, total, "float32")
        self.stages.append(self._measure("float32", model, model, "none", time.perf_counter()))
        self._step(2, total, "int8 (post-training)")
        self._add(
            self._measure(
                "int8",
                model,
                model,
                self.recipe.convert.quant,
                time.perf_counter(),
                last=not self.recipe.passes,
            )
        )
        if any(p.pass_name == "qat" for p in self.recipe.passes):
            from tfedge.passes.rebuild import fold_for_qat

            # Before prune and cluster, so that the kernels they shape are the ones QAT trains
            # and the converter writes (qat folds too, but then clustering would be undone).
            model, folded = fold_for_qat(model)
            if folded:
                self.ctx.say(
                    f"folded {len(folded)} BatchNormalization/ReLU layer(s) into the Dense before them"
                )
        plain = model
        for i, p in enumerate(self.recipe.passes):
            self._step(i + 3, total, p.pass_name)
            started = time.perf_counter()
            self.ctx.seed_all()
            result = p.apply(model, self.ctx)
            self.ctx.applied += (p.pass_name,)
            plain = plain if result.quantize_wrapped else result.model
            source = (
                _qat_savedmodel(result.model, self.work)
                if result.quantize_wrapped
                else result.model
            )
            stage = self._measure(
                p.pass_name,
                source,
                plain,
                self.recipe.convert.quant,
                started,
                last=i == len(self.recipe.passes) - 1,
                metrics=result.metrics,
                keras=result.model,
            )
            self._add(stage)
            model = result.model
        return plain

    def _step(self, i: int, total: int, name: str) -> None:
        self.ctx.say(f"[{i}/{total}] {name}")

    def _add(self, stage: Stage) -> None:
        self.stages.append(stage)
        _guard(self.recipe, self.stages[0], stage)

    def _measure(
        self,
        name: str,
        model,
        plain,
        quant: str,
        started: float,
        last: bool = False,
        metrics: dict | None = None,
        keras=None,
    ) -> Stage:
        from tfedge.convert.converter import convert

        index = len(self.stages)
        path = self.work / "stages" / f"{index:02d}-{name}.tflite"
        convert(
            model,
            path,
            calib=self.train.x,
            quant=quant,
            io=None if quant == "none" else self.recipe.convert.io,
            calib_samples=self.recipe.convert.calib_samples,
            seed=self.recipe.seed,
            profile=self.profile if last else None,
        )
        return _stage(
            name, path, keras or model, plain, self.ctx, self.evals, quant, started, metrics or {}
        )


def _qat_savedmodel(model, work: Path) -> str:
    """Keep a quantize-wrapped model as OUTDIR/qat_savedmodel and convert from that path.

    tf_keras cannot reload QAT models from .keras or .h5, so this SavedModel is the one
    reloadable copy of the QAT graph; converting from it avoids saving the model twice.
    """
    path = work / "qat_savedmodel"
    model.save(path, save_format="tf")
    return str(path)


def _stage(
    name: str,
    path: Path,
    model,
    plain,
    ctx,
    evals: Dataset,
    quant: str,
    started: float,
    metrics: dict,
) -> Stage:
    from tfedge.analyze.evaluate import evaluate

    raw = path.read_bytes()
    scored = evaluate(path, evals)
    stats = weight_stats(path)
    return Stage(
        name=name,
        accuracy=scored.accuracy,
        keras_accuracy=ctx.accuracy(model),
        mse=scored.mse,
        params=int(plain.count_params()),
        nonzero_params=stats["nonzero"],
        sparsity=stats["sparsity"],
        unique_weights=stats["max_unique_per_channel"],
        tflite_bytes=len(raw),
        gzip_bytes=len(gzip.compress(raw, 9)),
        xz_bytes=len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
        seconds=round(time.perf_counter() - started, 2),
        tflite=f"stages/{path.name}",
        quant=quant,
        layers=stats["layers"],
        metrics=_jsonable(metrics),
    )


def weight_stats(path) -> dict:
    """Zeros and distinct values in the weight kernels of a ``.tflite`` file, as users would check them.

    ``sparsity`` is the share of zeros in all conv/fully-connected kernels; ``max_unique_per_channel``
    the most distinct values any output channel of those kernels holds. ``nonzero`` counts
    non-zero weights and biases. ``layers`` gives both per layer.
    """
    model = read_tflite(path)
    layers, zeros, size, nonzero, unique = {}, 0, 0, 0, 0
    for op in model.ops:
        if op.name not in WEIGHT_OPS or len(op.inputs) < 2 or op.inputs[1].data is None:
            continue
        kernel = op.inputs[1]
        values = np.asarray(kernel.data).reshape(kernel.shape)
        per_channel = _unique_per_channel(values, _channel_axis(op.name, kernel))
        layers[_layer_name(op)] = {
            "sparsity": round(float(np.mean(values == 0)), 4),
            "max_unique_per_channel": per_channel,
            "weights": int(values.size),
        }
        zeros, size = zeros + int(np.sum(values == 0)), size + values.size
        nonzero += int(np.count_nonzero(values)) + _bias_nonzero(op)
        unique = max(unique, per_channel)
    return {
        "sparsity": round(zeros / size, 4) if size else 0.0,
        "nonzero": nonzero,
        "max_unique_per_channel": unique,
        "layers": layers,
    }


def _layer_name(op) -> str:
    """The Keras layer of a weighted op, from its kernel's tensor name (QAT's ``quant_`` prefix dropped)."""
    from tfedge.convert.tflite_model import layer_from_tensor_name

    name = layer_from_tensor_name(op.inputs[1].name) if "/" in op.inputs[1].name else op.layer
    return name[len("quant_") :] if name.startswith("quant_") else name


def _channel_axis(op_name: str, kernel) -> int:
    if kernel.scale and len(kernel.scale) > 1:
        return kernel.quantized_dimension
    return 3 if op_name == "DEPTHWISE_CONV_2D" else 0


def _unique_per_channel(values: np.ndarray, axis: int) -> int:
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    return max(int(np.unique(row).size) for row in moved)


def _bias_nonzero(op) -> int:
    if len(op.inputs) > 2 and op.inputs[2].data is not None:
        return int(np.count_nonzero(op.inputs[2].data))
    return 0


def _guard(recipe: Recipe, baseline: Stage, stage: Stage) -> None:
    limit = recipe.max_accuracy_drop
    if limit is None or stage is baseline or baseline.accuracy is None or stage.accuracy is None:
        return
    drop = 100 * (baseline.accuracy - stage.accuracy)
    if drop > limit:
        raise TrainingError(
            f"stage '{stage.name}' lost {drop:.2f} points of accuracy ({baseline.accuracy:.4f} -> "
            f"{stage.accuracy:.4f}); the recipe allows {limit:g}",
            "add fine-tuning epochs, make the stage gentler (lower sparsity, more clusters), or raise max_accuracy_drop",
        )


# ---- inputs -------------------------------------------------------------------------------


def _load_model(model, recipe: Recipe):
    """A tf_keras model for tfmot passes; a post-training-only recipe takes any Keras model as is.

    The second case is the direct Keras 3 -> TFLite path: a Keras 3 model the bridge cannot
    translate (e.g. one with a registered custom layer) still converts.
    """
    from tfedge.io.models import detect_format, load_keras_model, load_tf_keras_model

    if recipe.passes:
        return load_tf_keras_model(model)
    if isinstance(model, (str, os.PathLike)):
        return load_keras_model(detect_format(model))
    return model


def _context(recipe: Recipe, model, train: Dataset, evals: Dataset, progress: bool, log):
    from tfedge.passes.base import PassContext

    specs = keras_input_specs(model)
    arrange_inputs(train.x, specs, f"training data {train.source}")
    arrange_inputs(evals.x, specs, f"evaluation data {evals.source}")
    if recipe.passes and train.y is None:
        raise DataError(
            f"{train.source} has no labels (y); the passes of recipe '{recipe.name}' train",
            "save training data with np.savez(path, x=x, y=y)",
        )
    say = log or (_stderr_log if progress else None)
    return PassContext(
        x=as_float32(train.x),
        y=train.y,
        train=recipe.train,
        seed=recipe.seed,
        progress=progress,
        log=say,
        eval_x=evals.x,
        eval_y=evals.y,
    )


def _stderr_log(message: str) -> None:
    import click

    click.echo(message, err=True)


# ---- outputs ------------------------------------------------------------------------------


def check_outdir(output) -> Path:
    """OUTDIR may be new, empty, or an earlier optimize output (it is then replaced on success)."""
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(
            f"the parent of {out} does not exist", f"create it first: mkdir -p {parent}"
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(
            f"cannot write to {parent}", "choose an output directory in a writable place"
        )
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is a file", "give a directory for -o")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").exists():
        raise OutputError(
            f"{out} exists and holds other files",
            "give a new or empty directory, or an earlier `tfedge optimize` output to replace",
        )
    return out


@contextlib.contextmanager
def staging_dir(out: Path):
    """A sibling directory marked INCOMPLETE; renamed onto ``out`` only if the block succeeds."""
    work = Path(
        tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".incomplete", dir=out.parent or ".")
    )
    try:
        os.chmod(work, 0o755)
        (work / "INCOMPLETE").write_text(
            "tfedge optimize has not finished here; nothing in this folder is final\n"
        )
        yield work
        (work / "INCOMPLETE").unlink()
        replace_dir(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_outputs(work: Path, recipe: Recipe, stages: list[Stage], model) -> None:
    shutil.copyfile(work / stages[-1].tflite, work / "model.tflite")
    model.save(work / "model.keras")
    (work / "recipe.yaml").write_text(recipe.text)


def _write_reports(work: Path, recipe: Recipe, stages: list[Stage], seconds: float) -> None:
    report = {
        "recipe": {
            "name": recipe.name,
            "source": recipe.source,
            "sha256": recipe.sha256,
            "passes": recipe.pass_names,
        },
        "model": "model.tflite",
        "keras_model": "model.keras",
        "seconds": seconds,
        "stages": [asdict(s) for s in stages],
    }
    write_bytes_atomic(
        work / "report.json", json.dumps(report, indent=2, default=_json_default).encode()
    )
    write_bytes_atomic(work / "report.md", markdown_report(recipe, stages).encode())


def markdown_report(recipe: Recipe, stages: list[Stage]) -> str:
    """The stage table in Markdown, sizes relative to the float32 stage."""
    base = stages[0].tflite_bytes
    lines = [
        f"# tfedge optimize: recipe `{recipe.name}`",
        "",
        f"Recipe sha256 `{recipe.sha256}` ({recipe.source}); passes: {' -> '.join(recipe.pass_names) or 'none'}.",
        "",
        "| stage | accuracy | params | non-zero | sparsity | unique/ch | tflite B | gzip B | xz B | "
        "float32/gzip |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        acc = "-" if s.accuracy is None else f"{100 * s.accuracy:.2f}%"
        lines.append(
            f"| {s.name} | {acc} | {s.params:,} | {s.nonzero_params:,} | {100 * s.sparsity:.1f}% | "
            f"{s.unique_weights} | {s.tflite_bytes:,} | {s.gzip_bytes:,} | {s.xz_bytes:,} | "
            f"{base / s.gzip_bytes:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def _jsonable(value):
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
