"""Per-tensor delta updates (issue 16, second part), with real python-tuf metadata served over
loopback HTTP and the real agent.

* ``tfedge.ota.delta`` computes a delta per tensor buffer (arithmetic difference where the
  tensors match, whole bytes elsewhere) that the device applies without parsing the
  flatbuffer (``tfedge_device.delta``); round trips on hand-built and converted models.
* ``ota publish --deltas K`` publishes a signed delta from each of the last K versions
  (custom schema 4); older delta targets leave targets.json.
* The agent uses a delta only for the base it holds, counts few bytes over the wire, and
  falls back to the full model (still ``Success``) when the delta is tampered with (TUF),
  is for another base, or rebuilds the wrong bytes; SIGKILL while applying leaves a whole
  model; an agent of the previous release (no deltas) still updates.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests import hostile_tflite as ht
from tests import ota_helpers as oh
from tfedge.errors import UsageError
from tfedge.fsutil import sha256_file
from tfedge.ota import delta
from tfedge.ota import repository as repo_api
from tfedge_device import delta as wire

# The last commit of the device package before delta updates (custom schema 3 agents).
PREVIOUS_AGENT_COMMIT = "23357aaadbfca32fdc2691ae1a263fdb30b7da01"


# ---------------------------------------------------------------- hand-built models, no TF
def _fc_model(units: int = 64, inputs: int = 256, seed: int = 0, scale: float = 0.02) -> bytes:
    """A full-int8 FULLY_CONNECTED model (hostile_tflite's base, widened) with seeded weights."""
    rng = np.random.default_rng(seed)
    m = ht.base()
    weights = rng.integers(-127, 128, (units, inputs), dtype=np.int8)
    m.buffers[1] = ht._buffer(weights.tobytes())
    m.buffers[2] = ht._buffer(rng.integers(-999, 999, units, dtype=np.int32).tobytes())
    x, w, b, y = ht.graph(m).tensors
    x.shape, w.shape, b.shape, y.shape = [1, inputs], [units, inputs], [units], [1, units]
    w.quantization = ht._q([scale] * units, [0] * units)
    b.quantization = ht._q([0.001] * units, [0] * units)
    return ht.pack(m)


def _edit_buffer(raw: bytes, tensor: str, share: float, seed: int = 1) -> bytes:
    """``raw`` with ``share`` of the bytes of ``tensor``'s buffer nudged (a fine-tune)."""
    (region,) = [r for r in delta.buffer_regions(raw) if r.name == tensor]
    rng = np.random.default_rng(seed)
    out = bytearray(raw)
    for i in rng.choice(region.length, int(region.length * share), replace=False):
        out[region.start + int(i)] = (out[region.start + int(i)] + int(rng.integers(1, 4))) % 256
    return bytes(out)


def _apply(blob: bytes, base: bytes, new: bytes) -> bytes:
    out = io.BytesIO()
    wire.apply_delta(
        io.BytesIO(blob),
        io.BytesIO(base),
        out,
        hashlib.sha256(base).hexdigest(),
        hashlib.sha256(new).hexdigest(),
        len(new),
    )
    return out.getvalue()


def test_a_weight_change_is_a_small_delta_of_byte_range_patches():
    base = _fc_model()
    new = _edit_buffer(base, "sequential/dense/MatMul", 0.05)
    ops = delta.plan(base, new)
    assert {op[0] for op in ops} == {wire.COPY, wire.ADD}  # every buffer paired, no DATA
    blob = delta.compute_delta(base, new)
    assert _apply(blob, base, new) == new
    packed = len(delta.encode(base, new, [(wire.DATA, 0, len(new))]))  # the whole file, xz
    assert len(blob) * 4 < packed, (len(blob), packed)


@pytest.mark.parametrize("change", ["shape", "scale", "identical"])
def test_tensors_that_do_not_match_are_sent_whole(change):
    base = _fc_model()
    new = {
        "shape": _fc_model(units=32),
        "scale": _fc_model(scale=0.03),
        "identical": base,
    }[change]
    weights = next(r for r in delta.buffer_regions(new) if r.name == "sequential/dense/MatMul")
    ops = delta.plan(base, new)
    covering = [op for op in ops if op[0] == wire.DATA and op[1] <= weights.start < op[1] + op[2]]
    assert bool(covering) == (change != "identical"), ops
    assert _apply(delta.compute_delta(base, new), base, new) == new


@pytest.mark.parametrize(
    "case, message",
    [
        ("other_base", "is for base"),
        ("other_model", "builds another model"),
        ("wrong_bytes", "rebuilds bytes other"),
        ("truncated", "truncated"),
        ("trailing", "after the end"),
        ("past_base", "ends past the base"),
        ("too_long", "more than the signed"),
        ("not_xz", "bad xz stream"),
    ],
)
def test_bad_deltas_are_refused(case, message):
    base, new = _fc_model(), _edit_buffer(_fc_model(), "sequential/dense/MatMul", 0.05)
    other = _edit_buffer(base, "sequential/dense/MatMul", 0.05, seed=7)
    blob, apply_base, expect = delta.compute_delta(base, new), base, new
    if case == "other_base":
        apply_base = other
    elif case == "other_model":
        expect = other
    elif case == "wrong_bytes":  # the header names ``other`` but the ops build ``new``
        blob, expect = delta.encode(base, new, delta.plan(base, new), claim=other), other
    elif case == "truncated":
        blob = blob[:-30]
    elif case == "trailing":
        blob += b"junk"
    elif case == "past_base":
        blob = delta.encode(base, new, [(wire.COPY, len(base) - 10, 20)])
    elif case == "too_long":
        blob = delta.encode(base, new, [(wire.COPY, 0, len(base)), (wire.DATA, 0, 16)])
    else:
        blob = b"\xfd7zXZ\0" + bytes(200)
    with pytest.raises(wire.DeltaError, match=message):
        _apply(blob, apply_base, expect)


def test_application_streams_in_bounded_chunks():
    """A 256 KB weight buffer: no read or write is larger than the device's CHUNK."""
    base = _fc_model(units=256, inputs=1024)
    new = _edit_buffer(base, "sequential/dense/MatMul", 0.01)
    blob = delta.compute_delta(base, new)

    class Recording(io.BytesIO):
        sizes: list[int] = []

        def read(self, size=-1):
            assert size is not None and 0 < size <= wire.CHUNK, size
            return super().read(size)

        def write(self, data):
            assert len(data) <= wire.CHUNK, len(data)
            return super().write(data)

    out = Recording()
    wire.apply_delta(
        Recording(blob),
        Recording(base),
        out,
        hashlib.sha256(base).hexdigest(),
        hashlib.sha256(new).hexdigest(),
        len(new),
    )
    assert out.getvalue() == new


def test_delta_entry_needs_schema_4_and_the_base():
    entry = {"target": "deltas/x", "format": 1, "codec": "lzma", "length": 5, "hashes": {}}
    custom = {"tfedge": {"schema": 4, "deltas": [dict(entry, base_sha256="a" * 64)]}}
    assert wire.delta_entry(custom, "a" * 64)["target"] == "deltas/x"
    assert wire.delta_entry(custom, "b" * 64) is None
    assert wire.delta_entry(custom, None) is None
    custom["tfedge"]["schema"] = 3
    assert wire.delta_entry(custom, "a" * 64) is None


def test_publish_deltas_count_is_checked(tmp_path, run_cli):
    from .conftest import assert_one_error_line

    with pytest.raises(UsageError, match="at most 5"):
        delta.check_count(6)
    repo = tmp_path / "repo"
    repo_api.init_repository(repo)
    model = ht.write(tmp_path / "m.tflite", ht.base())
    before = sorted((repo / "public").rglob("*"))
    result = run_cli(
        "ota",
        "publish",
        repo,
        model,
        "--name",
        "kws",
        "--version",
        "1",
        "--deltas",
        "9",
        expect=2,
    )
    assert_one_error_line(result, "--deltas 9", "at most 5")
    assert sorted((repo / "public").rglob("*")) == before
    new = ht.write(
        tmp_path / "m2.tflite", _edit_buffer(ht.pack(ht.base()), "sequential/dense/MatMul", 0.5)
    )
    run_cli("ota", "publish", repo, model, "--name", "kws", "--version", "1")
    run_cli("ota", "publish", repo, new, "--name", "kws", "--version", "2")  # default: 2
    (entry,) = _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]["deltas"]
    assert entry["base_sha256"] == sha256_file(model)
    run_cli("ota", "publish", repo, model, "--name", "kws", "--version", "3", "--deltas", "0")
    assert "deltas" not in _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]


