"""Centred bf16 against exact fp32 on every shared photo: the masks' agreement, set by set.

    python bench/precision_agreement.py u2netp ../shared/models/u2netp/u2netp.pth
    python bench/precision_agreement.py isnet-general-use saved_models/isnet-general-use/isnet-general-use.pth

For each set in ../shared/data (parity, the portraits, the photos) it prints the lowest and mean
IoU of the masks at 0.5 and the largest mean absolute difference (/255) of bf16's network output
against fp32's at the model's input size, and the worst image: issue 16's bar is IoU >= 0.99 on
the parity images and the portraits. `--compile` runs the compiled network (what `auto` serves)
instead of the eager one (the same masks to IoU 0.9999; compiling takes minutes without a cache).
The tests hold a part of this in CI (tests/test_parity.py, tests/test_parity_isnet.py); the whole
takes minutes for IS-Net, so it lives here.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from u2net.calibration import calibration_input
from u2net.engine import TorchPredictor, mask_agreement
from u2net.registry import get_spec
from u2net.transforms import to_model_input
from u2net.weights import build_model

from bgservice.imageio import decode_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"parity": SHARED / "parity" / "images", "portraits": SHARED / "portraits" / "images",
        "photos": SHARED / "photos"}
SUFFIXES = {".jpg", ".jpeg", ".png"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("weights", type=Path)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    spec = get_spec(args.model)
    cpu = torch.device("cpu")
    fp32 = TorchPredictor(build_model(spec, args.weights), cpu, "fp32")
    bf16 = TorchPredictor(build_model(spec, args.weights), cpu, "bf16", compile=args.compile,
                          calibration=torch.from_numpy(calibration_input(spec)))
    print(f"{spec.name}: centred bf16{' (compiled)' if args.compile else ''} against fp32, "
          f"at {spec.input_size}x{spec.input_size}")
    print(f"{'set':10s} {'images':>6s} {'IoU min':>8s} {'IoU mean':>9s} {'MAD max':>8s}  worst")
    for name, folder in SETS.items():
        rows = []
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES):
            x = to_model_input(decode_image(path.read_bytes(), 10**9).rgb, spec)[None]
            rows.append((*mask_agreement(fp32(x), bf16(x)), path.name))
        ious = [r[0] for r in rows]
        worst = min(rows)
        print(f"{name:10s} {len(rows):6d} {min(ious):8.4f} {np.mean(ious):9.4f} "
              f"{max(r[1] for r in rows):8.2f}  {worst[2]}", flush=True)


if __name__ == "__main__":
    main()
