"""Device profiles: shipped files, schema validation, model checks, CLI, packaging."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tfedge.cli.profiles import COLUMNS
from tfedge.errors import ProfileError
from tfedge.targets.profiles import (
    PROFILES_DIR,
    check_model_against_profile,
    list_profiles,
    load_profile,
    parse_profile,
    profile_names,
    profile_schema,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {"rpi3b", "rpi-zero-2w", "rpi4", "rpi5", "generic-aarch64", "local"}


def write_profile(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((PROFILES_DIR / "rpi4.yaml").read_text())
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_profiles_load_with_their_cpus():
    profiles = {p.name: p for p in list_profiles()}
    assert SHIPPED <= set(profiles)
    assert profiles["rpi-zero-2w"].cpu == profiles["rpi3b"].cpu == "cortex-a53"
    assert profiles["rpi-zero-2w"].ram_mb == 512
    assert profiles["rpi4"].cpu == "cortex-a72" and profiles["rpi5"].cpu == "cortex-a76"
    assert all(p.name == Path(p.source).stem for p in profiles.values())
    assert (REPO / "device_profiles" / "rpi4.yaml").is_file()  # the top-level symlink


def test_profile_by_path_works_like_a_name(tmp_path):
    path = write_profile(tmp_path, name="my-board", default_threads=2)
    profile = load_profile(str(path))
    assert profile.name == "my-board" and profile.threads == 2 and profile.source == str(path)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ProfileError, match="unknown device profile 'rpi9'") as info:
        load_profile("rpi9")
    assert "rpi4" in info.value.hint


@pytest.mark.parametrize(
    "changes, fragment, hint",
    [
        ({"cpu": ...}, "cpu is required", "add `cpu:`"),
        ({"wifi": True}, "unknown option 'wifi'", "known options: arch, budgets"),
        ({"defualt_threads": 2}, "unknown option 'defualt_threads'", "'default_threads'"),
        ({"arch": "mips"}, "arch = 'mips' is not one of aarch64, x86_64", "known values"),
        ({"schema_version": 2}, "schema_version = 2, but this tfedge reads 1", "upgrade tfedge"),
        ({"cores": "four"}, "cores must be an integer, got 'four'", "plain number"),
        ({"cores": 0}, "cores = 0 is out of range", "use a value > 0"),
        ({"requires_full_integer": "yes"}, "requires_full_integer must be true or false", "true"),
        (
            {"budgets": {"max_model_bytes": -1, "max_ram_mb": None, "target_latency_ms": None}},
            "budgets.max_model_bytes = -1 is out of range",
            "> 0",
        ),
        ({"budgets": {"max_flops": 1}}, "unknown option 'max_flops'", "max_model_bytes"),
        ({"budgets": {"max_ram_mb": "1 GB"}}, "budgets.max_ram_mb must be a number", "plain"),
        ({"runtime": "onnxruntime"}, "runtime = 'onnxruntime' is not one of", "did you mean"),
        ({"runtime": "ai_edge_litert"}, "runtime = 'ai_edge_litert'", "'ai-edge-litert'?"),
        ({"name": "my board"}, "name must be letters, digits", "name: my-board"),
        ({"description": " "}, "description must not be blank", "description:"),
        ({"unsupported_ops": [3]}, "unsupported_ops[0] must be a string, got 3", "text"),
    ],
)
def test_invalid_profiles_are_rejected_naming_the_key(tmp_path, changes, fragment, hint):
    with pytest.raises(ProfileError) as info:
        load_profile(write_profile(tmp_path, **changes))
    assert str(info.value).startswith(f"profile {tmp_path / 'mine.yaml'}: ")
    assert fragment in str(info.value) and hint in info.value.hint, (info.value, info.value.hint)


def test_model_over_size_budget_names_the_numbers():
    with pytest.raises(ProfileError) as info:
        check_model_against_profile(load_profile("rpi-zero-2w"), 9_000_000, True, [], {"CONV_2D"})
    assert "9,000,000 bytes" in str(info.value) and "8,000,000" in str(info.value)


def test_float_model_fails_where_full_integer_is_required():
    with pytest.raises(ProfileError, match="requires a full-integer model, but 2 op"):
        check_model_against_profile(
            load_profile("rpi3b"), 1000, False, ["CONV_2D#0", "SOFTMAX#3"], {"CONV_2D"}
        )
    check_model_against_profile(
        load_profile("rpi4"), 1000, False, ["CONV_2D#0"], {"CONV_2D"}
    )  # allowed there


def test_ops_the_runtime_lacks_are_refused():
    with pytest.raises(ProfileError, match="CUSTOM:FlexErf"):
        check_model_against_profile(
            load_profile("rpi4"), 1000, True, [], {"CONV_2D", "CUSTOM:FlexErf"}
        )
    check_model_against_profile(
        load_profile("rpi4"), 1000, True, [], {"CUSTOM:TFLite_Detection_PostProcess"}
    )


def test_armv7l_profile_loads_and_says_how_to_move_to_64_bit(tmp_path, run_cli):
    path = write_profile(tmp_path, arch="armv7l", name="rpi3-32bit")
    assert load_profile(path).arch == "armv7l"
    result = run_cli("profiles", "show", path)
    assert (
        "no 32-bit (armv7l) wheels" in result.stderr and "64-bit Raspberry Pi OS" in result.stderr
    )


def test_cli_profiles_list_and_show(run_cli):
    listed = run_cli("profiles", "list").stdout
    assert all(name in listed for name in SHIPPED)
    shown = yaml.safe_load(run_cli("profiles", "show", "rpi4").stdout)
    assert shown["cpu"] == "cortex-a72" and shown["budgets"]["max_model_bytes"] == 50_000_000
    failed = run_cli("profiles", "show", "nope", expect=1)
    assert failed.stderr.startswith("Error: unknown device profile 'nope'")


def test_cli_profiles_list_columns_line_up(run_cli):
    lines = run_cli("profiles", "list").stdout.splitlines()
    header, rows = lines[0], lines[1:]
    assert len(rows) == len(profile_names())
    spans, at = [], 0
    for name, right in COLUMNS:
        start = header.index(name, at)
        spans.append((start, start + len(name), right))
        at = start + len(name)
    for row in rows:
        for start, end, right in spans[:-1]:  # a right-aligned cell ends where its header does
            if right:
                assert row[end - 1] != " " and row[end] == " ", (row, header[start:end])
            else:
                assert row[start] != " " and (start == 0 or row[start - 1] == " "), row
        assert row[spans[-1][0] - 1] == " " and row[spans[-1][0]] != " "  # DESCRIPTION


def _schema_errors(schema: dict, data) -> list[str]:
    """Errors of ``data`` against ``schema``: jsonschema when installed, else a small subset
    (type, enum/const, required, properties, additionalProperties, anyOf, items, bounds)."""
    try:
        import jsonschema
    except ImportError:
        return _subset_errors(schema, data, schema.get("$defs", {}), "")
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(data)]


def _subset_errors(schema: dict, data, defs: dict, where: str) -> list[str]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    if "anyOf" in schema:
        options = [_subset_errors(s, data, defs, where) for s in schema["anyOf"]]
        return [] if any(not e for e in options) else [f"{where}: no anyOf matches"]
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind in ("integer", "number"):
        ok = not isinstance(data, bool) and isinstance(
            data, int if kind == "integer" else (int, float)
        )
        if not ok:
            return [f"{where}: not {kind}"]
        if data <= schema.get("exclusiveMinimum", float("-inf")) or data < schema.get(
            "minimum", float("-inf")
        ):
            return [f"{where}: below the minimum"]
    elif kind and not isinstance(data, types[kind]):
        return [f"{where}: not {kind}"]
    if "const" in schema and data != schema["const"]:
        return [f"{where}: not {schema['const']!r}"]
    if "enum" in schema and data not in schema["enum"]:
        return [f"{where}: not one of {schema['enum']}"]
    errors = []
    if kind == "object":
        props = schema.get("properties", {})
        errors += [f"{where}.{k}: required" for k in schema.get("required", []) if k not in data]
        if schema.get("additionalProperties") is False:
            errors += [f"{where}.{k}: not allowed" for k in data if k not in props]
        for key, value in data.items():
            if key in props:
                errors += _subset_errors(props[key], value, defs, f"{where}.{key}")
    if kind == "array":
        for i, item in enumerate(data):
            errors += _subset_errors(schema.get("items", {}), item, defs, f"{where}[{i}]")
    return errors


def test_profile_schema_is_json_and_shipped_profiles_follow_it(run_cli):
    schema = json.loads(run_cli("profiles", "schema").stdout)
    assert schema == profile_schema() and schema["title"] == "tfedge device profile"
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Budgets"]["additionalProperties"] is False
    assert schema["properties"]["arch"]["enum"] == ["aarch64", "x86_64", "armv7l", "native"]
    assert {"name", "arch", "cpu", "budgets", "default_threads"} <= set(schema["required"])
    assert "unsupported_ops" not in schema["required"] and "source" not in schema["properties"]
    for path in sorted(PROFILES_DIR.glob("*.yaml")):
        assert _schema_errors(schema, yaml.safe_load(path.read_text())) == [], path
    rpi4 = yaml.safe_load((PROFILES_DIR / "rpi4.yaml").read_text())
    for bad in (
        {**rpi4, "colour": "red"},
        {**rpi4, "arch": "mips"},
        {**rpi4, "budgets": {"max_flops": 1}},
        {**rpi4, "cores": 0},
        {k: v for k, v in rpi4.items() if k != "cpu"},
    ):
        assert _schema_errors(schema, bad), bad  # and the loader refuses the same files
        with pytest.raises(ProfileError):
            parse_profile(bad, "bad.yaml")


def test_inventory_schema_refuses_unknown_keys(run_cli):
    schema = json.loads(run_cli("profiles", "schema", "--inventory").stdout)
    assert schema["title"] == "tfedge bench inventory" and schema["required"] == ["devices"]
    device = schema["$defs"]["InventoryDevice"]
    assert device["additionalProperties"] is False and device["required"] == ["target"]
    good = {"devices": [{"name": "pi", "target": "ssh://pi@pi.local", "threads": 2}]}
    assert _schema_errors(schema, good) == []
    assert _schema_errors(schema, {"devices": [{"target": "local", "thread": 2}]})
    assert _schema_errors(schema, {"devices": [{"target": "local", "threads": 0}]})


def test_cli_modules_do_not_import_tensorflow():
    code = (
        "import sys; from tfedge.cli import profiles, bench, emulator; "
        "import tfedge.targets.bench, tfedge.targets.emulator; "
        "sys.exit('tensorflow' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


@pytest.mark.slow
def test_plain_pip_install_ships_profiles_and_device_script(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "build",
            "*.egg-info",
            "models",
            "bench-results",
            "__pycache__",
            ".pytest_cache",
        ),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("tfedge-*.whl"))).namelist()
    assert {f"tfedge/targets/device_profiles/{n}.yaml" for n in profile_names()} <= set(names)
    assert {"tfedge_device/bench.py", "tfedge_device/interpreter.py"} <= set(names)
    assert "tfedge_device/agent.py" in names and "tfedge_device/tfedge-agent.service" in names
