"""A hostile ``.tflite`` never kills, hangs or floods tfedge (issue 12, part 1).

The models are tiny hand-built flatbuffers (tests/hostile_tflite.py), no TensorFlow: a
structurally invalid one is refused with the reason before anything reports on it or runs
it; one the runtime crashes or loops on runs only in a child with a timeout; one built to
amplify work (shared tables, millions of tensors, a 2 GB sparse file) is refused within
documented limits, in bounded time and memory (a child's peak RSS, from ``os.wait4``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import hostile_tflite as h
from tests.conftest import assert_one_error_line
from tests.peak_memory import run_with_peak_rss
from tfedge.convert.tflite_model import LIMITS, read_tflite
from tfedge.errors import BenchError, ModelLoadError

TIME_LIMIT_S = 60.0  # guards against hangs only: each case takes well under a second here
MEMORY_LIMIT_MB = 200  # `tfedge inspect` of a valid model peaks at ~45 MB; the old reader took GBs
TINY_SCALE = 1e-12  # positive and finite, so valid; the ADD kernel aborts on it (SIGABRT)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _tiny_scale_add() -> h.s.ModelT:
    m = h.add_with_zero_output_scale()
    h.graph(m).tensors[1].quantization.scale = [TINY_SCALE]
    return m


def _child_rss(args: list, cwd: Path) -> tuple[int, str, float, float]:
    """Run ``tfedge ARGS`` in a child: exit code, stderr, seconds and its peak RSS in MB."""
    return run_with_peak_rss([sys.executable, "-m", "tfedge", *args], TIME_LIMIT_S, cwd=cwd)


class _Result:  # what assert_one_error_line reads
    def __init__(self, stderr: str, stdout: str = "") -> None:
        self.stderr, self.stdout = stderr, stdout


def _one_error_with_hint(stderr: str, *fragments: str) -> None:
    assert_one_error_line(_Result(stderr), *fragments)
    assert "(hint: " in stderr


# ---------------------------------------------------------------- structure
@pytest.mark.parametrize("case", sorted(h.INVALID))
def test_an_invalid_model_is_refused_by_inspect_with_the_reason(run_cli, tmp_path, case):
    model = h.write(tmp_path / f"{case}.tflite", h.invalid(case))
    before = model.read_bytes()
    result = run_cli("inspect", model, expect=1)
    kind = "damaged" if case == "schema-version" else "is invalid"
    assert_one_error_line(result, kind, h.INVALID[case][3])
    assert "(hint: " in result.stderr and "full-integer" not in result.stdout
    assert model.read_bytes() == before and {p.name for p in tmp_path.iterdir()} == {model.name}


def test_the_valid_base_model_still_reads_the_same(run_cli, tmp_path):
    model = read_tflite(h.write(tmp_path / "base.tflite", h.base()))
    assert [op.name for op in model.ops] == ["FULLY_CONNECTED"]
    assert model.tensors[1].data.shape == (3, 4) and model.tensors[2].data.dtype == np.int32
    assert model.inputs[0].scale == [pytest.approx(0.05)] and model.outputs[0].zero_point == [5]
    assert "full-integer: yes" in run_cli("inspect", tmp_path / "base.tflite").stdout


@pytest.mark.parametrize(
    "build, fragment",
    [
        (h.reshape_with_bias_as_shape, "which holds [10, -20, 30]"),
        (h.add_with_zero_output_scale, "scale 0"),
    ],
    ids=["reshape-bias-shape", "add-zero-scale"],
)
def test_runtime_crashers_are_refused_before_any_report_or_run(run_cli, tmp_path, build, fragment):
    """The issue's two crashers: inspect said `full-integer: yes`, evaluate died (SIGABRT)."""
    model = h.write(tmp_path / "m.tflite", build())
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4), np.float32))
    assert_one_error_line(run_cli("inspect", model, expect=1), "is invalid", fragment)
    evaluated = run_cli("evaluate", model, "--data", tmp_path / "x.npz", expect=1)
    assert_one_error_line(evaluated, "is invalid", fragment)


# ---------------------------------------------------------------- isolation
def test_evaluate_a_model_that_crashes_the_runtime_is_one_error_naming_the_signal(
    run_cli, tmp_path
):
    model = h.write(tmp_path / "tiny_scale.tflite", _tiny_scale_add())
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4), np.float32))
    read_tflite(model)  # structurally valid: only running it shows the problem
    result = run_cli("evaluate", model, "--data", tmp_path / "x.npz", expect=1)
    assert_one_error_line(result, "crashed (SIGABRT)", "tiny_scale.tflite")
    assert "(hint: " in result.stderr


def test_ota_publish_of_a_model_that_crashes_the_runtime_changes_nothing(run_cli, tmp_path):
    repo = tmp_path / "repo"
    run_cli("ota", "init", repo)
    before = _tree(repo)
    model = h.write(tmp_path / "tiny_scale.tflite", _tiny_scale_add())
    result = run_cli("ota", "publish", repo, model, "--name", "m", "--version", "1", expect=1)
    assert_one_error_line(result, "crashed (SIGABRT)")
    assert "(hint: " in result.stderr and _tree(repo) == before


