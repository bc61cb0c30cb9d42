"""Real components for the OTA tests: tiny int8 models, a loopback HTTP server for a TUF
repository, agent subprocesses, and checks that a model directory holds a whole model."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests import harness_helpers as hh

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVICE_SRC = REPO_ROOT / "device"  # the device package's source (tfedge_device)
# Debian's python3 with only ./device installed (numpy, ai-edge-litert, tuf): a board's view.
# Built by `scripts/dev.sh setup`, never by a test.
DEVICE_VENV = Path(os.environ.get("TFEDGE_DEVICE_VENV", REPO_ROOT / ".venv-device"))


@functools.cache
def device_python() -> str:
    """The device-only venv's python, after checking it holds the current device package."""
    python = DEVICE_VENV / "bin" / "python"
    if not python.exists():
        raise AssertionError(f"{DEVICE_VENV} is missing: run scripts/dev.sh setup")
    out = subprocess.run(
        [str(python), "-c", "import tfedge_device; print(tfedge_device.__file__)"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    installed = Path(out.stdout.strip()).parent
    stale = [
        src.name
        for src in (DEVICE_SRC / "tfedge_device").iterdir()
        if src.suffix in (".py", ".service")
        and (
            not (installed / src.name).exists()
            or (installed / src.name).read_bytes() != src.read_bytes()
        )
    ]
    if stale:
        raise AssertionError(
            f"{DEVICE_VENV} has an old tfedge_device ({', '.join(stale)}): run scripts/dev.sh setup"
        )
    return str(python)


# ---------------------------------------------------------------- models
def build_models(out: Path) -> dict[str, Path]:
    """Small full-int8 CNNs with random weights: v1 and v2 (same signature, different
    weights), ``wide`` (another input shape), and a ``broken`` file cut in half."""
    import tensorflow as tf
    import tf_keras as k

    out.mkdir(parents=True, exist_ok=True)
    calib = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
    paths = {}
    for name, seed, side in (("v1", 1, 8), ("v2", 2, 8), ("v3", 3, 8), ("wide", 4, 12)):
        tf.random.set_seed(seed)
        model = k.Sequential(
            [
                k.layers.InputLayer(input_shape=(side, side, 1)),
                k.layers.Conv2D(4, 3, padding="same", activation="relu"),
                k.layers.Flatten(),
                k.layers.Dense(10),
            ]
        )
        data = (
            calib
            if side == 8
            else np.random.default_rng(0).random((32, side, side, 1), dtype=np.float32)
        )
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(hh.convert_int8(tf, model, data))
    raw = paths["v1"].read_bytes()
    paths["broken"] = out / "broken.tflite"
    paths["broken"].write_bytes(raw[: len(raw) // 2])
    return paths


def big_model(out: Path, min_bytes: int = 10_500_000) -> Path:
    """A full-int8 model of at least ``min_bytes`` (a wide dense layer) whose smoke test runs
    inference."""
    import tensorflow as tf
    import tf_keras as k

    tf.random.set_seed(0)
    units = max(min_bytes // 1024 + 16, 1024)
    model = k.Sequential(
        [
            k.layers.InputLayer(input_shape=(32, 32, 1)),
            k.layers.Flatten(),
            k.layers.Dense(units, activation="relu"),
            k.layers.Dense(10),
        ]
    )
    calib = np.random.default_rng(0).random((16, 32, 32, 1), dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "big_int8.tflite"
    path.write_bytes(hh.convert_int8(tf, model, calib))
    return path


# ---------------------------------------------------------------- the repository over HTTP
@dataclass
class RepoServer:
    """``tfedge.ota.repository.make_server`` serving REPO/public on a loopback port, in a thread."""

    server: object
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(repo: Path) -> RepoServer:
    from tfedge.ota.repository import make_server

    server = make_server(repo, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return RepoServer(server, thread)


# ---------------------------------------------------------------- a device with version 1
def agent_config(url: str, device: Path, repo: Path, **kw):
    """The agent's configuration for model ``kws``, trusting the repository's first root."""
    from tfedge_device.agent import AgentConfig

    return AgentConfig(url, device, "kws", repo / "public" / "metadata" / "1.root.json", **kw)


def poll(url: str, device: Path, repo: Path, **kw):
    """One in-process agent poll (the real ``poll_once``), quietly."""
    from tfedge_device.agent import poll_once

    return poll_once(agent_config(url, device, repo, **kw), log=lambda m: None)


def installed_v1(base: Path, models: dict[str, Path]) -> Path:
    """``base/repo`` publishing kws version 1 (model v1), and ``base/device`` that installed it."""
    from tfedge.ota import repository as repo_api

    repo_api.init_repository(base / "repo")
    repo_api.publish(base / "repo", models["v1"], "kws", 1)
    server = serve(base / "repo")
    try:
        result = poll(server.url, base / "device", base / "repo")
    finally:
        server.stop()
    assert result.state == "Success", result
    return base


# ---------------------------------------------------------------- agent processes
def agent_env(**extra: str) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(DEVICE_SRC), str(REPO_ROOT)]),
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def agent_argv(
    url: str, model_dir: Path, root_json: Path, name: str = "kws", *extra: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tfedge_device.agent",
        "--repo-url",
        url,
        "--model-dir",
        str(model_dir),
        "--name",
        name,
        "--root",
        str(root_json),
        "--once",
        *extra,
    ]


def run_agent(
    url, model_dir, root_json, *extra, name="kws", timeout=120, **env
) -> subprocess.CompletedProcess:
    return subprocess.run(
        agent_argv(url, model_dir, root_json, name, *extra),
        env=agent_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_agent(url, model_dir, root_json, *extra, name="kws", **env) -> subprocess.Popen:
    return subprocess.Popen(
        agent_argv(url, model_dir, root_json, name, *extra),
        env=agent_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, fragment: str, timeout: float = 60.0) -> list[str]:
    """Read the agent's stderr until a line contains ``fragment``; return the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(
                f"agent exited ({proc.wait()}) before {fragment!r}: {''.join(lines)}"
            )
        lines.append(line)
        if fragment in line:
            return lines
    raise AssertionError(f"no {fragment!r} within {timeout} s: {''.join(lines)}")


def resume(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGCONT an agent paused by its test hook, once it has really stopped: it logs PAUSED
    just before it SIGSTOPs itself, and a SIGCONT sent in between would be lost."""
    deadline = time.monotonic() + timeout
    while _proc_state(proc.pid) != "T":
        if time.monotonic() > deadline:
            raise AssertionError(f"agent {proc.pid} did not stop within {timeout} s")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGCONT)


def _proc_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


@contextlib.contextmanager
def tmpfs(mount: Path, size: str):
    """A real small filesystem at ``mount`` (needs root), for disk-full tests."""
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ---------------------------------------------------------------- invariants
def active_sha(model_dir: Path) -> str | None:
    from tfedge_device.modeldir import ModelDir

    return ModelDir(model_dir).current_sha()


def assert_whole_model(model_dir: Path, allowed: dict[str, Path]) -> str:
    """``current`` names one of ``allowed`` (sha -> file) and its bytes hash to that name."""
    from tfedge.fsutil import sha256_file

    link = model_dir / "current"
    sha = active_sha(model_dir)
    assert sha in allowed, f"current -> {sha}, expected one of {sorted(allowed)}"
    assert sha256_file(link) == sha, "the active file does not match its name"
    assert link.resolve().read_bytes() == allowed[sha].read_bytes()
    return sha


def status_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "status.json").read_text())


def previous_agent(tmp_path: Path, commit: str) -> tuple[Path, str]:
    """The device package of ``commit`` extracted from git into ``tmp_path`` (an agent of an
    earlier release), and the source of its agent.py."""
    import shutil

    import pytest

    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.fail("needs git and the clone's history for the previous agent")
    out = tmp_path / "previous"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", commit, "device/tfedge_device"],
        capture_output=True,
    )
    if archive.returncode != 0:
        pytest.fail(f"commit {commit[:12]} is not in this clone (shallow?)")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "device", (out / "device" / "tfedge_device" / "agent.py").read_text()
