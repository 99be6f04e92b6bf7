"""One loaded model per process: load once, warm up, report ready, serve masks.

`ModelRuntime.load` resolves and strictly loads the weights (failing fast, with the file it looked
for and the command that fetches it). `start` warms the network up, in a background thread by
default so that a server can answer /health while it warms, and only then reports ready.
Call it in the process that serves (after fork): CUDA must never be touched in a gunicorn master.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .batching import DynamicBatcher, QueueFull
from .calibration import calibration_input
from .custom import CustomModelError, CustomOnnxPredictor, read_description
from .engine import (
    LOW_PRECISIONS,
    MAX_AUTO_MAD,
    MIN_AUTO_IOU,
    OnnxPredictor,
    TorchPredictor,
    candidates,
    choose_device,
    choose_engine,
    cpu_has_amx,
    describe_device,
    onnx_model_bytes,
)
from .memory import release_free_memory
from .registry import ModelSpec, get_spec, is_custom_model
from .transforms import mask_to_size, to_model_input
from .weights import build_model, file_digest, resolve_weights

log = logging.getLogger(__name__)


# The runtime's own errors, for its callers (they need not know the batcher or concurrent.futures).
Overloaded = QueueFull  # more images are waiting for the network than max_queue allows


class TimedOut(TimeoutError):
    """The network did not answer within the caller's timeout (the image was withdrawn if it had
    not started)."""


class Predictor(Protocol):
    """What the runtime runs: a batch of model inputs (n, 3, S, S) float32 -> (n, S, S) maps in
    [0, 1]. TorchPredictor and OnnxPredictor (engine.py) are the two; tests wrap one."""

    device: torch.device
    precision: str
    engine: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RuntimeOptions:
    model: str = "u2net_human_seg"
    models_dir: Path = Path("saved_models")
    weights: Path | None = None  # a user's own .pth for the model's architecture
    device: str = "auto"
    engine: str = "auto"  # auto: onnxruntime on CPU, torch on CUDA
    precision: str = "auto"  # see engine.candidates
    # Where ONNX exports and torch.compile's kernels are kept (None: made again at every start).
    cache_dir: Path | None = None
    # torch.compile the centred bf16 forward on CPU (~2x faster than eager; the first forward
    # compiles: measured 110-140 s on 2 cores with no cache, 13-30 s from the cache).
    compile: bool = True
    # 0 = auto: 8 on CUDA (batches raise GPU throughput); 1 on CPU, where a batch of n takes n
    # times as long and only delays its first member (measured: same throughput, worse p99).
    max_batch: int = 0
    max_wait_ms: float = 0.0
    max_queue: int = 32
    warmup_runs: int = 2
    # This many failed forward passes in a row after a good warm-up mark the runtime failed (see
    # ModelRuntime._after_batch); 0 never does.
    max_failed_batches: int = 3


def _build_predictor(spec: ModelSpec, path: Path, sha256: str, device: torch.device,
                     options: RuntimeOptions, engine: str, precision: str) -> Predictor:
    if engine == "onnxruntime":
        model = onnx_model_bytes(lambda: build_model(spec, path), spec.input_size,
                                 options.cache_dir, sha256)
        return OnnxPredictor(model, precision)
    if precision not in LOW_PRECISIONS:
        return TorchPredictor(build_model(spec, path), device, precision)
    compiled = options.compile and device.type == "cpu"  # CUDA's compile path is unmeasured
    if compiled and options.cache_dir:
        _keep_compiled_kernels_in(Path(options.cache_dir) / "inductor")
    return TorchPredictor(build_model(spec, path), device, precision,
                          calibration=torch.from_numpy(calibration_input(spec)), compile=compiled,
                          check=torch.from_numpy(calibration_input(spec, seed=1)))


def _keep_compiled_kernels_in(folder: Path) -> None:
    """torch.compile's kernels go to `folder` (next to the ONNX exports, so they survive restarts
    where that cache is a volume), unless TORCHINDUCTOR_CACHE_DIR is set or `folder` is not
    writable (then inductor's default, a folder in /tmp, serves)."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if writable:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # inductor reads it when it compiles
    else:
        log.warning("cannot keep compiled kernels in %s (not writable); using inductor's default",
                    folder)


def _load_predictors(spec: ModelSpec, path: Path, sha256: str, device: torch.device,
                     options: RuntimeOptions) -> list[Predictor]:
    """The predictors to choose from at warm-up (engine.candidates). Under `auto`, a reduced
    precision whose masks disagree with fp32 (engine.MIN_AUTO_IOU, MAX_AUTO_MAD) is dropped with
    a warning; if none is left, fp32 runs."""
    loaded: list[Predictor] = []
    for engine, precision in candidates(options.engine, options.precision, device):
        predictor = _build_predictor(spec, path, sha256, device, options, engine, precision)
        agreement = getattr(predictor, "agreement", None)
        if options.precision == "auto" and agreement is not None:
            iou, mad = agreement
            if iou < MIN_AUTO_IOU or mad > MAX_AUTO_MAD:
                log.warning("%s on this machine moves %s's check mask (IoU %.4f, MAD %.2f/255 "
                            "against fp32): not using it", precision, spec.name, iou, mad)
                continue
        loaded.append(predictor)
    if not loaded:
        log.warning("running fp32 instead")
        engine = choose_engine(options.engine, device, "fp32")
        loaded.append(_build_predictor(spec, path, sha256, device, options, engine, "fp32"))
    return loaded


RACE_ROUNDS = 3  # timed forwards per candidate at warm-up, alternating (after an untimed first)


class ModelRuntime:
    def __init__(self, spec: ModelSpec, weights_path: Path, predictor: Predictor,
                 options: RuntimeOptions,
                 weights_sha256: str | None = None, rivals: tuple[Predictor, ...] = (),
                 load_seconds: float | None = None):
        """`rivals`: other predictors for the same network; warm-up times them all against
        `predictor` and keeps the fastest (engine.candidates). `load_seconds`: what loading took
        (load measures it; reported to the metrics)."""
        self.spec = spec
        self.weights_path = weights_path
        self.predictor: Predictor = predictor
        self._rivals = list(rivals)
        self.engine_timings: dict[str, float] | None = None  # ms per candidate, if there was a race
        self.compile_seconds: float | None = None  # the first forward of a compiled predictor
        self.cpu_amx = cpu_has_amx()  # read once: /model-info is asked often
        self.load_seconds = load_seconds
        self._batch_observer: Callable[[int], None] | None = None
        self.options = options
        self.weights_sha256 = weights_sha256 or file_digest(weights_path)
        self.warmup_seconds: float | None = None
        self.error: str | None = None  # why the runtime failed; it then never becomes ready
        self._ready = threading.Event()
        self._failure_lock = threading.Lock()
        self._failure_callbacks: list[Callable[[str], None]] = []
        self.max_batch = options.max_batch or (8 if predictor.device.type == "cuda" else 1)
        self._failed_batches = 0  # in a row; only the batcher's thread touches it
        self.batcher = DynamicBatcher(self._forward, max_batch=self.max_batch,
                                      max_wait_s=options.max_wait_ms / 1000,
                                      max_queue=options.max_queue, on_batch=self._after_batch)

    @classmethod
    def load(cls, options: RuntimeOptions) -> ModelRuntime:
        """Resolve and strictly load the weights, and put the network on its device.

        Raises WeightsError (with the path and the fetch command) or UnknownModel.
        """
        if is_custom_model(options.model):
            return cls._load_custom(options)
        spec = get_spec(options.model)
        path = resolve_weights(spec, options.models_dir, options.weights)
        if path.suffix.lower() == ".onnx":  # an ONNX export: imported (and cached) first
            from .onnx_import import imported_weights

            path = imported_weights(path, spec, options.cache_dir)
        started = time.perf_counter()
        sha256 = file_digest(path)
        device = choose_device(options.device)
        predictor, *rivals = _load_predictors(spec, path, sha256, device, options)
        release_free_memory()  # the PyTorch copy and the export are garbage now
        runtime = cls(spec, path, predictor, options, sha256, tuple(rivals),
                      round(time.perf_counter() - started, 3))
        log.info("loaded %s (%s) from %s (sha256 %s) on %s (AMX: %s) with %s in %.2f s%s",
                 spec.name, spec.architecture, path, sha256, describe_device(device),
                 "yes" if runtime.cpu_amx else "no",
                 " or ".join(_label(p) for p in (predictor, *rivals)),
                 runtime.load_seconds, "; warm-up times them" if rivals else "")
        return runtime

    @classmethod
    def _load_custom(cls, options: RuntimeOptions) -> ModelRuntime:
        """A custom ONNX model (custom.py): its description read and checked, ONNX Runtime fp32."""
        path = Path(options.model)
        spec, output = read_description(path)
        if options.precision not in ("auto", "fp32") or options.engine == "torch":
            raise CustomModelError(f"custom ONNX models run on ONNX Runtime in fp32; unset "
                                   f"U2NET_ENGINE and U2NET_PRECISION for {path.name}")
        started = time.perf_counter()
        predictor = CustomOnnxPredictor(path, spec, output, choose_device(options.device))
        sha256 = file_digest(path)
        runtime = cls(spec, path, predictor, options, sha256,
                      load_seconds=round(time.perf_counter() - started, 3))
        log.info("loaded custom model %s from %s (sha256 %s) on %s with ONNX Runtime (%s) in "
                 "%.2f s", spec.name, path, sha256, describe_device(predictor.device),
                 predictor.provider, runtime.load_seconds)
        return runtime

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call `callback(error)` when the runtime fails (its warm-up, or forward passes again and
        again afterwards), or at once if it already has."""
        with self._failure_lock:
            if self.error is None:
                self._failure_callbacks.append(callback)
                return
        callback(self.error)

    def start(self, background: bool = True, then: Callable[[], None] | None = None) -> None:
        """Warm the network up, run `then` (a caller's own warm-up), and only then report ready."""
        if background:
            threading.Thread(target=self._warm_up, args=(then,), name="u2net-warmup",
                             daemon=True).start()
        else:
            self._warm_up(then)

    def _warm_up(self, then: Callable[[], None] | None = None) -> None:
        try:
            started = time.perf_counter()
            size = self.spec.input_size
            dummy = np.zeros((size, size, 3), dtype=np.uint8)
            dummy[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 200
            # On the batcher's thread: the thread that will serve (see batching.py on cuDNN).
            self.batcher.call(lambda: self._warm_network(to_model_input(dummy, self.spec)))
            for _ in range(self.options.warmup_runs):  # 0: none, the first image pays instead
                self.mask_for(dummy)  # the whole path: resize, batcher, upsample
            if then is not None:
                then()
            self.warmup_seconds = time.perf_counter() - started
            release_free_memory()
            self._ready.set()
            log.info("model warm in %.2f s; ready", self.warmup_seconds)
        except Exception as exc:
            log.exception("warm-up failed; the model will never report ready")
            self._fail(f"warm-up failed: {exc}")

    def _warm_network(self, x: np.ndarray) -> None:
        """Everything warm-up asks of the network itself, on the batcher's thread: compiling and
        racing the candidates, then, where the first forward of a shape is slow (cuDNN times its
        algorithms once per shape and thread in benchmark mode; torch.compile compiles once per
        shape), one forward of `x` at every batch size from 2 up to what the batcher can form, so
        that no request pays. With warmup_runs 0 (every job: `bgremove`, library sessions) that
        sweep is left out too: a batch size is tuned when it first occurs, and sizes a job never
        forms are never tuned (on an H200 the sweep took 40 s for U2NET's 8 sizes)."""
        if self._rivals or getattr(self.predictor, "compiled", False):
            calibration = calibration_input(self.spec)  # made once: an FFT per channel
            self._first_forwards(calibration)
            if self._rivals:
                self._keep_fastest(calibration)
        # The race above may have swapped the predictor: ask the one that will serve.
        cuda = self.predictor.device.type == "cuda"
        sweep = self.options.warmup_runs > 0
        if sweep and (cuda or getattr(self.predictor, "compiled", False)):
            for n in range(2, self.max_batch + 1):  # batch 1: warm-up's mask_for, next
                self.predictor(np.stack([x] * n))
        if cuda:
            torch.cuda.synchronize()

    def _first_forwards(self, x: np.ndarray) -> None:
        """One untimed forward of `x` per candidate: a compiled one compiles here (measured), or
        runs eagerly from now on if compiling fails."""
        for predictor in (self.predictor, *self._rivals):
            started = time.perf_counter()
            try:
                predictor(x)
            except Exception as exc:
                if not isinstance(predictor, TorchPredictor) or not predictor.compiled:
                    raise
                log.warning("torch.compile failed (%s: %s); running %s eagerly",
                            type(exc).__name__, str(exc).strip()[:300], _label(predictor))
                predictor.stop_compiling()
                predictor(x)
            if getattr(predictor, "compiled", False):
                self.compile_seconds = round(time.perf_counter() - started, 2)
                log.info("%s compiled in %.1f s", _label(predictor), self.compile_seconds)

    def _keep_fastest(self, x: np.ndarray) -> None:
        """Time every candidate on `x`, alternating (a shared machine's speed drifts), and keep
        the one with the lowest median."""
        contenders = [self.predictor, *self._rivals]
        times: list[list[float]] = [[] for _ in contenders]
        for _ in range(RACE_ROUNDS):
            for predictor, runs in zip(contenders, times, strict=True):
                started = time.perf_counter()
                predictor(x)
                runs.append((time.perf_counter() - started) * 1e3)
        medians = [float(np.median(runs)) for runs in times]
        self.engine_timings = {_label(p): round(ms, 1) for p, ms in zip(contenders, medians,
                                                                        strict=True)}
        self.predictor = contenders[int(np.argmin(medians))]
        self._rivals = []
        log.info("forward at batch 1: %s; running %s",
                 ", ".join(f"{k} {v:.0f} ms" for k, v in self.engine_timings.items()),
                 _label(self.predictor))

    def set_batch_observer(self, observe: Callable[[int], None] | None) -> None:
        """`observe(n)` hears the size of every forward pass from now on (metrics)."""
        self._batch_observer = observe

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self._batch_observer is not None:
            self._batch_observer(len(batch))
        return self.predictor(batch)

    def _after_batch(self, error: BaseException | None) -> None:
        """Count failed forward passes in a row; past the limit, the runtime has failed.

        The network's input is always (n, 3, 320, 320) with n up to max_batch, and warm-up ran
        that shape (on CUDA every n), so forward passes that keep failing after a good warm-up
        mean a broken device (a sticky CUDA error, a lost GPU), not a bad request. Reporting that
        (/health 503, and under gunicorn an exit) lets the orchestrator restart the process.
        """
        if error is None:
            self._failed_batches = 0
            return
        self._failed_batches += 1
        limit = self.options.max_failed_batches
        if limit and self._failed_batches >= limit and self.ready:
            self._fail(f"{self._failed_batches} forward passes failed in a row, the last with: "
                       f"{error}")

    def _fail(self, error: str) -> None:
        """Mark the runtime failed for good and tell whoever registered with on_failure."""
        with self._failure_lock:
            if self.error is not None:
                return
            self.error = error
            self._ready.clear()
            callbacks = list(self._failure_callbacks)
        log.error("model runtime failed: %s", error)
        for callback in callbacks:
            callback(error)

    def close(self) -> None:
        self.batcher.close()

    # -- inference -----------------------------------------------------------------------------

    def mask_for(self, rgb: np.ndarray, timeout: float | None = None,
                 timings: dict | None = None) -> np.ndarray:
        """HxWx3 uint8 RGB -> HxW uint8 mask (0 background .. 255 subject).

        Pre- and post-processing run in the caller's thread; only the forward pass goes through
        the batcher. Raises batching.QueueFull when too much work is waiting. `timings`, when
        given, receives the milliseconds of resize, forward (queue wait included) and upsample.
        """
        t0 = time.perf_counter()
        x = to_model_input(rgb, self.spec)
        t1 = time.perf_counter()
        try:
            pred = self.batcher.run(x, timeout=timeout)
        except FutureTimeout:
            raise TimedOut(f"the network did not answer within {timeout} s") from None
        t2 = time.perf_counter()
        mask = mask_to_size(pred, rgb.shape[:2])
        if timings is not None:
            timings.update(resize=round((t1 - t0) * 1e3, 1), forward=round((t2 - t1) * 1e3, 1),
                           upsample=round((time.perf_counter() - t2) * 1e3, 1))
        return mask

    def info(self) -> dict:
        return {
            "model": self.spec.name,
            "architecture": self.spec.architecture,
            "description": self.spec.description,
            "weights_file": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
            "device": describe_device(self.predictor.device),
            # bf16 matrix units (Intel AMX), which decide whether auto considers bf16 on CPU
            "cpu_amx": self.cpu_amx,
            "engine": self.predictor.engine,
            # ONNX Runtime's execution provider that runs it (CPU or CUDA), where ORT runs it
            "execution_provider": getattr(self.predictor, "provider", None),
            "precision": self.predictor.precision,
            "precision_requested": self.options.precision,
            # a reduced precision's mask against fp32 at load (IoU, MAD /255), if any
            "precision_check": _agreement(self.predictor),
            "compiled": getattr(self.predictor, "compiled", False),
            "compile_seconds": self.compile_seconds,
            # auto's timing of its candidates at warm-up (ms per forward), if there were several
            "engine_timings": self.engine_timings,
            "input_size": self.spec.input_size,
            "max_batch_size": self.max_batch,
            "max_batch_wait_ms": self.options.max_wait_ms,
            "max_queue": self.options.max_queue,
            "ready": self.ready,
            "warmup_seconds": self.warmup_seconds,
            "error": self.error,  # why it failed (then it never becomes ready again)
        }


def _label(predictor: Predictor) -> str:
    return f"{predictor.engine} {predictor.precision}"


def _agreement(predictor: Predictor) -> dict | None:
    agreement = getattr(predictor, "agreement", None)
    if agreement is None:
        return None
    return {"iou_vs_fp32": round(agreement[0], 5), "mad_vs_fp32": round(agreement[1], 3)}