def test_a_model_that_loops_forever_is_stopped_by_the_timeout(tmp_path):
    from tfedge.analyze.isolated import predict_tflite_isolated
    from tfedge.ota.golden import golden_npz

    model = h.write(tmp_path / "while.tflite", h.while_forever())
    read_tflite(model)
    x = np.zeros((2, 1), np.int32)
    for run in (
        lambda: predict_tflite_isolated(model, x, timeout=3),
        lambda: golden_npz(model, timeout=3),
    ):
        start = time.monotonic()
        with pytest.raises(BenchError, match="longer than 3 s"):
            run()
        assert time.monotonic() - start < TIME_LIMIT_S


# ---------------------------------------------------------------- amplification and size
def test_shared_tables_are_read_once_and_counted(tmp_path):
    """~10 KB whose one tensor table is referenced 1.44 million times (old: 97 s, 1.2 GB)."""
    model = tmp_path / "shared.tflite"
    model.write_bytes(h.shared_tables(subgraphs=1200, tensors=1200))
    assert model.stat().st_size < 12_000
    code, stderr, seconds, rss = _child_rss(["inspect", model], tmp_path)
    assert code == 1 and seconds < TIME_LIMIT_S and rss < MEMORY_LIMIT_MB, (seconds, rss)
    _one_error_with_hint(stderr, "too large to read", f"more than {LIMITS.tensors:,} tensors")
    few = h.shared_tables(subgraphs=3, tensors=5)  # sharing itself is allowed
    assert len(read_tflite(h.write(tmp_path / "few.tflite", few)).tensors) == 5


def test_millions_of_tensors_are_refused_before_they_are_read(tmp_path):
    """24 MB with 3 million tensor tables (old: 117 s, 1.7 GB), for inspect and evaluate."""
    model = tmp_path / "many.tflite"
    model.write_bytes(h.many_tensors(3_000_000))
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4), np.float32))
    for args in (["inspect", model], ["evaluate", model, "--data", tmp_path / "x.npz"]):
        code, stderr, seconds, rss = _child_rss(args, tmp_path)
        assert code == 1 and seconds < TIME_LIMIT_S and rss < MEMORY_LIMIT_MB, (seconds, rss)
        _one_error_with_hint(stderr, "too large to read", "tensors")


@pytest.mark.parametrize("valid_head", [False, True], ids=["header-only", "model-then-holes"])
def test_a_2gb_sparse_file_costs_what_its_model_holds(tmp_path, valid_head):
    """The file is mapped, not read (old: 4.2 GB for a TFLite header and 2 GB of holes)."""
    head = h.pack(h.base()) if valid_head else b"\0\0\0\0TFL3"
    model = h.sparse_file(tmp_path / "sparse.tflite", 2 * 1024**3, head)
    code, stderr, seconds, rss = _child_rss(["inspect", model], tmp_path)
    assert seconds < TIME_LIMIT_S and rss < MEMORY_LIMIT_MB, (seconds, rss)
    if valid_head:
        assert code == 0 and "Error" not in stderr
    else:
        assert code == 1
        _one_error_with_hint(stderr, "damaged TFLite model")
    model.unlink()


def test_limits_are_checked_from_counts_before_decoding(monkeypatch, tmp_path):
    """Every count in LIMITS refuses the file with its own name; each is documented there."""
    from tfedge.convert import tflite_model

    model = h.write(tmp_path / "base.tflite", h.base())
    for name, expected in [
        ("tensors", "tensors"),
        ("operators", "operators"),
        ("buffers", "buffers"),
        ("tensor_refs", "tensor refs"),
        ("operator_codes", "operator codes"),
    ]:
        monkeypatch.setattr(tflite_model, "LIMITS", tflite_model.Limits(**{name: 0}))
        with pytest.raises(ModelLoadError, match=f"too large to read: more than 0 {expected}"):
            read_tflite(model)
    monkeypatch.setattr(tflite_model, "LIMITS", tflite_model.Limits(file_bytes=100))
    with pytest.raises(ModelLoadError, match="more than tfedge reads"):
        read_tflite(model)


def test_a_quantization_shared_by_many_tensors_is_decoded_once(tmp_path):
    """10,000 tensors share one 50,000-channel quantization: one decode, not 500 million."""
    model = tmp_path / "scales.tflite"
    model.write_bytes(h.shared_scales(tensors=10_000, channels=50_000))
    code, stderr, seconds, rss = _child_rss(["inspect", model], tmp_path)
    assert code == 0 and "Error" not in stderr, stderr
    assert seconds < TIME_LIMIT_S and rss < MEMORY_LIMIT_MB, (seconds, rss)


def test_a_file_that_shrinks_while_it_is_read_is_an_error_not_sigbus(tmp_path):
    """Read by pread, not a memory map: a map of a truncated file kills with SIGBUS."""
    from tfedge.convert.tflite_model import _FileBytes, parse_tflite

    model = h.write(tmp_path / "m.tflite", h.base())
    size = model.stat().st_size
    with open(model, "r+b") as f:
        content = _FileBytes(f.fileno(), size)  # its size read, then the file is cut
        f.truncate(size // 2)
        with pytest.raises(ModelLoadError, match="damaged .*changed while it was read"):
            parse_tflite(content, "m.tflite")
