"""Signed fleet updates: a real python-tuf repository served over loopback HTTP, and the
real agent code (``poll_once``, smoke tests in child processes). No mocks of HTTP or TUF.

Every attack must leave the device serving a whole, valid model (old or new) and report
the right reason.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests import ota_helpers as oh
from tfedge.errors import OtaError, UsageError
from tfedge.fsutil import sha256_file
from tfedge.ota import repository as repo_api
from tfedge.ota.signature import runtime_satisfies, tf_equivalent

from .conftest import assert_one_error_line


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, ota_models):
    """A repository with kws version 1 (model v1), and a device that installed it."""
    return oh.installed_v1(tmp_path_factory.mktemp("baseline"), ota_models)


class Fleet:
    """This test's copy of the baseline: a served repository and one device directory."""

    def __init__(self, base, tmp_path, models) -> None:
        shutil.copytree(base / "repo", tmp_path / "repo", symlinks=True)
        shutil.copytree(base / "device", tmp_path / "device", symlinks=True)
        self.repo, self.device, self.models = tmp_path / "repo", tmp_path / "device", models
        self.server = oh.serve(self.repo)
        self.v1 = sha256_file(models["v1"])

    def poll(self, **kw):
        return oh.poll(self.server.url, self.device, self.repo, **kw)

    def served(self, name: str, model: str, group: str | None = None):
        """The served file of target ``name`` holding ``model`` (consistent snapshots keep old
        ones)."""
        from tfedge.ota import target_path

        folder, _, base = target_path(name, group).rpartition("/")
        return (
            self.repo / "public" / "targets" / folder / f"{sha256_file(self.models[model])}.{base}"
        )

    def assert_serving(self, *names: str) -> str:
        return oh.assert_whole_model(
            self.device, {sha256_file(self.models[n]): self.models[n] for n in names}
        )


@pytest.fixture
def fleet(baseline, tmp_path, ota_models):
    f = Fleet(baseline, tmp_path, ota_models)
    yield f
    f.server.stop()


def test_publish_and_install_a_newer_version(fleet):
    fleet.assert_serving("v1")
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)
    result = fleet.poll()
    assert result.state == "Success" and result.model_version == 2
    fleet.assert_serving("v2")
    status = oh.status_of(fleet.device)
    assert status["state"] == "Success" and status["serving"] == sha256_file(fleet.models["v2"])
    assert "up to date" in fleet.poll().message


def test_signed_custom_metadata_describes_the_model(fleet):
    result = repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2, profiles=["rpi4", "rpi5"])
    targets = json.loads(
        (
            fleet.repo / "public" / "metadata" / f"{result.versions['targets']}.targets.json"
        ).read_text()
    )["signed"]["targets"]
    custom = targets["models/kws.tflite"]["custom"]
    assert (
        custom["model_version"] == 2
        and custom["arch"] == ["aarch64"]
        and custom["profiles"] == ["rpi4", "rpi5"]
    )
    assert custom["min_runtime_version"] and custom["signature"]["inputs"][0]["dtype"] == "int8"
    assert custom["golden_npz"] and len(custom["golden_sha256"]) == 64
    assert not list((fleet.repo / "public").rglob("*.pem"))  # private keys are never served


def test_publish_refuses_a_version_that_does_not_increase(fleet):
    with pytest.raises(OtaError, match="already at version 1"):
        repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 1)
    with pytest.raises(UsageError):
        repo_api.publish(fleet.repo, fleet.models["v2"], "bad name!", 2)


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("flip", "LengthOrHashMismatchError"),
        ("truncate", "LengthOrHashMismatchError"),
        ("pad", "DownloadLengthMismatchError"),
    ],
)
def test_tampered_truncated_or_padded_target_is_rejected(fleet, damage, reason):
    # the full target only (a compressed one: tests/test_ota_compressed.py)
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2, compress="none")
    served = fleet.served("kws", "v2")
    assert served.exists(), served
    raw = bytearray(served.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "truncate":
        raw = raw[:-100]
    else:
        raw += b"\0" * 4096
    served.write_bytes(bytes(raw))
    result = fleet.poll()
    assert result.state == "Failure" and result.reason == reason, result
    assert "still serving the last good model" in result.message
    fleet.assert_serving("v1")
    assert not (fleet.device / ".staging").exists()


def test_replayed_old_timestamp_is_rejected(fleet):
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)
    old_timestamp = (fleet.repo / "public" / "metadata" / "timestamp.json").read_bytes()
    repo_api.refresh(fleet.repo)
    assert fleet.poll().state == "Success"
    (fleet.repo / "public" / "metadata" / "timestamp.json").write_bytes(old_timestamp)
    result = fleet.poll()
    assert result.reason == "BadVersionNumberError", result
    fleet.assert_serving("v2")


def test_expired_metadata_is_rejected_and_refresh_fixes_it(fleet):
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)
    repo_api.refresh(fleet.repo, timestamp_days=-1)
    result = fleet.poll()
    assert result.reason == "ExpiredMetadataError", result
    fleet.assert_serving("v1")
    repo_api.refresh(fleet.repo)
    assert fleet.poll().state == "Success"
    fleet.assert_serving("v2")


