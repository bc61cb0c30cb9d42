"""``search``: the most accurate model within a device's budgets, and the trade-off around it.

Each trial is a recipe built from the space (``tfedge.search.space``), run through the
``optimize`` pipeline into ``OUTDIR/trials/NNNN`` and measured on the target
(``tfedge.search.objectives``); Optuna (``tfedge.search.study``) picks the next one. At the
end OUTDIR holds:

- ``pareto.json``: the budgets (and their kind), every trial (recipe, figures, feasible),
  the failed trials with their reasons, the feasible Pareto front and the best trial;
- ``pareto.md``: the front and then every trial as tables;
- ``report.html``: score against p50 latency and against gzip bytes (every trial, the front,
  the budgets, the best; ``tfedge.search.plots``) and the tables, in one self-contained page;
  the same plots as ``pareto_latency.svg`` and ``pareto_size.svg``;
- ``best/``: ``model.tflite``, ``recipe.yaml`` (reproduce it with ``tfedge optimize``) and
  ``bench.json`` of the most accurate trial within every budget (absent when none is);
- the study: ``study.db`` (or ``study.journal`` with several workers), ``baseline/`` (the int8
  post-training reference on a stand-in target), ``trials/``.

Example:
    >>> result = search("models/digits/model.keras", "models/digits/train.npz",
    ...                 "models/digits/test.npz", "out/search", profile="rpi4", trials=20)
    >>> result.budget_kind, len(result.front) >= 1
    ('relative', True)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tfedge.errors import OutputError, UsageError
from tfedge.search import devices as device_pool
from tfedge.search import pareto
from tfedge.search.formats import fastest_formats
from tfedge.search.groups import largest_groups
from tfedge.search.objectives import (
    Budget,
    Inputs,
    Measurement,
    absolute_budgets,
    budget_kind,
    relative_budgets,
)
from tfedge.search.precision import ranked_layers
from tfedge.search.space import Space, check_applies, dimensions, for_profile, load_space
from tfedge.search.study import (
    Settings,
    check_space,
    failures,
    measure_baseline,
    open_storage,
    open_study,
    recover_killed,
    rows,
    run_workers,
    search_lock,
    shown_url,
    storage_url,
    study_name,
)

MARKERS = ("study.db", "study.journal", "pareto.json", ".search.lock")


@dataclass
class SearchResult:
    """What ``search`` found and wrote."""

    output_dir: str
    study: str
    storage: str
    budget_kind: str
    budgets: list[dict]
    trials: list[dict]
    failed: list[dict]
    front: list[dict]
    best: dict | None
    closest: list[dict] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    formats: dict | None = None  # the fastest format on the target (``fastest_formats``)

    def to_dict(self) -> dict:
        return asdict(self)


def search(
    model,
    data,
    eval_data,
    output,
    *,
    target: str | None = None,
    inventory=None,
    profile: str | None = None,
    space=None,
    trials: int = 20,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int | None = None,
    seed: int = 0,
    trust_model: bool = False,
    progress: bool = False,
    measure: Measurement | None = None,
) -> SearchResult:
    """Search ``space`` for ``trials`` trials; write the front and ``best/`` in ``output``.

    Args:
        model, data, eval_data: as ``tfedge optimize`` (a model file, .npz training and
            evaluation data).
        output: OUTDIR (created; an earlier search's OUTDIR continues its study).
        target: ``local`` (the default), ``qemu`` or ``ssh://user@host...`` (as
            ``tfedge bench``).
        inventory: instead of ``target``, an inventory file (as ``tfedge bench
            --inventory``) or its loaded entries: interchangeable devices (one kind of
            target, one profile) that measure trials concurrently, one trial per device
            at a time.
        profile: a device profile name or file: its budgets (absolute on its own device,
            else the space's relative ones) and its full-integer rule.
        space: a ``Space``, a space .yaml file, or None for the default space.
        trials: finished trials wanted in the study (a re-run runs only those missing).
        timeout: seconds after which no new trial starts.
        storage: an SQLAlchemy URL (``postgresql://...``) instead of the file in OUTDIR.
        study: the study's name (default: derived from the model, data, target, profile).
        workers: local worker processes (a journal file storage when more than one);
            default 1, or one per device of ``inventory``.
        seed: seed of the sampler.
        progress: a line per trial on stderr.
        measure: a ``Measurement`` (``build`` then ``bench`` on a device) instead of
            optimize + bench (tests and benchmarks of the search itself).

    Raises:
        UsageError, RecipeError, ProfileError, OutputError; and the errors of the reference
        (int8 post-training) run. A failed trial is recorded, not raised.
    """
    started = time.time()
    devices, profile = _devices(target, inventory, profile)
    workers = workers if workers is not None else len(devices)
    _check_counts(trials, workers, timeout)
    where = device_pool.label(devices)
    inputs = Inputs(str(model), str(data), str(eval_data), where, profile, trust_model)
    space, prof, notes = _checked_space(space, devices[0].target, profile)
    kind = budget_kind(devices[0].target, prof)
    out = _check_outdir(Path(output))
    url = storage_url(out, storage, workers)
    remote = open_storage(url) if storage else None  # an unreachable server fails here
    if measure is None:  # the real trials: every searched pass must apply to the model
        check_applies(space, model, trust_model)
    out.mkdir(parents=True, exist_ok=True)
    with search_lock(out):
        settings = Settings(
            inputs=inputs,
            space=space,
            outdir=str(out),
            trials=trials,
            study_name=study or study_name(inputs, prof.name if prof else None),
            storage=url,
            budgets=[],
            devices=devices,
            seed=seed,
            timeout=timeout,
            measure=measure,
            progress=progress,
            started=started,
        )
        handle = remote if remote is not None else open_storage(url)
        opened = open_study(settings, handle, create=True)
        check_space(opened, space)
        recovered = [] if storage else recover_killed(opened, handle)
        if measure is None:
            settings.precision_layers = ranked_layers(space, opened, inputs, out, seed)
            settings.channel_groups = largest_groups(space, opened, inputs)
        if settings.channel_groups:
            names = ", ".join(settings.channel_groups)
            notes = notes + [f"channels: own keep ratio for the groups of {names}"]
        if settings.precision_layers:
            names = ", ".join(settings.precision_layers)
            notes = notes + [f"precision: the layers most sensitive to int8, in order: {names}"]
        settings.budgets = _budgets(kind, prof, space, settings, opened)
        run_workers(settings, workers)
        opened = open_study(settings, handle)
        result = _result(opened, settings, kind, url, recovered, notes, started)
        write_outputs(out, result)
    return result


def _devices(target: str | None, inventory, profile: str | None):
    """The devices trials are measured on, and the search's profile."""
    if inventory is None:
        return device_pool.single(target or "local", profile), profile
    if target is not None:
        raise UsageError(
            "--target and --inventory exclude each other",
            "list the devices in the inventory, or give one --target",
        )
    return device_pool.from_inventory(inventory, profile)


def _check_counts(trials: int, workers: int, timeout: float | None) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}", "e.g. --trials 20")
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}", "e.g. --workers 2")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout}", "e.g. --timeout 2h")


