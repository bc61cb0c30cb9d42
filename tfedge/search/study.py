"""The Optuna study behind ``tfedge search``: storage, sampler, workers, resume.

Storage (``open_storage``):

- one worker: an SQLite file, ``OUTDIR/study.db``;
- ``workers > 1`` local processes: Optuna's journal file, ``OUTDIR/study.journal`` (SQLite
  answers "database is locked" to concurrent writers);
- ``storage="postgresql://..."`` (any SQLAlchemy URL): passed through, for many machines;
  trials there send heartbeats, and one whose worker died is failed and retried
  (``RetryHeartbeatStaleTrialCallback``).

``tfedge search`` never replaces OUTDIR as a whole (only ``best/`` and the report files, each
atomically; every trial's optimize output is its own ``trials/NNNN``), so the study file can
live in it. A lock file (``OUTDIR/.search.lock``) keeps two searches out of one OUTDIR; so
when a search starts on a local storage, a trial still marked RUNNING was left by a killed run:
it is marked failed and queued again with the same parameters.

Resume: the same command again continues the study (same name: by default derived from the
model, the data, the target and the profile): trials left = ``trials`` minus finished ones
(completed, or failed with a recorded reason). The sampler (multivariate TPE with the
budgets as ``constraints_func``) is seeded with ``seed`` plus the number of trials so far, so
a resumed run does not replay the random start-up trials.

Workers: each worker asks Optuna for trials; a trial asked for when the finished trials and
those running ahead of it already make ``trials`` is dropped before it runs (``surplus``:
failed, marked ``surplus``, not counted), so the study ends at exactly ``trials``. Models are
benchmarked on the search's devices (``tfedge.search.devices``), one trial per device at a
time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import multiprocessing
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfedge.errors import OutputError, TfedgeError, UsageError
from tfedge.search.devices import Device, DevicePool
from tfedge.search.objectives import (
    DIRECTIONS,
    Budget,
    Inputs,
    Measured,
    Measurement,
    TrialRunner,
    excesses,
)
from tfedge.search.space import Space, recipe_data, suggest

SQLITE, JOURNAL, LOCK = "study.db", "study.journal", ".search.lock"
MAX_RETRY = 2
HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180


@dataclass
class Settings:
    """Everything a worker needs (picklable: workers are spawned processes)."""

    inputs: Inputs
    space: Space
    outdir: str
    trials: int
    study_name: str
    storage: str  # a URL, or "journal:PATH"
    budgets: list[Budget]
    devices: list[Device] = field(default_factory=list)  # where trials are benchmarked
    seed: int = 0
    timeout: float | None = None
    measure: Measurement | None = None  # None: TrialRunner (optimize + bench)
    progress: bool = False
    worker: int = 0
    started: float = field(default_factory=time.time)
    precision_layers: list[str] = field(default_factory=list)  # most sensitive first
    channel_groups: list[str] = field(default_factory=list)  # a layer per group, most MACs first


# ---- storage ---------------------------------------------------------------------------------


def storage_url(outdir: Path, storage: str | None, workers: int) -> str:
    """The storage for a search in ``outdir``: ``storage`` if given, else a file in ``outdir``."""
    if storage:
        if workers > 1 and storage.startswith("sqlite"):
            raise UsageError(
                "SQLite cannot take several workers' writes at once",
                "leave out --storage (a journal file is used), or use postgresql://...",
            )
        return storage
    journal, sqlite = outdir / JOURNAL, outdir / SQLITE
    if workers > 1 and sqlite.exists() and not journal.exists():
        raise UsageError(
            f"this search started with one worker: its study is in {sqlite}",
            "continue it without --workers, or start a new OUTDIR for several workers",
        )
    if workers > 1 or journal.exists():
        return f"journal:{journal}"
    return f"sqlite:///{sqlite}"


def open_storage(url: str):
    """An Optuna storage for ``url`` (RDB URLs with heartbeats, ``journal:PATH`` a file)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    quiet_optuna()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    try:
        return RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(MAX_RETRY),
        )
    except Exception as exc:  # noqa: BLE001  (SQLAlchemy's errors: bad URL, no server, no driver)
        raise OutputError(
            f"cannot open the study storage {shown_url(url)}: {_first_line(exc)}",
            "check the URL, that the server runs and that its driver is installed "
            "(psycopg for postgresql://)",
        ) from None


def shown_url(url: str) -> str:
    """``url`` without its password."""
    if url.startswith(("journal:", "sqlite")):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def search_lock(outdir: Path) -> Iterator[None]:
    """Hold OUTDIR's lock for the whole search; OutputError when another search holds it."""
    with open(outdir / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"another `tfedge search` is running in {outdir}",
                "wait for it, or give another -o OUTDIR",
            ) from None
        yield


