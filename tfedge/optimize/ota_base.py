"""``ota_base``: optimize a new version so that its OTA delta to the previous one stays small.

A recipe's top-level ``ota_base`` block names the ``.tflite`` a fleet already runs::

    ota_base:
      model: ../v1/model.tflite   # relative to the recipe file
      freeze: [conv*, dense_1]    # optional: layers no training pass may change
      calibration_data: null      # optional: the data v1 was calibrated with

With it, ``optimize``:

- calibrates every conversion with exactly the samples the base was calibrated with, when
  they can be known: every optimize run records its calibration (data file, sha256 of its
  arrays, seed, sample count) in OUTDIR/report.json, and the base's report.json (beside its
  ``.tflite``) is read back. The data is found as ``calibration_data``, this run's ``--data``
  or the file the base's report names, whichever has the recorded sha256; the recorded seed
  and count then draw the same samples. When none matches (or the base has no report), the
  run calibrates with its own data and says so (log, report);
- freezes the ``freeze`` layers (names or glob patterns; a pattern naming no layer is an
  error) before every training pass;
- checks that the base has the model's inputs and outputs (shapes without the batch);
- reports the delta (``tfedge.ota.delta``, what ``ota publish --deltas`` ships) from the base
  to the new model.tflite, in bytes and as a share of the new model's xz and zstd sizes
  (report.json ``ota_base``, report.md).

Pinning the base's quantization scales (rewriting the converted flatbuffer's parameters) is
not done: the report gives the measured delta.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tfedge.config import Config, Names, did_you_mean
from tfedge.errors import RecipeError, UsageError

REPORT = "report.json"
HINT_BASE = "give the .tflite of the previous version of this model (e.g. its optimize OUTDIR)"


class OtaBaseConfig(Config):
    """The recipe's ``ota_base:`` block."""

    model: str = Field(
        min_length=1, description="the .tflite devices run now (relative to the recipe file)"
    )
    freeze: Names = Field(
        default=(), description="layers (names or glob patterns) no training pass changes"
    )
    calibration_data: str | None = Field(
        default=None,
        description="the data the base was calibrated with; default: --data or the file "
        "its report.json names, whichever matches",
    )
    pin_scales: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="give model.tflite the base's quantization scales (then run and evaluate "
        "it again; kept only if it loses at most max_accuracy_drop, default 1 point, against "
        "the unpinned model and makes the delta smaller); auto: when the delta is over "
        "pin_above of the model's xz size",
    )
    pin_above: float = Field(
        default=0.15, gt=0, le=1, description="delta share of the xz size over which auto pins"
    )


def resolve_paths(config: OtaBaseConfig, base_dir: Path) -> OtaBaseConfig:
    """``config`` with its files made absolute (relative to the recipe file) and checked."""
    update = {}
    for key in ("model", "calibration_data"):
        value = getattr(config, key)
        if value is None:
            continue
        path = _resolved(base_dir, value)
        if not path.is_file():
            raise RecipeError(
                f"ota_base: {key} file {path} does not exist",
                "paths are relative to the recipe file; "
                + (HINT_BASE if key == "model" else "give the data the base was calibrated with"),
            )
        update[key] = str(path)
    return config.model_copy(update=update)


def _resolved(base_dir: Path, value: str) -> Path:
    try:
        return (base_dir / value).resolve()
    except (OSError, RuntimeError):  # a name over 255 bytes, a symlink loop
        return base_dir / value


# ---- the plan handed to the worker ---------------------------------------------------------


@dataclass
class Plan:
    """What the worker needs for an ``ota_base`` run (picklable)."""

    model: str  # the base .tflite
    base_sha256: str
    freeze: tuple[str, ...]
    calib: Any = None  # the calibration inputs, or None: this run's training data
    seed: int = 0
    samples: int = 256
    calibration: dict = field(default_factory=dict)  # the record this run writes
    matched: bool = False
    note: str = ""
    pin_scales: str = "auto"
    pin_above: float = 0.15
    max_drop: float = 1.0  # percentage points the pinned model may lose


def calibration_record(data, seed: int, samples: int) -> dict:
    """What report.json records of a run's calibration (``data`` a Dataset)."""
    from tfedge.optimize.resume import data_fingerprint

    return {
        "data": str(Path(data.source).resolve()) if _is_file(data.source) else data.source,
        "data_sha256": data_fingerprint(data),
        "seed": seed,
        "samples": samples,
    }


