"""Post-processing cost per mode at 1920x1080 on a real photo and a real U2NETP mask.

    python bench/postprocess.py [--repeat 15]

Prints the median and 90th percentile of each mode's post-processing alone (the compose stage),
so the refine budget (issue: at most 60 ms at 1920x1080 on 2 cores) can be checked, with each
mode's ratio to soft's time in the same run (the baseline: the machine is shared and noisy).
"threshold+refined" is threshold 200 under U2NET_THRESHOLD_EDGES=refined; "refine unbounded" is
refine without its bound by the mask (bound_frac 0), to show what the bound costs. "refine +
blur" and "refine + picture" are the whole compose stage with bg_blur 20 or a 4000x3000 bg_image
(cover), from the mask to the composite.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from u2net.runtime import ModelRuntime, RuntimeOptions

import Image_PostProcesser as post
from bgservice.imageio import from_array
from bgservice.options import OutputOptions, compose_output

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    photo = cv2.imread(str(SHARED / "data" / "photos" / "Two_dancers.jpg"))[:, :, ::-1]
    rgb = np.ascontiguousarray(cv2.resize(photo, (1920, 1080), interpolation=cv2.INTER_CUBIC))
    runtime = ModelRuntime.load(RuntimeOptions(
        model="u2netp", weights=SHARED / "models" / "u2netp" / "u2netp.pth", precision="fp32",
        warmup_runs=1))
    runtime.start(background=False)
    mask = runtime.mask_for(rgb)
    runtime.close()
    print(f"1920x1080, real U2NETP mask, {args.repeat} runs per mode (ms; ratio to soft)")
    unbounded = post.RefineParams(bound_frac=0)
    image = from_array(rgb)
    picture = from_array(cv2.resize(rgb[::-1], (4000, 3000), interpolation=cv2.INTER_LINEAR))
    blur, behind = OutputOptions(bg_blur=20), OutputOptions(bg_image=picture)
    cases = {
        "soft": lambda: post.cut_out(rgb, None, mask, "soft"),
        "threshold": lambda: post.cut_out(rgb, None, mask, "threshold", 200),
        "refine": lambda: post.cut_out(rgb, None, mask, "refine"),
        "refine unbounded": lambda: post.cut_out(rgb, None, mask, "refine", params=unbounded),
        "threshold+refined": lambda: post.cut_out(rgb, None, mask, "threshold", 200,
                                                  threshold_edges="refined"),
        "refine + blur": lambda: compose_output(image, mask, blur),
        "refine + picture": lambda: compose_output(image, mask, behind),
    }
    baseline = None
    for name, run in cases.items():
        run()
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        median = statistics.median(times)
        baseline = baseline or median
        print(f"  {name:18s} median {median:6.1f}   p90 {times[int(0.9 * (len(times) - 1))]:6.1f}"
              f"   {median / baseline:5.1f}x soft")


if __name__ == "__main__":
    main()
