"""What the CLI prints for scripts and people: ``--json`` errors, stage lines, status tables;
the data forms ``tfedge.evaluate`` takes.

The CLI runs in-process (``run_cli``); none of these tests needs TensorFlow unless marked.
"""

from __future__ import annotations

import importlib
import json
import signal
from pathlib import Path

import pytest

from tfedge.fsutil import Terminated

ERROR_KEYS = {"error", "hint", "kind", "exit_code"}


def json_error(result, kind: str, code: int) -> dict:
    """``result`` is one JSON error object on stdout, nothing on stderr, exit ``code``."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    obj = json.loads(result.stdout)
    assert set(obj) == ERROR_KEYS, obj
    assert obj["kind"] == kind and obj["exit_code"] == code, obj
    assert obj["error"] and "Error:" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return obj


@pytest.mark.parametrize(
    ("args", "kind", "fragment"),
    [
        (["recipes", "check", "nosuch", "--json"], "RecipeError", "nosuch"),
        (["profiles", "show", "nosuch", "--json"], "ProfileError", "nosuch"),
    ],
)
def test_json_error_is_one_object(run_cli, args, kind, fragment):
    obj = json_error(run_cli(*args, expect=None), kind, 1)
    assert fragment in obj["error"] and obj["hint"]


def test_json_error_raised_before_tensorflow(run_cli, tmp_path):
    """A file that is no model: ModelLoadError, and a recipe error from deep in optimize."""
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    obj = json_error(run_cli("inspect", text, "--json", expect=None), "ModelLoadError", 1)
    assert "notes.txt" in obj["error"] and obj["hint"]
    out = tmp_path / "out"
    result = run_cli(
        "optimize", text, "-r", "nosuch", "--data", text, "--eval", text, "-o", out, "--json",
        expect=None,
    )  # fmt: skip
    json_error(result, "RecipeError", 1)
    assert not out.exists()


def test_json_usage_errors(run_cli, tmp_path):
    """click's own usage errors (a bad option, a missing file) are JSON too, exit code 2."""
    obj = json_error(run_cli("recipes", "list", "--json", "--bogus", expect=None), "UsageError", 2)
    assert "--bogus" in obj["error"] and "recipes list --help" in obj["hint"]
    missing = tmp_path / "missing.keras"
    obj = json_error(run_cli("convert", missing, "--json", expect=None), "UsageError", 2)
    assert "missing.keras" in obj["error"]


def test_without_json_errors_stay_one_line(run_cli):
    from tests.conftest import assert_one_error_line

    result = run_cli("recipes", "check", "nosuch", expect=1)
    assert result.stdout == ""
    assert_one_error_line(result, "nosuch", "hint:")
    # a command without --json keeps click's usage text for the word --json
    result = run_cli("demo", "--json", expect=2)
    assert "No such option" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("stop", "kind", "code"),
    [
        (KeyboardInterrupt(), "Interrupted", 130),
        (Terminated(signal.SIGTERM), "Terminated", 128 + signal.SIGTERM),
    ],
)
def test_json_interrupt(run_cli, monkeypatch, stop, kind, code):
    """Ctrl-C, or SIGTERM (made an interrupt by the CLI), under --json: one object."""
    recipe = importlib.import_module("tfedge.optimize.recipe")  # tfedge.optimize is a function

    def interrupted(*args, **kwargs):
        raise stop

    monkeypatch.setattr(recipe, "builtin_recipes", interrupted)
    obj = json_error(run_cli("recipes", "list", "--json", expect=None), kind, code)
    assert "nothing half-written was kept" in obj["error"]
    result = run_cli("recipes", "list", expect=code)
    assert result.stderr.startswith("Aborted: ") and result.stdout == ""


