"""Request paths inside the shared filesystem root (atomic writes come from u2net.atomic).

The website sends paths like "/Clones/4/clone-image-with-bg.png": relative to the shared root, with
a leading slash that does not mean the host's filesystem root. Nothing outside the root may ever be
read or written, whatever the caller sends: `..`, absolute parts, NUL bytes, backslashes, or a
symlink inside the root that points out of it (checked on the real, resolved path).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from u2net.atomic import atomic_write

from .errors import BadRequest, NotFound

__all__ = ["SharedRoot", "atomic_write"]

log = logging.getLogger(__name__)

_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_PATH_CHARS = 4096


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
