"""The optimize worker: one long-lived child process per ``optimize`` run for its TensorFlow work.

The caller's process validates the recipe, the data and the output directory, then starts
this worker once and feeds it one job per stage (load, measure the input, apply a pass,
finish). The worker imports TensorFlow with Keras 2 (``TF_USE_LEGACY_KERAS=1``, tf_keras,
tfmot) once, keeps the current model in memory between jobs, converts each stage in its own
process (no converter child) on a background thread while the next pass trains (see
``Session``), evaluates the ``.tflite`` files it just wrote, and answers with ``Stage`` rows.
So the caller never imports tf_keras: a session that uses Keras 3 keeps ``tf.keras`` on
Keras 3.

Messages are length-prefixed pickles on two pipes (the worker's stdout and stderr go to a
log file, so TensorFlow's chatter never mixes with them). A ``TfedgeError`` in the worker is
raised again in the caller with its type, message and hint; if the worker dies (a converter
crash, the OOM killer), the caller raises one error naming the signal and the job. The
worker exits when the run ends, fails or is interrupted.

Errors of a stage carry its index (``exc.stage``: 0 float32, 1 int8, 2 + i pass i), so the
caller can keep the stages before it: ``drain`` waits for the measurements still running and
returns the rows before the failed stage. ``load(resume=...)`` starts from a checkpoint of
an earlier, failed run. For a Keras 3 input, ``finish`` writes model.keras with Keras 3
(``tfedge.io.keras3_export``).

Example (what ``tfedge.optimize.pipeline`` does):
    >>> with OptimizeWorker(say=print) as worker:
    ...     worker.call("load", model="model.keras", recipe=recipe, ...)
    ...     stage = worker.call("measure_input", name="float32", quant="none", last=False)
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tfedge import errors
from tfedge.errors import TfedgeError
from tfedge.optimize.stages import keras_accuracy_of

HEADER = struct.Struct("!Q")


# ---- the caller's side ---------------------------------------------------------------------


class OptimizeWorker:
    """The caller's handle on the worker process: ``call(job, **args)`` returns its answer."""

    def __init__(self, say: Callable[[str], None] | None = None, progress: bool = False) -> None:
        self.say = say or (lambda message: None)
        self.tmp = Path(tempfile.mkdtemp(prefix="tfedge-optimize-"))
        self.job = "start"
        try:
            self.proc, self._send, self._recv = _spawn(self.tmp / "worker.log", progress)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def __enter__(self) -> OptimizeWorker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(kill=exc_type is not None)

    def call(self, job: str, **args):
        """Run ``job`` in the worker; its log lines go to ``say``; its errors are raised here."""
        self.job = job
        try:
            _write(self._send, (job, args))
        except (BrokenPipeError, OSError):
            self._raise_died()
        while True:
            message = _read(self._recv)
            if message is None:
                self._raise_died()
            kind, value = message
            if kind == "log":
                self.say(value)
            elif kind == "ok":
                return value
            else:
                raise _rebuild(kind, value)

    @property
    def input_dir(self) -> Path:
        """A private folder for inputs the caller hands over by path (deleted at the end)."""
        path = self.tmp / "input"
        path.mkdir(exist_ok=True)
        return path

    def close(self, kill: bool = False) -> None:
        """End the worker: ask it to exit, or kill it (after an error or an interrupt)."""
        try:
            if not kill and self.proc.poll() is None:
                _write(self._send, ("exit", {}))
                self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._send.close()
            self._recv.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _raise_died(self):
        code = self.proc.wait()
        why = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"
        tail = _last_line(self.tmp / "worker.log")
        raise errors.ConversionError(
            f"the optimize worker {why} during job '{self.job}'" + (f": {tail}" if tail else ""),
            "a converter or TensorFlow crash; run with --debug to see the worker's log",
        )


