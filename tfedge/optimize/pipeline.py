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
    >>> result = optimize("models/digits/model.keras", "prune-cluster-qat",
    ...                   "models/digits/train.npz", "models/digits/test.npz", "out/digits")
    >>> result.final.gzip_bytes < result.stage("float32").tflite_bytes / 11
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tfedge.errors import DataError, ModelLoadError, OutputError, TrainingError
from tfedge.fsutil import replace_dir, write_bytes_atomic
from tfedge.io.data import Dataset, load_data
from tfedge.optimize.recipe import Recipe, load_recipe
from tfedge.optimize.stages import Stage, json_default, weight_stats
from tfedge.optimize.worker import OptimizeWorker, check_inputs

__all__ = ["OptimizeResult", "Stage", "markdown_report", "optimize", "weight_stats"]


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
        model: a Keras model file, or an in-memory tf_keras or Keras 3 model (saved to a
            private folder for the worker; custom layers need a post-training-only recipe).
        recipe: a built-in recipe name, a recipe file, or a ``Recipe``.
        data: training/calibration data (.npz with x, y; or one array per input, named after
            it, and y).
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
    _check_labels(recipe, train)
    say = log or (_stderr_log if progress else None)
    with staging_dir(out) as work, OptimizeWorker(say, progress) as worker:
        runner = _Runner(recipe, worker, work, say)
        runner.load(model, train, evals, profile)
        runner.run()
        runner.finish()
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
    """Drives the worker through the stages of one recipe and keeps their measurements.

    The worker does the TensorFlow work (see ``tfedge.optimize.worker``); this side names the
    steps, applies the accuracy guard and keeps the rows.
    """

    def __init__(self, recipe: Recipe, worker: OptimizeWorker, work: Path, say) -> None:
        self.recipe, self.worker, self.work = recipe, worker, work
        self.say = say or (lambda message: None)
        self.stages: list[Stage] = []
        self.direct = None  # a Keras 3 model measured in this process (see _direct_input)

    def load(self, model, train: Dataset, evals: Dataset, profile) -> None:
        source, facts = self._input(model, train, evals)
        try:
            self.worker.call(
                "load",
                model=source,
                recipe=self.recipe,
                train=train,
                evals=evals,
                work=str(self.work),
                profile=profile,
                facts=facts,
            )
        except ModelLoadError:
            if self.recipe.passes and _is_keras3(model):
                _explain_keras3(model)
            raise

    def run(self) -> None:
        """Every stage, in order; each job answers with the rows measured so far (see worker)."""
        passes = self.recipe.passes
        total = len(passes) + 2
        self._step(1, total, "float32")
        self._take(self._call("measure_input", name="float32", quant="none", last=False))
        self._step(2, total, "int8 (post-training)")
        quant = self.recipe.convert.quant
        self._take(self._call("measure_input", name="int8", quant=quant, last=not passes))
        if any(p.pass_name == "qat" for p in passes):
            self._take(self._call("fold"))
        for i, p in enumerate(passes):
            self._step(i + 3, total, p.pass_name)
            self._take(self._call("apply", index=i, last=i == len(passes) - 1))
        self._take(self._call("collect"))

    def finish(self) -> None:
        self._call("finish", final_tflite=self.stages[-1].tflite, save_keras=self.direct is None)
        if self.direct is not None:
            self.direct.save(self.work / "model.keras")
        (self.work / "recipe.yaml").write_text(self.recipe.text)

    def _call(self, job: str, **args):
        return self.worker.call(job, **args)

    def _step(self, i: int, total: int, name: str) -> None:
        self.say(f"[{i}/{total}] {name}")

    def _take(self, rows: list[Stage]) -> None:
        for stage in rows:
            self.stages.append(stage)
            _guard(self.recipe, self.stages[0], stage)

    def _input(self, model, train: Dataset, evals: Dataset) -> tuple[str, dict | None]:
        """What the worker loads: a path, and for the direct Keras 3 path what was measured here.

        A model file goes as its path. An in-memory model is saved to a private folder first
        (Keras 3 models by Keras 3, tf_keras ones by tf_keras). A post-training-only recipe on a
        Keras 3 model is the direct Keras 3 -> TFLite path: the model is loaded and measured
        here, where any custom layers it uses are registered, and exported as a SavedModel
        for the worker to convert.
        """
        if not self.recipe.passes and _is_keras3(model):
            return self._direct_input(model, train, evals)
        if isinstance(model, (str, os.PathLike)):
            return str(model), None
        path = self.worker.input_dir / "model.keras"
        model.save(path)
        return str(path), None

    def _direct_input(self, model, train: Dataset, evals: Dataset) -> tuple[str, dict]:
        from tfedge._tf import keep_keras_selection
        from tfedge.io.models import detect_format, load_keras_model
        from tfedge.optimize.stages import keras_accuracy_of
        from tfedge.passes.base import PassContext

        with keep_keras_selection():
            if isinstance(model, (str, os.PathLike)):
                model = load_keras_model(detect_format(model))
            check_inputs(model, train, evals)
            path = self.worker.input_dir / "savedmodel"
            model.export(str(path), verbose=False)
            labelled = train.y if train.y is not None else np.zeros(0)
            ctx = PassContext(x=train.x, y=labelled, eval_x=evals.x, eval_y=evals.y)
            facts = {"accuracy": keras_accuracy_of(model, ctx), "params": model.count_params()}
        self.direct = model
        return str(path), facts