@pytest.mark.tf
@pytest.mark.slow
def test_optimize_prints_stage_lines_the_ratio_and_the_models_hash(digits, run_cli, tmp_path):
    """Not a terminal (CliRunner): one line per stage on stderr, no bars; the table's ratio
    column says what it divides; "Wrote" carries model.tflite's own sha256."""
    import hashlib

    out = tmp_path / "out"
    result = run_cli(
        "optimize", digits.model, "-r", "int8", "--data", digits.train, "--eval", digits.test,
        "-o", out,
    )  # fmt: skip
    lines = result.stderr.splitlines()
    assert lines[0] == "[1/2] float32" and lines[-1].startswith("[2/2] int8: done in ")
    assert any(ln.startswith("[1/2] float32: done in ") and "accuracy" in ln for ln in lines)
    assert "vs float32" not in result.stdout
    header = result.stdout.splitlines()[0].split()
    assert header[-1] == "float32/gzip"
    assert "float32/gzip: the float32 stage's .tflite bytes / this stage's gzip bytes" in (
        result.stdout
    )
    digest = hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    wrote = result.stdout.splitlines()[-1]
    assert wrote.startswith(f"Wrote {out / 'model.tflite'} (sha256 {digest[:12]}, recipe int8)")


def test_ota_status_prints_tables_and_json_on_request(run_cli, tmp_path):
    from tests import hostile_tflite
    from tfedge.ota import repository

    repo = tmp_path / "repo"
    repository.init_repository(repo)
    empty = run_cli("ota", "status", repo).stdout
    assert "role" in empty and "no targets yet" in empty and not empty.lstrip().startswith("{")
    model = hostile_tflite.write(tmp_path / "kws.tflite", hostile_tflite.base())
    repository.publish(repo, model, "kws", 1)
    table = run_cli("ota", "status", repo).stdout.splitlines()
    assert table[1].split() == ["role", "version", "expires"]
    assert ["targets", "2"] == table[4].split()[:2]
    assert table[-1].split() == ["models/kws.tflite", "1"]
    data = json.loads(run_cli("ota", "status", repo, "--json").stdout)
    assert data["versions"]["targets_list"] == {"models/kws.tflite": 1}
    assert data["versions"]["targets"] == 2


def _installed(model_dir: Path, models: list[Path]) -> list[str]:
    """``model_dir`` as push and the agent lay it out, each of ``models`` installed in turn."""
    from tfedge.fsutil import sha256_file
    from tfedge_device.modeldir import ModelDir, add_record, make_record

    device = ModelDir(model_dir).ensure()
    manifest = device.manifest("kws")
    shas = []
    for model in models:
        sha = sha256_file(model)
        device.add_version(model, sha)
        manifest = add_record(manifest, make_record(sha, str(model)))
        device.save_manifest(manifest)
        device.switch_to(sha)
        shas.append(sha)
    return shas


def test_status_reads_a_local_model_directory(run_cli, tmp_path):
    from tests import hostile_tflite

    v1 = hostile_tflite.write(tmp_path / "v1.tflite", hostile_tflite.base())
    v2 = tmp_path / "v2.tflite"
    v2.write_bytes(v1.read_bytes() + b"\0" * 8)
    old, new = _installed(tmp_path / "kws", [v1, v2])
    data = json.loads(run_cli("status", tmp_path / "kws", "--json").stdout)
    assert data["target"] == "local" and data["name"] == "kws"
    assert data["current"]["sha256"] == new and data["previous"]["sha256"] == old
    assert sorted(data["versions"]) == sorted([old, new])
    text = run_cli("status", tmp_path / "kws").stdout.splitlines()
    assert text[0] == f"{(tmp_path / 'kws').resolve()}  model: kws"
    assert text[1].split()[:2] == ["current", new[:12]]
    assert text[2].split()[:2] == ["previous", old[:12]]
    # a folder that is no model directory, and SSH options with a local folder
    obj = json.loads(run_cli("status", tmp_path, "--json", expect=1).stdout)
    assert obj["kind"] == "OtaError" and "not a model directory" in obj["error"]
    result = run_cli("status", tmp_path / "kws", "--key", v1, expect=2)
    assert "ssh://" in result.stderr


def test_evaluate_api_takes_x_y_arrays(digits, digits_int8):
    """``tfedge.evaluate(path, (x, y))`` scores like the .npz path it came from."""
    import numpy as np

    import tfedge

    arrays = np.load(digits.test)
    x, y = arrays["x"], arrays["y"]
    from_file = tfedge.evaluate(digits_int8, digits.test)
    from_tuple = tfedge.evaluate(digits_int8, (x, y))
    assert from_tuple.samples == from_file.samples == len(y)
    assert from_tuple.accuracy == from_file.accuracy
    assert tfedge.evaluate(digits_int8, x).task == "unlabelled"