def test_mix_and_match_metadata_is_rejected(fleet):
    result = repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)
    metadata = fleet.repo / "public" / "metadata"
    new, old = result.versions["targets"], result.versions["targets"] - 1
    (metadata / f"{new}.targets.json").write_bytes((metadata / f"{old}.targets.json").read_bytes())
    result = fleet.poll()
    assert result.reason == "BadVersionNumberError", result
    fleet.assert_serving("v1")


def test_edited_metadata_without_signature_is_rejected(fleet):
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)
    path = fleet.repo / "public" / "metadata" / "timestamp.json"
    doc = json.loads(path.read_text())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
    path.write_text(json.dumps(doc))
    result = fleet.poll()
    assert result.reason == "UnsignedMetadataError", result
    fleet.assert_serving("v1")


def test_targets_signed_by_an_unknown_key_are_rejected(fleet):
    from securesystemslib.signer import CryptoSigner

    custom = repo_api.model_metadata(fleet.models["v2"], 2)
    with repo_api._locked(fleet.repo) as state:
        state.signers["targets"] = CryptoSigner.generate_ed25519()  # an attacker's key
        repo_api._add_target(state, "models/kws.tflite", fleet.models["v2"], custom)
        state.write_targets_chain()
    result = fleet.poll()
    assert result.reason == "UnsignedMetadataError", result
    fleet.assert_serving("v1")


def test_lower_model_version_is_refused(fleet):
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)
    assert fleet.poll().state == "Success"
    repo_api.publish(
        fleet.repo, fleet.models["v3"], "kws", 1, allow_lower=True
    )  # signed, but older
    result = fleet.poll()
    assert (
        result.reason == "lower_version" and "lower than the installed version 2" in result.message
    )
    fleet.assert_serving("v2")


def test_wrong_arch_and_profile_are_refused(fleet):
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2, profiles=["rpi4"])
    assert fleet.poll().reason == "arch"
    assert fleet.poll(arch="aarch64", profile="rpi5").reason == "profile"
    fleet.assert_serving("v1")


def _public_files(repo) -> dict:
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in sorted((repo / "public").rglob("*"))
        if p.is_file()
    }


def test_publish_refuses_a_changed_signature_before_signing_anything(fleet):
    before = _public_files(fleet.repo)
    with pytest.raises(OtaError) as info:
        repo_api.publish(fleet.repo, fleet.models["wide"], "kws", 2)
    message = str(info.value)
    assert "input 0 shape [1, 8, 8, 1] -> [1, 12, 12, 1]" in message
    assert "models/kws.tflite version 1" in message and "--allow-signature-change" in message
    assert _public_files(fleet.repo) == before  # nothing written or signed
    result = repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)  # version 2 still free
    assert result.model_version == 2 and result.versions["targets"] == 3
    assert fleet.poll().model_version == 2
    fleet.assert_serving("v2")


def test_publish_to_a_group_compares_with_what_its_devices_run(fleet):
    with pytest.raises(OtaError, match="models/kws.tflite version 1"):
        repo_api.publish(fleet.repo, fleet.models["wide"], "kws", 2, group="canary")
    repo_api.publish(fleet.repo, fleet.models["wide"], "other", 1)  # another name: no baseline
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2, group="canary")
    with pytest.raises(OtaError, match="groups/canary/models/kws.tflite version 2"):
        repo_api.publish(fleet.repo, fleet.models["wide"], "kws", 3, group="canary")


def test_cli_publish_refuses_a_changed_signature_in_one_line(fleet, run_cli):
    args = ("ota", "publish", fleet.repo, fleet.models["wide"], "--name", "kws", "--version", "2")
    result = run_cli(*args, expect=1)
    assert_one_error_line(
        result, "input 0 shape [1, 8, 8, 1] -> [1, 12, 12, 1]", "--allow-signature-change"
    )
    assert "version 2" in run_cli(*args, "--allow-signature-change").stdout


def test_changed_input_signature_is_refused_unless_signed_as_allowed(fleet):
    # what a device does with such a target (signed without publish's check, e.g. by an
    # older tfedge)
    custom = repo_api.model_metadata(fleet.models["wide"], 2)
    with repo_api._locked(fleet.repo) as state:
        repo_api._add_target(state, "models/kws.tflite", fleet.models["wide"], custom)
        state.write_targets_chain()
    result = fleet.poll()
    assert result.reason == "signature" and "shape [1, 8, 8, 1] -> [1, 12, 12, 1]" in result.message
    fleet.assert_serving("v1")
    repo_api.publish(fleet.repo, fleet.models["wide"], "kws", 3, allow_signature_change=True)
    assert fleet.poll().state == "Success"
    fleet.assert_serving("wide")


def test_too_new_minimum_runtime_is_refused(fleet):
    custom = repo_api.model_metadata(fleet.models["v2"], 2)
    custom["min_runtime_version"] = "2.99.0"  # signed claim: needs a runtime this device lacks
    with repo_api._locked(fleet.repo) as state:
        repo_api._add_target(state, "models/kws.tflite", fleet.models["v2"], custom)
        state.write_targets_chain()
    result = fleet.poll()
    assert result.reason == "runtime" and "2.99.0" in result.message
    fleet.assert_serving("v1")


