"""The Python API: the service's cut-outs in your own code, through the same pipeline.

    from bgservice import remove, new_session

    cutout = remove("photo.jpg")                       # a path: a Pillow image (RGBA)
    png = remove(open("photo.jpg", "rb").read())       # bytes: encoded bytes (PNG by default)
    rgba = remove(numpy_rgb_array, mode="soft")        # an array: an H x W x 4 array
    image = remove(pil_image, bg_color="white")        # a Pillow image: a Pillow image (RGB)
    scene = remove("photo.jpg", bg_image="beach.jpg")  # on a new background (or bg_blur=20)

    with new_session("u2netp", weights="saved_models/u2netp/u2netp.pth") as session:
        for path in paths:
            session.remove(path, crop=True, padding="10%").save(...)

`remove` keeps one session per model, made on first use (thread-safe: concurrent first calls make
one), from the same settings as the service (U2NET_MODEL, U2NET_MODELS_DIR, U2NET_WEIGHTS,
U2NET_DEVICE, ...; precision `auto` runs exact fp32 here, as the CLI does for short runs: pass
`precision="auto"` to `new_session` to let a long job compile bf16 on a CPU with AMX). Options are
the service's, with its checks and messages (bgservice.fields): a bad one raises BadRequest.
"""
from __future__ import annotations

import atexit
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import BadRequest
from .fields import MODEL, OPTIONS, refuse_unknown
from .imageio import DecodedImage, decode_image, from_array, from_pil
from .options import OutputOptions, compose_output, encode_output, parse_options

OUTPUT_KINDS = ("pil", "array", "bytes")


def _options(default_mode: str, given: dict[str, Any]) -> OutputOptions:
    """Keyword options checked as the upload endpoint checks its fields (one set of rules)."""
    # a session runs one model: `model` belongs to remove() and new_session(), not here
    refuse_unknown(given, (f.name for f in OPTIONS if f is not MODEL), "option")

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, tuple | list):  # a colour as (r, g, b) or (r, g, b, a)
            if len(value) == 4 and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
                return "#" + "".join(f"{v:02x}" for v in value)
            return ",".join(str(v) for v in value)
        return str(value)

    return parse_options({k: text(v) for k, v in given.items() if v is not None}, default_mode)


class Session:
    """One loaded model (its first image warms it up) and the pipeline around it; thread-safe.
    Close it (or use `with`) to free the model; `remove`'s own sessions close at exit."""

    def __init__(self, service):
        self._service = service
        self.model = service.runtime.spec.name

    def remove(self, image: str | os.PathLike | bytes | Image.Image | np.ndarray, *,
               output: str | None = None, **options: Any):
        """The cut-out of `image`, of the kind given (a path gives a Pillow image), or of
        `output` ("pil", "array" or "bytes"). Options: mode, threshold, only_mask, bg_color,
        bg_image (a path, bytes, a Pillow image or an array), bg_fit, bg_blur, crop, padding,
        format (for bytes), subject_filter, as the service takes them."""
        remover = self._service.remover
        settings = self._service.settings
        picture = options.pop("bg_image", None)
        chosen = _options(settings.default_mode, options)
        decoded, kind = _decode(image, settings.max_image_pixels)
        if picture is not None:  # any kind `image` may be
            chosen = replace(chosen, bg_image=_decode(picture, settings.max_image_pixels)[0])
        if output is not None and output not in OUTPUT_KINDS:
            raise BadRequest(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {output!r}")
        runtime = remover.runtime
        mask = remover.mask(decoded, runtime)
        pixels = compose_output(decoded, mask, chosen, refine=remover.refines[runtime.spec.name],
                                threshold_edges=remover.threshold_edges).pixels
        kind = output or kind
        if kind == "bytes":
            return encode_output(pixels, chosen.output_format)
        return Image.fromarray(pixels) if kind == "pil" else pixels

    def close(self) -> None:
        self._service.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _decode(image: Any, max_pixels: int) -> tuple[DecodedImage, str]:
    """(the decoded image, the kind to return) for any input the API takes."""
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_image(bytes(image), max_pixels), "bytes"
    if isinstance(image, Image.Image):
        return from_pil(image), "pil"
    if isinstance(image, np.ndarray):
        return from_array(image), "array"
    if isinstance(image, str | os.PathLike):
        return decode_image(Path(image).read_bytes(), max_pixels), "pil"
    raise TypeError(f"remove() takes a path, bytes, a Pillow image or a numpy array, not "
                    f"{type(image).__name__}")


def new_session(model: str | None = None, *, weights: str | os.PathLike | None = None,
                device: str | None = None, precision: str | None = None,
                settings=None) -> Session:
    """A session for `model` (default: the settings' model, U2NET_MODEL or u2net_human_seg),
    loaded. `weights`, `device` ("cpu", "cuda", "auto") and `precision` override the settings
    (`settings`: a GlobalVariables.Settings; default: from the environment)."""
    from GlobalVariables import Settings

    from .service import SHORT_JOB_IMAGES, assemble_job

    changes: dict[str, Any] = {}
    if model is not None:  # another model: not U2NET_WEIGHTS, which are the default model's
        changes.update(model=model, weights=None)
    if weights is not None:
        changes["weights"] = Path(weights)
    if device is not None:
        changes["device"] = device
    if precision is not None:
        changes["precision"] = precision
    # A session is a short job (auto runs fp32) unless the caller asks for auto itself: then
    # it is a long one, and auto may race and compile bf16.
    images = SHORT_JOB_IMAGES if precision == "auto" else 0
    service = assemble_job(settings or Settings.from_env(), images, **changes)
    return Session(service)


_sessions: dict[str | None, Session] = {}
_sessions_lock = threading.Lock()


def remove(image: str | os.PathLike | bytes | Image.Image | np.ndarray, *,
           model: str | None = None, output: str | None = None, **options: Any):
    """The cut-out of `image` with the default session for `model` (made on first use), of the
    kind given (a path gives a Pillow image) or of `output`; see Session.remove."""
    with _sessions_lock:  # one session per model, however many threads ask at once
        session = _sessions.get(model)
        if session is None:
            session = _sessions[model] = new_session(model)
    return session.remove(image, output=output, **options)


@atexit.register
def _close_sessions() -> None:
    with _sessions_lock:
        for session in _sessions.values():
            session.close()
        _sessions.clear()