def _is_file(source: str) -> bool:
    try:
        return Path(source).is_file()
    except (OSError, ValueError):
        return False


def plan(recipe, train) -> Plan:
    """The base checked and its calibration matched (``train``: this run's data set)."""
    from tfedge.convert.tflite_model import read_tflite

    config = recipe.ota_base
    read_tflite(config.model)  # ModelLoadError when it is not a TFLite model
    raw = Path(config.model).read_bytes()
    result = Plan(
        model=config.model,
        base_sha256=hashlib.sha256(raw).hexdigest(),
        freeze=tuple(config.freeze),
        seed=recipe.seed,
        samples=recipe.convert.calib_samples,
        pin_scales=config.pin_scales,
        pin_above=config.pin_above,
        max_drop=1.0 if recipe.max_accuracy_drop is None else recipe.max_accuracy_drop,
    )
    record = _base_record(Path(config.model))
    if record is None:
        result.note = (
            f"the calibration of {config.model} is unknown (no {REPORT} with a calibration "
            "record beside it): calibrated with this run's data, so the delta may be larger"
        )
        result.calibration = calibration_record(train, recipe.seed, recipe.convert.calib_samples)
        return result
    data = _matching_data(config, record, train)
    if data is None:
        result.note = (
            f"could not find the data {config.model} was calibrated with "
            f"({record['data']}, sha256 {record['data_sha256'][:12]}): calibrated with this "
            "run's data, so the delta may be larger (set ota_base.calibration_data)"
        )
        result.calibration = calibration_record(train, recipe.seed, recipe.convert.calib_samples)
        return result
    result.calib, result.seed, result.samples = data.x, record["seed"], record["samples"]
    result.calibration = {**record, "data": data.source}
    result.matched = True
    result.note = (
        f"calibrated with the base's samples ({record['samples']} of {data.source}, "
        f"seed {record['seed']})"
    )
    return result


def _base_record(model: Path) -> dict | None:
    try:
        report = json.loads((model.parent / REPORT).read_text())
    except (OSError, ValueError):
        return None
    record = report.get("calibration") if isinstance(report, dict) else None
    keys = ("data", "data_sha256", "seed", "samples")
    if not isinstance(record, dict) or any(k not in record for k in keys):
        return None
    return record


def _matching_data(config: OtaBaseConfig, record: dict, train):
    """The data set whose arrays have the base's recorded sha256, or None."""
    from tfedge.io.data import load_data
    from tfedge.optimize.resume import data_fingerprint

    if config.calibration_data is not None:
        data = load_data(config.calibration_data)
        if data_fingerprint(data) != record["data_sha256"]:
            raise RecipeError(
                f"ota_base: calibration_data {config.calibration_data} is not the data "
                f"{config.model} was calibrated with (sha256 {record['data_sha256'][:12]})",
                f"give {record['data']}, or leave calibration_data out",
            )
        return data
    if data_fingerprint(train) == record["data_sha256"]:
        return train
    if _is_file(record["data"]):
        data = load_data(record["data"])
        if data_fingerprint(data) == record["data_sha256"]:
            return data
    return None


# ---- in the worker: checks and freezing ----------------------------------------------------


def check_signature(model, base: str) -> None:
    """RecipeError unless the base .tflite has the Keras ``model``'s inputs and outputs."""
    from tfedge.convert.tflite_model import read_tflite

    tflite = read_tflite(base)
    for what, keras, lite in (
        ("inputs", model.inputs, tflite.inputs),
        ("outputs", model.outputs, tflite.outputs),
    ):
        mine = [tuple(int(d or 0) for d in t.shape[1:]) for t in keras]
        theirs = [tuple(t.shape[1:]) for t in lite]
        if mine != theirs:
            raise RecipeError(
                f"ota_base: {base} has {what} {_shapes(theirs)}, the model {_shapes(mine)}",
                "a delta only helps between versions of the same model; " + HINT_BASE,
            )


def _shapes(shapes: list[tuple]) -> str:
    return ", ".join("(" + ", ".join(map(str, s)) + ")" for s in shapes) or "none"


