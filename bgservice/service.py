"""The service assembled in one place: settings -> shared root, model runtime, remover.

The HTTP app (API.create_app), the command line (bgremove) and the tests all build what they
serve with `assemble`, so the runtime and the remover are put together one way only.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from u2net.memory import limit_malloc_arenas
from u2net.registry import ModelLoadError
from u2net.runtime import ModelRuntime

from GlobalVariables import Settings, SettingsError

from . import telemetry
from .limits import MAX_JOB_IMAGES
from .paths import SharedRoot
from .pipeline import BackgroundRemover

log = logging.getLogger("u2net_service")


@dataclass(frozen=True)
class Service:
    settings: Settings
    root: SharedRoot | None  # None for the command line, which reads and writes local files
    runtimes: tuple[ModelRuntime, ...]  # every served model, the default first
    remover: BackgroundRemover

    @property
    def runtime(self) -> ModelRuntime:
        """The default model's runtime."""
        return self.runtimes[0]

    def close(self) -> None:
        for runtime in self.runtimes:
            runtime.close()


def open_shared_root(settings: Settings) -> SharedRoot:
    """The shared filesystem root; a local folder (created, and logged) when the variable is unset."""
    if not settings.fs_root_from_env:
        settings.fs_root.mkdir(parents=True, exist_ok=True)
        log.warning("OpenClone_OpenCloneFS is not set; using the local folder %s", settings.fs_root)
    elif not settings.fs_root.is_dir():
        raise SettingsError(f"OpenClone_OpenCloneFS={settings.fs_root} is not a directory")
    root = SharedRoot(settings.fs_root)
    log.info("shared filesystem root: %s", root.root)
    return root


def _measure(runtime: ModelRuntime) -> None:
    """The runtime's batch sizes go to the metrics."""
    histogram = telemetry.BATCH_SIZE.labels(runtime.spec.name)
    runtime.set_batch_observer(histogram.observe)


def _load_all(settings: Settings) -> tuple[list[ModelRuntime], BackgroundRemover]:
    """Every served model loaded, and the remover over them; ModelLoadError (logged, nothing
    left open) when one cannot be."""
    runtimes: list[ModelRuntime] = []
    try:
        for name, weights in settings.served_models:
            runtimes.append(ModelRuntime.load(settings.runtime_options(name, weights)))
        try:
            return runtimes, BackgroundRemover.from_settings(runtimes, settings)
        except ValueError as exc:  # two models with one name (a custom model's, say)
            raise ModelLoadError(str(exc)) from None
    except ModelLoadError as exc:
        log.error("refusing to start: %s", exc)
        for loaded in runtimes:
            loaded.close()
        raise


def _start(runtime: ModelRuntime, remover: BackgroundRemover, background: bool,
           warm_up_pipeline: bool) -> None:
    """Warm `runtime` up (and the pipeline with it, if asked), then report it to the metrics."""
    _measure(runtime)
    started = time.perf_counter()

    def warm() -> None:
        if warm_up_pipeline:
            remover.warm_up(model=runtime.spec.name)
        telemetry.model_ready(runtime.info(), runtime.load_seconds,
                              warmup_seconds=time.perf_counter() - started)

    runtime.start(background=background, then=warm)


def assemble(settings: Settings, runtime: ModelRuntime | Sequence[ModelRuntime] | None = None, *,
             shared_root: bool = True, background: bool = True,
             warm_up_pipeline: bool = True) -> Service:
    """The service for `settings`. Without `runtime`, every served model is loaded
    (Settings.served_models; ModelLoadError when one cannot be) and warmed up, each in a
    background thread unless `background` is off; given runtimes (one, or several with the
    default first) are used as they are (tests share one warm runtime). `warm_up_pipeline`: also
    run a synthetic photo through decode, post-processing and encode before reporting ready (a
    server's first request then finds them warm; a one-off command need not wait for that)."""
    limit_malloc_arenas()  # before the request threads exist: keeps RSS flat over time
    root = open_shared_root(settings) if shared_root else None
    if runtime is not None:
        given = (runtime,) if isinstance(runtime, ModelRuntime) else tuple(runtime)
        for loaded in given:
            _measure(loaded)
            if loaded.ready:
                telemetry.model_ready(loaded.info(), loaded.load_seconds)
        return Service(settings, root, given, BackgroundRemover.from_settings(given, settings))
    runtimes, remover = _load_all(settings)
    for loaded in runtimes:
        _start(loaded, remover, background, warm_up_pipeline)
    return Service(settings, root, tuple(runtimes), remover)


# Under U2NET_PRECISION=auto, a job with fewer images than this runs exact fp32 (ONNX Runtime)
# rather than timing centred bf16 against it: on a CPU with AMX, bf16 saves about 0.1-0.3 s per
# image (U2NETP-U2NET) but compiling costs 10-30 s from the cache and ~2 minutes without it.
SHORT_JOB_IMAGES = 100


def assemble_job(settings: Settings, images: int = 0, **changes) -> Service:
    """One model, loaded (its first image warms it up), with no shared root: for a command
    (`bgremove`) or the Python API. `changes` go onto the settings (model, weights, device,
    precision); only the first model of U2NET_MODELS is loaded; `images`: how many the job will
    process (SHORT_JOB_IMAGES)."""
    # No synthetic warm-up passes: a job's first image costs what they would have (measured on
    # `bgremove remove` of one photo with U2NETP, median of six runs: 3.8 s with the default two
    # passes, 2.8 s without). A job's images wait for room in the memory budget as long as it
    # takes (an hour at most: no client times out), and a server's small U2NET_MAX_QUEUE does
    # not refuse a job's own images (`bgremove remove --jobs`) as "busy".
    settings = settings.with_(**changes, more_models=(), warmup_runs=0, memory_wait_s=3600.0,
                              max_queue=max(settings.max_queue, MAX_JOB_IMAGES))
    if settings.precision == "auto" and images < SHORT_JOB_IMAGES:
        settings = settings.with_(precision="fp32")
    return assemble(settings, shared_root=False, background=False, warm_up_pipeline=False)
