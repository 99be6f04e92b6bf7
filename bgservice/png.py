"""A lossless PNG encoder (gray, RGB, RGBA) that compresses on every core.

Why hand-written: every PNG encoder on PyPI is single-threaded, and encoding is the largest cost
outside the network (DESIGN.md section 3). Measured on the 2-core development machine for a
photographic RGBA image, against OpenCV at zlib level 1:

    size          OpenCV level 1       this encoder (Up filter, zlib-ng level 2, 2 threads)
    1920x1080     126 ms, 3.15 MB      32 ms, 3.08 MB
    4000x3000     656 ms, 13.7 MB      143 ms, 13.2 MB

How: the PNG "Up" filter is one vectorised subtraction (libpng's adaptive filter choice costs more
than it saves here). The filtered rows are cut into strips and deflated concurrently (zlib-ng
releases the GIL). Each strip ends with a sync flush (byte-aligned and non-final) and the last
with a finish, so the concatenation is one valid deflate stream, as pigz does. The cost is a
fresh dictionary at each strip boundary (a few hundred bytes). The output is a standard
8-bit RGBA PNG; the tests decode it and compare it with the input array.
"""
from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from zlib_ng import zlib_ng

LEVEL = 2  # zlib-ng level 2: files as small as zlib level 1 at ~4x the speed (level 1 is +40 %)
_STRIP_BYTES = 1 << 20  # below ~1 MB per strip, thread hand-off costs more than it saves
_WORKERS = os.cpu_count() or 1
_pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="png")
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _filter_up(pixels: np.ndarray) -> np.ndarray:
    """Rows of filter type 2 (Up): each byte minus the byte above it, modulo 256."""
    h = pixels.shape[0]
    rows = pixels.reshape(h, -1)
    out = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = 2
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
    return out


def _deflate(data: np.ndarray, last: bool, level: int) -> bytes:
    compressor = zlib_ng.compressobj(level, zlib.DEFLATED, -15)  # raw deflate, no header
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: gray, RGB, RGBA


def encode_png(pixels: np.ndarray, level: int = LEVEL) -> bytes:
    """H x W (gray), H x W x 3 (RGB) or H x W x 4 (RGBA) uint8 -> PNG bytes (lossless)."""
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.dtype != np.uint8 or channels not in _COLOR_TYPES or pixels.ndim not in (2, 3):
        raise ValueError(f"expected an H x W [x 1|3|4] uint8 array, got {pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    filtered = _filter_up(np.ascontiguousarray(pixels))
    strips = int(min(2 * _WORKERS, max(1, filtered.nbytes // _STRIP_BYTES), height))
    bounds = np.linspace(0, height, strips + 1).astype(int)
    parts = [filtered[bounds[i]:bounds[i + 1]] for i in range(strips)]
    if strips == 1:
        deflated = [_deflate(parts[0], True, level)]
    else:
        deflated = list(_pool.map(_deflate, parts, [i == strips - 1 for i in range(strips)],
                                  [level] * strips))
    zlib_stream = (b"\x78\x01" + b"".join(deflated)
                   + struct.pack(">I", zlib_ng.adler32(filtered)))
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    return (_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib_stream)
            + _chunk(b"IEND", b""))
