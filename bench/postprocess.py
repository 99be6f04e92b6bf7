"""Post-processing cost per mode at 1920x1080 on a real photo and a real U2NETP mask.

    python bench/postprocess.py [--repeat 15]

Prints the median and 90th percentile of each mode's post-processing alone (the compose stage),
so the refine budget (issue: at most 60 ms at 1920x1080 on 2 cores) can be checked. Also prints
soft's time in the same run as the baseline to compare against.
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

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    photo = cv2.imread(str(SHARED / "data" / "photos" / "Two_dancers.jpg"))[:, :, ::-1]
    rgb = np.ascontiguousarray(cv2.resize(photo, (1920, 1080), interpolation=cv2.INTER_CUBIC))
    runtime = ModelRuntime.load(RuntimeOptions(
        model="u2netp", weights=SHARED / "models" / "u2netp" / "u2netp.pth", warmup_runs=1))
    runtime.start(background=False)
    mask = runtime.mask_for(rgb)
    runtime.close()
    print(f"1920x1080, real U2NETP mask, {args.repeat} runs per mode (ms)")
    for mode in ("threshold", "soft", "refine"):
        post.cut_out(rgb, None, mask, mode, 200)
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            post.cut_out(rgb, None, mask, mode, 200)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        print(f"  {mode:10s} median {statistics.median(times):6.1f}   "
              f"p90 {times[int(0.9 * (len(times) - 1))]:6.1f}")


if __name__ == "__main__":
    main()