def study_name(inputs: Inputs, profile_name: str | None) -> str:
    """``search-`` and a hash of the model, both data sets, the target and the profile."""
    parts = [_content_hash(Path(p)) for p in (inputs.model, inputs.data, inputs.eval_data)]
    parts += [inputs.target, profile_name or ""]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"search-{digest[:12]}"


def _content_hash(path: Path) -> str:
    from tfedge.fsutil import sha256_file

    if path.is_file():
        return sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())  # a SavedModel folder
    listing = "\n".join(f"{p.relative_to(path)} {sha256_file(p)}" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


# ---- study -----------------------------------------------------------------------------------


def quiet_optuna() -> None:
    """Optuna's own log lines and experimental-feature warnings off: search prints its own."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def open_study(settings: Settings, storage=None, *, create: bool = False):
    """The study of ``settings`` with its sampler (created when ``create``)."""
    import optuna

    quiet_optuna()
    storage = storage if storage is not None else open_storage(settings.storage)
    if create:
        optuna.create_study(
            storage=storage,
            study_name=settings.study_name,
            directions=list(DIRECTIONS),
            load_if_exists=True,
        )
    study = optuna.load_study(study_name=settings.study_name, storage=storage)
    study.sampler = make_sampler(settings, len(study.trials))
    return study


def make_sampler(settings: Settings, done: int):
    """Multivariate TPE with the budgets as constraints, for tens of trials."""
    import optuna

    return optuna.samplers.TPESampler(
        multivariate=True,
        constraints_func=constraints if settings.budgets else None,
        n_startup_trials=max(2, min(10, settings.trials // 3)),
        seed=settings.seed + done + 1000 * settings.worker,
    )


def constraints(trial) -> list[float]:
    """The budgets' excesses stored with the trial (<= 0: within)."""
    return list(trial.user_attrs.get("excess", []))


def check_space(study, space: Space) -> None:
    """Record the space's hash on a new study; refuse to continue one under another space."""
    recorded = study.user_attrs.get("space_sha256")
    if recorded is None:
        study.set_user_attr("space_sha256", space.sha256)
        study.set_user_attr("space", space.to_dict())
    elif recorded != space.sha256:
        raise UsageError(
            f"study '{study.study_name}' was searched with another --space",
            "use the same space to continue it, or --study NEW_NAME (or a new -o OUTDIR)",
        )


def recover_killed(study, storage) -> list[int]:
    """Fail the trials a killed run left RUNNING and queue them again (local storages only)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    retry = RetryHeartbeatStaleTrialCallback(MAX_RETRY)
    found = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            retry(study, storage.get_trial(trial._trial_id))
            found.append(trial.number)
    return found


def finished(study) -> int:
    """Trials that count against ``--trials``: completed, or failed with a recorded reason."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    return sum(1 for t in trials if t.state == TrialState.COMPLETE or "error" in t.user_attrs)


# ---- running ---------------------------------------------------------------------------------


def run_workers(settings: Settings, workers: int) -> None:
    """Run the study in this process (one worker) or in ``workers`` spawned processes."""
    if workers == 1:
        run_worker(settings)
        return
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_worker_main, args=(_as_worker(settings, i),), daemon=False)
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    failed = [str(p.exitcode) for p in procs if p.exitcode]
    if failed:
        raise OutputError(
            f"{len(failed)} of {workers} search workers stopped with an error "
            f"(exit {', '.join(failed)})",
            "see their messages above; re-run the same command to continue the study",
        )


def _as_worker(settings: Settings, index: int) -> Settings:
    from dataclasses import replace

    return replace(settings, worker=index)


