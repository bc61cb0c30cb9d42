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

Writes bench-results/ota.json and bench-results/ota.md.

Usage:
    .venv/bin/python scripts/bench_ota.py     # push + 50 agents (about 1.5 minutes on 2 cores)
    .venv/bin/python scripts/bench_ota.py --agents 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
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
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "ota.json", json.dumps(result, indent=2).encode())
    write_bytes_atomic(args.out / "ota.md", markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
