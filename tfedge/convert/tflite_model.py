"""Read a ``.tflite`` flatbuffer in pure Python (no interpreter, no TensorFlow).

Parsing never runs model code, so a malformed or hostile file becomes a ModelLoadError
instead of a crash. The reader is a bounds-checked flatbuffer reader of its own (not the
schema's object API, which unpacks a shared table again at every reference): each table and
vector is decoded once, never more bytes than the file holds, within :data:`LIMITS`; and the
structure the runtime relies on is checked (indices, shapes against buffers, quantization
parameters), so a model the runtime would refuse or crash on is reported as invalid.
Inspection, full-integer verification and the compression metrics (sparsity, distinct
weight values) all read models through this module.

Example:
    >>> m = read_tflite("model.tflite")
    >>> [op.name for op in m.ops][:3]
    ['QUANTIZE', 'CONV_2D', 'CONV_2D']
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np

from tfedge.errors import ModelLoadError

FLOAT_TYPES = frozenset({"float32", "float16", "float64", "bfloat16", "complex64", "complex128"})
_NUMPY_TYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "bool": np.bool_,
}


@dataclass
class Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: list[float] = field(default_factory=list)
    zero_point: list[int] = field(default_factory=list)
    quantized_dimension: int = 0
    data: np.ndarray | None = None  # constant tensors only; a sparse one's stored values (1-D)
    sparsity: Sparsity | None = None  # stored sparse (the converter's EXPERIMENTAL_SPARSITY)

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def nbytes(self) -> int:
        """Bytes the file stores for this tensor (a sparse one's values, not its dense size)."""
        return 0 if self.data is None else int(self.data.nbytes)

    @property
    def size(self) -> int:
        """Elements of a constant tensor as the model computes with it (a sparse one dense)."""
        if self.data is None:
            return 0
        return math.prod(self.shape) if self.sparsity is not None else int(self.data.size)

    def dense(self) -> np.ndarray:
        """The constant's values in its shape (a sparse tensor densified: :func:`densify`)."""
        if self.data is None:
            raise ValueError(f"tensor {self.index} ('{self.name}') is not a constant")
        return densify(self) if self.sparsity is not None else self.data


@dataclass(frozen=True)
class DimMetadata:
    """One dimension of a sparse tensor's encoding, in traversal order (TFLite's
    ``DimensionMetadata``): ``dense`` with its size, or ``sparse_csr`` with its segments and
    indices (stored as ``index_type``: int32, uint16 or uint8)."""

    format: str
    dense_size: int = 0
    segments: np.ndarray | None = None
    indices: np.ndarray | None = None
    index_type: str = ""


@dataclass(frozen=True)
class Sparsity:
    """How a constant tensor is stored sparse (TFLite's ``SparsityParameters``), checked.

    ``traversal_order`` lists the tensor's dimensions (then its block dimensions) in the order
    they are stored; ``block_map[j]`` is the dimension that block dimension ``rank + j``
    splits. ``values`` is how many values the buffer stores (non-zeros and the zeros of
    stored blocks).
    """

    traversal_order: tuple[int, ...]
    block_map: tuple[int, ...]
    dims: tuple[DimMetadata, ...]
    values: int

    def describe(self) -> str:
        """'CSR on dimension 3 (uint8 indices)' / '... blocks 1x4 ...'."""
        sparse = [
            f"{self.traversal_order[i]} ({d.index_type} indices)"
            for i, d in enumerate(self.dims)
            if d.format == "sparse_csr"
        ]
        text = "CSR on dimension " + ", ".join(sparse) if sparse else "dense encoding"
        if self.block_map:
            rank = len(self.traversal_order) - len(self.block_map)
            sizes = [
                self.dims[self.traversal_order.index(rank + j)].dense_size
                for j in range(len(self.block_map))
            ]
            text += ", blocks of " + "x".join(str(b) for b in sizes)
        return text


@dataclass
class SparseSummary:
    """A sparse tensor as inspection shows it."""

    name: str
    shape: list[int]
    dtype: str
    stored_bytes: int
    dense_bytes: int
    nonzero: int
    density: float
    encoding: str


def densify(t: Tensor) -> np.ndarray:
    """The dense values of sparse constant ``t`` (as the runtime's DENSIFY op computes them).

    The encoding was checked when the model was read; a dense size past
    :attr:`Limits.densify_bytes` is a ModelLoadError (the file would ask for that memory).
    """
    sp, values = t.sparsity, t.data
    if sp is None or values is None:
        raise ValueError(f"tensor {t.index} ('{t.name}') is not stored sparse")
    dense_bytes = math.prod(t.shape) * values.itemsize
    if dense_bytes > LIMITS.densify_bytes:
        raise ModelLoadError(
            f"sparse tensor {t.index} ('{t.name}') is {dense_bytes:,} bytes dense, more than "
            f"tfedge densifies ({LIMITS.densify_bytes:,})",
            "this is not a model for an edge device; check the file",
        )
    coords = np.zeros((1, 0), np.int64)
    for meta in sp.dims:
        if meta.format == "dense":
            rows = len(coords)
            coords = np.repeat(coords, meta.dense_size, axis=0)
            level = np.tile(np.arange(meta.dense_size, dtype=np.int64), rows)
        else:
            assert meta.segments is not None and meta.indices is not None
            counts: np.ndarray = np.diff(meta.segments.astype(np.int64))
            coords = np.repeat(coords, counts, axis=0)
            level = meta.indices.astype(np.int64)
        coords = np.column_stack([coords, level])
    rank = len(t.shape)
    by_dim = {d: coords[:, i] for i, d in enumerate(sp.traversal_order)}
    index = [by_dim[d] for d in range(rank)]
    for j, d in enumerate(sp.block_map):
        size = sp.dims[sp.traversal_order.index(rank + j)].dense_size
        index[d] = index[d] * size + by_dim[rank + j]
    out = np.zeros(t.shape, values.dtype)
    out[tuple(index)] = values
    return out


def sparse_summary(t: Tensor) -> SparseSummary:
    """Stored against dense size, and the share of non-zeros, of sparse constant ``t``."""
    assert t.sparsity is not None and t.data is not None
    elements = math.prod(t.shape)
    nonzero = int(np.count_nonzero(t.data))
    return SparseSummary(
        name=t.name,
        shape=list(t.shape),
        dtype=t.dtype,
        stored_bytes=t.nbytes,
        dense_bytes=elements * t.data.itemsize,
        nonzero=nonzero,
        density=round(nonzero / elements, 4) if elements else 0.0,
        encoding=t.sparsity.describe(),
    )


@dataclass
class Op:
    index: int
    name: str
    version: int
    inputs: list[Tensor]
    outputs: list[Tensor]
    # the builtin options tfedge reads (see _OPTION_FIELDS): e.g. CONV_2D's padding, strides
    options: dict[str, int] = field(default_factory=dict)

    @property
    def layer(self) -> str:
        """Best guess at the Keras layer an op came from, from the first tensor that names one."""
        for t in self.outputs + self.inputs:
            if "/" in t.name:
                return layer_from_tensor_name(t.name)
        return ""


@dataclass
class TfliteModel:
    path: str
    size_bytes: int
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[Tensor]
    outputs: list[Tensor]
    metadata: dict[str, bytes]
    subgraphs: int

    @property
    def min_runtime_version(self) -> str | None:
        raw = self.metadata.get("min_runtime_version")
        return raw.rstrip(b"\0").decode("ascii", "replace") if raw else None


def read_tflite(path: str | os.PathLike[str]) -> TfliteModel:
    """Parse ``path`` into a TfliteModel; raise ModelLoadError for anything that is not one.

    Only the tables and the constant buffers are read (by ``pread``, a page at a time), so
    a huge or sparse file costs what its model holds, not its size; a file that shrinks
    while it is read is an error (a memory map would kill tfedge with SIGBUS).
    """
    path = Path(path)
    with _open_model(path) as f:
        return parse_tflite(_FileBytes(f.fileno(), os.fstat(f.fileno()).st_size), str(path))


def parse_tflite(raw: bytes | _FileBytes, name: str = "<bytes>") -> TfliteModel:
    """Parse flatbuffer bytes; raise ModelLoadError if they are not a valid TFLite model.

    Structure is checked on the way (indices, shapes against buffers, quantization
    parameters, the counts in :data:`LIMITS`): a file the TFLite runtime would refuse, or
    could crash on, is a ModelLoadError saying why, never a report.
    """
    try:
        if len(raw) < 8 or raw[4:8] != b"TFL3":
            raise ModelLoadError(
                f"{name} is not a TFLite model (no TFL3 identifier)",
                "pass a .tflite file written by the TFLite converter or `tfedge convert`",
            )
        return _Parser(raw, name).model()
    except ModelLoadError:
        raise
    except _Damaged as exc:
        raise ModelLoadError(
            f"{name} is a damaged TFLite model ({exc})",
            "re-convert the model; the file may be truncated or corrupted",
        ) from None
    except _Invalid as exc:
        raise ModelLoadError(f"{name} is invalid: {exc}", INVALID_HINT) from None
    except _TooBig as exc:
        raise ModelLoadError(
            f"{name} is too large to read: {exc}",
            "tfedge reads models within the limits in tfedge/convert/tflite_model.py "
            "(LIMITS); this file is damaged or not a model for an edge device",
        ) from None
    except (struct.error, ValueError, OverflowError) as exc:  # bytes the bounds checks let by
        raise ModelLoadError(
            f"{name} is a damaged TFLite model ({type(exc).__name__})",
            "re-convert the model; the file may be truncated or corrupted",
        ) from exc


def layer_from_tensor_name(name: str) -> str:
    """'sequential/conv2d_1/Relu;sequential/conv2d_1/BiasAdd' -> 'conv2d_1'."""
    first = name.split(";")[0]
    parts = [p for p in first.split("/") if p]
    if len(parts) >= 3:
        return parts[1]
    return parts[0] if parts else name


@contextmanager
def _open_model(path: Path) -> Iterator[BinaryIO]:
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist", "check the path")
    if path.is_dir():
        raise ModelLoadError(
            f"{path} is a directory, not a .tflite file", "pass the .tflite file itself"
        )
    from tfedge.fsutil import open_regular  # a FIFO or a device would block the read

    with open_regular(path, "model", ModelLoadError, "pass a .tflite file") as f:
        size = os.fstat(f.fileno()).st_size
        if not size:
            raise ModelLoadError(f"{path} is empty", "re-convert the model")
        if size > LIMITS.file_bytes:
            raise ModelLoadError(
                f"{path} is {size:,} bytes, more than tfedge reads ({LIMITS.file_bytes:,})",
                "this is not a model for an edge device; check the file",
            )
        yield f


class _FileBytes:
    """An open file read like ``bytes`` (length, slices), through ``pread`` and a page cache."""

    PAGE = 64 * 1024

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._pages: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: slice) -> bytes:
        start, stop, _ = index.indices(self.size)
        return self.read(start, max(stop - start, 0))

    def read(self, pos: int, n: int) -> bytes:
        if n > 4 * self.PAGE:  # constant data: read once, not cached
            return self._pread(pos, n)
        first, last = pos // self.PAGE, (pos + n - 1) // self.PAGE
        if first == last:
            off = pos - first * self.PAGE
            return self._page(first)[off : off + n]
        joined = b"".join(self._page(i) for i in range(first, last + 1))
        off = pos - first * self.PAGE
        return joined[off : off + n]

    def _page(self, i: int) -> bytes:
        page = self._pages.get(i)
        if page is None:
            page = self._pages[i] = self._pread(
                i * self.PAGE, min(self.PAGE, self.size - i * self.PAGE)
            )
        return page

    def _pread(self, pos: int, n: int) -> bytes:
        data = os.pread(self.fd, n, pos)
        if len(data) != n:
            raise _Damaged("the file changed while it was read")
        return data


