"""What a caller can ask of a cut-out, parsed once for every entry point, and its rendering.

The upload endpoint (form fields or query string), the JSON calls and the command line all
resolve mode and threshold with `resolve_mode`, and every output goes through `compose_output`
and `encode_output`: there is one way from a mask to the bytes returned.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

import Image_PostProcesser as post

from .errors import BadRequest
from .imageio import DecodedImage, encode_webp
from .png import encode_png

FORMATS = {"png": "image/png", "webp": "image/webp"}
OPTION_NAMES = ("mode", "threshold", "only_mask", "bg_color", "crop", "padding", "format",
                "subject_filter")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
_HEX = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_RGB = re.compile(r"^([0-9]{1,3}) *, *([0-9]{1,3}) *, *([0-9]{1,3})$")
MAX_PADDING = 10_000


@dataclass(frozen=True)
class OutputOptions:
    mode: str = "refine"
    threshold: int | None = None
    only_mask: bool = False
    bg_color: tuple[int, int, int] | None = None
    crop: bool = False
    padding: int = 0
    format: str = "png"
    subject_filter: bool = False  # drop small disconnected regions from the mask first

    @property
    def content_type(self) -> str:
        return FORMATS[self.format]


@dataclass(frozen=True)
class Rendered:
    data: bytes
    content_type: str
    width: int  # of the returned image
    height: int
    source_width: int
    source_height: int
    bbox: tuple[int, int, int, int] | None  # subject box in the input image: x, y, w, h
    timings_ms: dict


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"'{name}' must be true or false, got {raw!r}"[:200])


def _int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer from {lo} to {hi}, got {raw!r}"[:200]) from None
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be an integer from {lo} to {hi}, got {value}")
    return value


def parse_color(raw: str) -> tuple[int, int, int]:
    """'#rrggbb', 'rgb' hex shorthand, or 'r,g,b' (0-255 each)."""
    text = raw.strip()
    match = _HEX.match(text)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    match = _RGB.match(text)  # ASCII digits only: str.isdigit() accepts '²', which int() refuses
    if match and all(int(p) <= 255 for p in match.groups()):
        return tuple(int(p) for p in match.groups())  # type: ignore[return-value]
    raise BadRequest(f"'bg_color' must be #rrggbb or r,g,b (0-255), got {raw!r}"[:200])


def resolve_mode(mode: object, threshold: int | None, default_mode: str) -> tuple[str, int | None]:
    """(mode, threshold) for every entry point: a threshold always means threshold mode (the
    website's requests keep their meaning); no mode and no threshold means the default mode;
    threshold mode without a threshold uses the OpenClone default. `threshold` is already a
    validated integer or None."""
    if mode is None:
        mode = "threshold" if threshold is not None else default_mode
    if not isinstance(mode, str) or mode not in post.MODES:
        raise BadRequest(f"'mode' must be one of {', '.join(post.MODES)}, got {mode!r}"[:200])
    if mode != "threshold":
        if threshold is not None:
            raise BadRequest(f"'threshold' applies to mode 'threshold' only, not {mode!r}")
        return mode, None
    return mode, post.DEFAULT_THRESHOLD if threshold is None else threshold


def parse_options(values: Mapping[str, str], default_mode: str) -> OutputOptions:
    """Options from strings (form fields, query string, command line). BadRequest on bad values.

    A threshold always means threshold mode, as in the JSON API."""
    # A multipart field without a name arrives under the key None: it is named '' in the error.
    unknown = sorted(str(k or "") for k in set(values) - set(OPTION_NAMES))
    if unknown:
        raise BadRequest(f"unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"expected {', '.join(OPTION_NAMES)}"[:300])
    raw_threshold = values.get("threshold")
    threshold = _int("threshold", raw_threshold, 0, 255) if raw_threshold else None
    mode, threshold = resolve_mode(values.get("mode") or None, threshold, default_mode)
    fmt = (values.get("format") or "png").lower()
    if fmt not in FORMATS:
        raise BadRequest(f"'format' must be one of {', '.join(FORMATS)}, got {fmt!r}"[:200])
    bg = values.get("bg_color")
    return OutputOptions(
        mode=mode, threshold=threshold,
        only_mask=_bool("only_mask", values.get("only_mask", "")),
        bg_color=parse_color(bg) if bg else None,
        crop=_bool("crop", values.get("crop", "")),
        padding=_int("padding", values["padding"], 0, MAX_PADDING) if values.get("padding") else 0,
        format=fmt,
        subject_filter=_bool("subject_filter", values.get("subject_filter", "")),
    )


def compose_output(image: DecodedImage, mask: np.ndarray, options: OutputOptions,
                   want_bbox: bool = False):
    """(pixels, subject bbox): the mask (optionally without its small regions) or the cut-out,
    optionally over a colour, optionally cropped to the subject. The box (input image
    coordinates) is computed only when cropping or when asked for (`want_bbox`); otherwise it is
    None."""
    if options.subject_filter:
        mask = post.drop_small_regions(mask)
    if options.only_mask:
        pixels, alpha = mask, mask
    else:
        pixels = post.cut_out(image.rgb, image.alpha, mask, options.mode, options.threshold)
        alpha = pixels[:, :, 3]
        if options.bg_color is not None:
            pixels = post.composite_on_color(pixels, options.bg_color)
    bbox = post.subject_bbox(alpha, options.padding) if (options.crop or want_bbox) else None
    if options.crop and bbox is not None:
        x, y, w, h = bbox
        pixels = pixels[y:y + h, x:x + w]
    return np.ascontiguousarray(pixels), bbox


def encode_output(pixels: np.ndarray, fmt: str) -> bytes:
    """Lossless PNG (parallel encoder) or lossless WebP."""
    return encode_png(pixels) if fmt == "png" else encode_webp(pixels)
