"""Ours against rembg on the same real weights (U2NETP from ../shared), file to file.

rembg gets an ONNX export of the very same weights through its `u2net_custom` session, placed in
its own model folder (U2NET_HOME), as recent rembg requires. Both then produce realistic masks,
so both encoders do realistic work; random weights would make rembg's output unrealistically slow
to encode. Ours runs the website's call (threshold 200) through the service's own pipeline.
"""
from __future__ import annotations

import os
from pathlib import Path

from timing import median_ms
from u2net.engine import export_onnx
from u2net.registry import get_spec
from u2net.runtime import ModelRuntime, RuntimeOptions
from u2net.weights import build_model

from bgservice.options import OutputOptions
from bgservice.paths import SharedRoot
from bgservice.pipeline import BackgroundRemover, PathJob

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_WEIGHTS = SHARED / "models" / "u2netp" / "u2netp.pth"


def compare(paths: dict, root: Path, tmp: Path, repeat: int) -> dict:
    home = tmp / "rembg-home"
    home.mkdir(exist_ok=True)
    onnx_path = home / "u2netp_shared.onnx"
    onnx_path.write_bytes(export_onnx(build_model(get_spec("u2netp"), REAL_WEIGHTS), 320))
    os.environ["U2NET_HOME"] = str(home)
    import rembg  # after U2NET_HOME is set

    session = rembg.new_session("u2net_custom", model_path=str(onnx_path))
    # exact fp32, as rembg runs it
    runtime = ModelRuntime.load(RuntimeOptions(model="u2netp", weights=REAL_WEIGHTS,
                                               precision="fp32", cache_dir=tmp / "cache"))
    runtime.start(background=False)
    ours = BackgroundRemover(runtime, max_image_pixels=10**8, max_source_bytes=1 << 30,
                             request_timeout_s=300)
    shared_root = SharedRoot(root)

    def run_rembg(path):
        data = (root / path.lstrip("/")).read_bytes()
        (root / "bench" / "rembg-out.png").write_bytes(rembg.remove(data, session=session))

    results = {}
    print("\nours (threshold 200, website's call) against rembg, real U2NETP weights, file to file")
    for name in ("1920x1080 JPEG", "4000x3000 JPEG"):
        path = paths[name]
        theirs_ms = median_ms(lambda path=path: run_rembg(path), repeat)
        job = PathJob(path, "/bench/ours.png", OutputOptions(mode="threshold", threshold=200))
        ours_ms = median_ms(lambda job=job: ours.remove_paths(shared_root, job), repeat)
        results[name] = {"rembg_ms": theirs_ms, "ours_ms": ours_ms, "speedup": theirs_ms / ours_ms}
        print(f"  {name}: rembg {theirs_ms:.0f} ms, ours {ours_ms:.0f} ms, "
              f"ours is {theirs_ms / ours_ms:.2f}x faster")
    runtime.close()
    return results
