"""What users see: a cut-out composited onto a new background, against the truth.

OpenClone's users put their cut-outs on new backgrounds, so colour bleed and ragged edges matter
more than a few alpha values. With a ground-truth alpha (the portraits' fractional mattes) the
truth of any composite is known if the photo's own colours are taken as the foreground:

    source    S = a * I + (1 - a) * B        a photo I put on an original background B
    truth     T = a * I + (1 - a) * N        the same subject on a new background N
    ours      C = a' * F' + (1 - a') * N     the service's cut-out (F', a') of S, put on N

The error is the mean absolute difference |C - T| (0-255, all three channels) over the edge band
(pixels within EDGE_BAND_PX of the true alpha's 0.5 contour: where bleed and ragged edges show)
and over the whole image. A perfect alpha and foreground score 0 whatever B and N are.

The original backgrounds are plain colours a photographer uses (green and blue screens) and
generated scenes (a colour field with texture and hard-edged shapes: clutter behind the hair);
the new ones contrast with them (grey, white, black). All pure functions of arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .metrics import disc

EDGE_BAND_PX = 6

PLAIN = {"green": (40, 170, 60), "blue": (30, 70, 200)}
NEW_BACKGROUNDS = {"grey": (128, 128, 128), "white": (255, 255, 255), "black": (0, 0, 0)}
SCENE_SEEDS = {"scene-a": 11, "scene-b": 23}


def generated_scene(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic people-free 'room': a smooth colour field, fine texture, and a few hard-edged
    blocks of other colours (the edges a matting mistake picks up)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(30, 226, (4, 6, 3), dtype=np.uint8)
    scene = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    for _ in range(6):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        scene[y0:y1 + 1, x0:x1 + 1] = rng.integers(0, 256, 3)
    scene += rng.integers(-10, 11, scene.shape, dtype=np.int16)
    return np.clip(scene, 0, 255).astype(np.uint8)


ORIGINAL_BACKGROUNDS = (*PLAIN, *SCENE_SEEDS)


def original_backgrounds(height: int, width: int,
                         names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """name -> HxWx3 uint8: the plain colours and the generated scenes (or those in `names`), at
    the photo's size."""
    unknown = set(names or ()) - set(ORIGINAL_BACKGROUNDS)
    if unknown:
        raise ValueError(f"unknown background(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(ORIGINAL_BACKGROUNDS)}")
    wanted = names or ORIGINAL_BACKGROUNDS
    out = {name: np.full((height, width, 3), colour, np.uint8)
           for name, colour in PLAIN.items() if name in wanted}
    out.update({name: generated_scene(height, width, seed)
                for name, seed in SCENE_SEEDS.items() if name in wanted})
    return out


Background = np.ndarray | tuple[int, int, int]  # an HxWx3 image or one RGB colour


def over(foreground: np.ndarray, alpha: np.ndarray, background: Background) -> np.ndarray:
    """alpha * foreground + (1 - alpha) * background, float32 0-255. `alpha` in [0, 1] (HxW);
    `background` an HxWx3 image or an RGB triple."""
    a = alpha.astype(np.float32)[:, :, None]
    bg = np.asarray(background, np.float32)
    return a * foreground.astype(np.float32) + (1 - a) * bg


def source_photo(photo: np.ndarray, alpha: np.ndarray, background: Background) -> np.ndarray:
    """The photo's subject on `background`, as the uint8 image the service is given."""
    return np.clip(np.rint(over(photo, alpha, background)), 0, 255).astype(np.uint8)


def edge_band(alpha: np.ndarray, width: int = EDGE_BAND_PX) -> np.ndarray:
    """Pixels within `width` of the alpha's 0.5 contour (boolean HxW)."""
    inside = (alpha >= 0.5).astype(np.uint8)
    kernel = disc(width)
    grown = cv2.dilate(inside, kernel, borderType=cv2.BORDER_REPLICATE)
    shrunk = cv2.erode(inside, kernel, borderType=cv2.BORDER_REPLICATE)
    return (grown > 0) & (shrunk == 0)


def cut_out_over(rgba: np.ndarray, background: Background) -> np.ndarray:
    """A uint8 RGBA cut-out over `background`, float32 0-255 (unrounded: scores stay exact)."""
    return over(rgba[:, :, :3], rgba[:, :, 3].astype(np.float32) / 255, background)


def difference(rgba: np.ndarray, photo: np.ndarray, alpha: np.ndarray,
               background: Background) -> np.ndarray:
    """|ours - truth| on `background`, averaged over the colour channels (HxW, 0-255)."""
    return np.abs(cut_out_over(rgba, background) - over(photo, alpha, background)).mean(axis=2)


@dataclass(frozen=True)
class CompositeError:
    edge: float  # mean |C - T| over the edge band, 0-255
    whole: float  # the same over the whole image


def composite_error(rgba: np.ndarray, photo: np.ndarray, alpha: np.ndarray,
                    new_background: Background, band: np.ndarray | None = None) -> CompositeError:
    """How far the cut-out `rgba` (uint8 HxWx4) on `new_background` is from the truth (`photo`'s
    colours with the true `alpha` on it). `band`: the edge band, when already computed."""
    diff = difference(rgba, photo, alpha, new_background)
    band = edge_band(alpha) if band is None else band
    edge = float(diff[band].mean()) if band.any() else 0.0
    return CompositeError(edge=edge, whole=float(diff.mean()))


def worst_edge_window(rgba: np.ndarray, photo: np.ndarray, alpha: np.ndarray,
                      new_background: Background, side: int = 96) -> tuple[int, int]:
    """(y, x) of the `side`-square window with the largest summed composite error: where to look."""
    diff = difference(rgba, photo, alpha, new_background)
    h, w = diff.shape
    side = min(side, h, w)
    summed = cv2.boxFilter(diff, -1, (side, side), normalize=False, anchor=(0, 0),
                           borderType=cv2.BORDER_CONSTANT)[: h - side + 1, : w - side + 1]
    y, x = np.unravel_index(int(np.argmax(summed)), summed.shape)
    return int(y), int(x)
