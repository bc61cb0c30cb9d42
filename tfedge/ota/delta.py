"""Per-tensor delta updates, the host side: a small patch from a published model to a new one.

``ota publish --deltas K`` adds, for each of the last K published versions of the model (the
bases), a delta to the new model as its own signed TUF target
``deltas/<new sha256>.from.<base sha256>.tfdelta``, named in the new target's signed
``custom["tfedge"]["deltas"]`` (custom schema 4) with its base's sha256 and length.

How a delta is computed, per tensor buffer (found with the TFLite reader,
:mod:`tfedge.convert.tflite_model`): a constant buffer of the new model is paired with the
buffer of the base at the same index (else with the buffer of the same tensor name) when
the tensors using them have the same dtype, shape and quantization parameters and the
buffers the same length; its bytes are then the arithmetic difference (mod 256) from the
base's buffer: zero where a fine-tune left a weight alone, which compresses to almost
nothing (runs of unchanged bytes become COPY operations). A buffer without such a partner
(another shape or quantization, a new layer) is sent whole. The bytes between buffers (the
flatbuffer's tables) are diffed against the base's bytes that follow the previous buffer
when at most half of them differ, else sent whole.

The wire format (byte-range COPY / ADD / DATA operations after a header holding the base
and new sha256 and lengths, in an xz stream) is described in :mod:`tfedge_device.delta`,
which applies it on the device, streaming, without parsing the flatbuffer. Every delta is
applied here with that same code right after it is computed, and must rebuild the new model
exactly, or nothing is published.

Example:
    >>> entry, blob = delta_form(Path("v1.tflite").read_bytes(), Path("v2.tflite").read_bytes())
    >>> entry["base_sha256"][:12], entry["length"]
    ('3f2a...', 1203)
"""

from __future__ import annotations

import hashlib
import io
import lzma
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfedge.errors import OtaError, UsageError
from tfedge_device import delta as wire

PREFIX = "deltas/"
DEFAULT_COUNT, MAX_COUNT = 2, 5  # --deltas: how many previous versions get a delta
LZMA_PRESET = 6  # the device's decoder needs about 9 MB
MIN_COPY = 32  # runs of unchanged bytes at least this long become COPY, not ADD zeros
DIFF_GAP_MAX_CHANGED = 0.5  # a gap is diffed when at most this share of its bytes differ

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "PREFIX",
    "Region",
    "buffer_regions",
    "check_count",
    "compute_delta",
    "delta_form",
    "delta_target_path",
    "deltas_to",
    "encode",
    "plan",
    "previous_bases",
]


@dataclass(frozen=True)
class Region:
    """A constant buffer's bytes in a file, with what its tensors need to diff it."""

    index: int  # buffer number in the model
    start: int
    length: int
    key: tuple  # dtype, shape, quantization of every tensor using it
    name: str  # the first tensor's name using it


def delta_target_path(new_sha256: str, base_sha256: str) -> str:
    return f"{PREFIX}{new_sha256}.from.{base_sha256}.tfdelta"


def delta_form(base: bytes, new: bytes) -> tuple[dict, bytes]:
    """The signed metadata entry naming the delta from ``base`` to ``new``, and its bytes.

    Raises:
        ModelLoadError: either is not a TFLite model.  OtaError: the delta does not rebuild
            ``new`` (a bug; nothing is published then).
    """
    blob = compute_delta(base, new)
    base_sha, new_sha = hashlib.sha256(base).hexdigest(), hashlib.sha256(new).hexdigest()
    entry = {
        "target": delta_target_path(new_sha, base_sha),
        "format": wire.FORMAT,
        "codec": "lzma",
        "length": len(blob),
        "hashes": {"sha256": hashlib.sha256(blob).hexdigest()},
        "base_sha256": base_sha,
        "base_length": len(base),
    }
    return entry, blob


def compute_delta(base: bytes, new: bytes) -> bytes:
    """The delta from ``base`` to ``new``, checked by applying it with the device's code."""
    blob = encode(base, new, plan(base, new))
    rebuilt = io.BytesIO()
    new_sha = hashlib.sha256(new).hexdigest()
    try:
        wire.apply_delta(
            io.BytesIO(blob),
            io.BytesIO(base),
            rebuilt,
            hashlib.sha256(base).hexdigest(),
            new_sha,
            len(new),
        )
    except wire.DeltaError as exc:
        raise OtaError(f"the delta does not rebuild the model: {exc}", "report this bug") from exc
    if rebuilt.getvalue() != new:
        raise OtaError("the delta does not rebuild the model byte for byte", "report this bug")
    return blob


