"""The network: official checkpoint layout, strict loading, shapes, the registry."""
from __future__ import annotations

import pytest
import torch
from conftest import shared_path
from u2net import MODELS, U2NET, U2NETP, UnknownModel, get_spec
from u2net.weights import WeightsError, build_model, clean_state_dict


def test_u2net_has_the_official_size_and_key_layout():
    net = U2NET()
    keys = set(net.state_dict())
    assert sum(p.numel() for p in net.parameters()) == 44_009_869  # "44.0 M" in the paper
    for key in ("stage1.rebnconvin.conv_s1.weight", "stage1.rebnconv7.bn_s1.running_mean",
                "stage1.rebnconv6d.conv_s1.bias", "stage5.rebnconv4.conv_s1.weight",
                "stage1d.rebnconv1d.bn_s1.weight", "side1.weight", "side6.bias", "outconv.weight"):
        assert key in keys
    assert net.state_dict()["stage4.rebnconv4.conv_s1.weight"].shape == (128, 128, 3, 3)
    assert net.stage4.rebnconv4.conv_s1.dilation == (2, 2)
    assert net.stage5.rebnconv4.conv_s1.dilation == (8, 8)


def test_real_u2netp_checkpoint_loads_strictly_with_weights_only():
    path = shared_path("models", "u2netp", "u2netp.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = U2NETP()
    net.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    assert set(state) == set(net.state_dict())


def test_forward_shapes_and_no_nan():
    torch.manual_seed(0)
    net = U2NETP().eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.inference_mode():
        outputs = net(x)
        fused = net(x, fused_only=True)
    assert len(outputs) == 7
    for out in outputs:
        assert out.shape == (2, 1, 64, 48)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(fused, outputs[0])


def test_checkpoint_with_wrapper_prefixes_and_old_batchnorm_loads(tmp_path, random_weights):
    state = torch.load(random_weights, weights_only=True)
    # PyTorch 0.4.0 (the authors' version) saved no num_batches_tracked; DataParallel adds module.
    old = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(old, path)
    net = build_model(get_spec("u2netp"), path)
    assert not net.training
    assert set(clean_state_dict(old)) <= set(net.state_dict())


def test_wrong_architecture_is_refused_with_a_clear_message(random_weights):
    with pytest.raises(WeightsError, match="does not fit the U2NET architecture.*another model"):
        build_model(get_spec("u2net_human_seg"), random_weights)


def test_a_non_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        build_model(get_spec("u2netp"), path)


def test_registry_names_the_models_with_their_preprocessing():
    assert set(MODELS) >= {"u2net_human_seg", "u2net", "u2netp"}
    human = get_spec("u2net_human_seg")
    assert human.architecture == "U2NET" and human.filename == "u2net_human_seg.pth"
    assert human.input_size == 320 and human.mean == (0.485, 0.456, 0.406)
    assert all(spec.sources for spec in MODELS.values())
    isnet = get_spec("isnet-general-use")
    assert isnet.architecture == "ISNetDIS" and isnet.input_size == 1024
    assert (isnet.mean, isnet.std, isnet.resize) == ((0.5,) * 3, (1.0,) * 3, "bilinear")
    with pytest.raises(UnknownModel,
                       match="choose one of: isnet-general-use, u2net, u2net_human_seg, u2netp"):
        get_spec("u2net_hman_seg")
