"""The security audit's attacks against the production server, with their figures in one table.

    python bench/reliability.py            # about 5 minutes on 2 cores
    python bench/reliability.py --quick    # fewer rounds (about 2 minutes)

Runs the production command (gunicorn with gunicorn_conf.py; behind nginx through
deploy/run-local.sh where the attack is about slow clients) on loopback, with the real U2NETP
weights from ../shared (random U2NETP weights when they are absent), and tries:

  1. the output folder swapped for a symlink to an outside folder while requests run, and the
     source flipped between a file and a symlink to an outside photo: files written or read
     outside the shared root;
  2. bad inputs, the audit's former 500s among them: the status codes they get;
  3. overload: the sustainable throughput (2 clients, one after another), then requests arriving
     at four times that rate: the useful throughput as a share of the sustainable one; and, harsher,
     four times the clients each retrying at once on 503;
  4. SIGKILL of the worker while it writes: partial PNGs and stray temporary files left;
  5. 50 slow uploads for 30 s, through nginx and, for contrast, against bare gunicorn: the
     website's call's median against idle, and /health;
  6. a burst of decompression bombs (a small PNG that decodes to 50 MP; uploads and batch jobs at
     once): the worker's peak resident memory against its idle size and its budget.

Shared machines are noisy: ratios are measured against a baseline taken in the same run. Nothing
from ../shared is copied or kept: outputs live in a temporary folder that is removed.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
sys.path.insert(0, str(PROJECT / "tests"))

# The attacks themselves live with the tests that run them (tests/helpers.py: one copy of each).
from helpers import (  # noqa: E402
    LocalProduction,
    SlowClients,
    Swapper,
    bomb_burst,
    bomb_png,
    dockerfile_cmd,
    files_under,
    free_port,
    poll_ready,
    worker_pids,
)

ROWS: list[tuple[str, str, str]] = []


def row(finding: str, before: str, now: str) -> None:
    ROWS.append((finding, before, now))
    print(f"  {finding}: {now}", flush=True)


def weights(work: Path) -> Path:
    real = SHARED / "models" / "u2netp" / "u2netp.pth"
    if real.exists():
        return real
    import torch
    from u2net.model import U2NETP

    torch.manual_seed(0)
    path = work / "random-u2netp.pth"
    torch.save(U2NETP().state_dict(), path)
    return path


def photo_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A real photo from ../shared resized, or a synthetic one."""
    source = SHARED / "data" / "photos" / "Two_dancers.jpg"
    if source.exists():
        image = Image.open(source).convert("RGB").resize((width, height))
    else:
        rng = np.random.default_rng(seed)
        image = Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Server:
    """The production command (gunicorn_conf.py) on a free loopback port, ready."""

    def __init__(self, root: Path, weights_path: Path, **env: str):
        cmd = dockerfile_cmd()
        cmd[0] = str(Path(sys.executable).with_name("gunicorn"))
        port = free_port()
        # The log goes to a file: a pipe nobody reads while the attack runs would fill up and
        # block the server's logging (and so its requests).
        self.log = open(root.parent / f"server-{port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=PROJECT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PORT": str(port), "U2NET_DEVICE": "cpu", "U2NET_WARMUP_RUNS": "1",
                 "U2NET_PRECISION": "fp32", "U2NET_CACHE_DIR": str(root.parent / "onnx-cache"),
                 "OpenClone_OpenCloneFS": str(root), "U2NET_MODEL": "u2netp",
                 "U2NET_WEIGHTS": str(weights_path), **env})
        self.base = f"http://127.0.0.1:{port}"
        self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        """Until /ready says 200 (at start, and after a worker is killed and replaced)."""
        try:
            poll_ready(self.proc, self.base, timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}:\n{Path(self.log.name).read_text()[-2000:]}") from None

    def worker(self) -> int:
        return worker_pids(self.proc.pid)[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


def call(base: str, source: str, output: str, **extra) -> requests.Response:
    return requests.post(f"{base}/remove-background", timeout=100, headers={"Connection": "close"},
                         json={"sourceImagePath": source, "outputImagePath": output, **extra})


# -- 1. symlink races ------------------------------------------------------------------------------

def races(work: Path, weights_path: Path, rounds: int) -> None:
    root, outside = work / "race-root", work / "race-outside"
    (root / "Clones").mkdir(parents=True)
    (root / "out").mkdir()
    outside.mkdir()
    (root / "Clones" / "in.jpg").write_bytes(photo_bytes(640, 480))
    (outside / "outside.jpg").write_bytes(photo_bytes(800, 600, seed=1))
    before = files_under(outside)
    server = Server(root, weights_path)
    try:
        codes = collections.Counter()
        with Swapper(root / "out", outside, hold_s=0.002):
            for i in range(rounds):
                codes[call(server.base, "/Clones/in.jpg", f"/out/{i}.png", threshold=200).status_code] += 1
        written_outside = len(set(files_under(outside)) - set(before))
        row("output folder swapped for a symlink during inference",
            "45 of 45 complete PNGs written outside",
            f"{written_outside} of {rounds} written outside; codes {dict(sorted(codes.items()))}")
        codes, read_outside = collections.Counter(), 0
        reads = rounds * 4
        with Swapper(root / "Clones" / "in.jpg", outside / "outside.jpg", hold_s=0.003):
            for _ in range(reads):
                r = call(server.base, "/Clones/in.jpg", "/out/src.png", threshold=200)
                codes[r.status_code] += 1
                if r.status_code == 200 and r.json()["width"] == 800:  # the outside photo's size
                    read_outside += 1
        row("source flipped between a file and a symlink to an outside file",
            "12 of 1,800 read the outside file; one 500",
            f"{read_outside} of {reads} read outside; codes {dict(sorted(codes.items()))}")
        assert files_under(outside) == before
    finally:
        server.close()


# -- 2. bad inputs -------------------------------------------------------------------------------

def bad_inputs(work: Path, weights_path: Path) -> None:
    root = work / "bad-root"
    (root / "Clones").mkdir(parents=True)
    (root / "Clones" / "in.jpg").write_bytes(photo_bytes(320, 240))
    (root / "Clones" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    os.mkfifo(root / "Clones" / "fifo.png")
    os.symlink("/etc/passwd", root / "Clones" / "link.png")
    server = Server(root, weights_path, MAX_UPLOAD_MB="1")
    base = server.base
    ok = {"sourceImagePath": "/Clones/in.jpg", "outputImagePath": "/Clones/out.png"}
    jpeg = (root / "Clones" / "in.jpg").read_bytes()

    def raw_json(body: str, content_type: str = "application/json") -> requests.Response:
        return requests.post(f"{base}/remove-background", data=body,
                             headers={"Content-Type": content_type})

    surrogate = '{"sourceImagePath": "/\\ud800.png", "outputImagePath": "/o.png"}'
    tries = [
        ("nested JSON", lambda: raw_json("[" * 30000 + "]" * 30000)),
        ("lone surrogate in a path", lambda: raw_json(surrogate)),
        ("bg_color=²,1,1", lambda: requests.post(f"{base}/api/remove?bg_color=²,1,1", data=jpeg)),
        ("300-character file name", lambda: call(base, "/Clones/in.jpg", "/" + "n" * 300 + ".png")),
        ("output path = source path", lambda: call(base, "/Clones/in.jpg", "/Clones/in.jpg")),
        ("text/plain JSON (cross-site)", lambda: raw_json(json.dumps(ok), "text/plain")),
        ("chunked upload over MAX_UPLOAD_MB", lambda: requests.post(
            f"{base}/api/remove", data=(b"x" * 65536 for _ in range(40)))),
        ("symlink to /etc/passwd", lambda: call(base, "/Clones/link.png", "/o.png")),
        ("FIFO as source", lambda: call(base, "/Clones/fifo.png", "/o.png")),
        ("not an image", lambda: call(base, "/Clones/broken.png", "/new/dir/o.png")),
        ("traversal", lambda: call(base, "/../../etc/passwd", "/o.png")),
        ("absolute Windows path", lambda: call(base, "C:\\x.png", "/o.png")),
        ("NUL byte", lambda: call(base, "/Clones/in.jpg\x00.png", "/o.png")),
        ("missing source", lambda: call(base, "/nope.png", "/o.png")),
        ("output is a folder", lambda: call(base, "/Clones/in.jpg", "/Clones")),
        ("threshold 256", lambda: call(base, "/Clones/in.jpg", "/o.png", threshold=256)),
        ("threshold true", lambda: call(base, "/Clones/in.jpg", "/o.png", threshold=True)),
        ("unknown field", lambda: call(base, "/Clones/in.jpg", "/o.png", treshold=200)),
        ("empty upload", lambda: requests.post(f"{base}/api/remove", data=b"")),
        ("batch of 33 jobs", lambda: requests.post(f"{base}/remove-background/batch",
                                                   json={"jobs": [ok] * 33})),
    ]
    codes, lines = collections.Counter(), []
    try:
        for name, send in tries:
            r = send()
            codes[r.status_code] += 1
            lines.append(f"{name} {r.status_code}")
    finally:
        server.close()
    created = (root / "new").exists()
    fives = sum(n for code, n in codes.items() if code >= 500)
    print("   ", "; ".join(lines))
    row("bad inputs (the audit's former 500s among them)",
        "nested JSON, lone surrogate, bg_color=²,1,1, 300-char name: 500",
        f"{len(tries)} kinds: {dict(sorted(codes.items()))}, {fives} 5xx; a failed request "
        f"{'created' if created else 'created no'} folders")


# -- 3. overload ---------------------------------------------------------------------------------

def closed_loop(base: str, clients: int, seconds: float) -> tuple[float, int]:
    """(successful requests per second, 503s) with `clients` clients that each send the next
    request as soon as the last is answered (a 503 included: no back-off)."""
    done, refused = [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(i: int):
        while time.monotonic() < deadline:
            r = call(base, "/in.jpg", f"/out/{i}.png", threshold=200)
            with lock:
                if r.status_code == 200:
                    done[0] += 1
                elif r.status_code == 503:
                    refused[0] += 1
                else:
                    raise RuntimeError(r.text)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return done[0] / (time.monotonic() - started), refused[0]


def open_loop(base: str, rate: float, seconds: float) -> tuple[float, int]:
    """(successful requests per second, 503s) when requests arrive at `rate` per second, whether
    or not earlier ones have been answered (as many independent callers would send them)."""
    statuses: list[int] = []
    started = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        futures, n = [], 0
        while (due := started + n / rate) < started + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            futures.append(pool.submit(lambda i=n: call(base, "/in.jpg", f"/out/{i % 64}.png",
                                                         threshold=200).status_code))
            n += 1
        statuses = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 503}, collections.Counter(statuses)
    return statuses.count(200) / elapsed, statuses.count(503)


def overload(work: Path, weights_path: Path, seconds: float) -> None:
    root = work / "load-root"
    root.mkdir()
    (root / "in.jpg").write_bytes(photo_bytes(1280, 720))
    server = Server(root, weights_path, U2NET_MAX_QUEUE="4")
    try:
        closed_loop(server.base, 2, 3)  # warm
        sustainable, _ = closed_loop(server.base, 2, seconds)
        offered, refused = open_loop(server.base, 4 * sustainable, seconds)
        hammered, hammer_refused = closed_loop(server.base, 8, seconds)
    finally:
        server.close()
    row("overload: requests arriving at 4x the sustainable rate (queue 4)",
        "useful throughput fell 40 % (2x the sustainable clients)",
        f"{offered:.2f} req/s served against {sustainable:.2f} sustainable = "
        f"**{offered / sustainable:.0%}**; {refused} refused with 503 before reading")
    row("overload: 4x the sustainable clients, each retrying at once on 503 (no back-off)", "",
        f"{hammered:.2f} req/s = {hammered / sustainable:.0%} of sustainable; {hammer_refused} "
        f"refusals ({hammer_refused / seconds:.0f}/s)")


# -- 4. kills ------------------------------------------------------------------------------------

def kills(work: Path, weights_path: Path, count: int) -> None:
    root = work / "kill-root"
    root.mkdir()
    (root / "in.jpg").write_bytes(photo_bytes(4000, 3000))
    server = Server(root, weights_path, U2NET_WARMUP_RUNS="1")
    killed = 0
    try:
        for i in range(count):
            worker = server.worker()
            thread = threading.Thread(target=lambda i=i: _quietly(
                lambda: call(server.base, "/in.jpg", f"/out/{i % 3}.png", mode="soft")))
            thread.start()
            time.sleep(random.uniform(0.3, 1.5))  # somewhere in decode, inference, encode or write
            os.kill(worker, signal.SIGKILL)
            killed += 1
            thread.join(30)
            server.wait_ready()
    finally:
        server.close()
    out = root / "out"
    files = list(out.iterdir()) if out.exists() else []
    stray = [f for f in files if not f.name.endswith(".png")]
    partial = 0
    for f in files:
        if f.name.endswith(".png"):
            try:
                Image.open(f).load()
            except Exception:
                partial += 1
    row("SIGKILL of the worker during writes", "0 partial PNGs, 16 stray *.tmp files (36 MB)",
        f"{killed} kills: {partial} partial PNGs, {len(stray)} stray temporary files")


def _quietly(fn):
    with contextlib.suppress(requests.RequestException):  # the worker was killed under it
        fn()


# -- 5. slow clients -----------------------------------------------------------------------------

def slow_clients(work: Path, weights_path: Path, seconds: float) -> None:
    root = work / "slow-root"
    (root / "Clones").mkdir(parents=True)
    (root / "Clones" / "in.jpg").write_bytes(photo_bytes(640, 480))
    log = open(work / "run-local.log", "w")  # noqa: SIM115
    proxied = LocalProduction(root, weights_path, log=log)
    try:
        proxied.wait_ready()
        port = proxied.port
        through = _under_slow_clients(proxied.base, port, seconds)
    finally:
        proxied.stop()
        log.close()
    bare = Server(root, weights_path)
    try:
        port = int(bare.base.rsplit(":", 1)[1])
        direct = _under_slow_clients(bare.base, port, seconds)
    finally:
        bare.close()
    row("50 slow uploads, through nginx (deploy/run-local.sh)",
        "bare server stalled: 6 of 18 served, /health 7 of 28 (median 14 s)", through)
    row("50 slow uploads, bare gunicorn (for contrast)", "", direct)


def _under_slow_clients(base: str, port: int, seconds: float) -> str:
    def timed(fn):
        started = time.perf_counter()
        try:
            ok = fn().status_code == 200
        except requests.RequestException:
            ok = False
        return ok, time.perf_counter() - started

    website = lambda: call(base, "/Clones/in.jpg", "/Clones/out.png", threshold=200)  # noqa: E731
    health = lambda: requests.get(f"{base}/health", timeout=5)  # noqa: E731
    website()
    idle = statistics.median(timed(website)[1] for _ in range(5))
    slow = SlowClients(port, 50)
    slow.start()
    calls, probes = [], []
    try:
        time.sleep(1)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            calls.append(timed(lambda: requests.post(
                f"{base}/remove-background", timeout=10, json={
                    "sourceImagePath": "/Clones/in.jpg", "outputImagePath": "/Clones/out.png",
                    "threshold": 200})))
            probes.append(timed(health))
    finally:
        slow.stop.set()
        slow.join(10)
    served = [t for ok, t in calls if ok]
    answered = [t for ok, t in probes if ok]
    if not served or not answered:
        return (f"{len(served)} of {len(calls)} calls served within 10 s, /health answered "
                f"{len(answered)} of {len(probes)} probes within 5 s (idle call {idle * 1000:.0f} ms)")
    median = statistics.median(served)
    return (f"{len(served)} of {len(calls)} served, median {median * 1000:.0f} ms against "
            f"{idle * 1000:.0f} idle ({median / idle:.2f}x); /health {len(answered)} of "
            f"{len(probes)}, max {max(answered) * 1000:.0f} ms")


# -- 6. bombs ------------------------------------------------------------------------------------

def bombs(work: Path, weights_path: Path) -> None:
    root = work / "bomb-root"
    root.mkdir()
    data = bomb_png(9400, 5300)  # 50 MP
    for i in range(3):
        (root / f"bomb{i}.png").write_bytes(data)
    server = Server(root, weights_path)
    try:
        codes, idle, peak = bomb_burst(server.base, server.worker(), data, ["refine"] * 3,
                                       [f"/bomb{i}.png" for i in range(3)])
        statuses = collections.Counter(codes)
        budget = requests.get(f"{server.base}/model-info", timeout=10).json()["limits"]["memory_budget_mb"]
    finally:
        server.close()
    row(f"{len(data) // 1024} KB PNG decoding to 50 MP: 3 refine uploads + a batch of 3 at once",
        "worker peak 3.05 GB for one; 6.1 GB for 3; 6.8 GB for a batch of 3",
        f"codes {dict(sorted(statuses.items()))}; worker idle {idle / 1024:.0f} MB, peak "
        f"{peak / 1024:.0f} MB (+{(peak - idle) / 1024:.0f} MB, budget {budget} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="u2net-reliability-") as tmp:
        work = Path(tmp)
        weights_path = weights(work)
        print(f"weights: {weights_path}", flush=True)
        races(work, weights_path, 20 if args.quick else 45)
        bad_inputs(work, weights_path)
        overload(work, weights_path, 8 if args.quick else 20)
        kills(work, weights_path, 5 if args.quick else 20)
        slow_clients(work, weights_path, 10 if args.quick else 30)
        bombs(work, weights_path)
    print("\n| finding | the audit | now |\n|---|---|---|")
    for finding, before, now in ROWS:
        print(f"| {finding} | {before} | {now} |")


if __name__ == "__main__":
    socket.setdefaulttimeout(120)
    main()