# ---------------------------------------------------------------- finding the buffers
def buffer_regions(raw: bytes, name: str = "<model>") -> list[Region]:
    """Every non-empty constant buffer of the TFLite model ``raw``, by file offset.

    Raises:
        ModelLoadError: ``raw`` is not a valid TFLite model.
    """
    from tfedge.convert.tflite_model import _Parser, parse_tflite

    parse_tflite(raw, name)  # checks the whole structure first (clean errors)
    parser = _Parser(raw, name)
    parser.model()
    fb = parser.fb
    root = fb.table(fb.u32(0))
    keys: dict[int, list] = {}
    names: dict[int, str] = {}
    for graph_pos in root.tables(2):
        for tensor_pos in fb.table(graph_pos).tables(0):
            buffer = fb.table(tensor_pos).scalar(2, "<I")
            if not buffer:
                continue
            tname, dtype, shape, scale, zero_point, qdim, _, sparsity = parser._tensor_fields[
                tensor_pos
            ]
            keys.setdefault(buffer, []).append(
                (dtype, shape, tuple(scale), tuple(zero_point), qdim, sparsity is None)
            )
            names.setdefault(buffer, tname)
    regions = []
    for index, pos in enumerate(parser.buffer_pos):
        table = fb.table(int(pos))
        offset, size = table.scalar(1, "<Q"), table.scalar(2, "<Q")
        start, length = (offset, size) if offset > 1 else table.vector(0, 1)
        if length and index in keys:
            regions.append(
                Region(index, start, length, tuple(sorted(keys[index])), names.get(index, ""))
            )
    return sorted(regions, key=lambda r: r.start)


def _pairs(base: bytes, new: bytes) -> list[tuple[Region, Region | None]]:
    """Every buffer of ``new`` with the base buffer to diff it against (same buffer index,
    else the same tensor name; same tensors' dtype, shape and quantization, same length),
    or None: then it is sent whole."""
    old = buffer_regions(base, "the base model")
    by_index = {r.index: r for r in old}
    by_name = {r.name: r for r in old if r.name}
    out: list[tuple[Region, Region | None]] = []
    for region in buffer_regions(new, "the new model"):
        partner = None
        for candidate in (by_index.get(region.index), by_name.get(region.name)):
            if (
                candidate is not None
                and candidate.key == region.key
                and candidate.length == region.length
            ):
                partner = candidate
                break
        out.append((region, partner))
    return out


# ---------------------------------------------------------------- operations
# An operation: (COPY, base offset, length) | (ADD, base offset, length, new offset)
#               | (DATA, new offset, length): the bytes are taken from the files when encoded.
def plan(base: bytes, new: bytes) -> list[tuple]:
    """The operations that write ``new`` from ``base``, in order."""
    ops: list[tuple] = []
    cursor = base_cursor = 0
    for region, partner in _pairs(base, new):
        if region.start < cursor:  # overlapping buffers: the earlier one covered it
            continue
        ops += _gap(base, new, cursor, region.start, base_cursor)
        if partner is None:  # another shape, dtype or quantization: the whole buffer
            ops.append((wire.DATA, region.start, region.length))
            base_cursor += region.start - cursor + region.length  # the same layout, assumed
        else:
            ops += _diffed(base, new, partner.start, region.start, region.length)
            base_cursor = partner.start + partner.length
        cursor = region.start + region.length
    ops += _gap(base, new, cursor, len(new), base_cursor)
    return ops


def _gap(base: bytes, new: bytes, start: int, end: int, base_start: int) -> list[tuple]:
    """Bytes between buffers (the flatbuffer's tables), diffed against the base's bytes
    that follow the previous buffer where they mostly match, else sent whole."""
    length = end - start
    if length <= 0:
        return []
    if base_start + length <= len(base):
        old = np.frombuffer(base, np.uint8, length, base_start)
        changed = np.count_nonzero(old != np.frombuffer(new, np.uint8, length, start))
        if changed <= DIFF_GAP_MAX_CHANGED * length:
            return _diffed(base, new, base_start, start, length)
    return [(wire.DATA, start, length)]