def freeze(model, patterns: tuple[str, ...], strict: bool = True) -> list[str]:
    """Set the layers matching ``patterns`` (by name, or the name of the layer a tfmot
    wrapper holds) not trainable; their names. ``strict``: a pattern matching nothing is a
    RecipeError."""
    frozen = []
    names = []
    for layer in model.layers:
        inner = getattr(layer, "layer", None)  # a tfmot wrapper lists its layer's weights
        name = getattr(inner, "name", None) or layer.name
        names.append(name)
        if any(fnmatch.fnmatchcase(n, p) for n in (name, layer.name) for p in patterns):
            layer.trainable = False
            if inner is not None:
                inner.trainable = False
            frozen.append(name)
    if strict:
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise RecipeError(
                    f"ota_base.freeze: '{pattern}' names no layer of the model",
                    did_you_mean(pattern, names, "layers"),
                )
    return frozen


def freeze_context(ctx, patterns: tuple[str, ...]) -> None:
    """Make every training run of the passes (``ctx.compile`` then ``ctx.fit``) leave the
    ``patterns`` layers alone: not trainable when compiled, and their weights put back after
    every training step (a tfmot QAT wrapper trains its layer's kernel even when the layer is
    not trainable)."""
    compile_model, fit = ctx.compile, ctx.fit

    def compile_frozen(model, *args, **kwargs):
        freeze(model, patterns, strict=False)
        return compile_model(model, *args, **kwargs)

    def fit_frozen(model, epochs, stage, callbacks=None):
        return fit(model, epochs, stage, [*(callbacks or []), _keeper(model, patterns)])

    ctx.compile, ctx.fit = compile_frozen, fit_frozen


def _keeper(model, patterns: tuple[str, ...]):
    """A Keras callback restoring the weights of the ``patterns`` layers after each step."""
    from tfedge._tf import import_keras

    variables = [  # a wrapper holds its layer's kernel: the variables named after the layer
        v
        for layer in model.layers
        if any(fnmatch.fnmatchcase(_layer_name(layer), p) for p in patterns)
        for v in layer.weights
        if v.name.startswith(_layer_name(layer) + "/")
    ]

    class Keep(import_keras().callbacks.Callback):  # type: ignore[misc]
        def on_train_begin(self, logs=None):
            self.values = [v.numpy() for v in variables]

        def on_train_batch_end(self, batch, logs=None):
            for variable, value in zip(variables, self.values):
                variable.assign(value)

    return Keep()


def _layer_name(layer) -> str:
    return getattr(getattr(layer, "layer", None), "name", None) or layer.name


# ---- after the run: the delta against the base ---------------------------------------------


def delta_summary(base: str, new: Path) -> dict:
    """The delta from ``base`` to ``new`` in bytes and against the new model's xz/zstd size."""
    from tfedge.ota import compress
    from tfedge.ota.delta import compute_delta

    old, raw = Path(base).read_bytes(), new.read_bytes()
    delta = len(compute_delta(old, raw))
    sizes = {"xz": len(compress.compress(raw, "lzma"))}
    try:
        sizes["zstd"] = len(compress.compress(raw, "zstd"))
    except UsageError:  # zstandard is optional on the host
        pass
    summary: dict[str, Any] = {"delta_bytes": delta, "model_bytes": len(raw)}
    for codec, size in sizes.items():
        summary[f"{codec}_bytes"] = size
        summary[f"delta_share_of_{codec}"] = round(delta / size, 4)
    summary["bytes_changed"] = sum(a != b for a, b in zip(old, raw)) + abs(len(old) - len(raw))
    return summary


def finish(work: Path, ota: Plan, evals, final) -> dict:
    """The ``ota_base`` section of the reports: the delta from the base to model.tflite in
    ``work``; first, when ``ota.pin_scales`` asks, model.tflite pinned to the base's scales
    if the pinned model runs, loses at most ``ota.max_drop`` points against ``final`` (the
    last stage) on ``evals`` and has a smaller delta."""
    model = work / "model.tflite"
    section: dict[str, Any] = {
        "model": ota.model,
        "sha256": ota.base_sha256,
        "freeze": list(ota.freeze),
        "calibration_matched": ota.matched,
        "calibration_note": ota.note,
        **delta_summary(ota.model, model),
        "scales_pinned": False,
    }
    wanted = ota.pin_scales == "always" or (
        ota.pin_scales == "auto" and section["delta_share_of_xz"] > ota.pin_above
    )
    if not wanted:
        return section
    pinning = _pin(work, ota, evals, final, section["delta_bytes"])
    if pinning.pop("kept"):
        unpinned = {k: section[k] for k in section if k.startswith(("delta", "bytes_changed"))}
        section.update(delta_summary(ota.model, model), scales_pinned=True, unpinned=unpinned)
    section["pinning"] = pinning
    return section