def _worker_main(settings: Settings) -> None:
    try:
        run_worker(settings)
    except TfedgeError as err:
        print(f"Error: worker {settings.worker}: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: the parent reports it
        sys.exit(130)


def run_worker(settings: Settings) -> None:
    """Ask for trials until the study has ``settings.trials`` finished ones (or time is up)."""
    study = open_study(settings)
    if finished(study) >= settings.trials:
        return
    objective = Objective(settings)
    study.optimize(
        objective,
        timeout=_time_left(settings),
        catch=(Exception,),
        callbacks=[_Stop(settings), objective.report],
    )


def _time_left(settings: Settings) -> float | None:
    if settings.timeout is None:
        return None
    return max(1.0, settings.timeout - (time.time() - settings.started))


class _Stop:
    """Stops the study once enough trials finished (checked after each trial)."""

    def __init__(self, settings: Settings) -> None:
        self.trials = settings.trials

    def __call__(self, study, trial) -> None:
        if finished(study) >= self.trials:
            study.stop()


class Surplus(Exception):
    """A trial asked for when the study already has enough finished or running ones."""


def surplus(trial, wanted: int) -> bool:
    """Whether the study's finished trials and those running ahead of ``trial`` (asked
    for before it, so numbered lower) already make ``wanted``.

    Trial numbers come from the storage, one at a time, so of the workers that asked for a
    trial at the end of a study exactly the ones needed go on: ``--trials`` is exact.
    """
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)
    counted = 0
    for other in trial.study.get_trials(deepcopy=False, states=states):
        if other.state == TrialState.RUNNING:
            counted += other.number < trial.number
        else:
            counted += other.state == TrialState.COMPLETE or "error" in other.user_attrs
    return counted >= wanted


def make_pool(settings: Settings) -> DevicePool:
    """The search's devices, shared by the workers through lock files in OUTDIR."""
    return DevicePool(settings.devices, Path(settings.outdir), first=settings.worker)


def measure_on(measurement: Measurement, pool: DevicePool, recipe, trial_dir: Path):
    """Build ``recipe`` on this host, then bench it on a device taken from ``pool``.

    Returns the figures and where and when the device measured it (``device``, ``target``,
    ``started``, ``ended``: wall-clock seconds while the device was held).
    """
    built = measurement.build(recipe, trial_dir)
    with pool.take() as device:
        started = time.time()
        measured = measurement.bench(built, device, trial_dir)
        ended = time.time()
    window = {"device": device.name, "target": device.target, "started": started, "ended": ended}
    return measured, window


class Objective:
    """One trial: sample, build the recipe, reuse or measure, store the figures."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.out = Path(settings.outdir)
        self.measure = settings.measure or TrialRunner(settings.inputs, settings.space.measure)
        self.pool = make_pool(settings)

    def __call__(self, trial) -> tuple[float, float, float]:
        if surplus(trial, self.settings.trials):  # another worker's trial completes the study
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise Surplus(f"trial {trial.number} is not needed: the study has enough trials")
        try:
            return self._run(trial)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, TfedgeError) else repr(exc)
            trial.set_user_attr("error", reason)
            raise

    def _run(self, trial) -> tuple[float, float, float]:
        from tfedge.optimize.recipe import parse_recipe

        params = suggest(trial, self.settings.space)
        s = self.settings
        data = recipe_data(params, s.space, s.precision_layers, s.channel_groups)
        trial.set_user_attr("recipe", data)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        recipe = parse_recipe(_yaml(data), f"trial {trial.number}")
        sha = recipe.canonical_sha256
        trial.set_user_attr("recipe_sha256", sha)
        earlier = measured_before(trial.study, sha)
        if earlier is not None:
            number, measured = earlier
            trial.set_user_attr("duplicate_of", number)
        else:
            measured, window = self._measure(recipe, trial.number)
            trial.set_user_attr("measured_on", window)
        trial.set_user_attr("measured", measured.to_dict())
        trial.set_user_attr("excess", excesses(self.settings.budgets, measured))
        return measured.objectives

    def _measure(self, recipe, number: int) -> tuple[Measured, dict]:
        trial_dir = self.out / "trials" / f"{number:04d}"
        measured, window = measure_on(self.measure, self.pool, recipe, trial_dir)
        measured.model = str(Path("trials") / f"{number:04d}" / "model.tflite")
        return measured, window

    def report(self, study, trial) -> None:
        """A progress line per trial on stderr (with ``settings.progress``); none for a
        surplus trial (dropped before it ran)."""
        if not self.settings.progress or trial.user_attrs.get("surplus"):
            return
        done = finished(study)
        left = max(0, self.settings.trials - done)
        elapsed = time.time() - self.settings.started
        eta = f", ETA {elapsed / max(done, 1) * left / 60:.1f} min" if left else ""
        print(
            f"trial {trial.number}: {describe_trial(trial)} [{done}/{self.settings.trials} done, "
            f"{_front_summary(study)}{eta}]",
            file=sys.stderr,
            flush=True,
        )


def _front_summary(study) -> str:
    """``front 3, best 97.2%`` (the feasible front so far)."""
    from tfedge.search.pareto import pareto_front

    front = pareto_front(rows(study))
    if not front:
        return "no trial within the budgets yet"
    best = front[0]
    score = (
        f"{100 * best['accuracy']:.2f}%" if best["accuracy"] is not None else f"{best['score']:.4g}"
    )
    return f"front {len(front)}, best {score} (trial {best['number']})"


def measured_before(study, sha: str) -> tuple[int, Measured] | None:
    """(trial number, figures) of a completed trial with recipe hash ``sha``, or the baseline."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if attrs.get("recipe_sha256") == sha and "measured" in attrs:
            return attrs.get("duplicate_of", trial.number), Measured.from_dict(attrs["measured"])
    baseline = study.user_attrs.get("baseline")
    if baseline and baseline.get("recipe_sha256") == sha:
        return -1, Measured.from_dict(baseline["measured"])
    return None


