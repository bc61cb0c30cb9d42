"""One full-integer verifier: convert, optimize, inspect, bench --profile and ota publish agree.

The model under test is a real full-int8 digits model into which a float DEQUANTIZE ->
QUANTIZE pair is spliced between two layers, as the converter leaves one where two
quantization ranges disagree. The LiteRT interpreter runs it, so it is a valid model; the
values between the pair are float, so it is not full-integer.
"""

from __future__ import annotations

import numpy as np
import pytest

from tfedge.convert.converter import verify_converted
from tfedge.convert.tflite_model import read_tflite
from tfedge.convert.verify import find_float_ops
from tfedge.errors import ProfileError, VerificationError

pytestmark = pytest.mark.slow  # needs the digits model (TensorFlow)

STRICT_PROFILE = "rpi3b"  # requires_full_integer: true


def splice_float_pair(src, dst, after_op: int = 0):
    """Write ``src`` with op ``after_op``'s int8 output routed through DEQUANTIZE -> QUANTIZE."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)
    graph = model.subgraphs[0]
    old = graph.operators[after_op].outputs[0]
    dq, q = _opcode(model, schema, "DEQUANTIZE"), _opcode(model, schema, "QUANTIZE")
    floats = _add_tensor(model, graph, graph.tensors[old], schema.TensorType.FLOAT32, "island/f")
    requant = _add_tensor(model, graph, graph.tensors[old], graph.tensors[old].type, "island/q")
    for op in graph.operators:
        op.inputs = [requant if i == old else i for i in op.inputs]
    graph.operators[after_op + 1 : after_op + 1] = [
        _operator(schema, dq, [old], [floats]),
        _operator(schema, q, [floats], [requant]),
    ]
    builder = __import__("flatbuffers").Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst


def _opcode(model, schema, name: str) -> int:
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = getattr(schema.BuiltinOperator, name)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _add_tensor(model, graph, like, dtype, name: str) -> int:
    import copy

    tensor = copy.deepcopy(like)
    tensor.type, tensor.name, tensor.buffer = dtype, name.encode(), len(model.buffers)
    if dtype != like.type or dtype == 0:  # float tensors carry no quantization
        tensor.quantization = None
    model.buffers.append(type(model.buffers[0])())
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _operator(schema, opcode: int, inputs: list[int], outputs: list[int]):
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, inputs, outputs
    return op


@pytest.fixture(scope="module")
def island(digits_int8, tmp_path_factory):
    return splice_float_pair(digits_int8, tmp_path_factory.mktemp("island") / "island.tflite")


def test_spliced_model_is_valid_and_runs(island, digits_int8):
    """The pair only dequantizes and requantizes: the runtime gives the original's outputs."""
    x = np.random.default_rng(0).integers(-128, 127, size=(1, 8, 8, 1), dtype=np.int8)
    assert np.array_equal(_run(island, x), _run(digits_int8, x))


def _run(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def test_the_verifier_finds_the_pair_and_passes_the_original(island, digits_int8):
    found = [f.op for f in find_float_ops(read_tflite(island))]
    assert found == ["DEQUANTIZE", "QUANTIZE"]
    assert find_float_ops(read_tflite(digits_int8)) == []


def test_convert_and_optimize_refuse_it(island):
    # convert() and optimize() (which converts every stage through convert()) run exactly this
    # check on the file the converter wrote, before it is renamed into place.
    with pytest.raises(VerificationError, match="2 op\\(s\\) in float: DEQUANTIZE"):
        verify_converted(read_tflite(island), "int8", "int8")
    assert verify_converted(read_tflite(island), "int8", "int8", allow_float_ops=True)


def test_inspect_says_not_full_integer(island, run_cli):
    import tfedge

    assert not tfedge.inspect(island).full_integer
    assert "DEQUANTIZE" in run_cli("inspect", str(island)).stdout


def test_bench_profile_refuses_it(island, run_cli):
    result = run_cli("bench", str(island), "--profile", STRICT_PROFILE, expect=1)
    assert result.stderr.startswith(f"Error: {STRICT_PROFILE} requires a full-integer model")
    assert "DEQUANTIZE" in result.stderr


def test_ota_publish_refuses_it(island, tmp_path):
    from tfedge.ota.repository import init_repository, publish

    init_repository(tmp_path / "repo")
    with pytest.raises(ProfileError, match="requires a full-integer model"):
        publish(tmp_path / "repo", island, name="digits", version=1, profiles=[STRICT_PROFILE])
    assert not list((tmp_path / "repo" / "public" / "targets").rglob("*.tflite"))
