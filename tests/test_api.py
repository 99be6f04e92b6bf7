"""The HTTP contract: the website's request end to end, and every error class as JSON."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import (
    WEBSITE_REQUEST,
    FaultyPredictor,
    make_settings,
    photo,
    save_image,
    snapshot,
)
from helpers import two_subjects_and_a_speck
from PIL import Image
from u2net.registry import get_spec
from u2net.runtime import ModelRuntime, RuntimeOptions

import API
import Image_PostProcesser as post
from bgservice.imageio import decode_image


def expected_cutout(runtime, source_bytes: bytes, threshold: int) -> np.ndarray:
    image = decode_image(source_bytes, 10**8)
    return post.apply_threshold(image.rgb, image.alpha, runtime.mask_for(image.rgb), threshold)


def test_the_websites_exact_request(client, sandbox, runtime):
    source = save_image(sandbox["root"] / "Clones/4/clone-image-with-bg.png", photo(200, 150))
    response = client.post("/remove-background", json=WEBSITE_REQUEST,
                           headers={"Accept": "application/json"})
    assert response.status_code == 200, response.json
    body = response.json
    assert body["outputImagePath"] == "/Clones/4/clone-image-no-bg.png"
    assert (body["width"], body["height"], body["threshold"], body["mode"]) == (200, 150, 200,
                                                                                 "threshold")
    out = Image.open(sandbox["root"] / "Clones/4/clone-image-no-bg.png")
    assert out.format == "PNG" and out.mode == "RGBA" and out.size == (200, 150)
    np.testing.assert_array_equal(np.asarray(out),
                                  expected_cutout(runtime, source.read_bytes(), 200))
    assert sorted(p.name for p in (sandbox["root"] / "Clones/4").iterdir()) == [
        "clone-image-no-bg.png", "clone-image-with-bg.png"]  # no mask file, no temporary


@pytest.mark.parametrize("extra,mode,threshold", [
    ({}, "refine", None),  # no threshold: the measured default mode
    ({"threshold": None}, "refine", None),
    ({"mode": "threshold"}, "threshold", 254),  # the OpenClone documented default
    ({"threshold": 0}, "threshold", 0), ({"threshold": 255}, "threshold", 255),
    ({"mode": "soft"}, "soft", None), ({"mode": "refine"}, "refine", None),
])
def test_mode_and_threshold(client, sandbox, runtime, extra, mode, threshold):
    source = save_image(sandbox["root"] / "in.jpg", photo(), quality=95)
    response = client.post("/remove-background",
                           json={"sourceImagePath": "/in.jpg", "outputImagePath": "/o/out.png",
                                 **extra})
    assert response.status_code == 200, response.json
    assert (response.json["mode"], response.json["threshold"]) == (mode, threshold)
    got = np.asarray(Image.open(sandbox["root"] / "o/out.png"))
    image = decode_image(source.read_bytes(), 10**8)
    expected = post.cut_out(image.rgb, image.alpha, runtime.mask_for(image.rgb), mode, threshold)
    np.testing.assert_array_equal(got, expected)
    if threshold == 0:
        assert (got[..., 3] == 255).all()


@pytest.mark.parametrize("body,message", [
    ({"mode": "magic"}, "'mode' must be one of threshold, soft, refine"),
    ({"mode": 3}, "'mode' must be one of"),
    ({"mode": "soft", "threshold": 100}, "'threshold' applies to mode 'threshold' only"),
])
def test_bad_modes_are_400(client, sandbox, body, message):
    save_image(sandbox["root"] / "in.png", photo())
    response = client.post("/remove-background", json={
        "sourceImagePath": "/in.png", "outputImagePath": "/o.png", **body})
    assert response.status_code == 400 and message in response.json["error"]


def test_alpha_and_exif_orientation_survive(client, sandbox, runtime):
    rgba = np.dstack([photo(60, 40), np.full((40, 60), 128, np.uint8)])
    save_image(sandbox["root"] / "a.png", rgba)
    assert client.post("/remove-background", json={"sourceImagePath": "a.png",
                       "outputImagePath": "b.png", "threshold": 0}).status_code == 200
    assert (np.asarray(Image.open(sandbox["root"] / "b.png"))[..., 3] == 128).all()

    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(photo(80, 30)).save(sandbox["root"] / "phone.jpg", exif=exif)
    response = client.post("/remove-background", json={"sourceImagePath": "/phone.jpg",
                           "outputImagePath": "/phone.png", "threshold": 10})
    assert (response.json["width"], response.json["height"]) == (30, 80)
    assert Image.open(sandbox["root"] / "phone.png").size == (30, 80)


BAD_BODIES = [
    ("not json", "must be a JSON object"),
    ("[1, 2]", "must be a JSON object"),
    ('"a string"', "must be a JSON object"),
    ("null", "must be a JSON object"),
    ('{"outputImagePath": "/o.png"}', "'sourceImagePath' is required"),
    ('{"sourceImagePath": "/in.png"}', "'outputImagePath' is required"),
    ('{"sourceImagePath": "/in.png", "outputImagePath": "/o.png", "treshold": 5}',
     "unknown field(s) 'treshold'"),
]


@pytest.mark.parametrize("raw,message", BAD_BODIES)
def test_malformed_bodies_are_400(client, raw, message):
    response = client.post("/remove-background", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert message in response.json["error"]


@pytest.mark.parametrize("field,value,message", [
    *(("threshold", v, "'threshold' must be an integer from 0 to 255")
      for v in (True, False, "200", 200.0, 200.5, -1, 256, [200], {"v": 1})),
    *(("subjectFilter", v, "'subjectFilter' must be true or false") for v in ("yes", 1, None)),
])
def test_bad_field_values_are_400(client, sandbox, field, value, message):
    save_image(sandbox["root"] / "in.png", photo())
    response = client.post("/remove-background", json={
        "sourceImagePath": "/in.png", "outputImagePath": "/o.png", field: value})
    assert response.status_code == 400
    assert message in response.json["error"]
    assert not (sandbox["root"] / "o.png").exists()


ESCAPES = ["/../outside/secret.png", "../outside/secret.png", "/Clones/../../outside/secret.png",
           "/Clones/4/..\\..\\..\\outside\\secret.png", "C:/outside/secret.png",
           "/Clones/4/in.png\x00.png", "/%2e%2e/outside/secret.png", "/link-out/secret.png"]


@pytest.mark.parametrize("field", ["sourceImagePath", "outputImagePath", "bgImagePath"])
@pytest.mark.parametrize("bad", ESCAPES)
def test_paths_never_leave_the_root(client, sandbox, field, bad):
    (sandbox["root"] / "link-out").symlink_to(sandbox["outside"], target_is_directory=True)
    save_image(sandbox["root"] / "Clones/4/in.png", photo())
    before = snapshot(sandbox["outside"])
    body = {"sourceImagePath": "/Clones/4/in.png", "outputImagePath": "/Clones/4/out.png",
            "threshold": 0, field: bad}
    response = client.post("/remove-background", json=body)
    if bad.startswith("/%2e%2e"):  # not decoded: a literal folder name inside the root
        assert response.status_code in (200, 404)
    else:
        assert response.status_code == 400, response.json
        assert str(sandbox["root"]) not in response.json["error"]
    assert snapshot(sandbox["outside"]) == before
    assert not (sandbox["root"] / "Clones/4/out.png").exists() or field == "sourceImagePath" \
        and bad.startswith("/%2e")


def test_missing_source_is_404(client):
    response = client.post("/remove-background", json={"sourceImagePath": "/Clones/none.png",
                                                       "outputImagePath": "/o.png"})
    assert response.status_code == 404
    assert response.json == {"error": "source image not found: /Clones/none.png"}


def test_not_an_image_is_422(client, sandbox):
    (sandbox["root"] / "fake.png").write_text("I am a text file with a .png name")
    response = client.post("/remove-background", json={"sourceImagePath": "/fake.png",
                                                       "outputImagePath": "/o.png"})
    assert response.status_code == 422
    assert "not a decodable image" in response.json["error"]
    assert not (sandbox["root"] / "o.png").exists()


def test_too_many_pixels_is_413_before_decoding(sandbox, random_weights, runtime):
    app = API.create_app(make_settings(sandbox["root"], random_weights, max_image_pixels=1000),
                         runtime=runtime)
    save_image(sandbox["root"] / "big.png", photo(100, 100))
    response = app.test_client().post("/remove-background", json={
        "sourceImagePath": "/big.png", "outputImagePath": "/o.png"})
    assert response.status_code == 413
    assert "100x100 = 10000 pixels; the limit is 1000" in response.json["error"]


def test_oversized_request_body_is_413_json(client):
    response = client.post("/remove-background", data="{" + " " * (API.MAX_JSON_BYTES + 10) + "}",
                           content_type="application/json")
    assert response.status_code == 413 and "error" in response.json


def test_unknown_route_and_wrong_method_are_json(client):
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json
    response = client.get("/remove-background")
    assert response.status_code == 405 and "error" in response.json


def test_unexpected_errors_are_500_without_internals(client, sandbox, monkeypatch):
    import bgservice.pipeline

    def broken(_):
        raise RuntimeError(f"disk exploded at {sandbox['root']}/secret/host/path")

    monkeypatch.setattr(bgservice.pipeline, "encode_output", lambda *_: broken(None))
    save_image(sandbox["root"] / "in.png", photo())
    response = client.post("/remove-background", json={"sourceImagePath": "/in.png",
                                                       "outputImagePath": "/o.png"})
    assert response.status_code == 500
    assert response.json == {"error": "internal error; the service log has the details"}
    assert not (sandbox["root"] / "o.png").exists()


def test_not_ready_is_503_with_retry_after(sandbox, random_weights):
    settings = make_settings(sandbox["root"], random_weights)
    cold = ModelRuntime.load(settings.runtime_options())  # loaded, never warmed up
    try:
        client = API.create_app(settings, runtime=cold).test_client()
        assert client.get("/health").status_code == 200
        for response in (client.get("/ready"),
                         client.post("/remove-background", json={"sourceImagePath": "/x.png",
                                                                 "outputImagePath": "/o.png"})):
            # 503 for both: readiness is checked before the (missing) source is looked at
            assert response.status_code == 503
        save_image(sandbox["root"] / "x.png", photo())
        response = client.post("/remove-background", json={"sourceImagePath": "/x.png",
                                                           "outputImagePath": "/o.png"})
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert "still loading" in response.json["error"]
        assert client.get("/ready").status_code == 503
    finally:
        cold.close()


def test_failed_warm_up_is_reported_not_retried(sandbox, random_weights, runtime):
    """A runtime that failed to warm up will never be ready: /health says so (a liveness probe
    then restarts it), and callers are not told it is still loading."""
    settings = make_settings(sandbox["root"], random_weights)
    network = FaultyPredictor(runtime.predictor, "CUDA out of memory (simulated)", broken=True)
    broken = ModelRuntime(get_spec("u2netp"), random_weights, network,
                          RuntimeOptions(warmup_runs=1))
    heard = []
    broken.on_failure(heard.append)  # registered before the failure
    try:
        client = API.create_app(settings, runtime=broken).test_client()
        assert client.get("/health").status_code == 200  # warming up is alive
        broken.start(background=False)
        broken.on_failure(heard.append)  # registered after: called at once
        assert heard == ["warm-up failed: CUDA out of memory (simulated)"] * 2
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json == {"status": "failed", "model": "u2netp", "error": heard[0]}
        save_image(sandbox["root"] / "x.png", photo())
        for response in (client.get("/ready"), client.post("/remove-background", json={
                "sourceImagePath": "/x.png", "outputImagePath": "/o.png"})):
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "30"
            assert "has failed" in response.json["error"]
            assert "CUDA out of memory" in response.json["error"]
            assert "still loading" not in response.json["error"]
    finally:
        broken.close()


def test_forward_passes_failing_in_a_row_mark_the_runtime_failed(sandbox, random_weights, runtime):
    settings = make_settings(sandbox["root"], random_weights)
    network = FaultyPredictor(
        runtime.predictor, "CUDA error: an illegal memory access was encountered (simulated)")
    served = ModelRuntime(get_spec("u2netp"), random_weights, network,
                          RuntimeOptions(warmup_runs=1, max_failed_batches=3))
    heard = []
    served.on_failure(heard.append)
    try:
        served.start(background=False)
        client = API.create_app(settings, runtime=served).test_client()
        save_image(sandbox["root"] / "x.png", photo())
        job = {"sourceImagePath": "/x.png", "outputImagePath": "/o.png"}

        def fail_twice_then_recover():
            network.broken.set()
            assert [client.post("/remove-background", json=job).status_code
                    for _ in range(2)] == [500, 500]
            network.broken.clear()
            assert client.post("/remove-background", json=job).status_code == 200

        fail_twice_then_recover()  # a success resets the count
        fail_twice_then_recover()
        assert heard == [] and client.get("/health").status_code == 200

        network.broken.set()
        statuses = [client.post("/remove-background", json=job).status_code for _ in range(4)]
        assert statuses == [500, 500, 500, 503]  # the third failure marks it failed
        assert heard and "3 forward passes failed in a row" in heard[0]
        assert "illegal memory access" in heard[0]
        assert client.get("/health").status_code == 503
        assert client.get("/ready").status_code == 503
        info = client.get("/model-info").json
        assert info["ready"] is False and info["error"] == heard[0]
    finally:
        served.close()


def test_a_pixel_limit_below_the_warm_up_image_still_starts(sandbox, random_weights):
    """The warm-up photo (1920x1080) shrinks to MAX_IMAGE_PIXELS; it used to be refused, so the
    service never became ready."""
    settings = make_settings(sandbox["root"], random_weights, max_image_pixels=100_000,
                             warmup_runs=1)
    app = API.create_app(settings)
    runtime = app.extensions["u2net"].runtimes[0]
    try:
        assert runtime.wait_ready(120), runtime.error
        client = app.test_client()
        save_image(sandbox["root"] / "x.png", photo(320, 240))
        response = client.post("/remove-background", json={"sourceImagePath": "/x.png",
                                                           "outputImagePath": "/o.png"})
        assert response.status_code == 200, response.json
    finally:
        runtime.close()


class GatedPredictor:
    """Wraps the real predictor; blocks while the gate is closed (to fill the queue)."""

    def __init__(self, inner):
        self.inner, self.gate = inner, threading.Event()
        self.gate.set()
        self.device, self.precision, self.engine = inner.device, inner.precision, inner.engine

    def __call__(self, batch):
        self.gate.wait(30)
        return self.inner(batch)


def test_overload_is_503_with_retry_after(sandbox, random_weights, runtime):
    settings = make_settings(sandbox["root"], random_weights)
    gated = GatedPredictor(runtime.predictor)
    busy = ModelRuntime(get_spec("u2netp"), random_weights, gated,
                        RuntimeOptions(max_batch=1, max_queue=1, max_wait_ms=0, warmup_runs=1))
    busy.start(background=False)
    client = API.create_app(settings, runtime=busy).test_client()
    save_image(sandbox["root"] / "in.png", photo())
    body = {"sourceImagePath": "/in.png", "outputImagePath": "/o.png"}
    gated.gate.clear()
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.post, "/remove-background", json=body) for _ in range(4)]
            time.sleep(1.0)  # one in the network, at most one queued, the rest refused
            gated.gate.set()
            statuses = sorted(f.result().status_code for f in futures)
            refused = [f.result() for f in futures if f.result().status_code == 503]
        # However the threads interleave, at most 2 are served (1 running + 1 queued).
        assert statuses.count(503) >= 2 and statuses.count(200) >= 1 and len(statuses) == 4
        assert set(statuses) == {200, 503}
        assert all(r.headers["Retry-After"] == "2" and "busy" in r.json["error"] for r in refused)
    finally:
        gated.gate.set()
        busy.close()


@pytest.mark.slow
def test_concurrent_requests_all_produce_correct_files(client, sandbox, runtime):
    sources = {i: save_image(sandbox["root"] / f"in/{i}.png", photo(90 + 10 * i, 70, seed=i))
               for i in range(6)}
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: client.post("/remove-background", json={
            "sourceImagePath": f"/in/{i}.png", "outputImagePath": f"/out/{i}.png",
            "threshold": 128}), sources))
    assert [r.status_code for r in responses] == [200] * 6
    for i, src in sources.items():
        got = np.asarray(Image.open(sandbox["root"] / f"out/{i}.png"))
        np.testing.assert_array_equal(got, expected_cutout(runtime, src.read_bytes(), 128))


def test_health_ready_and_model_info(client, runtime):
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/ready").json == {"ready": True, "model": "u2netp", "models": ["u2netp"]}
    info = client.get("/model-info").json
    assert list(info["models"]) == ["u2netp"] and info["models"]["u2netp"]["model"] == "u2netp"
    assert info["model"] == "u2netp" and info["architecture"] == "U2NETP"
    assert info["device"].startswith("cpu") and info["precision"] == "fp32"
    assert info["engine"] == "onnxruntime"  # the fastest exact engine on CPU
    assert len(info["weights_sha256"]) == 64 and info["max_batch_size"] == 1  # auto on CPU
    assert info["ready"] is True


def test_local_folder_is_used_when_the_root_is_unset(tmp_path, random_weights, runtime, caplog):
    settings = make_settings(tmp_path / "local-root", random_weights).with_(fs_root_from_env=False)
    API.create_app(settings, runtime=runtime)
    assert (tmp_path / "local-root").is_dir()
    assert "OpenClone_OpenCloneFS is not set; using the local folder" in caplog.text


@pytest.mark.parametrize("subject_filter", [False, True])
def test_subject_filter_drops_specks_and_keeps_both_people(client, sandbox, runtime, monkeypatch,
                                                           subject_filter):
    monkeypatch.setattr(runtime, "mask_for", two_subjects_and_a_speck)
    save_image(sandbox["root"] / "in.png", photo(200, 120))
    response = client.post("/remove-background", json={
        "sourceImagePath": "/in.png", "outputImagePath": "/o.png", "mode": "soft",
        "subjectFilter": subject_filter})
    assert response.status_code == 200, response.json
    assert response.json["subjectFilter"] is subject_filter
    alpha = np.asarray(Image.open(sandbox["root"] / "o.png"))[..., 3]
    assert alpha[60, 50] == 255 and alpha[60, 150] == 255  # both people stay
    assert alpha[5, 194] == (0 if subject_filter else 255)  # the speck goes only when asked


def test_refined_threshold_edges_change_the_websites_cut_out_and_nothing_else(sandbox, runtime,
                                                                              random_weights):
    """U2NET_THRESHOLD_EDGES=refined: the website's unchanged request (threshold 200) gets
    refine's edges inside the threshold's region; other modes are untouched."""
    from conftest import make_settings

    settings = make_settings(sandbox["root"], random_weights, threshold_edges="refined")
    client = API.create_app(settings, runtime=runtime).test_client()
    source = save_image(sandbox["root"] / "in.jpg", photo(), quality=95)
    image = decode_image(source.read_bytes(), 10**8)
    mask = runtime.mask_for(image.rgb)
    for extra, mode, threshold, edges in (({"threshold": 200}, "threshold", 200, "refined"),
                                          ({"mode": "soft"}, "soft", None, "hard")):
        response = client.post("/remove-background", json={
            "sourceImagePath": "/in.jpg", "outputImagePath": "/o/out.png", **extra})
        assert response.status_code == 200, response.json
        got = np.asarray(Image.open(sandbox["root"] / "o/out.png"))
        expected = post.cut_out(image.rgb, image.alpha, mask, mode, threshold,
                                threshold_edges=edges)
        np.testing.assert_array_equal(got, expected)
        if edges == "refined":  # and it is not the hard cut
            assert not np.array_equal(got, post.cut_out(image.rgb, image.alpha, mask, mode, threshold))
    assert client.get("/model-info").json["threshold_edges"] == "refined"


def test_a_draining_worker_refuses_new_requests_and_is_not_ready(app, client, sandbox):
    """After SIGTERM (gunicorn_conf.py sets the flag) /ready is 503 at once and new work is
    refused with Retry-After; /health and /metrics still answer."""
    save_image(sandbox["root"] / "in.png", photo(64, 48))
    app.extensions["u2net"].remover.draining.set()
    ready = client.get("/ready")
    assert ready.status_code == 503 and "stopping" in ready.json["error"]
    reply = client.post("/remove-background", json={"sourceImagePath": "/in.png",
                                                    "outputImagePath": "/out.png"})
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
    assert not (sandbox["root"] / "out.png").exists()
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert 'u2net_refusals_total{reason="draining"}' in client.get("/metrics").get_data(as_text=True)