def _spawn(log_path: Path, progress: bool):
    to_worker, from_caller = os.pipe()
    to_caller, from_worker = os.pipe()
    progress_fd = os.dup(2) if progress else -1
    debug = os.environ.get("TFEDGE_DEBUG") == "1"
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}  # the worker's environment, not ours
    fds = (to_worker, from_worker) + ((progress_fd,) if progress_fd >= 0 else ())
    args = [str(to_worker), str(from_worker), str(progress_fd)]
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tfedge.optimize.worker", *args],
                stdin=subprocess.DEVNULL,
                stdout=None if debug else log,
                stderr=None if debug else log,
                pass_fds=fds,
                env=env,
            )
    finally:
        for fd in fds:
            os.close(fd)
    return proc, os.fdopen(from_caller, "wb"), os.fdopen(to_caller, "rb")


def rebuild_error(value: dict) -> TfedgeError:
    """A ``TfedgeError`` from the worker, as the caller raises it (same type and fields)."""
    exc = _rebuild("error", value)
    assert isinstance(exc, TfedgeError)
    return exc


def _rebuild(kind: str, value: dict) -> Exception:
    if kind == "error":  # a TfedgeError: same type, message, hint and fields
        cls = getattr(errors, value["type"], TfedgeError)
        exc = cls.__new__(cls)
        Exception.__init__(exc, value["message"])
        exc.__dict__.update(value["fields"])
        return exc
    return RuntimeError(f"the optimize worker failed:\n{value}")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _write(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def _read(stream):
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    data = stream.read(HEADER.unpack(header)[0])
    return pickle.loads(data)


# ---- the worker's side ---------------------------------------------------------------------


class Session:
    """The worker's state for one run: the recipe, the data, the current model, the stages.

    A stage is measured in two halves. The main thread, which owns the Keras models, scores
    the Keras model and saves it as a SavedModel (config, weights and serving signature: no
    per-layer traces); a background thread converts that SavedModel, evaluates the ``.tflite``
    and measures the file while the main thread trains the next pass. Jobs answer with the
    rows measured so far, in stage order; ``collect`` waits for the rest.
    """

    def __init__(self, say: Callable[[str], None], progress: bool) -> None:
        self.say, self.progress = say, progress
        self.count = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfedge-measure")
        self.pending: list[tuple[int, Future]] = []  # (stage index, its measurement)
        self.input_source: str | None = None
        self.keras3 = False
        self.ota = None

    def load(
        self, model, recipe, train, evals, work, profile, facts=None, resume=None, ota=None
    ) -> list:
        """Load the model, check every pass against it: all before any training.

        ``resume``: continue a failed run (see ``tfedge.optimize.pipeline``): ``checkpoint``
        (a SavedModel of the model after the last completed pass), ``completed`` (how many
        passes it went through) and ``count`` (how many stages are reused).
        ``ota``: a ``tfedge.optimize.ota_base.Plan`` (the base's calibration, frozen layers).
        """
        from tfedge.io.models import detect_format, load_tf_keras_model

        self.recipe, self.train, self.evals = recipe, train, evals
        self.work, self.profile, self.facts = Path(work), profile, facts or {}
        self.keras3 = bool(recipe.passes) and detect_format(model).is_keras3
        done = resume["completed"] if resume else 0
        if resume and resume["checkpoint"]:
            self.model = load_tf_keras_model(resume["checkpoint"])
        else:
            self.model = load_model_for(model, recipe)
        self.plain = self.model
        self.ota = ota
        if ota is not None and not isinstance(self.model, str):
            from tfedge.optimize.ota_base import check_signature, freeze

            check_signature(self.model, ota.model)
            freeze(self.model, ota.freeze)
        self.ctx = pass_context(recipe, self.model, train, evals, self.progress, self.say)
        if ota is not None and ota.freeze:  # frozen in every model a pass trains
            from tfedge.optimize.ota_base import freeze_context

            freeze_context(self.ctx, ota.freeze)
        self.ctx.applied = tuple(recipe.pass_names[:done])
        for p in recipe.passes[done:]:
            p.check(self.model, self.ctx)
        (self.work / "stages").mkdir()
        self.count = resume["count"] if resume else 0
        return []

    def measure_input(self, name: str, quant: str, last: bool) -> list:
        """The input model converted with ``quant``: the float32 and int8 stages."""
        started = time.perf_counter()
        if isinstance(self.model, str):  # the caller's SavedModel export (direct Keras 3 path)
            accuracy, params = self.facts.get("accuracy"), self.facts["params"]
            self._submit(name, self.model, quant, started, last, {}, accuracy, params)
            return self._done()
        if self.input_source is None:
            self.input_source = self._savedmodel(self.model, "input") or ""
        accuracy = keras_accuracy_of(self.model, self.ctx)
        source = self.input_source or self.model
        params = self.model.count_params()
        self._submit(name, source, quant, started, last, {}, accuracy, params)
        return self._done()

    def fold(self) -> list:
        """Fold BatchNormalization/ReLU into the Dense before them, and move activations tfmot
        cannot quantize inside a layer into their own, before any training pass."""
        from tfedge.passes.rebuild import fold_for_qat

        # Before prune and cluster, so that the kernels they shape are the ones QAT trains
        # and the converter writes (qat folds too, but then clustering would be undone).
        self.model, folded, moved = fold_for_qat(self.model)
        self.plain = self.model
        if folded:
            self.ctx.say(
                f"folded {len(folded)} BatchNormalization/ReLU layer(s) into the Dense before them"
            )
        if moved:
            self.ctx.say(f"moved the activation of {', '.join(moved)} into its own layer for qat")
        return self._done()

    def apply(self, index: int, last: bool) -> list:
        """Run pass ``index`` on the current model; its row comes back from a later job."""
        from tfedge.passes.batchnorm import reestimate_batchnorm

        p = self.recipe.passes[index]
        started = time.perf_counter()
        self.ctx.seed_all()
        try:
            result = p.apply(self.model, self.ctx)
        except TfedgeError as exc:
            _tag(exc, index + 2)  # stages: float32, int8, then one per pass
            raise
        self.ctx.applied += (p.pass_name,)
        if not result.quantize_wrapped and self.recipe.train.batchnorm == "reestimate":
            result.metrics["batchnorm_reestimated"] = reestimate_batchnorm(result.model, self.ctx)
        self.plain = self.plain if result.quantize_wrapped else result.model
        accuracy = keras_accuracy_of(result.model, self.ctx)
        if result.quantize_wrapped:
            saved: str | None = _qat_savedmodel(result.model, self.work)
        else:
            saved = self._savedmodel(result.model, f"{index:02d}-{p.pass_name}")
        quant, params = self.recipe.convert.quant, self.plain.count_params()
        source = saved or result.model
        self._submit(p.pass_name, source, quant, started, last, result.metrics, accuracy, params)
        self.model = result.model
        return self._done()

    def collect(self) -> list:
        """Every row not yet answered, once measured."""
        rows = []
        while self.pending:
            rows.append(_result(*self.pending.pop(0)))
        return rows

    def drain(self, before: int) -> dict:
        """After a failure: wait for every measurement still running (so nothing writes into
        the output any more); the rows of the stages before ``before``, and the first of them
        that failed (its stage and error) if one did."""
        rows: list = []
        failure = None
        for stage, future in self.pending:
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001  (reported below, or after the failure)
                if stage < before and failure is None:
                    failure = (stage, _error(exc) if isinstance(exc, TfedgeError) else None)
                continue
            if stage < before and failure is None:
                rows.append(row)
        self.pending = []
        return {"rows": rows, "failure": failure}

    def finish(self, final_tflite: str, save_keras: bool) -> dict:
        """Write model.tflite (the last stage) and model.keras (the last plain Keras model).

        For a Keras 3 input, model.keras is a Keras 3 file (``tfedge.io.keras3_export``,
        verified on seeded inputs); if that fails, the tf_keras model is written as
        model_tf_keras.keras instead (never a model.keras the user's Keras cannot load) and
        the answer says why.
        """
        self.collect()
        shutil.rmtree(self.work / ".savedmodels", ignore_errors=True)
        shutil.copyfile(self.work / final_tflite, self.work / "model.tflite")
        if not save_keras:
            return {"keras_model": "model.keras", "note": ""}
        if self.keras3:
            from tfedge.io.keras3_export import KerasExportError, save_as_keras3

            try:
                save_as_keras3(self.plain, self.work / "model.keras")
                return {"keras_model": "model.keras", "note": ""}
            except KerasExportError as exc:
                (self.work / "model.keras").unlink(missing_ok=True)
                self.plain.save(self.work / "model_tf_keras.keras")
                note = f"{exc.message}; model_tf_keras.keras is the tf_keras model"
                self.say(note)
                return {"keras_model": "model_tf_keras.keras", "note": note}
        self.plain.save(self.work / "model.keras")
        return {"keras_model": "model.keras", "note": ""}

    def _savedmodel(self, model, name: str) -> str | None:
        """``model`` as a SavedModel the background thread converts, or None to convert it here."""
        path = self.work / ".savedmodels" / name
        try:
            save_for_conversion(model, path)
        except Exception:  # noqa: BLE001  (a layer without get_config: convert the model object)
            shutil.rmtree(path, ignore_errors=True)
            return None
        return str(path)

    def _submit(self, name, source, quant, started, last, metrics, accuracy, params) -> None:
        stage = self.count
        path = self.work / "stages" / f"{stage:02d}-{name}.tflite"
        self.count += 1
        job = (name, source, path, quant, last, metrics, accuracy, params)
        seconds = time.perf_counter() - started
        if isinstance(source, str):  # a SavedModel path: convert it beside the next training
            self.pending.append((stage, self.pool.submit(self._measure, *job, seconds)))
        else:  # an in-memory model is converted here, by the thread that owns it
            done: Future = Future()
            try:
                done.set_result(self._measure(*job, seconds))
            except Exception as exc:  # noqa: BLE001  (raised in stage order, by _done)
                done.set_exception(exc)
            self.pending.append((stage, done))

    def _measure(self, name, source, path, quant, last, metrics, accuracy, params, seconds):
        from tfedge.convert.converter import convert
        from tfedge.optimize.stages import stage_row

        started = time.perf_counter()
        ota = self.ota if self.ota is not None and self.ota.calib is not None else None
        options = {
            "calib": self.train.x if ota is None else ota.calib,
            "calib_samples": self.recipe.convert.calib_samples if ota is None else ota.samples,
            "seed": self.recipe.seed if ota is None else ota.seed,
            "profile": self.profile if last else None,
        }
        if last and self.recipe.convert.precision:  # int8 but for the named layers
            from tfedge.convert.mixed import convert_mixed

            calib = options.pop("calib")
            convert_mixed(source, path, calib, self.recipe.convert.precision, **options)
        else:
            io = None if quant == "none" else self.recipe.convert.io
            convert(source, path, quant=quant, io=io, in_process=True, **options)
        seconds += time.perf_counter() - started
        return stage_row(name, path, self.evals, quant, seconds, metrics, accuracy, params)

    def _done(self) -> list:
        """The rows measured so far, in stage order (a failed measurement raises here)."""
        rows = []
        while self.pending and self.pending[0][1].done():
            rows.append(_result(*self.pending.pop(0)))
        return rows


def _result(stage: int, future: Future):
    """A measured row; a failed measurement raises here, tagged with its stage."""
    try:
        return future.result()
    except TfedgeError as exc:
        _tag(exc, stage)
        raise


def _tag(exc: TfedgeError, stage: int) -> None:
    """Say which stage ``exc`` stopped (index into the report's rows); travels with the error."""
    if getattr(exc, "stage", None) is None:
        exc.stage = stage  # type: ignore[attr-defined]


def _error(exc: TfedgeError) -> dict:
    return {"type": type(exc).__name__, "message": exc.message, "fields": vars(exc)}


def save_for_conversion(model, path: Path) -> None:
    """A SavedModel with the model's config, weights and serving signature, for the converter.

    No per-layer traces (``save_traces=False``): about a third of the time of a full save.
    Every layer must implement ``get_config`` (tfmot's wrappers and Keras' layers do).
    """
    from tf_keras.src.saving.legacy.saving_utils import trace_model_call

    serving = {"serving_default": trace_model_call(model)}
    model.save(path, save_format="tf", save_traces=False, signatures=serving)


def _qat_savedmodel(model, work: Path) -> str:
    """Keep a quantize-wrapped model as OUTDIR/qat_savedmodel and convert from that path.

    tf_keras cannot reload QAT models from .keras or .h5, so this SavedModel is the one
    reloadable copy of the QAT graph; converting from it avoids saving the model twice.
    It holds the config, the weights and the serving signature the converter reads (see
    ``save_for_conversion``); tfedge's loader reloads it in tfmot's scope.
    """
    path = work / "qat_savedmodel"
    try:
        save_for_conversion(model, path)
    except Exception:  # noqa: BLE001  (a layer without get_config: the full save traces it)
        shutil.rmtree(path, ignore_errors=True)
        model.save(path, save_format="tf")
    return str(path)


def load_model_for(model, recipe):
    """A tf_keras model for tfmot passes; a post-training-only recipe loads any Keras file.

    A SavedModel directory the caller exported (the direct Keras 3 path) stays a path: it is
    converted as it is, and the caller measured the Keras model itself.
    """
    from tfedge.io.models import detect_format, load_keras_model, load_tf_keras_model

    if recipe.passes:
        return load_tf_keras_model(model)
    fmt = detect_format(model)
    return fmt.path if fmt.kind == "savedmodel" else load_keras_model(fmt)


def check_inputs(model, train, evals) -> None:
    """DataError unless the training and evaluation data fit the Keras model's inputs."""
    from tfedge.io.data import arrange_inputs, check_labels, keras_input_specs

    specs = keras_input_specs(model)
    arrange_inputs(train.x, specs, f"training data {train.source}")
    arrange_inputs(evals.x, specs, f"evaluation data {evals.source}")
    classes = model.outputs[0].shape[-1] if len(model.outputs) == 1 else None
    for ds, what in ((train, "training"), (evals, "evaluation")):
        y = ds.y
        if classes and classes > 1 and y is not None and y.ndim == 1:
            check_labels(y, int(classes), f"{what} data {ds.source}")  # 999 or -1: not a class


def pass_context(recipe, model, train, evals, progress: bool, say):
    from tfedge.io.data import as_float32
    from tfedge.passes.base import PassContext

    if not isinstance(model, str):  # a SavedModel path: the caller checked (direct Keras 3 path)
        check_inputs(model, train, evals)
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


def serve(reader, writer, progress: bool) -> int:
    """Answer jobs until the caller says ``exit`` or goes away."""
    from tfedge._tf import import_tf

    import_tf()  # once, while the caller validates and sends the first job
    session = Session(lambda message: _write(writer, ("log", message)), progress)
    while True:
        message = _read(reader)
        if message is None or message[0] == "exit":
            return 0
        job, args = message
        try:
            value = getattr(session, job)(**args)
        except TfedgeError as exc:
            _write(writer, ("error", _error(exc)))
        except Exception:  # a bug or an unexpected library error: the traceback goes back
            _write(writer, ("bug", traceback.format_exc()))
        else:
            _write(writer, ("ok", value))


def main(argv: list[str]) -> int:
    read_fd, write_fd, progress_fd = (int(a) for a in argv[:3])
    if progress_fd >= 0:  # epoch bars go to the caller's terminal; everything else to the log
        sys.stderr = open(progress_fd, "w", buffering=1)  # noqa: SIM115
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:
        return serve(reader, writer, progress_fd >= 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
