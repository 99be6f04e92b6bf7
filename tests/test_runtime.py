"""The runtime's own interface (u2net.runtime): its errors, its description, its calibration."""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch
from conftest import PROJECT, shared_path
from u2net.calibration import calibration_input
from u2net.registry import get_spec
from u2net.runtime import ModelRuntime, Overloaded, RuntimeOptions, TimedOut


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
    from u2net import engine

    info = runtime.info()
    assert (info["precision_requested"], info["precision"]) == ("fp32", "fp32")
    assert info["precision_check"] is None and info["engine_timings"] is None  # nothing to check
    assert info["compiled"] is False and info["compile_seconds"] is None
    assert info["cpu_amx"] is engine.cpu_has_amx()


@pytest.fixture
def on_amx(monkeypatch):
    """A CPU with bf16 matrix units, as far as the runtime can tell."""
    monkeypatch.setattr("u2net.engine.cpu_has_amx", lambda: True)


def load_auto(**options) -> ModelRuntime:
    """The real U2NETP weights under auto (random ones are too ill-conditioned for bf16 to agree
    on), eager: compiling is tested in test_centred.py, and takes minutes for a whole network."""
    weights = shared_path("models", "u2netp", "u2netp.pth")
    runtime = ModelRuntime.load(RuntimeOptions(model="u2netp", weights=weights, device="cpu",
                                               precision="auto", compile=False, warmup_runs=0,
                                               cache_dir=PROJECT / ".pytest-onnx-cache",
                                               **options))
    runtime.start(background=False)
    assert runtime.ready, runtime.error
    return runtime


def slowed(cls, monkeypatch, seconds=1.0):
    """Every forward of predictor class `cls` takes `seconds` longer."""
    import time

    inner = cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda self, batch: time.sleep(seconds) or inner(self, batch))


@pytest.mark.slow
@pytest.mark.parametrize("slow", ["OnnxPredictor", "TorchPredictor"])
def test_auto_on_amx_times_centred_bf16_against_onnxruntime_and_keeps_the_faster(on_amx, slow,
                                                                                 monkeypatch):
    from u2net import engine

    slowed(getattr(engine, slow), monkeypatch)
    runtime = load_auto()
    try:
        info = runtime.info()
        assert set(info["engine_timings"]) == {"torch bf16", "onnxruntime fp32"}
        winner = ("onnxruntime", "fp32") if slow == "TorchPredictor" else ("torch", "bf16")
        assert (info["engine"], info["precision"]) == winner
        if winner[1] == "bf16":
            assert info["precision_check"]["iou_vs_fp32"] >= 0.99
        mask = runtime.mask_for(np.zeros((40, 30, 3), np.uint8))  # the winner serves
        assert mask.shape == (40, 30)
    finally:
        runtime.close()


@pytest.mark.slow
def test_auto_drops_a_reduced_precision_that_disagrees_with_fp32(on_amx, monkeypatch, caplog):
    monkeypatch.setattr("u2net.runtime.MIN_AUTO_IOU", 1.01)  # no mask can pass: as a broken bf16
    runtime = load_auto()
    try:
        info = runtime.info()
        assert (info["engine"], info["precision"]) == ("onnxruntime", "fp32")
        assert info["engine_timings"] is None  # nothing left to race
        assert "not using it" in caplog.text
    finally:
        runtime.close()


