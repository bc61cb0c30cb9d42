"""The README's main command: the demo runs end to end on real components."""

from __future__ import annotations

import json

import pytest

from tfedge._tf import import_keras3

pytestmark = [pytest.mark.slow, pytest.mark.tf]


def test_demo_runs_end_to_end(run_cli, models_root, tmp_path):
    result = run_cli("demo", "--models-dir", models_root, "--out", tmp_path / "demo")
    out = result.stdout
    assert (
        "tflite int8" in out
        and "keras 3 file -> int8" in out
        and "prune-cluster-qat int8" in out
        and "your Keras 3 model" in out
        and "yes" in out
    )
    assert "qemu:cortex-a72 (EMULATED)" in out and "ai-edge-litert 1.4.0" in out
    assert (tmp_path / "demo" / "digits_int8.tflite").exists()
    own = next(line for line in out.splitlines() if line.startswith("your Keras 3 model"))
    assert own.split()[-1] == "yes"  # full-integer
    report = json.loads((tmp_path / "demo" / "my_model" / "report.json").read_text())
    assert report["keras_model"] == "model.keras"  # converted back to Keras 3 and checked
    keras3 = import_keras3()
    model = keras3.models.load_model(tmp_path / "demo" / "my_model" / "model.keras")
    assert model.get_layer("stem_act").get_config()["activation"] == "hard_silu"
    thin = next(line for line in out.splitlines() if line.startswith("channels 50% MACs int8"))
    assert thin.split()[-1] == "yes"  # the thinner model is full-integer too
    macs = next(line for line in out.splitlines() if line.startswith("channels pass:"))
    before, after = (int(n.replace(",", "")) for n in macs.split()[2:5:2])
    assert abs(after / before - 0.5) <= 0.05  # the recipe's target_macs: 0.5
    assert "channels int8 p50 us" in out
    assert "where it paid, per channel group (local CPU):" in out
    channels = (tmp_path / "demo" / "channels" / "report.md").read_text()
    assert "Time on local, one thread" in channels  # 4c timed its groups before and after
    search = json.loads((tmp_path / "demo" / "search" / "pareto.json").read_text())
    assert len(search["trials"]) == 3 and not search["failed"]  # 4d ran three real trials
    passes = [p for t in search["trials"] for p in t["recipe"]["passes"]]
    assert all(list(p) == ["channels"] and p["channels"]["epochs"] == 1 for p in passes)
    assert (tmp_path / "demo" / "search" / "report.html").is_file()
    line = next(line for line in out.splitlines() if line.startswith("search (3 trials"))
    assert ("best feasible trial" in line) == (search["best"] is not None)
    assert "shipped to the stand-in device" in out and ": Success, model version 1" in out
    update = next(line for line in out.splitlines() if line.startswith("fine-tuned digits-int8"))
    assert "version 1 -> 2 (Success): a " in update and "-byte delta instead of" in update
    assert "fleet collector: 2 devices reported" in out  # both agents reported
    assert "digits-int8 version 2 on 1 of 1" in out
    assert (tmp_path / "demo" / "device" / "current").resolve().is_file()
    # the repository was made and published without its root key inside it
    assert (tmp_path / "demo" / "offline-root-key" / "root.pem").is_file()
    assert not (tmp_path / "demo" / "ota-repo" / "keys" / "root.pem").exists()
