"""Request paths inside the shared filesystem root, read and written without races.

The website sends paths like "/Clones/4/clone-image-with-bg.png": relative to the shared root, with
a leading slash that does not mean the host's filesystem root. Nothing outside the root may ever be
read or written, whatever the caller sends, and whatever anyone with write access to the shared
folder does meanwhile.

Checking a resolved path string and then using it is not enough: between the check and the write
(hundreds of milliseconds of inference) a folder can be swapped for a symlink to anywhere (the
audit wrote 45 of 45 cut-outs outside the root that way). So every file operation goes through
directory handles opened from the root's handle one component at a time with O_NOFOLLOW: reading
the source, creating the output's folders, the temporary file and the rename. A symlink anywhere in
a request path is refused, not followed; what was opened is checked (a regular file) on its handle.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from u2net.atomic import TEMP_PREFIX, atomic_write, atomic_write_at

from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    TooLarge,
)

__all__ = ["RequestPath", "SharedRoot", "SourceFile", "atomic_write"]

_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_PATH_CHARS = 4096
_NAME_MAX = 255  # bytes per path component on every common Linux filesystem
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone left in the root must not hang the request thread.
_OPEN_SOURCE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class RequestPath:
    """A caller's path, checked lexically: `parts` are the components below the root."""

    field: str  # the request field it came from, for messages
    text: str  # as sent (shortened), for messages
    parts: tuple[str, ...]

    @property
    def folders(self) -> tuple[str, ...]:
        return self.parts[:-1]

    @property
    def name(self) -> str:
        return self.parts[-1]


@dataclass(frozen=True)
class SourceFile:
    data: bytes
    identity: tuple[int, int]  # (st_dev, st_ino): the output must not replace this file


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _check_name_lengths(parts: list[str], field: str) -> None:
    for part in parts:
        if len(part.encode("utf-8")) > _NAME_MAX:
            raise BadRequest(f"'{field}' has a name longer than {_NAME_MAX} bytes, which the "
                             f"filesystem cannot store: {_shown(part)!r}")


