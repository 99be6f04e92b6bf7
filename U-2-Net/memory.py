"""Keeping a worker's memory flat (glibc malloc): fewer arenas, and freed memory handed back.

Why: with 8 request threads glibc creates up to 8 x cores malloc arenas, each keeping freed
image-sized buffers, so RSS creeps up over thousands of requests. And memory freed after loading
(the PyTorch copy of the weights, the export) stays in the heap unless trimmed. Both calls are
no-ops where glibc is absent.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def limit_malloc_arenas(count: int = 2) -> None:
    """At most `count` malloc arenas for the threads created from now on."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, count)


def release_free_memory() -> None:
    """Hand memory that is free inside the heap back to the operating system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
