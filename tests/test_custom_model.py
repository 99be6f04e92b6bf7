"""Custom ONNX models (u2net/custom.py): a file and its JSON description run through the pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import photo
from helpers import Tiny, write_model
from PIL import Image
from u2net.custom import CustomModelError, CustomOnnxPredictor, read_description
from u2net.runtime import ModelRuntime, RuntimeOptions
from u2net.transforms import mask_to_size, to_model_input


def expected_mask(rgb: np.ndarray, spec) -> np.ndarray:
    """What the pipeline must produce: the model's own preprocessing, the network in PyTorch."""
    with torch.no_grad():
        pred = Tiny()(torch.from_numpy(to_model_input(rgb, spec)[None]))[0][0, 0].numpy()
    return mask_to_size(np.clip(pred, 0, 1), rgb.shape[:2])


def load(path, **options) -> ModelRuntime:
    runtime = ModelRuntime.load(RuntimeOptions(model=str(path), device="cpu", warmup_runs=1,
                                               **options))
    runtime.start(background=False)
    assert runtime.ready, runtime.error
    return runtime


@pytest.mark.parametrize("logits", [False, True])
def test_a_custom_model_gives_what_its_network_gives(tmp_path, logits):
    """Logits with `"sigmoid": true` give what the sigmoid's output gives with false."""
    path = write_model(tmp_path, logits=logits, sigmoid=logits)
    runtime = load(path)
    try:
        for seed in range(3):
            rgb = photo(90 + 20 * seed, 70, seed)
            ours = runtime.mask_for(rgb).astype(int)
            assert np.abs(ours - expected_mask(rgb, runtime.spec)).max() <= 1, seed
        info = runtime.info()
        assert (info["model"], info["architecture"], info["engine"]) == ("tiny", "onnx",
                                                                          "onnxruntime")
        assert info["input_size"] == 64 and info["device"].startswith("cpu")
    finally:
        runtime.close()


def test_the_service_cuts_out_with_a_custom_model(tmp_path, sandbox):
    from conftest import make_settings

    import API

    path = write_model(tmp_path)
    runtime = load(path)
    try:
        settings = make_settings(sandbox["root"], path).with_(model=str(path), weights=None)
        client = API.create_app(settings, runtime=runtime).test_client()
        Image.fromarray(photo(120, 90, 1)).save(sandbox["root"] / "in.png")
        reply = client.post("/remove-background", json={
            "sourceImagePath": "/in.png", "outputImagePath": "/out.png", "threshold": 128})
        assert reply.status_code == 200, reply.json
        out = Image.open(sandbox["root"] / "out.png")
        assert out.mode == "RGBA" and out.size == (120, 90)
        assert client.get("/model-info").json["model"] == "tiny"
    finally:
        runtime.close()


def test_a_graph_exported_for_one_image_runs_a_batch_one_image_at_a_time(tmp_path):
    path = write_model(tmp_path, batch=1)
    spec, output = read_description(path)
    predictor = CustomOnnxPredictor(path, spec, output, torch.device("cpu"))
    images = [photo(64, 64, seed) for seed in range(3)]
    batch = np.stack([to_model_input(rgb, spec) for rgb in images])
    together = predictor(batch)
    assert together.shape == (3, 64, 64)
    for i in range(3):
        assert np.array_equal(together[i], predictor(batch[i:i + 1])[0])


@pytest.mark.parametrize(("change", "message"), [
    ({"mean": [0.5, 0.5]}, 'mean is 3 numbers subtracted per channel after scaling pixels to '
                           '[0, 1], got [0.5, 0.5]'),
    ({"std": [0.2, 0, 0.2]}, "std is 3 positive numbers"),
    ({"input_size": "64"}, 'input_size is the square side the network sees, in pixels (e.g. 1024), '
                           'got "64"'),
    ({"input_size": 128}, 'input_size is 128 but the graph\'s input is 64x64; set "input_size": 64'),
    ({"resize": "nearest"}, "resize is how a photo is brought to that size: one of bilinear, "
                            "antialiased"),
    ({"output": 2}, "output is 2, but the graph's outputs are: 0 (mask), 1 (other)"),
    ({"output": "alpha"}, 'output is "alpha", but the graph\'s outputs are'),
    ({"sigmoid": "yes"}, "sigmoid is true if that output is logits"),
    ({"normalise": "sigmoid"}, "normalise is minmax"),
    ({"inputsize": 64}, "unknown field(s) inputsize; the fields are: input_size ("),
    ({"mean": None}, "missing mean: mean is 3 numbers"),
])
def test_a_bad_description_says_which_field_and_how_to_fix_it(tmp_path, change, message):
    path = write_model(tmp_path, **change)
    with pytest.raises(CustomModelError) as caught:
        load(path)
    assert message in str(caught.value)
    assert "tiny.onnx.json" in str(caught.value)


def test_a_missing_or_broken_description_shows_an_example(tmp_path):
    path = write_model(tmp_path)
    (tmp_path / "tiny.onnx.json").write_text("{input_size: 64")
    with pytest.raises(CustomModelError, match=r"is not valid JSON .*for example: \{\"input_size\""):
        load(path)
    (tmp_path / "tiny.onnx.json").unlink()
    with pytest.raises(CustomModelError, match="needs a description beside it, .*tiny.onnx.json"):
        load(path)
    with pytest.raises(CustomModelError, match="no such file"):
        load(tmp_path / "absent.onnx")


def test_custom_models_run_fp32_on_onnx_runtime_only(tmp_path):
    path = write_model(tmp_path)
    with pytest.raises(CustomModelError, match="run on ONNX Runtime in fp32"):
        load(path, precision="bf16")


def test_the_settings_take_a_custom_model_path():
    from GlobalVariables import Settings

    assert Settings.from_env({"U2NET_MODEL": "/models/birefnet.onnx"}).model == "/models/birefnet.onnx"


def test_a_gpu_without_onnxruntimes_cuda_provider_is_reported(tmp_path, monkeypatch, caplog):
    """Where a GPU is there but only the CPU provider is installed (onnxruntime, not
    onnxruntime-gpu), the model runs on CPU and the log says how to use the GPU."""
    import onnxruntime as ort

    path = write_model(tmp_path)
    spec, output = read_description(path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    predictor = CustomOnnxPredictor(path, spec, output, torch.device("cuda"))
    assert predictor.device.type == "cpu" and predictor.provider == "CPUExecutionProvider"
    assert "install onnxruntime-gpu" in caplog.text


def test_model_info_names_the_execution_provider(tmp_path):
    runtime = load(write_model(tmp_path))
    try:
        assert runtime.info()["execution_provider"] == "CPUExecutionProvider"
    finally:
        runtime.close()
