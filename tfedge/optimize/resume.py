"""Resuming a failed ``optimize`` run: its state file, and the checks before reusing it.

A failed pass stage leaves ``resume.json`` in OUTDIR (see ``tfedge.optimize.pipeline``).
``read_state`` checks it against the new run (same model and data by sha256, the completed
passes and ``convert`` unchanged, the reused rows still within the guard) and returns what the
resumed run reuses. ``guard`` is the accuracy guard both use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfedge.errors import DataError, ModelLoadError, OutputError, RecipeError, TrainingError
from tfedge.fsutil import sha256_file
from tfedge.io.data import Dataset
from tfedge.optimize.recipe import Recipe
from tfedge.optimize.stages import Stage, json_default
from tfedge.passes.base import guard_hint_of

STATE_FILE = "resume.json"
STATE_SCHEMA = 1


def guard(recipe: Recipe, baseline: Stage, stage: Stage, p=None) -> None:
    """TrainingError if ``stage`` lost more accuracy than the recipe allows; the hint is the
    pass's own (``guard_hint`` on each pass class), then ``max_accuracy_drop``."""
    limit = recipe.max_accuracy_drop
    if limit is None or stage is baseline or baseline.accuracy is None or stage.accuracy is None:
        return
    drop = 100 * (baseline.accuracy - stage.accuracy)
    if drop > limit:
        what = f"in the recipe's {stage.name} pass: {guard_hint_of(p)}" if p else "in the recipe"
        raise TrainingError(
            f"stage '{stage.name}' lost {drop:.2f} points of accuracy ({baseline.accuracy:.4f} -> "
            f"{stage.accuracy:.4f}); the recipe allows {limit:g}",
            f"{what}; or raise max_accuracy_drop (now {limit:g})",
        )


@dataclass
class Previous:
    """What a resumed run reuses from the failed run in OUTDIR (read and checked)."""

    state: dict
    stages: list[Stage]
    completed: int
    checkpoint: Path | None  # None: the first pass failed, start from the input model
    changed: str = ""  # train/seed settings the reused passes trained with, if changed since

    def summary(self) -> dict:
        out = {
            "from_stage": self.state["failed"]["stage"],
            "reused": [s.name for s in self.stages],
            "earlier_failure": self.state["failed"]["message"],
        }
        if self.changed:
            out["reused_stages_trained_with"] = self.changed
        return out


def read_state(out: Path, model, recipe: Recipe, train: Dataset, evals: Dataset) -> Previous:
    """The failed run in ``out``, checked against this run's model, data and recipe.

    Raises:
        OutputError (no failed run there), ModelLoadError / DataError (another model or
        data), RecipeError (a completed pass or the train/convert settings changed),
        TrainingError (a reused stage fails the recipe's guard now).
    """
    again = "run without --resume to start over (OUTDIR is replaced when that run ends)"
    state = _load_state(out, again)
    if state["model"]["sha256"] != model_fingerprint(model):
        raise ModelLoadError(
            f"{describe_model(model)} is not the model the run in {out} started from "
            f"({state['model']['source']}; its sha256 differs)",
            f"resume with that model, or {again}",
        )
    for key, what, data in (("data", "training", train), ("eval", "evaluation", evals)):
        if state[key]["sha256"] != data_fingerprint(data):
            raise DataError(
                f"{data.source} is not the {what} data of the run in {out} "
                f"({state[key]['source']}; the arrays' sha256 differs)",
                f"resume with the same data, or {again}",
            )
    completed = int(state["completed"])
    _check_same_passes(recipe, state, completed, again)
    checkpoint = out / str(state.get("checkpoint") or "") if completed else None
    if checkpoint is not None and (not state.get("checkpoint") or not checkpoint.is_dir()):
        raise OutputError(
            f"the failed run in {out} kept no checkpoint to resume from", again.capitalize()
        )
    stages = [_stage(row) for row in state["stages"]]
    missing = [row.tflite for row in stages if not (out / row.tflite).is_file()]
    if missing:
        raise OutputError(f"{out} lacks {', '.join(missing)} of the failed run", again)
    for row in stages[1:]:
        try:
            guard(recipe, stages[0], row)
        except TrainingError as exc:
            raise TrainingError(
                f"{exc.message} (a stage --resume would reuse)",
                f"raise max_accuracy_drop, or {again}",
            ) from None
    for row in stages:
        row.reused = True
    old, new = state["recipe"], recipe_settings(recipe)
    changed = ", ".join(
        filter(None, (_changed({key: old[key]}, {key: new[key]}) for key in ("train", "seed")))
    )
    return Previous(state, stages, completed, checkpoint, changed)


