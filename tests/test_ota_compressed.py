"""Compressed OTA targets (issue 16, first part), with real python-tuf metadata served over
loopback HTTP and the real agent.

* ``ota publish`` adds an xz form of the model as its own TUF target, named (codec,
  decompressed length and sha256) in the full target's signed custom metadata (schema 3).
* The agent installs from it; a tampered compressed target (TUF refuses it) or one that
  decompresses to other bytes makes it fall back to the full model, logging why.
* An agent of the previous release (extracted from git) still installs the full model.
* Decompression reads and writes fixed-size chunks (bounded memory) and stops at the
  signed length.
"""

from __future__ import annotations

import contextlib
import io
import json
import lzma
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import ota_helpers as oh
from tfedge.errors import UsageError
from tfedge.fsutil import sha256_file
from tfedge.ota import compress as compression
from tfedge.ota import repository as repo_api
from tfedge_device import decompress as dec

# The last commit of the device package before compressed targets (schema 2 agents).
PREVIOUS_AGENT_COMMIT = "02110bf399ebc7e4d01996b29223e3f2346968ab"


@contextlib.contextmanager
def _logged_server(repo: Path):
    """REPO/public over loopback HTTP; yields (url, the list of request paths)."""
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(repo / "public")))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def _targets(repo: Path) -> dict:
    meta = repo / "public" / "metadata"
    stamp = json.loads((meta / "timestamp.json").read_text())
    snapshot = json.loads(
        (meta / f"{stamp['signed']['meta']['snapshot.json']['version']}.snapshot.json").read_text()
    )
    version = snapshot["signed"]["meta"]["targets.json"]["version"]
    return json.loads((meta / f"{version}.targets.json").read_text())["signed"]["targets"]


def _poll(url: str, device: Path, repo: Path):
    from tfedge_device.agent import poll_once

    logs: list[str] = []
    result = poll_once(oh.agent_config(url, device, repo), log=logs.append)
    return result, "\n".join(logs)


def _model_fetches(requests: list[str]) -> list[str]:
    return [r for r in requests if r.startswith(("/targets/models/", "/targets/compressed/"))]


