"""Request paths inside the shared filesystem root, and atomic writes.

The website sends paths like "/Clones/4/clone-image-with-bg.png": relative to the shared root, with
a leading slash that does not mean the host's filesystem root. Nothing outside the root may ever be
read or written, whatever the caller sends: `..`, absolute parts, NUL bytes, backslashes, or a
symlink inside the root that points out of it (checked on the real, resolved path).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import BadRequest, NotFound

log = logging.getLogger(__name__)

_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_PATH_CHARS = 4096


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would have given; mkstemp gives 0600


class SharedRoot:
    """The shared filesystem root; turns caller paths into real paths that stay inside it."""

    def __init__(self, root: Path):
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise FileNotFoundError(f"shared filesystem root {root} is not a directory")

    def _inside(self, real: Path) -> bool:
        return real != self.root and self.root in real.parents

    def resolve(self, user_path: object, field: str) -> Path:
        """The real path that `user_path` names inside the root; BadRequest if it leaves it."""
        if not isinstance(user_path, str) or not user_path.strip():
            raise BadRequest(f"'{field}' must be a non-empty string")
        if len(user_path) > _MAX_PATH_CHARS:
            raise BadRequest(f"'{field}' is longer than {_MAX_PATH_CHARS} characters")
        if "\x00" in user_path:
            raise BadRequest(f"'{field}' contains a NUL byte")
        if "\\" in user_path:
            raise BadRequest(f"'{field}' must use forward slashes")
        relative = user_path.lstrip("/")
        if _DRIVE.match(relative):
            raise BadRequest(f"'{field}' must be relative to the shared filesystem root")
        parts = relative.split("/")
        if ".." in parts:
            raise BadRequest(f"'{field}' must not contain '..'")
        parts = [p for p in parts if p not in ("", ".")]
        if not parts:
            raise BadRequest(f"'{field}' names no file")
        real = Path(os.path.realpath(self.root.joinpath(*parts)))
        if not self._inside(real):
            raise BadRequest(f"'{field}' leads outside the shared filesystem root")
        return real

    def source(self, user_path: object, field: str = "sourceImagePath") -> Path:
        """An existing regular file inside the root."""
        real = self.resolve(user_path, field)
        if not real.exists():
            raise NotFound(f"source image not found: {user_path}")
        if not real.is_file():
            raise BadRequest(f"'{field}' is not a regular file: {user_path}")
        return real

    def output(self, user_path: object, field: str = "outputImagePath") -> Path:
        """A writable file path inside the root; missing directories (inside the root) are made."""
        real = self.resolve(user_path, field)
        if real.is_dir():
            raise BadRequest(f"'{field}' is a directory: {user_path}")
        parent = real.parent
        try:  # concurrent requests may create the same folder: exist_ok makes that harmless
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise BadRequest(f"'{field}' has a file where a directory should be: {user_path}") from None
        # Re-check after creating directories, in case the tree changed underneath us.
        if not self._inside(Path(os.path.realpath(parent)) / real.name):
            raise BadRequest(f"'{field}' leads outside the shared filesystem root")
        return real


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