def _checked_space(space, target: str, profile) -> tuple[Space, Any, list[str]]:
    from tfedge.targets.bench import target_kind
    from tfedge.targets.profiles import load_profile

    target_kind(target)  # UsageError for an unknown target
    space = space if isinstance(space, Space) else load_space(space)
    prof = load_profile(profile) if profile is not None else None
    space, notes = for_profile(space, bool(prof and prof.requires_full_integer))
    dimensions(space)  # RecipeError when nothing is left to search
    return space, prof, notes


def _check_outdir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is a file", "give a directory for -o")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in MARKERS):
        raise OutputError(
            f"{out} exists and holds other files",
            "give a new or empty directory, or the OUTDIR of an earlier search to continue it",
        )
    return out


def _budgets(kind: str, prof, space: Space, settings: Settings, study) -> list[Budget]:
    if kind == "absolute":
        return absolute_budgets(prof)
    baseline = measure_baseline(settings, study)
    return relative_budgets(space.budgets, baseline, settings.inputs.target)


def _result(study, settings, kind, url, recovered, notes, started) -> SearchResult:
    trial_rows = rows(study)
    budgets = [b.to_dict() for b in settings.budgets]
    front = pareto.pareto_front(trial_rows)
    best = front[0] if front else None
    if not budgets:
        notes = notes + [f"no budgets: the profile sets none ({kind})"]
    return SearchResult(
        output_dir=settings.outdir,
        study=settings.study_name,
        storage=shown_url(url),
        budget_kind=kind,
        budgets=budgets,
        trials=trial_rows,
        failed=failures(study),
        front=front,
        best=best,
        closest=[] if best else pareto.closest(trial_rows, budgets),
        recovered=recovered,
        notes=notes,
        seconds=round(time.time() - started, 2),
        formats=fastest_formats(trial_rows, settings.inputs.target),
    )


def write_outputs(out: Path, result: SearchResult) -> None:
    """best/, pareto.json, pareto.md, report.html and the plots (each replaced whole)."""
    from tfedge.fsutil import write_bytes_atomic

    if result.best is not None:
        note = _write_best(out, result.best)
        result.notes += [note] if note else []
    write_bytes_atomic(out / "pareto.json", json.dumps(result.to_dict(), indent=2).encode())
    notes = [
        f"budget ({b['kind']}): {b['name']} <= {b['limit']:.6g} {b['unit']}, {b['how']}"
        for b in result.budgets
    ] + result.notes
    if result.formats:
        notes.append(result.formats["line"])
    if result.best is None and result.closest:
        notes += ["no trial meets every budget; the closest:"]
        notes += pareto.closest_lines(result.closest)
    text = pareto.markdown(result.front, "Pareto front (feasible trials)", notes)
    text += "\n" + pareto.markdown(result.trials, "All trials", [])
    write_bytes_atomic(out / "pareto.md", text.encode())
    write_plots(out, result)


def write_plots(out: Path, result: SearchResult) -> None:
    """report.html (both plots inline, the tables) and the plots as pareto_*.svg."""
    from tfedge.fsutil import write_bytes_atomic
    from tfedge.search import plots

    for key, name in plots.FILES.items():
        svg = plots.scatter_svg(result.trials, result.budgets, key)
        write_bytes_atomic(out / name, svg.encode())
    write_bytes_atomic(out / "report.html", plots.report_html(result.to_dict()).encode())


def _write_best(out: Path, best: dict) -> str:
    """best/: the model, the recipe that reproduces it, its bench figures.

    Returns a note when the model is not in this OUTDIR (measured by a worker on another
    machine sharing the study): best/ then holds the recipe only.
    """
    import yaml

    from tfedge.fsutil import replace_dir

    model = out / best["model"]
    stage = out / f".best.tmp-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    recipe = {"name": f"search-trial-{best['number']}", **best["recipe"]}
    (stage / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    note = ""
    if model.is_file():
        shutil.copyfile(model, stage / "model.tflite")
        bench = model.parent / "bench.json"
        if bench.is_file():
            shutil.copyfile(bench, stage / "bench.json")
    else:
        note = (
            f"best trial {best['number']} was measured elsewhere (its model is not in {out}): "
            "best/ has its recipe.yaml; rebuild it with `tfedge optimize -r best/recipe.yaml`"
        )
    replace_dir(stage, out / "best")
    return note