# ---------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """What tfedge reads of one ``.tflite`` file; past any of these it refuses the file.

    Far above any model an edge device runs (the largest converted LLMs hold a few
    thousand tensors), and low enough that a hostile file costs seconds and tens of MB:
    every count is checked before the work it causes, and each table is decoded once.
    """

    file_bytes: int = 16 * 1024**3  # the flatbuffer itself is under 2 GiB; weights may follow
    subgraphs: int = 10_000
    tensors: int = 200_000  # all subgraphs, counted per reference
    operators: int = 200_000  # all subgraphs, counted per reference
    operator_codes: int = 10_000
    buffers: int = 200_000
    tensor_refs: int = 2_000_000  # operator and subgraph inputs/outputs, all subgraphs
    rank: int = 16
    tensor_bytes: int = 16 * 1024**3  # one tensor's size as its shape says
    name_bytes: int = 64 * 1024
    metadata: int = 10_000
    decode_slack: int = 1024**2  # bytes decoded beyond the file's size (see _Flatbuffer)
    densify_bytes: int = 1024**3  # one sparse tensor's dense size, when it is densified


LIMITS = Limits()
INVALID_HINT = (
    "the TFLite runtime would refuse this file, or could crash on it: re-convert the model "
    "with the TFLite converter or `tfedge convert`"
)
SCHEMA_VERSION = 3  # the runtime refuses any other Model.version


class _Invalid(Exception):
    """The file breaks a rule of the TFLite schema or runtime (the message says which)."""


class _Damaged(Exception):
    """An offset or a table that the flatbuffer format itself rules out (truncated, garbage)."""


class _TooBig(Exception):
    """The file asks for more work than :data:`LIMITS` allows."""


@lru_cache(maxsize=1)
def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@lru_cache(maxsize=2)
def _enum_names(enum_name: str) -> dict[int, str]:
    enum = getattr(_schema(), enum_name)
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


# ---------------------------------------------------------------- a bounds-checked reader
class _Table:
    """One flatbuffer table at ``pos``: its fields by number, each read checked."""

    __slots__ = ("fb", "pos", "_vt", "_vt_len", "_obj_len")

    def __init__(self, fb: "_Flatbuffer", pos: int) -> None:
        self.fb, self.pos = fb, pos
        self._vt = pos - fb.i32(pos)
        self._vt_len = fb.u16(self._vt)
        self._obj_len = fb.u16(self._vt + 2)
        if self._vt_len < 4 or self._vt_len % 2 or self._obj_len < 4:
            raise _Damaged(f"a table at byte {pos:,} has a broken vtable")
        fb.check(self._vt, self._vt_len)
        fb.check(pos, self._obj_len)

    def _field(self, n: int) -> int:
        """Absolute position of field ``n``, or 0 when it is absent (its default)."""
        slot = 4 + 2 * n
        if slot + 2 > self._vt_len:
            return 0
        rel = self.fb.u16(self._vt + slot)
        if rel and rel + 1 > self._obj_len:
            raise _Damaged(f"a field of the table at byte {self.pos:,} lies outside it")
        return self.pos + rel if rel else 0

    def scalar(self, n: int, fmt: str, default=0):
        at = self._field(n)
        return self.fb.unpack(fmt, at) if at else default

    def _target(self, n: int) -> int:
        at = self._field(n)
        return at + self.fb.u32(at) if at else 0

    def table(self, n: int) -> "_Table | None":
        at = self._target(n)
        return self.fb.table(at) if at else None

    def vector(self, n: int, item_size: int) -> tuple[int, int]:
        """``(start, length)`` of vector field ``n``; ``(0, 0)`` when absent."""
        at = self._target(n)
        if not at:
            return 0, 0
        length = self.fb.u32(at)
        self.fb.check(at + 4, length * item_size)
        return at + 4, length

    def numbers(self, n: int, dtype: str) -> np.ndarray:
        """Vector field ``n`` as an array (decoded once per position: do not modify it)."""
        start, length = self.vector(n, np.dtype(dtype).itemsize)
        return self.fb.decode(start, length, dtype) if length else np.zeros(0, dtype)

    def vector_length(self, n: int) -> int:
        return self.vector(n, 4)[1]

    def tables(self, n: int) -> list[int]:
        """Positions of the tables in vector field ``n`` (a position may repeat)."""
        start, length = self.vector(n, 4)
        if not length:
            return []
        rel = np.frombuffer(self.fb.read(start, 4 * length), "<u4").astype(np.int64)
        return (rel + start + 4 * np.arange(length, dtype=np.int64)).tolist()

    def string(self, n: int) -> str:
        start, length = self.vector(n, 1)
        if length > LIMITS.name_bytes:
            raise _TooBig(f"a {length:,}-byte name (at most {LIMITS.name_bytes:,})")
        return self.fb.text(start, length) if length else ""


class _Flatbuffer:
    """Checked little-endian reads of ``buf``, and each table decoded once by position."""

    def __init__(self, buf) -> None:
        self.size = len(buf)
        self.read: Callable[[int, int], bytes | memoryview]
        if isinstance(buf, _FileBytes):
            self.read = buf.read
        else:
            view = memoryview(buf).cast("B")
            self.read = lambda pos, n: view[pos : pos + n]
        self._tables: dict[int, _Table] = {}
        self._decoded: dict[tuple, Any] = {}
        # Every vector and string is decoded (and charged) once by position; a valid model's
        # vectors do not overlap, so all of them fit in the file. Shared or overlapping
        # vectors that add up to more are amplification: refused, not decoded.
        self.budget = self.size + LIMITS.decode_slack

    def charge(self, nbytes: int) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            raise _TooBig("its tables share or overlap data that adds up to more than the file")

    def decode(self, start: int, length: int, dtype: str) -> np.ndarray:
        key = (start, length, dtype)
        found = self._decoded.get(key)
        if found is None:
            self.charge(length * np.dtype(dtype).itemsize)
            nbytes = length * np.dtype(dtype).itemsize
            found = np.frombuffer(self.read(start, nbytes), dtype).copy()  # writable, owned
            self._decoded[key] = found
        return found

    def text(self, start: int, length: int) -> str:
        key = (start, length, "str")
        found = self._decoded.get(key)
        if found is None:
            self.charge(length)
            found = bytes(self.read(start, length)).decode("utf-8", "replace")
            self._decoded[key] = found
        return found

    def check(self, pos: int, length: int) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise _Damaged(f"an offset points outside the file (byte {pos:,} + {length:,})")

    def unpack(self, fmt: str, pos: int):
        self.check(pos, struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.read(pos, struct.calcsize(fmt)))[0]

    def u16(self, pos: int) -> int:
        return self.unpack("<H", pos)

    def u32(self, pos: int) -> int:
        return self.unpack("<I", pos)

    def i32(self, pos: int) -> int:
        return self.unpack("<i", pos)

    def table(self, pos: int) -> _Table:
        found = self._tables.get(pos)
        if found is None:
            found = self._tables[pos] = _Table(self, pos)
        return found


# ---------------------------------------------------------------- the model, checked
def _check_op(op: Op, where: str) -> None:
    """Rules of single operators the runtime relies on (and crashes without)."""
    for t in op.outputs:
        if t.is_constant:
            raise _Invalid(f"{op.name}{where} writes into constant tensor {t.index} ('{t.name}')")
    if op.name == "RESHAPE" and len(op.inputs) > 1 and op.inputs[1].data is not None:
        shape, source, values = op.inputs[1], op.inputs[0], op.inputs[1].data
        if values.size > LIMITS.rank:
            raise _Invalid(f"RESHAPE{where} to a shape of {values.size:,} dimensions")
        wanted = [int(v) for v in values.reshape(-1)]
        known = math.prod(v for v in wanted if v != -1)
        fits = (
            shape.dtype in ("int32", "int64")
            and all(v >= 0 or v == -1 for v in wanted)
            and wanted.count(-1) <= 1
            and (
                known == math.prod(source.shape)
                if -1 not in wanted
                else known > 0 and math.prod(source.shape) % known == 0
            )
        )
        if not fits:
            raise _Invalid(
                f"RESHAPE{where} of tensor {source.index} ({list(source.shape)}) takes its new "
                f"shape from tensor {shape.index} ('{shape.name}'), which holds {wanted}"
            )


class _Parser:
    """Reads a model's tables through :class:`_Flatbuffer`, checking structure as it goes.

    Field numbers follow ``schema.fbs`` of TFLite (e.g. Tensor: shape 0, type 1, buffer 2,
    name 3, quantization 4, sparsity 6).
    """

    def __init__(self, raw, name: str) -> None:
        self.raw, self.name = raw, name
        self.fb = _Flatbuffer(raw)
        self.counts = {"tensor_refs": 0}
        self._tensor_fields: dict[int, tuple] = {}  # by table position: decode each once
        self._op_fields: dict[int, tuple] = {}
        self._buffers: dict[int, np.ndarray | None] = {}
        self._quant_fields: dict[int, tuple] = {}
        self._sparsity_checked: dict[int, tuple] = {}

    def model(self) -> TfliteModel:
        root = self.fb.table(self.fb.u32(0))
        version = root.scalar(0, "<I")
        if version != SCHEMA_VERSION:
            raise _Damaged(f"schema version {version}; the runtime reads {SCHEMA_VERSION}")
        self.opcodes = self._opcodes(root)
        self.buffer_pos = self._tables(root, 4, "buffers")
        subgraphs = self._tables(root, 2, "subgraphs")
        if not subgraphs:
            raise ModelLoadError(f"{self.name} has no subgraphs", "re-convert the model")
        for vec, what in ((0, "tensors"), (3, "operators")):  # all counted before any is read
            self._count(sum(self.fb.table(p).vector_length(vec) for p in subgraphs), what)
        graphs = [self._subgraph(i, self.fb.table(pos)) for i, pos in enumerate(subgraphs)]
        tensors, inputs, outputs, _ = graphs[0]
        output_ids = {id(o) for o in outputs}
        for t in inputs:
            if id(t) in output_ids:
                raise _Invalid(
                    f"tensor {t.index} ('{t.name}') is the model's input and its own output"
                )
        ops: list[Op] = []
        for _, _, _, sub_ops in graphs:
            for op in sub_ops:
                op.index = len(ops)
                ops.append(op)
        return TfliteModel(
            path=self.name,
            size_bytes=self.fb.size,
            tensors=tensors,
            ops=ops,
            inputs=inputs,
            outputs=outputs,
            metadata=self._metadata(root),
            subgraphs=len(subgraphs),
        )

    def _count(self, count: int, what: str, counter: str | None = None) -> None:
        """_TooBig when ``count`` (added to ``counter``) passes the limit of ``what``."""
        limit = getattr(LIMITS, counter or what)
        total = count
        if counter:
            total = self.counts[counter] = self.counts[counter] + count
        if total > limit:
            raise _TooBig(f"more than {limit:,} {what.replace('_', ' ')}")

    def _tables(self, t: _Table, n: int, what: str, counter: str | None = None) -> list[int]:
        """Positions of vector field ``n`` of ``t``, counted before they are read."""
        self._count(t.vector_length(n), what, counter)
        return t.tables(n)

    def _opcodes(self, root: _Table) -> list[tuple[str, int]]:
        out = []
        for pos in self._tables(root, 1, "operator_codes"):
            code = self.fb.table(pos)
            custom = code.string(1)
            if custom:
                out.append(("CUSTOM:" + custom, code.scalar(2, "<i", 1)))
                continue
            builtin = max(code.scalar(3, "<i"), code.scalar(0, "<b"))
            out.append(
                (
                    _enum_names("BuiltinOperator").get(builtin, f"OP_{builtin}"),
                    code.scalar(2, "<i", 1),
                )
            )
        return out

    def _subgraph(self, number: int, g: _Table):
        where = "" if number == 0 else f" of subgraph {number}"
        tensors = [self._tensor(i, pos, where) for i, pos in enumerate(g.tables(0))]

        def pick(indices: np.ndarray, what: str, optional: bool = False) -> list[Tensor]:
            self._count(len(indices), "tensor_refs", "tensor_refs")
            out = []
            for i in indices.tolist():
                if optional and i == -1:
                    continue
                if not 0 <= i < len(tensors):
                    raise _Invalid(f"{what}{where} names tensor {i}; there are {len(tensors)}")
                out.append(tensors[i])
            return out

        ops = []
        for pos in g.tables(3):
            opcode, inputs, outputs, options_at = self._op_fields_at(pos)
            if not opcode < len(self.opcodes):
                raise _Invalid(
                    f"an operator{where} uses opcode {opcode}; there are {len(self.opcodes)}"
                )
            name, version = self.opcodes[opcode]
            ops.append(
                Op(
                    index=0,
                    name=name,
                    version=version,
                    inputs=pick(inputs, f"{name}'s input", optional=True),
                    outputs=pick(outputs, f"{name}'s output"),
                    options=self._options(name, *options_at),
                )
            )
        for op in ops:
            _check_op(op, where)
        inputs = pick(g.numbers(1, "<i4"), "the input")
        outputs = pick(g.numbers(2, "<i4"), "the output")
        return tensors, inputs, outputs, ops

    def _op_fields_at(self, pos: int):
        found = self._op_fields.get(pos)
        if found is None:
            op = self.fb.table(pos)
            options = (op.scalar(3, "<B"), op.table(4))
            found = (op.scalar(0, "<I"), op.numbers(1, "<i4"), op.numbers(2, "<i4"), options)
            self._op_fields[pos] = found
        return found

    def _options(self, op_name: str, kind: int, table: _Table | None) -> dict[str, int]:
        """The builtin options of ``op_name`` that tfedge reads (_OPTION_FIELDS), or {}."""
        wanted = _OPTION_FIELDS.get(op_name)
        if wanted is None or table is None:
            return {}
        options_name, fields = wanted
        if _enum_names("BuiltinOptions").get(kind) != options_name:
            return {}
        return {name: table.scalar(n, fmt, default) for name, (n, fmt, default) in fields.items()}

    def _tensor(self, index: int, pos: int, where: str) -> Tensor:
        fields = self._tensor_fields.get(pos)
        if fields is None:
            fields = self._tensor_fields[pos] = self._decode_tensor(
                index, self.fb.table(pos), where
            )
        name, dtype, shape, scale, zero_point, qdim, data, sparsity = fields
        return Tensor(index, name, dtype, shape, scale, zero_point, qdim, data, sparsity)

    def _decode_tensor(self, index: int, t: _Table, where: str) -> tuple:
        name = t.string(3)
        what = f"tensor {index} ('{name}'){where}"
        type_code = t.scalar(1, "<b")
        dtype = _enum_names("TensorType").get(type_code, "").lower()
        if not dtype:
            raise _Invalid(f"{what} has unknown type {type_code}")
        dims = t.numbers(0, "<i4")
        if len(dims) > LIMITS.rank:
            raise _Invalid(f"{what} has rank {len(dims)} (at most {LIMITS.rank})")
        shape = tuple(int(d) for d in dims)
        if any(d < 0 for d in shape):
            raise _Invalid(f"{what} has a negative dimension in its shape {list(shape)}")
        elements = math.prod(shape)
        itemsize = np.dtype(_NUMPY_TYPES[dtype]).itemsize if dtype in _NUMPY_TYPES else 1
        if elements * itemsize > LIMITS.tensor_bytes:
            raise _Invalid(f"{what} has shape {list(shape)}: {elements:,} elements, an absurd size")
        scale, zero_point, qdim = self._quantization(t.table(4), shape, what)
        buffer = t.scalar(2, "<I")
        if buffer >= len(self.buffer_pos):
            raise _Invalid(f"{what} uses buffer {buffer}; there are {len(self.buffer_pos)}")
        data = self._buffer(buffer) if buffer else None
        sparse_table, sparsity = t.table(6), None
        if sparse_table is not None:
            if data is None or dtype not in _NUMPY_TYPES or data.size % itemsize:
                raise _Invalid(f"{what} is marked sparse but holds no {dtype} values")
            data = data.view(_NUMPY_TYPES[dtype])
            sparsity = self._sparsity(sparse_table, shape, data.size, what)
        elif data is not None and dtype in _NUMPY_TYPES:
            if data.size != elements * itemsize:
                raise _Invalid(
                    f"{what} has shape {list(shape)} ({elements * itemsize:,} bytes of "
                    f"{dtype}) but its buffer {buffer} holds {data.size:,} bytes"
                )
            data = data.view(_NUMPY_TYPES[dtype]).reshape(shape)
        return name, dtype, shape, scale, zero_point, qdim, data, sparsity

    def _sparsity(self, table: _Table, shape: tuple[int, ...], values: int, what: str):
        """Checked once per table; a table shared by tensors of other shapes (never written by
        the converter) is checked again for each, its index arrays charged to the budget."""
        found = self._sparsity_checked.get(table.pos)
        if found is not None:
            if found[0] == (shape, values):
                return found[1]
            self.fb.charge(_index_bytes(found[1]))
        sparsity = _SparsityReader(table, shape, values, what).read()
        self._sparsity_checked[table.pos] = ((shape, values), sparsity)
        return sparsity

    def _quantization(self, q: _Table | None, shape: tuple[int, ...], what: str):
        if q is None:
            return [], [], 0
        found = self._quant_fields.get(q.pos)
        if found is None:  # decoded and its scales checked once, however many tensors share it
            scales = q.numbers(2, "<f4")
            bad = scales[~(np.isfinite(scales) & (scales > 0))]
            if bad.size:
                raise _Invalid(
                    f"{what} has quantization scale {float(bad[0]):g}; scales must be positive"
                )
            found = (scales.tolist(), q.numbers(3, "<i8").tolist(), q.scalar(6, "<i"))
            self._quant_fields[q.pos] = found
        scale, zero_point, qdim = found
        if not scale:
            return [], zero_point, qdim
        if qdim < 0 or (shape and qdim >= len(shape)):
            raise _Invalid(f"{what} is quantized along dimension {qdim} of shape {list(shape)}")
        if len(scale) > 1 and (not shape or len(scale) != shape[qdim]):
            size = shape[qdim] if shape else 1
            raise _Invalid(f"{what} has {len(scale)} scales for dimension {qdim} of size {size}")
        if zero_point and len(zero_point) != len(scale):
            raise _Invalid(f"{what} has {len(scale)} scales but {len(zero_point)} zero points")
        return scale, zero_point, qdim

    def _buffer(self, index: int) -> np.ndarray | None:
        """The bytes of buffer ``index`` (a copy: the file may be mapped), or None if empty."""
        if index in self._buffers:
            return self._buffers[index]
        b = self.fb.table(int(self.buffer_pos[index]))
        offset, size = b.scalar(1, "<Q"), b.scalar(2, "<Q")
        data = None
        if offset > 1:
            if offset + size > self.fb.size:
                raise _Invalid(f"buffer {index} ends past the end of the file")
            data = self.fb.decode(offset, size, "u1")
        else:
            start, length = b.vector(0, 1)
            if length:
                data = self.fb.decode(start, length, "u1")
        self._buffers[index] = data
        return data

    def _metadata(self, root: _Table) -> dict[str, bytes]:
        out = {}
        for pos in self._tables(root, 6, "metadata"):
            m = self.fb.table(pos)
            name = m.string(0)
            index = m.scalar(1, "<I")
            if index >= len(self.buffer_pos):
                raise _Invalid(
                    f"metadata '{name}' uses buffer {index}; there are {len(self.buffer_pos)}"
                )
            data = self._buffer(index)
            out[name] = b"" if data is None else data.tobytes()
        return out


# Builtin options tfedge reads, by op: (options table, {name: (field, format, default)}),
# field numbers from schema.fbs.
_CONV_FIELDS = {"padding": (0, "<b", 0), "stride_w": (1, "<i", 0), "stride_h": (2, "<i", 0)}
_OPTION_FIELDS: dict[str, tuple[str, dict[str, tuple[int, str, int]]]] = {
    "CONV_2D": (
        "Conv2DOptions",
        {**_CONV_FIELDS, "dilation_w": (4, "<i", 1), "dilation_h": (5, "<i", 1)},
    ),
    "DEPTHWISE_CONV_2D": (
        "DepthwiseConv2DOptions",
        {
            **_CONV_FIELDS,
            "depth_multiplier": (3, "<i", 0),
            "dilation_w": (5, "<i", 1),
            "dilation_h": (6, "<i", 1),
        },
    ),
    "MEAN": ("ReducerOptions", {"keep_dims": (0, "<B", 0)}),
}
_INDEX_VECTORS = {1: "<i4", 2: "<u2", 3: "u1"}  # SparseIndexVector: Int32/Uint16/Uint8Vector
_INDEX_NAMES = {"<i4": "int32", "<u2": "uint16", "u1": "uint8"}


def _index_bytes(sparsity: Sparsity) -> int:
    return sum(
        d.segments.nbytes + d.indices.nbytes
        for d in sparsity.dims
        if d.segments is not None and d.indices is not None
    )


class _SparsityReader:
    """A tensor's SparsityParameters, checked as the runtime's DENSIFY would need them.

    The traversal order must be a permutation of the tensor's dimensions and block
    dimensions; a dense dimension's size must be the one it stores; a CSR dimension's segments
    must start at 0, never decrease and end at its index count, one segment per position of
    the dimensions before it, and its indices must lie inside the dimension. The positions
    the last dimension reaches must be the values the buffer holds. (A runtime densifying
    an index out of range writes outside the tensor.)
    """

    def __init__(self, table: _Table, shape: tuple[int, ...], values: int, what: str) -> None:
        self.t, self.shape, self.values, self.what = table, shape, values, what

    def read(self) -> Sparsity:
        rank = len(self.shape)
        order = tuple(int(v) for v in self.t.numbers(0, "<i4")[: 2 * LIMITS.rank + 1])
        block_map = tuple(int(v) for v in self.t.numbers(1, "<i4")[: LIMITS.rank + 1])
        levels = rank + len(block_map)
        if sorted(order) != list(range(levels)):
            self._fail(f"traversal order {list(order)} for {levels} dimensions")
        if len(set(block_map)) != len(block_map) or any(not 0 <= d < rank for d in block_map):
            self._fail(f"block map {list(block_map)} for rank {rank}")
        positions = self.t.tables(2)
        if len(positions) != levels:
            self._fail(f"{len(positions)} dimension metadata for {levels} dimensions")
        dims = tuple(self._dim(self.t.fb.table(pos)) for pos in positions)
        sizes = self._expanded_sizes(order, block_map, dims)
        count = 1
        for level, meta in zip(order, dims):
            count = self._level(meta, sizes[level], count, level)
        if count != self.values:
            self._fail(f"an encoding of {count:,} values; its buffer holds {self.values:,}")
        return Sparsity(order, block_map, dims, self.values)

    def _fail(self, message: str) -> NoReturn:
        raise _Invalid(f"{self.what} is stored sparse with {message}")

    def _dim(self, d: _Table) -> DimMetadata:
        kind = d.scalar(0, "<b")
        if kind == 0:
            return DimMetadata("dense", dense_size=d.scalar(1, "<i"))
        if kind != 1:
            self._fail(f"unknown dimension format {kind}")
        arrays = []
        for type_field, table_field in ((2, 3), (4, 5)):
            fmt = _INDEX_VECTORS.get(d.scalar(type_field, "<B"))
            vector = d.table(table_field)
            if fmt is None or vector is None:
                raise _Invalid(
                    f"{self.what} is stored sparse with a CSR dimension without its "
                    "segments or indices"
                )
            arrays.append((vector.numbers(0, fmt), fmt))
        (segments, _), (indices, fmt) = arrays
        return DimMetadata("sparse_csr", 0, segments, indices, _INDEX_NAMES[fmt])

    def _expanded_sizes(self, order, block_map, dims) -> list[int]:
        """Size of each dimension as stored: a blocked dimension counts its blocks."""
        sizes = list(self.shape)
        for j, d in enumerate(block_map):
            block = dims[order.index(len(self.shape) + j)]
            if block.format != "dense" or block.dense_size <= 0:
                self._fail(f"block dimension {len(self.shape) + j} not dense with a size")
            if self.shape[d] % block.dense_size:
                self._fail(
                    f"blocks of {block.dense_size} over dimension {d} of size {self.shape[d]}"
                )
            sizes[d] //= block.dense_size
            sizes.append(block.dense_size)
        return sizes

    def _level(self, meta: DimMetadata, size: int, count: int, level: int) -> int:
        """Positions after storing dimension ``level`` (``count`` before it)."""
        if meta.format == "dense":
            if meta.dense_size != size:
                self._fail(f"dense dimension {level} of size {meta.dense_size}; it is {size}")
            return count * size
        segments, indices = meta.segments, meta.indices
        assert segments is not None and indices is not None
        if len(segments) != count + 1:
            self._fail(f"{len(segments):,} segments in dimension {level}; it needs {count + 1:,}")
        steps = np.diff(segments.astype(np.int64))
        if int(segments[0]) != 0 or (steps < 0).any() or int(segments[-1]) != len(indices):
            self._fail(
                f"segments of dimension {level} that do not run from 0 to its "
                f"{len(indices):,} indices"
            )
        if len(indices) and not (0 <= int(indices.min()) and int(indices.max()) < size):
            self._fail(f"an index out of range in dimension {level} of size {size}")
        return len(indices)