@pytest.mark.tf
@pytest.mark.slow
def test_agent_installs_from_the_compressed_target_and_falls_back_when_it_is_bad(
    tmp_path, ota_models
):
    repo, device = tmp_path / "repo", tmp_path / "device"
    repo_api.init_repository(repo)
    repo_api.publish(repo, ota_models["v1"], "kws", 1)
    targets = _targets(repo)
    meta = targets["models/kws.tflite"]["custom"]["tfedge"]
    (entry,) = meta["compressed"]
    assert meta["schema"] == 3 and entry["codec"] == "lzma" and entry["target"] in targets
    assert targets[entry["target"]]["hashes"] == entry["hashes"]
    assert entry["decompressed_hashes"] == targets["models/kws.tflite"]["hashes"]

    with _logged_server(repo) as (url, requests):
        # 1. the compressed target is fetched, not the full model
        result, log = _poll(url, device, repo)
        assert result.state == "Success" and result.model_version == 1, (result, log)
        fetched = _model_fetches(requests)
        assert len(fetched) == 1 and fetched[0].endswith(".tflite.xz"), fetched
        oh.assert_whole_model(device, {sha256_file(ota_models["v1"]): ota_models["v1"]})

        # 2. a tampered compressed target: TUF refuses it, the full model is installed
        repo_api.publish(repo, ota_models["v2"], "kws", 2)
        served = next((repo / "public" / "targets" / "compressed").glob("*.xz"))
        assert len(list(served.parent.iterdir())) == 2  # v1's still served, no longer signed
        entry2 = _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]["compressed"][0]
        assert entry["target"] not in _targets(repo)  # v1's form dropped from targets.json
        served = served.parent / f"{entry2['hashes']['sha256']}.{entry2['target'].split('/')[1]}"
        raw = bytearray(served.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        served.write_bytes(bytes(raw))
        requests.clear()
        result, log = _poll(url, device, repo)
        assert result.state == "Success" and result.model_version == 2, (result, log)
        assert "not used (LengthOrHashMismatchError" in log, log
        fetched = _model_fetches(requests)
        assert fetched[-1].endswith(".kws.tflite") and fetched[0].endswith(".xz"), fetched
        oh.assert_whole_model(device, {sha256_file(ota_models["v2"]): ota_models["v2"]})

        # 3. a correctly signed compressed target that decompresses to other bytes (v2's,
        #    while the metadata names v3's): refused after decompression, full model installed
        wrong, blob = compression.compressed_form(ota_models["v2"].read_bytes(), "lzma")
        v3 = ota_models["v3"].read_bytes()
        wrong = dict(
            wrong,
            decompressed_length=len(v3),
            decompressed_hashes={"sha256": sha256_file(ota_models["v3"])},
        )
        custom = repo_api.model_metadata(ota_models["v3"], 3)
        custom["tfedge"]["compressed"] = [wrong]
        with repo_api._locked(repo) as state:
            repo_api._add_target(
                state, "models/kws.tflite", ota_models["v3"], custom, compressed=[(wrong, blob)]
            )
            state.write_targets_chain()
        requests.clear()
        result, log = _poll(url, device, repo)
        assert result.state == "Success" and result.model_version == 3, (result, log)
        assert "decompresses to bytes other than the signed model" in log, log
        assert _model_fetches(requests)[-1].endswith(".kws.tflite")
        oh.assert_whole_model(device, {sha256_file(ota_models["v3"]): ota_models["v3"]})
    assert not (device / ".staging").exists()


@pytest.mark.tf
@pytest.mark.slow
def test_zstd_form_for_devices_with_zstandard_and_xz_for_the_others(
    tmp_path, ota_models, monkeypatch
):
    """``--compress zstd`` publishes .zst and .xz: an agent with zstandard installs from the
    .zst, one without it (zstandard made unimportable) from the .xz."""
    repo = tmp_path / "repo"
    repo_api.init_repository(repo)
    repo_api.publish(repo, ota_models["v1"], "kws", 1, compress="zstd")
    forms = _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]["compressed"]
    assert [f["codec"] for f in forms] == ["zstd", "lzma"], forms
    assert forms[0]["target"].endswith(".tflite.zst")
    sha = sha256_file(ota_models["v1"])
    with _logged_server(repo) as (url, requests):
        result, log = _poll(url, tmp_path / "with-zstd", repo)
        assert result.state == "Success", (result, log)
        assert [r.rsplit(".", 1)[1] for r in _model_fetches(requests)] == ["zst"]
        oh.assert_whole_model(tmp_path / "with-zstd", {sha: ota_models["v1"]})

        monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard fails
        assert dec.available_codecs() == ("lzma",)
        requests.clear()
        result, log = _poll(url, tmp_path / "without", repo)
        assert result.state == "Success", (result, log)
        assert [r.rsplit(".", 1)[1] for r in _model_fetches(requests)] == ["xz"]
        oh.assert_whole_model(tmp_path / "without", {sha: ota_models["v1"]})


def _previous_agent(tmp_path: Path) -> Path:
    """The device package of PREVIOUS_AGENT_COMMIT, extracted from git into ``tmp_path``."""
    device, source = oh.previous_agent(tmp_path, PREVIOUS_AGENT_COMMIT)
    assert "golden_target" in source and "compressed" not in source  # the schema-2 agent
    return device


