"""What one worker takes on at once: images admitted to the network, and memory for pixels.

Admission: a request is admitted before its source is read, and counts until its mask is back.
At most (network queue + one batch) are admitted, so the network's queue can never overflow, and
a request beyond that is refused (503) before any read, decode or resize: under overload a
refusal costs almost nothing, and the useful throughput stays at the network's rate.

Memory: each admitted image reserves its estimated peak bytes (pixels from the header, times the
measured bytes per pixel of its mode) from the worker's budget before it is decoded, and returns
them when its output is written. A request that does not fit waits a bounded time, then gets 503;
an image that could never fit gets 413.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import TooLarge, Unavailable

_MB = 1 << 20
# The most images a job (`bgremove remove --jobs`) holds at once; service.assemble_job makes its
# queue admit as many.
MAX_JOB_IMAGES = 32


class Admission:
    """At most `limit` requests between admission and their mask."""

    def __init__(self, limit: int):
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        return self._count

    @contextmanager
    def ticket(self) -> Iterator[Ticket]:
        with self._lock:
            if self._count >= self.limit:
                raise Unavailable(f"the service is busy: {self._count} images are already being "
                                  "processed or waiting for the model; retry shortly",
                                  retry_after=2, reason="busy")
            self._count += 1
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            ticket.release()

    def _leave(self) -> None:
        with self._lock:
            self._count -= 1


class Ticket:
    """One admitted request; released once its mask is back (or when it ends, whichever first)."""

    def __init__(self, admission: Admission):
        self._admission: Admission | None = admission

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._leave()


class MemoryBudget:
    """Bytes that the images in flight in one worker may hold at once."""

    def __init__(self, total_bytes: int, wait_s: float, set_aside: int = 0):
        """`set_aside`: bytes the worker holds outside any request (Pillow's cache of freed
        image blocks), reserved for good so that requests and it together stay in the budget."""
        self.total = total_bytes
        self.wait_s = wait_s
        self.set_aside = min(set_aside, total_bytes // 2)
        self.used = self.set_aside
        self.peak = 0  # the most reserved at once, for /model-info and the tests
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        if nbytes > self.total - self.set_aside:
            raise TooLarge(f"this image needs about {nbytes // _MB} MB to process, more than this "
                           f"worker's memory budget of {self.total // _MB} MB "
                           f"({self.set_aside // _MB} MB of it held for decoding) "
                           "(U2NET_MEMORY_BUDGET_MB); send a smaller image, or use mode "
                           "threshold or soft, which need less")
        with self._changed:
            if not self._changed.wait_for(lambda: self.used + nbytes <= self.total, self.wait_s):
                raise Unavailable("the service is busy with other large images; retry shortly",
                                  retry_after=5, reason="memory_budget")
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._changed:
                self.used -= nbytes
                self._changed.notify_all()
