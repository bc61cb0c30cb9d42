#!/usr/bin/env python3
"""The `keras.applications` zoo through tfedge's recipes (issue 11): does each family a Pi user
would pick become a verified full-int8 model, how small, and how much accuracy does it lose?

Per family x Keras version x recipe: the family is built with ``weights=None`` (no downloads)
at ``--size`` px as ONE nested layer under a new head, the way transfer-learning code writes
it::

    base = keras.applications.X(weights=None, include_top=False, input_shape=(s, s, 3))
    out = Dense(n, softmax)(GlobalAveragePooling2D()(base(inp)))

trained for ``--float-epochs`` on a learnable synthetic task (class-dependent coloured
stripes with noise, from a fixed seed; families whose ``keras.applications`` model rescales
its own input get 0-255 pixels, the others 0-1), and saved to ``.keras`` by a child process
with that Keras: Keras 3 (the ``keras`` package, ``TF_USE_LEGACY_KERAS`` unset) or tf_keras
(Keras 2). Then ``tfedge optimize`` runs on the file, as a fresh process, with each recipe
shortened to one epoch per pass (``recipe_variant``: the built-in YAML with every ``epochs``
set to 1, 64 calibration samples and no accuracy guard, so the drop is measured rather than
refused).

Recorded per row: success or the one-line ``Error:``, full-integer (the verifier read on the
final ``.tflite``), float32 and final ``.tflite`` bytes, gzip -9 bytes of the final file,
float and final accuracy (``.tflite``, on the held-out split) and the drop, wall time.
Writes bench-results/zoo.{json,md}.

Usage:
    python scripts/bench_zoo.py --quick                  # one small family, int8, Keras 3
    python scripts/bench_zoo.py [--families MobileNetV2,ResNet50] [--keras 2,3]
                                [--recipes int8,prune-cluster-qat,max-compress] [--size 32]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tfedge.fsutil import write_bytes_atomic  # noqa: E402

# family -> does its keras.applications model rescale 0-255 pixels itself?
FAMILIES = {
    "MobileNetV2": False,
    "MobileNetV3Small": True,
    "MobileNetV3Large": True,
    "EfficientNetB0": True,
    "EfficientNetV2B0": True,
    "ResNet50": False,
    "DenseNet121": False,
    "NASNetMobile": False,
    "ConvNeXtTiny": True,
}
RECIPES = ("int8", "prune-cluster-qat", "max-compress")
KERAS = {"2": "tf_keras", "3": "Keras 3"}

# Runs in a child: builds, trains and saves one family with the requested Keras.
BUILDER = """
import json, os, sys
args = json.loads(sys.argv[1])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if args["keras"] == "2":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras as keras
else:
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import keras
import numpy as np

keras.utils.set_random_seed(args["seed"])
with np.load(args["train"]) as f:
    x, y = f["x"], f["y"]
s, n = args["size"], args["classes"]
inp = keras.Input((s, s, 3), name="image")
base = getattr(keras.applications, args["family"])(
    weights=None, include_top=False, input_shape=(s, s, 3)
)
out = keras.layers.Dense(n, activation="softmax", name="head")(
    keras.layers.GlobalAveragePooling2D(name="pool")(base(inp))
)
model = keras.Model(inp, out, name=args["family"].lower() + "_transfer")
# BatchNormalization's moving statistics settle in the few steps of this short training
bns = [l for l in model._flatten_layers() if hasattr(l, "moving_mean")]
momenta = [l.momentum for l in bns]
for layer in bns:
    layer.momentum = 0.8
model.compile(
    optimizer=keras.optimizers.Adam(1e-3),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
)
model.fit(x, y, batch_size=32, epochs=args["epochs"], verbose=0)
for layer, momentum in zip(bns, momenta):
    layer.momentum = momentum
