"""``tfedge push`` against a device whose model directory another account can touch, and the
agent against a journal that names files outside its directory (issue 12, part 3).

The device is this machine through a real OpenSSH server on loopback (the ``sshd`` fixture),
with the device-only venv as the device's Python. The "device-side user" is a second OS
account, ``tfedge-other`` (created once, as a system account without a home, when the tests
run as root; the tests that need it fail otherwise, saying so). Races are set up with the push's
``on_step`` hook, which the push calls between its steps: the test changes the device at
exactly that point, no sleeps.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests import ota_helpers as oh
from tests.conftest import assert_one_error_line
from tfedge.errors import OtaError
from tfedge.fsutil import sha256_file
from tfedge.ota.push import push, rollback

OTHER_USER = "tfedge-other"


def hostile(marker: Path) -> str:
    """A stand-in for an attacker's device script: it leaves ``marker`` when it runs."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"


@pytest.fixture(scope="session")
def other_user() -> pwd.struct_passwd:
    """A second account on the "device": exists, or is created here when we are root."""
    try:
        return pwd.getpwnam(OTHER_USER)
    except KeyError:
        pass
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.fail(f"needs root (or an existing {OTHER_USER} account) to act as another user")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", OTHER_USER], check=True, capture_output=True
    )
    return pwd.getpwnam(OTHER_USER)