@pytest.mark.slow
def test_a_machine_that_cannot_compile_runs_bf16_eagerly(monkeypatch, caplog):
    """torch.compile needs a C++ compiler on CPU; where it fails, bf16 still serves, eagerly."""
    def no_compiler(net):
        def forward(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return forward

    monkeypatch.setattr("u2net.engine.torch.compile", no_compiler)
    weights = shared_path("models", "u2netp", "u2netp.pth")
    runtime = ModelRuntime.load(RuntimeOptions(model="u2netp", weights=weights, device="cpu",
                                               engine="torch", precision="bf16", compile=True,
                                               warmup_runs=1))
    runtime.start(background=False)
    try:
        assert runtime.ready, runtime.error
        info = runtime.info()
        assert (info["precision"], info["compiled"]) == ("bf16", False)
        assert "torch.compile failed (RuntimeError: InvalidCxxCompiler" in caplog.text
    finally:
        runtime.close()


class RecordingPredictor:
    """Answers blank masks and records each forward's batch size and thread; `compiled` makes
    warm-up treat it as one whose first forward of each shape is slow (as cuDNN's tuning is)."""
    device, precision, engine, compiled = torch.device("cpu"), "fp32", "torch", True

    def __init__(self):
        self.calls: list[tuple[int, str]] = []

    def __call__(self, batch):
        self.calls.append((len(batch), threading.current_thread().name))
        return np.zeros((len(batch), *batch.shape[2:]), np.float32)


@contextlib.contextmanager
def warmed(weights, predictor, **options):
    """A U2NETP runtime over `predictor`, warmed up in this thread (ready asserted), then closed."""
    runtime = ModelRuntime(get_spec("u2netp"), weights, predictor,  # type: ignore[arg-type]
                           RuntimeOptions(model="u2netp", **options))
    try:
        runtime.start(background=False)
        assert runtime.ready, runtime.error
        yield runtime
    finally:
        runtime.close()


def test_warm_up_runs_every_batch_size_on_the_thread_that_serves(random_weights):
    """PyTorch keeps cuDNN's tuned plans per thread: warmed on another thread, each new batch size
    was tuned again in the batcher (2.8 s per size on an H200)."""
    predictor = RecordingPredictor()
    with warmed(random_weights, predictor, max_batch=4, warmup_runs=1) as runtime:
        assert {thread for _, thread in predictor.calls} == {"u2net-batcher"}, predictor.calls
        assert {size for size, _ in predictor.calls} == {1, 2, 3, 4}
        predictor.calls.clear()
        runtime.mask_for(np.zeros((40, 30, 3), np.uint8))
        assert predictor.calls == [(1, "u2net-batcher")]


def test_without_warm_up_runs_no_batch_size_is_tuned_ahead(random_weights):
    """A job (warmup_runs 0) leaves each batch size to its first batch: the compile (or race)
    still runs, the sweep over sizes 2..max_batch does not."""
    predictor = RecordingPredictor()
    with warmed(random_weights, predictor, max_batch=4, warmup_runs=0):
        assert predictor.calls == [(1, "u2net-batcher")]  # the first (compiling) forward only


@pytest.mark.parametrize("runs", [0, 2])
def test_warm_up_makes_as_many_synthetic_passes_as_asked_none_for_zero(random_weights, runs):
    """U2NET_WARMUP_RUNS=0 (and every `bgremove` job) reports ready without a synthetic pass on an
    eager CPU network: the first image pays what the passes would have."""
    predictor = RecordingPredictor()
    predictor.compiled = False
    with warmed(random_weights, predictor, warmup_runs=runs):
        assert len(predictor.calls) == runs, predictor.calls


class LikeCompiled(torch.nn.Module):
    """Stands in for torch.compile's module (compiling U2NETP takes minutes here): it runs the
    network, counts its calls, and like the real one has no truth value."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)

    def __len__(self):
        raise TypeError(f"{type(self.net).__name__} does not support len()")


@pytest.mark.slow  # importing torch._dynamo alone takes seconds
def test_a_compiled_network_serves_compiled(random_weights, monkeypatch, caplog):
    """A review once wrote `forward or net`: the real compiled module raises on truth (checked
    first), warm-up took that for a failed compile, and bf16 on AMX ran eagerly ever since."""
    from u2net.engine import TorchPredictor
    from u2net.weights import build_model

    with pytest.raises(TypeError):
        bool(torch.compile(torch.nn.Conv2d(3, 3, 3)))  # wrapping only: nothing is compiled yet
    compiled: list[LikeCompiled] = []
    monkeypatch.setattr("u2net.engine.torch.compile",
                        lambda net: compiled.append(LikeCompiled(net)) or compiled[-1])
    spec = get_spec("u2netp")
    predictor = TorchPredictor(build_model(spec, random_weights), torch.device("cpu"), "fp32",
                               compile=True)
    runtime = ModelRuntime(spec, random_weights, predictor, RuntimeOptions(model="u2netp",
                                                                           warmup_runs=1))
    try:
        runtime.start(background=False)
        assert runtime.ready, runtime.error
        calls = compiled[0].calls
        runtime.mask_for(np.zeros((40, 30, 3), np.uint8))
        assert compiled[0].calls == calls + 1 and calls >= 2  # warm-up's and the request's
        assert runtime.info()["compiled"] is True and "torch.compile failed" not in caplog.text
    finally:
        runtime.close()
