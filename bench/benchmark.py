"""Speed benchmark: every figure is a ratio to the bare PyTorch forward measured in the same run.

    python bench/benchmark.py                 # CPU (or CUDA when present), U2NET random weights
    python bench/benchmark.py --quick         # fewer repetitions, no soak
    python bench/benchmark.py --engines-only  # the network alone in every engine and precision
    python bench/benchmark.py --rembg         # also: ours against rembg on the real U2NETP weights
    python bench/benchmark.py --soak 300      # RSS over 300 consecutive 4000x3000 requests
    python bench/benchmark.py --compare-precision fp32,bf16   # the GPU report (see below)

Measures, in one run:
  1. the bare forward pass of the configured model at batch 1, PyTorch fp32 eager (the baseline),
     and the service's own engine;
  2. full requests end to end, in-process and over HTTP against the production server (gunicorn
     with gunicorn_conf.py), for a 640x480 JPEG, 1920x1080 JPEG and PNG, and a 4000x3000 JPEG made
     from ../shared/data/photos, with every stage as a ratio of the baseline;
  3. throughput and p50/p99 latency with 1, 2 and 4 concurrent clients, peak RSS of the worker,
     and the first request after ready against a steady one; on CUDA also in-process threads
     (--threads: 1, 4, 8), with the batch sizes formed and the slowest forward;
  4. with --compare-precision: for each precision, the network's images/s at each batch size
     (--batch-sizes) and a production server's throughput and p50 under each --clients level.
     On CUDA the defaults are batch sizes 1,8,32, clients 1,32 and batch waits 0 and 2 ms
     (--batch-wait) with U2NET_MAX_BATCH 32: the issue's GPU report, bf16 against fp32, in one
     command.
Threshold 0 keeps the whole image, so the PNG encoder does real work. Results also go to
bench/out/benchmark.json. Shared machines are noisy: read the ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from timing import median_ms
from u2net.calibration import calibration_input
from u2net.engine import cpu_has_amx, mask_agreement
from u2net.model import ARCHITECTURES
from u2net.registry import get_spec
from u2net.runtime import ModelRuntime, RuntimeOptions

from bgservice.options import OutputOptions
from bgservice.paths import SharedRoot
from bgservice.pipeline import BackgroundRemover, PathJob

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
OUT = PROJECT / "bench" / "out"
# ONNX exports and torch.compile's kernels, kept between runs as a deployment's cache volume keeps
# them (compiling U2NET without a cache takes minutes on 2 cores).
CACHE = OUT / "cache"

EVERYTHING = OutputOptions(mode="threshold", threshold=0)  # keeps every pixel: the encoder works
CASES = [("640x480 JPEG", (640, 480), "jpg"), ("1920x1080 JPEG", (1920, 1080), "jpg"),
         ("1920x1080 PNG", (1920, 1080), "png"), ("4000x3000 JPEG", (4000, 3000), "jpg")]
STAGES = ("read", "decode", "resize", "forward", "upsample", "compose", "encode", "write")


def make_inputs(root: Path) -> dict[str, str]:
    """The benchmark images, cut and scaled from a real photo, written into the shared root."""
    photo = cv2.imread(str(SHARED / "data" / "photos" / "julia+trotti_17.jpg"))
    if photo is None:
        # ../shared does not travel to a GPU machine. The network's time does not depend on
        # the pixels; the codecs' does a little, so the run says so.
        print(f"NOTE: {SHARED}/data/photos is missing; using a synthetic photo (decode and "
              "encode ratios are then not comparable with runs on the real photo)")
        photo = synthetic_photo()
    paths = {}
    for name, (w, h), ext in CASES:
        ph, pw = photo.shape[:2]
        scale = max(w / pw, h / ph)
        big = cv2.resize(photo, (round(pw * scale) + 1, round(ph * scale) + 1),
                         interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
        img = big[y0:y0 + h, x0:x0 + w]
        rel = f"bench/{w}x{h}.{ext}"
        (root / "bench").mkdir(parents=True, exist_ok=True)
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == "jpg" else []
        cv2.imwrite(str(root / rel), img, params)
        paths[name] = "/" + rel
    return paths


def synthetic_photo(width: int = 2000, height: int = 1500) -> np.ndarray:
    """A photo-like BGR image: a smooth colour field with grain and a brighter subject."""
    rng = np.random.default_rng(0)
    field = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (width, height),
                       interpolation=cv2.INTER_CUBIC).astype(np.int16)
    yy, xx = np.mgrid[0:height, 0:width]
    subject = ((yy - height * 0.6) / (height * 0.45)) ** 2 + ((xx - width / 2) / (width * 0.2)) ** 2 < 1
    field[subject] = field[subject] // 2 + 100
    field += rng.integers(-10, 11, field.shape, dtype=np.int16)
    return np.clip(field, 0, 255).astype(np.uint8)


def random_weights(architecture: str, folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / f"random_{architecture.lower()}.pth"
    torch.save(ARCHITECTURES[architecture]().state_dict(), path)
    return path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bare_forward_ms(architecture: str, device: torch.device, repeat: int, size: int = 320) -> float:
    """The baseline: one eager PyTorch fp32 forward at batch 1, nothing else."""
    torch.manual_seed(0)
    net = ARCHITECTURES[architecture]().eval().to(device)
    x = torch.randn(1, 3, size, size, device=device)

    def run():
        with torch.inference_mode():
            net(x, fused_only=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return median_ms(run, repeat, warmup=2)


def engine_table(options: RuntimeOptions, device: torch.device, repeat: int) -> list[dict]:
    """The network alone at batch 1 in every engine and precision this device runs, on the same
    photo-like input (calibration.calibration_input, seed 1: not the one bf16 is calibrated on),
    as milliseconds; with each precision's masks against fp32 (IoU at 0.5, MAD /255) on that
    input, and the compile time where torch.compile ran (the first forward)."""
    combos = [("torch", "fp32", False), ("onnxruntime", "fp32", False), ("torch", "bf16", False),
              ("torch", "bf16", True)]
    if device.type == "cuda":
        combos = [("torch", "fp32", False), ("torch", "tf32", False), ("torch", "bf16", False),
                  ("torch", "fp16", False)]
    rows, reference = [], None
    for engine, precision, compiled in combos:
        runtime = ModelRuntime.load(replace(options, engine=engine, precision=precision,
                                            compile=compiled, max_batch=1))
        try:
            x = calibration_input(runtime.spec, seed=1)
            started = time.perf_counter()
            mask = runtime.predictor(x)
            first_s = time.perf_counter() - started
            reference = mask if reference is None else reference
            iou, mad = mask_agreement(reference, mask)
            ms = median_ms(lambda p=runtime.predictor, x=x: p(x), repeat, warmup=1)
            rows.append({"engine": engine, "precision": precision, "compiled": compiled,
                         "ms": ms, "iou_vs_fp32": iou, "mad_vs_fp32": mad,
                         "compile_s": round(first_s, 1) if compiled else None})
        finally:
            runtime.close()
    return rows


def in_process(remover, root, paths, repeat) -> dict:
    results = {}
    for name, path in paths.items():
        stage_runs, totals = [], []
        for i in range(repeat + 1):
            t = time.perf_counter()
            out = remover.remove_paths(root, PathJob(path, f"/bench/out-{i % 2}.png", EVERYTHING))
            if i:  # the first run of each size is a warm-up
                totals.append((time.perf_counter() - t) * 1000)
                stage_runs.append(out.timings_ms)
        results[name] = {"total": statistics.median(totals),
                         **{s: statistics.median(r.get(s, 0.0) for r in stage_runs) for s in STAGES}}
    return results


def threads_in_process(runtime, remover, root, path, clients: int, requests_each: int) -> dict:
    """`clients` threads sending the same request in-process: throughput, p50/p99, the batch
    sizes the batcher formed and the slowest forward stage (queue wait included). Without HTTP in
    the way, this is where a slow batch shows (on the H200 it found each new batch size tuned
    again)."""
    sizes: list[int] = []
    runtime.set_batch_observer(sizes.append)
    latencies, forwards = [], []

    def one(i):
        started = time.perf_counter()
        out = remover.remove_paths(root, PathJob(path, f"/bench/t{clients}-{i}.png", EVERYTHING))
        return (time.perf_counter() - started) * 1000, out.timings_ms

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for ms, timings in pool.map(one, range(clients * requests_each)):
                latencies.append(ms)
                forwards.append(timings.get("forward", 0.0))
        wall = time.perf_counter() - started
    finally:
        runtime.set_batch_observer(None)
    return {**latency_summary(clients, latencies, wall),
            "slowest_forward_ms": max(forwards),
            "batch_sizes": {n: sizes.count(n) for n in sorted(set(sizes))}}


# -- over HTTP, against the production server -----------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, env: dict):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # `python -m gunicorn`: the same server as the `gunicorn` script, also where gunicorn was
        # installed without its script (bench/gpu_run.sh installs wheels with --target).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn_conf.py"], cwd=PROJECT,
            start_new_session=True,
            env={**os.environ, "PORT": str(self.port), "OpenClone_OpenCloneFS": str(root),
                 "GUNICORN_MAX_REQUESTS": "0", "LOG_LEVEL": "warning", **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout=300):
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc.returncode} "
                                   "(3: the model failed to warm up)")
            try:
                if requests.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def worker_pid(self) -> int:
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(kids[0])

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident memory of the worker, MB (NaN where /proc cannot say)."""
        try:
            status = Path(f"/proc/{self.worker_pid()}/status").read_text()
        except (OSError, IndexError, ValueError):
            return float("nan"), float("nan")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)

    def post(self, source: str, output: str, threshold: int = 0) -> float:
        import requests

        t = time.perf_counter()
        r = requests.post(f"{self.base}/remove-background", timeout=300, json={
            "sourceImagePath": source, "outputImagePath": output, "threshold": threshold})
        r.raise_for_status()
        return (time.perf_counter() - t) * 1000

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60)


