"""Peak memory per megapixel of each stage of the pipeline, per output mode.

    python bench/memory.py [--megapixels 12,24] [--modes threshold,soft,refine,refine+bg,refine+blur]

For each mode and size, a fresh process (so that nothing is cached from the last case) warms the
pipeline up on a small photo, then runs one large synthetic photo through the real stages (decode,
mask, compose, encode) and reads the peak resident memory of each stage from Linux
(/proc/self/status VmHWM, reset between stages through /proc/self/clear_refs). It prints the peak
above the memory held before the stage, in bytes per pixel: what the service's memory budget
(bgservice/pipeline.py, MEMORY_BYTES_PER_PIXEL) must cover. Uses the real U2NETP weights from
../shared when they are there, random ones otherwise (the same memory either way).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"

CHILD = r"""
import json, sys
from dataclasses import replace
import cv2, numpy as np, torch
from pathlib import Path
from u2net.model import U2NETP
from u2net.runtime import ModelRuntime, RuntimeOptions
from bgservice.imageio import decode_image
from bgservice.options import OutputOptions, compose_output, encode_output

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

mode, megapixels, weights = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if not Path(weights).exists():
    torch.manual_seed(0)
    torch.save(U2NETP().state_dict(), weights)
runtime = ModelRuntime.load(RuntimeOptions(model="u2netp", weights=Path(weights), warmup_runs=1,
                                           precision="fp32", cache_dir=Path(weights).parent))
runtime.start(background=False)
mode, _, extra = mode.partition("+")  # "refine+bg": over a colour instead of transparent;
# +blur: the original background blurred (bg_blur 20); +image: a picture of the same size behind
options = OutputOptions(mode=mode, threshold=200 if mode == "threshold" else None,
                        bg_color=(255, 255, 255) if extra == "bg" else None,
                        bg_blur=20 if extra == "blur" else 0)

def photo(width, height, seed=0):
    rng = np.random.default_rng(seed)
    field = cv2.resize(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", cv2.add(field, noise))
    return jpeg.tobytes()

def run(data):
    stages, start = {}, rss("VmRSS")
    def stage(name, fn):
        before = rss("VmRSS")
        reset_peak()
        out = fn()
        peak = rss("VmHWM")
        stages[name] = peak - before
        stages["whole request"] = max(stages.get("whole request", 0), peak - start)
        return out
    image = stage("decode", lambda: decode_image(data, 10**9))
    mask = stage("mask", lambda: runtime.mask_for(image.rgb))
    chosen = options
    if extra == "image":  # decoded before the stage: its own decode is BG_IMAGE_BYTES_PER_PIXEL
        chosen = replace(options, bg_image=decode_image(photo(*image.size, seed=1), 10**9))
    pixels = stage("compose", lambda: compose_output(image, mask, chosen)[0])
    del chosen
    stage("encode", lambda: encode_output(pixels, options.output_format))
    return stages

run(photo(640, 480))
width = int((megapixels * 1e6 * 16 / 9) ** 0.5)
height = int(megapixels * 1e6 / width)
data = photo(width, height)
stages = run(data)
print(json.dumps({"pixels": width * height, "stages": stages}))
"""


def measure(mode: str, megapixels: float, weights: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(megapixels), str(weights)],
                         check=True, capture_output=True, text=True, cwd=PROJECT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", default="12,24")
    parser.add_argument("--modes", default="threshold,soft,refine,threshold+bg,refine+bg,"
                                           "refine+blur,refine+image",
                        help="modes; +bg: composited onto a colour (bg_color); +blur: the "
                             "original background blurred (bg_blur); +image: onto a picture "
                             "(bg_image)")
    args = parser.parse_args()
    real = SHARED / "models" / "u2netp" / "u2netp.pth"
    weights = real if real.exists() else PROJECT / "bench" / "out" / "random-u2netp.pth"
    weights.parent.mkdir(parents=True, exist_ok=True)
    print(f"weights: {weights}; peak resident bytes per pixel above the memory before each stage")
    print(f"{'mode':12s} {'MP':>5s} {'decode':>7s} {'mask':>6s} {'compose':>8s} {'encode':>7s} "
          f"{'whole':>6s}")
    for mode in args.modes.split(","):
        for mp in (float(m) for m in args.megapixels.split(",")):
            result = measure(mode, mp, weights)
            per = {k: v / result["pixels"] for k, v in result["stages"].items()}
            print(f"{mode:12s} {mp:5.0f} {per['decode']:7.1f} {per['mask']:6.1f} "
                  f"{per['compose']:8.1f} {per['encode']:7.1f} {per['whole request']:6.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
