"""tfedge push / rollback / status against a real OpenSSH server on loopback.

The "device" is this machine through Debian's sshd (fixture from the harness tests), with the
device-only venv (Debian's python3 + ``./device``: numpy, LiteRT, tuf; no TensorFlow, no tfedge)
as the device Python. Nothing about SSH is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests import harness_helpers as hh
from tests import ota_helpers as oh
from tests.conftest import assert_one_error_line
from tfedge.errors import OtaError, TargetError, UsageError
from tfedge.fsutil import sha256_file
from tfedge.ota.push import push


def opts(server, **extra) -> dict:
    return {
        "python": oh.device_python(),
        "key": str(server.user_key),
        "known_hosts": str(server.known_hosts),
        **extra,
    }


def cli_opts(server) -> list[str]:
    return [
        "--key",
        server.user_key,
        "--known-hosts",
        server.known_hosts,
        "--remote-python",
        oh.device_python(),
    ]


def test_push_switches_atomically_and_keeps_history(sshd, ota_models, tmp_path, ssh_home):
    device = tmp_path / "kws"
    url = sshd.url(str(device))
    first = push(ota_models["v1"], url, name="kws", **opts(sshd))
    assert first.switched and first.previous is None and first.uploaded and first.smoke["ok"]
    second = push(ota_models["v2"], url, name="kws", **opts(sshd))
    assert second.previous == first.sha256
    assert oh.assert_whole_model(device, {second.sha256: ota_models["v2"]}) == second.sha256
    assert set(second.seconds) >= {"connect", "upload", "smoke_test", "switch", "total"}
    manifest = json.loads((device / "manifest.json").read_text())
    assert [r["sha256"] for r in manifest["history"]] == [first.sha256, second.sha256]
    assert manifest["history"][-1]["signature"]["inputs"][0]["shape"] == [1, 8, 8, 1]
    assert not [p for p in device.rglob("*.part")]
    again = push(ota_models["v2"], url, name="kws", **opts(sshd))
    assert again.already_current and not again.switched


def test_rollback_and_status_through_the_cli(sshd, ota_models, tmp_path, ssh_home, run_cli):
    device = tmp_path / "kws"
    url = sshd.url(str(device))
    run_cli("push", ota_models["v1"], url, "--name", "kws", *cli_opts(sshd))
    out = run_cli("push", ota_models["v2"], url, "--name", "kws", *cli_opts(sshd)).stdout
    assert "switched to" in out and "smoke test passed" in out
    assert f"(lzma) for a {ota_models['v2'].stat().st_size:,}-byte model" in out
    status = json.loads(run_cli("status", url, "--json", *cli_opts(sshd)).stdout)
    assert status["current"]["sha256"] == sha256_file(ota_models["v2"])
    assert status["previous"]["sha256"] == sha256_file(ota_models["v1"])
    assert "rolled back to" in run_cli("rollback", url, "--name", "kws", *cli_opts(sshd)).stdout
    oh.assert_whole_model(device, {sha256_file(ota_models["v1"]): ota_models["v1"]})
    status = json.loads(run_cli("status", url, "--json", *cli_opts(sshd)).stdout)
    assert status["previous"]["sha256"] == sha256_file(ota_models["v2"])  # rollback twice toggles


def _partials(device: Path) -> list[Path]:
    return [p for p in device.rglob("*") if p.name.endswith(".part")]


def _codec_notes(result) -> list[str]:
    return [n for n in result.notes if n.startswith("sent ")]


def test_push_sends_the_model_compressed(sshd, ota_models, tmp_path, ssh_home):
    """lzma by default, zstd where the device imports zstandard (the device venv has it);
    the device decompresses, checks the sha256 and switches as for an uncompressed push."""
    device = tmp_path / "kws"
    url = sshd.url(str(device))
    first = push(ota_models["v1"], url, name="kws", **opts(sshd))
    size = ota_models["v1"].stat().st_size
    assert (first.compression, first.model_bytes) == ("lzma", size) and first.smoke["ok"]
    assert 0 < first.sent_bytes < size and not _codec_notes(first), first
    second = push(ota_models["v2"], url, name="kws", compress="zstd", **opts(sshd))
    assert second.compression == "zstd" and 0 < second.sent_bytes < second.model_bytes
    assert second.smoke["ok"] and not _codec_notes(second), second
    assert oh.assert_whole_model(device, {second.sha256: ota_models["v2"]}) == second.sha256
    assert (device / "versions" / f"{first.sha256}.tflite").read_bytes() == ota_models[
        "v1"
    ].read_bytes()
    back = push(ota_models["v1"], url, name="kws", smoke_test=False, **opts(sshd))  # kept
    assert back.switched and not back.uploaded and back.sent_bytes == 0
    assert not _partials(device)


def test_push_falls_back_to_what_the_device_decodes(sshd, ota_models, tmp_path, ssh_home):
    """Debian's python3 has no zstandard: lzma instead, with a note. A device Python that
    cannot run: the model goes uncompressed, with a note."""
    device = tmp_path / "kws"
    url = sshd.url(str(device))
    plain = opts(sshd, python="/usr/bin/python3")
    first = push(ota_models["v1"], url, name="kws", smoke_test=False, compress="zstd", **plain)
    assert first.compression == "lzma" and first.switched, first
    assert [n for n in _codec_notes(first) if "no zstandard package" in n], first.notes
    missing = opts(sshd, python=str(tmp_path / "no-such-python"))
    second = push(ota_models["v2"], url, name="kws", smoke_test=False, **missing)
    assert second.compression == "none" and second.sent_bytes == second.model_bytes
    assert [n for n in _codec_notes(second) if "cannot decompress" in n], second.notes
    oh.assert_whole_model(device, {second.sha256: ota_models["v2"]})
    assert not _partials(device)


def test_a_bad_stream_on_the_device_switches_nothing(sshd, ota_models, tmp_path, ssh_home):
    """The device's decompressor gets a truncated stream (a wrapper cuts its input): one
    error, the old model stays active, no .part left."""
    device = tmp_path / "kws"
    url = sshd.url(str(device))
    v1 = push(ota_models["v1"], url, name="kws", smoke_test=False, **opts(sshd)).sha256
    cutting = tmp_path / "cutting-python"  # the decompress command has 5 arguments
    cutting.write_text(
        f'#!/bin/sh\nif [ $# -eq 5 ]; then head -c 100 | {oh.device_python()} "$@"; exit; fi\n'
        f'exec {oh.device_python()} "$@"\n'
    )
    cutting.chmod(0o755)
    with pytest.raises(OtaError, match="decompressing the model .* truncated.*nothing was switch"):
        push(ota_models["v2"], url, name="kws", smoke_test=False, **opts(sshd, python=str(cutting)))
    oh.assert_whole_model(device, {v1: ota_models["v1"]})
    assert not _partials(device)


def test_auto_compression_skips_models_it_would_not_shrink(tmp_path):
    """``auto`` estimates lzma's ratio from samples inside the model (its weights)."""
    from tfedge.ota.compress import SAMPLE_SIZE, estimate_ratio

    noise = tmp_path / "noise.tflite"  # like random int8 weights
    noise.write_bytes(np.random.default_rng(0).bytes(20 * SAMPLE_SIZE))
    sparse = tmp_path / "sparse.tflite"  # like pruned weights: mostly zeros
    sparse.write_bytes(bytes(10 * SAMPLE_SIZE) + noise.read_bytes()[: 10 * SAMPLE_SIZE])
    assert estimate_ratio(noise, "lzma") > 0.99
    assert estimate_ratio(sparse, "lzma") < 0.6
    small = tmp_path / "small.tflite"
    small.write_bytes(noise.read_bytes()[: 4 * SAMPLE_SIZE])
    assert estimate_ratio(small, "lzma") == 0.0  # small models are always compressed


