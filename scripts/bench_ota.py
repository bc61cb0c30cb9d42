#!/usr/bin/env python3
"""Benchmark over-the-air delivery on this machine (loopback; not a timed test).

1. Push: a full-integer model of at least 10 MB to a loopback OpenSSH server with
   ``tfedge.ota.push`` -- host-key check, upload, fsync, sha256 on the device, smoke test
   (the device script runs inference on the golden input) and atomic switch included.
   Goal: <= 3 s per push. Median of ``--rounds`` pushes, alternating two models.
2. Fleet: ``--agents`` device agents (separate processes, daemon mode) poll a python-tuf
   repository served over loopback HTTP and report to a ``tfedge ota collector``; once all
   run v1, a v2 (v1 with its last Dense layer edited) is published with ``--deltas`` and
   the script waits until every device serves it. Reports the time to the last device,
   delta vs full downloads counted at the HTTP server, every device's active file checked
   against the signed hash (corrupted installs: goal 0), and what the fleet view
   (``tfedge.ota.fleet``) shows: all devices on v2.
3. Bytes over the wire (``--bytes``; on by default): a head-only fine-tune of the digits
   reference model (frozen layers, same calibration data and seed) and of a 10 MB model
   (its last Dense layer's weights edited), published with ``--deltas``; an agent holding
   the previous version downloads the delta, a fresh one the xz form, counted at the HTTP
   server; full raw and gzip sizes for comparison. Also the device-side cost of applying
   the delta against decompressing the xz form (time, peak memory of a child process) on
   this host, and the time ratio under qemu as a Cortex-A53 (the emulated root of
   ``tfedge emulator setup``; skipped without it; emulated memory is not reported).
   And the digits model through ``tfedge optimize`` (v1: int8), then a head-only and a full
   fine-tune (one epoch on other data) through ``optimize`` with the recipe option
   ``ota_base: v1`` (v1's calibration samples; scales pinned when the delta is over 15% of
   the xz size) and without it.

Writes bench-results/ota.json and bench-results/ota.md.

Usage:
    .venv/bin/python scripts/bench_ota.py     # everything: about 7 minutes on 2 cores
    .venv/bin/python scripts/bench_ota.py --agents 10 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tests import harness_helpers as hh  # noqa: E402
from tests import ota_helpers as oh  # noqa: E402
from tfedge.fsutil import sha256_file, write_bytes_atomic  # noqa: E402
from tfedge.ota import repository as repo_api  # noqa: E402
from tfedge.ota.push import push  # noqa: E402

PUSH_GOAL_S = 3.0


def log(message: str) -> None:
    print(f"[bench_ota] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- 1. push over SSH
def bench_push(work: Path, rounds: int) -> dict:
    models = [oh.big_model(work / "a"), _second_big_model(work / "b")]
    server = hh.start_sshd(work / "sshd")
    home = work / "home"
    home.mkdir()
    user_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)  # never read the user's ~/.ssh (restored after the pushes)
    device = work / "device" / "model"
    opts = dict(
        python=sys.executable, key=str(server.user_key), known_hosts=str(server.known_hosts)
    )
    runs = []
    try:
        push(models[1], server.url(str(device)), name="big", **opts)  # something to replace
        for i in range(rounds):
            model = models[i % 2]
            _forget(device, model)  # make every round upload the whole file
            start = time.perf_counter()
            result = push(model, server.url(str(device)), name="big", **opts)
            wall = time.perf_counter() - start
            assert result.switched and result.uploaded and result.smoke["ok"], result
            runs.append(dict(result.seconds, wall=round(wall, 3)))
            log(f"push {i + 1}/{rounds}: {wall:.2f} s {result.seconds}")
    finally:
        server.stop()
        if user_home is not None:  # the emulated root is found under the user's ~/.cache
            os.environ["HOME"] = user_home
    walls = [r["wall"] for r in runs]
    return {
        "model_bytes": models[0].stat().st_size,
        "rounds": runs,
        "median_s": statistics.median(walls),
        "max_s": max(walls),
        "goal_s": PUSH_GOAL_S,
        "meets_goal": statistics.median(walls) <= PUSH_GOAL_S,
        "steps_median_s": {
            k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "wall"
        },
    }


def _second_big_model(out: Path) -> Path:
    """The same architecture with other weights: flip the model's last byte-level seed."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "big_int8_b.tflite"
    if not path.exists():
        import numpy as np
        import tensorflow as tf
        import tf_keras as k

        tf.random.set_seed(1)
        model = k.Sequential(
            [
                k.layers.InputLayer(input_shape=(32, 32, 1)),
                k.layers.Flatten(),
                k.layers.Dense(10_300, activation="relu"),
                k.layers.Dense(10),
            ]
        )
        calib = np.random.default_rng(0).random(
            (16, 32, 32, 1), dtype=np.float32
        )  # same input scale
        write_bytes_atomic(path, hh.convert_int8(tf, model, calib))
    return path