def _shown(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."


class SharedRoot:
    """The shared filesystem root, held open as a directory handle for the process's life."""

    def __init__(self, root: Path):
        self.root = Path(os.path.realpath(root))
        try:
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise FileNotFoundError(f"shared filesystem root {root} is not a directory "
                                    f"({exc.strerror})") from None

    # -- lexical checks ------------------------------------------------------------------------

    def parse(self, user_path: object, field: str) -> RequestPath:
        """A caller's path as components below the root; BadRequest if it cannot name a file
        inside it. Nothing on disk is looked at."""
        if not isinstance(user_path, str) or not user_path.strip():
            raise BadRequest(f"'{field}' must be a non-empty string")
        if len(user_path) > _MAX_PATH_CHARS:
            raise BadRequest(f"'{field}' is longer than {_MAX_PATH_CHARS} characters")
        if "\x00" in user_path:
            raise BadRequest(f"'{field}' contains a NUL byte")
        if "\\" in user_path:
            raise BadRequest(f"'{field}' must use forward slashes")
        try:
            user_path.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from JSON's \ud800: no file can have it
            raise BadRequest(f"'{field}' is not valid Unicode text") from None
        relative = user_path.lstrip("/")
        if _DRIVE.match(relative):
            raise BadRequest(f"'{field}' must be relative to the shared filesystem root")
        parts = relative.split("/")
        if ".." in parts:
            raise BadRequest(f"'{field}' must not contain '..'")
        parts = [p for p in parts if p not in ("", ".")]
        if not parts:
            raise BadRequest(f"'{field}' names no file")
        _check_name_lengths(parts, field)
        return RequestPath(field, _shown(user_path), tuple(parts))

    # -- handles -------------------------------------------------------------------------------

    def _os_error(self, exc: OSError, path: RequestPath, what: str) -> Exception:
        """An OS error on a request path -> the caller's error with a plain message. `what`
        names the component (no path of this host ever appears)."""
        code = exc.errno
        if code == errno.ELOOP:
            return BadRequest(f"'{path.field}': {what} is a symbolic link; links are not "
                              f"followed inside the shared root: {path.text}")
        if code == errno.ENOTDIR:
            return BadRequest(f"'{path.field}' has a file where a directory should be: {path.text}")
        if code == errno.EISDIR:
            return BadRequest(f"'{path.field}' is a directory: {path.text}")
        if code in (errno.EACCES, errno.EPERM):
            return Forbidden(f"'{path.field}': permission denied on {what}: {path.text}")
        if code == errno.ENAMETOOLONG:
            return BadRequest(f"'{path.field}' is too long for the filesystem: {path.text}")
        if code == errno.ENOENT:  # a folder removed while we worked in it
            return Conflict(f"'{path.field}': the folders changed while the request ran; "
                            f"retry: {path.text}")
        if code in (errno.ENOSPC, errno.EDQUOT):
            return InsufficientStorage("the shared filesystem is full; the output was not written")
        if code == errno.EROFS:
            return Forbidden("the shared filesystem is read-only; the output was not written")
        return exc  # not the caller's doing: the error handler logs it as a 500

    def _open_dir(self, parent: int, name: str, path: RequestPath) -> int:
        try:
            return os.open(name, _OPEN_DIR, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise
            if exc.errno == errno.ENOTDIR and _is_symlink(parent, name):  # for the message only
                exc = OSError(errno.ELOOP, "symbolic link")
            raise self._os_error(exc, path, f"the folder {name!r}") from None

    @contextmanager
    def _folder(self, path: RequestPath, create: bool = False) -> Iterator[int | None]:
        """A handle on the folder that holds `path`, opened component by component from the
        root without following links; None when a folder is missing (and `create` is off)."""
        fd = os.dup(self._fd)
        try:
            for name in path.folders:
                try:
                    child = self._open_dir(fd, name, path)
                except FileNotFoundError:
                    if not create:
                        yield None
                        return
                    try:
                        os.mkdir(name, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass  # made by a concurrent request, or not a folder: the open says
                    except OSError as exc:
                        raise self._os_error(exc, path, f"the folder {name!r}") from None
                    child = self._open_dir(fd, name, path)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    # -- the source ----------------------------------------------------------------------------

    def read_source(self, path: RequestPath, max_bytes: int) -> SourceFile:
        """The bytes of an existing regular file (NotFound, BadRequest, TooLarge otherwise)."""
        what = "source image" if path.field == "sourceImagePath" else f"'{path.field}'"
        not_found = NotFound(f"{what} not found: {path.text}")
        try:
            with self._folder(path) as folder:
                if folder is None:
                    raise not_found
                try:
                    fd = os.open(path.name, _OPEN_SOURCE, dir_fd=folder)
                except FileNotFoundError:
                    raise not_found from None
        except FileNotFoundError:
            raise not_found from None
        except OSError as exc:
            raise self._os_error(exc, path, "the file") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadRequest(f"'{path.field}' is not a regular file: {path.text}")
            if st.st_size > max_bytes:
                raise TooLarge(f"{what} file is {st.st_size} bytes; the limit is {max_bytes}")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(max_bytes + 1)  # bounded even if the file grows meanwhile
            if len(data) > max_bytes:
                raise TooLarge(f"{what} file is over the limit of {max_bytes} bytes")
            return SourceFile(data, (st.st_dev, st.st_ino))
        except OSError as exc:
            raise self._os_error(exc, path, "the file") from None
        finally:
            os.close(fd)

    # -- the output ----------------------------------------------------------------------------

    def _check_target(self, folder: int, path: RequestPath, source: tuple[int, int] | None):
        """BadRequest if the output name in `folder` is a directory or is the source file."""
        try:
            st = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._os_error(exc, path, "the file") from None
        if stat.S_ISDIR(st.st_mode):
            raise BadRequest(f"'{path.field}' is a directory: {path.text}")
        if source is not None and (st.st_dev, st.st_ino) == source:
            raise BadRequest(f"'{path.field}' is the source image; writing there would destroy "
                             "it: choose another output path")

    def check_output(self, path: RequestPath, source: tuple[int, int] | None = None) -> None:
        """Refuse an output path that cannot be written, before any work is done; nothing is
        created (folders are made only when the output is written)."""
        if path.name.startswith(TEMP_PREFIX):
            raise BadRequest(f"'{path.field}': names starting with {TEMP_PREFIX!r} are reserved "
                             "for temporary files")
        with self._folder(path) as folder:
            if folder is not None:
                self._check_target(folder, path, source)

    def write_output(self, path: RequestPath, data: bytes,
                     source: tuple[int, int] | None = None) -> None:
        """Write `data` to `path` atomically, creating missing folders inside the root; never
        replaces the file `source` identifies."""
        try:
            with self._folder(path, create=True) as folder:
                assert folder is not None  # created, not missing
                try:
                    atomic_write_at(folder, path.name, data,
                                    before_replace=lambda: self._check_target(folder, path, source))
                except OSError:
                    if os.fstat(folder).st_nlink == 0:  # the folder was removed under us
                        raise OSError(errno.ENOENT, "folder removed") from None
                    raise
        except OSError as exc:
            raise self._os_error(exc, path, "the file") from None
