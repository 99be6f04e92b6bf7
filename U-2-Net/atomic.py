"""Atomic file writes, for every file this project writes that someone else reads: cut-outs in the
shared root, trained weights and their training state, cached ONNX exports.

The core, `atomic_write_at`, works on a directory handle and a single name, so that the shared
root's code can write through handles it opened without following symlinks (bgservice.paths).

What a crash leaves behind: on Linux the data goes into an unnamed file (O_TMPFILE), which the
kernel discards if the process dies, and gets a name only for the instant between `linkat` and
the rename. Where O_TMPFILE or /proc is missing, a named temporary file is used instead. Either
way temporaries have one recognisable name (`.u2net-tmp.<hex>`), and writes sweep those in their
folder that are older than STALE_AFTER_S (a killed writer's), so none stays for ever. A folder is
swept at most once per SWEEP_EVERY_S per process: the sweep lists the whole folder, and a shared
folder of many thousand cut-outs should not be listed on every write.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".u2net-tmp."
# A live writer's named temporary lives for one write (seconds at most); a killed one's for ever.
STALE_AFTER_S = 10 * 60
SWEEP_EVERY_S = 60.0
_MAX_REMEMBERED_FOLDERS = 4096

Writer = Callable[[BinaryIO], None] | bytes | bytearray | memoryview

_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
# linkat() of an O_TMPFILE needs its /proc/self/fd name (AT_EMPTY_PATH would need a capability).
_USE_TMPFILE = bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")
# errno values meaning "this filesystem or kernel has no O_TMPFILE": fall back to a named file.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}


def temporary_name() -> str:
    return TEMP_PREFIX + secrets.token_hex(8)


def _open_temporary(dir_fd: int) -> tuple[int, str | None]:
    """(fd, name): an unnamed file (name None) where the kernel allows, else a new named one.
    Mode 0666 less the umask, as open() would give (mkstemp would give 0600)."""
    if _USE_TMPFILE:
        try:
            return os.open(".", _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=dir_fd), None
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
    name = temporary_name()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, 0o666, dir_fd=dir_fd), name


def _write_all(fd: int, write: Writer) -> None:
    with os.fdopen(fd, "wb", closefd=False) as f:
        if isinstance(write, (bytes, bytearray, memoryview)):
            f.write(write)
        else:
            write(f)
        f.flush()
        os.fsync(fd)


def atomic_write_at(dir_fd: int, name: str, write: Writer,
                    before_replace: Callable[[], None] | None = None) -> None:
    """Write `name` in the directory `dir_fd` completely or not at all.

    `write` is the bytes, or a function that writes into a binary file. `before_replace`, when
    given, runs just before the rename and may raise to abandon the write (the caller's last
    check of what it is about to replace). A crash at any point leaves either no file or the
    previous complete one (rename is atomic within a filesystem).
    """
    fd, temp = _open_temporary(dir_fd)
    try:
        _write_all(fd, write)
        if temp is None:  # give the unnamed file a name, for the rename
            temp = temporary_name()
            os.link(f"/proc/self/fd/{fd}", temp, dst_dir_fd=dir_fd, follow_symlinks=True)
        if before_replace is not None:
            before_replace()
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        temp = None
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)
        if temp is not None:
            _unlink_quietly(dir_fd, temp)
    _sweep_now_and_then(dir_fd)


_last_sweep: dict[tuple[int, int], float] = {}  # (st_dev, st_ino) of a folder -> monotonic time


def _sweep_now_and_then(dir_fd: int) -> None:
    st = os.fstat(dir_fd)
    key, now = (st.st_dev, st.st_ino), time.monotonic()
    last = _last_sweep.get(key)
    if last is not None and now - last < SWEEP_EVERY_S:
        return
    if len(_last_sweep) >= _MAX_REMEMBERED_FOLDERS:
        _last_sweep.clear()  # forgetting only means one extra sweep per folder
    _last_sweep[key] = now
    remove_stale_temporaries(dir_fd)


def atomic_write(path: Path, write: Writer) -> None:
    """`atomic_write_at` for a trusted path (the project's own files: weights, caches)."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        atomic_write_at(dir_fd, path.name, write)
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(dir_fd: int, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove this project's temporary files in `dir_fd` older than `older_than_s` (left by a
    killed writer); returns how many. Never follows symlinks; other files are not touched."""
    removed, cutoff = 0, time.time() - older_than_s
    try:
        with os.scandir(dir_fd) as entries:
            names = [e.name for e in entries if e.name.startswith(TEMP_PREFIX)]
    except OSError:
        return 0
    for name in names:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff and _unlink_quietly(dir_fd, name):
            removed += 1
    return removed


def _unlink_quietly(dir_fd: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False
