"""`bgremove remove --jobs N` against one image at a time, in one process and one run.

    python bench/cli_jobs.py --model u2netp --weights ../shared/models/u2netp/u2netp.pth --jobs 2,4

Loads the model once (as the command does), then cuts out the same images (default: the shared
portraits and photos, read in place, outputs in a temporary folder) with the command's own loop,
alternating one at a time and each N for `--rounds` rounds (a shared machine's speed drifts) after
an untimed round of each, and prints each setting's median seconds and images/s with its ratio to
one at a time. Start-up is left out: it is the same for every N.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bgservice import new_session
from bgservice.cli import _plan, _remove_all
from bgservice.library import _options

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="u2netp")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", default="2,4", help="comma-separated N to compare with 1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", default=None, help="default: the service's (refine)")
    parser.add_argument("folders", nargs="*", type=Path,
                        default=[SHARED / "portraits" / "images", SHARED / "photos"])
    args = parser.parse_args()
    settings = [1, *(int(n) for n in args.jobs.split(","))]
    with new_session(args.model, weights=args.weights, device=args.device) as session, \
            tempfile.TemporaryDirectory() as out:
        remover = session._service.remover
        options = _options(session._service.settings.default_mode,
                           {"mode": args.mode} if args.mode else {})
        # the command's own plan: every image under the folders, outputs kept in a temporary one
        todo = _plan([str(f) for f in args.folders], Path(out), options.output_format)
        print(f"{len(todo)} images, {args.model} on {args.device}, {os.cpu_count()} CPUs, "
              f"{args.rounds} rounds", flush=True)
        # An untimed round of each setting first: a job tunes each batch size when it first
        # occurs (seconds a size on a GPU), which the timed rounds must not count.
        for n in settings:
            _remove_all(todo, remover, options, quiet=True, jobs=n)
        times: dict[int, list[float]] = {n: [] for n in settings}
        for _ in range(args.rounds):
            for n in settings:
                started = time.perf_counter()
                failed = _remove_all(todo, remover, options, quiet=True, jobs=n)
                times[n].append(time.perf_counter() - started)
                if failed:
                    sys.exit(f"{failed} images failed with --jobs {n}")
    base = float(np.median(times[1]))
    print("| --jobs | median s | images/s | time vs 1 |\n|---|---|---|---|")
    for n in settings:
        median = float(np.median(times[n]))
        print(f"| {n} | {median:.2f} | {len(todo) / median:.1f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