def _forget(device: Path, model: Path) -> None:
    for path in (device / "versions").glob(f"{sha256_file(model)}.*"):
        if device.joinpath("current").resolve() != path.resolve():
            path.unlink()


# ---------------------------------------------------------------- 2. fleet of agents
FLEET_DELTAS = 2  # deltas from the last two versions, as `tfedge ota publish --deltas 2`


def bench_fleet(work: Path, agents: int, interval: float, timeout: float) -> dict:
    """Round 1: every agent (holding nothing) installs v1. Round 2: v2, v1 with its last
    Dense layer edited (a head-only fine-tune), is published with deltas; the agents hold
    v1, so they should take the delta. Every agent reports to a collector, whose fleet view
    must show all of them on v2. Downloads are counted at the HTTP server."""
    models = oh.build_models(work / "models")
    v1 = models["v1"]
    v2 = _edit_last_dense(v1, work / "models" / "v2_head.tflite")
    repo = work / "repo"
    repo_api.init_repository(repo)
    repo_api.publish(repo, v1, "kws", 1, deltas=FLEET_DELTAS)
    devices = [work / "fleet" / f"device{i:03d}" for i in range(agents)]
    tokens = _fleet_tokens(work / "tokens", devices)
    root = repo / "public" / "metadata" / "1.root.json"
    procs: list[subprocess.Popen] = []
    with (
        _counting_server(repo) as (url, served),
        _collector(work / "collector", work / "tokens" / "fleet-tokens.txt") as collector,
    ):
        try:
            for device in devices:
                extra = ["--interval", str(interval), "--device-id", device.name]
                extra += ["--report-url", collector["url"], "--report-token-file", tokens[device]]
                procs.append(_start_agent(url, device, root, extra))
            first = _wait_all(devices, sha256_file(v1), timeout)
            log(f"{agents} agents report Success on version 1 after {first:.1f} s; publishing v2")
            round1 = _downloads(served)
            served.clear()
            t0 = time.monotonic()
            repo_api.publish(repo, v2, "kws", 2, deltas=FLEET_DELTAS)
            v2_sha = sha256_file(v2)
            converge = _wait_all(devices, v2_sha, timeout, t0)
            round2 = _downloads(served)
            log(f"all {agents} agents report Success on version 2 after {converge:.1f} s")
            view = _wait_fleet_view(collector["db"], agents, 2, v2_sha, timeout, t0)
        finally:
            _stop_agents(procs)
        rejected = _rejections(collector["log"])
        reports = _report_count(collector["db"])
    corrupted = [
        str(d)
        for d in devices
        if sha256_file(d / "current") != v2_sha or oh.active_sha(d) != v2_sha
    ]
    states = [oh.status_of(d)["state"] for d in devices]
    reasons = sorted({f"{oh.status_of(d)['state']}: {oh.status_of(d)['message']}" for d in devices})
    return {
        "agents": agents,
        "poll_interval_s": interval,
        "update": "v2 = v1 with its last Dense layer's weights moved by -3..3 steps (seeded), "
        f"published with --deltas {FLEET_DELTAS}",
        "initial_install_s": round(first, 2),
        "time_to_last_s": round(converge, 2),
        "corrupted_installs": len(corrupted),
        "success_states": states.count("Success"),
        "last_status": reasons[:5],
        "model_bytes": v2.stat().st_size,
        "downloads": {"version 1 (devices hold nothing)": round1, "version 2": round2},
        "delta_downloads": round2.get("deltas", {}).get("requests", 0),
        "full_downloads": sum(round2.get(k, {}).get("requests", 0) for k in FULL_KINDS),
        "fleet_view": view,
        "collector": {"reports_stored": reports, "rejected_by_status": rejected},
    }


