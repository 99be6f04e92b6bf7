"""What a caller can ask of a cut-out, parsed once for every entry point, and its rendering.

The upload endpoint (form fields or query string), the JSON calls and the command line all
resolve mode and threshold with `resolve_mode`, and every output goes through `compose_output`
and `encode_output`: there is one way from a mask to the bytes returned.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

import Image_PostProcesser as post

from .errors import BadRequest
from .fields import FORMATS, MODE, parse_strings, shown
from .imageio import DecodedImage, encode_jpeg, encode_webp
from .png import encode_png

# What a JPEG's transparent pixels become without a bg_color (remove.bg's choice too).
JPEG_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class OutputOptions:
    model: str | None = None  # a served model's name; None: the service's default (first) model
    mode: str = "refine"
    threshold: int | None = None
    only_mask: bool = False
    bg_color: tuple[int, ...] | None = None  # (r, g, b), or (r, g, b, a) when see-through
    crop: bool = False
    padding: int = 0  # pixels around the crop
    padding_percent: float = 0.0  # or this percentage of the subject's size (when not 0)
    format: str = "png"
    subject_filter: bool = False  # drop small disconnected regions from the mask first

    @property
    def output_format(self) -> str:
        """The format written: `format`, with auto resolved (JPEG when a background colour fills
        every pixel, since there is no transparency left to keep; else PNG)."""
        if self.format != "auto":
            return self.format
        filled = self.bg_color is not None and len(self.bg_color) == 3 and not self.only_mask
        return "jpg" if filled else "png"

    @property
    def content_type(self) -> str:
        return FORMATS[self.output_format]


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
    model: str  # the served model that made the mask


def resolve_mode(mode: object, threshold: int | None, default_mode: str) -> tuple[str, int | None]:
    """(mode, threshold) for every entry point: a threshold always means threshold mode (the
    website's requests keep their meaning); no mode and no threshold means the default mode;
    threshold mode without a threshold uses the OpenClone default. `threshold` is already a
    validated integer or None."""
    if mode is None:
        mode = "threshold" if threshold is not None else default_mode
    if not isinstance(mode, str) or mode not in post.MODES:
        raise BadRequest(f"{MODE.rule('mode')}, got {shown(mode)}")
    if mode != "threshold":
        if threshold is not None:
            raise BadRequest(f"'threshold' applies to mode 'threshold' only, not {shown(mode)}")
        return mode, None
    return mode, post.DEFAULT_THRESHOLD if threshold is None else threshold


def parse_options(values: Mapping[str, str], default_mode: str) -> OutputOptions:
    """Options from strings (form fields, query string, command line). BadRequest on bad values,
    with the messages of bgservice.fields. A threshold always means threshold mode, as in the
    JSON API."""
    given = parse_strings(values)
    mode, threshold = resolve_mode(given["mode"], given["threshold"], default_mode)
    chosen = {k: v for k, v in given.items() if v is not None and k not in ("mode", "threshold")}
    padding = chosen.pop("padding", None)
    if padding is not None:
        chosen["padding_percent" if padding.percent else "padding"] = padding.amount
    return OutputOptions(mode=mode, threshold=threshold, **chosen)


def compose_output(image: DecodedImage, mask: np.ndarray, options: OutputOptions,
                   want_bbox: bool = False, refine: post.RefineParams = post.REFINE,
                   threshold_edges: str = "hard"):
    """(pixels, subject bbox): the mask (optionally without its small regions) or the cut-out,
    optionally over a colour, optionally cropped to the subject. The box (input image
    coordinates) is computed only when cropping or when asked for (`want_bbox`); otherwise it is
    None. `refine`: the model's refine parameters (post.refine_params); `threshold_edges`: the
    threshold mode's edges (U2NET_THRESHOLD_EDGES)."""
    if options.subject_filter:
        mask = post.drop_small_regions(mask)
    if options.only_mask:
        pixels, alpha = mask, mask
    else:
        pixels = post.cut_out(image.rgb, image.alpha, mask, options.mode, options.threshold, refine,
                              threshold_edges)
        alpha = pixels[:, :, 3]
        if options.bg_color is not None:
            pixels = post.composite_on_color(pixels, options.bg_color)
        if options.output_format == "jpg" and pixels.shape[2] == 4:  # JPEG has no alpha
            pixels = post.composite_on_color(pixels, JPEG_BACKGROUND)
    want = options.crop or want_bbox
    bbox = post.subject_bbox(alpha, options.padding, options.padding_percent) if want else None
    if options.crop and bbox is not None:
        x, y, w, h = bbox
        pixels = pixels[y:y + h, x:x + w]
    return np.ascontiguousarray(pixels), bbox


def encode_output(pixels: np.ndarray, fmt: str) -> bytes:
    """Lossless PNG (parallel encoder), lossless WebP, or JPEG (`fmt`: an output_format)."""
    if fmt == "png":
        return encode_png(pixels)
    return encode_jpeg(pixels) if fmt == "jpg" else encode_webp(pixels)
