"""What a caller can ask of a cut-out, parsed once for every entry point, and its rendering.

The upload endpoint (form fields or query string), the JSON calls and the command line all
resolve mode and threshold with `resolve_mode`, and every output goes through `compose_output`
and `encode_output`: there is one way from a mask to the bytes returned.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

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
    bg_fit: str = "cover"  # how bg_image fills the frame (post.BG_FITS)
    bg_blur: int = 0  # blur strength 1-100 of the background (post.blur_sigma); 0: none
    # A picture behind the subject: its bytes as received (the service decodes them within the
    # request's memory reservation), or already decoded (the Python API).
    bg_image: bytes | DecodedImage | None = field(default=None, repr=False, compare=False)

    @property
    def output_format(self) -> str:
        """The format written: `format`, with auto resolved (JPEG when a background fills every
        pixel, since there is no transparency left to keep; else PNG)."""
        if self.format != "auto":
            return self.format
        return "jpg" if self.filled else "png"

    @property
    def filled(self) -> bool:
        """Whether a background covers every pixel: an opaque colour, the blurred original, or
        a picture scaled to cover the frame."""
        if self.only_mask:
            return False
        return ((self.bg_color is not None and len(self.bg_color) == 3) or self.bg_blur > 0
                or (self.bg_image is not None and self.bg_fit == "cover"))

    @property
    def backdrop(self) -> bool:
        """Whether a picture goes behind the subject (bg_image, or the original blurred)."""
        return not self.only_mask and (self.bg_image is not None or self.bg_blur > 0)

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
    mask: bytes | None = None  # the mask as a PNG, cropped as the output, when asked for


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


class Composed(NamedTuple):
    pixels: np.ndarray  # the output, contiguous
    bbox: tuple[int, int, int, int] | None  # the subject's box in the input image, when found
    mask: np.ndarray  # the mask it was made from (subject filter applied), cropped as `pixels`


def compose_output(image: DecodedImage, mask: np.ndarray, options: OutputOptions,
                   want_bbox: bool = False, refine: post.RefineParams = post.REFINE,
                   threshold_edges: str = "hard") -> Composed:
    """(pixels, subject bbox, mask): the mask (optionally without its small regions) or the
    cut-out, optionally over a background, optionally cropped to the subject; and the mask used,
    cropped alike (the page shows both from one request). The box (input image coordinates) is
    computed only when cropping or when asked for (`want_bbox`); otherwise it is None. `refine`:
    the model's refine parameters (post.refine_params); `threshold_edges`: the threshold mode's
    edges (U2NET_THRESHOLD_EDGES)."""
    if options.subject_filter:
        mask = post.drop_small_regions(mask)
    if options.only_mask:
        pixels, alpha = mask, mask
    else:
        pixels = post.cut_out(image.rgb, image.alpha, mask, options.mode, options.threshold, refine,
                              threshold_edges)
        alpha = pixels[:, :, 3]
        if options.backdrop:
            pixels = post.composite_on_image(pixels, backdrop(image, alpha, options))
        elif options.bg_color is not None:
            pixels = post.composite_on_color(pixels, options.bg_color)
        if options.output_format == "jpg" and pixels.shape[2] == 4:  # JPEG has no alpha
            pixels = post.composite_on_color(pixels, JPEG_BACKGROUND)
    want = options.crop or want_bbox
    bbox = post.subject_bbox(alpha, options.padding, options.padding_percent) if want else None
    if options.crop and bbox is not None:
        x, y, w, h = bbox
        pixels, mask = pixels[y:y + h, x:x + w], mask[y:y + h, x:x + w]
    return Composed(np.ascontiguousarray(pixels), bbox, mask)


def backdrop(image: DecodedImage, alpha: np.ndarray, options: OutputOptions) -> np.ndarray:
    """What goes behind the cut-out (alpha: the cut-out's): `options.bg_image` (decoded) fitted to
    the frame, or the original photo with the subject taken out, either blurred by `bg_blur`, and
    over `bg_color` where it is not opaque."""
    size = image.size
    picture = options.bg_image
    if picture is not None:
        if not isinstance(picture, DecodedImage):
            raise TypeError("decode bg_image before composing (DecodedImage)")
        behind = post.fit_background(post.compose_rgba(picture.rgb, picture.alpha)
                                     if picture.alpha is not None else picture.rgb,
                                     size, options.bg_fit)
        weight = behind[:, :, 3] if behind.shape[2] == 4 else None  # blur only what is there
    else:
        behind = image.rgb if image.alpha is None else post.compose_rgba(image.rgb, image.alpha)
        weight = post.original_background_weight(alpha, image.alpha)
    if options.bg_blur:
        sigma = post.blur_sigma(options.bg_blur, behind.shape)
        rgb = behind if behind.shape[2] == 3 else np.ascontiguousarray(behind[:, :, :3])
        blurred = post.blurred(rgb, sigma, weight)
        behind = blurred if behind.shape[2] == 3 else post.compose_rgba(blurred, behind[:, :, 3])
    if behind.shape[2] == 4 and options.bg_color is not None:
        behind = post.composite_on_color(behind, options.bg_color)
    return behind


def encode_output(pixels: np.ndarray, fmt: str) -> bytes:
    """Lossless PNG (parallel encoder), lossless WebP, or JPEG (`fmt`: an output_format)."""
    if fmt == "png":
        return encode_png(pixels)
    return encode_jpeg(pixels) if fmt == "jpg" else encode_webp(pixels)