def over_http(server: Server, paths: dict, repeat: int) -> dict:
    results = {}
    for name, path in paths.items():
        for _ in range(2):  # the allocator and page cache settle over the first requests
            server.post(path, "/bench/http-warm.png")
        results[name] = statistics.median(server.post(path, f"/bench/http-{i}.png")
                                          for i in range(repeat))
    return results


def concurrency(server: Server, path: str, clients: int, requests_each: int) -> dict:
    latencies, lock = [], threading.Lock()

    def client(k):
        for i in range(requests_each):
            ms = server.post(path, f"/bench/c{clients}-{k}-{i}.png")
            with lock:
                latencies.append(ms)

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t
    return latency_summary(clients, latencies, wall)


def latency_summary(clients: int, latencies: list[float], wall_s: float) -> dict:
    """Throughput over the wall time, and the median and 99th percentile of the latencies (ms)."""
    ordered = sorted(latencies)
    return {"clients": clients, "throughput_per_s": len(ordered) / wall_s,
            "p50_ms": statistics.median(ordered),
            "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def network_batches(options: RuntimeOptions, sizes: list[int], repeat: int) -> list[dict]:
    """The service's own engine at `options`' precision: milliseconds and images/s per batch."""
    runtime = ModelRuntime.load(options)
    try:
        size = runtime.spec.input_size
        rows = []
        for n in sizes:
            batch = np.random.default_rng(n).standard_normal((n, 3, size, size), np.float32)
            ms = median_ms(lambda b=batch: runtime.predictor(b), repeat, warmup=2)
            rows.append({"precision": options.precision, "batch": n, "ms": ms,
                         "images_per_s": n * 1000 / ms})
        return rows
    finally:
        runtime.close()


def precision_comparison(args, options, device, root, env, paths, repeat) -> dict:
    """For each precision: network images/s per batch size, then concurrency over HTTP."""
    cuda = device.type == "cuda"
    precisions = [p for p in args.compare_precision.split(",") if p]
    sizes = _ints(args.batch_sizes or ("1,8,32" if cuda else "1,4"))
    clients = _ints(args.clients or ("1,32" if cuda else "1,4"))
    network, served = [], []
    for precision in precisions:
        network += network_batches(replace(options, precision=precision, max_batch=max(sizes)),
                                   sizes, repeat)
    print_table("network alone, per precision and batch size (service engine)",
                [[r["precision"], r["batch"], f"{r['ms']:.1f} ms", f"{r['images_per_s']:.1f}/s"]
                 for r in network], ["precision", "batch", "time", "images/s"])
    # U2NET_BATCH_WAIT_MS: on CUDA, whether waiting a little for companions beats taking only
    # what is already queued (the compose file sets 2 ms).
    waits = [float(w) for w in (args.batch_wait or ("0,2" if cuda else "0")).split(",") if w]
    servers = [(p, w) for p in precisions for w in waits] if not args.no_http else []
    for precision, wait in servers:
        server = Server(root, {**env, "U2NET_PRECISION": precision, "U2NET_BATCH_WAIT_MS": str(wait),
                               "U2NET_MAX_BATCH": str(args.max_batch or (32 if cuda else 1))})
        try:
            server.wait_ready()
            for c in clients:
                server.post(paths["1920x1080 JPEG"], "/bench/prec-warm.png")
                row = concurrency(server, paths["1920x1080 JPEG"], c,
                                  max(2, (64 if cuda else 8) // c))
                served.append({"precision": precision, "batch_wait_ms": wait, **row})
        finally:
            server.stop()
    if served:
        print_table("1920x1080 JPEG over HTTP, per precision, batch wait and concurrent clients",
                    [[r["precision"], f"{r['batch_wait_ms']:g} ms", r["clients"],
                      f"{r['throughput_per_s']:.2f}/s", f"{r['p50_ms']:.0f} ms",
                      f"{r['p99_ms']:.0f} ms"] for r in served],
                    ["precision", "wait", "clients", "throughput", "p50", "p99"])
    return {"network": network, "http": served}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def first_request_after_ready(root, env, path, steady_ms) -> float:
    server = Server(root, env)
    try:
        server.wait_ready()
        return server.post(path, "/bench/first.png") / steady_ms
    finally:
        server.stop()


def soak(server: Server, path: str, count: int) -> dict:
    samples = []
    for i in range(count):
        server.post(path, "/bench/soak.png")
        if i % 25 == 0 or i == count - 1:
            samples.append(server.rss_mb()[0])
    settled = samples[len(samples) // 5:]  # after the first fifth (allocator warm-up)
    return {"requests": count, "rss_mb_samples": [round(s) for s in samples],
            "growth_after_warmup_pct": 100 * (max(settled) - min(settled)) / min(settled)}


# -- report ---------------------------------------------------------------------------------------

def print_table(title: str, rows: list[list], header: list[str]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  " + "  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="u2net_human_seg")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--precision", default="auto",
                        help="auto (the service's default), fp32 (exact), tf32, bf16 or fp16")
    parser.add_argument("--weights", type=Path,
                        help="real weights (.pth or .onnx) instead of random ones: auto's check "
                             "against fp32 and the engines' agreement need them")
    parser.add_argument("--max-batch", type=int, default=0, help="U2NET_MAX_BATCH (0: auto)")
    parser.add_argument("--compare-precision", default="", metavar="P1,P2",
                        help="also compare these precisions (network batches, HTTP clients)")
    parser.add_argument("--batch-sizes", help="network batch sizes for --compare-precision")
    parser.add_argument("--clients", help="concurrency levels, comma-separated (default 1,2,4)")
    parser.add_argument("--batch-wait", metavar="MS1,MS2",
                        help="U2NET_BATCH_WAIT_MS values for --compare-precision's servers "
                             "(default 0,2 on CUDA, 0 on CPU)")
    parser.add_argument("--threads", metavar="N1,N2",
                        help="in-process concurrent threads (default 1,4,8 on CUDA; none on CPU)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--engines-only", action="store_true",
                        help="only the network alone in every engine and precision")
    parser.add_argument("--no-http", action="store_true", help="skip the production-server part")
    parser.add_argument("--rembg", action="store_true", help="compare with rembg (real U2NETP)")
    parser.add_argument("--soak", type=int, default=0, help="consecutive 4000x3000 requests")
    args = parser.parse_args()
    repeat = 3 if args.quick else 7

    spec = get_spec(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="u2net-bench-"))
    root = tmp / "OpenCloneFS"
    root.mkdir()
    weights = args.weights or random_weights(spec.architecture, tmp)
    options = RuntimeOptions(model=args.model, weights=weights, device=args.device,
                             engine=args.engine, precision=args.precision,
                             max_batch=args.max_batch, cache_dir=CACHE, warmup_runs=2)
    runtime = ModelRuntime.load(options)
    runtime.start(background=False)
    device = runtime.predictor.device
    report = {"model": spec.name, "architecture": spec.architecture, "max_batch": runtime.max_batch,
              "warmup_s": runtime.warmup_seconds,
              "device": str(device), "engine": runtime.predictor.engine,
              "precision": runtime.predictor.precision, "cpu": cpu_name(),
              "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    kind = f"weights {args.weights.name}" if args.weights else "random weights"
    print(f"model {spec.name} ({spec.architecture}, {kind})  device {device}  "
          f"engine {report['engine']}  precision {report['precision']}  "
          f"cores {report['cores']}  torch threads {report['torch_threads']}  warm-up "
          f"{report['warmup_s']:.1f} s (max batch {report['max_batch']})\ncpu {report['cpu']}"
          f"  bf16 matrix units (AMX): {'yes' if cpu_has_amx() else 'no'}")

    def baseline(section: str) -> float:
        """Re-measured before each section: a shared machine's speed drifts within a run."""
        ms = bare_forward_ms(spec.architecture, device, repeat, spec.input_size)
        report.setdefault("baselines_ms", {})[section] = ms
        print(f"\n[baseline for {section}: bare PyTorch fp32 eager forward {ms:.0f} ms]")
        return ms

    base = baseline("engine")
    x = np.zeros((1, 3, spec.input_size, spec.input_size), np.float32)
    engine_ms = median_ms(lambda: runtime.predictor(x), repeat, warmup=2)
    report.update(bare_forward_ms=base, engine_forward_ms=engine_ms)
    print(f"\nbaseline: bare PyTorch fp32 eager forward, batch 1: {base:.0f} ms (= 1.00)")
    print(f"service engine forward ({report['engine']}): {engine_ms:.0f} ms = {engine_ms / base:.2f}")
    rows = engine_table(options, device, repeat)
    base = baseline("engines")
    report["engines"] = rows
    print_table(f"the network alone at {spec.input_size}x{spec.input_size}, every engine and "
                "precision (masks against the first row, on the calibration input)",
                [[r["engine"], r["precision"] + (" compiled" if r["compiled"] else ""),
                  f"{r['ms']:.0f} ms", f"{r['ms'] / base:.2f}", f"{r['iou_vs_fp32']:.4f}",
                  f"{r['mad_vs_fp32']:.2f}",
                  f"{r['compile_s']:.0f} s" if r["compile_s"] is not None else "-"] for r in rows],
                ["engine", "precision", "time", "ratio", "IoU", "MAD/255", "compile"])
    if args.engines_only:
        write_report(report)
        runtime.close()
        return 0

    paths = make_inputs(root)
    remover = BackgroundRemover(runtime, max_image_pixels=10**8, max_source_bytes=1 << 30,
                                request_timeout_s=300)
    base = baseline("in-process")
    local = in_process(remover, SharedRoot(root), paths, repeat)
    report["in_process"] = local
    print_table("in-process request, threshold 0 (ratios to the baseline; total in ms too)",
                [[name, f"{r['total']:.0f} ms", f"{r['total'] / base:.2f}",
                  *(f"{r[s] / base:.3f}" for s in STAGES)] for name, r in local.items()],
                ["image", "total", "ratio", *STAGES])
    levels = _ints(args.threads if args.threads is not None
                   else ("1,4,8" if device.type == "cuda" else ""))
    if levels:
        rows = [threads_in_process(runtime, remover, SharedRoot(root), paths["1920x1080 JPEG"], c,
                                   3 if args.quick else 6) for c in levels]
        report["threads_in_process"] = rows
        print_table("1920x1080 JPEG in-process, concurrent threads (forward: queue wait included)",
                    [[r["clients"], f"{r['throughput_per_s']:.2f}/s", f"{r['p50_ms']:.0f} ms",
                      f"{r['p99_ms']:.0f} ms", f"{r['slowest_forward_ms']:.0f} ms",
                      " ".join(f"{n}:{k}" for n, k in r["batch_sizes"].items())] for r in rows],
                    ["threads", "throughput", "p50", "p99", "slowest forward", "batches (size:count)"])

    env = {"U2NET_MODEL": args.model, "U2NET_WEIGHTS": str(weights),
           "U2NET_DEVICE": args.device, "U2NET_ENGINE": args.engine,
           "U2NET_CACHE_DIR": str(CACHE), "MAX_IMAGE_PIXELS": str(10**8),
           "U2NET_PRECISION": args.precision, "U2NET_MAX_BATCH": str(args.max_batch)}
    if not args.no_http:
        server = Server(root, env)
        try:
            server.wait_ready()
            base = baseline("http")
            http = over_http(server, paths, repeat)
            report["http"] = http
            print_table("over HTTP, production server (gunicorn_conf.py)",
                        [[n, f"{ms:.0f} ms", f"{ms / base:.2f}"] for n, ms in http.items()],
                        ["image", "total", "ratio"])
            base = baseline("concurrency")
            rows = [concurrency(server, paths["1920x1080 JPEG"], c, 3 if args.quick else 6)
                    for c in _ints(args.clients or "1,2,4")]
            report["concurrency"] = rows
            print_table("1920x1080 JPEG, concurrent clients (throughput x bare forward time)",
                        [[r["clients"], f"{r['throughput_per_s']:.2f}/s",
                          f"{r['throughput_per_s'] * base / 1000:.2f}", f"{r['p50_ms']:.0f} ms",
                          f"{r['p99_ms']:.0f} ms"] for r in rows],
                        ["clients", "throughput", "x 1/forward", "p50", "p99"])
            for _ in range(2):
                server.post(paths["4000x3000 JPEG"], "/bench/big.png")
            report["peak_rss_mb_4000x3000"] = server.rss_mb()[1]
            print(f"\npeak RSS of the worker after 4000x3000 requests: "
                  f"{report['peak_rss_mb_4000x3000']:.0f} MB")
            if args.soak:
                report["soak"] = soak(server, paths["4000x3000 JPEG"], args.soak)
                print(f"soak, {args.soak} x 4000x3000: RSS MB {report['soak']['rss_mb_samples']}; "
                      f"growth after warm-up {report['soak']['growth_after_warmup_pct']:.1f} %")
        finally:
            server.stop()
        steady = report["http"]["1920x1080 JPEG"]
        report["first_request_ratio"] = first_request_after_ready(root, env,
                                                                  paths["1920x1080 JPEG"], steady)
        print(f"first 1920x1080 request after ready / steady state: "
              f"{report['first_request_ratio']:.2f}")

    if args.compare_precision:
        report["precisions"] = precision_comparison(args, options, device, root, env, paths,
                                                    repeat)

    if args.rembg:
        from compare_rembg import compare

        report["rembg"] = compare(paths, root, tmp, repeat)

    write_report(report)
    runtime.close()
    return 0


def write_report(report: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "benchmark.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten {OUT / 'benchmark.json'}")


if __name__ == "__main__":
    sys.exit(main())