def describe_trial(trial) -> str:
    """``prune 0.6, cluster 16, int8 -> 97.2%, 0.41 ms, 5123 B gzip, feasible`` or the error."""
    attrs = trial.user_attrs
    recipe = attrs.get("recipe", {})
    passes = [
        f"{name} {_main_option(opts)}" for p in recipe.get("passes", []) for name, opts in p.items()
    ]
    convert = recipe.get("convert", {})
    layers = [f"{layer} {kind}" for layer, kind in convert.get("precision", {}).items()]
    quant = convert.get("quant", "?") + (f" ({', '.join(layers)})" if layers else "")
    what = ", ".join(passes + [quant])
    if "error" in attrs:
        return f"{what} -> failed: {attrs['error']}"
    m = attrs.get("measured")
    if m is None:
        return f"{what} -> {trial.state.name.lower()}"
    score = (
        f"{100 * m['accuracy']:.2f}%"
        if m.get("accuracy") is not None
        else f"score {m['score']:.4g}"
    )
    ok = "feasible" if all(e <= 0 for e in attrs.get("excess", [])) else "over budget"
    dup = _duplicate(attrs.get("duplicate_of"))
    return f"{what} -> {score}, {m['p50_ms']:.3f} ms, {m['gzip_bytes']} B gzip, {ok}{dup}"


def _main_option(options: dict) -> str:
    for key in ("keep", "param_ratio", "target_sparsity", "clusters", "epochs"):
        if key in options:
            return f"{options[key]:g}" if isinstance(options[key], float) else str(options[key])
    return ""


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def measure_baseline(settings: Settings, study) -> Measured:
    """The int8 post-training model on the target (stored with the study, measured once)."""
    from tfedge.optimize.recipe import parse_recipe
    from tfedge.search.space import BASELINE_RECIPE

    stored = study.user_attrs.get("baseline")
    if stored:
        return Measured.from_dict(stored["measured"])
    recipe = parse_recipe(_yaml(BASELINE_RECIPE), "baseline (int8 post-training)")
    if settings.progress:
        where = settings.inputs.target
        print(f"baseline: the int8 post-training model on {where} ...", file=sys.stderr, flush=True)
    out = Path(settings.outdir)
    runner = settings.measure or TrialRunner(settings.inputs, settings.space.measure)
    try:
        measured, window = measure_on(runner, make_pool(settings), recipe, out / "baseline")
    except TfedgeError as err:
        raise type(err)(
            f"the int8 post-training reference failed: {err.message}", err.hint
        ) from None
    measured.model = str(Path("baseline") / "model.tflite")
    study.set_user_attr(
        "baseline",
        {
            "recipe_sha256": recipe.canonical_sha256,
            "measured": measured.to_dict(),
            "measured_on": window,
        },
    )
    return measured


def rows(study) -> list[dict[str, Any]]:
    """One plain row per measured (completed) trial, for the Pareto front and the reports."""
    from optuna.trial import TrialState

    found = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if "measured" not in attrs:
            continue
        m = attrs["measured"]
        found.append(
            {
                "number": trial.number,
                "recipe_sha256": attrs["recipe_sha256"],
                "recipe": attrs["recipe"],
                "duplicate_of": attrs.get("duplicate_of"),
                **{k: m[k] for k in ("score", "accuracy", "mse", "p50_ms", "peak_rss_mb")},
                **{k: m[k] for k in ("tflite_bytes", "gzip_bytes", "model")},
                "device": m.get("bench", {}).get("device"),
                "excess": attrs.get("excess", []),
            }
        )
    return found


def failures(study) -> list[dict[str, Any]]:
    """The trials that failed with a reason."""
    from optuna.trial import TrialState

    return [
        {"number": t.number, "recipe": t.user_attrs.get("recipe"), "error": t.user_attrs["error"]}
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if "error" in t.user_attrs
    ]


def _duplicate(number: int | None) -> str:
    if number is None:
        return ""
    return " (the baseline's recipe)" if number < 0 else f" (same recipe as trial {number})"