model.save(args["out"])
print(json.dumps({"params": int(model.count_params()), "keras": keras.__version__}))
"""


# ---------------------------------------------------------------- the synthetic task
def synthetic_images(n: int, size: int, classes: int, seed: int, scale: float):
    """Class c: stripes at angle c*pi/classes in colour c, random phase and frequency, on a
    random dark background with noise. Learnable in a few epochs, never trivially."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    palette = np.array(
        [
            [1.0, 0.2, 0.2],
            [0.2, 1.0, 0.2],
            [0.3, 0.3, 1.0],
            [1.0, 1.0, 0.2],
            [1.0, 0.3, 1.0],
            [0.2, 1.0, 1.0],
            [1.0, 0.6, 0.1],
            [0.7, 0.7, 0.7],
        ],
        dtype=np.float32,
    )
    x = np.empty((n, size, size, 3), np.float32)
    for i, c in enumerate(y):
        angle = np.pi * c / classes + rng.normal(0, 0.08)
        freq = rng.uniform(3.0, 5.0)
        wave = np.sin(
            2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3)
        )
        stripes = (wave > 0).astype(np.float32)[..., None]
        colour = palette[c % len(palette)] * rng.uniform(0.6, 1.0)
        background = rng.uniform(0.0, 0.3, 3).astype(np.float32)
        img = background + stripes * (colour - background) + rng.normal(0, 0.08, (size, size, 3))
        x[i] = np.clip(img, 0.0, 1.0)
    return (x * scale).astype(np.float32), y.astype(np.int64)


def write_data(folder: Path, size: int, classes: int, n_train: int, n_test: int, scale: float):
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = synthetic_images(n, size, classes, seed, scale)
        np.savez(folder / f"{name}.npz", x=x, y=y)
    return folder / "train.npz", folder / "test.npz"


# ---------------------------------------------------------------- recipes
def recipe_variant(name: str, folder: Path, calib_samples: int) -> Path:
    """The built-in recipe ``name`` with every pass trained for one epoch, ``calib_samples``
    calibration samples and no accuracy guard (the drop is what this benchmark measures)."""
    import yaml

    from tfedge.optimize.recipe import RECIPE_DIR, load_recipe

    data = yaml.safe_load((RECIPE_DIR / f"{name}.yaml").read_text())
    for entry in data.get("passes") or []:
        for options in entry.values():
            if isinstance(options, dict) and "epochs" in options:
                options["epochs"] = 1
    data.setdefault("convert", {})["calib_samples"] = calib_samples
    data.pop("max_accuracy_drop", None)
    data["name"] = name
    data["seed"] = 0
    path = folder / f"{name}.yaml"
    path.write_text(f"# {name}, shortened by scripts/bench_zoo.py\n" + yaml.safe_dump(data))
    load_recipe(path)  # valid before anything trains
    return path


# ---------------------------------------------------------------- one row
def child_env(keras: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)  # tfedge sets it in its own worker only
    if keras == "2":
        env["TF_USE_LEGACY_KERAS"] = "1"
    return env


def run_child(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on a timeout stop the whole group (tfedge's
    optimize worker too), SIGTERM first so that tfedge removes its staging folder."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.communicate(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker, if it outlived its caller
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def error_line(stderr: str, returncode: int, stdout: str = "") -> str:
    """The run's error: the JSON error object under --json, else the last ``Error:`` line."""
    with contextlib.suppress(ValueError, TypeError, KeyError):
        return ("Error: " + json.loads(stdout)["error"])[:400]
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    if errors:
        return errors[-1][:400]
    return (lines[-1] if lines else f"exit code {returncode}")[:400]


def build_model(family: str, keras: str, args, work: Path) -> dict:
    folder = work / f"{family}-k{keras}"
    folder.mkdir(parents=True, exist_ok=True)
    scale = 255.0 if FAMILIES[family] else 1.0
    train, test = write_data(
        work / f"data-{int(scale)}", args.size, args.classes, args.train, args.test, scale
    )
    model = folder / "model.keras"
    spec = {
        "family": family,
        "keras": keras,
        "size": args.size,
        "classes": args.classes,
        "seed": 0,
        "epochs": args.float_epochs,
        "train": str(train),
        "out": str(model),
    }
    start = time.perf_counter()
    try:
        proc = run_child(
            [sys.executable, str(work / "builder.py"), json.dumps(spec)],
            child_env(keras),
            args.timeout,
        )
    except subprocess.TimeoutExpired:
        return {"build_seconds": args.timeout, "error": f"build: timed out after {args.timeout} s"}
    built = {"build_seconds": round(time.perf_counter() - start, 1), "pixels": f"0-{int(scale)}"}
    if proc.returncode or not model.exists():
        built["error"] = "build: " + error_line(proc.stderr, proc.returncode)
        return built
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**built, "model": model, "train": train, "test": test, **info}


