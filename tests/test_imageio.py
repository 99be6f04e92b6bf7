"""Decoding untrusted images: every common mode, EXIF orientation, limits, garbage."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bgservice.errors import NotAnImage, TooLarge
from bgservice.imageio import decode_image
from bgservice.png import encode_png

LIMIT = 10_000_000


def encoded(im: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def test_rgb_jpeg():
    img = decode_image(encoded(Image.new("RGB", (30, 20), (200, 10, 10)), "JPEG"), LIMIT)
    assert img.size == (30, 20) and img.alpha is None and img.rgb.shape == (20, 30, 3)
    assert abs(int(img.rgb[5, 5, 0]) - 200) < 6


def test_rgba_keeps_its_alpha():
    im = Image.new("RGBA", (4, 3), (1, 2, 3, 77))
    img = decode_image(encoded(im), LIMIT)
    assert (img.rgb == (1, 2, 3)).all() and (img.alpha == 77).all()


def test_grayscale_and_gray_alpha():
    img = decode_image(encoded(Image.new("L", (5, 4), 90)), LIMIT)
    assert (img.rgb == 90).all() and img.alpha is None
    img = decode_image(encoded(Image.new("LA", (5, 4), (90, 30))), LIMIT)
    assert (img.rgb == 90).all() and (img.alpha == 30).all()


def test_palette_with_transparency():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    im.info["transparency"] = 0
    img = decode_image(encoded(im), LIMIT)
    assert img.alpha is not None
    assert img.alpha[0, 0] == 0 and img.alpha[1, 1] == 255
    assert tuple(img.rgb[1, 1]) == (0, 255, 0)


def test_cmyk_jpeg():
    img = decode_image(encoded(Image.new("CMYK", (6, 6), (0, 255, 255, 0)), "JPEG"), LIMIT)
    r, g, b = (int(v) for v in img.rgb[3, 3])
    assert r > 200 and g < 60 and b < 60  # CMYK red is RGB red


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    arr = np.full((4, 4), 40000, dtype=np.uint16)
    img = decode_image(encoded(Image.fromarray(arr)), LIMIT)
    assert abs(int(img.rgb[0, 0, 0]) - round(40000 / 257)) <= 1


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    img = decode_image(encoded(im, "JPEG", exif=exif, quality=95), LIMIT)
    assert img.size == (20, 40)  # upright size
    assert img.rgb[2, 10, 0] > 200  # the left strip is now at the top


def test_first_frame_of_an_animated_gif():
    frames = [Image.new("P", (8, 8), i) for i in range(3)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 255, 255, 0, 0, 255] + [0] * 759)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    img = decode_image(buf.getvalue(), LIMIT)
    assert (img.rgb == 0).all()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def _png_header_claiming(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header claims a huge size: decoding it would need gigabytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def test_pixel_count_is_checked_from_the_header_before_decoding():
    with pytest.raises(TooLarge, match="100000x100000 = 10000000000 pixels"):
        decode_image(_png_header_claiming(100_000, 100_000), LIMIT)


@pytest.mark.parametrize("data", [b"", b"hello world", b"%PDF-1.4 not an image",
                                  b"<svg xmlns='http://www.w3.org/2000/svg'/>"])
def test_garbage_is_not_an_image(data):
    with pytest.raises(NotAnImage):
        decode_image(data, LIMIT)


def test_truncated_image_is_not_an_image():
    data = encoded(Image.fromarray(np.random.default_rng(0).integers(
        0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(NotAnImage, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], LIMIT)


@pytest.mark.parametrize("channels,mode", [(None, "L"), (3, "RGB")])
def test_png_gray_and_rgb_round_trip(channels, mode):
    shape = (33, 47) if channels is None else (33, 47, channels)
    pixels = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    back = Image.open(io.BytesIO(encode_png(pixels)))
    assert back.mode == mode
    np.testing.assert_array_equal(np.asarray(back), pixels)


def test_png_encoding_is_lossless_rgba():
    rgba = np.random.default_rng(1).integers(0, 256, (17, 23, 4), dtype=np.uint8)
    back = Image.open(io.BytesIO(encode_png(rgba)))
    assert back.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(back), rgba)


@pytest.mark.parametrize("shape", [(1, 1), (3, 700), (1500, 1), (257, 333), (1200, 1700)])
def test_parallel_png_round_trips_losslessly(shape):
    rng = np.random.default_rng(shape[0])
    rgba = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    rgba[: shape[0] // 2, :, :] //= 7  # some compressible structure too
    png = encode_png(rgba)
    back = Image.open(io.BytesIO(png))
    back.load()  # raises on a bad CRC, adler32 or deflate stream
    assert back.mode == "RGBA" and back.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.asarray(back), rgba)
    import cv2  # a second, independent decoder (libpng)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded[..., [2, 1, 0, 3]], rgba)


def test_adler32_combine_equals_zlib_on_the_concatenation():
    import zlib

    from bgservice.png import adler32_combine

    rng = np.random.default_rng(9)
    for _ in range(50):
        a = rng.integers(0, 256, rng.integers(0, 200_000), dtype=np.uint8).tobytes()
        b = rng.integers(0, 256, rng.integers(0, 200_000), dtype=np.uint8).tobytes()
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)
