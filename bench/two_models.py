"""Two models in one worker (U2NET_MODELS): its memory, and each model's latency while the other
is busy, against the same model alone, in one run.

    python bench/two_models.py --isnet saved_models/isnet-general-use/isnet-general-use.pth
    python bench/two_models.py --isnet ... --precision auto     # what an AMX CPU picks

Starts the production server (gunicorn_conf.py) three times: U2NET alone, IS-Net alone, then both
(U2NET with random weights: the real ones cannot be fetched here, and its cost does not depend on
the weights; IS-Net with the given weights). For each it prints the worker's RSS when ready and
its peak after the requests; with both, each model's 1920x1080 latency (p50 of --repeat requests)
idle and while a client keeps the other model busy, as a ratio to idle. Default precision fp32
(ONNX Runtime: no compile at each start).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
from benchmark import CACHE, Server, make_inputs, random_weights

PHOTO = "1920x1080 JPEG"


def latency_ms(base: str, source: str, model: str, repeat: int) -> float:
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        reply = requests.post(f"{base}/remove-background", timeout=300, json={
            "sourceImagePath": source, "outputImagePath": f"/out/{model}-{i % 2}.png",
            "model": model})
        reply.raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def keep_busy(base: str, source: str, model: str, stop: threading.Event) -> None:
    while not stop.is_set():
        requests.post(f"{base}/remove-background", timeout=300, json={
            "sourceImagePath": source, "outputImagePath": f"/out/busy-{model}.png", "model": model})


def serve(root: Path, models: str, precision: str) -> Server:
    server = Server(root, {"U2NET_MODELS": models, "U2NET_PRECISION": precision,
                           "U2NET_CACHE_DIR": str(CACHE), "MAX_IMAGE_PIXELS": str(10**8)})
    server.wait_ready(timeout=900)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isnet", type=Path, required=True, help="IS-Net weights (.pth or .onnx)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="u2net-two-"))
    root = tmp / "OpenCloneFS"
    (root / "out").mkdir(parents=True)
    source = make_inputs(root)[PHOTO]
    u2net = f"u2net_human_seg={random_weights('U2NET', tmp)}"
    isnet = f"isnet-general-use={args.isnet.resolve()}"
    names = {"u2net_human_seg": u2net, "isnet-general-use": isnet}

    print(f"precision {args.precision}; {PHOTO}; p50 of {args.repeat} requests per figure")
    print(f"{'worker serving':34s} {'RSS ready':>10s} {'peak':>8s}  latency p50 (alone / other busy)")
    alone = {}
    for name, entry in names.items():
        server = serve(root, entry, args.precision)
        try:
            ready_rss = server.rss_mb()[0]
            alone[name] = latency_ms(server.base, source, name, args.repeat)
            print(f"{name:34s} {ready_rss:8.0f} MB {server.rss_mb()[1]:6.0f} MB  "
                  f"{alone[name]:.0f} ms", flush=True)
        finally:
            server.proc.terminate()
            server.proc.wait(60)
    server = serve(root, ",".join(names.values()), args.precision)
    try:
        ready_rss = server.rss_mb()[0]
        rows = []
        for name in names:
            idle = latency_ms(server.base, source, name, args.repeat)
            other = next(n for n in names if n != name)
            stop = threading.Event()
            busy = threading.Thread(target=keep_busy, args=(server.base, source, other, stop))
            busy.start()
            time.sleep(1.0)  # the other model is mid-request
            loaded = latency_ms(server.base, source, name, args.repeat)
            stop.set()
            busy.join()
            rows.append(f"  {name}: {idle:.0f} ms / {loaded:.0f} ms = {loaded / idle:.2f}x busy; "
                        f"idle vs the model served alone: {idle / alone[name]:.2f}x")
        print(f"{'both':34s} {ready_rss:8.0f} MB {server.rss_mb()[1]:6.0f} MB")
        print("\n".join(rows))
    finally:
        server.proc.terminate()
        server.proc.wait(60)


if __name__ == "__main__":
    main()
