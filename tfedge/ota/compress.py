"""Compressed forms of a published model (the host side of compressed OTA targets).

``ota publish`` adds, next to the full model, a compressed copy as its own TUF target
``compressed/<model sha256>.tflite.xz`` (``lzma``, preset 6: the decoder needs about 9 MB)
or ``.zst`` (``zstd`` level 19, when the ``zstandard`` package is installed on the host).
The full target's signed ``custom["tfedge"]["compressed"]`` names it with its codec and
the length and sha256 of the decompressed model; agents that decode it download it (TUF
checks the compressed bytes) and check the decompressed model against the full target's
signed hash (:mod:`tfedge_device.decompress`).

Example:
    >>> entry, blob = compressed_form(Path("kws_int8.tflite").read_bytes(), "lzma")
    >>> entry["target"], entry["codec"]
    ('compressed/3f2a....tflite.xz', 'lzma')
"""

from __future__ import annotations

import hashlib
import lzma
import os
from collections.abc import Iterator
from typing import Any

from tfedge.errors import UsageError

CODECS = ("lzma", "zstd", "none")
DEFAULT_CODEC = "lzma"
LZMA_PRESET = 6  # decoder memory ~9 MB (8 MiB dictionary); higher presets need up to 65 MB
ZSTD_LEVEL = 19
SUFFIX = {"lzma": ".xz", "zstd": ".zst"}
PREFIX = "compressed/"

READ_SIZE = 1024 * 1024  # bytes of the model read per step when compressing a stream
SAMPLE_SIZE = 64 * 1024  # estimate_ratio: bytes per sample, at 1/5 .. 4/5 of a large model

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "PREFIX",
    "check_codec",
    "compress",
    "compress_file",
    "compressed_form",
    "estimate_ratio",
]


def check_codec(codec: str) -> None:
    """Raise UsageError unless ``codec`` is known and usable on this host."""
    if codec not in CODECS:
        raise UsageError(f"unknown compression {codec!r}", f"choose one of {', '.join(CODECS)}")
    if codec == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError as exc:
            raise UsageError(
                "--compress zstd needs the zstandard package on this host",
                "pip install zstandard, or use --compress lzma (devices need nothing new)",
            ) from exc


def compress(data: bytes, codec: str) -> bytes:
    """``data`` compressed with ``codec`` (``lzma`` preset 6 as .xz, or ``zstd`` level 19)."""
    check_codec(codec)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=LZMA_PRESET)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)
    raise UsageError(f"codec {codec!r} makes no compressed form", "use lzma or zstd")


def compress_file(path: str | os.PathLike, codec: str) -> Iterator[bytes]:
    """The file at ``path`` compressed with ``codec``, as it is made: chunks of a stream that
    decodes like :func:`compress`'s (``zstd`` with the content size in its header), reading
    ``READ_SIZE`` bytes at a time, so a push can send while it compresses."""
    check_codec(codec)
    encoder: Any
    if codec == "lzma":
        encoder = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=LZMA_PRESET)
    elif codec == "zstd":
        import zstandard

        encoder = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compressobj(
            size=os.path.getsize(path)
        )
    else:
        raise UsageError(f"codec {codec!r} makes no compressed form", "use lzma or zstd")
    with open(path, "rb") as source:
        while data := source.read(READ_SIZE):
            if out := encoder.compress(data):
                yield out
    yield encoder.flush()


def estimate_ratio(path: str | os.PathLike, codec: str) -> float:
    """Compressed size / size of the model at ``path`` with ``codec``, estimated from four
    ``SAMPLE_SIZE`` slices inside it (its weights; header and metadata compress better and
    would flatter it); 0.0 for a model of at most four samples (too small to bother)."""
    size = os.path.getsize(path)
    if size <= 4 * SAMPLE_SIZE:
        return 0.0
    packed = 0
    with open(path, "rb") as source:
        for fifth in (1, 2, 3, 4):
            source.seek(size * fifth // 5)
            packed += len(compress(source.read(SAMPLE_SIZE), codec))
    return packed / (4 * SAMPLE_SIZE)


def compressed_form(data: bytes, codec: str) -> tuple[dict, bytes]:
    """The signed metadata entry naming the compressed target of model ``data``, and its bytes."""
    blob = compress(data, codec)
    sha = hashlib.sha256(data).hexdigest()
    entry = {
        "target": f"{PREFIX}{sha}.tflite{SUFFIX[codec]}",
        "codec": codec,
        "length": len(blob),
        "hashes": {"sha256": hashlib.sha256(blob).hexdigest()},
        "decompressed_length": len(data),
        "decompressed_hashes": {"sha256": sha},
    }
    return entry, blob
