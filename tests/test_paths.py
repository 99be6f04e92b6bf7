"""Paths stay inside the shared root, whatever the caller sends; writes are atomic."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from bgservice.errors import BadRequest, NotFound
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
        root.resolve(path, "sourceImagePath")


@pytest.mark.parametrize("value", [None, 5, ["a"], {"a": 1}, True])
def test_non_strings_are_rejected(sandbox, value):
    with pytest.raises(BadRequest, match="must be a non-empty string"):
        SharedRoot(sandbox["root"]).resolve(value, "outputImagePath")


def test_leading_slash_is_relative_to_the_root(sandbox):
    root = SharedRoot(sandbox["root"])
    real_root = os.path.realpath(sandbox["root"])
    assert str(root.resolve("/Clones/4/a.png", "f")) == f"{real_root}/Clones/4/a.png"
    assert str(root.resolve("///Clones//4/./a.png", "f")) == f"{real_root}/Clones/4/a.png"
    # Percent-encoding is not decoded: it names a literal (harmless) file inside the root.
    assert root.resolve("/%2e%2e/secret.png", "f").parent == root.root / "%2e%2e"


def test_symlinked_source_leaving_the_root_is_rejected(sandbox):
    link = sandbox["root"] / "Clones" / "leak.png"
    link.symlink_to(sandbox["outside"] / "secret.png")
    with pytest.raises(BadRequest, match="outside the shared filesystem root"):
        SharedRoot(sandbox["root"]).source("/Clones/leak.png")


def test_symlinked_output_directory_leaving_the_root_is_rejected(sandbox):
    (sandbox["root"] / "escape").symlink_to(sandbox["outside"], target_is_directory=True)
    with pytest.raises(BadRequest, match="outside the shared filesystem root"):
        SharedRoot(sandbox["root"]).output("/escape/new/out.png")
    assert sorted(p.name for p in sandbox["outside"].iterdir()) == ["secret.png"]


def test_symlink_inside_the_root_is_followed(sandbox):
    (sandbox["root"] / "Clones" / "4" / "real.png").write_bytes(b"x")
    (sandbox["root"] / "alias.png").symlink_to(sandbox["root"] / "Clones" / "4" / "real.png")
    assert SharedRoot(sandbox["root"]).source("/alias.png").name == "real.png"


def test_missing_source_is_404_and_directories_are_400(sandbox):
    root = SharedRoot(sandbox["root"])
    with pytest.raises(NotFound, match="source image not found: /Clones/none.png"):
        root.source("/Clones/none.png")
    with pytest.raises(BadRequest, match="not a regular file"):
        root.source("/Clones")
    with pytest.raises(BadRequest, match="is a directory"):
        root.output("/Clones/4")


def test_a_file_where_the_output_directory_should_be_is_400(sandbox):
    (sandbox["root"] / "taken").write_bytes(b"x")
    with pytest.raises(BadRequest, match="a file where a directory should be"):
        SharedRoot(sandbox["root"]).output("/taken/out.png")


def test_missing_output_directories_are_created_inside_the_root(sandbox):
    out = SharedRoot(sandbox["root"]).output("/Clones/9/deep/out.png")
    assert out.parent.is_dir() and not out.exists()


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


@pytest.mark.parametrize("had_previous", [False, True])
def test_process_killed_mid_write_leaves_no_partial_output(tmp_path, had_previous):
    target = tmp_path / "out.png"
    if had_previous:
        target.write_bytes(b"previous complete file")
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from bgservice.paths import atomic_write
        def slow(f):
            f.write(b"\\x89PNG partial" * 1000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        atomic_write(Path({str(target)!r}), slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if had_previous:
        assert target.read_bytes() == b"previous complete file"
    else:
        assert not target.exists()
