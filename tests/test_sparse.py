"""`convert --sparse`, sparse tensors in tfedge's .tflite reader, and the XNNPACK pattern check.

The reader tests build tiny sparse files with the TFLite schema (no TensorFlow); the others
prune a small CNN by magnitude, convert it with the real converter (dense and sparse) and run
both with LiteRT.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as s

from tests.conftest import assert_one_error_line
from tests.hostile_tflite import base, graph, pack, write
from tfedge.convert import tflite_model
from tfedge.convert.tflite_model import parse_tflite, read_tflite
from tfedge.errors import ModelLoadError

WEIGHTS = np.array([[0, 5, 0, 0], [0, 0, 0, 0], [-6, 0, 0, 7]], np.int8)  # base()'s FC [3, 4]


# ---------------------------------------------------------------- hand-built sparse files
def _dim(dense_size=0, segments=None, indices=None) -> s.DimensionMetadataT:
    d = s.DimensionMetadataT()
    if segments is None:
        d.format, d.denseSize = s.DimensionType.DENSE, dense_size
        return d
    d.format = s.DimensionType.SPARSE_CSR
    for kind, values in (("Segments", segments), ("Indices", indices)):
        vector = s.Uint8VectorT()
        vector.values = list(values)
        setattr(d, f"array{kind}Type", s.SparseIndexVector.Uint8Vector)
        setattr(d, f"array{kind}", vector)
    return d


def sparse_model(weights=WEIGHTS, block: int = 1, edit=None) -> bytes:
    """base() with its FC weights stored CSR over rows (in blocks of ``block`` columns)."""
    rows, cols = weights.shape
    blocks = weights.reshape(rows, cols // block, block)
    segments, indices, values = [0], [], []
    for r in range(rows):
        for c in range(cols // block):
            if blocks[r, c].any():
                indices.append(c)
                values.extend(blocks[r, c].tolist())
        segments.append(len(indices))
    sp = s.SparsityParametersT()
    sp.traversalOrder = [0, 1] + ([2] if block > 1 else [])
    sp.blockMap = [1] if block > 1 else []
    sp.dimMetadata = [_dim(rows), _dim(0, segments, indices)] + ([_dim(block)] if block > 1 else [])
    m = base()
    m.buffers[1].data = list(np.array(values, np.int8).tobytes())
    graph(m).tensors[1].sparsity = sp
    if edit:
        edit(m, sp)
    return pack(m)


@pytest.mark.parametrize("block", [1, 2])
def test_reader_decodes_sparse_tensor(block):
    model = parse_tflite(sparse_model(block=block))
    t = model.tensors[1]
    assert t.sparsity is not None and t.sparsity.block_map == ((1,) if block > 1 else ())
    np.testing.assert_array_equal(t.dense(), WEIGHTS)
    assert t.size == 12 and t.nbytes == t.sparsity.values  # dense elements, stored bytes
    assert t.nbytes == (3 if block == 1 else 6)  # a block keeps its zeros
    summary = tflite_model.sparse_summary(t)
    assert (summary.nonzero, summary.density, summary.dense_bytes) == (3, 0.25, 12)
    assert "CSR on dimension 1 (uint8 indices)" in summary.encoding


def test_xnnpack_check_refuses_integer_models():
    from tfedge.convert.sparse import check_model

    check = check_model(parse_tflite(sparse_model()))  # int8, its weights stored sparse
    assert not check.matches and check.sparse_tensors == 1
    assert check.reasons == [
        "it computes in int8; XNNPACK's sparse kernels are float32/float16 only"
    ]
    dense = check_model(parse_tflite(pack(base())))
    assert not dense.matches and "no weights are stored sparse" in dense.reasons[0]


def _index_out_of_range(m, sp):
    sp.dimMetadata[1].arrayIndices.values[-1] = 4  # column 4 of a 4-column tensor


def _segments_decrease(m, sp):
    sp.dimMetadata[1].arraySegments.values[1:3] = [2, 1]


def _one_segment_short(m, sp):
    sp.dimMetadata[1].arraySegments.values.pop(1)


def _order_not_permutation(m, sp):
    sp.traversalOrder = [0, 0]


def _buffer_short(m, sp):
    m.buffers[1].data = m.buffers[1].data[:-1]


def _dense_size_wrong(m, sp):
    sp.dimMetadata[0].denseSize = 4


def _index_vector_missing(m, sp):
    sp.dimMetadata[1].arrayIndices = None
    sp.dimMetadata[1].arrayIndicesType = 0


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (_index_out_of_range, "index out of range in dimension 1 of size 4"),
        (_segments_decrease, "segments of dimension 1"),
        (_one_segment_short, "segments in dimension 1; it needs 4"),
        (_order_not_permutation, "traversal order [0, 0]"),
        (_buffer_short, "its buffer holds 2"),
        (_dense_size_wrong, "dense dimension 0 of size 4; it is 3"),
        (_index_vector_missing, "without its segments or indices"),
    ],
)
def test_reader_refuses_hostile_sparsity(edit, fragment):
    with pytest.raises(ModelLoadError) as err:
        parse_tflite(sparse_model(edit=edit))
    assert "stored sparse with" in err.value.message and fragment in err.value.message


def test_cli_refuses_out_of_range_index(run_cli, tmp_path):
    path = write(tmp_path / "bad.tflite", sparse_model(edit=_index_out_of_range))
    before = path.read_bytes()
    result = run_cli("inspect", path, expect=1)
    assert_one_error_line(result, "is invalid", "stored sparse", "index out of range")
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def test_densify_is_bounded(monkeypatch):
    t = parse_tflite(sparse_model()).tensors[1]
    limits = dataclasses.replace(tflite_model.LIMITS, densify_bytes=11)  # 12 bytes dense
    monkeypatch.setattr(tflite_model, "LIMITS", limits)
    with pytest.raises(ModelLoadError, match="more than tfedge densifies"):
        t.dense()


def shared_sparsity(tensors: int, indices: int) -> bytes:
    """``tensors`` int8 tensors of shapes [1, 256 + k] sharing one sparsity table (CSR over
    ``indices`` zero indices) and one buffer: each shape is valid, so each is checked."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    vectors = {}
    for kind, values, kind_type in (
        ("segments", [0, indices], "Int32"),
        ("indices", [0] * indices, "Uint8"),
    ):
        start = getattr(s, f"{kind_type}VectorStartValuesVector")
        start(b, len(values))
        for v in reversed(values):
            getattr(b, f"Prepend{kind_type}")(v)
        vec = b.EndVector()
        getattr(s, f"{kind_type}VectorStart")(b)
        getattr(s, f"{kind_type}VectorAddValues")(b, vec)
        vectors[kind] = b.EndObject()
    dims = []
    for sparse in (False, True):
        s.DimensionMetadataStart(b)
        if sparse:
            s.DimensionMetadataAddFormat(b, s.DimensionType.SPARSE_CSR)
            s.DimensionMetadataAddArraySegmentsType(b, s.SparseIndexVector.Int32Vector)
            s.DimensionMetadataAddArraySegments(b, vectors["segments"])
            s.DimensionMetadataAddArrayIndicesType(b, s.SparseIndexVector.Uint8Vector)
            s.DimensionMetadataAddArrayIndices(b, vectors["indices"])
        else:
            s.DimensionMetadataAddDenseSize(b, 1)
        dims.append(b.EndObject())
    s.SparsityParametersStartDimMetadataVector(b, 2)
    for d in reversed(dims):
        b.PrependUOffsetTRelative(d)
    dim_vector = b.EndVector()
    s.SparsityParametersStartTraversalOrderVector(b, 2)
    b.PrependInt32(1)
    b.PrependInt32(0)
    order = b.EndVector()
    s.SparsityParametersStart(b)
    s.SparsityParametersAddTraversalOrder(b, order)
    s.SparsityParametersAddDimMetadata(b, dim_vector)
    sparsity = b.EndObject()
    tables = []
    for k in range(tensors):
        s.TensorStartShapeVector(b, 2)
        b.PrependInt32(256 + k)
        b.PrependInt32(1)
        shape = b.EndVector()
        s.TensorStart(b)
        s.TensorAddShape(b, shape)
        s.TensorAddType(b, s.TensorType.INT8)
        s.TensorAddBuffer(b, 1)
        s.TensorAddSparsity(b, sparsity)
        tables.append(b.EndObject())
    s.SubGraphStartTensorsVector(b, tensors)
    for t in reversed(tables):
        b.PrependUOffsetTRelative(t)
    tensor_vector = b.EndVector()
    s.SubGraphStart(b)
    s.SubGraphAddTensors(b, tensor_vector)
    subgraph = b.EndObject()
    data = b.CreateNumpyVector(np.ones(indices, np.uint8))
    buffers = []
    for payload in (None, data):
        s.BufferStart(b)
        if payload is not None:
            s.BufferAddData(b, payload)
        buffers.append(b.EndObject())
    s.ModelStartBuffersVector(b, 2)
    for buf in reversed(buffers):
        b.PrependUOffsetTRelative(buf)
    buffer_vector = b.EndVector()
    s.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(subgraph)
    subgraphs = b.EndVector()
    s.ModelStart(b)
    s.ModelAddVersion(b, 3)
    s.ModelAddSubgraphs(b, subgraphs)
    s.ModelAddBuffers(b, buffer_vector)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_shared_sparsity_is_checked_against_the_budget():
    few = parse_tflite(shared_sparsity(tensors=3, indices=1000))  # sharing itself is allowed
    assert [t.dense().shape for t in few.tensors] == [(1, 256), (1, 257), (1, 258)]
    with pytest.raises(ModelLoadError, match="too large to read"):
        parse_tflite(shared_sparsity(tensors=400, indices=50_000))  # ~20 MB checked of 0.3 MB


