"""ONNX exports imported as weights (u2net.onnx_import): the shared IS-Net graph (float16, batch
norm folded) onto the project's ISNetDIS, U2NETP exports of the project's own exporter with batch
norm folded and kept, and a refusal when the graph is another architecture."""
from __future__ import annotations

import pytest
import torch
from conftest import shared_path
from helpers import export_onnx, trained_like_u2netp
from u2net.model import U2NET, U2NETP, ISNetDIS
from u2net.onnx_import import ImportRefused, import_onnx, probe_difference

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fold", [True, False])
def test_u2netp_exports_import_with_batch_norm_folded_or_kept(tmp_path, fold):
    original = trained_like_u2netp()
    path = export_onnx(original, tmp_path, do_constant_folding=fold)
    net = U2NETP()
    state = import_onnx(path, net, input_size=320)
    net.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        difference = (net(x, fused_only=True) - original(x, fused_only=True)).abs().max().item()
    assert difference < 1e-4
    if not fold:  # kept: the very same parameters
        for key, tensor in original.state_dict().items():
            assert torch.allclose(state[key].float(), tensor.float()), key


def test_another_architectures_graph_is_refused(tmp_path):
    path = export_onnx(trained_like_u2netp(), tmp_path)
    with pytest.raises(ImportRefused, match=r"convolution 0 .* has shape \(16, 3, 3, 3\)|shape"):
        import_onnx(path, U2NET(), input_size=320)


def test_a_graph_whose_outputs_differ_is_refused(tmp_path):
    """Shapes alike, outputs not: the probe catches it (here: a sigmoid too many, on purpose)."""
    class Sharper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = trained_like_u2netp()

        def forward(self, x):
            return torch.sigmoid(self.net(x, fused_only=True) * 4)

    path = export_onnx(Sharper(), tmp_path)
    with pytest.raises(ImportRefused, match="differ by up to"):
        import_onnx(path, U2NETP(), input_size=320)


def test_the_shared_isnet_graph_imports_onto_isnetdis(isnet_weights):
    """The official IS-Net general-use weights (float16, batch norm folded; PROVENANCE.md),
    imported by conftest's fixture, load strictly into the project's ISNetDIS, which then
    reproduces ONNX Runtime on the graph."""
    path = shared_path("models", "isnet", "isnet-imgly.onnx")
    fresh = ISNetDIS()
    fresh.load_state_dict(torch.load(isnet_weights, weights_only=True), strict=True)
    assert sum(p.numel() for p in fresh.parameters()) == 44_046_790
    assert probe_difference(path.read_bytes(), fresh, 1024) < 2e-3


def test_the_cli_imports_and_refuses(tmp_path):
    """bgremove import-onnx: the weights the service then loads strictly; a refusal is one line
    and exit 1."""
    import subprocess
    import sys

    from u2net.registry import get_spec
    from u2net.weights import build_model

    path = export_onnx(trained_like_u2netp(), tmp_path)
    out = tmp_path / "imported.pth"
    cli = [sys.executable, "-m", "bgservice", "import-onnx", str(path), "-o", str(out)]
    done = subprocess.run([*cli, "--model", "u2netp"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "proved against ONNX Runtime" in done.stdout, done.stderr
    build_model(get_spec("u2netp"), out)  # loads strictly
    refused = subprocess.run([*cli[:-2], "-o", str(tmp_path / "no.pth"), "--model", "u2net"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and refused.stderr.startswith("error: convolution 1 ")
    assert "Traceback" not in refused.stderr and not (tmp_path / "no.pth").exists()


def test_an_onnx_file_as_u2net_weights_is_imported_once_and_cached(tmp_path):
    """U2NET_WEIGHTS=FILE.onnx: the runtime imports it (proved), keeps the .pth in the cache
    under the export's checksum, and serves the same masks as the original weights."""
    import numpy as np
    from u2net.runtime import ModelRuntime, RuntimeOptions

    original = trained_like_u2netp()
    pth = tmp_path / "original.pth"
    torch.save(original.state_dict(), pth)
    onnx_path = export_onnx(original, tmp_path)
    cache = tmp_path / "cache"

    def load(weights):
        rt = ModelRuntime.load(RuntimeOptions(model="u2netp", weights=weights, device="cpu",
                                              engine="torch", precision="fp32", warmup_runs=1,
                                              cache_dir=cache))
        rt.start(background=False)
        return rt

    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    from_pth, from_onnx = load(pth), load(onnx_path)
    try:
        assert np.abs(from_pth.mask_for(image).astype(int) - from_onnx.mask_for(image)).max() <= 1
        (cached,) = cache.glob("model-U2NETP-*.pth")
        assert from_onnx.weights_path == cached
        stamp = cached.stat().st_mtime_ns
        load(onnx_path).close()  # the second time: from the cache, not imported again
        assert cached.stat().st_mtime_ns == stamp
    finally:
        from_pth.close()
        from_onnx.close()