def _targets(repo: Path) -> dict:
    meta = repo / "public" / "metadata"
    stamp = json.loads((meta / "timestamp.json").read_text())
    snapshot = json.loads(
        (meta / f"{stamp['signed']['meta']['snapshot.json']['version']}.snapshot.json").read_text()
    )
    version = snapshot["signed"]["meta"]["targets.json"]["version"]
    return json.loads((meta / f"{version}.targets.json").read_text())["signed"]["targets"]


def test_publish_keeps_deltas_from_the_last_k_versions_only(tmp_path):
    repo = tmp_path / "repo"
    repo_api.init_repository(repo)
    versions = [_fc_model()]
    for i in range(1, 5):
        versions.append(_edit_buffer(versions[-1], "sequential/dense/MatMul", 0.02, seed=i))
    shas = [hashlib.sha256(v).hexdigest() for v in versions]
    for number, raw in enumerate(versions, start=1):
        path = ht.write(tmp_path / f"v{number}.tflite", raw)
        repo_api.publish(repo, path, "kws", number, deltas=2)
    targets = _targets(repo)
    meta = targets["models/kws.tflite"]["custom"]["tfedge"]
    assert meta["schema"] == 4 and meta["compressed"]  # schema-3 fields kept
    assert [e["base_sha256"] for e in meta["deltas"]] == [shas[3], shas[2]]
    assert sorted(p for p in targets if p.startswith("deltas/")) == sorted(
        e["target"] for e in meta["deltas"]
    )
    for entry in meta["deltas"]:
        assert targets[entry["target"]]["hashes"] == entry["hashes"]
        assert targets[entry["target"]]["length"] == entry["length"]
    # deltas=0: none, and the old ones leave targets.json with their model
    path = ht.write(
        tmp_path / "v6.tflite", _edit_buffer(versions[-1], "sequential/dense/MatMul", 0.02)
    )
    repo_api.publish(repo, path, "kws", 6)
    targets = _targets(repo)
    assert "deltas" not in targets["models/kws.tflite"]["custom"]["tfedge"]
    assert targets["models/kws.tflite"]["custom"]["tfedge"]["schema"] == 3
    assert not [p for p in targets if p.startswith("deltas/")]