def test_runtime_versions_compare_across_numberings():
    assert tf_equivalent("ai-edge-litert", "2.3.0") == (2, 21, 0)
    assert tf_equivalent("ai-edge-litert", "1.4.0") == (2, 20, 0)
    assert tf_equivalent("tflite-runtime", "2.14.0") == (2, 14, 0)
    assert runtime_satisfies("ai-edge-litert", "1.0.1", "2.17.0")  # 1.0 is cut from TF 2.18
    assert not runtime_satisfies("ai-edge-litert", "1.0.1", "2.19.0")
    assert runtime_satisfies("tflite-runtime", "2.14.0", "1.14.0")
    assert not runtime_satisfies("tflite-runtime", "2.14.0", "2.15.0")
    assert runtime_satisfies("ai-edge-litert", "2.3.0", None)


def _publish_signed_broken(fleet, version: int = 2) -> str:
    """A correctly signed target whose bytes are a truncated model (metadata of a good one)."""
    custom = repo_api.model_metadata(fleet.models["v2"], version)
    with repo_api._locked(fleet.repo) as state:
        target = repo_api._add_target(state, "models/kws.tflite", fleet.models["broken"], custom)
        state.write_targets_chain()
    return target.hashes["sha256"]


def test_signed_but_broken_model_fails_its_smoke_test_and_nothing_switches(fleet):
    broken = _publish_signed_broken(fleet)
    result = fleet.poll()
    assert result.reason == "smoke_test" and "smoke test failed" in result.message, result
    fleet.assert_serving("v1")
    assert not (fleet.device / "versions" / f"{broken}.tflite").exists()


def test_failed_health_check_rolls_back_and_is_not_retried(fleet):
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)
    result = fleet.poll(health_cmd='test -s "$TFEDGE_MODEL" && exit 3')
    assert result.state == "RolledBack" and "exited 3" in result.message, result
    fleet.assert_serving("v1")
    assert oh.status_of(fleet.device)["state"] == "RolledBack"
    again = fleet.poll()
    assert again.reason == "rejected"
    fleet.assert_serving("v1")


def test_post_switch_command_runs_with_the_new_model(fleet, tmp_path):
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)
    marker = tmp_path / "reloaded"
    assert fleet.poll(post_switch_cmd=f'sha256sum "$TFEDGE_MODEL" > {marker}').state == "Success"
    assert marker.read_text().split()[0] == sha256_file(fleet.models["v2"])


def test_unreachable_repository_keeps_serving_and_says_so(fleet):
    fleet.server.stop()
    result = fleet.poll()
    assert result.state == "Failure" and result.reason == "unreachable"
    assert "still serving the last good model" in result.message and result.model_version == 1
    fleet.assert_serving("v1")
    assert oh.status_of(fleet.device)["reason"] == "unreachable"
    fleet.server = oh.serve(fleet.repo)  # the fixture stops it


def test_key_rotation_is_followed_by_devices(fleet):
    for role in ("timestamp", "snapshot", "targets", "root"):
        repo_api.rotate_keys(fleet.repo, role)
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2)
    assert fleet.poll().state == "Success"  # the device still trusts only its installed 1.root.json
    fleet.assert_serving("v2")


def test_staged_rollout_canary_first_then_everyone(fleet, tmp_path):
    canary = tmp_path / "canary"
    shutil.copytree(fleet.device, canary, symlinks=True)
    repo_api.publish(fleet.repo, fleet.models["v2"], "kws", 2, group="canary")
    assert "up to date" in fleet.poll().message
    fleet.assert_serving("v1")
    assert oh.poll(fleet.server.url, canary, fleet.repo, group="canary").ok
    oh.assert_whole_model(canary, {sha256_file(fleet.models["v2"]): fleet.models["v2"]})
    repo_api.promote(fleet.repo, "kws", "canary")
    assert fleet.poll().state == "Success"
    fleet.assert_serving("v2")


def test_cli_init_publish_refresh_rotate(tmp_path, ota_models, run_cli):
    repo = tmp_path / "repo"
    assert "1.root.json" in run_cli("ota", "init", repo).stdout
    assert (repo / "keys" / "root.pem").stat().st_mode & 0o077 == 0
    out = run_cli(
        "ota",
        "publish",
        repo,
        ota_models["v1"],
        "--name",
        "kws",
        "--version",
        "1",
        "--profile",
        "rpi4",
        "--group",
        "canary",
        "--json",
    ).stdout
    assert json.loads(out)["target"] == "groups/canary/models/kws.tflite"
    assert "timestamp v3" in run_cli("ota", "refresh", repo).stdout
    assert "root v2" in run_cli("ota", "rotate-keys", repo, "--role", "timestamp").stdout
    assert (
        "refusing"
        not in run_cli("ota", "promote", repo, "--name", "kws", "--group", "canary").stdout
    )
    result = run_cli("ota", "init", repo, expect=1)
    assert "already holds a repository" in result.stderr
