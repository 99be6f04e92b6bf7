"""`bgremove remove --jobs N`: N images in hand at once, never more, failures reported in the
plan's order (the command's loop itself, with a stand-in for the service's pipeline)."""
from __future__ import annotations

import threading
import time

import pytest

from bgservice.cli import _jobs, _remove_all
from bgservice.errors import NotAnImage


class CountingRemover:
    """Stands in for BackgroundRemover.process: holds each image a moment, counts how many it
    holds at once, and refuses the bytes b"bad"."""

    def __init__(self):
        self.now = self.most = self.calls = 0
        self.lock = threading.Lock()

    def process(self, data, options):
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.1)
            if data == b"bad":
                raise NotAnImage("not a decodable image")
            if data == b"stop":
                raise KeyboardInterrupt
            return type("Rendered", (), {"data": data[::-1]})()
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("jobs", [1, 3])
def test_jobs_bound_the_images_in_hand_and_failures_come_in_order(tmp_path, capsys, jobs):
    todo = []
    for i in range(8):
        src = tmp_path / f"{i}.png"
        src.write_bytes(b"bad" if i in (2, 5) else f"image {i}".encode())
        todo.append((src, tmp_path / "out" / f"{i}.png"))
    remover = CountingRemover()
    assert _remove_all(todo, remover, options=None, quiet=True, jobs=jobs) == 2
    assert remover.most == jobs  # eight images, never more than `jobs` at once (and as many)
    err = capsys.readouterr().err
    assert err.index(f"{tmp_path / '2.png'}: not a decodable") < err.index(f"{tmp_path / '5.png'}:")
    for i in (0, 1, 3, 4, 6, 7):
        assert (tmp_path / "out" / f"{i}.png").read_bytes() == f"image {i}".encode()[::-1]
    assert not (tmp_path / "out" / "2.png").exists()


@pytest.mark.parametrize("where", ["waiting for an image", "in the loop"])
def test_ctrl_c_drops_the_images_not_yet_started(tmp_path, monkeypatch, where):
    """Ctrl-C stops the run once the images in hand finish, instead of working through the rest
    of the plan first: whether it arrives while the loop waits for an image (raised here by the
    third image) or while it reports one (here, the third image's error line)."""
    import tqdm

    todo = []
    for i in range(20):
        src = tmp_path / f"{i}.png"
        src.write_bytes((b"stop" if where == "waiting for an image" else b"bad") if i == 2
                        else f"image {i}".encode())
        todo.append((src, tmp_path / "out" / f"{i}.png"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.tqdm, "write", interrupted)
    remover = CountingRemover()
    with pytest.raises(KeyboardInterrupt):
        _remove_all(todo, remover, options=None, quiet=True, jobs=2)
    assert remover.calls <= 6, remover.calls  # the third, those beside it, and no more than a few


@pytest.mark.parametrize("text", ["0", "33", "two", "-1"])
def test_jobs_outside_1_to_32_are_refused(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="from 1 to 32"):
        _jobs(text)