def as_other(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess:
    """Run ``argv`` as the other account (what it could do on the device)."""
    return subprocess.run(
        list(argv),
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=30,
    )


def opts(server, **extra) -> dict:
    """Push options; ``name`` given, so only the name-defaulting test depends on it."""
    return {
        "name": "kws",
        "python": oh.device_python(),
        "key": str(server.user_key),
        "known_hosts": str(server.known_hosts),
        **extra,
    }


def cli_opts(server, python: str | None = None) -> list[str]:
    return [
        "--key",
        server.user_key,
        "--known-hosts",
        server.known_hosts,
        "--remote-python",
        python or oh.device_python(),
    ]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def base() -> Path:
    """A folder other accounts can reach (pytest's own is 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="tfedge-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def installed(sshd, ota_models, base, ssh_home):
    """``BASE/kws`` with v1 active (pushed without a smoke test, to keep it quick)."""
    device = base / "kws"
    url = sshd.url(str(device))
    push(ota_models["v1"], url, smoke_test=False, **opts(sshd))
    return device, url


def victim_folder(tmp_path: Path, ota_models) -> Path:
    """Files of the pushing account somewhere else, some named like model versions."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    (victim / f"{sha256_file(ota_models['v3'])}.tflite").write_bytes(b"not a version of kws")
    return victim


# ---------------------------------------------------------------- versions/ and the model dir
def test_symlinked_versions_is_refused_nothing_written_or_deleted_through_it(
    sshd, ota_models, installed, tmp_path, run_cli
):
    device, url = installed
    victim = victim_folder(tmp_path, ota_models)
    before = snapshot(victim)
    shutil.rmtree(device / "versions")
    (device / "versions").symlink_to(victim)
    result = run_cli(
        "push", ota_models["v2"], url, "--name", "kws", "--no-smoke-test", *cli_opts(sshd), expect=1
    )
    assert_one_error_line(result, "versions is a symlink")
    with pytest.raises(OtaError, match="is a symlink"):
        rollback(url, **opts(sshd))
    assert snapshot(victim) == before
    assert os.readlink(device / "current") == f"versions/{sha256_file(ota_models['v1'])}.tflite"


def test_foreign_owned_versions_is_refused(sshd, ota_models, installed, other_user):
    device, url = installed
    os.chown(device / "versions", other_user.pw_uid, other_user.pw_gid)
    with pytest.raises(OtaError, match=f"belongs to user id {other_user.pw_uid}"):
        push(ota_models["v2"], url, smoke_test=False, **opts(sshd))
    assert oh.active_sha(device) == sha256_file(ota_models["v1"])


def test_writable_versions_or_model_dir_is_refused(sshd, ota_models, installed, other_user):
    device, url = installed
    versions = device / "versions"
    versions.chmod(0o777)
    with pytest.raises(OtaError, match=r"versions is writable to other users \(mode 777\)"):
        push(ota_models["v2"], url, smoke_test=False, **opts(sshd))
    # what the other account could have done: replace a version and delete the rest
    assert as_other(other_user, "touch", str(versions / "planted")).returncode == 0
    versions.chmod(0o755)
    device.chmod(0o775)
    with pytest.raises(OtaError, match=r"kws is writable to other users \(mode 775\)"):
        push(ota_models["v2"], url, smoke_test=False, **opts(sshd))
    device.chmod(0o755)
    assert push(ota_models["v2"], url, smoke_test=False, **opts(sshd)).switched


def test_versions_swapped_for_a_symlink_after_the_switch_is_not_pruned(
    sshd, ota_models, installed, tmp_path
):
    device, url = installed
    victim = victim_folder(tmp_path, ota_models)
    before = snapshot(victim)

    def swap(step: str, info: dict) -> None:
        if step == "switched":
            (device / "versions").rename(tmp_path / "versions.real")
            (device / "versions").symlink_to(victim)

    with pytest.raises(OtaError, match="active, but old versions were not removed.*symlink"):
        push(ota_models["v2"], url, smoke_test=False, keep=2, on_step=swap, **opts(sshd))
    assert snapshot(victim) == before


def test_prune_deletes_only_version_files(sshd, ota_models, installed):
    device, url = installed
    (device / "versions" / "notes.txt").write_text("the application's own file")
    (device / "versions" / "cache").mkdir()
    for name in ("v2", "v3"):
        result = push(ota_models[name], url, smoke_test=False, keep=2, **opts(sshd))
    assert result.removed == [f"{sha256_file(ota_models['v1'])}.tflite"]
    assert (device / "versions" / "notes.txt").exists() and (device / "versions" / "cache").is_dir()


# ---------------------------------------------------------------- the device script
def test_hostile_tools_folder_in_the_model_dir_is_never_used(
    sshd, ota_models, installed, other_user, tmp_path
):
    device, url = installed
    tools = device / ".tools"
    tools.mkdir(mode=0o777)
    tools.chmod(0o777)
    for name in ("bench.py", "interpreter.py"):
        (tools / name).write_text(hostile(tmp_path / "pwned"))
    os.chown(tools, other_user.pw_uid, other_user.pw_gid)
    before = snapshot(tools)
    seen: dict = {}
    result = push(ota_models["v2"], url, on_step=lambda s, i: seen.setdefault(s, i), **opts(sshd))
    assert result.switched and result.smoke["ok"] and "max_abs_diff" in result.smoke
    assert snapshot(tools) == before and not (tmp_path / "pwned").exists()  # not used
    private = Path(next(iter(seen["tools_uploaded"]["tools"]))).parent
    assert not private.exists()  # the private folder is gone after the run


def test_script_swapped_between_upload_and_run_is_refused(
    sshd, ota_models, installed, other_user, tmp_path
):
    device, url = installed
    v1, v2 = sha256_file(ota_models["v1"]), sha256_file(ota_models["v2"])
    attempts: list = []

    def tamper(step: str, info: dict) -> None:
        if step != "tools_uploaded":
            return
        script = next(p for p in info["tools"] if p.endswith("bench.py"))
        folder = Path(script).parent
        assert (folder.stat().st_mode & 0o777) == 0o700
        attempts.append(as_other(other_user, "sh", "-c", f"echo x > {script}"))
        Path(script).write_text(hostile(tmp_path / "pwned"))  # any writer: caught by the check
        attempts.append(script)

    with pytest.raises(OtaError, match="changed between its upload and its run"):
        push(ota_models["v2"], url, on_step=tamper, **opts(sshd))
    denied, script = attempts
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert not (tmp_path / "pwned").exists() and not Path(script).parent.exists()
    assert oh.active_sha(device) == v1
    assert not (device / "versions" / f"{v2}.tflite").exists()


def test_malformed_smoke_verdict_is_one_error_line(sshd, ota_models, installed, tmp_path, run_cli):
    device, url = installed
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho '{\"ok\": true}'\n")
    fake.chmod(0o755)
    argv = ["push", ota_models["v2"], url, "--name", "kws", *cli_opts(sshd, str(fake))]
    result = run_cli(*argv, expect=1)
    assert_one_error_line(result, "smoke test failed", "malformed verdict", "nothing was switched")
    assert "KeyError" not in result.stderr + result.stdout
    assert oh.active_sha(device) == sha256_file(ota_models["v1"])


# ---------------------------------------------------------------- what the directory holds
def test_name_defaults_to_the_model_on_the_device(sshd, ota_models, tmp_path, ssh_home, run_cli):
    device = tmp_path / "kws"
    url = sshd.url(str(device))
    quick = ["--no-smoke-test", *cli_opts(sshd)]
    run_cli("push", ota_models["v1"], url, *quick)
    assert "switched to" in run_cli("push", ota_models["v2"], url, *quick).stdout
    assert json.loads((device / "manifest.json").read_text())["name"] == "kws"
    assert "rolled back to" in run_cli("rollback", url, *cli_opts(sshd)).stdout
    assert oh.active_sha(device) == sha256_file(ota_models["v1"])
    refused = run_cli("push", ota_models["v3"], url, "--name", "v3", *quick, expect=1)
    assert_one_error_line(refused, "holds model 'kws', not 'v3'")
    assert run_cli("push", ota_models["v3"], url, "--name", "kws", *quick).exit_code == 0


def test_unreadable_current_or_signature_is_an_error_not_nothing_installed(
    sshd, ota_models, installed
):
    device, url = installed
    v1 = sha256_file(ota_models["v1"])
    current = device / "current"
    current.unlink()
    shutil.copy(ota_models["wide"], current)  # a file, not a symlink
    with pytest.raises(OtaError, match="current is not a symlink"):
        push(ota_models["wide"], url, smoke_test=False, **opts(sshd))
    current.unlink()
    current.symlink_to("../elsewhere/x.tflite")
    with pytest.raises(OtaError, match="not to versions/<sha256>.tflite"):
        push(ota_models["wide"], url, smoke_test=False, **opts(sshd))
    current.unlink()
    current.symlink_to(f"versions/{v1}.tflite")
    manifest = json.loads((device / "manifest.json").read_text())
    for record in manifest["history"]:
        record.pop("signature")
    (device / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OtaError, match="no recorded input/output signature"):
        push(ota_models["wide"], url, smoke_test=False, **opts(sshd))
    assert oh.active_sha(device) == v1


# ---------------------------------------------------------------- the agent on the device
def test_agent_never_deletes_outside_its_directory(tmp_path, ota_models):
    from tfedge_device.agent import AgentConfig, _Agent
    from tfedge_device.modeldir import ModelDir, ModelDirError

    device = tmp_path / "device"
    sha = sha256_file(ota_models["v1"])
    model_dir = ModelDir(device).ensure()
    model_dir.add_version(ota_models["v1"], sha)
    model_dir.switch_to(sha)
    outside = tmp_path / "victim.tflite"
    outside.write_text("someone else's")
    (device / "journal.json").write_text(
        json.dumps({"step": "rolling_back", "sha256": "../../victim", "previous": sha})
    )
    cfg = AgentConfig("http://127.0.0.1:9", device, "kws", tmp_path / "root.json")
    assert _Agent(cfg, log=lambda m: None).recover() is None  # a journal it did not write
    assert outside.exists() and oh.active_sha(device) == sha
    with pytest.raises(ModelDirError, match="outside"):
        model_dir.files.remove("versions/../../victim.tflite")
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / f"{sha}.tflite").write_text("not ours")
    shutil.rmtree(device / "versions")
    (device / "versions").symlink_to(victim)
    with pytest.raises(ModelDirError, match="outside"):
        model_dir.remove_version(sha)
    assert (victim / f"{sha}.tflite").exists() and outside.exists()


def test_agent_installs_a_target_without_a_signature_and_does_not_hide_bugs(tmp_path, ota_models):
    """A signed target whose metadata has no ``signature`` installs (it used to be reported as
    "download rejected (KeyError ...)"): the agent catches only the repository's errors."""
    from tfedge.ota import repository as repo_api

    base = oh.installed_v1(tmp_path, ota_models)
    custom = repo_api.model_metadata(ota_models["v2"], 2)
    del custom["signature"]
    with repo_api._locked(base / "repo") as state:
        repo_api._add_target(state, "models/kws.tflite", ota_models["v2"], custom)
        state.write_targets_chain()
    server = oh.serve(base / "repo")
    try:
        result = oh.poll(server.url, base / "device", base / "repo")
    finally:
        server.stop()
    assert result.state == "Success", result
    assert oh.active_sha(base / "device") == sha256_file(ota_models["v2"])
