"""Streaming decompression of a downloaded model in bounded memory (the device side).

The agent downloads a compressed form of a model (``lzma`` always; ``zstd`` when the
``zstandard`` package imports) and decompresses it here, reading and writing fixed-size
chunks: memory stays near the decoder's own (about 9 MB for xz preset 6) whatever the
model's size. The output is capped at the length the signed metadata gives, so a hostile
stream cannot fill the disk; the caller then checks the signed sha256 of the result.

Example:
    >>> with open("m.tflite.xz", "rb") as src, open("m.tflite", "wb") as dst:
    ...     decompress_stream(src, dst, "lzma", max_length=97_088)
    97088
"""

from __future__ import annotations

import lzma
from typing import BinaryIO

CHUNK = 64 * 1024  # bytes read from the compressed file and written out per step
LZMA_MEMLIMIT = 64 * 1024 * 1024  # refuse xz streams needing more (preset 9 needs ~65 MB)
ZSTD_MAX_WINDOW = 1 << 24  # 16 MiB: zstd -19 uses at most 8 MiB

__all__ = ["CHUNK", "DecompressError", "available_codecs", "decompress_stream"]


class DecompressError(Exception):
    """The compressed stream is bad, truncated, too large, or its codec is unknown here."""


def available_codecs() -> tuple[str, ...]:
    """The codecs this device decodes: ``lzma`` (standard library), ``zstd`` if installed."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return ("lzma",)
    return ("lzma", "zstd")


def decompress_stream(src: BinaryIO, dst: BinaryIO, codec: str, max_length: int) -> int:
    """Decompress ``src`` into ``dst`` chunk by chunk; return the number of bytes written.

    Raises:
        DecompressError: unknown codec, corrupt or truncated stream, data after the end of
            the stream, or more than ``max_length`` bytes of output.
    """
    if codec not in available_codecs():
        raise DecompressError(f"codec {codec!r} is not available on this device")
    try:
        if codec == "lzma":
            return _lzma(src, dst, max_length)
        return _zstd(src, dst, max_length)
    except lzma.LZMAError as exc:
        raise DecompressError(f"bad {codec} stream: {exc}") from exc


def _lzma(src: BinaryIO, dst: BinaryIO, max_length: int) -> int:
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT)
    written = 0
    while not decoder.eof:
        data = b""
        if decoder.needs_input:
            data = src.read(CHUNK)
            if not data:
                raise DecompressError("the lzma stream is truncated")
        out = decoder.decompress(data, max_length=CHUNK)
        written = _write(dst, out, written, max_length)
    if decoder.unused_data or src.read(1):
        raise DecompressError("data after the end of the lzma stream")
    return written


def _zstd(src: BinaryIO, dst: BinaryIO, max_length: int) -> int:
    import zstandard

    decoder = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    written = 0
    try:
        size = zstandard.frame_content_size(src.read(18))  # -1: not in the header
        src.seek(0)
        with decoder.stream_reader(
            src, read_size=CHUNK, read_across_frames=False, closefd=False
        ) as reader:
            while out := reader.read(CHUNK):
                written = _write(dst, out, written, max_length)
    except zstandard.ZstdError as exc:
        raise DecompressError(f"bad zstd stream: {exc}") from exc
    if size >= 0 and written != size:
        raise DecompressError("the zstd stream is truncated")
    if src.read(1):
        raise DecompressError("data after the end of the zstd stream")
    return written


def _write(dst: BinaryIO, out: bytes, written: int, max_length: int) -> int:
    written += len(out)
    if written > max_length:
        raise DecompressError(f"the stream decompresses to more than {max_length} bytes")
    dst.write(out)
    return written
