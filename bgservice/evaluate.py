"""The quality harness: the full pipeline over a folder with ground truth, per image and overall.

    bgremove evaluate DATA [--mode soft --mode refine --mode threshold:200 ...]
                           [--model u2netp=PATH --model u2net_human_seg ...] [--out DIR]
                           [--composites] [--limit N]

DATA holds images/ and masks/ or alphas/ (ground-truth alpha, binary or fractional, same stem;
any format Pillow reads) and optionally trimaps/ (0 / 128 / 255; 128 = unknown). Each image is
decoded, run through the model once, then through each mode's post-processing, and the alpha of
the actual RGBA output is scored (bgservice.metrics): IoU at 0.5, boundary F at 3 px, MAE, SAD,
MSE and gradient error over the whole image and, with a trimap, its unknown region; plus the time
of the mask and of each mode's post-processing. With composites (the default for alphas/), each
subject is first put on plain and generated backgrounds, and every cut-out is also scored as users
see it, on new backgrounds (bgservice.composites). Writes results.csv (one row per image, original
background and mode), summary.csv (mean, median, 10th percentile), contact_sheet.png (image |
ground truth | alpha | cut-out on a checkerboard) and, with composites, worst_edges.png.
"""
from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import Image_PostProcesser as post

from . import composites as comp
from .errors import BadRequest
from .fields import MODE, THRESHOLD
from .imageio import decode_image
from .metrics import all_metrics

SUMMARY_STATS: dict[str, Callable[[list[float]], float]] = {
    "mean": np.mean, "median": np.median, "p10": lambda v: np.percentile(v, 10)}


@dataclass(frozen=True)
class ModeSpec:
    """A mode as named on the command line: 'soft', 'refine', 'threshold:200'."""

    label: str
    mode: str
    threshold: int | None = None
    subject_filter: bool = False
    threshold_edges: str = "hard"  # "refined": U2NET_THRESHOLD_EDGES=refined

    @classmethod
    def parse(cls, text: str) -> ModeSpec:
        """'soft', 'refine', 'threshold:200', each optionally with '+filter' (subject filter);
        a threshold also with '+refined' (its edges as U2NET_THRESHOLD_EDGES=refined draws them)."""
        base, *extras = text.split("+")
        unknown = [e for e in extras if e not in ("filter", "refined")]
        if unknown:
            raise ValueError(f"unknown addition {unknown[0]!r} in {text!r}; only '+filter' and "
                             "'+refined' exist")
        suffix = "".join(f"+{e}" for e in extras)
        edges = "refined" if "refined" in extras else "hard"
        mode, _, value = base.partition(":")
        try:  # the service's own checks and messages (bgservice.fields)
            mode = MODE.from_string(mode)
            threshold = THRESHOLD.from_string(value) if mode == "threshold" else None
        except BadRequest as exc:
            raise ValueError(exc.message) from None
        if mode == "threshold":
            threshold = post.DEFAULT_THRESHOLD if threshold is None else threshold
            return cls(f"threshold:{threshold}{suffix}", mode, threshold, "filter" in extras, edges)
        if edges == "refined":
            raise ValueError(f"'+refined' applies to threshold modes only, not {text!r}")
        return cls(mode + suffix, mode, None, "filter" in extras)


def find_cases(data: Path) -> list[tuple[str, Path, Path, Path | None]]:
    """(stem, image, ground truth, trimap or None) for every image with a ground-truth file."""
    def by_stem(folder: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(folder.iterdir())} if folder.is_dir() else {}

    # Ground truth in masks/ (binary or fractional) or alphas/ (the portraits' fractional mattes).
    truth = next((d for d in ("masks", "alphas") if (data / d).is_dir()), "masks")
    images, masks, trimaps = (by_stem(data / d) for d in ("images", truth, "trimaps"))
    cases = [(stem, images[stem], masks[stem], trimaps.get(stem)) for stem in images if stem in masks]
    if not cases:
        raise FileNotFoundError(f"no image in {data}/images has a ground truth in {data}/masks "
                                f"or {data}/alphas")
    return cases


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255


def checkerboard(h: int, w: int, cell: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    board = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 255, 200).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def on_checkerboard(rgba: np.ndarray) -> np.ndarray:
    return np.rint(comp.cut_out_over(rgba, checkerboard(*rgba.shape[:2]))).astype(np.uint8)


