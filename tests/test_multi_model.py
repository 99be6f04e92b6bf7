"""Several models in one worker (U2NET_MODELS): each request picks one by name."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import make_settings, photo, save_image
from helpers import write_model
from PIL import Image
from u2net.runtime import ModelRuntime, RuntimeOptions

import API
from GlobalVariables import Settings, SettingsError


def test_u2net_models_lists_the_served_models_the_first_is_the_default():
    s = Settings.from_env({"U2NET_MODELS": "u2netp, isnet-general-use=/w/isnet.onnx,/m/tiny.onnx",
                           "U2NET_WEIGHTS": "/w/u2netp.pth"})
    assert (s.model, s.weights) == ("u2netp", Path("/w/u2netp.pth"))
    assert s.more_models == (("isnet-general-use", Path("/w/isnet.onnx")), ("/m/tiny.onnx", None))
    assert s.served_models[0] == ("u2netp", Path("/w/u2netp.pth"))
    assert Settings.from_env({"U2NET_MODEL": "u2netp"}).more_models == ()  # one model, as before


@pytest.mark.parametrize(("env", "message"), [
    ({"U2NET_MODELS": "u2netp,u2netp"}, "U2NET_MODELS names a model twice"),
    ({"U2NET_MODELS": "u2netp,nope"}, "U2NET_MODELS must be one of"),
    ({"U2NET_MODELS": "u2netp,u2net", "U2NET_MODEL": "u2net"},
     "U2NET_MODEL=u2net but U2NET_MODELS starts with u2netp"),
])
def test_bad_model_lists_are_refused_at_start(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A second model: the tiny custom ONNX one, warm."""
    path = write_model(tmp_path_factory.mktemp("tiny"))
    runtime = ModelRuntime.load(RuntimeOptions(model=str(path), device="cpu", warmup_runs=1))
    runtime.start(background=False)
    yield runtime
    runtime.close()


@pytest.fixture
def two(sandbox, random_weights, runtime, tiny):
    """A client of an app serving u2netp (the default) and tiny."""
    settings = make_settings(sandbox["root"], random_weights)
    return API.create_app(settings, runtime=[runtime, tiny]).test_client()


def test_each_request_gets_the_model_it_names(two, sandbox, runtime, tiny):
    rgb = photo(120, 90, 3)
    save_image(sandbox["root"] / "in.png", rgb)
    for model, expected in ((None, runtime), ("u2netp", runtime), ("tiny", tiny)):
        body = {"sourceImagePath": "/in.png", "outputImagePath": f"/{model}.png", "threshold": 0,
                "mode": "threshold", **({"model": model} if model else {})}
        reply = two.post("/remove-background", json=body)
        assert reply.status_code == 200, reply.json
        assert reply.json["model"] == expected.spec.name
        alpha = np.asarray(Image.open(sandbox["root"] / f"{model}.png"))[:, :, 3]
        assert alpha.shape == (90, 120)
    # the upload endpoint: only the mask, which differs between the two networks
    masks = {}
    for model in ("u2netp", "tiny"):
        reply = two.post(f"/api/remove?model={model}&only_mask=true", data=_png(rgb),
                         content_type="image/png")
        assert reply.status_code == 200 and reply.headers["X-Model"] == model
        masks[model] = np.asarray(Image.open(io.BytesIO(reply.data)))
    assert np.array_equal(masks["u2netp"], runtime.mask_for(rgb))
    assert np.array_equal(masks["tiny"], tiny.mask_for(rgb))


def test_batch_jobs_may_name_different_models(two, sandbox):
    save_image(sandbox["root"] / "in.png", photo(80, 60, 1))
    jobs = [{"sourceImagePath": "/in.png", "outputImagePath": f"/b{i}.png", "model": m}
            for i, m in enumerate(("tiny", "u2netp", "tiny", "nope"))]
    reply = two.post("/remove-background/batch", json={"jobs": jobs})
    assert reply.status_code == 200
    outcomes = reply.json["jobs"]
    assert [o["status"] for o in outcomes] == [200, 200, 200, 400]
    assert [o["result"]["model"] for o in outcomes[:3]] == ["tiny", "u2netp", "tiny"]
    assert "this service serves: u2netp, tiny" in outcomes[3]["error"]


def test_an_unknown_model_is_a_400_that_lists_the_served_ones(two, sandbox):
    save_image(sandbox["root"] / "in.png", photo(40, 30, 1))
    reply = two.post("/remove-background", json={"sourceImagePath": "/in.png",
                                                 "outputImagePath": "/o.png", "model": "u2net"})
    assert reply.status_code == 400
    assert reply.json["error"] == "unknown model 'u2net'; this service serves: u2netp, tiny"
    assert not (sandbox["root"] / "o.png").exists()
    reply = two.post("/remove-background", json={"sourceImagePath": "/in.png",
                                                 "outputImagePath": "/o.png", "model": 7})
    assert reply.status_code == 400 and "'model' must be a name" in reply.json["error"]


def test_ready_and_model_info_describe_every_model(two):
    assert two.get("/ready").json == {"ready": True, "model": "u2netp",
                                      "models": ["u2netp", "tiny"]}
    info = two.get("/model-info").json
    assert info["model"] == "u2netp"  # the default, at the top level as before
    assert {name: m["architecture"] for name, m in info["models"].items()} == {
        "u2netp": "U2NETP", "tiny": "onnx"}


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
