"""The device package on its own: Debian's python3 with only ``./device`` installed (numpy,
ai-edge-litert, tuf; built by ``scripts/dev.sh setup`` in ``.venv-device``) runs the benchmark
script, the smoke test and the agent to ``Success`` against a real python-tuf repository on
loopback HTTP. TensorFlow, tf_keras, keras, yaml and the host ``tfedge`` package are blocked:
importing one fails and leaves a line in a log, which must stay empty.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests import ota_helpers as oh
from tfedge.fsutil import sha256_file
from tfedge.ota import repository as repo_api
from tfedge.ota.golden import golden_npz
from tfedge.ota.signature import signature_from_tflite

BLOCKED = ("tensorflow", "tf_keras", "keras", "yaml", "tfedge")


class Device:
    """Runs the device package's commands with the device-only venv, in an empty folder."""

    def __init__(self, tmp_path: Path) -> None:
        self.python = Path(oh.device_python())
        self.bin = self.python.parent
        self.home = tmp_path / "board"
        self.home.mkdir()
        self.log = tmp_path / "blocked-imports.log"
        blocker = tmp_path / "blocker"
        for name in BLOCKED:
            (blocker / name).mkdir(parents=True)
            (blocker / name / "__init__.py").write_text(
                "import os\n"
                "with open(os.environ['TFEDGE_BLOCKED_LOG'], 'a') as log:\n"
                f"    log.write('{name}\\n')\n"
                f"raise ImportError('{name} is not installed on this device')\n"
            )
        self.env = {
            "PATH": f"{self.bin}{os.pathsep}/usr/bin:/bin",
            "HOME": str(self.home),
            "PYTHONPATH": str(blocker),
            "PYTHONNOUSERSITE": "1",
            "TFEDGE_BLOCKED_LOG": str(self.log),
        }

    def run(self, command: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / command), *map(str, args)],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,  # only guards against a hang
        )

    def blocked_imports(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def device(tmp_path) -> Device:
    return Device(tmp_path)


def _report(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_blockers_work(device):
    proc = device.run("python", "-c", "import tensorflow")
    assert proc.returncode == 1 and "not installed on this device" in proc.stderr
    assert device.blocked_imports() == ["tensorflow"]


def test_benchmark_script_runs(device, ota_models, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.random((16, 8, 8, 1), dtype=np.float32), y=rng.integers(0, 10, 16))
    args = ["--threads", "1", "--runs", "5", "--min-secs", "0", "--warmup-min-secs", "0"]
    proc = device.run("tfedge-bench-device", ota_models["v1"], *args, "--data", data)
    assert proc.returncode == 0, proc.stderr
    report = _report(proc)
    assert report["runtime"]["name"] == "ai-edge-litert" and report["latency_us"]["count"] >= 5
    assert report["samples"] == 16 and 0.0 <= report["accuracy"] <= 1.0
    probe = device.run("python", "-m", "tfedge_device.bench", "--probe")
    assert probe.returncode == 0 and _report(probe)["runtime"]["version"]
    assert device.blocked_imports() == []


def test_smoke_test_runs(device, ota_models, tmp_path):
    golden = tmp_path / "v1.golden.npz"
    golden.write_bytes(golden_npz(ota_models["v1"]))
    signature = tmp_path / "v1.sig.json"
    signature.write_text(json.dumps(signature_from_tflite(ota_models["v1"])))
    proc = device.run("tfedge-smoke", ota_models["v1"], golden, "--signature", signature)
    assert proc.returncode == 0, proc.stderr
    assert _report(proc)["ok"] and _report(proc)["max_abs_diff"] <= 1
    wide = device.run("tfedge-smoke", ota_models["wide"], golden, "--signature", signature)
    assert wide.returncode == 1 and _report(wide)["reason"] == "signature"
    script = device.run("tfedge-bench-device", ota_models["v1"], "--smoke", golden)
    assert script.returncode == 0 and _report(script)["ok"], script.stdout
    assert device.blocked_imports() == []


def test_agent_installs_to_success(device, ota_models, tmp_path):
    repo, model_dir = tmp_path / "repo", tmp_path / "board" / "kws"
    repo_api.init_repository(repo)
    repo_api.publish(repo, ota_models["v1"], "kws", 1)
    server = oh.serve(repo)
    root = repo / "public" / "metadata" / "1.root.json"
    argv = ["--repo-url", server.url, "--model-dir", model_dir, "--name", "kws", "--root", root]
    try:
        first = device.run("tfedge-agent", *argv, "--once")
        assert first.returncode == 0, first.stderr
        assert "Success: installed version 1" in first.stderr
        repo_api.publish(repo, ota_models["v2"], "kws", 2)
        second = device.run("python", "-m", "tfedge_device.agent", *argv, "--once")
    finally:
        server.stop()
    assert second.returncode == 0 and "Success: installed version 2" in second.stderr, second.stderr
    v2 = sha256_file(ota_models["v2"])
    assert oh.assert_whole_model(model_dir, {v2: ota_models["v2"]}) == v2
    status = model_dir / "status.json"
    assert json.loads(status.read_text())["state"] == "Success"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(status.stat().st_mode) == 0o666 & ~umask  # readable by a dashboard
    assert device.blocked_imports() == []


def test_agent_rejects_a_bad_configuration_before_any_work(device, tmp_path):
    proc = device.run(
        "tfedge-agent",
        *("--repo-url", "ftp://x", "--model-dir", tmp_path / "kws", "--name", "kws"),
        *("--root", tmp_path / "missing.json", "--once"),
    )
    assert proc.returncode == 2 and proc.stderr.startswith("Error: --repo-url 'ftp://x'")
    assert not (tmp_path / "kws").exists() and device.blocked_imports() == []


def test_host_wheel_lists_every_package():
    """setup.cfg lists the host's packages by hand (to add tfedge_device from device/): a new
    folder under tfedge/ must be listed too, or `pip install .` would leave it out."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(oh.REPO_ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {
        ".".join(p.parent.relative_to(oh.REPO_ROOT).parts)
        for p in (oh.REPO_ROOT / "tfedge").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert listed == found | {"tfedge_device"}
    assert "tfedge_device = device/tfedge_device" in cfg["options"]["package_dir"]


def test_model_directory_protocol_over_local_files(tmp_path):
    """The protocol push and the agent share, over the local backend: hash-checked copies,
    an atomic switch, pruning, leftovers, a damaged manifest, and umask-honouring modes."""
    from tfedge_device.modeldir import ModelDir, ModelDirError, add_record, make_record

    models = {}
    for i in range(3):
        models[i] = tmp_path / f"m{i}.tflite"
        models[i].write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes([i]) * 64)
    d = ModelDir(tmp_path / "kws").ensure()
    manifest = d.manifest("kws")
    for i, path in models.items():
        sha = sha256_file(path)
        assert d.add_version(path, sha) and not d.add_version(path, sha)  # second: already there
        manifest = add_record(manifest, make_record(sha, f"test {i}"))
        d.save_manifest(manifest)
        d.switch_to(sha)
        assert d.current_sha() == sha
    assert (tmp_path / "kws" / "current").resolve().read_bytes() == models[2].read_bytes()
    assert d.prune(manifest, keep=2) == [f"{sha256_file(models[0])}.tflite"]
    with pytest.raises(ModelDirError, match="sha256 mismatch"):
        d.put_verified(models[0], "versions/x.tflite", "0" * 64)
    (tmp_path / "kws" / "versions" / ".left.part").write_bytes(b"")
    assert d.leftovers() == [".left.part"] and d.clean_partials() == [".left.part"]
    with pytest.raises(FileNotFoundError):
        d.switch_to("f" * 64)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "kws" / "manifest.json").stat().st_mode) == 0o666 & ~umask
    (tmp_path / "kws" / "manifest.json").write_text("{not json")
    assert d.manifest("kws")["history"] == []  # the agent carries on with a new history
    with pytest.raises(ModelDirError, match="not valid JSON"):
        d.manifest("kws", strict=True)  # push refuses to overwrite it


def test_golden_files_are_made_in_a_child_process(ota_models, tmp_path):
    """The host runs a user's model only in a child with a timeout: a model the runtime
    refuses, bad data, or a timeout each become one typed error."""
    import io

    from tfedge.errors import BenchError, DataError

    golden = np.load(io.BytesIO(golden_npz(ota_models["v1"], samples=3)))
    assert golden["x"].shape == (3, 1, 8, 8, 1) and golden["y"].dtype == np.int8
    with pytest.raises(BenchError, match="cannot be loaded"):
        golden_npz(ota_models["broken"])
    bad = tmp_path / "bad.npz"
    bad.write_text("not an npz")
    with pytest.raises(DataError, match="cannot read data"):
        golden_npz(ota_models["v1"], data=bad)
    with pytest.raises(BenchError, match="took longer than"):
        golden_npz(ota_models["v1"], timeout=0.001)
