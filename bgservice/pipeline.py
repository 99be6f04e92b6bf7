"""The one cut-out pipeline: read, decode, mask, post-process, encode, write atomically."""
from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager

import cv2
import numpy as np
from u2net.batching import QueueFull
from u2net.runtime import ModelRuntime

from .errors import Unavailable
from .imageio import DecodedImage, decode_image
from .options import OutputOptions, Rendered, compose_output, encode_output
from .paths import SharedRoot


class Stopwatch:
    """Milliseconds per named stage, for the response and the logs."""

    def __init__(self):
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - started) * 1000, 1)


class BackgroundRemover:
    def __init__(self, runtime: ModelRuntime, *, max_image_pixels: int, max_source_bytes: int,
                 request_timeout_s: float):
        self.runtime = runtime
        self.max_image_pixels = max_image_pixels
        self.max_source_bytes = max_source_bytes
        self.request_timeout_s = request_timeout_s

    def check_ready(self) -> None:
        if self.runtime.error:
            raise Unavailable(f"the model has failed ({self.runtime.error}); this worker will "
                              "not recover and should be restarted: see the service log",
                              retry_after=30)
        if not self.runtime.ready:
            raise Unavailable("the model is still loading; retry shortly", retry_after=5)

    def mask(self, image: DecodedImage, timings: dict | None = None) -> np.ndarray:
        """The model's 8-bit mask at the image's size; Unavailable when overloaded."""
        try:
            return self.runtime.mask_for(image.rgb, timeout=self.request_timeout_s, timings=timings)
        except QueueFull as exc:
            raise Unavailable(f"the service is busy: {exc}; retry shortly", retry_after=2) from None
        except FutureTimeout:
            raise Unavailable("the model did not answer in time; retry shortly", retry_after=5) from None

    def warm_up(self, width: int = 1920, height: int = 1080) -> None:
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
        mask = self.mask(image)
        for options in (OutputOptions(mode="threshold", threshold=0), OutputOptions(mode="refine")):
            encode_output(compose_output(image, mask, options)[0], options.format)

    def process(self, data: bytes, options: OutputOptions, want_bbox: bool = False,
                watch: Stopwatch | None = None) -> Rendered:
        """Image bytes -> the rendered output for `options` (the one pipeline for every caller).
        `want_bbox`: also find the subject's bounding box (the upload endpoint reports it)."""
        self.check_ready()
        watch = watch or Stopwatch()
        with watch.stage("decode"):
            image = decode_image(data, self.max_image_pixels)
        mask = self.mask(image, watch.ms)  # resize, forward, upsample
        with watch.stage("compose"):
            pixels, bbox = compose_output(image, mask, options, want_bbox)
        with watch.stage("encode"):
            encoded = encode_output(pixels, options.format)
        width, height = image.size
        return Rendered(encoded, options.content_type, pixels.shape[1], pixels.shape[0],
                        width, height, bbox, watch.ms)

    def remove_paths(self, root: SharedRoot, source: str, output: str, mode: str,
                     threshold: int | None, subject_filter: bool = False) -> dict:
        """The website's call: cut out `source` into `output` (both relative to `root`)."""
        src_path = root.parse(source, "sourceImagePath")
        dst_path = root.parse(output, "outputImagePath")
        self.check_ready()  # before reading: a cold service answers 503 without touching the file
        watch = Stopwatch()
        with watch.stage("read"):
            src = root.read_source(src_path, self.max_source_bytes)
        root.check_output(dst_path, src.identity)  # before the work; nothing is created yet
        options = OutputOptions(mode=mode, threshold=threshold, subject_filter=subject_filter)
        rendered = self.process(src.data, options, watch=watch)
        with watch.stage("write"):
            root.write_output(dst_path, rendered.data, src.identity)
        return {
            "outputImagePath": output,
            "width": rendered.width,
            "height": rendered.height,
            "mode": mode,
            "threshold": threshold,
            "subjectFilter": subject_filter,
            "model": self.runtime.spec.name,
            "bytes": len(rendered.data),
            "timings_ms": watch.ms,
        }
