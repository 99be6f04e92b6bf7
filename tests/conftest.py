"""Shared fixtures: a tiny random-weight model, a temporary shared root, the app and its client.

Tests use randomly initialised U2NETP weights (fast, and the same code path as the real model);
tests about real behaviour use the real U2NETP weights in ../shared, which must be there under CI.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from u2net.model import U2NETP
from u2net.runtime import ModelRuntime

from GlobalVariables import Settings

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
WEBSITE_REQUEST = {
    "sourceImagePath": "/Clones/4/clone-image-with-bg.png",
    "outputImagePath": "/Clones/4/clone-image-no-bg.png",
    "threshold": 200,
}


def shared_path(*parts: str) -> Path:
    """A path under ../shared; a missing one fails under CI (CI=true) and skips elsewhere."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"{path} is missing: the real-weights and data tests need ../shared"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """A U2NETP checkpoint with random weights, saved as a plain state_dict like the official."""
    torch.manual_seed(0)
    net = U2NETP().eval()
    path = tmp_path_factory.mktemp("weights") / "random_u2netp.pth"
    torch.save(net.state_dict(), path)
    return path


def make_settings(root: Path, weights: Path, **changes) -> Settings:
    """Exact fp32 unless a test asks otherwise (auto on an AMX CPU would compile bf16: minutes)."""
    return Settings(fs_root=root, fs_root_from_env=True, model="u2netp", weights=weights,
                    models_dir=root.parent / "no-models-here", device="cpu", warmup_runs=1,
                    precision="fp32",
                    cache_dir=weights.parent / "onnx-cache").with_(**changes)


@pytest.fixture(scope="session")
def runtime(random_weights, tmp_path_factory) -> ModelRuntime:
    """One warm random-weight runtime for the whole session (loading is the slow part)."""
    settings = make_settings(tmp_path_factory.mktemp("unused-root"), random_weights)
    rt = ModelRuntime.load(settings.runtime_options())
    rt.start(background=False)
    assert rt.ready
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def real_u2netp() -> ModelRuntime:
    """The real U2NETP weights from ../shared, read in place, warm (for claims about real
    behaviour: parity, quality)."""
    from u2net.runtime import RuntimeOptions

    rt = ModelRuntime.load(RuntimeOptions(model="u2netp", device="cpu", warmup_runs=1,
                                          precision="fp32",
                                          weights=shared_path("models", "u2netp", "u2netp.pth")))
    rt.start(background=False)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def isnet_weights(tmp_path_factory) -> Path:
    """The official IS-Net general-use weights, imported (and proved against ONNX Runtime) from
    the shared graph once per run into a temporary .pth, never kept: 13 s an import here."""
    from u2net.model import ISNetDIS
    from u2net.onnx_import import import_onnx

    state = import_onnx(shared_path("models", "isnet", "isnet-imgly.onnx"), ISNetDIS(), 1024)
    weights = tmp_path_factory.mktemp("isnet") / "isnet-general-use.pth"
    torch.save(state, weights)
    return weights


@pytest.fixture
def sandbox(tmp_path) -> dict:
    """A shared root with a sibling folder outside it, to prove nothing escapes."""
    root = tmp_path / "OpenCloneFS"
    outside = tmp_path / "outside"
    (root / "Clones" / "4").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"not for you")
    return {"root": root, "outside": outside}


@pytest.fixture
def settings(sandbox, random_weights) -> Settings:
    return make_settings(sandbox["root"], random_weights)


@pytest.fixture
def app(settings, runtime):
    import API

    return API.create_app(settings, runtime=runtime)


@pytest.fixture
def client(app):
    return app.test_client()


class FaultyPredictor:
    """The real network, except while `broken` is set: then it raises `message`, as a device
    failure (CUDA out of memory, a sticky CUDA error) would."""

    def __init__(self, inner, message: str, broken: bool = False):
        self.inner, self.message, self.broken = inner, message, threading.Event()
        if broken:
            self.broken.set()
        self.device, self.precision, self.engine = inner.device, inner.precision, inner.engine

    def __call__(self, batch):
        if self.broken.is_set():
            raise RuntimeError(self.message)
        return self.inner(batch)


def photo(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """A small synthetic RGB image: a bright disc on a textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(width, height) / 3) ** 2
    img[disc] = (230, 180, 140)
    return img


def save_image(path: Path, array: np.ndarray, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **params)
    return path


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size and mtime, to show nothing there changed."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def solo_and_concurrent_masks(runtime: ModelRuntime, images: list[np.ndarray]):
    """(masks one at a time, masks of all at once from as many threads, the batch sizes that the
    concurrent run formed): the batcher's runner is wrapped meanwhile to record them."""
    from concurrent.futures import ThreadPoolExecutor

    alone = [runtime.mask_for(image) for image in images]
    sizes, inner = [], runtime.batcher._run_batch

    def recording(batch):
        sizes.append(len(batch))
        return inner(batch)

    runtime.batcher._run_batch = recording
    try:
        with ThreadPoolExecutor(len(images)) as pool:
            together = list(pool.map(runtime.mask_for, images))
    finally:
        runtime.batcher._run_batch = inner
    return alone, together, sizes
