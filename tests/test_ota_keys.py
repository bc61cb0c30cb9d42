"""Key custody and the repository's layout (issue 12, part 4), with real python-tuf metadata
served over loopback HTTP and the real agent.

* ``public/`` and the agent's ``status.json``/``manifest.json`` are readable by another user
  whatever the umask (read as ``nobody`` when the tests run as root).
* The root key can be offline: publish, refresh and promote never load it; key rotation
  asks for a threshold of root keys and says which one is missing.
* Private keys can be encrypted (``encfile:`` signer, ``TFEDGE_KEY_PASSWORD``).
* Golden data is its own TUF target (custom schema 2); an agent of the version before
  (extracted from git at test time) still installs from a repository written now.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import ota_helpers as oh
from tfedge.errors import OtaError, UsageError
from tfedge.fsutil import sha256_file
from tfedge.ota import keys as keystore
from tfedge.ota import repository as repo_api

from .conftest import assert_one_error_line

# The last commit whose agent reads only custom["golden_npz"] (devices in the field today).
LEGACY_AGENT_COMMIT = "93ad706f8c343e663d48b2f66400b75b3435a4ef"
PASSWORD = "correct horse battery staple"


def _metadata(repo: Path, name: str) -> dict:
    return json.loads((repo / "public" / "metadata" / name).read_text())


def _latest_targets(repo: Path) -> dict:
    version = _metadata(repo, "timestamp.json")["signed"]["meta"]["snapshot.json"]["version"]
    snapshot = _metadata(repo, f"{version}.snapshot.json")
    return _metadata(repo, f"{snapshot['signed']['meta']['targets.json']['version']}.targets.json")


def _public_files(repo: Path) -> dict:
    return {p: p.read_bytes() for p in sorted((repo / "public").rglob("*")) if p.is_file()}


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def _served(repo: Path):
    server = oh.serve(repo)
    try:
        yield server
    finally:
        server.stop()


def _poll(repo: Path, device: Path, **kw):
    with _served(repo) as server:
        return oh.poll(server.url, device, repo, **kw)


# ---------------------------------------------------------------- 1. readable by another user
def _as_nobody():
    os.setgid(65534)
    os.setuid(65534)


@contextlib.contextmanager
def _static_server_as_nobody(public: Path):
    """``python -m http.server`` over ``public`` running as ``nobody`` (a plain static server
    under another user, as in production); yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    python = shutil.which("python3", path="/usr/bin:/bin")  # the venv's may be root-only
    if python is None:
        pytest.fail("needs the system's python3 (/usr/bin) to serve as nobody")
    argv = [python, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(
        [*argv, "--directory", str(public)],
        preexec_fn=_as_nobody,
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def test_public_tree_and_agent_status_are_readable_by_another_user(ota_models):
    # tmp_path lives under a 0700 folder: nobody could not reach it whatever the modes
    base = Path(tempfile.mkdtemp(prefix="tfedge-modes-"))
    try:
        os.chmod(base, 0o755)
        repo, device = base / "repo", base / "device" / "kws"
        as_root = os.geteuid() == 0
        with _umask(0o077):  # a strict umask must not leak into what is served
            repo_api.init_repository(repo)
            repo_api.publish(repo, ota_models["v1"], "kws", 1, group="canary")
            repo_api.promote(repo, "kws", "canary")
            if as_root:  # the device pulls from a static server running as nobody
                with _static_server_as_nobody(repo / "public") as url:
                    assert oh.poll(url, device, repo).state == "Success"
            else:
                assert _poll(repo, device).state == "Success"
        public = [repo / "public", *(repo / "public").rglob("*")]
        assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in public if p.is_dir()} == {"0o755"}
        files = [p for p in public if p.is_file()]
        assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o644"}
        assert any(p.name == "1.root.json" for p in files) and len(files) > 6
        assert stat.S_IMODE((repo / "keys").stat().st_mode) == 0o700
        assert {stat.S_IMODE(p.stat().st_mode) for p in (repo / "keys").iterdir()} == {0o600}
        agent_files = [device / "status.json", device / "manifest.json"]
        assert {stat.S_IMODE(p.stat().st_mode) for p in agent_files} == {0o644}
        assert stat.S_IMODE(device.stat().st_mode) == 0o755
        if not as_root:
            return
        readable = subprocess.run(
            ["cat", *map(str, files + agent_files)],
            preexec_fn=_as_nobody,
            capture_output=True,
            timeout=30,
        )
        assert readable.returncode == 0, readable.stderr
        secret = subprocess.run(
            ["cat", str(repo / "keys" / "targets.pem")],
            preexec_fn=_as_nobody,
            capture_output=True,
            timeout=30,
        )
        assert secret.returncode != 0  # private keys stay private
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- 2. offline root key
def test_publish_refresh_promote_work_with_the_root_key_moved_away(tmp_path, ota_models, run_cli):
    from securesystemslib.signer import CryptoSigner

    repo, device = tmp_path / "repo", tmp_path / "device"
    repo_api.init_repository(repo)
    offline = tmp_path / "usb"
    offline.mkdir()
    shutil.move(repo / "keys" / "root.pem", offline / "root.pem")
    repo_api.publish(repo, ota_models["v1"], "kws", 1, group="canary")
    repo_api.refresh(repo)
    repo_api.promote(repo, "kws", "canary")
    assert _poll(repo, device).state == "Success"

    before = _public_files(repo)
    result = run_cli("ota", "rotate-keys", repo, "--role", "root", expect=1)
    assert_one_error_line(result, "root key", str(repo / "keys" / "root.pem"), "--root-key")
    result = run_cli("ota", "rotate-keys", repo, "--role", "targets", expect=1)
    assert_one_error_line(result, "needs 1 of the 1 root key", "missing")
    assert _public_files(repo) == before  # nothing signed or written

    stray = tmp_path / "stray.pem"
    keystore.save_key(stray, CryptoSigner.generate_ed25519())
    result = run_cli("ota", "rotate-keys", repo, "--role", "targets", "--root-key", stray, expect=1)
    assert_one_error_line(result, "not one of this repository's root keys")

    root_key = offline / "root.pem"
    for role in ("targets", "root"):
        run_cli("ota", "rotate-keys", repo, "--role", role, "--root-key", root_key)
    assert repo_api.repo_status(repo).versions["root"] == 3
    repo_api.publish(repo, ota_models["v2"], "kws", 2)
    result = _poll(repo, device)  # the device trusts its 1.root.json and follows the chain
    assert result.state == "Success" and result.model_version == 2, result


def test_init_writes_root_keys_where_told_with_a_threshold(tmp_path, ota_models, run_cli):
    repo, device = tmp_path / "repo", tmp_path / "device"
    disks = [tmp_path / f"usb{i}" for i in (1, 2, 3)]
    for disk in disks:
        disk.mkdir()
    files = [disk / "root.pem" for disk in disks]
    args = [a for f in files for a in ("--root-key", f)]
    result = run_cli("ota", "init", repo, *args, "--root-threshold", "4", expect=2)
    assert_one_error_line(result, "threshold of 4 with 3 root key")
    assert not repo.exists()
    run_cli("ota", "init", repo, *args, "--root-threshold", "2")
    assert not (repo / "keys" / "root.pem").exists()
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    root = _metadata(repo, "1.root.json")["signed"]["roles"]["root"]
    assert root["threshold"] == 2 and len(root["keyids"]) == 3
    repo_api.publish(repo, ota_models["v1"], "kws", 1)
    assert _poll(repo, device).state == "Success"

    for disk in disks:  # every disk unplugged
        shutil.move(disk / "root.pem", tmp_path / f"{disk.name}.pem")
    usb1, usb2, usb3 = (tmp_path / f"usb{i}.pem" for i in (1, 2, 3))
    with pytest.raises(OtaError, match=r"needs 2 of the 3 root key\(s\): 0 found; missing: "):
        repo_api.rotate_keys(repo, "timestamp")
    with pytest.raises(OtaError, match=r"needs 2 of the 3 root key\(s\): 1 found"):
        repo_api.rotate_keys(repo, "timestamp", root_keys=[usb1])
    repo_api.rotate_keys(repo, "timestamp", root_keys=[usb3, usb1])
    shutil.copy(usb3, tmp_path / "old3.pem")
    repo_api.rotate_keys(repo, "root", root_keys=[usb3, usb1])  # replaces the key in usb3.pem
    assert usb3.read_bytes() != (tmp_path / "old3.pem").read_bytes()
    with pytest.raises(OtaError, match="not one of this repository's root keys"):
        repo_api.rotate_keys(repo, "snapshot", root_keys=[usb2, tmp_path / "old3.pem"])
    repo_api.rotate_keys(repo, "snapshot", root_keys=[usb2, usb3])
    repo_api.publish(repo, ota_models["v2"], "kws", 2)
    result = _poll(repo, device)  # 1.root.json -> 2 -> 3 -> 4, each signed by 2 of 3
    assert result.state == "Success" and result.model_version == 2, result


def test_init_refuses_to_overwrite_a_root_key(tmp_path):
    existing = tmp_path / "root.pem"
    existing.write_text("keep me")
    with pytest.raises(UsageError, match="already exists"):
        repo_api.init_repository(tmp_path / "repo", root_keys=[existing])
    with pytest.raises(UsageError, match="not a writable directory"):
        repo_api.init_repository(tmp_path / "repo", root_keys=[tmp_path / "nodisk" / "root.pem"])
    assert existing.read_text() == "keep me" and not (tmp_path / "repo").exists()


# ---------------------------------------------------------------- 3. encrypted keys
def test_encrypted_keys_publish_and_a_wrong_password_is_one_error(
    tmp_path, ota_models, run_cli, monkeypatch
):
    repo, device = tmp_path / "repo", tmp_path / "device"
    monkeypatch.setenv(keystore.PASSWORD_ENV, PASSWORD)
    run_cli("ota", "init", repo, "--encrypt-keys")
    for key in (repo / "keys").glob("*.pem"):
        text = key.read_text()
        assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----"), key
        assert "BEGIN PRIVATE KEY" not in text
        # PBKDF2 with 600,000 iterations, not the 2,048 of cryptography's PKCS#8 default
        der = base64.b64decode("".join(text.splitlines()[1:-1]))
        assert b"\x02\x03\x09\x27\xc0" in der  # INTEGER 600000
    where = json.loads((repo / "keys" / "signers.json").read_text())
    assert where["targets"][0]["uri"] == "encfile:targets.pem"
    publish = ("ota", "publish", repo, ota_models["v1"], "--name", "kws", "--version", "1")
    run_cli(*publish, "--no-legacy-golden")
    assert (
        "golden_npz"
        not in _latest_targets(repo)["signed"]["targets"]["models/kws.tflite"]["custom"]
    )
    assert _poll(repo, device).state == "Success"

    before = _public_files(repo)
    monkeypatch.setenv(keystore.PASSWORD_ENV, "wrong")
    result = run_cli(*publish[:-1], "2", expect=1)
    assert_one_error_line(result, "cannot decrypt", "wrong password", keystore.PASSWORD_ENV)
    monkeypatch.delenv(keystore.PASSWORD_ENV)
    result = run_cli("ota", "refresh", repo, expect=1)  # cron without the variable: no prompt
    assert_one_error_line(result, "encrypted and no password was given", keystore.PASSWORD_ENV)
    assert _public_files(repo) == before

    # the library takes a password or a prompt; the prompt is asked once per operation
    asked = []
    repo_api.refresh(repo, password=lambda label: asked.append(label) or PASSWORD)
    assert len(asked) == 1 and "snapshot key" in asked[0]
    # rotation keeps the key encrypted, with the same password
    repo_api.rotate_keys(repo, "targets", password=PASSWORD)
    assert (repo / "keys" / "targets.pem").read_text().startswith("-----BEGIN ENCRYPTED")
    repo_api.publish(repo, ota_models["v2"], "kws", 2, password=PASSWORD)
    assert _poll(repo, device).model_version == 2


def test_encrypted_file_signer_is_registered_with_securesystemslib(tmp_path):
    from securesystemslib.signer import CryptoSigner, Signer

    signer = CryptoSigner.generate_ed25519()
    path = tmp_path / "k.pem"
    keystore.save_key(path, signer, PASSWORD.encode())
    keystore.register()
    loaded = Signer.from_priv_key_uri(f"encfile:{path}", signer.public_key, lambda secret: PASSWORD)
    sig = loaded.sign(b"payload")
    signer.public_key.verify_signature(sig, b"payload")
    with pytest.raises(OtaError, match="wrong password"):
        Signer.from_priv_key_uri(f"encfile:{path}", signer.public_key, lambda secret: "nope")


# ---------------------------------------------------------------- 4. golden data as a target
def _legacy_agent(tmp_path: Path) -> Path:
    """The device package of LEGACY_AGENT_COMMIT, extracted from git into ``tmp_path``."""
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.fail("needs git and the clone's history for the legacy agent")
    check = subprocess.run(
        ["git", "-C", str(root), "cat-file", "-e", f"{LEGACY_AGENT_COMMIT}^{{commit}}"],
        capture_output=True,
    )
    if check.returncode != 0:
        pytest.fail(f"commit {LEGACY_AGENT_COMMIT[:12]} is not in this clone (a shallow clone?)")
    out = tmp_path / "legacy"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", LEGACY_AGENT_COMMIT, "device/tfedge_device"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    source = (out / "device" / "tfedge_device" / "agent.py").read_text()
    assert "golden_npz" in source and "golden_target" not in source  # really the old agent
    return out / "device"


def _run_legacy(pythonpath: Path, url: str, device: Path, repo: Path):
    root_json = repo / "public" / "metadata" / "1.root.json"
    env = dict(oh.agent_env(), PYTHONPATH=str(pythonpath))
    return subprocess.run(
        [
            *oh.agent_argv(url, device, root_json)[:1],
            "-c",
            "import sys, tfedge_device.agent as a; print(a.__file__, file=sys.stderr); "
            "sys.exit(a.main(sys.argv[1:]))",
            *oh.agent_argv(url, device, root_json)[3:],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_golden_data_is_a_target_and_todays_agents_still_install(tmp_path, ota_models):
    legacy = _legacy_agent(tmp_path)
    repo = tmp_path / "repo"
    repo_api.init_repository(repo)
    repo_api.publish(repo, ota_models["v1"], "kws", 1)
    targets = _latest_targets(repo)["signed"]["targets"]
    custom = targets["models/kws.tflite"]["custom"]
    meta = custom["tfedge"]
    assert meta["schema"] >= 2 and meta["golden_target"] in targets
    golden = targets[meta["golden_target"]]
    assert golden["hashes"] == meta["golden_hashes"] and golden["length"] == meta["golden_length"]
    assert custom["golden_npz"] and custom["golden_sha256"] == meta["golden_hashes"]["sha256"]

    old_device, new_device = tmp_path / "old-device", tmp_path / "new-device"
    with _served(repo) as server:
        old = _run_legacy(legacy, server.url, old_device, repo)
        assert str(legacy) in old.stderr  # the extracted agent ran, not today's
        assert old.returncode == 0 and "Success: installed version 1" in old.stderr, old.stderr
        assert oh.poll(server.url, new_device, repo).state == "Success"

        # golden data only as a target: the new agent installs, the old one refuses safely
        repo_api.publish(repo, ota_models["v2"], "kws", 2, legacy_golden=False)
        custom = _latest_targets(repo)["signed"]["targets"]["models/kws.tflite"]["custom"]
        assert "golden_npz" not in custom
        # v1's golden and compressed form dropped: v2's model, golden, compressed form remain
        assert len(_latest_targets(repo)["signed"]["targets"]) == 3
        assert oh.poll(server.url, new_device, repo).model_version == 2
        old = _run_legacy(legacy, server.url, old_device, repo)
        assert old.returncode == 1 and "golden data does not match" in old.stderr, old.stderr
        oh.assert_whole_model(old_device, {sha256_file(ota_models["v1"]): ota_models["v1"]})

        # a repository written before schema 2 (golden_npz only): the new agent falls back
        custom = repo_api.model_metadata(ota_models["v3"], 3)
        del custom["tfedge"]
        with repo_api._locked(repo) as state:
            repo_api._add_target(state, "models/kws.tflite", ota_models["v3"], custom)
            state.write_targets_chain()
        assert oh.poll(server.url, new_device, repo).model_version == 3


def test_a_tampered_golden_target_is_refused_by_tuf(tmp_path, ota_models):
    repo, device = tmp_path / "repo", tmp_path / "device"
    repo_api.init_repository(repo)
    repo_api.publish(repo, ota_models["v1"], "kws", 1)
    assert _poll(repo, device).state == "Success"
    repo_api.publish(repo, ota_models["v2"], "kws", 2, legacy_golden=False)
    path = _latest_targets(repo)["signed"]["targets"]["models/kws.tflite"]["custom"]["tfedge"][
        "golden_target"
    ]
    sha = path.split("/")[1].split(".")[0]
    served = repo / "public" / "targets" / "golden" / f"{sha}.{sha}.npz"
    raw = bytearray(served.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    served.write_bytes(bytes(raw))
    result = _poll(repo, device)
    assert result.state == "Failure" and result.reason == "LengthOrHashMismatchError", result
    oh.assert_whole_model(device, {sha256_file(ota_models["v1"]): ota_models["v1"]})


def test_publish_refuses_a_targets_json_devices_would_reject(tmp_path, ota_models, monkeypatch):
    repo = tmp_path / "repo"
    repo_api.init_repository(repo)
    repo_api.publish(repo, ota_models["v1"], "kws", 1, legacy_golden=False)
    small = len((repo / "public" / "metadata" / "2.targets.json").read_bytes())
    monkeypatch.setattr(repo_api, "TARGETS_MAX_LENGTH", small + 100)  # base64 golden: more
    before = {p: b for p, b in _public_files(repo).items() if "metadata" in p.parts}
    with pytest.raises(OtaError, match="--no-legacy-golden") as info:
        repo_api.publish(repo, ota_models["v2"], "kws", 2)  # base64 golden inside
    assert "devices accept" in str(info.value)
    assert {p: b for p, b in _public_files(repo).items() if "metadata" in p.parts} == before
    repo_api.publish(repo, ota_models["v2"], "kws", 2, legacy_golden=False)