def test_unknown_compression_is_one_usage_error(run_cli, tmp_path):
    model = tmp_path / "m.tflite"  # refused before it is read, and before any connection
    model.write_bytes(b"not read")
    url = f"ssh://nobody@127.0.0.1:9/{tmp_path}/kws"
    result = run_cli("push", model, url, "--compress", "foo", expect=2)
    assert_one_error_line(result, "--compress", "foo")
    with pytest.raises(UsageError, match="unknown compression"):
        push(model, url, compress="gzip")
    assert list(tmp_path.iterdir()) == [model] and model.read_bytes() == b"not read"


def test_rollback_without_history_is_a_clear_error(sshd, ota_models, tmp_path, ssh_home, run_cli):
    url = sshd.url(str(tmp_path / "kws"))
    push(ota_models["v1"], url, name="kws", **opts(sshd))
    result = run_cli("rollback", url, *cli_opts(sshd), expect=1)
    assert_one_error_line(result, "no previous version")


def test_signature_change_is_refused_unless_allowed(sshd, ota_models, tmp_path, ssh_home):
    device = tmp_path / "kws"
    url = sshd.url(str(device))
    v1 = push(ota_models["v1"], url, name="kws", **opts(sshd)).sha256
    with pytest.raises(OtaError, match="signature differs.*shape"):
        push(ota_models["wide"], url, name="kws", **opts(sshd))
    oh.assert_whole_model(device, {v1: ota_models["v1"]})
    assert push(
        ota_models["wide"], url, name="kws", allow_signature_change=True, **opts(sshd)
    ).switched