FULL_KINDS = ("models", "compressed")


def _edit_last_dense(v1: Path, v2: Path, seed: int = 0) -> Path:
    """A copy of ``v1`` whose last Dense layer's weights each moved by -3 to 3 quantization
    steps (seeded; what a head-only fine-tune changes)."""
    import numpy as np

    from tfedge.convert.tflite_model import read_tflite
    from tfedge.ota.delta import buffer_regions

    raw = bytearray(v1.read_bytes())
    dense = [op for op in read_tflite(v1).ops if op.name == "FULLY_CONNECTED"][-1]
    (region,) = [r for r in buffer_regions(bytes(raw)) if r.name == dense.inputs[1].name]
    steps = np.random.default_rng(seed).integers(-3, 4, region.length).astype(np.uint8)
    head = np.frombuffer(raw, np.uint8, region.length, region.start) + steps  # wraps mod 256
    raw[region.start : region.start + region.length] = head.tobytes()
    v2.write_bytes(bytes(raw))
    return v2


def _fleet_tokens(out: Path, devices: list[Path]) -> dict[Path, str]:
    """The collector's token file (``out/fleet-tokens.txt``, one line per device) and one
    token file per device; returns ``{device: path of its token file}``."""
    import secrets

    out.mkdir(parents=True, exist_ok=True)
    lines, files = [], {}
    for device in devices:
        token = secrets.token_hex(16)
        lines.append(f"{device.name} {token}\n")
        files[device] = str(out / f"{device.name}.token")
        Path(files[device]).write_text(token + "\n")
    (out / "fleet-tokens.txt").write_text("".join(lines))
    return files


