"""The runtime's own interface (u2net.runtime): its errors, its description, its calibration."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import shared_path
from u2net.registry import get_spec
from u2net.runtime import ModelRuntime, Overloaded, RuntimeOptions, TimedOut, calibration_input


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


def test_info_says_what_precision_was_asked_for_and_what_runs(runtime: ModelRuntime):
    info = runtime.info()
    assert (info["precision_requested"], info["precision"]) == ("auto", "fp32")  # u2netp: fp32
    assert info["precision_check"] is None  # auto chose fp32: nothing to check


@pytest.fixture
def bf16_on_amx(monkeypatch):
    """u2netp as if its measured amx_precision were bf16, on a CPU with AMX."""
    import dataclasses

    from u2net import registry

    spec = dataclasses.replace(registry.MODELS["u2netp"], amx_precision="bf16")
    monkeypatch.setitem(registry.MODELS, "u2netp", spec)
    monkeypatch.setattr("u2net.engine.cpu_has_amx", lambda: True)


def load_auto() -> ModelRuntime:
    """The real U2NETP weights (random ones are too ill-conditioned for bf16 to agree on)."""
    weights = shared_path("models", "u2netp", "u2netp.pth")
    return ModelRuntime.load(RuntimeOptions(model="u2netp", weights=weights, device="cpu",
                                            precision="auto", warmup_runs=0))


@pytest.mark.slow
def test_auto_runs_the_models_amx_precision_once_it_agrees_with_fp32(bf16_on_amx):
    runtime = load_auto()
    try:
        info = runtime.info()
        assert (info["engine"], info["precision"]) == ("torch", "bf16")
        assert info["precision_check"]["iou_vs_fp32"] >= 0.99
    finally:
        runtime.close()


@pytest.mark.slow
def test_auto_falls_back_to_fp32_when_the_reduced_precision_disagrees(bf16_on_amx, monkeypatch,
                                                                      caplog):
    monkeypatch.setattr("u2net.runtime.MIN_AUTO_IOU", 1.01)  # no mask can pass: as a broken bf16
    runtime = load_auto()
    try:
        info = runtime.info()
        assert (info["engine"], info["precision"]) == ("onnxruntime", "fp32")
        assert "running fp32 instead" in caplog.text
    finally:
        runtime.close()