# ---------------------------------------------------------------- the agent, real TUF over HTTP
@contextlib.contextmanager
def _counting_server(repo: Path):
    """REPO/public over loopback HTTP; yields (url, list of (path, bytes sent))."""
    served: list[tuple[str, int]] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def copyfile(self, source, outputfile) -> None:
            sent = 0
            while chunk := source.read(64 * 1024):
                outputfile.write(chunk)
                sent += len(chunk)
            served.append((self.path, sent))

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(repo / "public")))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def _poll(url: str, device: Path, repo: Path):
    from tfedge_device.agent import poll_once

    logs: list[str] = []
    result = poll_once(oh.agent_config(url, device, repo), log=logs.append)
    return result, "\n".join(logs)


def _model_bytes(served: list[tuple[str, int]]) -> dict[str, int]:
    """Bytes sent per kind of model target: models, compressed, deltas."""
    out: dict[str, int] = {}
    for path, size in served:
        for kind in ("models", "compressed", "deltas"):
            if path.startswith(f"/targets/{kind}/"):
                out[kind] = out.get(kind, 0) + size
    return out


@pytest.fixture(scope="module")
def head_only(ota_models, tmp_path_factory) -> dict[str, Path]:
    """v1, and fine-tunes of it that change only the last Dense layer's weights."""
    from tfedge.convert.tflite_model import read_tflite

    out = tmp_path_factory.mktemp("delta_models")
    raw = ota_models["v1"].read_bytes()
    dense = [op for op in read_tflite(ota_models["v1"]).ops if op.name == "FULLY_CONNECTED"][-1]
    models = {"v1": ota_models["v1"], "other": ota_models["v2"]}
    for number in (2, 3, 4):
        raw = _edit_buffer(raw, dense.inputs[1].name, 0.05, seed=number)
        models[f"v{number}"] = out / f"v{number}.tflite"
        models[f"v{number}"].write_bytes(raw)
    return models