@contextlib.contextmanager
def _collector(out: Path, tokens: Path):
    """``tfedge ota collector`` on a free loopback port; yields its report URL, database
    and log file (one line per rejected report)."""
    out.mkdir(parents=True, exist_ok=True)
    port = hh.free_port()
    logfile = out / "collector.log"
    argv = [sys.executable, "-m", "tfedge.cli.main", "ota", "collector", "--tokens", str(tokens)]
    argv += ["-o", str(out), "--port", str(port)]
    with open(logfile, "wb") as sink:
        proc = subprocess.Popen(argv, env=oh.agent_env(), stdout=sink, stderr=sink)
    try:
        _wait_port(port)
        yield {
            "url": f"http://127.0.0.1:{port}/report",
            "db": out / "fleet.sqlite",
            "log": logfile,
        }
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def _start_agent(url: str, device: Path, root: Path, extra: list[str]) -> subprocess.Popen:
    argv = [a for a in oh.agent_argv(url, device, root) if a != "--once"] + extra
    return subprocess.Popen(
        argv, env=oh.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop_agents(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(30)


def _downloads(served: list[tuple[str, int]]) -> dict[str, dict[str, int]]:
    """Model downloads by kind (models, compressed, deltas): requests and body bytes."""
    out: dict[str, dict[str, int]] = {}
    for path, size in list(served):
        for kind in ("models", "compressed", "deltas"):
            if path.startswith(f"/targets/{kind}/"):
                entry = out.setdefault(kind, {"requests": 0, "bytes": 0})
                entry["requests"] += 1
                entry["bytes"] += size
    return out


def _wait_fleet_view(
    db: Path, agents: int, version: int, sha: str, timeout: float, t0: float
) -> dict:
    """Read ``tfedge.ota.fleet`` until it shows every device Success on ``version`` (a
    device's report may wait for its rate limit: ten at once, then one per 30 s)."""
    from tfedge.ota.fleet import fleet_view

    while True:
        view = fleet_view(db)
        on = [
            d
            for d in view.devices
            if d["model_version"] == version and d["sha256"] == sha and d["state"] == "Success"
        ]
        if len(on) == agents or time.monotonic() - t0 > timeout:
            break
        time.sleep(1.0)
    seconds = time.monotonic() - t0
    log(f"the fleet view shows {len(on)} of {len(view.devices)} devices on version {version}")
    return {
        "devices": len(view.devices),
        "on_version": len(on),
        "version": version,
        "seconds_after_publish": round(seconds, 2),
        "rollout": view.rollout,
        "versions": view.versions,
        "failing": len(view.failing),
        "stale": len(view.stale),
    }


def _rejections(logfile: Path) -> dict[str, int]:
    """Rejected reports by HTTP status, from the collector's log lines
    ``rejected: HOST STATUS message``."""
    counts: dict[str, int] = {}
    for line in logfile.read_text(errors="replace").splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[0] == "rejected:" and fields[2].isdigit():
            counts[fields[2]] = counts.get(fields[2], 0) + 1
    return counts


def _report_count(db: Path) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
        return int(con.execute("SELECT COUNT(*) FROM reports").fetchone()[0])


def _converged(device: Path, sha: str) -> bool:
    """The device serves ``sha`` and its agent has reported Success for it (health check passed)."""
    try:
        status = oh.status_of(device)
    except (OSError, ValueError):
        return False
    return (
        oh.active_sha(device) == sha and status["state"] == "Success" and status["serving"] == sha
    )


def _wait_all(devices: list[Path], sha: str, timeout: float, t0: float | None = None) -> float:
    t0 = t0 or time.monotonic()
    pending = set(devices)
    while pending and time.monotonic() - t0 < timeout:
        pending = {d for d in pending if not _converged(d, sha)}
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"{len(pending)} devices did not converge within {timeout} s")
    return time.monotonic() - t0


# ---------------------------------------------------------------- 3. bytes over the wire
def bench_bytes(work: Path) -> dict:
    out = {}
    pairs = {
        "digits, head-only fine-tune": _head_only_digits(work / "digits"),
        **_ota_base_digits(work / "ota_base"),
        "10 MB dense, last layer edited": _head_edited_big(work / "big"),
    }
    for n, (label, (v1, v2)) in enumerate(pairs.items()):
        log(f"bytes over the wire: {label}")
        out[label] = _wire_bytes(work / f"wire{n}", v1, v2)
        if label in _OTA_SECTIONS:
            out[label]["ota_base"] = _OTA_SECTIONS[label]
    return out


_OTA_SECTIONS: dict[str, dict] = {}  # label -> optimize's report.json ota_base section


def _ota_base_digits(out: Path) -> dict[str, tuple[Path, Path]]:
    """v1: the digits reference model through ``optimize`` (int8, its training data). v2: a
    head-only (the rest frozen) or full fine-tune of it, one epoch on other data (the odd
    half of the training set, reversed), through ``optimize`` with that data: with the
    recipe's ``ota_base: v1`` (v1's calibration samples) or without (the other data
    calibrates)."""
    from tfedge.optimize.pipeline import optimize

    out.mkdir(parents=True, exist_ok=True)
    source = REPO / "models" / "digits"
    train, test = source / "train.npz", source / "test.npz"
    v1 = Path(optimize(source / "model.keras", "int8", train, test, out / "v1").model)
    other = out / "other.npz"
    data = _np().load(train)
    _np().savez(other, x=data["x"][1::2][::-1], y=data["y"][1::2][::-1])
    recipe = out / "ota_base.yaml"
    recipe.write_text(
        "schema_version: 1\npasses: []\nconvert: {quant: int8}\n"
        "ota_base: {model: v1/model.tflite}\n"
    )
    pairs = {}
    for kind, head_only in (("head-only", True), ("full", False)):
        model = _fine_tuned(source / "model.keras", other, out / f"{kind}.keras", head_only)
        for label, how in (("with ota_base", recipe), ("without ota_base", "int8")):
            result = optimize(model, how, other, test, out / f"{kind}-{label.split()[0]}")
            pairs[f"digits, {kind} fine-tune {label}"] = (v1, Path(result.model))
            if result.ota_base:
                _OTA_SECTIONS[f"digits, {kind} fine-tune {label}"] = result.ota_base
    return pairs


def _np():
    import numpy as np

    return np


def _fine_tuned(model_path: Path, data_path: Path, out: Path, head_only: bool) -> Path:
    """The model trained one epoch on ``data_path`` (seed 1): only its last layer, or all."""
    import tensorflow as tf
    import tf_keras as k

    model = k.models.load_model(model_path)
    for layer in model.layers[:-1]:
        layer.trainable = not head_only
    tf.keras.utils.set_random_seed(1)
    model.compile(
        optimizer=k.optimizers.Adam(1e-3),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    data = _np().load(data_path)
    model.fit(data["x"], data["y"], epochs=1, batch_size=32, shuffle=False, verbose=0)
    model.save(out)
    return out


def _head_only_digits(out: Path) -> tuple[Path, Path]:
    """The digits reference model and a head-only fine-tune of it (frozen layers, one epoch
    on the training set, seed 0), both converted with the same calibration data."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as k

    out.mkdir(parents=True, exist_ok=True)
    source = REPO / "models" / "digits"
    if not (source / "model.keras").exists():
        raise RuntimeError("run scripts/make_reference_models.py digits first")
    data = np.load(source / "train.npz")
    calib = data["x"][:200].astype(np.float32)
    model = k.models.load_model(source / "model.keras")
    v1, v2 = out / "v1.tflite", out / "v2.tflite"
    v1.write_bytes(hh.convert_int8(tf, model, calib))
    for layer in model.layers[:-1]:
        layer.trainable = False
    tf.keras.utils.set_random_seed(0)
    model.compile(
        optimizer=k.optimizers.Adam(1e-3),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(data["x"], data["y"], epochs=1, batch_size=32, shuffle=False, verbose=0)
    v2.write_bytes(hh.convert_int8(tf, model, calib))
    return v1, v2


def _head_edited_big(out: Path) -> tuple[Path, Path]:
    """A 10 MB full-int8 model and a copy whose last Dense layer's weights each moved by -3
    to 3 quantization steps (seeded; what a head-only fine-tune changes)."""
    import numpy as np

    from tfedge.convert.tflite_model import read_tflite
    from tfedge.ota.delta import buffer_regions

    v1 = oh.big_model(out)
    raw = bytearray(v1.read_bytes())
    dense = [op for op in read_tflite(v1).ops if op.name == "FULLY_CONNECTED"][-1]
    (region,) = [r for r in buffer_regions(bytes(raw)) if r.name == dense.inputs[1].name]
    steps = np.random.default_rng(0).integers(-3, 4, region.length).astype(np.uint8)
    head = np.frombuffer(raw, np.uint8, region.length, region.start) + steps  # wraps mod 256
    raw[region.start : region.start + region.length] = head.tobytes()
    v2 = out / "big_int8_head.tflite"
    v2.write_bytes(bytes(raw))
    return v1, v2


@contextlib.contextmanager
def _counting_server(repo: Path):
    """REPO/public over loopback HTTP; yields (url, list of (path, body bytes sent))."""
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


def _model_bytes(served: list[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for path, size in served:
        for kind in ("models", "compressed", "deltas"):
            if path.startswith(f"/targets/{kind}/"):
                out[kind] = out.get(kind, 0) + size
    return out


def _wire_bytes(work: Path, v1: Path, v2: Path) -> dict:
    from tfedge.ota import compress as compression

    repo, held, fresh = work / "repo", work / "held", work / "fresh"
    repo_api.init_repository(repo)
    repo_api.publish(repo, v1, "kws", 1, deltas=2)
    with _counting_server(repo) as (url, served):
        assert oh.poll(url, held, repo).state == "Success"
        repo_api.publish(repo, v2, "kws", 2, deltas=2)
        served.clear()
        result = oh.poll(url, held, repo)
        assert result.state == "Success" and result.model_version == 2, result
        with_delta = _model_bytes(served)
        served.clear()
        assert oh.poll(url, fresh, repo).state == "Success"
        without = _model_bytes(served)
    for device in (held, fresh):
        assert sha256_file(device / "current") == sha256_file(v2), device
    raw = v2.read_bytes()
    sizes = {
        "full raw (target length)": len(raw),
        "gzip -9 (size, not served)": len(gzip.compress(raw, 9)),
        "lzma xz -6 (served, fresh device)": without.get("compressed"),
        "delta (served, device holding v1)": with_delta.get("deltas"),
    }
    try:
        sizes["zstd -19 (size, not served)"] = len(compression.compress(raw, "zstd"))
    except Exception:  # noqa: BLE001 - zstandard is optional on this host
        pass
    changed = sum(a != b for a, b in zip(v1.read_bytes(), raw)) + abs(len(raw) - v1.stat().st_size)
    return {
        "model_bytes": len(raw),
        "bytes_changed": changed,
        "bytes": sizes,
        "served": {"with_delta": with_delta, "fresh": without},
        "apply": _apply_cost(work, v1, v2),
    }


_COST = """
import json, sys, time
from tfedge_device import decompress, delta
from tfedge_device.modeldir import sha256_file
kind, src, base, out, sha, length = sys.argv[1:]
base_sha = sha256_file(base)
start = time.perf_counter()
with open(src, "rb") as s, open(out, "wb") as o:
    if kind == "delta":
        with open(base, "rb") as b:
            delta.apply_delta(s, b, o, base_sha, sha, int(length))
    elif kind == "xz":
        decompress.decompress_stream(s, o, "lzma", int(length))
if kind == "sha256":  # the check the agent runs on every staged model, whatever its path
    assert sha256_file(src) == sha
seconds = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": round(seconds, 4), "peak_rss_kb": peak}))
"""


QEMU_CPU = "cortex-a53"  # the core of a Raspberry Pi 3 and Zero 2 W


def _apply_cost(work: Path, v1: Path, v2: Path) -> dict:
    """Apply the delta / decompress the xz form in a child process each (median of 3), on
    this host, and under qemu as an emulated Cortex-A53 (``emulated``: time ratio only)."""
    from tfedge.ota import compress as compression
    from tfedge.ota.delta import delta_form

    raw = v2.read_bytes()
    _, blob = delta_form(v1.read_bytes(), raw)
    files = {"delta": work / "v2.tfdelta", "xz": work / "v2.tflite.xz", "idle": v2, "sha256": v2}
    files["delta"].write_bytes(blob)
    files["xz"].write_bytes(compression.compress(raw, "lzma"))
    sha = hashlib.sha256(raw).hexdigest()
    args = {
        kind: [kind, str(path), str(v1), str(work / "out"), sha, str(len(raw))]
        for kind, path in files.items()
    }
    out: dict = {
        kind: _cost_runs([sys.executable], oh.agent_env(), argv, work / "out", raw)
        for kind, argv in args.items()
    }
    out["emulated"] = _emulated_cost(args, work / "out", raw)
    return out


def _cost_runs(
    python: list[str], env: dict, args: list[str], out: Path, raw: bytes, rounds: int = 3
) -> dict:
    """Run ``_COST`` with ``args`` ``rounds`` times: median seconds, highest VmHWM."""
    runs = []
    for _ in range(rounds):
        proc = subprocess.run(
            [*python, "-c", _COST, *args], env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(proc.stdout))
        assert args[0] in ("idle", "sha256") or out.read_bytes() == raw
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss_kb": max(r["peak_rss_kb"] for r in runs),
    }


def _emulated_cost(args: dict[str, list[str]], out: Path, raw: bytes) -> dict:
    """The delta and xz runs under qemu-user as a Cortex-A53, in the emulated aarch64 root
    tfedge's qemu target uses (`tfedge emulator setup`). Only the time ratio means
    something: emulated times are not a device's, and qemu's memory includes the emulator."""
    from tfedge.errors import TargetError
    from tfedge.targets import emulator

    try:
        env = emulator.require()
    except TargetError as exc:
        log(f"no emulated apply cost: {exc}")
        return {"skipped": str(exc)}
    python = env.command(QEMU_CPU, [])
    child_env = dict(env.env(), PYTHONPATH=os.pathsep.join([str(env.site), str(oh.DEVICE_SRC)]))
    try:
        seconds = {
            kind: _cost_runs(python, child_env, args[kind], out, raw)["seconds"]
            for kind in ("delta", "xz", "sha256")
        }
    except subprocess.CalledProcessError as exc:
        log(f"the emulated apply cost failed: {exc.stderr[-500:]}")
        return {"skipped": f"failed under qemu: {exc.stderr.strip().splitlines()[-1:]}"}
    return {
        "qemu_cpu": QEMU_CPU,
        "python": f"Debian {emulator.SUITE} arm64 python3.11, numpy {env.numpy_version}",
        "delta_s": seconds["delta"],
        "xz_s": seconds["xz"],
        "sha256_s": seconds["sha256"],
        "delta_over_xz": round(seconds["delta"] / seconds["xz"], 2),
        "note": "emulated with qemu-user: a time ratio for comparison only; the times are "
        "not a device's and qemu's memory includes the emulator (not reported)",
    }


# ---------------------------------------------------------------- report
def markdown(result: dict) -> str:
    p, f = result.get("push"), result.get("fleet")
    lines = [
        f"OTA benchmark on {result['machine']} ({result['cpus']} CPUs), loopback, {result['date']}",
        "",
    ]
    if p:
        lines += [
            "| push over SSH (loopback) | value |",
            "|---|---|",
            f"| model | {p['model_bytes'] / 1e6:.1f} MB full-int8 |",
            f"| push, median of {len(p['rounds'])} (upload + fsync + sha256 + smoke test + switch) "
            f"| **{p['median_s']:.2f} s** (max {p['max_s']:.2f} s; goal <= {p['goal_s']:.0f} s) |",
        ]
        lines += [
            f"| step {k} (median) | {v:.3f} s |"
            for k, v in p["steps_median_s"].items()
            if k != "total"
        ]
        lines.append("")
    if f:
        lines += _fleet_lines(f)
    for label, b in (result.get("bytes") or {}).items():
        full = b["bytes"]["full raw (target length)"]
        lines += [
            "",
            f"| {label} ({full:,} bytes, {b['bytes_changed']:,} changed) | bytes | of full |",
            "|---|---|---|",
        ]
        lines += [
            f"| {kind} | {size:,} | {100 * size / full:.1f}% |"
            for kind, size in b["bytes"].items()
            if size is not None
        ]
        lines += _delta_goal_lines(label, b)
        lines += _apply_lines(b["apply"])
    return "\n".join(lines) + "\n"


_GOALS = {  # issue 16's goals for the delta, as a share of the full zstd target
    "head-only fine-tune with ota_base": " (goal <= 15%, moonshot 5%)",
    "full fine-tune with ota_base": " (goal <= 40%)",
}


def _delta_goal_lines(label: str, b: dict) -> list[str]:
    zstd = b["bytes"].get("zstd -19 (size, not served)")
    delta = b["bytes"].get("delta (served, device holding v1)")
    if not zstd or not delta:
        return []
    goal = next((text for key, text in _GOALS.items() if key in label), "")
    lines = [f"| **delta / zstd -19** | | **{100 * delta / zstd:.1f}%**{goal} |"]
    section = b.get("ota_base")
    if section:
        pinning = section.get("pinning") or {}
        if section["scales_pinned"]:
            pinned = (
                f"pinned to v1's ({pinning['tensors']} tensors; unpinned delta "
                f"{section['unpinned']['delta_bytes']:,} B); accuracy "
                f"{100 * pinning['accuracy']:.2f}% vs {100 * pinning['accuracy_unpinned']:.2f}%"
            )
        else:
            pinned = pinning.get("why") or "not pinned (delta under pin_above)"
        calibration = "v1's samples" if section["calibration_matched"] else "not v1's"
        lines.append(f"| optimize with ota_base: calibration {calibration}; scales {pinned} | | |")
    return lines


def _fleet_lines(f: dict) -> list[str]:
    view, coll = f["fleet_view"], f["collector"]
    v2 = f["downloads"]["version 2"]
    wire = sum(entry["bytes"] for entry in v2.values())
    rejected = ", ".join(f"{n} x {code}" for code, n in sorted(coll["rejected_by_status"].items()))
    return [
        "| fleet (agents as separate processes) | value |",
        "|---|---|",
        f"| agents | {f['agents']} (poll every {f['poll_interval_s']} s) |",
        f"| update | v2 = v1 with its last Dense layer edited ({f['model_bytes']:,} bytes), "
        f"published with --deltas {FLEET_DELTAS}; every agent holds v1 |",
        "| v2 published -> last device reports Success (health-checked) "
        f"| **{f['time_to_last_s']:.1f} s** |",
        f"| v2 downloads counted at the HTTP server: delta / full | **{f['delta_downloads']} / "
        f"{f['full_downloads']}** ({wire:,} model bytes for the fleet) |",
        "| corrupted installs (each device's current model vs the signed sha256) "
        f"| **{f['corrupted_installs']}** |",
        f"| devices reporting Success | {f['success_states']}/{f['agents']} |",
        "| fleet view (`tfedge ota fleet`, the collector's SQLite) "
        f"| **{view['on_version']} of {f['agents']}** devices on version {view['version']} "
        f"({view['devices']} listed, {view['failing']} failing; "
        f"{view['seconds_after_publish']:.1f} s after publishing) |",
        f"| reports stored by `tfedge ota collector` | {coll['reports_stored']:,} "
        f"(rejected: {rejected or 'none'}) |",
    ]


def _apply_lines(a: dict) -> list[str]:
    """The device-side cost rows. The delta's time includes its own sha256 check of what it
    wrote; the agent then checks the staged model's sha256 on either path (``sha256``)."""
    ratio = a["delta"]["seconds"] / a["xz"]["seconds"]
    ms = {kind: f"{a[kind]['seconds'] * 1000:.1f} ms" for kind in ("delta", "xz", "sha256")}
    lines = [
        "| device: apply the delta (its sha256 check included) / decompress xz "
        f"(this host, median of 3) | {ms['delta']} / {ms['xz']} | {ratio:.2f}x |",
        f"| device: the sha256 check of the staged model, on either path | {ms['sha256']} | |",
        "| device: peak RSS of the child process (this host; idle child: "
        f"{a['idle']['peak_rss_kb']:,} KB) "
        f"| {a['delta']['peak_rss_kb']:,} KB / {a['xz']['peak_rss_kb']:,} KB | |",
    ]
    e = a.get("emulated") or {}
    if "delta_over_xz" in e:
        lines.append(
            f"| emulated {e['qemu_cpu']} (qemu-user): apply the delta / decompress xz, "
            "time ratio (median of 3; emulated: not a device's times, memory not reported) "
            f"| **{e['delta_over_xz']:.2f}x** (sha256 check / xz: "
            f"{e['sha256_s'] / e['xz_s']:.2f}x) | |"
        )
    elif e:
        lines.append(f"| emulated Cortex-A53 | skipped: {e.get('skipped')} | |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="pushes to time (default 5)")
    parser.add_argument("--agents", type=int, default=50, help="fleet size (default 50)")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="agent poll interval in seconds (default 5)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up on convergence after this"
    )
    parser.add_argument("--no-push", action="store_true")
    parser.add_argument("--no-fleet", action="store_true")
    parser.add_argument("--no-bytes", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    args = parser.parse_args(argv)
    result = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory(prefix="tfedge-bench-ota-") as tmp:
        work = Path(tmp)
        if not args.no_push:
            result["push"] = bench_push(work / "push", args.rounds)
        if not args.no_fleet:
            result["fleet"] = bench_fleet(work / "fleet", args.agents, args.interval, args.timeout)
        if not args.no_bytes:
            result["bytes"] = bench_bytes(work / "bytes")
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "ota.json", json.dumps(result, indent=2).encode())
    write_bytes_atomic(args.out / "ota.md", markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