def test_wrong_model_name_and_bad_urls(sshd, ota_models, tmp_path, ssh_home):
    url = sshd.url(str(tmp_path / "kws"))
    push(ota_models["v1"], url, name="kws", **opts(sshd))
    with pytest.raises(OtaError, match="holds model 'kws'"):
        push(ota_models["v2"], url, name="other", **opts(sshd))
    with pytest.raises(UsageError, match="names no model directory"):
        push(ota_models["v2"], sshd.url(), name="kws", **opts(sshd))
    with pytest.raises(UsageError, match="not an SSH target"):
        push(ota_models["v2"], "http://host/x", name="kws")


def test_keep_prunes_old_versions(sshd, ota_models, tmp_path, ssh_home):
    device = tmp_path / "kws"
    url = sshd.url(str(device))
    for name in ("v1", "v2", "v3"):
        result = push(ota_models[name], url, name="kws", keep=2, **opts(sshd))
    kept = sorted(p.name.split(".")[0] for p in (device / "versions").glob("*.tflite"))
    assert kept == sorted([sha256_file(ota_models["v2"]), sha256_file(ota_models["v3"])])
    assert result.removed


def test_wrong_host_key_is_refused_before_anything_changes(sshd, ota_models, tmp_path, ssh_home):
    other = hh.keygen(tmp_path / "other_host_key").with_suffix(".pub").read_text().split()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    device = tmp_path / "kws"
    with pytest.raises(TargetError, match="host key .* not trusted"):
        push(
            ota_models["v1"],
            sshd.url(str(device)),
            name="kws",
            **opts(sshd, known_hosts=str(wrong)),
        )
    assert not device.exists()


def test_smoke_test_failure_on_device_switches_nothing(sshd, ota_models, tmp_path, ssh_home):
    """The device script runs with an impossible tolerance (a wrapper adds --atol -1)."""
    device = tmp_path / "kws"
    url = sshd.url(str(device))
    v1 = push(ota_models["v1"], url, name="kws", **opts(sshd)).sha256
    strict = tmp_path / "strict-python"
    strict.write_text(f'#!/bin/sh\nexec {oh.device_python()} "$@" --atol -1\n')
    strict.chmod(0o755)
    with pytest.raises(OtaError, match="smoke test failed.*nothing was switched"):
        push(ota_models["v2"], url, name="kws", **opts(sshd, python=str(strict)))
    oh.assert_whole_model(device, {v1: ota_models["v1"]})
    assert not (device / "versions" / f"{sha256_file(ota_models['v2'])}.tflite").exists()