def _tile(rgb: np.ndarray, height: int) -> np.ndarray:
    w = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    return cv2.resize(rgb, (w, height), interpolation=cv2.INTER_AREA)


def contact_row(image, gt, rgba, height=160) -> np.ndarray:
    def gray(a):
        return np.repeat((a * 255).astype(np.uint8)[:, :, None], 3, axis=2)

    tiles = [image, gray(gt), gray(rgba[:, :, 3] / 255), on_checkerboard(rgba)]
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = []
    for t in tiles:
        row += [_tile(t, height), gap]
    return np.hstack(row[:-1])


@dataclass
class _Case:
    stem: str
    rgb: np.ndarray  # what the service is given
    alpha_in: np.ndarray | None  # the input's own alpha channel, if any
    gt: np.ndarray
    unknown: np.ndarray | None
    background: str | None = None  # composites: the original background's name
    photo: np.ndarray | None = None  # composites: the photo whose colours are the truth
    band: np.ndarray | None = None  # composites: the true alpha's edge band (one per image)


def _cases(data: Path, composites: bool, limit: int | None,
           backgrounds: tuple[str, ...] | None = None):
    """Each image as given or, with `composites`, its subject put on every original background
    (or on those named in `backgrounds`)."""
    for stem, image_path, gt_path, trimap_path in find_cases(Path(data))[:limit]:
        image = decode_image(image_path.read_bytes(), 10**9)
        gt = _gray(gt_path)
        unknown = None
        if trimap_path is not None:
            trimap = np.asarray(Image.open(trimap_path).convert("L"))
            unknown = (trimap > 32) & (trimap < 224)
        if not composites:
            yield _Case(stem, image.rgb, image.alpha, gt, unknown)
            continue
        band = comp.edge_band(gt)
        for name, background in comp.original_backgrounds(gt.shape[0], gt.shape[1], backgrounds).items():
            yield _Case(stem, comp.source_photo(image.rgb, gt, background), None, gt, unknown,
                        name, image.rgb, band)


def _composite_scores(rgba: np.ndarray, case: _Case) -> dict:
    assert case.photo is not None
    scores = {f"composite_{part}_{name}": value
              for name, colour in comp.NEW_BACKGROUNDS.items()
              for part, value in vars(comp.composite_error(rgba, case.photo, case.gt, colour,
                                                           case.band)).items()}
    for part in ("edge", "whole"):
        scores[f"composite_{part}"] = float(np.mean([v for k, v in scores.items()
                                                     if k.startswith(f"composite_{part}_")]))
    return scores


def evaluate(data: Path, modes: list[ModeSpec], mask_fn, out: Path | None = None,
             sheet_height: int = 160, log=print, label: str = "",
             refine: post.RefineParams = post.REFINE, composites: bool = False,
             limit: int | None = None, worst: WorstEdges | None = None,
             backgrounds: tuple[str, ...] | None = None):
    """Run every case through `mask_fn` (RGB -> uint8 mask) and each mode (refine with `refine`,
    the model's parameters: post.refine_params).

    With `composites` (for fractional ground truth, e.g. the portraits), each photo's subject is
    first put on every original background of bgservice.composites, and each result is also
    scored on the new backgrounds there (composite_edge, composite_whole, 0-255): one row per
    image, original background and mode; `backgrounds`: only these original backgrounds (names
    of composites.original_backgrounds). `limit`: only the first so many images. `worst`
    collects the close-ups of the worst edges (one collector may serve several models' runs).

    Returns (rows, summary, contact-sheet rows); rows' mode is prefixed with `label` (a model's
    name when several are compared). With `out`, also writes the CSVs and the contact sheets."""
    rows, sheet = [], []
    worst = WorstEdges() if worst is None else worst
    for case in _cases(Path(data), composites, limit, backgrounds):
        started = time.perf_counter()
        mask = mask_fn(case.rgb)
        mask_ms = (time.perf_counter() - started) * 1000
        for spec in modes:
            started = time.perf_counter()
            m = post.drop_small_regions(mask) if spec.subject_filter else mask
            rgba = post.cut_out(case.rgb, case.alpha_in, m, spec.mode, spec.threshold, refine,
                                spec.threshold_edges)
            post_ms = (time.perf_counter() - started) * 1000
            alpha = rgba[:, :, 3].astype(np.float32) / 255
            row = {"image": case.stem, "mode": label + spec.label, "mask_ms": round(mask_ms, 1),
                   "post_ms": round(post_ms, 1)}
            if case.background is not None:
                row["background"] = case.background
            scores = all_metrics(alpha, case.gt, case.unknown)
            if case.photo is not None:
                scores.update(_composite_scores(rgba, case))
                worst.offer(row, scores["composite_edge"], rgba, case)
            row.update({k: round(v, 5) for k, v in scores.items()})
            rows.append(row)
            if case.background in (None, next(iter(comp.PLAIN))):  # one sheet row per image
                sheet.append(contact_row(case.rgb, case.gt, rgba, sheet_height))
        log(f"{case.stem}{'/' + case.background if case.background else ''}: " + ", ".join(
            f"{r['mode']} IoU {r['iou']:.3f}" for r in rows[-len(modes):]))
    summary = summarise(rows)
    if out is not None:
        write_outputs(Path(out), rows, summary, sheet, worst)
    return rows, summary, sheet


