#!/usr/bin/env python3
"""Benchmark over-the-air delivery on this machine (loopback; not a timed test).

1. Push: a full-integer model of at least 10 MB to a loopback OpenSSH server with
   ``tfedge.ota.push`` -- host-key check, upload, fsync, sha256 on the device, smoke test
   (the device script runs inference on the golden input) and atomic switch included.
   Goal: <= 3 s per push. Median of ``--rounds`` pushes, alternating two models.
2. Fleet: ``--agents`` device agents (separate processes, daemon mode) poll a python-tuf
   repository served over loopback HTTP; a new version is published and the script
   waits until every device serves it. Reports the time to the last device and checks
   every device's active file against the signed hash (corrupted installs: goal 0).
3. Bytes over the wire (``--bytes``; on by default): a head-only fine-tune of the digits
   reference model (frozen layers, same calibration data and seed) and of a 10 MB model
   (its last Dense layer's weights edited), published with ``--deltas``; an agent holding
   the previous version downloads the delta, a fresh one the xz form, counted at the HTTP
   server; full raw and gzip sizes for comparison. Also the device-side cost of applying
   the delta against decompressing the xz form (time, peak memory of a child process).

Writes bench-results/ota.json and bench-results/ota.md.

Usage:
    .venv/bin/python scripts/bench_ota.py     # push + 50 agents (about 1.5 minutes on 2 cores)
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
    os.environ["HOME"] = str(home)  # never read the user's ~/.ssh
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
def bench_fleet(work: Path, agents: int, interval: float, timeout: float) -> dict:
    models = oh.build_models(work / "models")
    repo = work / "repo"
    repo_api.init_repository(repo)
    repo_api.publish(repo, models["v1"], "kws", 1)
    port = hh.free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tfedge.cli.main", "ota", "serve", str(repo), "--port", str(port)],
        env=oh.agent_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    devices = [work / "fleet" / f"device{i:03d}" for i in range(agents)]
    procs = []
    try:
        _wait_http(url)
        root = repo / "public" / "metadata" / "1.root.json"
        for device in devices:
            argv = [a for a in oh.agent_argv(url, device, root) if a != "--once"] + [
                "--interval",
                str(interval),
            ]
            procs.append(
                subprocess.Popen(
                    argv, env=oh.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        v1 = sha256_file(models["v1"])
        first = _wait_all(devices, v1, timeout)
        log(
            f"{agents} agents report Success on version 1 after {first:.1f} s; publishing version 2"
        )
        t0 = time.monotonic()
        repo_api.publish(repo, models["v2"], "kws", 2)
        v2 = sha256_file(models["v2"])
        converge = _wait_all(devices, v2, timeout, t0)
        log(f"all {agents} agents report Success on version 2 after {converge:.1f} s")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        server.terminate()
        server.wait(10)
    corrupted = [
        str(d) for d in devices if sha256_file(d / "current") != v2 or oh.active_sha(d) != v2
    ]
    states = [oh.status_of(d)["state"] for d in devices]
    reasons = sorted({f"{oh.status_of(d)['state']}: {oh.status_of(d)['message']}" for d in devices})
    return {
        "agents": agents,
        "poll_interval_s": interval,
        "initial_install_s": round(first, 2),
        "time_to_last_s": round(converge, 2),
        "corrupted_installs": len(corrupted),
        "success_states": states.count("Success"),
        "last_status": reasons[:5],
        "model_bytes": models["v2"].stat().st_size,
    }


def _wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/metadata/timestamp.json", timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the repository server at {url} did not answer")


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
        "10 MB dense, last layer edited": _head_edited_big(work / "big"),
    }
    for label, (v1, v2) in pairs.items():
        log(f"bytes over the wire: {label}")
        out[label] = _wire_bytes(work / label.split(",")[0].replace(" ", "_"), v1, v2)
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
seconds = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": round(seconds, 4), "peak_rss_kb": peak}))
"""


def _apply_cost(work: Path, v1: Path, v2: Path) -> dict:
    """Apply the delta / decompress the xz form in a child process each (median of 3)."""
    from tfedge.ota import compress as compression
    from tfedge.ota.delta import delta_form

    raw = v2.read_bytes()
    _, blob = delta_form(v1.read_bytes(), raw)
    files = {"delta": work / "v2.tfdelta", "xz": work / "v2.tflite.xz", "idle": v2}
    files["delta"].write_bytes(blob)
    files["xz"].write_bytes(compression.compress(raw, "lzma"))
    sha = hashlib.sha256(raw).hexdigest()
    out = {}
    for kind, path in files.items():
        runs = []
        for _ in range(3):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _COST,
                    kind,
                    str(path),
                    str(v1),
                    str(work / "out"),
                    sha,
                    str(len(raw)),
                ],
                env=oh.agent_env(),
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(proc.stdout))
            assert kind == "idle" or (work / "out").read_bytes() == raw
        out[kind] = {
            "seconds": statistics.median(r["seconds"] for r in runs),
            "peak_rss_kb": max(r["peak_rss_kb"] for r in runs),
        }
    return out


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
        lines += [
            "| fleet (agents as separate processes) | value |",
            "|---|---|",
            f"| agents | {f['agents']} (poll every {f['poll_interval_s']} s) |",
            "| new version published -> last device reports Success (health-checked) "
            f"| **{f['time_to_last_s']:.1f} s** |",
            f"| corrupted installs | **{f['corrupted_installs']}** |",
            f"| devices reporting Success | {f['success_states']}/{f['agents']} |",
        ]
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
        a = b["apply"]
        lines += [
            f"| device: apply the delta / decompress xz (median of 3) "
            f"| {a['delta']['seconds'] * 1000:.1f} ms / {a['xz']['seconds'] * 1000:.1f} ms | |",
            f"| device: peak RSS of the child process (idle child: "
            f"{a['idle']['peak_rss_kb']:,} KB) "
            f"| {a['delta']['peak_rss_kb']:,} KB / {a['xz']['peak_rss_kb']:,} KB | |",
        ]
    return "\n".join(lines) + "\n"


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