def _installed_v1(tmp_path: Path, models: dict[str, Path]) -> tuple[Path, Path]:
    repo, device = tmp_path / "repo", tmp_path / "device"
    repo_api.init_repository(repo)
    repo_api.publish(repo, models["v1"], "kws", 1, deltas=2)
    with _counting_server(repo) as (url, _):
        result, log = _poll(url, device, repo)
    assert result.state == "Success", (result, log)
    return repo, device


def _served_delta(repo: Path, entry: dict) -> Path:
    folder, _, base = entry["target"].rpartition("/")
    return repo / "public" / "targets" / folder / f"{entry['hashes']['sha256']}.{base}"


@pytest.mark.tf
@pytest.mark.slow
def test_agent_installs_from_the_delta_and_falls_back_when_it_is_bad(tmp_path, head_only):
    from tfedge.ota import compress as compression

    models = head_only
    repo, device = _installed_v1(tmp_path, models)
    spare = tmp_path / "spare"  # a second device that stays at version 1
    shutil.copytree(device, spare, symlinks=True)
    repo_api.publish(repo, models["v2"], "kws", 2, deltas=2)
    (entry,) = _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]["deltas"]
    assert entry["base_sha256"] == sha256_file(models["v1"])

    with _counting_server(repo) as (url, served):
        # 1. the delta is fetched, far fewer bytes than the model or its xz form
        result, log = _poll(url, device, repo)
        assert result.state == "Success" and result.model_version == 2, (result, log)
        assert "staged from delta" in log, log
        sent = _model_bytes(served)
        full = models["v2"].stat().st_size
        xz = len(compression.compress(models["v2"].read_bytes(), "lzma"))
        assert set(sent) == {"deltas"} and sent["deltas"] == entry["length"], sent
        assert sent["deltas"] * 5 < full and sent["deltas"] * 3 < xz, (sent, full, xz)
        oh.assert_whole_model(device, {sha256_file(models["v2"]): models["v2"]})

        # 2. a tampered delta: TUF refuses it, the compressed model is installed
        repo_api.publish(repo, models["v3"], "kws", 3, deltas=2)
        entries = _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]["deltas"]
        assert [e["base_sha256"] for e in entries] == [
            sha256_file(models["v2"]),
            sha256_file(models["v1"]),
        ]
        assert entry["target"] not in _targets(repo)  # v1 -> v2 left targets.json
        served_file = _served_delta(repo, entries[0])
        raw = bytearray(served_file.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        served_file.write_bytes(bytes(raw))
        served.clear()
        result, log = _poll(url, device, repo)
        assert result.state == "Success" and result.model_version == 3, (result, log)
        assert "not used (LengthOrHashMismatchError" in log, log
        assert set(_model_bytes(served)) == {"deltas", "compressed"}, served
        oh.assert_whole_model(device, {sha256_file(models["v3"]): models["v3"]})

        # 3. no delta for the base a device holds (v1, while v4's are from v3 and v2)
        repo_api.publish(repo, models["v4"], "kws", 4, deltas=1)
        (only,) = _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]["deltas"]
        assert only["base_sha256"] == sha256_file(models["v3"])
        served.clear()
        result, log = _poll(url, spare, repo)
        assert result.state == "Success" and result.model_version == 4, (result, log)
        assert "delta" not in log and "deltas" not in _model_bytes(served), (log, served)
        oh.assert_whole_model(spare, {sha256_file(models["v4"]): models["v4"]})

        # 4. a correctly signed delta that rebuilds other bytes (v4's, named as v5's): refused
        #    after application, the compressed model is installed
        v5_path = models["other"]
        v5 = v5_path.read_bytes()
        v3, v4 = models["v3"].read_bytes(), models["v4"].read_bytes()
        blob = delta.encode(v3, v4, delta.plan(v3, v4), claim=v5)
        wrong = dict(
            delta.delta_form(v3, v4)[0],
            target=delta.delta_target_path(hashlib.sha256(v5).hexdigest(), only["base_sha256"]),
            length=len(blob),
            hashes={"sha256": hashlib.sha256(blob).hexdigest()},
        )
        custom = repo_api.model_metadata(v5_path, 5)
        custom["tfedge"].update(schema=4, deltas=[wrong])
        with repo_api._locked(repo) as state:
            repo_api._add_target(
                state, "models/kws.tflite", v5_path, custom, compressed=[(wrong, blob)]
            )
            state.write_targets_chain()
        served.clear()
        result, log = _poll(url, device, repo)
        assert result.state == "Success" and result.model_version == 5, (result, log)
        assert f"delta {wrong['target']} not used (it " in log, log
        assert set(_model_bytes(served)) == {"deltas", "models"}, served
        oh.assert_whole_model(device, {sha256_file(v5_path): v5_path})
    assert not (device / ".staging").exists()


