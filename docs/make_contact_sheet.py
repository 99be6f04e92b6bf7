"""Regenerate docs/contact-sheet-example.png: the quality harness on synthetic scenes.

    python docs/make_contact_sheet.py [--weights ../shared/models/u2netp/u2netp.pth]

The shared evaluation data may not be shipped, so the README's example uses scenes drawn here,
with a known alpha: soft-edged discs and a mug on coloured backgrounds. The harness runs the real
U2NETP weights (read in place) through threshold 200, soft, refine and threshold 200 with
refined edges (U2NET_THRESHOLD_EDGES=refined).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def scene(kind: int, size=(320, 240)) -> tuple[np.ndarray, np.ndarray]:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    hard = np.zeros((h, w), np.float32)
    if kind == 0:
        hard[((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (h / 3) ** 2] = 1
        fg, bg = (0.95, 0.8, 0.2), (0.15, 0.3, 0.85)
    elif kind == 1:
        cv2.ellipse(hard, (w // 2, h // 2), (w // 4, h // 3), 20, 0, 360, 1, -1)
        fg, bg = (0.9, 0.3, 0.3), (0.2, 0.6, 0.3)
    else:
        cv2.rectangle(hard, (w // 3, h // 4), (w // 2 + 20, 3 * h // 4), 1, -1)
        cv2.ellipse(hard, (w // 2 + 30, h // 2), (30, 45), 0, -90, 90, 1, 12)
        fg, bg = (0.8, 0.15, 0.1), (0.75, 0.8, 0.9)
    alpha = cv2.GaussianBlur(hard, (0, 0), 2.5)
    a = alpha[..., None]
    image = a * np.asarray(fg, np.float32) + (1 - a) * np.asarray(bg, np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), (alpha * 255).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path,
                        default=HERE.parents[1] / "shared" / "models" / "u2netp" / "u2netp.pth")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for sub in ("images", "masks"):
            (data / sub).mkdir(parents=True)
        for kind in range(3):
            image, alpha = scene(kind)
            Image.fromarray(image).save(data / "images" / f"scene{kind}.png")
            Image.fromarray(alpha).save(data / "masks" / f"scene{kind}.png")
        out = Path(tmp) / "out"
        subprocess.run([sys.executable, "-m", "bgservice", "evaluate", str(data), "--model",
                        f"u2netp={args.weights}", "--mode", "threshold:200", "--mode", "soft",
                        "--mode", "refine", "--mode", "threshold:200+refined", "--out", str(out)],
                       check=True)
        sheet = Image.open(out / "contact_sheet.png")
        sheet.save(HERE / "contact-sheet-example.png", optimize=True)
    print(f"written {HERE / 'contact-sheet-example.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
