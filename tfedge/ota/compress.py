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

from tfedge.errors import UsageError

CODECS = ("lzma", "zstd", "none")
DEFAULT_CODEC = "lzma"
LZMA_PRESET = 6  # decoder memory ~9 MB (8 MiB dictionary); higher presets need up to 65 MB
ZSTD_LEVEL = 19
SUFFIX = {"lzma": ".xz", "zstd": ".zst"}
PREFIX = "compressed/"

__all__ = ["CODECS", "DEFAULT_CODEC", "PREFIX", "check_codec", "compress", "compressed_form"]


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
