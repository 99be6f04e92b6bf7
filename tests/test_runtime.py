"""The runtime's own interface (u2net.runtime): its errors, its description, its calibration."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from u2net.registry import get_spec
from u2net.runtime import ModelRuntime, Overloaded, TimedOut, calibration_input


def test_a_caller_that_waits_too_long_gets_timedout(runtime, monkeypatch):
    release = threading.Event()
    inner = runtime.batcher._run_batch
    monkeypatch.setattr(runtime.batcher, "_run_batch", lambda batch: release.wait(5) and inner(batch))
    blocker = threading.Thread(target=runtime.mask_for, args=(np.zeros((32, 32, 3), np.uint8),))
    blocker.start()
    try:
        with pytest.raises(TimedOut, match="did not answer within 0.2 s"):
            runtime.mask_for(np.zeros((32, 32, 3), np.uint8), timeout=0.2)
    finally:
        release.set()
        blocker.join(10)


def test_overloaded_is_what_a_full_queue_raises():
    from u2net.batching import QueueFull

    assert Overloaded is QueueFull  # callers need not import the batcher


def test_info_describes_the_model_and_its_batching(runtime: ModelRuntime):
    info = runtime.info()
    assert info["model"] == "u2netp" and info["engine"] == "onnxruntime"
    assert info["ready"] is True and info["error"] is None and info["max_batch_size"] == 1
    assert len(info["weights_sha256"]) == 64


def test_the_calibration_photo_is_the_same_every_time():
    spec = get_spec("u2netp")
    a, b = calibration_input(spec), calibration_input(spec)
    assert a.shape == (1, 3, 320, 320) and np.array_equal(a, b)