def _pin(work: Path, ota: Plan, evals, final, delta_bytes: int) -> dict:
    """Try the base's scales on model.tflite; replace it when the result is good enough."""
    import os

    from tfedge.analyze.evaluate import evaluate
    from tfedge.errors import TfedgeError
    from tfedge.optimize.pin_scales import pin_scales

    model = work / "model.tflite"
    raw, changed, why = pin_scales(Path(ota.model).read_bytes(), model.read_bytes())
    if raw is None:
        return {"kept": False, "why": f"not pinned: {why}"}
    trial = work / ".pinned.tflite"
    trial.write_bytes(raw)
    try:
        accuracy = evaluate(trial, evals).accuracy  # in a child: a rewritten flatbuffer
    except TfedgeError as exc:
        trial.unlink()
        return {"kept": False, "why": f"the pinned model does not run: {exc.message}"}
    result = {"tensors": changed, "accuracy": accuracy, "accuracy_unpinned": final.accuracy}
    if accuracy is None or final.accuracy is None:
        why = "no accuracy to compare (data without labels)"
    elif 100 * (final.accuracy - accuracy) > ota.max_drop:
        why = f"it lost {100 * (final.accuracy - accuracy):.2f} points (limit {ota.max_drop:g})"
    elif len(_delta(ota.model, trial)) >= delta_bytes:
        why = "it did not make the delta smaller"
    else:
        os.replace(trial, model)
        return {**result, "kept": True, "why": ""}
    trial.unlink()
    return {**result, "kept": False, "why": f"pinned model not kept: {why}"}


def _delta(base: str, new: Path) -> bytes:
    from tfedge.ota.delta import compute_delta

    return compute_delta(Path(base).read_bytes(), new.read_bytes())


def extend_reports(work: Path, recipe, train, ota: Plan | None, section: dict | None) -> None:
    """Add the calibration record (every run) and the ``ota_base`` ``section`` (with a base)
    to report.json and report.md in ``work``."""
    report_path = work / REPORT
    report = json.loads(report_path.read_text())
    if ota is None:
        report["calibration"] = calibration_record(train, recipe.seed, recipe.convert.calib_samples)
    else:
        report["calibration"] = ota.calibration
        report["ota_base"] = section
    from tfedge.fsutil import write_bytes_atomic

    write_bytes_atomic(report_path, json.dumps(report, indent=2).encode())
    if section is not None:
        md = work / "report.md"
        write_bytes_atomic(md, (md.read_text() + "\n" + markdown(section) + "\n").encode())


def markdown(section: dict) -> str:
    """The report.md lines of the ``ota_base`` section."""
    shares = ", ".join(
        f"{100 * section[f'delta_share_of_{c}']:.1f}% of its {c} size ({section[f'{c}_bytes']:,} B)"
        for c in ("xz", "zstd")
        if f"delta_share_of_{c}" in section
    )
    frozen = ", ".join(section["freeze"]) or "none"
    return (
        f"OTA delta from the base `{section['model']}` (sha256 {section['sha256'][:12]}): "
        f"**{section['delta_bytes']:,} bytes**, {shares}; "
        f"{section['bytes_changed']:,} of {section['model_bytes']:,} bytes differ. "
        f"Frozen layers: {frozen}. Calibration: {section['calibration_note']}. "
        + _pinning_line(section)
    )


def _pinning_line(section: dict) -> str:
    pinning = section.get("pinning")
    if pinning is None:
        return "Quantization scales: not pinned (the delta is under pin_above, or never)."
    if not section["scales_pinned"]:
        return f"Quantization scales: {pinning['why']}."
    was = section["unpinned"]
    return (
        f"Quantization scales: **pinned to the base's** ({pinning['tensors']} tensors; "
        f"delta {was['delta_bytes']:,} B before; accuracy {100 * pinning['accuracy']:.2f}% "
        f"against {100 * pinning['accuracy_unpinned']:.2f}% unpinned, stages/ hold the "
        "unpinned models)."
    )


def as_dict(ota: Plan) -> dict:
    """``ota`` without its arrays (for logs and tests)."""
    data = asdict(ota)
    data.pop("calib")
    return data
