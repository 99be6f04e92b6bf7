"""The dynamic batcher: companions share a batch, failures reach every waiter, the queue is bounded."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from u2net.batching import DynamicBatcher, QueueFull


def test_requests_that_arrive_together_share_a_batch():
    sizes = []

    def run(batch):
        sizes.append(len(batch))
        return batch * 2

    batcher = DynamicBatcher(run, max_batch=4, max_wait_s=0.2, max_queue=16)
    futures = [batcher.submit(np.full(3, i, np.float32)) for i in range(6)]
    results = [f.result(5) for f in futures]
    batcher.close()
    assert [r[0] for r in results] == [0, 2, 4, 6, 8, 10]  # each caller gets its own row
    assert sizes == [4, 2]


def test_a_failing_batch_fails_every_waiter_and_the_batcher_goes_on():
    calls = []

    def run(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return batch

    batcher = DynamicBatcher(run, max_batch=2, max_wait_s=0.2, max_queue=8)
    failing = [batcher.submit(np.zeros(1)) for _ in range(2)]
    for f in failing:
        with pytest.raises(RuntimeError, match="boom"):
            f.result(5)
    assert batcher.run(np.ones(1), timeout=5)[0] == 1
    batcher.close()



def test_on_batch_hears_every_batch_before_its_callers_do():
    heard = []

    def run(batch):
        if batch[0][0] < 0:
            raise RuntimeError("negative")
        return batch if batch[0][0] < 10 else batch[:0]  # 10: a wrong number of outputs

    batcher = DynamicBatcher(run, max_batch=1, max_wait_s=0, max_queue=8, on_batch=heard.append)
    try:
        assert batcher.run(np.ones(1), timeout=5)[0] == 1 and heard == [None]
        with pytest.raises(RuntimeError, match="negative"):
            batcher.run(-np.ones(1), timeout=5)
        assert len(heard) == 2 and str(heard[1]) == "negative"  # already heard when we hear
        with pytest.raises(RuntimeError, match="0 outputs for a batch of 1"):
            batcher.run(np.full(1, 10.0), timeout=5)
        assert batcher.run(np.ones(1), timeout=5)[0] == 1 and heard[-1] is None
    finally:
        batcher.close()


def test_an_item_whose_caller_timed_out_is_not_computed():
    """Under overload, answers nobody waits for would only lengthen the queue."""
    from concurrent.futures import TimeoutError as FutureTimeout

    gate, seen = threading.Event(), []

    def run(batch):
        gate.wait(10)
        seen.extend(float(row[0]) for row in batch)
        return batch

    batcher = DynamicBatcher(run, max_batch=4, max_wait_s=0, max_queue=8)
    try:
        first = batcher.submit(np.full(1, 1.0))  # holds the network
        time.sleep(0.2)
        with pytest.raises(FutureTimeout):
            batcher.run(np.full(1, 2.0), timeout=0.1)  # gives up while queued
        later = batcher.submit(np.full(1, 3.0))
        gate.set()
        assert first.result(5)[0] == 1 and later.result(5)[0] == 3
        assert seen == [1.0, 3.0]
    finally:
        gate.set()
        batcher.close()

def test_full_queue_refuses_at_once():
    gate = threading.Event()

    def run(batch):
        gate.wait(10)
        return batch

    batcher = DynamicBatcher(run, max_batch=1, max_wait_s=0, max_queue=2)
    first = batcher.submit(np.zeros(1))
    deadline = time.monotonic() + 5
    while batcher.waiting and time.monotonic() < deadline:  # the worker has taken the first
        time.sleep(0.01)
    queued = [batcher.submit(np.zeros(1)) for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(QueueFull):
        batcher.submit(np.zeros(1))
    assert time.monotonic() - started < 0.1
    gate.set()
    for f in [first, *queued]:
        f.result(5)
    batcher.close()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_gpu_path_batches_concurrent_requests_and_each_gets_its_own_mask(random_weights,
                                                                            precision):
    """The CUDA configuration (PyTorch engine, batches of up to 4) on CPU: concurrent requests
    share forward passes, and each mask equals the one its image gets alone."""
    from conftest import photo, solo_and_concurrent_masks
    from u2net.runtime import ModelRuntime, RuntimeOptions

    runtime = ModelRuntime.load(RuntimeOptions(
        model="u2netp", weights=random_weights, device="cpu", engine="torch", precision=precision,
        compile=False, max_batch=4, max_wait_ms=300, warmup_runs=1))
    runtime.start(background=False)
    images = [photo(90 + 10 * i, 70, seed=i) for i in range(4)]
    try:
        alone, together, sizes = solo_and_concurrent_masks(runtime, images)
    finally:
        runtime.close()
    assert max(sizes) > 1, sizes  # they shared a forward pass
    for a, b in zip(alone, together, strict=True):
        assert a.shape == b.shape
        # Batched convolutions may sum in another order: a level at most, and rarely.
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= (1 if precision == "fp32" else 3) and diff.mean() < 0.05


def test_a_call_runs_on_the_batchers_thread_between_batches_never_inside_one():
    """Warm-up's work goes through `call`: PyTorch keeps cuDNN's tuned plans per thread, so only
    the batcher's own thread can warm up the shapes it will serve."""
    gate, seen = threading.Event(), []

    def run(batch):
        seen.append(("batch", len(batch), threading.current_thread().name))
        gate.wait(5)
        return batch * 2

    batcher = DynamicBatcher(run, max_batch=4, max_wait_s=0.3, max_queue=8, name="the-batcher")
    try:
        first = batcher.submit(np.ones(2))  # opens a batch that waits 0.3 s for companions
        time.sleep(0.05)
        answers = []
        called = threading.Thread(target=lambda: answers.append(batcher.call(
            lambda: seen.append(("call", threading.current_thread().name)) or "done")))
        called.start()
        time.sleep(0.05)
        later = batcher.submit(np.ones(2))  # after the call: in the next batch, not this one
        gate.set()
        called.join(5)
        assert first.result(5).tolist() == [2, 2] and later.result(5).tolist() == [2, 2]
        assert answers == ["done"]
        assert seen == [("batch", 1, "the-batcher"), ("call", "the-batcher"),
                        ("batch", 1, "the-batcher")]
        with pytest.raises(ZeroDivisionError):
            batcher.call(lambda: 1 / 0)  # the caller hears what it raised; the batcher goes on
        assert batcher.run(np.ones(2), timeout=5).tolist() == [2, 2]
    finally:
        gate.set()
        batcher.close()


def test_a_call_after_close_raises_instead_of_waiting_forever():
    batcher = DynamicBatcher(lambda batch: batch, max_batch=1, max_wait_s=0, max_queue=1)
    batcher.close()
    with pytest.raises(RuntimeError, match="the batcher has stopped"):
        batcher.call(lambda: 1)