def _diffed(base: bytes, new: bytes, base_start: int, start: int, length: int) -> list[tuple]:
    """ADD of the difference, with COPY for runs of at least MIN_COPY unchanged bytes."""
    old = np.frombuffer(base, np.uint8, length, base_start)
    same = old == np.frombuffer(new, np.uint8, length, start)
    edges = np.flatnonzero(np.diff(np.concatenate(([False], same, [False])).astype(np.int8)))
    runs = [
        (int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= MIN_COPY
    ]  # [a, b) unchanged
    ops: list[tuple] = []
    at = 0
    for a, b in runs:
        if a > at:
            ops.append((wire.ADD, base_start + at, a - at, start + at))
        ops.append((wire.COPY, base_start + a, b - a))
        at = b
    if at < length:
        ops.append((wire.ADD, base_start + at, length - at, start + at))
    return ops


def encode(base: bytes, new: bytes, ops: list[tuple], claim: bytes | None = None) -> bytes:
    """The xz-compressed delta: header, ``ops`` with their bytes, END.

    ``claim`` (tests only) puts another model's sha256 and length in the header, to make a
    delta that rebuilds bytes other than the ones it names.
    """
    named = new if claim is None else claim
    packer = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=LZMA_PRESET)
    parts = [
        packer.compress(
            wire.HEADER.pack(
                wire.MAGIC,
                hashlib.sha256(base).digest(),
                hashlib.sha256(named).digest(),
                len(base),
                len(named),
            )
        )
    ]
    for op in ops:
        kind = op[0]
        if kind == wire.COPY:
            record = bytes([kind]) + wire.RANGE.pack(op[1], op[2])
        elif kind == wire.ADD:
            _, offset, length, at = op
            diff = np.frombuffer(new, np.uint8, length, at) - np.frombuffer(
                base, np.uint8, length, offset
            )
            record = bytes([kind]) + wire.RANGE.pack(offset, length) + diff.tobytes()
        else:
            _, at, length = op
            record = bytes([kind]) + wire.LENGTH.pack(length) + new[at : at + length]
        parts.append(packer.compress(record))
    parts.append(packer.compress(bytes([wire.END])))
    parts.append(packer.flush())
    return b"".join(parts)


# ---------------------------------------------------------------- publishing
def check_count(count: int) -> None:
    """Raise UsageError unless ``count`` (how many previous versions get a delta) is allowed."""
    if not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
        raise UsageError(
            f"--deltas {count!r}: at most {MAX_COUNT} previous versions get a delta",
            f"give 0 (no deltas) to {MAX_COUNT}; each delta is a target in targets.json",
        )


def previous_bases(targets: dict, paths: list[str], served: Path, count: int) -> list[bytes]:
    """The bytes of the last ``count`` published versions of the model at ``paths`` (its
    own target path first): each target's model, then the bases its signed ``deltas``
    name, newest first. Versions whose file is no longer served are skipped."""
    shas: list = []
    for path in paths:
        target = targets.get(path)
        if target is None:
            continue
        meta = (target.custom or {}).get("tfedge") or {}
        shas.append(target.hashes["sha256"])
        shas += [e.get("base_sha256") for e in meta.get("deltas") or [] if isinstance(e, dict)]
    out: list[bytes] = []
    for sha in dict.fromkeys(s for s in shas if isinstance(s, str)):
        if len(out) >= count:
            break
        data = _served_model(served, sha)
        if data is not None:
            out.append(data)
    return out


def _served_model(served: Path, sha: str) -> bytes | None:
    for path in sorted(served.glob(f"**/{sha}.*.tflite")):
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha:
            return data
    return None


def deltas_to(new: bytes, bases: list[bytes], smaller_than: int) -> list[tuple[dict, bytes]]:
    """``(entry, bytes)`` of a delta from each of ``bases`` (other than ``new``) to ``new``,
    leaving out those of ``smaller_than`` bytes or more (the compressed model is as good)."""
    made = [delta_form(base, new) for base in bases if base != new]
    return [(entry, blob) for entry, blob in made if len(blob) < smaller_than]
