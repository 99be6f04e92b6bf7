"""`bgremove watch IN OUT`: cut out each image that appears in a folder, as it appears.

Polls rather than using inotify: polling sees files written by other machines into a network or
container-shared folder, which inotify does not, for one folder scan per interval. Images are cut
out one at a time, so memory stays that of one image whatever arrives; the model is loaded on the
first image (a watcher with nothing to do costs no model).
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def watch_problem(folder: Path, output: Path) -> str | None:
    """Why these folders cannot be watched, or None."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    out, watched = output.resolve(), folder.resolve()
    if out == watched or watched in out.parents:
        return (f"the output folder {output} is inside {folder}: its cut-outs would be taken for "
                "new images; give a folder outside it")
    return None


class Watcher:
    """Scans `folder` every interval; `plan(inputs, output, fmt)` maps its images to outputs
    (bgservice.cli._plan: the tree kept), `load()` makes the service on the first image, and
    `cut_out(pairs, service)` writes them, returning how many failed (each says why on stderr)."""

    def __init__(self, folder: Path, output: Path, fmt: str, *, plan: Callable, load: Callable,
                 cut_out: Callable, quiet: bool = False):
        self.folder, self.output, self.fmt = folder, output, fmt
        self.plan, self.load, self.cut_out, self.quiet = plan, load, cut_out, quiet
        self.service = None
        self.done = self.failures = 0
        self.seen: dict = {}  # source -> (size, mtime) at the last scan
        self.failed: dict = {}  # source -> (size, mtime) when it failed
        self.stop = threading.Event()

    def ready(self) -> list:
        """The (source, output) pairs to cut out now: no output yet, the same size and
        modification time as at the last scan (a file still being copied in is not read
        half-written), and not failed as it is now (a failed file is retried once it changes)."""
        pairs = []
        for src, dst in self.plan([str(self.folder)], self.output, self.fmt):
            if Path(dst).exists():
                continue
            try:
                st = Path(src).stat()
            except OSError:  # gone since the scan
                continue
            key = (st.st_size, st.st_mtime_ns)
            if self.failed.get(src) != key and self.seen.get(src) == key:
                pairs.append((src, dst))
            self.seen[src] = key
        return pairs

    def handle(self, src, dst) -> None:
        if self.service is None:
            self.service = self.load()
        if self.cut_out([(src, dst)], self.service):
            self.failures += 1
            self.failed[src] = self.seen[src]
        else:
            self.done += 1
            self._say(f"wrote {dst}")

    def run(self, interval: float = 1.0, max_files: int | None = None,
            idle_exit: float | None = None) -> int:
        """Until Ctrl-C or SIGTERM (after the image in hand), `max_files` images, or `idle_exit`
        seconds with nothing new. 0, or 1 when some image failed."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        self._say(f"watching {self.folder} -> {self.output} (Ctrl-C stops)")
        last_work = time.monotonic()
        try:
            while not self.stop.is_set():
                for src, dst in self.ready():
                    self.handle(src, dst)
                    last_work = time.monotonic()
                    if max_files and self.done + self.failures >= max_files:
                        self.stop.set()
                    if self.stop.is_set():
                        break
                if idle_exit and time.monotonic() - last_work > idle_exit:
                    break
                self.stop.wait(interval)
        finally:
            if self.service is not None:
                self.service.close()
        self._say(f"{self.done} done, {self.failures} failed")
        return 1 if self.failures else 0

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)
