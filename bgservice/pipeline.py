"""The one cut-out pipeline: read, decode, mask, post-process, encode, write atomically."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import cv2
import numpy as np
from u2net.runtime import ModelRuntime, Overloaded, TimedOut

import Image_PostProcesser as post
from GlobalVariables import Settings

from . import telemetry
from .errors import BadRequest, Unavailable
from .fields import BG_IMAGE_PATH, shown
from .imageio import (
    PILLOW_BLOCK_CACHE_BYTES,
    DecodedImage,
    decode_image,
    decode_opened,
    open_image,
)
from .limits import Admission, MemoryBudget, Ticket
from .options import OutputOptions, Rendered, compose_output, encode_output
from .paths import SharedRoot
from .png import encode_png

log = logging.getLogger(__name__)
BG_IMAGE_WHAT = "the background image (bg_image)"


class Stopwatch:
    """Milliseconds per named stage, for the response and the logs (a stage entered twice adds
    up: the header read and the pixel decode are both "decode")."""

    def __init__(self):
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            self.ms[name] = round(self.ms.get(name, 0.0) + elapsed, 1)


# Peak resident bytes per pixel of one request above what the worker held before it, by output
# mode, measured with bench/memory.py (whole request: decode, mask, compose, encode; 12 and 24 MP
# photos: 17.1, 19.6, 33.1; README "Memory"), rounded up. A colour background adds its blend's
# float arrays (threshold+bg measured 45.1).
BYTES_PER_PIXEL = {"threshold": 18, "soft": 20, "refine": 34}
BG_COLOR_BYTES_PER_PIXEL = 28
# A picture behind the subject (bg_image or bg_blur): the fitted or blurred picture and the
# blend, per output pixel; and the background picture's own decode, per pixel of it (Pillow's
# copy and ours, RGBA at most). Measured with bench/memory.py at 12 MP, whole request: threshold
# 17.1, +blur 30.1, +image 31.6 (of which the picture ~3); refine 27.4, +blur 30.0, +image 33.1.
BACKDROP_BYTES_PER_PIXEL = 16
BG_IMAGE_BYTES_PER_PIXEL = 8


def memory_needed(pixels: int, options: OutputOptions, source_bytes: int,
                  threshold_edges: str = "hard", bg_pixels: int = 0) -> int:
    """The bytes one request reserves from the worker's memory budget (`bg_pixels`: of the
    background picture, when one comes as bytes)."""
    refined = options.mode == "threshold" and threshold_edges == "refined"  # refine's work
    per_pixel = BYTES_PER_PIXEL["refine" if refined else options.mode]
    flattened = options.bg_color is not None or options.output_format == "jpg"
    if options.backdrop:
        per_pixel += BACKDROP_BYTES_PER_PIXEL
    elif flattened and not options.only_mask:
        per_pixel += BG_COLOR_BYTES_PER_PIXEL
    background = 0
    if isinstance(options.bg_image, bytes) and not options.only_mask:
        background = bg_pixels * BG_IMAGE_BYTES_PER_PIXEL + len(options.bg_image)
    return pixels * per_pixel + source_bytes + background


@dataclass(frozen=True)
class PathJob:
    """One website call: paths relative to the shared root, and what to make."""

    source: str
    output: str
    options: OutputOptions
    background: str | None = None  # bgImagePath: a picture to put behind the subject


@dataclass(frozen=True)
class PathResult:
    job: PathJob
    width: int
    height: int
    model: str
    bytes: int  # of the file written
    timings_ms: dict


class BackgroundRemover:
    def __init__(self, runtimes: ModelRuntime | Sequence[ModelRuntime], *, max_image_pixels: int,
                 max_source_bytes: int, request_timeout_s: float,
                 memory_budget_bytes: int = Settings.memory_budget_bytes,
                 memory_wait_s: float = Settings.memory_wait_s,
                 threshold_edges: str = Settings.threshold_edges):
        """`runtimes`: the models this worker serves, by name (ModelRuntime.spec.name); the first
        is the default for requests that name none."""
        served = [runtimes] if isinstance(runtimes, ModelRuntime) else list(runtimes)
        self.runtimes = {rt.spec.name: rt for rt in served}
        if len(self.runtimes) != len(served):
            names = [rt.spec.name for rt in served]
            raise ValueError(f"two served models share a name: {', '.join(names)}")
        self.runtime = served[0]
        self.threshold_edges = threshold_edges
        # each model's own refine values
        self.refines = {name: post.refine_params(rt.spec.refine) for name, rt in self.runtimes.items()}
        self.max_image_pixels = max_image_pixels
        self.max_source_bytes = max_source_bytes
        self.request_timeout_s = request_timeout_s
        # Each network's queue plus one batch: admitted requests can never overflow the queues.
        self.admission = Admission(sum(rt.options.max_queue + rt.max_batch for rt in served))
        self.memory = MemoryBudget(memory_budget_bytes, memory_wait_s,
                                   set_aside=PILLOW_BLOCK_CACHE_BYTES)
        # Set on SIGTERM (gunicorn_conf.py): the worker finishes the requests it holds and takes
        # no new one; /ready says so at once, so that Kubernetes stops routing here (API.py).
        self.draining = threading.Event()

    @property
    def refine(self) -> post.RefineParams:
        """The default model's refine values."""
        return self.refines[self.runtime.spec.name]

    @classmethod
    def from_settings(cls, runtimes: ModelRuntime | Sequence[ModelRuntime],
                      settings: Settings) -> BackgroundRemover:
        """The remover for `settings` (GlobalVariables.Settings): the service's and the CLI's."""
        return cls(runtimes, max_image_pixels=settings.max_image_pixels,
                   max_source_bytes=settings.max_source_bytes,
                   request_timeout_s=settings.request_timeout_s,
                   memory_budget_bytes=settings.memory_budget_bytes,
                   memory_wait_s=settings.memory_wait_s,
                   threshold_edges=settings.threshold_edges)

    def limits_info(self) -> dict:
        """What this worker takes on at once, and how much of it is taken now (/model-info)."""
        return {"admitted": self.admission.admitted, "max_admitted": self.admission.limit,
                "memory_budget_mb": self.memory.total >> 20,
                "memory_set_aside_mb": self.memory.set_aside >> 20,  # Pillow's block cache
                "memory_reserved_mb": round(self.memory.used / (1 << 20), 1),
                "memory_peak_reserved_mb": round(self.memory.peak / (1 << 20), 1)}

    def runtime_for(self, model: str | None) -> ModelRuntime:
        """The served model a request names (None: the default); BadRequest for any other."""
        if model is None:
            return self.runtime
        try:
            return self.runtimes[model]
        except KeyError:
            raise BadRequest(f"unknown model {shown(model)}; this service serves: "
                             f"{', '.join(self.runtimes)}") from None

    def check_ready(self, runtime: ModelRuntime | None = None) -> None:
        """Unavailable unless `runtime` (default: every served model) is ready."""
        for rt in [runtime] if runtime else self.runtimes.values():
            if rt.error:
                raise Unavailable(f"the model {rt.spec.name} has failed ({rt.error}); this worker "
                                  "will not recover and should be restarted: see the service log",
                                  retry_after=30, reason="failed")
            if not rt.ready:
                raise Unavailable(f"the model {rt.spec.name} is still loading; retry shortly",
                                  retry_after=5, reason="not_ready")

    def mask(self, image: DecodedImage, runtime: ModelRuntime | None = None,
             timings: dict | None = None) -> np.ndarray:
        """The 8-bit mask of `runtime` (default: the default model) at the image's size;
        Unavailable when overloaded."""
        runtime = runtime or self.runtime
        depth = telemetry.QUEUE_DEPTH.labels(runtime.spec.name)
        depth.inc()
        try:
            return runtime.mask_for(image.rgb, timeout=self.request_timeout_s, timings=timings)
        except Overloaded as exc:
            raise Unavailable(f"the service is busy: {exc}; retry shortly", retry_after=2,
                              reason="queue_full") from None
        except TimedOut:
            raise Unavailable("the model did not answer in time; retry shortly", retry_after=5,
                              reason="timeout") from None
        finally:
            depth.dec()

    def warm_up(self, width: int = 1920, height: int = 1080, model: str | None = None) -> None:
        """Run a synthetic photo through every stage but the write, so that the first real
        request finds codecs, thread pools and the allocator warm (measured: without this the
        first 1080p request after ready took 1.5x a steady one). Scaled down to MAX_IMAGE_PIXELS
        where that is lower, or the limit would refuse the warm-up and the service never start."""
        scale = min(1.0, (self.max_image_pixels / (width * height)) ** 0.5)
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
        rng = np.random.default_rng(0)
        rgb = cv2.resize(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8), (width, height),
                         interpolation=cv2.INTER_CUBIC)
        _, jpeg = cv2.imencode(".jpg", rgb)
        image = decode_image(jpeg.tobytes(), self.max_image_pixels)
        runtime = self.runtime_for(model)
        mask = self.mask(image, runtime)
        for options in (OutputOptions(mode="threshold", threshold=0), OutputOptions(mode="refine")):
            pixels = compose_output(image, mask, options, refine=self.refines[runtime.spec.name],
                                    threshold_edges=self.threshold_edges)[0]
            encode_output(pixels, options.output_format)

    def process(self, data: bytes, options: OutputOptions, want_bbox: bool = False,
                watch: Stopwatch | None = None, want_mask: bool = False) -> Rendered:
        """Image bytes -> the rendered output for `options` (the one pipeline for every caller).
        `want_bbox`: also find the subject's bounding box (the upload endpoint reports it);
        `want_mask`: also the mask as a PNG, cropped as the output (Rendered.mask)."""
        runtime = self.runtime_for(options.model)
        self.check_ready(runtime)
        with self.admission.ticket() as ticket:
            return self._render(runtime, data, options, ticket, want_bbox, watch or Stopwatch(),
                                want_mask=want_mask)

    def _render(self, runtime: ModelRuntime, data: bytes, options: OutputOptions, ticket: Ticket,
                want_bbox: bool, watch: Stopwatch,
                deliver: Callable[[Rendered], None] | None = None,
                want_mask: bool = False) -> Rendered:
        """Decode, mask, compose, encode (and `deliver`) within a memory reservation sized from
        the header, before any pixel is decoded; `ticket` is released once the mask is back."""
        with watch.stage("decode"):
            opened = open_image(data, self.max_image_pixels)
            behind = self._open_background(options)
        width, height = opened.size
        bg_pixels = behind.size[0] * behind.size[1] if behind is not None else 0
        with self.memory.reserve(memory_needed(width * height, options, len(data),
                                               self.threshold_edges, bg_pixels)):
            with watch.stage("decode"):
                image = decode_opened(opened)
                del opened  # Pillow's copy of the pixels goes now, not at the end of the request
                if behind is not None:
                    options = replace(options, bg_image=decode_opened(behind, BG_IMAGE_WHAT))
                    del behind
            log.debug("decoded a %s image, mode %s, %dx%d", image.format, image.mode, width, height)
            mask = self.mask(image, runtime, watch.ms)  # resize, forward, upsample
            ticket.release()
            with watch.stage("compose"):
                pixels, bbox, mask = compose_output(image, mask, options, want_bbox,
                                                    self.refines[runtime.spec.name],
                                                    self.threshold_edges)
            with watch.stage("encode"):
                encoded = encode_output(pixels, options.output_format)
                mask_png = encode_png(np.ascontiguousarray(mask)) if want_mask else None
            del mask
            rendered = Rendered(encoded, options.content_type, pixels.shape[1], pixels.shape[0],
                                width, height, bbox, watch.ms, runtime.spec.name, mask_png)
            del pixels, image
            if deliver is not None:
                deliver(rendered)
        telemetry.cut_out(runtime.spec.name, width * height, watch.ms)
        return rendered

    def _open_background(self, options: OutputOptions):
        """The background picture's header (open_image), when it came as bytes and will be used;
        None otherwise. Checked like the source: format, pixel count."""
        if not isinstance(options.bg_image, bytes) or options.only_mask:
            return None
        return open_image(options.bg_image, self.max_image_pixels, BG_IMAGE_WHAT)

    def remove_paths(self, root: SharedRoot, job: PathJob) -> PathResult:
        """The website's call: cut out `job.source` into `job.output` (both relative to `root`)."""
        src_path = root.parse(job.source, "sourceImagePath")
        dst_path = root.parse(job.output, "outputImagePath")
        runtime = self.runtime_for(job.options.model)
        self.check_ready(runtime)  # before reading: a cold model answers 503 without touching the file
        watch = Stopwatch()
        bg_path = root.parse(job.background, BG_IMAGE_PATH) if job.background is not None else None
        with self.admission.ticket() as ticket:  # a busy service refuses before reading
            with watch.stage("read"):
                src = root.read_source(src_path, self.max_source_bytes)
                options = job.options
                if bg_path is not None:  # read as the source is: inside the root, no symlinks
                    behind = root.read_source(bg_path, self.max_source_bytes)
                    options = replace(options, bg_image=behind.data)
            root.check_output(dst_path, src.identity)  # before the work; nothing is created yet

            def write(rendered: Rendered) -> None:
                with watch.stage("write"):
                    root.write_output(dst_path, rendered.data, src.identity)

            rendered = self._render(runtime, src.data, options, ticket, False, watch,
                                    deliver=write)
        return PathResult(job, rendered.width, rendered.height, rendered.model,
                          len(rendered.data), watch.ms)