def test_device_without_runtime_gets_the_install_hint(sshd, ota_models, tmp_path, ssh_home):
    device = tmp_path / "kws"
    with pytest.raises(TargetError, match="no working TFLite runtime") as info:
        push(
            ota_models["v1"],
            sshd.url(str(device)),
            name="kws",
            **opts(sshd, python="/usr/bin/python3"),
        )
    assert "pip install" in info.value.hint and "--no-smoke-test" in info.value.hint
    assert oh.active_sha(device) is None
    assert push(
        ota_models["v1"],
        sshd.url(str(device)),
        name="kws",
        smoke_test=False,
        **opts(sshd, python="/usr/bin/python3"),
    ).switched


@pytest.fixture
def tiny_tmpfs(tmp_path):
    with oh.tmpfs(tmp_path / "small", "600k") as mount:
        yield mount


def test_disk_full_is_refused_and_old_model_stays(sshd, ota_models, tiny_tmpfs, ssh_home):
    device = tiny_tmpfs / "kws"
    url = sshd.url(str(device))
    v1 = push(ota_models["v1"], url, name="kws", **opts(sshd)).sha256
    filler = tiny_tmpfs / "filler"
    free = os.statvfs(tiny_tmpfs).f_bavail * os.statvfs(tiny_tmpfs).f_frsize
    filler.write_bytes(b"\0" * (free - 30_000))
    with pytest.raises(OtaError, match="not enough space"):
        push(ota_models["v2"], url, name="kws", **opts(sshd))
    oh.assert_whole_model(device, {v1: ota_models["v1"]})
    filler.unlink()
    assert push(ota_models["v2"], url, name="kws", **opts(sshd)).switched


# ---------------------------------------------------------------- the SSH server dies mid-upload
@pytest.fixture(scope="session")
def big_model(tmp_path_factory):
    return oh.big_model(tmp_path_factory.mktemp("big"))


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("compress", ["auto", "lzma"], ids=["sent-as-is", "streamed-lzma"])
def test_sshd_killed_mid_upload_keeps_old_model_and_next_push_cleans(
    ota_models, big_model, tmp_path, ssh_home, compress
):
    """``auto`` sends this model (random weights) as it is, over SFTP; ``lzma`` streams it
    to the device's decompressor: killed either way, the old model stays active."""
    server = hh.start_sshd(tmp_path / "sshd")
    device = tmp_path / "kws"
    try:
        v1 = push(
            ota_models["v1"],
            server.url(str(device)),
            name="kws",
            allow_signature_change=True,
            **opts(server),
        ).sha256
        outcome = []

        def push_big():
            try:
                outcome.append(
                    push(
                        big_model,
                        server.url(str(device)),
                        name="kws",
                        allow_signature_change=True,
                        smoke_test=False,
                        compress=compress,
                        **opts(server),
                    )
                )
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                outcome.append(exc)

        thread = threading.Thread(target=push_big)
        thread.start()
        deadline = time.monotonic() + 60
        while not list((device / "versions").glob(".*.part")) and time.monotonic() < deadline:
            time.sleep(0.001)
        sessions = _descendants(server.process.pid)
        for pid in sessions:  # freeze the upload where it is, then kill the whole server
            os.kill(pid, signal.SIGSTOP)
        partial = list((device / "versions").glob(".*.part"))
        for pid in [server.process.pid, *sessions]:
            os.kill(pid, signal.SIGKILL)
        server.process.wait()
        thread.join(60)
    finally:
        server.stop()
    assert partial and partial[0].stat().st_size < big_model.stat().st_size
    assert isinstance(outcome[0], TargetError), outcome
    oh.assert_whole_model(device, {v1: ota_models["v1"]})
    restarted = hh.start_sshd(tmp_path / "sshd2")
    try:
        result = push(
            big_model,
            restarted.url(str(device)),
            name="kws",
            allow_signature_change=True,
            **opts(restarted),
        )
    finally:
        restarted.stop()
    assert result.switched and partial[0].name in result.cleaned
    assert result.compression == "none", result.notes  # random weights: auto sends it as is
    assert [n for n in result.notes if "lzma would save about 0%" in n], result.notes
    assert not list(device.rglob("*.part"))
    oh.assert_whole_model(device, {result.sha256: big_model})