def _load_state(out: Path, again: str) -> dict:
    path = out / STATE_FILE
    if not path.is_file():
        finished = (out / "model.tflite").exists()
        raise OutputError(
            f"{out} holds "
            + ("a finished run: nothing to resume" if finished else "no failed optimize run")
            + f" (no {STATE_FILE})",
            "give the OUTDIR of a run that stopped at a stage; or " + again,
        )
    try:
        state = json.loads(path.read_text())
        assert state["schema"] == STATE_SCHEMA
        for key in ("failed", "completed", "model", "data", "eval", "recipe", "stages"):
            assert key in state
    except (OSError, ValueError, KeyError, AssertionError, TypeError):
        raise OutputError(f"{path} is damaged or from another tfedge version", again) from None
    return state


def _check_same_passes(recipe: Recipe, state: dict, completed: int, again: str) -> None:
    """RecipeError unless the passes the failed run completed and ``convert`` are unchanged."""
    old, new = state["recipe"], recipe_settings(recipe)
    failed = state["failed"]["stage"]
    keep = f"edit only passes[{completed}] ({failed}) and later, or max_accuracy_drop; or {again}"
    if len(new["passes"]) < completed:
        raise RecipeError(
            f"the recipe has {len(new['passes'])} pass(es); the run being resumed completed "
            f"{completed} ({', '.join(p['name'] for p in old['passes'][:completed])})",
            keep,
        )
    for i in range(completed):
        before, now = old["passes"][i], new["passes"][i]
        if before["name"] != now["name"]:
            raise RecipeError(
                f"passes[{i}] is {now['name']}; the run being resumed ran {before['name']}",
                keep,
            )
        changed = _changed(before["options"], now["options"])
        if changed:
            raise RecipeError(
                f"passes[{i}] {now['name']} changed since the run being resumed ({changed}); "
                f"--resume reuses the stages before '{failed}' and needs them unchanged",
                keep,
            )
    changed = _changed({"convert": old["convert"]}, {"convert": new["convert"]})
    if changed:  # train and seed may change: they shape the passes still to run (reported)
        raise RecipeError(
            f"the recipe's {changed} changed since the run being resumed; the reused stages "
            "were converted with the old settings",
            keep,
        )
    if ("qat" in recipe.pass_names) != bool(state["folded"]):
        raise RecipeError(
            "adding or removing qat changes how the model is prepared before the first pass "
            "(BatchNormalization folding), so the reused stages do not fit",
            again.capitalize(),
        )


def _changed(before: dict, now: dict, prefix: str = "") -> str:
    """``key: old -> new`` for every key that differs (nested keys as ``train.learning_rate``)."""
    diffs = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _changed(a, b, f"{prefix}{key}.")
            diffs += [inner] if inner else []
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return ", ".join(diffs)


def recipe_settings(recipe: Recipe) -> dict:
    """What the completed stages depend on: each pass's normalised options, train, convert, seed."""
    return _plain_json(
        {
            "passes": [{"name": p.pass_name, "options": p.to_dict()} for p in recipe.passes],
            "train": recipe.train.to_dict(),
            "convert": recipe.convert.to_dict(),
            "seed": recipe.seed,
        }
    )


def _plain_json(value):
    return json.loads(json.dumps(value, default=json_default))


def _stage(row: dict) -> Stage:
    known = {f.name for f in dataclasses.fields(Stage)}
    return Stage(**{k: v for k, v in row.items() if k in known})


def describe_model(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return f"an in-memory {type(model).__name__} model"


def model_fingerprint(model) -> str:
    """sha256 of a model: of a file; of a .keras zip's members but its save-time metadata; of
    a SavedModel directory's files; of an in-memory model's config and weights."""
    digest = hashlib.sha256()
    if not isinstance(model, (str, os.PathLike)):
        digest.update(json.dumps(model.get_config(), default=str, sort_keys=True).encode())
        for weights in model.get_weights():
            digest.update(np.ascontiguousarray(weights).tobytes())
        return digest.hexdigest()
    path = Path(model)
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(item.relative_to(path)).encode() + sha256_file(item).encode())
        return digest.hexdigest()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for name in sorted(n for n in zf.namelist() if n != "metadata.json"):
                digest.update(name.encode() + hashlib.sha256(zf.read(name)).digest())
        return digest.hexdigest()
    return sha256_file(path)


def data_fingerprint(data: Dataset) -> str:
    """sha256 over a data set's arrays (names, dtypes, shapes, bytes): not its file format."""
    digest = hashlib.sha256()
    arrays = sorted(data.x.items()) if isinstance(data.x, dict) else [("x", data.x)]
    if data.y is not None:
        arrays.append(("y", data.y))
    for name, array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode() + array.tobytes())
    return digest.hexdigest()