def _explain_keras3(model) -> None:
    """The worker could not load a Keras 3 model: say which layers the bridge cannot translate.

    Custom layers registered in the caller's process are unknown to the worker. Loaded here
    (Keras 3, the caller's choice of Keras untouched), they get the bridge's own error, which
    names them; a model that loads nowhere keeps the worker's error.
    """
    from tfedge._tf import keep_keras_selection
    from tfedge.io.keras3_bridge import check_translatable
    from tfedge.io.models import detect_format, load_keras_model

    with keep_keras_selection():
        if isinstance(model, (str, os.PathLike)):
            try:
                model = load_keras_model(detect_format(model))
            except ModelLoadError:
                return
        check_translatable(model)


def _is_keras3(model) -> bool:
    if isinstance(model, (str, os.PathLike)):
        from tfedge.io.models import detect_format

        return detect_format(model).is_keras3
    return type(model).__module__.split(".")[0] == "keras"


def _check_labels(recipe: Recipe, train: Dataset) -> None:
    if recipe.passes and train.y is None:
        raise DataError(
            f"{train.source} has no labels (y); the passes of recipe '{recipe.name}' train",
            "save training data with np.savez(path, x=x, y=y)",
        )


def _guard(recipe: Recipe, baseline: Stage, stage: Stage) -> None:
    limit = recipe.max_accuracy_drop
    if limit is None or stage is baseline or baseline.accuracy is None or stage.accuracy is None:
        return
    drop = 100 * (baseline.accuracy - stage.accuracy)
    if drop > limit:
        raise TrainingError(
            f"stage '{stage.name}' lost {drop:.2f} points of accuracy ({baseline.accuracy:.4f} -> "
            f"{stage.accuracy:.4f}); the recipe allows {limit:g}",
            "add fine-tuning epochs, make the stage gentler (lower sparsity, more clusters), "
            "or raise max_accuracy_drop",
        )


# ---- inputs -------------------------------------------------------------------------------


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
        work / "report.json", json.dumps(report, indent=2, default=json_default).encode()
    )
    write_bytes_atomic(work / "report.md", markdown_report(recipe, stages).encode())


def markdown_report(recipe: Recipe, stages: list[Stage]) -> str:
    """The stage table in Markdown, sizes relative to the float32 stage."""
    base = stages[0].tflite_bytes
    lines = [
        f"# tfedge optimize: recipe `{recipe.name}`",
        "",
        f"Recipe sha256 `{recipe.sha256}` ({recipe.source}); "
        f"passes: {' -> '.join(recipe.pass_names) or 'none'}.",
        "",
        "| stage | accuracy | params | non-zero | sparsity | unique/ch | tflite B | gzip B | "
        "xz B | float32/gzip |",
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