@pytest.mark.tf
@pytest.mark.slow
def test_an_agent_of_the_previous_release_installs_the_full_target(tmp_path, ota_models):
    previous = _previous_agent(tmp_path)
    repo, device = tmp_path / "repo", tmp_path / "device"
    repo_api.init_repository(repo)
    repo_api.publish(repo, ota_models["v1"], "kws", 1)
    assert _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]["compressed"]
    root_json = repo / "public" / "metadata" / "1.root.json"
    with _logged_server(repo) as (url, requests):
        argv = oh.agent_argv(url, device, root_json)
        proc = subprocess.run(
            [
                argv[0],
                "-c",
                "import sys, tfedge_device.agent as a; print(a.__file__, file=sys.stderr); "
                "sys.exit(a.main(sys.argv[1:]))",
                *argv[3:],
            ],
            env=dict(oh.agent_env(), PYTHONPATH=str(previous)),
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert str(previous) in proc.stderr  # the extracted agent ran, not today's
    assert proc.returncode == 0 and "Success: installed version 1" in proc.stderr, proc.stderr
    assert [r for r in _model_fetches(requests) if r.endswith(".xz")] == []
    oh.assert_whole_model(device, {sha256_file(ota_models["v1"]): ota_models["v1"]})


# ---------------------------------------------------------------- decompression, no TensorFlow
class _Recording(io.BytesIO):
    """A file that records the size of every read and write."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self.sizes: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None and size > 0, "an unbounded read"
        self.sizes.append(size)
        return super().read(size)

    def write(self, data) -> int:
        self.sizes.append(len(data))
        return super().write(data)


@pytest.mark.parametrize("codec", ["lzma", "zstd"])
def test_decompression_reads_and_writes_fixed_size_chunks(codec):
    data = bytes(20 * 1024 * 1024)  # 20 MB of zeros: ~3 KB of xz, the worst ratio to stream
    src, dst = _Recording(compression.compress(data, codec)), _Recording()
    assert dec.decompress_stream(src, dst, codec, max_length=len(data)) == len(data)
    assert dst.getvalue() == data
    assert max(src.sizes) <= dec.CHUNK and max(dst.sizes) <= dec.CHUNK
    assert len(dst.sizes) >= len(data) // dec.CHUNK


@pytest.mark.parametrize(
    "case, message",
    [
        ("longer", "more than"),
        ("truncated", "truncated"),
        ("corrupt", "bad lzma stream"),
        ("trailing", "after the end"),
        ("codec", "not available"),
    ],
)
def test_bad_streams_are_refused(case, message):
    data = bytes(range(256)) * 1000
    packed = lzma.compress(data, preset=6)
    limit, codec = len(data), "lzma"
    if case == "longer":
        limit = len(data) - 1
    elif case == "truncated":
        packed = packed[:-40]
    elif case == "corrupt":
        packed = packed[:20] + bytes(b ^ 0x55 for b in packed[20:60]) + packed[60:]
    elif case == "trailing":
        packed += b"junk"
    else:
        codec = "brotli"
    with pytest.raises(dec.DecompressError, match=message):
        dec.decompress_stream(io.BytesIO(packed), io.BytesIO(), codec, max_length=limit)


@pytest.mark.parametrize(
    "case, message",
    [
        ("longer", "more than"),
        ("truncated", "truncated"),
        ("trailing", "after the end|Unknown frame descriptor"),  # zstandard may read past it
    ],
)
def test_bad_zstd_streams_are_refused(case, message):
    data = bytes(range(256)) * 1000
    packed, limit = compression.compress(data, "zstd"), len(data)
    if case == "longer":
        limit -= 1
    elif case == "truncated":
        packed = packed[:-40]
    else:
        packed += b"junk"
    with pytest.raises(dec.DecompressError, match=message):
        dec.decompress_stream(io.BytesIO(packed), io.BytesIO(), "zstd", max_length=limit)


def test_publish_codecs_are_checked(monkeypatch):
    with pytest.raises(UsageError, match="unknown compression"):
        compression.check_codec("gzip")
    compression.check_codec("zstd")  # the test extras install zstandard
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "zstandard", None)  # a host without it
        with pytest.raises(UsageError, match="zstandard"):
            compression.check_codec("zstd")
    entry, blob = compression.compressed_form(b"x" * 1000, "lzma")
    assert lzma.decompress(blob) == b"x" * 1000 and entry["target"].endswith(".tflite.xz")
    assert entry["decompressed_length"] == 1000 and entry["length"] == len(blob)


def test_publish_compress_option(run_cli, tmp_path, monkeypatch):
    from tests import hostile_tflite

    from .conftest import assert_one_error_line

    repo = tmp_path / "repo"
    repo_api.init_repository(repo)
    model = hostile_tflite.write(tmp_path / "kws.tflite", hostile_tflite.base())
    run_cli("ota", "publish", repo, model, "--name", "kws", "--version", "1", "--compress", "none")
    assert "compressed" not in _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]
    assert not (repo / "public" / "targets" / "compressed").exists()
    run_cli("ota", "publish", repo, model, "--name", "other", "--version", "1")
    (entry,) = _targets(repo)["models/other.tflite"]["custom"]["tfedge"]["compressed"]
    assert entry["codec"] == "lzma" and entry["target"] in _targets(repo)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "zstandard", None)  # a publishing host without it
        before = sorted((repo / "public").rglob("*"))
        result = run_cli(
            "ota",
            "publish",
            repo,
            model,
            "--name",
            "kws",
            "--version",
            "2",
            "--compress",
            "zstd",
            expect=2,
        )
        assert_one_error_line(result, "zstandard")
        assert sorted((repo / "public").rglob("*")) == before
