"""Atomic file writes, for every file this project writes that someone else reads: cut-outs in the
shared root, trained weights and their training state, cached ONNX exports."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would have given; mkstemp gives 0600


def atomic_write(path: Path, write: Callable[[BinaryIO], None] | bytes) -> None:
    """Write `path` completely or not at all: a temporary file beside it, fsync, then rename.

    A crash at any point leaves either no file or the previous complete file, never a partial one
    (os.replace is atomic within a filesystem; the temporary file is in the same directory).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray, memoryview)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
