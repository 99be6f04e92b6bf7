"""Dynamic batching: requests that arrive together share one forward pass.

Like Triton's dynamic batcher: the first waiting item opens a batch, companions that arrive within
`max_wait_s` join it up to `max_batch`, and one thread runs the network. That thread is the only
one that touches the model, so concurrent requests share it safely; request threads keep decoding
and encoding meanwhile. The queue is bounded: a full queue refuses new work at once (the caller
answers 503) instead of letting latency and memory grow without limit.

`call` runs other work on that same thread, between batches: warm-up must, because PyTorch keeps
cuDNN's tuned convolution plans per thread (pytorch/pytorch#103939). Measured on an H200: with
the batch sizes warmed on another thread, the first batch of each new size took 2.8 s in the
batcher (the tuning again), and 4 concurrent clients got a p99 of 2.9 s instead of ~0.1 s.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")

_STOP = object()


class _Call:
    """Work for the batcher's own thread (see DynamicBatcher.call), queued as an item."""

    def __init__(self, fn: Callable[[], object]):
        self.fn = fn
        self.future: Future = Future()

    def run(self) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as exc:  # the caller hears it
            self.future.set_exception(exc)


class QueueFull(RuntimeError):
    """More work is waiting than the configured maximum."""


class DynamicBatcher:
    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], *, max_batch: int,
                 max_wait_s: float, max_queue: int, name: str = "u2net-batcher",
                 on_batch: Callable[[BaseException | None], None] | None = None):
        """`on_batch`, when given, hears after every batch: None, or the exception it raised."""
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self._run_batch = run_batch
        self._on_batch = on_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: np.ndarray) -> Future:
        """Queue one input; the future resolves to its output row. Raises QueueFull."""
        future: Future = Future()
        try:
            self._queue.put_nowait((item, future))
        except queue.Full:
            raise QueueFull(f"{self.max_queue} images are already waiting for the model") from None
        return future

    def run(self, item: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """The output row for `item`. On timeout the item is withdrawn if it has not started, so
        that under overload the network does not spend itself on answers nobody waits for."""
        future = self.submit(item)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            future.cancel()
            raise

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the batcher's thread, between batches, and return what it returns (or
        raise what it raised). Not bounded by the queue's size: for the runtime's own work
        (warm-up), not for requests."""
        work = _Call(fn)
        self._queue.put(work)
        while True:
            try:
                return work.future.result(timeout=0.1)
            except FutureTimeout:
                if not self._thread.is_alive():  # closed before it got there: never runs
                    raise RuntimeError("the batcher has stopped") from None

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _collect(self, first) -> tuple[list, bool, _Call | None]:
        """The batch that `first` opens; whether to stop after it; a call that came meanwhile
        (run after the batch, never inside it)."""
        batch, stop, call = [first], False, None
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                stop = True
                break
            if isinstance(nxt, _Call):
                call = nxt
                break
            batch.append(nxt)
        return batch, stop, call

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            if isinstance(first, _Call):
                first.run()
                continue
            batch, stop, call = self._collect(first)
            # Items whose caller gave up (cancelled futures) are dropped here, not computed.
            batch = [(item, future) for item, future in batch
                     if future.set_running_or_notify_cancel()]
            if batch:
                self._answer(batch, *self._run(batch))
            if call is not None:
                call.run()
            if stop:
                return

    def _run(self, batch: list) -> tuple[np.ndarray | None, BaseException | None]:
        """(outputs, None), or (None, the exception): the network on one batch."""
        try:
            started = time.perf_counter()
            outputs = self._run_batch(np.stack([item for item, _ in batch]))
            if len(outputs) != len(batch):
                raise RuntimeError(f"{len(outputs)} outputs for a batch of {len(batch)}")
            log.debug("batch of %d in %.1f ms, %d waiting", len(batch),
                      (time.perf_counter() - started) * 1e3, self._queue.qsize())
            return outputs, None
        except BaseException as exc:  # every waiter must hear about the failure
            log.exception("batch of %d failed", len(batch))
            return None, exc

    def _answer(self, batch: list, outputs: np.ndarray | None, error: BaseException | None) -> None:
        if self._on_batch is not None:  # first, so that the state is settled when callers hear
            try:
                self._on_batch(error)
            except Exception:
                log.exception("the on_batch callback failed")
        for i, (_, future) in enumerate(batch):
            if error is None:
                assert outputs is not None  # _run gives outputs or an error
                future.set_result(outputs[i])
            else:
                future.set_exception(error)
