"""Paths stay inside the shared root, whatever the caller sends; writes are atomic."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import snapshot
from u2net.atomic import STALE_AFTER_S, SWEEP_EVERY_S, TEMP_PREFIX, remove_stale_temporaries

from bgservice.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    TooLarge,
)
from bgservice.paths import SharedRoot, atomic_write

ESCAPES = [
    "../outside/secret.png", "/../outside/secret.png", "/Clones/../../outside/secret.png",
    "Clones/4/../../../outside/secret.png", "..", "/..", "/../", "./../outside/secret.png",
    "..\\outside\\secret.png", "/Clones/4/..\\..\\..\\outside", "C:/outside/secret.png",
    "c:\\outside\\secret.png", "/Clones/4/x.png\x00.jpg", "\x00", "", "   ", "/", "//", "/./.",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_escapes_are_rejected(sandbox, path):
    root = SharedRoot(sandbox["root"])
    with pytest.raises(BadRequest):
        root.parse(path, "sourceImagePath")


@pytest.mark.parametrize("value", [None, 5, ["a"], {"a": 1}, True])
def test_non_strings_are_rejected(sandbox, value):
    with pytest.raises(BadRequest, match="must be a non-empty string"):
        SharedRoot(sandbox["root"]).parse(value, "outputImagePath")


@pytest.mark.parametrize("path, message", [
    ("/Clones/\ud800.png", "not valid Unicode"),  # a lone surrogate, as JSON's "\\ud800" gives
    ("/Clones/" + "x" * 300 + ".png", "longer than 255 bytes"),
    ("/Clones/" + "é" * 128 + ".png", "longer than 255 bytes"),  # 256 bytes in UTF-8
])
def test_names_no_filesystem_can_hold_are_400(sandbox, path, message):
    with pytest.raises(BadRequest, match=message):
        SharedRoot(sandbox["root"]).parse(path, "outputImagePath")


def test_leading_slash_is_relative_to_the_root(sandbox):
    root = SharedRoot(sandbox["root"])
    assert root.parse("/Clones/4/a.png", "f").parts == ("Clones", "4", "a.png")
    assert root.parse("///Clones//4/./a.png", "f").parts == ("Clones", "4", "a.png")
    # Percent-encoding is not decoded: it names a literal (harmless) file inside the root.
    assert root.parse("/%2e%2e/secret.png", "f").parts == ("%2e%2e", "secret.png")


def read(root: SharedRoot, path: str, limit: int = 1 << 20) -> bytes:
    return root.read_source(root.parse(path, "sourceImagePath"), limit).data


def write(root: SharedRoot, path: str, data: bytes, source=None) -> None:
    target = root.parse(path, "outputImagePath")
    root.check_output(target, source)
    root.write_output(target, data, source)


def test_a_source_is_read_and_an_output_written_inside_the_root(sandbox):
    root = SharedRoot(sandbox["root"])
    (sandbox["root"] / "Clones" / "4" / "in.png").write_bytes(b"photo")
    assert read(root, "/Clones/4/in.png") == b"photo"
    write(root, "/Clones/4/out.png", b"cut-out")
    assert (sandbox["root"] / "Clones" / "4" / "out.png").read_bytes() == b"cut-out"


@pytest.mark.parametrize("inside", [False, True])
def test_a_symlinked_source_is_refused_wherever_it_points(sandbox, inside):
    target = sandbox["root"] / "Clones" / "4" / "real.png" if inside else sandbox["outside"] / "secret.png"
    target.write_bytes(b"x")
    (sandbox["root"] / "Clones" / "leak.png").symlink_to(target)
    with pytest.raises(BadRequest, match="symbolic link"):
        read(SharedRoot(sandbox["root"]), "/Clones/leak.png")


def test_a_symlinked_folder_on_the_source_path_is_refused(sandbox):
    (sandbox["root"] / "escape").symlink_to(sandbox["outside"], target_is_directory=True)
    with pytest.raises(BadRequest, match="symbolic link"):
        read(SharedRoot(sandbox["root"]), "/escape/secret.png")


def test_symlinked_output_folders_and_files_never_lead_outside(sandbox):
    before = snapshot(sandbox["outside"])
    (sandbox["root"] / "escape").symlink_to(sandbox["outside"], target_is_directory=True)
    root = SharedRoot(sandbox["root"])
    with pytest.raises(BadRequest, match="symbolic link"):
        write(root, "/escape/new/out.png", b"x")
    # A symlink as the output file itself is replaced by the file, not written through.
    link = sandbox["root"] / "Clones" / "out.png"
    link.symlink_to(sandbox["outside"] / "secret.png")
    write(root, "/Clones/out.png", b"cut-out")
    assert not link.is_symlink() and link.read_bytes() == b"cut-out"
    assert snapshot(sandbox["outside"]) == before


def test_missing_source_is_404_and_non_files_are_400(sandbox):
    root = SharedRoot(sandbox["root"])
    for missing in ("/Clones/none.png", "/Nowhere/at/all.png"):
        with pytest.raises(NotFound, match=f"source image not found: {missing}"):
            read(root, missing)
    with pytest.raises(BadRequest, match="not a regular file"):
        read(root, "/Clones")
    os.mkfifo(sandbox["root"] / "fifo.png")  # must not hang the request thread
    with pytest.raises(BadRequest, match="not a regular file"):
        read(root, "/fifo.png")
    with pytest.raises(BadRequest, match="is a directory"):
        write(root, "/Clones/4", b"x")


def test_a_source_over_the_limit_is_413(sandbox):
    (sandbox["root"] / "big.png").write_bytes(b"x" * 101)
    with pytest.raises(TooLarge, match="101 bytes; the limit is 100"):
        read(SharedRoot(sandbox["root"]), "/big.png", limit=100)


def test_a_file_where_the_output_directory_should_be_is_400(sandbox):
    (sandbox["root"] / "taken").write_bytes(b"x")
    with pytest.raises(BadRequest, match="a file where a directory should be"):
        write(SharedRoot(sandbox["root"]), "/taken/out.png", b"x")


def test_output_folders_are_created_only_when_the_output_is_written(sandbox):
    root = SharedRoot(sandbox["root"])
    target = root.parse("/Clones/9/deep/out.png", "outputImagePath")
    root.check_output(target)
    assert not (sandbox["root"] / "Clones" / "9").exists()
    root.write_output(target, b"x")
    assert (sandbox["root"] / "Clones" / "9" / "deep" / "out.png").read_bytes() == b"x"


@pytest.mark.parametrize("output", ["/Clones/4/in.png", "//Clones/./4/in.png", "/Clones/4/hard.png"])
def test_the_source_itself_is_never_the_output(sandbox, output):
    photo = sandbox["root"] / "Clones" / "4" / "in.png"
    photo.write_bytes(b"photo")
    os.link(photo, sandbox["root"] / "Clones" / "4" / "hard.png")
    root = SharedRoot(sandbox["root"])
    source = root.read_source(root.parse("/Clones/4/in.png", "sourceImagePath"), 1 << 20)
    with pytest.raises(BadRequest, match="is the source image"):
        write(root, output, b"cut-out", source.identity)
    with pytest.raises(BadRequest, match="is the source image"):  # the last check, at the rename
        root.write_output(root.parse(output, "outputImagePath"), b"cut-out", source.identity)
    assert photo.read_bytes() == b"photo"


def test_temporary_names_are_reserved(sandbox):
    with pytest.raises(BadRequest, match="reserved"):
        write(SharedRoot(sandbox["root"]), f"/Clones/{TEMP_PREFIX}abc", b"x")


@pytest.mark.parametrize("code, kind, message", [
    (errno.EACCES, Forbidden, "permission denied"), (errno.EROFS, Forbidden, "read-only"),
    (errno.ENOSPC, InsufficientStorage, "full"), (errno.ENOENT, Conflict, "folders changed"),
])
def test_os_errors_a_caller_can_meet_are_plain_messages(sandbox, code, kind, message):
    root = SharedRoot(sandbox["root"])
    error = root._os_error(OSError(code, os.strerror(code)), root.parse("/a/b.png", "f"), "x")
    assert isinstance(error, kind) and message in error.message and str(sandbox["root"]) not in error.message


def test_atomic_write_replaces_completely(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left


def test_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def explode(f):
        f.write(b"half")
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


ATOMIC_PY = Path(__file__).resolve().parents[1] / "U-2-Net" / "atomic.py"


def killed_mid_write(target, unnamed: bool) -> None:
    """Start a process writing `target` atomically, and SIGKILL it half-way."""
    script = textwrap.dedent(f"""
        import importlib.util, sys, time
        from pathlib import Path
        # atomic.py alone: importing the u2net package would import torch (seconds per kill)
        spec = importlib.util.spec_from_file_location("atomic", {str(ATOMIC_PY)!r})
        atomic = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(atomic)
        atomic._USE_TMPFILE = {unnamed}
        def slow(f):
            f.write(b"\\x89PNG partial" * 1000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        atomic.atomic_write(Path({str(target)!r}), slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.mark.parametrize("had_previous", [False, True])
def test_process_killed_mid_write_leaves_no_partial_output_and_no_temporary(tmp_path, had_previous):
    target = tmp_path / "out.png"
    if had_previous:
        target.write_bytes(b"previous complete file")
    for _ in range(3):
        killed_mid_write(target, unnamed=True)
    if had_previous:
        assert target.read_bytes() == b"previous complete file"
    else:
        assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["out.png"] if had_previous else [])


def test_without_unnamed_files_a_killed_writers_temporary_is_swept_once_stale(tmp_path, monkeypatch):
    """Where O_TMPFILE is missing, a kill leaves a named temporary; a later write to the folder
    removes it once it is older than STALE_AFTER_S (a live writer's is never that old). A folder is
    listed at most once per SWEEP_EVERY_S, not on every write."""
    clock = [1000.0]
    monkeypatch.setattr("u2net.atomic.time.monotonic", lambda: clock[0])
    target = tmp_path / "out.png"
    killed_mid_write(target, unnamed=False)
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(TEMP_PREFIX) and not target.exists()
    atomic_write(tmp_path / "other.png", b"x")
    assert left.exists()  # fresh: it could belong to a live writer
    os.utime(left, (time.time() - STALE_AFTER_S - 1,) * 2)
    (tmp_path / "unrelated.tmp").write_bytes(b"keep")
    os.utime(tmp_path / "unrelated.tmp", (time.time() - STALE_AFTER_S - 1,) * 2)
    monkeypatch.setattr("u2net.atomic._USE_TMPFILE", False)
    atomic_write(tmp_path / "other.png", b"y")
    assert left.exists()  # swept moments ago: not listed again yet
    clock[0] += SWEEP_EVERY_S
    atomic_write(tmp_path / "other.png", b"z")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.png", "unrelated.tmp"]
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remove_stale_temporaries(dir_fd) == 0
    finally:
        os.close(dir_fd)