class WorstEdges:
    """The cut-outs with the largest composite edge error, as close-ups of their worst window on a
    dark and a light background: truth and ours side by side (worst_edges.png)."""

    def __init__(self, keep: int = 8, side: int = 128):
        self.keep, self.side = keep, side
        self.entries: list[tuple[float, str, np.ndarray]] = []

    def offer(self, row: dict, edge_error: float, rgba: np.ndarray, case: _Case) -> None:
        if len(self.entries) >= self.keep and edge_error <= self.entries[-1][0]:
            return
        assert case.photo is not None
        tiles = []
        for colour in (comp.NEW_BACKGROUNDS["black"], comp.NEW_BACKGROUNDS["white"]):
            y, x = comp.worst_edge_window(rgba, case.photo, case.gt, colour, self.side)
            window = (slice(y, y + self.side), slice(x, x + self.side))
            truth = comp.over(case.photo[window], case.gt[window], colour)
            ours = comp.cut_out_over(rgba[window], colour)
            tiles += [np.clip(np.rint(t), 0, 255).astype(np.uint8) for t in (truth, ours)]
        gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        strip = np.hstack([tiles[0], gap, tiles[1], gap, gap, tiles[2], gap, tiles[3]])
        text = f"{row['image']} {row.get('background', '')} {row['mode']}: {edge_error:.1f}/255"
        self.entries.append((edge_error, text, strip))
        self.entries.sort(key=lambda e: -e[0])
        del self.entries[self.keep:]

    def sheet(self) -> np.ndarray:
        """Rows of (truth | ours on black, truth | ours on white), each under its caption."""
        width = max(strip.shape[1] for _, _, strip in self.entries)
        rows = []
        for _, text, strip in self.entries:
            caption = np.full((18, width, 3), 255, np.uint8)
            cv2.putText(caption, text, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                        cv2.LINE_AA)
            rows += [caption, np.pad(strip, ((0, 6), (0, width - strip.shape[1]), (0, 0)),
                                     constant_values=255)]
        return np.vstack(rows)


def summarise(rows: list[dict]) -> list[dict]:
    metrics = [k for k in rows[0] if k not in ("image", "mode", "background")]
    summary = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        for stat, fn in SUMMARY_STATS.items():
            entry = {"mode": mode, "stat": stat}
            for m in metrics:
                values = [r[m] for r in mine if m in r]
                if values:
                    entry[m] = round(float(fn(values)), 5)
            summary.append(entry)
    return summary


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(out: Path, rows, summary, sheet_rows, worst: WorstEdges | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "results.csv", rows)
    _write_csv(out / "summary.csv", summary)
    width = max(r.shape[1] for r in sheet_rows)
    padded = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255)
              for r in sheet_rows]
    cv2.imwrite(str(out / "contact_sheet.png"), cv2.cvtColor(np.vstack(padded), cv2.COLOR_RGB2BGR))
    if worst is not None and worst.entries:
        cv2.imwrite(str(out / "worst_edges.png"), cv2.cvtColor(worst.sheet(), cv2.COLOR_RGB2BGR))
