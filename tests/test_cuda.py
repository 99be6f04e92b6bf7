"""The CUDA path, on a machine with a GPU (skipped elsewhere: CI has none).

The same claims the CPU tests make, where the service actually runs in production: fp32 on the GPU
is exact (TF32 off) and agrees with the CPU; every precision stays within the parity bounds on the
real U2NETP weights, the reduced ones also within IoU 0.99 of fp32; concurrent requests share
batches. Run on a GPU machine with `python -m pytest tests/test_cuda.py` (see bench/gpu_run.sh).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import photo, shared_path, solo_and_concurrent_masks
from PIL import Image
from u2net.runtime import ModelRuntime, RuntimeOptions

from bgservice.imageio import decode_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MAX_MAD, MIN_IOU = 1.5, 0.98  # tests/test_parity.py's bounds


def load(weights, precision="fp32", device="cuda", **options) -> ModelRuntime:
    rt = ModelRuntime.load(RuntimeOptions(model="u2netp", weights=weights, device=device,
                                          engine="torch" if device == "cuda" else "auto",
                                          precision=precision, warmup_runs=1, **options))
    rt.start(background=False)
    assert rt.ready, rt.error
    return rt


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a >= 128, b >= 128
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_fp32_on_the_gpu_is_exact_and_equals_the_cpu(random_weights):
    gpu, cpu = load(random_weights), load(random_weights, device="cpu")
    try:
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert gpu.info()["device"].startswith("cuda") and gpu.info()["engine"] == "torch"
        for seed in range(4):
            image = photo(300, 200, seed)
            diff = np.abs(gpu.mask_for(image).astype(int) - cpu.mask_for(image).astype(int))
            assert diff.max() <= 1 and diff.mean() < 0.01, (seed, diff.max(), diff.mean())
    finally:
        gpu.close()
        cpu.close()


@pytest.fixture(scope="module")
def real_weights():
    return shared_path("models", "u2netp", "u2netp.pth")


@pytest.fixture(scope="module")
def gpu_fp32(real_weights):
    rt = load(real_weights)
    yield rt
    rt.close()


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_every_gpu_precision_stays_within_parity(real_weights, gpu_fp32, precision):
    rt = gpu_fp32 if precision == "fp32" else load(real_weights, precision)
    try:
        assert rt.info()["precision"] == precision
        if precision in ("bf16", "fp16"):  # centred convolutions, checked against fp32 at load
            assert rt.info()["precision_check"]["iou_vs_fp32"] >= 0.99
        results = shared_path("data", "parity", "u2netp_results")
        report = []
        for path in sorted(shared_path("data", "parity", "images").iterdir()):
            rgb = decode_image(path.read_bytes(), 10**8).rgb
            ours = rt.mask_for(rgb)
            ref = np.asarray(Image.open(results / f"{path.stem}.png").convert("L"))
            mad = float(np.abs(ours.astype(float) - ref).mean())
            report.append((path.name, mad, iou(ours, ref), iou(ours, gpu_fp32.mask_for(rgb))))
        print("\n".join(f"{precision} {n:20s} MAD {m:.2f} IoU {i:.4f} vs fp32 {f:.4f}"
                        for n, m, i, f in report))
        floor = 1.0 if precision == "fp32" else 0.99
        bad = [r for r in report if r[1] > MAX_MAD or r[2] < MIN_IOU or r[3] < floor]
        assert not bad, bad
    finally:
        if rt is not gpu_fp32:
            rt.close()


def test_concurrent_requests_share_gpu_batches(random_weights):
    rt = load(random_weights, max_batch=8, max_wait_ms=50)
    try:
        alone, together, sizes = solo_and_concurrent_masks(
            rt, [photo(320, 240, seed) for seed in range(16)])
    finally:
        rt.close()
    assert max(sizes) > 1, sizes
    for a, b in zip(alone, together, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_every_batch_size_is_warm_on_the_thread_that_serves(random_weights):
    """PyTorch keeps cuDNN's tuned plans per thread (pytorch/pytorch#103939). Warm-up used to run
    batch sizes 2..8 on its own thread; on an H200 the batcher then tuned each new size again,
    2.8 s each, in front of the requests of that batch. Now warm-up runs on the batcher's thread,
    so the first forward of every size there is as quick as any later one."""
    rt = load(random_weights, max_batch=8)
    x = np.zeros((8, 3, 320, 320), np.float32)

    def forwards() -> list[float]:
        seconds = []
        for n in range(1, 9):
            started = time.perf_counter()
            rt.predictor(x[:n])  # returns host arrays: the time includes the GPU's work
            seconds.append(time.perf_counter() - started)
        return seconds

    try:
        first, again = rt.batcher.call(forwards), rt.batcher.call(forwards)
    finally:
        rt.close()
    print("first forward per batch size (s):", [round(s, 3) for s in first],
          "again:", [round(s, 3) for s in again])
    assert max(first) < 0.5, (first, again)  # tuning a size took 2.8 s; a warm batch of 8, ~0.05
