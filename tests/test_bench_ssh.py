"""bench over SSH against a real OpenSSH server on loopback (a stand-in Raspberry Pi).

The server is Debian's ``/usr/sbin/sshd`` started by the fixture with a temporary host key
and user key; the "device" Python is this test's interpreter (numpy + LiteRT) or Debian's
``/usr/bin/python3`` (no runtime). Nothing about SSH is mocked.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests import harness_helpers as hh
from tfedge.errors import BenchError, TargetError
from tfedge.targets.bench import bench, bench_inventory
from tfedge.targets.ssh import parse_target

pytestmark = pytest.mark.slow
FAST = dict(runs=5, warmup=1, min_secs=0.0)


def opts(server, **extra) -> dict:
    return {
        "python": sys.executable,
        "key": str(server.user_key),
        "known_hosts": str(server.known_hosts),
        **extra,
    }


def test_parse_target():
    t = parse_target("ssh://pi@raspberrypi.local:2222/srv/b?python=~/venv/bin/python&key=/k")
    assert (t.user, t.host, t.port, t.workdir, t.python, t.key) == (
        "pi",
        "raspberrypi.local",
        2222,
        "/srv/b",
        "~/venv/bin/python",
        "/k",
    )
    assert parse_target("ssh://pi@board").workdir == "tfedge-bench"


def test_bench_over_ssh_copies_checks_and_runs(sshd, harness_models, tmp_path, ssh_home):
    workdir = tmp_path / "device-workdir"
    target = sshd.url(str(workdir))
    r = bench(
        harness_models["int8"],
        target=target,
        data=harness_models["data"],
        keep_outputs=True,
        threads=1,
        **FAST,
        **opts(sshd),
    )
    assert r.target == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}" and r.emulated is False
    assert r.accuracy > 0.8 and r.outputs.shape == (200, 10) and r.latency_us.count >= 5
    copied = sorted(p.name for p in workdir.iterdir())
    assert "tfedge-device" in copied and any(n.endswith("-digits_int8.tflite") for n in copied)
    assert {p.name for p in (workdir / "tfedge-device").glob("*.py")} == {
        "bench.py",
        "interpreter.py",
    }
    assert not any(n.endswith(".part") or n.endswith(".npy") for n in copied)
    stamp = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    bench(
        harness_models["int8"], target=target, **FAST, **opts(sshd)
    )  # already there: not copied again
    assert all(p.stat().st_mtime_ns == stamp[p.name] for p in workdir.iterdir() if p.name in stamp)


def test_cli_bench_over_ssh_with_json(sshd, harness_models, run_cli, ssh_home):
    url = sshd.url(python=sys.executable, key=str(sshd.user_key), known_hosts=str(sshd.known_hosts))
    result = run_cli(
        "bench",
        harness_models["int8"],
        "--target",
        url,
        "--compare",
        harness_models["float"],
        "--runs",
        5,
        "--min-secs",
        0,
        "--json",
    )
    data = json.loads(result.stdout)
    assert data["emulated"] is False and data["compare"]["model"].endswith("digits_float.tflite")
    assert data["speedup"] > 0


def test_wrong_host_key_is_refused(sshd, harness_models, tmp_path, ssh_home):
    other = hh.keygen(tmp_path / "other_host_key").with_suffix(".pub").read_text().split()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(TargetError, match="host key .* is not trusted") as info:
        bench(
            harness_models["int8"], target=sshd.url(), **FAST, **opts(sshd, known_hosts=str(wrong))
        )
    assert "ssh-keyscan" in info.value.hint


def test_unknown_host_without_known_hosts_is_refused(sshd, harness_models, ssh_home):
    with pytest.raises(TargetError, match="no known_hosts file"):
        bench(harness_models["int8"], target=sshd.url(), **FAST, **opts(sshd, known_hosts=None))


def test_failed_auth(sshd, harness_models, tmp_path, ssh_home):
    stranger = hh.keygen(tmp_path / "stranger")
    with pytest.raises(TargetError, match="authentication failed") as info:
        bench(harness_models["int8"], target=sshd.url(), **FAST, **opts(sshd, key=str(stranger)))
    assert "ssh-copy-id" in info.value.hint


def test_unreachable_port(sshd, harness_models, ssh_home):
    target = f"ssh://{sshd.user}@127.0.0.1:{hh.free_port()}"
    with pytest.raises(TargetError, match="cannot reach"):
        bench(harness_models["int8"], target=target, **FAST, **opts(sshd))


def test_missing_runtime_on_device_gives_install_command(sshd, harness_models, ssh_home, run_cli):
    with pytest.raises(TargetError, match="no TFLite runtime on ssh://") as info:
        bench(
            harness_models["int8"],
            target=sshd.url(),
            **FAST,
            **opts(sshd, python="/usr/bin/python3"),
        )
    assert "pip install numpy ai-edge-litert" in info.value.hint
    result = run_cli(
        "bench",
        harness_models["int8"],
        "--target",
        sshd.url(),
        "--remote-python",
        "/usr/bin/python3",
        "--key",
        sshd.user_key,
        "--known-hosts",
        sshd.known_hosts,
        expect=1,
    )
    assert "pip install numpy ai-edge-litert" in result.stderr


def test_timeout_on_device(sshd, harness_models, ssh_home):
    with pytest.raises(BenchError, match="timed out after 1 s"):
        bench(
            harness_models["int8"], target=sshd.url(), runs=5, min_secs=4, timeout=1, **opts(sshd)
        )


def test_malformed_model_over_ssh(sshd, malformed_models, ssh_home):
    with pytest.raises(BenchError, match="truncated.tflite cannot be loaded on ssh://"):
        bench(malformed_models["truncated"], target=sshd.url(), **FAST, **opts(sshd))


def test_inventory_of_devices_gives_one_row_each(sshd, harness_models, tmp_path, ssh_home, run_cli):
    good = {"target": sshd.url(), **{k: v for k, v in opts(sshd).items()}}
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "devices": [
                    {"name": "pi-a", **good, "profile": "rpi4"},
                    {"name": "pi-b", **good, "threads": 1},
                    {
                        "name": "pi-off",
                        **good,
                        "target": f"ssh://{sshd.user}@127.0.0.1:{hh.free_port()}",
                    },
                ]
            }
        )
    )
    rows = bench_inventory(harness_models["int8"], inventory, **FAST)
    assert [r.name for r in rows] == ["pi-a", "pi-b", "pi-off"]
    assert rows[0].result.profile == "rpi4" and rows[1].result.threads == 1
    assert rows[2].result is None and "cannot reach" in rows[2].error
    result = run_cli(
        "bench",
        harness_models["int8"],
        "--inventory",
        inventory,
        "--runs",
        5,
        "--min-secs",
        0,
        expect=1,
    )
    assert result.stdout.count("\n") == 4 and "error: cannot reach" in result.stdout
    assert "1 of 3 device(s) failed: pi-off" in result.stderr