@pytest.mark.tf
@pytest.mark.slow
def test_sigkill_while_applying_a_delta_leaves_a_whole_model(tmp_path, head_only):
    models = head_only
    repo, device = _installed_v1(tmp_path, models)
    repo_api.publish(repo, models["v2"], "kws", 2, deltas=2)
    root = repo / "public" / "metadata" / "1.root.json"
    allowed = {sha256_file(models[n]): models[n] for n in ("v1", "v2")}
    with _counting_server(repo) as (url, _):
        proc = oh.start_agent(url, device, root, TFEDGE_AGENT_PAUSE_AT="delta_apply")
        try:
            _wait_stopped(proc)
            (staged,) = (device / ".staging").glob("*.tflite.part")
            assert 0 < staged.stat().st_size < models["v2"].stat().st_size  # half applied
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate(timeout=30)
        assert oh.assert_whole_model(device, allowed) == sha256_file(models["v1"])
        again = oh.run_agent(url, device, root)
        assert again.returncode == 0 and "staged from delta" in again.stderr, again.stderr
    assert oh.assert_whole_model(device, allowed) == sha256_file(models["v2"])
    assert not (device / ".staging").exists()


def _wait_stopped(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while oh._proc_state(proc.pid) != "T":
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the agent did not reach the delta"
        time.sleep(0.02)


def _previous_agent(tmp_path: Path) -> Path:
    """The device package of PREVIOUS_AGENT_COMMIT, extracted from git into ``tmp_path``."""
    device, source = oh.previous_agent(tmp_path, PREVIOUS_AGENT_COMMIT)
    assert "compressed_entry" in source and "delta" not in source  # the schema-3 agent
    return device


@pytest.mark.tf
@pytest.mark.slow
def test_an_agent_of_the_previous_release_updates_without_deltas(tmp_path, head_only):
    models, previous = head_only, _previous_agent(tmp_path)
    repo, device = tmp_path / "repo", tmp_path / "device"
    repo_api.init_repository(repo)
    repo_api.publish(repo, models["v1"], "kws", 1, deltas=2)
    root = repo / "public" / "metadata" / "1.root.json"
    with _counting_server(repo) as (url, served):
        for number in (1, 2):
            if number == 2:
                repo_api.publish(repo, models["v2"], "kws", 2, deltas=2)
                assert _targets(repo)["models/kws.tflite"]["custom"]["tfedge"]["schema"] == 4
            argv = oh.agent_argv(url, device, root)
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
            assert proc.returncode == 0, proc.stderr
            assert f"Success: installed version {number}" in proc.stderr, proc.stderr
    assert "deltas" not in _model_bytes(served), served
    oh.assert_whole_model(device, {sha256_file(models["v2"]): models["v2"]})