def full_integer(path: Path) -> bool:
    from tfedge.convert.tflite_model import read_tflite
    from tfedge.convert.verify import find_float_ops, float_io

    model = read_tflite(path)
    return not find_float_ops(model) and not float_io(model)


QAT_SKIP = "qat.unsupported=skip"  # what tfedge's hint says when qat refuses some layers


def run_recipe(built: dict, recipe: Path, out: Path, args, overrides: tuple = ()) -> dict:
    """One optimize run. When qat refuses layers tfmot has no rule for, run again as the hint
    says (``--set qat.unsupported=skip``) and record it in ``set``."""
    cmd = [sys.executable, "-m", "tfedge", "optimize", str(built["model"]), "--recipe", str(recipe)]
    cmd += ["--data", str(built["train"]), "--eval", str(built["test"]), "-o", str(out), "--json"]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    try:
        proc = run_child(cmd, child_env("3"), args.timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {args.timeout} s", "seconds": args.timeout}
    row: dict = {"seconds": round(time.perf_counter() - start, 1), "set": list(overrides)}
    if proc.returncode:
        error = error_line(proc.stderr, proc.returncode, proc.stdout)
        if "tfmot cannot quantize" in error and QAT_SKIP not in overrides:
            again = run_recipe(built, recipe, out, args, (*overrides, QAT_SKIP))
            return {**again, "seconds": round(row["seconds"] + again["seconds"], 1)}
        return {**row, "ok": False, "error": error}
    report = json.loads(proc.stdout)
    first, last = report["stages"][0], report["stages"][-1]
    final = Path(report["model"])
    row.update(
        ok=True,
        full_integer=full_integer(final),
        float_bytes=first["tflite_bytes"],
        final_bytes=final.stat().st_size,
        gzip_bytes=len(gzip.compress(final.read_bytes(), 9)),
        float_accuracy=round(first["accuracy"], 4),
        final_accuracy=round(last["accuracy"], 4),
        drop_points=round(100 * (first["accuracy"] - last["accuracy"]), 2),
        stages=[s["name"] for s in report["stages"]],
        stage_accuracy={s["name"]: s["accuracy"] for s in report["stages"]},
        stage_seconds={s["name"]: round(s["seconds"], 1) for s in report["stages"]},
    )
    return row


# ---------------------------------------------------------------- table
COLUMNS = (
    "family",
    "keras",
    "recipe",
    "result",
    "full-int8",
    "float32 B",
    "final B",
    "gzip B",
    "float acc",
    "final acc",
    "drop pts",
    "time s",
)


def cells(r: dict) -> list[str]:
    recipe = r["recipe"] + "".join(f" (--set {item})" for item in r.get("set", []))
    head = [r["family"], KERAS[r["keras"]], recipe]
    if not r.get("ok"):
        message = r.get("error", "?").replace("|", "\\|")
        return head + [f"FAIL: {message}"] + ["-"] * 7 + [f"{r.get('seconds', 0):.0f}"]
    return head + [
        "ok",
        "yes" if r["full_integer"] else "NO",
        f"{r['float_bytes']:,}",
        f"{r['final_bytes']:,}",
        f"{r['gzip_bytes']:,}",
        f"{r['float_accuracy']:.3f}",
        f"{r['final_accuracy']:.3f}",
        f"{r['drop_points']:+.1f}",
        f"{r['seconds']:.0f}",
    ]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"`keras.applications` zoo through tfedge recipes, {meta['date']}, "
        f"{meta['machine']['cpus']} CPUs ({meta['machine']['arch']}), tfedge {meta['commit']}; "
        f"{meta['size']} px, "
        f"{meta['classes']} classes, {meta['train']} train / {meta['test']} test synthetic "
        f"images, float model trained {meta['float_epochs']} epochs; recipes shortened to 1 "
        "epoch per pass, 64 calibration samples, no accuracy guard",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    ok = sum(1 for r in rows if r.get("ok") and r.get("full_integer"))
    lines += ["", f"{ok} of {len(rows)} runs gave a verified full-int8 model."]
    if meta.get("skipped"):
        lines += ["", "Not run: " + meta["skipped"]]
    return "\n".join(lines) + "\n"


SUMMARY = "zoo-summary"


def summary(directory: Path) -> list[dict]:
    """The latest row of every family x Keras x recipe over all ``bench-results/zoo*.json``.

    A run's time is its ``meta.finished`` (UTC, written since 2026-12-01; older files got theirs
    from the commit that last wrote them), else its date. Each row names the run it comes from.
    """
    latest: dict[tuple[str, str, str], dict] = {}
    for path in sorted(directory.glob("zoo*.json")):
        if path.stem == SUMMARY:
            continue
        data = json.loads(path.read_text())
        when = data["meta"].get("finished") or data["meta"]["date"]
        for row in data["rows"]:
            key = (row["family"], row["keras"], row["recipe"])
            if key not in latest or when >= latest[key]["finished"]:
                latest[key] = {**row, "run": path.stem, "finished": when}
    order = {name: i for i, name in enumerate([*FAMILIES, "3", "2", *RECIPES])}
    return sorted(
        latest.values(), key=lambda r: [order[r[k]] for k in ("family", "keras", "recipe")]
    )


def summary_markdown(rows: list[dict]) -> str:
    lines = [
        "The latest row of every `keras.applications` family x Keras x recipe in "
        "`bench-results/zoo*.json` (`scripts/bench_zoo.py --summary`); the last column names the "
        "run (its file and when it finished, UTC).",
        "",
        "| " + " | ".join([*COLUMNS, "run"]) + " |",
        "|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|---|",
    ]
    lines += [
        "| " + " | ".join([*cells(_short_error(r)), f"{r['run']} ({r['finished'][:16]})"]) + " |"
        for r in rows
    ]
    ok = sum(1 for r in rows if r.get("ok") and r.get("full_integer"))
    done = {(r["family"], r["keras"], r["recipe"]) for r in rows}
    missing = [
        f"{f} {KERAS[k]} {r}"
        for f in FAMILIES
        for k in ("3", "2")
        for r in RECIPES
        if (f, k, r) not in done
    ]
    lines += [
        "",
        f"{ok} of {len(rows)} family x Keras x recipe combinations: a verified full-int8 model.",
    ]
    if missing:
        lines += ["", "Not run: " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def _short_error(row: dict, limit: int = 160) -> dict:
    error = row.get("error", "")
    return {**row, "error": error[:limit] + " ..."} if len(error) > limit else row


def write_summary() -> None:
    out_dir = ROOT / "bench-results"
    rows = summary(out_dir)
    write_bytes_atomic(out_dir / f"{SUMMARY}.json", json.dumps({"rows": rows}, indent=2).encode())
    write_bytes_atomic(out_dir / f"{SUMMARY}.md", summary_markdown(rows).encode())
    print(summary_markdown(rows))


def plain_table(rows: list[dict]) -> str:
    table = [list(COLUMNS)] + [[c[:70] for c in cells(r)] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M")


def git_commit() -> str:
    """HEAD, with "+changes" when the working tree differs from it (others' edits in progress)."""
    run = lambda *a: subprocess.run(  # noqa: E731
        ["git", "-C", str(ROOT), *a], capture_output=True, text=True
    ).stdout.strip()
    dirty = run("status", "--porcelain", "--untracked-files=no", "--", "tfedge", "device")
    return run("rev-parse", "--short", "HEAD") + (" +changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    parser.add_argument("--keras", default="2,3", help="2 (tf_keras), 3 (Keras 3) or 2,3")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated")
    parser.add_argument("--size", type=int, default=32, help="input side in px (default 32)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--train", type=int, default=320, help="training images (default 320)")
    parser.add_argument("--test", type=int, default=128, help="held-out images (default 128)")
    parser.add_argument("--float-epochs", type=int, default=4, help="float training (default 4)")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per child process")
    parser.add_argument("--skipped", default="", help="a note on what was left out (for the md)")
    parser.add_argument(
        "--output", help="bench-results/NAME.{json,md} (default zoo; zoo-quick with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: MobileNetV2, Keras 3, int8"
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help=f"run nothing: merge the latest row per family x Keras x recipe into {SUMMARY}.*",
    )
    args = parser.parse_args()
    if args.summary:
        write_summary()
        return
    if args.quick:
        args.families, args.keras, args.recipes = "MobileNetV2", "3", "int8"
    args.output = args.output or ("zoo-quick" if args.quick else "zoo")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    versions = [k.strip() for k in args.keras.split(",") if k.strip()]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [f for f in families if f not in FAMILIES] + [k for k in versions if k not in KERAS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)} (families: {', '.join(FAMILIES)}; keras 2,3)")
    rows: list[dict] = []
    meta = {
        "date": datetime.date.today().isoformat(),
        "size": args.size,
        "classes": args.classes,
        "train": args.train,
        "test": args.test,
        "float_epochs": args.float_epochs,
        "calib_samples": args.calib_samples,
        "families": families,
        "keras": versions,
        "recipes": recipes,
        "skipped": args.skipped,
        "commit": git_commit(),
        "finished": None,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "arch": platform.machine(),
        },
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfedge-zoo-") as tmp:
        work = Path(tmp)
        (work / "builder.py").write_text(BUILDER)
        recipe_files = {r: recipe_variant(r, work, args.calib_samples) for r in recipes}
        for family in families:
            for keras in versions:
                built = build_model(family, keras, args, work)
                print(f"{family} {KERAS[keras]}: built {built}", file=sys.stderr)
                for recipe in recipes:
                    row = {"family": family, "keras": keras, "recipe": recipe}
                    row["params"] = built.get("params")
                    row["build_seconds"] = built["build_seconds"]
                    if "error" in built:
                        row.update(ok=False, error=built["error"], seconds=0)
                    else:
                        out = work / f"{family}-k{keras}" / recipe
                        row.update(run_recipe(built, recipe_files[recipe], out, args))
                    rows.append(row)
                    print(" | ".join(cells(row)), file=sys.stderr, flush=True)
                    meta["seconds"] = round(time.perf_counter() - started, 1)
                    meta["finished"] = utc_now()
                    save(rows, meta, args.output)  # after every row: a stopped sweep keeps its rows
    print(plain_table(rows))


def save(rows: list[dict], meta: dict, name: str) -> None:
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    write_bytes_atomic(
        out_dir / f"{name}.json",
        json.dumps({"meta": meta, "rows": rows}, indent=2, default=str).encode(),
    )
    write_bytes_atomic(out_dir / f"{name}.md", markdown(rows, meta).encode())


if __name__ == "__main__":
    main()