def test_sparse_int8_is_a_usage_error(run_cli, tmp_path):
    model, calib = tmp_path / "m.keras", tmp_path / "c.npz"
    model.write_bytes(b"not read")
    np.savez(calib, x=np.zeros((2, 4), np.float32))
    out = tmp_path / "out.tflite"
    args = ("convert", model, "-o", out, "--quant", "int8", "--calib", calib, "--sparse")
    result = run_cli(*args, expect=2)
    assert_one_error_line(result, "--sparse applies to float models", "--quant float16")
    assert not out.exists()


# ---------------------------------------------------------------- real converter, LiteRT
def _pruned_cnn(first: str, size: int = 16):
    """A small CNN in XNNPACK's sparse shape, ~80% of every kernel zeroed by magnitude.

    ``first``: 'match' pads 1 on each side before a 'valid' 3x3 stride-2 conv; 'asym' pads
    0 before and 1 after (Keras MobileNetV2's correct_pad on an even input).
    """
    from tfedge._tf import import_keras

    k = import_keras()
    k.utils.set_random_seed(0)
    pad = {"match": 1, "asym": ((0, 1), (0, 1))}[first]
    x = inp = k.Input((size, size, 3))
    x = k.layers.ZeroPadding2D(pad)(x)
    x = k.layers.Conv2D(8, 3, strides=2, activation="relu", name="stem")(x)
    x = k.layers.Conv2D(16, 1, activation="relu")(x)
    x = k.layers.DepthwiseConv2D(3, padding="same")(x)
    x = k.layers.Conv2D(32, 1)(x)
    x = k.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = k.layers.Dense(10)(k.layers.Flatten()(x))
    model = k.Model(inp, x)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights and weights[0].ndim >= 2:
            kernel = weights[0]
            kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.8)] = 0
            layer.set_weights([kernel, *weights[1:]])
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The pruned CNN converted dense, sparse (by ``tfedge.convert``), sparse float16; the
    asymmetric one sparse. (In this process: a worker would import TensorFlow again.)"""
    import tfedge
    from tfedge.convert.worker import convert_model

    d = tmp_path_factory.mktemp("sparse")
    model = _pruned_cnn("match")
    model.save(d / "pruned.h5")
    out = {name: d / f"{name}.tflite" for name in ("dense", "sparse", "sparse16", "asym")}
    out["dense"].write_bytes(convert_model(model, "none", "float32")[0])
    out["sparse16"].write_bytes(convert_model(model, "float16", "float32", sparse=True)[0])
    out["asym"].write_bytes(convert_model(_pruned_cnn("asym"), "none", "float32", sparse=True)[0])
    out["result"] = tfedge.convert(
        d / "pruned.h5", out["sparse"], quant="none", sparse=True, in_process=True
    )
    return out


def _run(path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.tf
def test_sparse_tensors_densify_to_the_dense_weights(converted):
    from tfedge.analyze.inspect import count_parameters

    dense, sparse = read_tflite(converted["dense"]), read_tflite(converted["sparse"])
    stored = [t for t in sparse.tensors if t.sparsity is not None]
    assert len(stored) == 5  # four conv kernels and the Dense kernel
    constants = [t.data for t in dense.tensors if t.data is not None]
    for t in stored:
        values = t.dense()
        assert values.shape == t.shape and np.mean(values == 0) >= 0.7
        assert any(c.shape == values.shape and np.array_equal(c, values) for c in constants)
    assert count_parameters(sparse) == count_parameters(dense)
    assert sparse.size_bytes < dense.size_bytes
    half = read_tflite(converted["sparse16"])
    for t in (t for t in half.tensors if t.sparsity is not None):
        assert t.dtype == "float16"
        assert any(
            c.shape == t.shape and np.array_equal(c.astype(np.float16), t.dense())
            for c in constants
        )


@pytest.mark.tf
def test_sparse_outputs_equal_dense(converted):
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
    expected = _run(converted["dense"], x)
    np.testing.assert_allclose(_run(converted["sparse"], x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_run(converted["sparse16"], x), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.tf
def test_xnnpack_check(converted):
    from tfedge.convert.sparse import xnnpack_sparse_check

    yes = xnnpack_sparse_check(converted["sparse"])
    assert yes.matches and yes.reasons == [] and yes.nchw_ops == 5
    assert (yes.zeros_1x1, yes.weights_1x1) == (511, 640)
    assert xnnpack_sparse_check(converted["sparse16"]).matches
    dense = xnnpack_sparse_check(converted["dense"])
    assert not dense.matches and "no weights are stored sparse" in dense.reasons[0]
    # The converter folds the asymmetric pad into the conv as 'same' (the same result on an
    # even input); XNNPACK keeps strided 'same' padding implicit: no match either way.
    asym = xnnpack_sparse_check(converted["asym"])
    assert not asym.matches
    assert "CONV_2D" in asym.reasons[0] and "(stem)" in asym.reasons[0]
    assert "'same' padding" in asym.reasons[0] and "ZeroPadding2D(1)" in asym.reasons[-1]


@pytest.mark.tf
def test_xnnpack_check_explicit_asymmetric_pad(converted, tmp_path):
    """The matching model with its PAD edited to 0 before, 1 after (same output shape)."""
    from tfedge.convert.sparse import xnnpack_sparse_check

    m = s.ModelT.InitFromPackedBuf(converted["sparse"].read_bytes(), 0)
    g = graph(m)
    code = next(i for i, c in enumerate(m.operatorCodes) if c.builtinCode == s.BuiltinOperator.PAD)
    paddings = g.tensors[next(op for op in g.operators if op.opcodeIndex == code).inputs[1]]
    dtype = np.int32 if paddings.type == s.TensorType.INT32 else np.int64
    m.buffers[paddings.buffer].data = list(np.array([0, 0, 0, 1, 0, 1, 0, 0], dtype).tobytes())
    check = xnnpack_sparse_check(write(tmp_path / "asym.tflite", m))
    assert not check.matches
    assert (
        "(stem): 3x3 stride-2 convolution padded top 0, left 0, bottom 1, right 1"
        in (check.reasons[0])
    )


@pytest.mark.tf
def test_convert_sparse_reports(converted, run_cli):
    from tfedge.cli.convert import sparse_lines

    result = converted["result"]
    assert result.sparse and result.sparse_tensors == 5 and result.xnnpack_sparse.matches
    lines = sparse_lines(result.sparse_tensors, result.xnnpack_sparse)
    assert lines[0].startswith("sparse: 5 weight tensors stored sparse")
    assert lines[1].startswith("matches XNNPACK's sparse pattern: 5 ops")
    assert result.to_dict()["xnnpack_sparse"]["matches"] is True  # --json
    shown = run_cli("inspect", converted["sparse"]).stdout
    assert "sparse tensors: 5" in shown and "CSR on dimension 3" in shown
    assert "matches XNNPACK's sparse pattern" in shown
