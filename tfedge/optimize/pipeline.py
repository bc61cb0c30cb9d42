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
renamed into place at the end. For a Keras 3 input, model.keras is a Keras 3 file (converted
back from tf_keras and checked on seeded inputs; if that fails, model_tf_keras.keras with a
note in the reports instead).

A failed stage keeps its work: when a pass stage fails (the accuracy guard, a NaN loss, a
failed conversion), OUTDIR receives the stages before it (stages/*.tflite, report.json and
report.md marked FAILED at that stage, recipe.yaml), the model after the last completed pass
(``checkpoints/NN-<pass>/``, a tf_keras SavedModel; none when the first pass failed: resuming
starts from the input model) and ``resume.json``; no model.tflite, so a failed run cannot be
shipped by mistake.
``optimize(..., resume=OUTDIR)`` (``tfedge optimize --resume OUTDIR``) checks that the model,
the data and the completed passes are the same, reuses their rows and checkpoint, and goes on
from the failed stage. An error before the passes (loading, checks, the float32 and int8
stages), a crash of the worker or Ctrl-C leaves OUTDIR as it was.

``resume.json`` (schema 1): ``failed`` (stage index and name, pass index, error type, message,
hint), ``completed`` (passes done), ``checkpoint`` (relative path or null), ``folded`` (the
model was prepared for qat before the first pass), ``model``/``data``/``eval`` (source and
sha256; data hashed over its arrays), ``recipe`` (sha256, each pass's name and normalised
options, train, convert, seed) and ``stages`` (the kept rows).

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
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfedge.errors import (
    DataError,
    ModelLoadError,
    OutputError,
    TfedgeError,
    TrainingError,
)
from tfedge.fsutil import (
    check_not_input,
    made_parents,
    nearest_existing,
    replace_dir,
    write_bytes_atomic,
)
from tfedge.io.data import Dataset, load_data
from tfedge.optimize.measure import measure_channel_groups, time_stages
from tfedge.optimize.ota_base import Plan as OtaPlan
from tfedge.optimize.ota_base import extend_reports
from tfedge.optimize.ota_base import finish as ota_finish
from tfedge.optimize.ota_base import plan as ota_plan
from tfedge.optimize.recipe import Recipe, load_recipe
from tfedge.optimize.reports import markdown_report, write_reports
from tfedge.optimize.resume import (
    STATE_FILE,
    STATE_SCHEMA,
    Previous,
    data_fingerprint,
    describe_model,
    guard,
    model_fingerprint,
    read_state,
    recipe_settings,
)
from tfedge.optimize.stages import Stage, json_default, weight_stats
from tfedge.optimize.worker import OptimizeWorker, check_inputs, rebuild_error

FIRST_PASS_STAGE = 2  # stages: float32, int8, then one per pass

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
    notes: list[str] = field(default_factory=list)
    resumed: dict | None = None
    ota_base: dict | None = None  # the delta against the recipe's ota_base (report.json)

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
    output=None,
    *,
    profile=None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    resume=None,
    trust_model: bool = False,
    target: str | None = None,
) -> OptimizeResult:
    """Compress ``model`` with ``recipe`` and write ``output``/model.tflite with its report.

    Args:
        model: a Keras model file, or an in-memory tf_keras or Keras 3 model (saved to a
            private folder for the worker; custom layers need a post-training-only recipe).
        recipe: a built-in recipe name, a recipe file, or a ``Recipe``.
        data: training/calibration data (.npz with x, y; or one array per input, named after
            it, and y).
        eval_data: evaluation data (same layout).
        output: the output directory (created; replaced when the run succeeds, or by the
            partial report when a pass fails after another one completed).
        profile: a device profile to check the final model against.
        target: a bench target (``local``, ``qemu``, ``ssh://...``) where every stage is
            timed (``tfedge bench``) and each channels stage's groups before and after (see
            ``tfedge.analyze.group_cost``).
        progress: draw stage lines and per-epoch bars on stderr.
        log: where stage lines go (default: stderr when ``progress``).
        resume: the OUTDIR of a run that failed at a stage: continue it from that stage with
            the (edited) recipe; ``output`` may be left out (it is this folder).
        trust_model: load Keras layers that carry Python code (Lambda); without it such a
            model is refused before anything runs it.

    Returns:
        OptimizeResult.

    Raises:
        RecipeError, DataError, ModelLoadError, TrainingError, ConversionError, OutputError.
    """
    from tfedge.io.models import trusting

    with trusting(trust_model):
        return _optimize(
            model, recipe, data, eval_data, output, profile, progress, log, resume, target
        )


def _optimize(
    model, recipe, data, eval_data, output, profile, progress: bool, log, resume, target=None
) -> OptimizeResult:
    started = time.perf_counter()
    recipe = load_recipe(recipe)
    _check_target(target)
    out = check_outdir(_output_of(output, resume))
    check_not_input(out, [model, data, eval_data, recipe.source], folder=True)
    train, evals = load_data(data), load_data(eval_data)
    require_labels(recipe, train)
    ota = ota_plan(recipe, train) if recipe.ota_base is not None else None
    previous = None if resume is None else read_state(out, model, recipe, train, evals)
    say = log or (_stderr_log if progress else None)
    with (
        made_parents(out.parent),
        staging_dir(out) as work,
        OptimizeWorker(say, progress) as worker,
    ):
        runner = _Runner(recipe, worker, work, say, out, previous, ota)
        try:
            runner.load(model, train, evals, profile)
            runner.run()
        except TfedgeError as exc:
            try:
                failure = runner.keep_partial(exc, model, train, evals, started)
            except Exception:  # noqa: BLE001  (keeping the partial report failed: the error stands)
                _debug_traceback("could not keep the partial report")
                failure = exc
            if failure is exc:
                raise
            raise failure from None
        keras = runner.finish()
        delta = None if ota is None else ota_finish(work, ota, evals, runner.stages[-1])
        measure_channel_groups(work, runner.stages, model, target, say)
        if target is not None:
            time_stages(work, runner.stages, target, say)
        seconds = round(time.perf_counter() - started, 2)
        notes = [keras["note"]] if keras["note"] else []
        resumed = previous.summary() if previous else None
        if ota is not None and not ota.matched:
            notes.append(f"ota_base: {ota.note}")
        if delta is not None and delta["scales_pinned"]:
            notes.append(
                "ota_base: model.tflite has the base's quantization scales (its accuracy is in "
                "report.json ota_base.pinning); the last stage's row is of the unpinned model"
            )
        write_reports(work, recipe, runner.stages, seconds, keras["keras_model"], notes, resumed)
        extend_reports(work, recipe, train, ota, delta)
        if ota is not None and delta is not None and say:
            say(f"ota_base: {ota.note}; delta {delta['delta_bytes']:,} bytes")
    return OptimizeResult(
        str(out),
        str(out / "model.tflite"),
        str(out / keras["keras_model"]),
        recipe.name,
        recipe.sha256,
        runner.stages,
        seconds,
        notes,
        resumed,
        delta,
    )


def _check_target(target: str | None) -> None:
    if target is None:
        return
    from tfedge.targets.bench import target_kind

    target_kind(target)


def _output_of(output, resume) -> Path:
    if resume is None:
        if output is None:
            raise OutputError("no output directory given", "pass -o OUTDIR")
        return Path(output)
    if output is not None and Path(output).resolve() != Path(resume).resolve():
        raise OutputError(
            f"--resume {resume} continues in that folder, but -o is {output}",
            "leave -o out when resuming, or give the same folder",
        )
    return Path(resume)


class _Runner:
    """Drives the worker through the stages of one recipe and keeps their measurements.

    The worker does the TensorFlow work (see ``tfedge.optimize.worker``); this side names the
    steps, applies the accuracy guard and keeps the rows. A resumed run (``previous``) starts
    with the earlier run's rows and checkpoint and goes on from the stage that failed.
    """

    def __init__(
        self,
        recipe: Recipe,
        worker: OptimizeWorker,
        work: Path,
        say,
        out: Path,
        previous: Previous | None = None,
        ota: OtaPlan | None = None,
    ) -> None:
        self.recipe, self.worker, self.work, self.out = recipe, worker, work, out
        self.ota = ota  # an ota_base run: the base's calibration, the frozen layers
        self.say = say or (lambda message: None)
        self.previous = previous
        self.stages: list[Stage] = []
        self.direct = None  # a Keras 3 model measured in this process (see _direct_input)

    def load(self, model, train: Dataset, evals: Dataset, profile) -> None:
        if self.previous is not None:
            self._load_resumed(model, train, evals, profile)
            return
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
                ota=self.ota,
            )
        except ModelLoadError:
            if self.recipe.passes and _is_keras3(model):
                _explain_keras3(model)
            raise

    def _load_resumed(self, model, train: Dataset, evals: Dataset, profile) -> None:
        previous = self.previous
        assert previous is not None
        source, _ = self._input(model, train, evals)
        self.worker.call(
            "load",
            model=source,
            recipe=self.recipe,
            train=train,
            evals=evals,
            work=str(self.work),
            profile=profile,
            ota=self.ota,
            resume={
                "checkpoint": str(previous.checkpoint or ""),
                "completed": previous.completed,
                "count": len(previous.stages),
            },
        )
        for row in previous.stages:  # the worker made stages/
            shutil.copyfile(self.out / row.tflite, self.work / row.tflite)

    def run(self) -> None:
        """Every stage, in order; each job answers with the rows measured so far (see worker)."""
        passes = self.recipe.passes
        total = len(passes) + 2
        first = 0
        if self.previous is not None:
            first = self.previous.completed
            for i, row in enumerate(self.previous.stages):
                self._step(i + 1, total, f"{row.name} (reused from the earlier run)")
                self.stages.append(row)
            if first == 0 and "qat" in self.recipe.pass_names:  # no checkpoint: fold again
                self._take(self._call("fold"))
        else:
            self._step(1, total, "float32")
            self._take(self._call("measure_input", name="float32", quant="none", last=False))
            self._step(2, total, "int8 (post-training)")
            quant = self.recipe.convert.quant
            self._take(self._call("measure_input", name="int8", quant=quant, last=not passes))
            if any(p.pass_name == "qat" for p in passes):
                self._take(self._call("fold"))
        for i in range(first, len(passes)):
            epochs = getattr(passes[i], "epochs", 0)
            doing = f": training {epochs} epoch{'s' if epochs != 1 else ''} ..." if epochs else ""
            self._step(i + 3, total, passes[i].pass_name + doing)
            self._take(self._call("apply", index=i, last=i == len(passes) - 1))
        self._take(self._call("collect"))

    def finish(self) -> dict:
        """model.tflite, model.keras (or model_tf_keras.keras, see the worker), recipe.yaml."""
        keras = self._call(
            "finish", final_tflite=self.stages[-1].tflite, save_keras=self.direct is None
        )
        if self.direct is not None:
            self.direct.save(self.work / "model.keras")
        (self.work / "recipe.yaml").write_text(self.recipe.text)
        return keras

    def keep_partial(self, exc: TfedgeError, model, train, evals, started: float) -> TfedgeError:
        """A pass stage failed: put the stages before it, and a checkpoint, in OUTDIR.

        Returns the error to raise: ``exc`` with a hint naming OUTDIR and ``--resume``, or an
        earlier stage's error if one failed too (its rows arrive late: conversions overlap the
        training). Nothing is kept (OUTDIR untouched) when no pass stage failed.
        """
        stage = getattr(exc, "stage", None)
        if stage is None or stage < FIRST_PASS_STAGE:
            return exc
        try:
            drained = self._call("drain", before=stage)
        except TfedgeError:
            return exc
        failure = exc
        if drained["failure"] is not None:
            stage, error = drained["failure"]
            if error is None:  # a bug, not a user's error: nothing to trust
                return exc
            failure = rebuild_error(error)
            failure.stage = stage  # type: ignore[attr-defined]
        for row in drained["rows"]:
            if len(self.stages) >= stage:
                break
            try:
                self._take([row])
            except TrainingError as guard:
                failure, stage = guard, guard.stage  # type: ignore[attr-defined]
        del self.stages[stage:]
        if len(self.stages) != stage or stage < FIRST_PASS_STAGE:
            return failure
        completed = stage - FIRST_PASS_STAGE
        checkpoint = self._checkpoint(completed) if completed else None
        self._clean_partial()
        failed = {
            "index": stage,
            "stage": self.recipe.passes[completed].pass_name,
            "pass_index": completed,
            "error": type(failure).__name__,
            "message": failure.message,
            "hint": failure.hint,
        }
        state = {
            "schema": STATE_SCHEMA,
            "failed": failed,
            "completed": completed,
            "checkpoint": checkpoint,
            "folded": "qat" in self.recipe.pass_names,
            "model": {"source": describe_model(model), "sha256": model_fingerprint(model)},
            "data": {"source": train.source, "sha256": data_fingerprint(train)},
            "eval": {"source": evals.source, "sha256": data_fingerprint(evals)},
            "recipe": {"sha256": self.recipe.sha256, **recipe_settings(self.recipe)},
            "stages": [asdict(s) for s in self.stages],
        }
        write_bytes_atomic(
            self.work / STATE_FILE, json.dumps(state, indent=2, default=json_default).encode()
        )
        (self.work / "recipe.yaml").write_text(self.recipe.text)
        seconds = round(time.perf_counter() - started, 2)
        resumed = self.previous.summary() if self.previous else None
        write_reports(
            self.work, self.recipe, self.stages, seconds, None, [], resumed, failed, checkpoint
        )
        publish(self.work, self.out)
        failure.hint = _resume_hint(
            failure.hint,
            failed["stage"],
            self.out,
            checkpoint,
            resumable=bool(checkpoint) or not completed,
        )
        return failure

    def _checkpoint(self, completed: int) -> str | None:
        """checkpoints/NN-<pass>: the model after the last completed pass, or None."""
        name = f"{completed - 1:02d}-{self.recipe.passes[completed - 1].pass_name}"
        saved = self.work / ".savedmodels" / name
        target = self.work / "checkpoints" / name
        previous = self.previous
        if saved.is_dir():
            target.parent.mkdir(exist_ok=True)
            os.replace(saved, target)
        elif previous is not None and previous.completed == completed and previous.checkpoint:
            shutil.copytree(previous.checkpoint, target)
        else:  # the model could not be saved without traces (see the worker): no resume
            return None
        return f"checkpoints/{name}"

    def _clean_partial(self) -> None:
        """Only what the kept stages need: no stage files after them, no QAT graph."""
        shutil.rmtree(self.work / ".savedmodels", ignore_errors=True)
        shutil.rmtree(self.work / "qat_savedmodel", ignore_errors=True)
        kept = {row.tflite for row in self.stages}
        for path in (self.work / "stages").glob("*"):
            if f"stages/{path.name}" not in kept:
                path.unlink()

    def _call(self, job: str, **args):
        return self.worker.call(job, **args)

    def _step(self, i: int, total: int, name: str) -> None:
        self.say(f"[{i}/{total}] {name}")

    def _take(self, rows: list[Stage]) -> None:
        for stage in rows:
            self.stages.append(stage)
            index = len(self.stages) - 1
            self._step(index + 1, len(self.recipe.passes) + 2, _done(stage))
            try:
                guard(self.recipe, self.stages[0], stage, self._pass_of(index))
            except TrainingError as exc:
                exc.stage = index  # type: ignore[attr-defined]
                raise

    def _pass_of(self, index: int):
        i = index - FIRST_PASS_STAGE
        return self.recipe.passes[i] if 0 <= i < len(self.recipe.passes) else None

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
        from tfedge.convert.worker import keras3_savedmodel
        from tfedge.io.models import detect_format, load_keras_model
        from tfedge.optimize.stages import keras_accuracy_of
        from tfedge.passes.base import PassContext

        with keep_keras_selection():
            if isinstance(model, (str, os.PathLike)):
                model = load_keras_model(detect_format(model))
            check_inputs(model, train, evals)
            path = self.worker.input_dir / "savedmodel"
            keras3_savedmodel(model, str(path))
            labelled = train.y if train.y is not None else np.zeros(0)
            ctx = PassContext(x=train.x, y=labelled, eval_x=evals.x, eval_y=evals.y)
            facts = {"accuracy": keras_accuracy_of(model, ctx), "params": model.count_params()}
        self.direct = model
        return str(path), facts


def _done(stage: Stage) -> str:
    """The stage line for a measured row: its time, accuracy (or MSE) and size."""
    score = (
        f"accuracy {100 * stage.accuracy:.2f}%"
        if stage.accuracy is not None
        else f"mse {stage.mse:.4g}"
        if stage.mse is not None
        else "no labels"
    )
    return (
        f"{stage.name}: done in {stage.seconds:.1f} s, {score}, "
        f"{stage.tflite_bytes:,} B (gzip {stage.gzip_bytes:,} B)"
    )


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


def require_labels(recipe: Recipe, train: Dataset) -> None:
    """DataError unless the training data has labels when the recipe has passes (they train)."""
    if recipe.passes and train.y is None:
        raise DataError(
            f"{train.source} has no labels (y); the passes of recipe '{recipe.name}' train",
            "save training data with np.savez(path, x=x, y=y)",
        )


def _resume_hint(hint: str, failed: str, out: Path, checkpoint: str | None, resumable: bool) -> str:
    kept = f"the stages before '{failed}' are kept in {out} (report.md"
    if not resumable:
        tail = f"{kept}; no checkpoint could be saved, so run again without --resume)"
    else:
        tail = (
            f"{kept}{', ' + checkpoint if checkpoint else ''}): edit the recipe and "
            f"continue from '{failed}' with "
            f"`tfedge optimize MODEL --resume {out} --recipe RECIPE --data DATA --eval EVAL`"
        )
    return f"{hint}; {tail}" if hint else tail


# ---- inputs -------------------------------------------------------------------------------


def _debug_traceback(what: str) -> None:
    """Under ``--debug``, print the exception being handled (it is otherwise left unsaid)."""
    from tfedge._tf import debug_enabled

    if debug_enabled():
        print(f"tfedge: {what}:\n{traceback.format_exc()}", file=sys.stderr)


def _stderr_log(message: str) -> None:
    import click

    click.echo(message, err=True)


# ---- outputs ------------------------------------------------------------------------------


def check_outdir(output) -> Path:
    """OUTDIR may be new, empty, or an earlier optimize output (it is then replaced on success).

    Missing parents are created by the run (``mkdir -p``) and removed again if it fails.
    """
    out = Path(output)
    parent = nearest_existing(out.parent if str(out.parent) else Path("."))
    if not parent.is_dir():
        raise OutputError(f"{parent} is not a directory", "give -o a path inside a directory")
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


def publish(work: Path, out: Path) -> None:
    """Put the staging folder ``work`` in place of ``out`` (its INCOMPLETE marker removed)."""
    (work / "INCOMPLETE").unlink()
    replace_dir(work, out)


@contextlib.contextmanager
def staging_dir(out: Path):
    """A sibling directory marked INCOMPLETE; renamed onto ``out`` if the block succeeds (or
    by ``publish`` in the block: the partial report of a failed run)."""
    work = Path(
        tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".incomplete", dir=out.parent or ".")
    )
    try:
        os.chmod(work, 0o755)
        (work / "INCOMPLETE").write_text(
            "tfedge optimize has not finished here; nothing in this folder is final\n"
        )
        yield work
        publish(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
