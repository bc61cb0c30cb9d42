"""The memory estimate of a ``.tflite`` (tfedge/analyze/memory.py) and `inspect --profile`.

A tiny float32 chain built by hand (no TensorFlow), whose arena is computed by hand below
and checked against the offsets LiteRT's own planner gives its tensors:

    x [1,8] -> FULLY_CONNECTED (w [32,8], b [32]) -> a [1,32] -> RELU -> b [1,32]
      -> FULLY_CONNECTED (w [4,32], no bias) -> y [1,4]
"""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as s

from tests import hostile_tflite as h
from tests.conftest import assert_one_error_line
from tfedge.analyze.memory import plan_memory
from tfedge.convert.tflite_model import read_tflite

FLOAT32 = s.TensorType.FLOAT32


def _tensor(name: str, shape: list[int], buffer: int = 0) -> s.TensorT:
    t = s.TensorT()
    t.name, t.shape, t.type, t.buffer = name.encode(), shape, FLOAT32, buffer
    return t


def _buffer(data: np.ndarray | None = None) -> s.BufferT:
    b = s.BufferT()
    b.data = list(data.astype(np.float32).tobytes()) if data is not None else None
    return b


def _op(code: int, inputs: list[int], outputs: list[int]) -> s.OperatorT:
    o = s.OperatorT()
    o.opcodeIndex, o.inputs, o.outputs = code, inputs, outputs
    if code == 0:
        o.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        o.builtinOptions = s.FullyConnectedOptionsT()
    return o


def chain() -> s.ModelT:
    rng = np.random.default_rng(0)
    m = s.ModelT()
    m.version = 3
    m.operatorCodes = [
        h._opcode(s.BuiltinOperator.FULLY_CONNECTED),
        h._opcode(s.BuiltinOperator.RELU),
    ]
    m.buffers = [
        _buffer(),
        _buffer(rng.normal(size=(32, 8))),  # 1,024 bytes
        _buffer(np.zeros(32)),  # 128 bytes
        _buffer(rng.normal(size=(4, 32))),  # 512 bytes
    ]
    g = s.SubGraphT()
    g.tensors = [
        _tensor("x", [1, 8]),  # 0: 32 bytes, the input: live throughout
        _tensor("w1", [32, 8], 1),
        _tensor("b1", [32], 2),
        _tensor("a", [1, 32]),  # 3: 128 bytes, ops 0..1
        _tensor("b", [1, 32]),  # 4: 128 bytes, ops 1..2
        _tensor("w2", [4, 32], 3),
        _tensor("y", [1, 4]),  # 6: 16 bytes, the output: op 2 to the end
    ]
    g.operators = [_op(0, [0, 1, 2], [3]), _op(1, [3], [4]), _op(0, [4, 5, -1], [6])]
    g.inputs, g.outputs, g.name = [0], [6], b"main"
    m.subgraphs = [g]
    return m


@pytest.fixture
def chain_file(tmp_path):
    return h.write(tmp_path / "chain.tflite", chain())


def test_arena_of_a_chain_is_computed_by_hand(chain_file):
    plan = plan_memory(read_tflite(chain_file))
    # x lives throughout: first, at 0. Then by size: a (128) at 64 (x's 32 bytes, aligned
    # to 64), b (128, overlaps x and a) at 192, y (16, overlaps x and b; a is dead) in the
    # gap at 64. The arena ends at b's end, 320.
    offsets = {p.name: p.offset for p in plan.tensors}
    assert offsets == {"x": 0, "a": 64, "b": 192, "y": 64}
    assert plan.arena_bytes == 320
    # live at op 1: x, a and b (32 + 128 + 128); at ops 0 and 2 less
    assert plan.activation_peak_bytes == 288
    assert plan.weights_bytes == 1024 + 128 + 512


def test_the_plan_is_the_offsets_litert_gives(chain_file):
    """LiteRT's own planner (builtin kernels, no delegate) puts the tensors where we say."""
    from ai_edge_litert import interpreter as lite

    it = lite.Interpreter(
        str(chain_file),
        experimental_op_resolver_type=lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    address = {i: it.tensor(i)().__array_interface__["data"][0] for i in (0, 3, 4, 6)}
    measured = {i: a - address[0] for i, a in address.items()}
    plan = plan_memory(read_tflite(chain_file))
    assert measured == {p.tensor: p.offset for p in plan.tensors}


def _profile(path, max_ram_mb, max_model_bytes):
    path.write_text(
        "schema_version: 1\nname: tiny-board\ndescription: a board with almost no memory\n"
        "arch: aarch64\ncpu: cortex-a53\ncores: 1\nram_mb: 1\nstorage: null\n"
        "runtime: ai-edge-litert\nrequires_full_integer: false\ndefault_threads: 1\n"
        f"budgets:\n  max_model_bytes: {max_model_bytes}\n  max_ram_mb: {max_ram_mb}\n"
        "  target_latency_ms: null\n"
    )
    return path


def test_inspect_prints_the_memory_estimate(run_cli, chain_file):
    out = run_cli("inspect", chain_file).stdout
    assert "memory: activations ~0.3 KiB (arena, greedy plan; 0.3 KiB live at most), " in out
    assert "weights 1.6 KiB" in out
    data = __import__("json").loads(run_cli("inspect", chain_file, "--json").stdout)
    assert (data["arena_bytes"], data["activation_peak_bytes"]) == (320, 288)
    assert data["weights_bytes"] == 1664


def test_inspect_profile_fits(run_cli, chain_file, tmp_path):
    profile = _profile(tmp_path / "roomy.yaml", 1, 10_000_000)
    out = run_cli("inspect", chain_file, "--profile", profile).stdout
    assert "ram: arena + weights 1,984 bytes fits tiny-board's budget of 1 MB" in out
    assert "flash: model file" in out and "fits tiny-board's budget of 10,000,000 bytes" in out


def test_inspect_profile_over_budget_is_one_error(run_cli, chain_file, tmp_path):
    """Arena + weights (320 + 1,664 bytes) over 0.001 MB (1,048 bytes); the file over 1,000."""
    profile = _profile(tmp_path / "tiny.yaml", 0.001, 1000)
    before = chain_file.read_bytes()
    result = run_cli("inspect", chain_file, "--profile", profile, expect=1)
    assert_one_error_line(result, "arena + weights is 1,984 bytes", "by 936 bytes", "model file")
    assert "hint" in result.stderr.lower() or "quantize" in result.stderr
    assert "ram: arena + weights 1,984 bytes is over tiny-board's budget" in result.stdout
    assert chain_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.tflite", "tiny.yaml"]


def test_inspect_profile_of_a_keras_model_is_a_usage_error(run_cli, tmp_path):
    """Refused from the file's header, before the model is loaded (no TensorFlow)."""
    import zipfile

    keras_file = tmp_path / "m.keras"
    with zipfile.ZipFile(keras_file, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("metadata.json", '{"keras_version": "3.6.0"}')
    result = run_cli("inspect", keras_file, "--profile", "rpi4", expect=2)
    assert_one_error_line(result, "--profile checks a .tflite")
    assert "tfedge convert" in result.stderr


def test_the_plan_is_plain_json(chain_file):
    import json

    data = json.loads(json.dumps(plan_memory(read_tflite(chain_file)).to_dict(), allow_nan=False))
    lasts = {t["name"]: t["last"] for t in data["tensors"]}
    assert lasts == {"x": None, "a": 1, "b": 2, "y": None}
