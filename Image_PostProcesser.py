"""Mask post-processing: pure functions on arrays, shared by the service, the CLI and the tests.

Each takes the image (8-bit RGB and optional alpha) and the model's 8-bit mask at the image's size,
and returns a new H x W x 4 uint8 RGBA array; nothing here reads files or touches the model.

Modes:
  threshold  the OpenClone rule, exactly (what the website asks for by sending `threshold`);
  soft       the mask is the alpha channel (no hard, jagged edge);
  refine     the mask refined along the image's edges (colour guided filter), then foreground
             colours estimated so the old background does not bleed into semi-transparent pixels.
Any mode can first pass the mask through `drop_small_regions` (the optional subject filter).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

MODES = ("threshold", "soft", "refine")
DEFAULT_THRESHOLD = 254  # the OpenClone post-processor's documented default


def _tiny(array: np.ndarray) -> bool:
    """OpenCV takes arrays of a few elements (1x1x3, 1x1x4) for scalars: below 16 pixels every
    accelerated helper here falls back to plain numpy (speed is moot at that size)."""
    return array.shape[0] * array.shape[1] < 16


def compose_rgba(rgb: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """RGB plus alpha (opaque when None) -> one new H x W x 4 RGBA array."""
    if _tiny(rgb):
        return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8) if alpha is None else alpha])
    # OpenCV does this in one SIMD pass: ~8 ms at 12 MP against ~40 ms for numpy slice copies.
    if alpha is None:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    return cv2.merge([*cv2.split(rgb), alpha])


def _check(rgb: np.ndarray, mask: np.ndarray) -> None:
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {rgb.shape[:2]}")


def apply_threshold(rgb: np.ndarray, alpha: np.ndarray | None, mask: np.ndarray,
                    threshold: int) -> np.ndarray:
    """The OpenClone rule, vectorised: a pixel whose mask value is below `threshold` becomes
    (0, 0, 0, 0); every other pixel keeps its colour and alpha. Threshold 0 keeps everything."""
    if not 0 <= threshold <= 255:
        raise ValueError(f"threshold must be in 0..255, got {threshold}")
    _check(rgb, mask)
    rgba = compose_rgba(rgb, alpha)
    if threshold == 0:
        return rgba
    if _tiny(rgb):
        rgba[mask < threshold] = 0
        return rgba
    # A masked AND into a fresh array: pixels outside `keep` come out all zero. ~10x faster than
    # numpy boolean indexing at 12 MP (21 ms against 190 ms), and the same result bit for bit.
    keep = cv2.compare(mask, threshold, cv2.CMP_GE)  # type: ignore[call-overload]  # stubs lack the scalar form
    return cv2.bitwise_and(rgba, rgba, mask=keep)


def _combine_alpha(mask: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """The cut-out's alpha: the mask, times the input's own alpha where it had one."""
    if alpha is None:
        return mask
    if _tiny(mask):
        return np.rint(mask.astype(np.float32) * alpha / 255).astype(np.uint8)
    return cv2.multiply(mask, alpha, scale=1 / 255)


def soft_alpha(rgb: np.ndarray, alpha: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """The mask as the alpha channel: soft edges instead of a jagged threshold."""
    _check(rgb, mask)
    return compose_rgba(rgb, _combine_alpha(mask, alpha))


# -- refine -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RefineParams:
    """Chosen once for all images, on a small grid (radius 0.005-0.04, eps 1e-4-1e-2, coarse side
    100-180, contrast 1-1.3) scored on ../shared/data/alphamatting (unknown-region SAD and gradient
    error) with DAVIS-people IoU as the guard: a small eps follows image edges best, but at 1e-5
    flat (synthetic, studio) backgrounds make the coefficients blow up into blocky alpha
    (docs/make_contact_sheet.py showed it); 2e-5 to 5e-5 is clean there and scores alike, and at
    1e-4 the DAVIS 10th-percentile IoU falls 1e-5 below soft's; a radius of 3 % of the
    shorter side is the largest that does not cost DAVIS IoU (4 % did); the contrast was chosen to
    keep both SAD and gradient error about 5 % inside their targets.

    radius_frac: guided-filter window radius as a fraction of the image's shorter side, so the
        filter acts at the same scale whatever the resolution;
    eps: regularisation; smaller follows image edges more closely (and noise too);
    coarse_side: the filter's coefficients (He & Sun's fast guided filter) and the colour
        estimate are computed on a copy whose shorter side is about this many pixels, whatever the
        input size: the same geometry at every resolution, and a cost at 1080p that stays low;
    contrast: the refined alpha is stretched about 0.5 by this factor: U2-Net's 320 px map,
        upsampled, is under-confident near edges, and a mild stretch moves near-0 and near-1
        values to 0 and 1 (SAD 15.48 -> 15.18; IoU at 0.5 cannot change). Larger stretches trade
        more gradient error for little SAD;
    fg_radii_frac: blur-fusion radii, coarse to fine, for the foreground and background colour
        estimates, as fractions of the reduced copy's shorter side. A middle level (2 %) took the
        portraits' composite edge error from 6.27 to 6.10 for about 3 ms at 1080p (issue 17);
    bound_frac: the refined alpha stays under the mask dilated by this fraction of the shorter
        side (times `bound_gain`), and above the mask eroded as much where the mask is sure
        (`floor_from` and up): refine moves an edge; it adds no alpha away from the model's
        subject (streaks of the old background, fragments beyond the hair) and cuts no holes
        where the model is sure;
    bound_gain: the upper bound is the dilated mask times this: 1 capped refine's alpha at the
        mask's own soft values near the edge (portraits' gradient error 7.42 but alphamatting's
        22.54 and DAVIS IoU 0.639, both worse than unbounded); 1.5 cuts only where the mask is
        low (portraits SAD 10.27 -> 9.79, gradient 7.42 -> 7.62, still under soft's 10.31 and
        7.64; alphamatting unknown-region SAD 15.24 -> 15.17, gradient 22.54 -> 22.21; DAVIS IoU
        0.639 -> 0.641, boundary F 0.553 -> 0.558); 2 and 4 cost the portraits' gradient error
        (7.67, 7.76);
    floor_from: the lower bound rises from 0 where the eroded mask is this value to 255 where it
        is 255 (a ramp: a step at 240 cost alphamatting's gradient error).
    Chosen on the shared portraits with U2NETP, alphamatting and DAVIS (issue 17; README "Cut-out
    quality").
    """

    radius_frac: float = 0.03
    eps: float = 3e-5
    coarse_side: int = 100
    contrast: float = 1.1
    fg_radii_frac: tuple[float, ...] = (0.08, 0.02, 0.004)
    bound_frac: float = 0.003
    bound_gain: float = 1.5
    floor_from: int = 200


REFINE = RefineParams()


def refine_params(overrides: tuple[tuple[str, float], ...] = ()) -> RefineParams:
    """REFINE with a model's own values (registry ModelSpec.refine) in place of the defaults."""
    return dataclasses.replace(REFINE, **dict(overrides)) if overrides else REFINE  # type: ignore[arg-type]  # names and values are checked by the dataclass


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.blur(x, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def coarse_size(shape: tuple[int, ...], params: RefineParams) -> tuple[int, tuple[int, int]]:
    """(scale, (width, height)) of the copy refine works on: an integer `scale` so that its
    shorter side is about `params.coarse_side` pixels (1: images at or under that)."""
    h, w = shape[:2]
    scale = max(1, round(min(h, w) / params.coarse_side))
    return scale, (max(1, w // scale), max(1, h // scale))


def shrink(image: np.ndarray, scale: int, small: tuple[int, int]) -> np.ndarray:
    """`image` averaged over scale x scale blocks down to `small` (width, height). The blocks
    cover the top-left small * scale pixels; the last few rows and columns (fewer than `scale`)
    are left out, and `enlarge` extends the edge over them. A whole number of pixels per block
    takes OpenCV's fast path: at 1080p 2.2 ms for RGB instead of 7 ms, 1.1 instead of 5.7 for
    one channel (refine shrinks three images)."""
    if scale == 1:
        return image
    return cv2.resize(image[:small[1] * scale, :small[0] * scale], small,
                      interpolation=cv2.INTER_AREA)


def enlarge(coarse: np.ndarray, scale: int, size: tuple[int, int]) -> np.ndarray:
    """The inverse of `shrink`: `coarse` bilinearly upsampled by `scale` (each coarse pixel's
    centre on its block's centre), the edge extended to `size` (width, height)."""
    if scale == 1:
        return coarse
    w, h = size
    out = np.empty((h, w, *coarse.shape[2:]), coarse.dtype)
    sh, sw = coarse.shape[0] * scale, coarse.shape[1] * scale
    cv2.resize(coarse, (sw, sh), dst=out[:sh, :sw], interpolation=cv2.INTER_LINEAR)
    out[:sh, sw:] = out[:sh, sw - 1:sw]
    out[sh:] = out[sh - 1]
    return out


def shrink_guide(rgb: np.ndarray, scale: int, small: tuple[int, int]) -> np.ndarray:
    """The image at `small` (width, height), float32 RGB in [0, 1]: the copy refine's filter and
    colour estimate work on. Shrunk in 8 bits (no full-size float copy: 16 bytes per pixel less
    at the peak; the filter's eps is far above the 1/255 steps' variance)."""
    return np.multiply(shrink(rgb, scale, small), np.float32(1 / 255), dtype=np.float32)


def guided_filter(rgb: np.ndarray, small_guide: np.ndarray, scale: int, src: np.ndarray,
                  radius: int, eps: float) -> np.ndarray:
    """Colour guided filter (He, Sun & Tang): `src` (H x W float32) smoothed so that its edges
    follow those of the image `rgb` (uint8). The linear coefficients are computed on
    `small_guide` (shrink_guide: the image in [0, 1], shrunk by `scale`) and upsampled (He &
    Sun, "Fast guided filter", 2015): only the final per-pixel combination runs at full
    resolution, which is what keeps 1080p fast."""
    h, w = src.shape
    g = small_guide
    p = shrink(src, scale, g.shape[1::-1])
    r = max(1, radius // scale)
    mean_g = _box(g, r)
    mean_p = _box(p, r)
    cov_gp = _box(g * p[:, :, None], r) - mean_g * mean_p[:, :, None]
    # 3x3 covariance of the guide per pixel, regularised, inverted in closed form (adjugate).
    gg: list[list[np.ndarray]] = [[np.empty(0)] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(i, 3):
            v = _box(g[:, :, i] * g[:, :, j], r) - mean_g[:, :, i] * mean_g[:, :, j]
            gg[i][j] = gg[j][i] = v + (eps if i == j else 0)
    inv = [[gg[(j + 1) % 3][(i + 1) % 3] * gg[(j + 2) % 3][(i + 2) % 3]
            - gg[(j + 1) % 3][(i + 2) % 3] * gg[(j + 2) % 3][(i + 1) % 3] for j in range(3)]
           for i in range(3)]
    det = gg[0][0] * inv[0][0] + gg[0][1] * inv[1][0] + gg[0][2] * inv[2][0]
    a = [sum(inv[i][j] * cov_gp[:, :, j] for j in range(3)) / det for i in range(3)]
    b = mean_p - a[0] * mean_g[:, :, 0] - a[1] * mean_g[:, :, 1] - a[2] * mean_g[:, :, 2]
    # (a_r, a_g, a_b, b) averaged over windows; a scaled to multiply 8-bit channels
    a = [_box(x * np.float32(1 / 255), r) for x in a]
    # q = a . I + b at full size, a plane at a time: each coefficient enlarged (OpenCV's
    # bilinear resize) and accumulated times its 8-bit channel. 12 bytes per pixel of
    # temporaries at most, and twice as fast as combining interleaved (H x W x 4) coefficients
    # and guide a run of rows at a time (1080p: 14 ms against 28 ms).
    q = enlarge(_box(b, r), scale, (w, h))
    for coefficient, channel in zip(a, cv2.split(rgb), strict=True):
        cv2.accumulateProduct(enlarge(coefficient, scale, (w, h)), channel.astype(np.float32), q)
    return q


def estimate_colours(image: np.ndarray, alpha: np.ndarray,
                     radii: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(foreground F, background B) with image = alpha F + (1 - alpha) B, by blur-fusion (Forte &
    Pitie, "Approximate fast foreground colour estimation", 2021): passes of box blurs from coarse
    to fine. `image` H x W x 3 float32 in [0, 1], `alpha` H x W float32 in [0, 1]. B is smooth (a
    local mean of the background behind the subject), so it can be upsampled from a small copy."""
    a = alpha[:, :, None]
    fg, bg = image, image
    for r in radii:
        blur_a = _box(alpha, r)[:, :, None]
        blur_f = _box(fg * a, r) / (blur_a + 1e-5)
        blur_b = _box(bg * (1 - a), r) / ((1 - blur_a) + 1e-5)
        fg = np.clip(blur_f + a * (image - a * blur_f - (1 - a) * blur_b), 0, 1)
        bg = blur_b
    return fg, bg


# Below this alpha the unmixed colour (I - (1 - a) B) / a is blended towards blur-fusion's: it
# divides by a, so a small error in B or a is amplified there (a hard switch at 0.05 to 0.2:
# 4.82-5.00/255 on the portraits' composites; this blend: 4.81).
_UNMIX_FROM = 0.1
# ... and as far as the unmixed colour falls outside [0, 1], times this (at 0.5 outside: none of
# it). Portraits' composite edge error on plain colours | generated scenes: 4.82 | 10.56 without,
# 4.84 | 10.37 at 1, 4.86 | 10.33 at 2, 4.89 | 10.31 at 4; on the synthetic blurred disc, where
# refine's alpha is off by 0.08, it helps most (grey: 12.3 -> 11.4).
_OVERSHOOT_GAIN = 2.0


def refine_alpha(rgb: np.ndarray, small_guide: np.ndarray, scale: int, mask: np.ndarray,
                 params: RefineParams = REFINE) -> np.ndarray:
    """The model's mask refined along the image's edges: float32 alpha in [0, 1]. `small_guide`:
    shrink_guide's copy, `scale` times smaller (coarse_size; shared with the colour estimate)."""
    src = mask.astype(np.float32) * np.float32(1 / 255)
    radius = max(1, round(params.radius_frac * min(mask.shape)))
    q = guided_filter(rgb, small_guide, scale, src, radius, params.eps)
    # Stretched about 0.5, then clipped to [0, 1], in place (no full-size temporaries).
    cv2.addWeighted(q, params.contrast, q, 0, 0.5 * (1 - params.contrast), dst=q)
    cv2.max(q, 0, dst=q)  # type: ignore[call-overload]  # stubs lack the scalar form
    return cv2.min(q, 1, dst=q)  # type: ignore[call-overload]  # stubs lack the scalar form


def _saturating_add(rgb: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """uint8 + int16 clipped to 0..255, in one OpenCV pass (numpy for tiny images)."""
    if _tiny(rgb):
        return np.clip(rgb.astype(np.int16) + delta, 0, 255).astype(np.uint8)
    return cv2.add(rgb, delta, dtype=cv2.CV_8U)


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _bounded(alpha8: np.ndarray, mask: np.ndarray, params: RefineParams) -> np.ndarray:
    """alpha8 clipped, in place: at most the mask dilated by `bound_frac` of the shorter side
    times `bound_gain`, and at least the mask eroded as much, ramped from `floor_from` (0) to 255."""
    if params.bound_frac <= 0:
        return alpha8
    disc = _disc(max(1, round(params.bound_frac * min(mask.shape))))
    floor = cv2.subtract(cv2.erode(mask, disc), params.floor_from)  # type: ignore[call-overload]  # stubs lack the scalar form
    cv2.max(alpha8, cv2.convertScaleAbs(floor, alpha=255 / (255 - params.floor_from)), dst=alpha8)
    ceiling = cv2.convertScaleAbs(cv2.dilate(mask, disc), alpha=params.bound_gain)
    return cv2.min(alpha8, ceiling, dst=alpha8)


def refine(rgb: np.ndarray, alpha: np.ndarray | None, mask: np.ndarray,
           params: RefineParams = REFINE) -> np.ndarray:
    """Edge-aware alpha plus estimated foreground colours (no background colour bleeding).

    The alpha is refined at full resolution. The colour estimate runs on a copy of at most
    0.1 MP and only its correction (F - image) is upsampled and added back: the correction is
    smooth, and fully opaque pixels keep their full-resolution detail untouched."""
    _check(rgb, mask)
    if _tiny(rgb):  # no edges to follow in a handful of pixels
        return soft_alpha(rgb, alpha, mask)
    fg8, alpha8 = _refined(rgb, mask, params)
    return compose_rgba(fg8, _combine_alpha(alpha8, alpha))


def _refined(rgb: np.ndarray, mask: np.ndarray, params: RefineParams) -> tuple[np.ndarray, np.ndarray]:
    """(foreground colours, alpha), both uint8: refine's two halves. Both work on one coarse copy
    of the image (coarse_size): the guided filter's coefficients and the colour estimate."""
    scale, small = coarse_size(mask.shape, params)
    small_guide = shrink_guide(rgb, scale, small)
    alpha = refine_alpha(rgb, small_guide, scale, mask, params)
    alpha8 = cv2.convertScaleAbs(alpha, alpha=255)  # rounds and saturates: alpha is in [0, 1]
    del alpha
    alpha8 = _bounded(alpha8, mask, params)
    a_small = shrink(alpha8, scale, small)
    radii = tuple(max(1, round(f * min(small))) for f in params.fg_radii_frac)
    fg_small, bg_small = estimate_colours(small_guide, a_small.astype(np.float32) / 255, radii)
    # Blur-fusion's colours as a correction in 8-bit steps, added to the original pixels with
    # saturation: smooth, so upsampled from the small copy. Transparent pixels get the subject's
    # colours (no old background where a consumer scales the cut-out without premultiplying);
    # opaque ones keep their own (the upsampled correction reaches a few pixels into them:
    # portraits' composite edge error 4.97 with it, 4.81 without).
    correction = np.rint((fg_small - small_guide) * 255).astype(np.int16)
    correction = enlarge(correction, scale, mask.shape[::-1])
    fg8 = _saturating_add(rgb, correction)
    del correction
    cv2.copyTo(rgb, cv2.compare(alpha8, 255, cv2.CMP_EQ), fg8)  # type: ignore[call-overload]  # stubs lack the scalar form
    _unmix_edges(rgb, alpha8, fg8, bg_small, scale)
    return fg8, alpha8


def _enlarged_at(small: np.ndarray, scale: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """enlarge(small (h x w x 3 float32), scale) at pixels (ys, xs), without making the
    full-size image: N x 3. cv2.remap samples; it takes maps of fewer than 32767 rows, so the
    points go in rows of 256."""
    n = ys.size
    padded = -(-n // 256) * 256
    map_x = np.zeros(padded, np.float32)
    map_y = np.zeros(padded, np.float32)
    np.multiply(xs + 0.5, 1 / scale, out=map_x[:n], casting="unsafe")
    np.multiply(ys + 0.5, 1 / scale, out=map_y[:n], casting="unsafe")
    map_x -= 0.5
    map_y -= 0.5
    sampled = cv2.remap(small, map_x.reshape(-1, 256), map_y.reshape(-1, 256), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    return sampled.reshape(-1, small.shape[2])[:n]


def _unmix_edges(rgb: np.ndarray, alpha8: np.ndarray, fg8: np.ndarray,
                 bg_small: np.ndarray, scale: int) -> None:
    """fg8, in place, at the semi-transparent pixels: the colour that, laid over the estimated
    background B with the refined alpha a, gives the photo back: F = (I - (1 - a) B) / a.

    Blur-fusion's F is a local average, upsampled from a small copy: it blurs hair-sized colour
    detail and leaves some of the old background in it. B is smooth, so its upsampled value is
    accurate per pixel, and unmixing with it at full resolution took the portraits' composite
    edge error from 6.10 to 4.86/255 on green and blue (10.71 to 10.33 on generated scenes;
    scored on grey, white and black; issue 17). Only the edge pixels are touched, a band of
    rows at a time, so the cost and the memory follow the edge's length, not the image's size."""
    h, w = alpha8.shape
    rows = max(1, 262_144 // w)  # about 0.25 MP per band: a few MB of temporaries
    # Pixels as single 3-byte items: np.take and np.put on them are ~5x faster than fancy
    # indexing of N x 3 rows (1080p: 1.9 ms against 11 ms).
    assert fg8.flags.c_contiguous  # written through _as_pixels' view
    pixels, fg_pixels = _as_pixels(rgb), _as_pixels(fg8)
    flat_alpha = alpha8.reshape(-1)
    for top in range(0, h, rows):
        band = alpha8[top:top + rows]
        partial = cv2.inRange(band, 1, 254) > 0
        index = np.flatnonzero(partial)
        if index.size == 0:
            continue
        index += top * w
        ys, xs = np.divmod(index, w)
        background = _enlarged_at(bg_small, scale, ys, xs)
        a = np.take(flat_alpha, index).astype(np.float32)[:, None] * np.float32(1 / 255)
        # F = B + (I - B) / a, in place (this runs over every edge pixel), then blended with
        # blur-fusion's below _UNMIX_FROM and where it falls outside [0, 1] (a sign that a or B
        # is wrong there)
        unmixed = _rgb_of(np.take(pixels, index))
        unmixed *= np.float32(1 / 255)
        unmixed -= background
        unmixed /= a
        unmixed += background
        # per-channel maxima and minima as column operations: numpy's max(axis=1) over three
        # channels is ~50x slower (14 ms at 1080p)
        r, g, b = unmixed.T
        overshoot = np.maximum(np.maximum(np.maximum(r, g), b) - 1,
                               -np.minimum(np.minimum(r, g), b))
        weight = np.clip(1 - _OVERSHOOT_GAIN * overshoot, 0, 1)[:, None]
        weight *= np.minimum(a * np.float32(1 / _UNMIX_FROM), 1)
        np.clip(unmixed, 0, 1, out=unmixed)
        unmixed *= weight * 255
        blended = _rgb_of(np.take(fg_pixels, index))
        blended *= 1 - weight
        blended += unmixed
        np.put(fg_pixels, index, np.rint(blended).astype(np.uint8).view("V3").reshape(-1))


def _as_pixels(rgb: np.ndarray) -> np.ndarray:
    """An H x W x 3 uint8 image as a flat array of 3-byte items: a view of a contiguous image
    (writes go through; refine's own fg8 always is), a contiguous copy of any other."""
    return np.ascontiguousarray(rgb).reshape(-1, 3).view("V3").reshape(-1)


def _rgb_of(pixels: np.ndarray) -> np.ndarray:
    """3-byte items back to N x 3 float32."""
    return pixels.view(np.uint8).reshape(-1, 3).astype(np.float32)


# U2NET_THRESHOLD_EDGES=refined: how far beyond the threshold's cut line refine decides the edge,
# as a fraction of the shorter side (issue 17; README "The website's cut-outs"). Chosen on the
# shared portraits with U2NETP, composited on green and blue and scored on grey, white and black:
# at threshold 200, 2 % gave 6.34/255 in the edge band and IoU 0.966, 1 % 6.49 and 0.965 (the
# hard cut: 17.1 and 0.963), with the two-radius colour estimate of the time (now 6.18).
EDGE_SUPPORT_FRAC = 0.02
THRESHOLD_EDGES = ("hard", "refined")


def refined_threshold(rgb: np.ndarray, alpha: np.ndarray | None, mask: np.ndarray, threshold: int,
                      params: RefineParams = REFINE,
                      support_frac: float = EDGE_SUPPORT_FRAC) -> np.ndarray:
    """Threshold mode with refine's edges and colours (U2NET_THRESHOLD_EDGES=refined).

    The threshold still decides what is subject: the region where mask >= threshold. Refine
    decides the edge within `support_frac` of that region's boundary; beyond it everything is
    transparent, and the region's interior (that far inside) stays opaque with its own colours.
    So a higher threshold removes more, 0 keeps the whole image, as with the hard rule; only the
    edge is soft, and free of the old background's colour. Gating refine's alpha by the cut line
    itself does not work: U2NETP's line at 200 lies inside the true edge (measured: 16.0/255,
    no better than the hard cut's 16.2)."""
    _check(rgb, mask)
    # 255 where the threshold removes (mask < threshold), else 0
    dropped = cv2.threshold(mask, threshold - 1, 255, cv2.THRESH_BINARY_INV)[1]
    if _tiny(rgb) or not dropped.any():  # threshold 0 keeps everything, as the hard rule does
        return apply_threshold(rgb, alpha, mask, threshold)
    fg8, alpha8 = _refined(rgb, mask, params)
    beyond, inside = _support_and_core(dropped, support_frac * min(mask.shape))
    cv2.subtract(alpha8, beyond, dst=alpha8)  # 0 beyond the support (saturating)
    cv2.copyTo(rgb, inside, fg8)  # the interior keeps its own colours, fully opaque
    cv2.max(alpha8, inside, dst=alpha8)
    return compose_rgba(fg8, _combine_alpha(alpha8, alpha))


def _support_and_core(dropped: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(farther than `radius` from every kept pixel, farther than `radius` from every dropped
    pixel), both 0/255 maps, from the 0/255 map of dropped pixels. Distance transforms on a copy
    reduced so that the radius stays about 5 of its pixels: linear in the pixels whatever the
    radius (a 45 px disc's dilation cost 40 ms at 1080p), and a few pixels of error at the far
    ends of the support, where refine's alpha is 0 or 1 anyway."""
    h, w = dropped.shape
    scale = max(1, int(radius // 5))
    if scale > 1:  # a block counts as dropped (kept) when any of its pixels is
        small = (max(1, w // scale), max(1, h // scale))
        area = cv2.resize(dropped, small, interpolation=cv2.INTER_AREA)
        any_dropped = cv2.threshold(area, 0, 255, cv2.THRESH_BINARY)[1]
        any_kept = cv2.threshold(area, 254, 255, cv2.THRESH_BINARY_INV)[1]
    else:
        any_dropped, any_kept = dropped, 255 - dropped
    r = radius / scale

    def farther_than_r(source: np.ndarray) -> np.ndarray:  # 255 where > r from every zero pixel
        distance = cv2.distanceTransform(source, cv2.DIST_L2, 3)
        return cv2.threshold(distance, r, 255, cv2.THRESH_BINARY)[1].astype(np.uint8)

    beyond, inside = farther_than_r(255 - any_kept), farther_than_r(255 - any_dropped)
    if scale > 1:
        beyond = cv2.resize(beyond, (w, h), interpolation=cv2.INTER_NEAREST)
        inside = cv2.resize(inside, (w, h), interpolation=cv2.INTER_NEAREST)
    return beyond, inside


# The subject filter, chosen on the shared ground truth with real U2NETP masks (README, "Cut-out
# quality"): regions are the 8-connected components of mask >= 32, so a region includes its soft
# edge; those under a quarter of the largest region's area are dropped. Keeping regions of 2-10 %
# changed almost nothing; a quarter gave DAVIS IoU +0.4 points and left alphamatting unchanged.
SUBJECT_LEVEL = 32
SUBJECT_MIN_FRACTION = 0.25


def drop_small_regions(mask: np.ndarray, min_fraction: float = SUBJECT_MIN_FRACTION,
                       level: int = SUBJECT_LEVEL) -> np.ndarray:
    """The mask without its small disconnected regions (stray specks, small background figures).

    Pixels under `level` outside every region are left alone: they are faint either way."""
    if _tiny(mask):
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (mask >= level).view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if count <= 2:  # background plus at most one region: nothing to drop
        return mask
    areas = stats[:, cv2.CC_STAT_AREA]
    drop = areas < min_fraction * areas[1:].max()
    drop[0] = False  # label 0 is everything under `level`
    out = mask.copy()
    # Clear each dropped region inside its own bounding box: they are small by definition, so
    # this touches a fraction of the image instead of looking every label up (12 MP: 83 -> 57 ms).
    for i in np.flatnonzero(drop):
        x, y, w, h = stats[i, :4]
        window = out[y:y + h, x:x + w]
        window[labels[y:y + h, x:x + w] == i] = 0
    return out


def cut_out(rgb: np.ndarray, alpha: np.ndarray | None, mask: np.ndarray, mode: str,
            threshold: int | None = None, params: RefineParams = REFINE,
            threshold_edges: str = "hard") -> np.ndarray:
    """The RGBA cut-out in `mode` (one of MODES); `threshold` is used by the threshold mode, with
    `threshold_edges` (THRESHOLD_EDGES: hard is the exact old rule), `params` by refine (the
    model's: refine_params)."""
    if mode == "threshold":
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        if threshold_edges == "refined":
            return refined_threshold(rgb, alpha, mask, threshold, params)
        return apply_threshold(rgb, alpha, mask, threshold)
    if mode == "soft":
        return soft_alpha(rgb, alpha, mask)
    if mode == "refine":
        return refine(rgb, alpha, mask, params)
    raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")


def composite_on_color(rgba: np.ndarray, color: tuple[int, ...]) -> np.ndarray:
    """The cut-out laid over a solid colour. `color` (r, g, b): H x W x 3 RGB, opaque. (r, g, b, a)
    with a < 255, a see-through colour: H x W x 4 RGBA, the cut-out over it ("over" in
    straight alpha: alpha = a_s + a_c (1 - a_s), colour weighted by each one's share)."""
    alpha = rgba[:, :, 3:4].astype(np.float32) * np.float32(1 / 255)
    background = np.asarray(color[:3], np.float32)
    if len(color) == 3 or color[3] >= 255:
        blended = rgba[:, :, :3].astype(np.float32) * alpha + background * (1 - alpha)
        return np.rint(blended).astype(np.uint8)
    below = np.float32(color[3] / 255) * (1 - alpha)  # the colour's share of each pixel
    total = alpha + below
    mixed = rgba[:, :, :3].astype(np.float32) * alpha
    mixed += background * below
    np.divide(mixed, total, out=mixed, where=total > 0)
    out = np.empty(rgba.shape, np.uint8)  # written a channel group at a time: no float RGBA copy
    out[:, :, :3] = np.clip(np.rint(mixed), 0, 255)
    out[:, :, 3:] = np.clip(np.rint(total * 255), 0, 255)
    return out


# -- new backgrounds ----------------------------------------------------------------------------

BG_FITS = ("cover", "contain")


def fit_background(picture: np.ndarray, size: tuple[int, int], fit: str = "cover") -> np.ndarray:
    """`picture` (H x W x 3 RGB or x 4 RGBA) at `size` (width, height): `cover` scales it to fill
    the frame and crops the overflow evenly (nothing is stretched); `contain` scales it to fit
    inside, centred, and returns RGBA with the uncovered margins transparent."""
    if fit not in BG_FITS:
        raise ValueError(f"fit must be one of {', '.join(BG_FITS)}, got {fit!r}")
    width, height = size
    ph, pw = picture.shape[:2]
    if fit == "cover":
        scale = max(width / pw, height / ph)
        # crop the source first: resizing the whole picture and cropping after would resample
        # pixels that are thrown away (a 24 MP backdrop for a small photo)
        cw, ch = min(pw, max(1, round(width / scale))), min(ph, max(1, round(height / scale)))
        x0, y0 = (pw - cw) // 2, (ph - ch) // 2
        return _resized(picture[y0:y0 + ch, x0:x0 + cw], (width, height))
    scale = min(width / pw, height / ph)
    fw, fh = max(1, min(width, round(pw * scale))), max(1, min(height, round(ph * scale)))
    out = np.zeros((height, width, 4), np.uint8)
    x0, y0 = (width - fw) // 2, (height - fh) // 2
    fitted = _resized(picture, (fw, fh))
    out[y0:y0 + fh, x0:x0 + fw] = fitted if fitted.shape[2] == 4 else compose_rgba(fitted)
    return out


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area averaging when shrinking (no aliasing), bilinear when enlarging."""
    if image.shape[1::-1] == size:
        return np.ascontiguousarray(image if image.ndim == 3 else image[:, :, None])
    shrinking = size[0] < image.shape[1] or size[1] < image.shape[0]
    resized = cv2.resize(np.ascontiguousarray(image), size,
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return resized if resized.ndim == 3 else resized[:, :, None]


def blur_sigma(strength: int, shape: tuple[int, ...]) -> float:
    """A blur strength (1-100, the bg_blur option) as a Gaussian sigma in pixels: strength
    thousandths of the image's shorter side, so a setting looks alike at every resolution."""
    return strength / 1000 * min(shape[:2])


def blurred(rgb: np.ndarray, sigma: float, weight: np.ndarray | None = None) -> np.ndarray:
    """`rgb` (uint8) Gaussian-blurred by `sigma` pixels. With `weight` (H x W uint8), a
    normalised convolution: each output pixel is the weighted mean of its neighbourhood, so that
    pixels of weight 0 (the subject, when blurring the original background) lend it none of their
    colour and the gaps they leave are filled from around them. Runs on a copy reduced so that
    sigma is about 4 pixels there (a blur is smooth: upsampling loses nothing visible), which
    keeps a strong blur at 12 MP within tens of milliseconds."""
    height, width = rgb.shape[:2]
    scale = max(1, int(sigma // 4))
    small = (max(1, width // scale), max(1, height // scale))
    if weight is not None:
        weight3 = cv2.merge([weight] * 3) if not _tiny(rgb) else np.repeat(weight[:, :, None], 3, 2)
        rgb = cv2.multiply(rgb, weight3, scale=1 / 255) if not _tiny(rgb) else np.rint(
            rgb.astype(np.float32) * weight3 / 255).astype(np.uint8)
        del weight3
    # Shrunk in 8 bits (the block averages' rounding is far below what the blur then spreads).
    coarse: np.ndarray = _resized(rgb, small).astype(np.float32)
    sigma_small = max(sigma / scale, 0.5)
    coarse = cv2.GaussianBlur(coarse, (0, 0), sigma_small, borderType=cv2.BORDER_REFLECT)
    if coarse.ndim == 2:
        coarse = coarse[:, :, None]
    if weight is not None:
        share = cv2.GaussianBlur(_resized(weight, small)[:, :, 0].astype(np.float32), (0, 0),
                                 sigma_small, borderType=cv2.BORDER_REFLECT)
        # Where nothing around has any weight (deep inside a large subject, which then hides
        # it), the weighted mean of the whole picture stands in.
        total = float(share.sum())
        fallback = coarse.reshape(-1, 3).sum(axis=0) * 255 / total if total > 0 else np.zeros(3)
        known = share > 1e-3
        coarse = np.where(known[:, :, None], coarse / np.maximum(share, 1e-3)[:, :, None] * 255,
                          fallback.astype(np.float32))
    out = cv2.resize(np.clip(np.rint(coarse), 0, 255).astype(np.uint8), (width, height),
                     interpolation=cv2.INTER_LINEAR)
    return out if out.ndim == 3 else out[:, :, None]


def original_background_weight(cut_alpha: np.ndarray, image_alpha: np.ndarray | None) -> np.ndarray:
    """Which pixels show the original background, as a uint8 weight for `blurred`: none where
    the cut-out is at least half opaque (its colour is the subject's), rising to full where it is
    transparent; the input's own transparent pixels have no colour to lend."""
    doubled = cv2.add(cut_alpha, cut_alpha) if not _tiny(cut_alpha) else np.minimum(
        cut_alpha.astype(np.int32) * 2, 255).astype(np.uint8)
    weight = np.subtract(np.uint8(255), doubled)
    if image_alpha is not None:
        weight = _combine_alpha(weight, image_alpha)
    return weight


def composite_on_image(rgba: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """The cut-out laid over a picture of the same size: H x W x 3 RGB when `backdrop` is RGB
    (opaque), H x W x 4 when it is RGBA ("over" in straight alpha, as composite_on_color). The
    cut-out's colours are used as they are: refine's are the subject's own, estimated without the
    old background, so no halo of it comes along."""
    if backdrop.shape[:2] != rgba.shape[:2]:
        raise ValueError(f"backdrop {backdrop.shape[:2]} and cut-out {rgba.shape[:2]} differ in size")
    if _tiny(rgba):
        alpha: np.ndarray = rgba[:, :, 3].astype(np.float32) / 255
        below: np.ndarray = (1 - alpha) * (1 if backdrop.shape[2] == 3 else backdrop[:, :, 3] / 255)
        mixed = (rgba[:, :, :3] * alpha[:, :, None] + backdrop[:, :, :3] * below[:, :, None]) \
            / np.maximum(alpha + below, 1e-5)[:, :, None]
        rgb: np.ndarray = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    else:
        # OpenCV throughout (numpy's strided channel slices cost 20 ms at 1080p, this whole
        # function 12): blendLinear is (w1 a + w2 b) / (w1 + w2) per pixel in one pass.
        alpha = np.multiply(cv2.extractChannel(rgba, 3), np.float32(1 / 255), dtype=np.float32)
        below = cv2.subtract(1.0, alpha)  # type: ignore[call-overload]  # stubs lack the scalar form
        if backdrop.shape[2] == 4:
            cover = np.multiply(cv2.extractChannel(backdrop, 3), np.float32(1 / 255),
                                dtype=np.float32)
            below = cv2.multiply(below, cover)
        under = backdrop if backdrop.shape[2] == 3 else cv2.cvtColor(backdrop, cv2.COLOR_RGBA2RGB)
        rgb = cv2.blendLinear(cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), under, alpha, below)
    if backdrop.shape[2] == 3:
        return rgb
    total = np.clip(np.rint((alpha + below) * 255), 0, 255).astype(np.uint8)
    return compose_rgba(rgb, total)


SUBJECT_ALPHA = 16  # alpha (0-255) from which a pixel counts as subject for bounding boxes


def subject_bbox(alpha: np.ndarray, padding: int = 0,
                 padding_percent: float = 0.0) -> tuple[int, int, int, int] | None:
    """(x, y, width, height) of the pixels with alpha >= SUBJECT_ALPHA, grown by `padding`
    pixels, or by `padding_percent` of the subject's own width (left and right) and height (top
    and bottom) when that is given, and clipped to the image; None when there is no subject."""
    subject = alpha >= SUBJECT_ALPHA
    if _tiny(alpha):
        rows, cols = subject.any(axis=1), subject.any(axis=0)
    else:  # row and column maxima in two SIMD passes (a point list would be 96 MB at 12 MP)
        as_u8 = subject.view(np.uint8)
        rows = cv2.reduce(as_u8, 1, cv2.REDUCE_MAX).ravel() > 0
        cols = cv2.reduce(as_u8, 0, cv2.REDUCE_MAX).ravel() > 0
    ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
    if ys.size == 0:
        return None
    pad_x = pad_y = padding
    if padding_percent:
        pad_x = round((int(xs[-1]) + 1 - int(xs[0])) * padding_percent / 100)
        pad_y = round((int(ys[-1]) + 1 - int(ys[0])) * padding_percent / 100)
    x0, y0 = max(0, int(xs[0]) - pad_x), max(0, int(ys[0]) - pad_y)
    x1 = min(alpha.shape[1], int(xs[-1]) + 1 + pad_x)
    y1 = min(alpha.shape[0], int(ys[-1]) + 1 + pad_y)
    return x0, y0, x1 - x0, y1 - y0
