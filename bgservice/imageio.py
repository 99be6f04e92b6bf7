"""Decoding untrusted images defensively, and encoding the result.

Decoding: only real image formats, the pixel count checked from the header before any pixel is
decoded, the first frame only, EXIF orientation applied, and every common mode (RGB, RGBA, L, LA,
P with transparency, CMYK, 16-bit, float) brought to 8-bit RGB plus an optional alpha channel.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import NotAnImage, TooLarge

# Formats a photo arrives in (JPEG covers MPO, the multi-picture JPEG many cameras write).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

# Pillow's own bomb check only warns below ~179 MP; we check our (configurable) limit from the
# header ourselves in `decode_image`, before decoding, so Pillow's check is switched off.
Image.MAX_IMAGE_PIXELS = None
# Keep up to 8 of Pillow's 16 MB image blocks for reuse instead of unmapping them after every
# decode: a request thread otherwise page-faults its way through fresh memory each time
# (measured in the server: 12 MP decode 70 -> ~40 ms). Bounded: at most 128 MB kept.
Image.core.set_blocks_max(8)
# What that cache can hold: outside any one request, so the memory budget sets it aside.
PILLOW_BLOCK_CACHE_BYTES = Image.core.get_blocks_max() * Image.core.get_block_size()


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # H x W x 3 uint8, upright
    alpha: np.ndarray | None  # H x W uint8 when the input had transparency
    format: str
    mode: str  # the input's Pillow mode, for the logs

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.rgb.shape[1], self.rgb.shape[0]


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Integer or float samples of any depth -> uint8, by their evident range."""
    if values.dtype == np.uint8:
        return values
    if np.issubdtype(values.dtype, np.floating):
        peak = float(np.nanmax(values)) if values.size else 0.0
        scaled = values * 255.0 if peak <= 1.0 else values
        return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    peak = int(values.max()) if values.size else 0
    if peak > 255:  # 16-bit samples (0..65535)
        return np.clip((values.astype(np.float32) / 257.0).round(), 0, 255).astype(np.uint8)
    return np.clip(values, 0, 255).astype(np.uint8)


def _split_modes(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any Pillow image -> (RGB uint8, alpha uint8 or None)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
        mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = _to_8bit(np.asarray(im))
        return np.repeat(gray[:, :, None], 3, axis=2), None
    if mode == "RGBA":
        arr = np.asarray(im)
        return np.ascontiguousarray(arr[:, :, :3]), np.ascontiguousarray(arr[:, :, 3])
    if mode == "LA":
        arr = np.asarray(im)
        return np.repeat(arr[:, :, :1], 3, axis=2), np.ascontiguousarray(arr[:, :, 1])
    if mode == "L":
        return np.repeat(np.asarray(im)[:, :, None], 3, axis=2), None
    if mode != "RGB":  # CMYK, 1, RGBX, YCbCr, LAB, HSV, ...
        im = im.convert("RGB")
    return np.asarray(im), None


def open_image(data: bytes, max_pixels: int, what: str = "the source image") -> Image.Image:
    """Read only the header of untrusted bytes: the format is allowed and the pixel count within
    `max_pixels` (nothing decoded yet). Raises NotAnImage or TooLarge, naming `what`."""
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise NotAnImage(f"{what} is not a decodable image (supported: "
                         + ", ".join(ALLOWED_FORMATS) + ")") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise NotAnImage(f"{what}'s header is corrupt ({exc})") from None
    width, height = im.size
    if width * height > max_pixels:
        raise TooLarge(f"{what} is {width}x{height} = {width * height} pixels; "
                       f"the limit is {max_pixels}")
    if width == 0 or height == 0:
        raise NotAnImage(f"{what} is empty (0 pixels)")
    return im


def from_pil(im: Image.Image) -> DecodedImage:
    """A caller's own Pillow image (the Python API) -> DecodedImage, upright, without changing
    the caller's image (its first frame if it has several)."""
    upright = ImageOps.exif_transpose(im) or im  # a new image when it turns; else im itself
    rgb, alpha = _split_modes(upright)
    return DecodedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha,
                        format=im.format or "PIL", mode=im.mode)


def from_array(array: np.ndarray) -> DecodedImage:
    """A caller's uint8 array (the Python API): H x W gray, H x W x 3 RGB or H x W x 4 RGBA."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape[:2]:
        raise NotAnImage(f"an image array must be uint8, H x W, H x W x 3 (RGB) or H x W x 4 "
                         f"(RGBA); got {array.dtype} {array.shape}")
    if array.ndim == 2:
        return DecodedImage(np.repeat(array[:, :, None], 3, axis=2), None, "array", "L")
    if array.shape[2] == 4:
        return DecodedImage(np.ascontiguousarray(array[:, :, :3]),
                            np.ascontiguousarray(array[:, :, 3]), "array", "RGBA")
    return DecodedImage(np.ascontiguousarray(array), None, "array", "RGB")


def decode_opened(im: Image.Image, what: str = "the source image") -> DecodedImage:
    """An image from `open_image` -> DecodedImage (first frame, upright). Raises NotAnImage."""
    fmt = im.format or "unknown"
    mode = im.mode
    try:
        im.seek(0)  # first frame only (GIF, TIFF, multi-picture JPEG)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # upright; in place: no copy when already so
        rgb, alpha = _split_modes(im)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise NotAnImage(f"{what}'s data is corrupt or truncated ({exc})") from None
    return DecodedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha, format=fmt, mode=mode)


def decode_image(data: bytes, max_pixels: int, what: str = "the source image") -> DecodedImage:
    """Bytes from an untrusted source -> DecodedImage. Raises NotAnImage or TooLarge."""
    return decode_opened(open_image(data, max_pixels, what), what)


JPEG_QUALITY = 90


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """uint8 gray / RGB -> JPEG bytes (quality 90, 4:2:0; no alpha: flatten first)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=JPEG_QUALITY, optimize=False)
    return buf.getvalue()


def encode_webp(pixels: np.ndarray) -> bytes:
    """uint8 gray / RGB / RGBA -> lossless WebP bytes (method 0: the fastest, still lossless)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "WEBP", lossless=True, method=0, exact=True)
    return buf.getvalue()
