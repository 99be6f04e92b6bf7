"""GET /metrics: Prometheus' text format, checked by Prometheus' own promtool."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import requests
from conftest import make_settings, photo, save_image
from helpers import u2netp_server
from prometheus_client import REGISTRY
from u2net.runtime import ModelRuntime

import API


def promtool_check(text: str) -> None:
    """`promtool check metrics` (Debian's prometheus package; .ci/run installs it) passes."""
    promtool = shutil.which("promtool")
    if not promtool:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool missing: apt-get install prometheus (.ci/run does)")
        pytest.skip("promtool missing: apt-get install prometheus")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_requests_stages_images_and_models(client, sandbox):
    before = sample("u2net_requests_total", route="/remove-background", status="200")
    images = sample("u2net_images_total", model="u2netp")
    save_image(sandbox["root"] / "in.png", photo(200, 100))
    for i in range(3):
        assert client.post("/remove-background", json={
            "sourceImagePath": "/in.png", "outputImagePath": f"/o{i}.png"}).status_code == 200
    assert client.post("/remove-background", json={"sourceImagePath": "/in.png"}).status_code == 400
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.mimetype == "text/plain"
    text = reply.get_data(as_text=True)
    promtool_check(text)
    assert sample("u2net_requests_total", route="/remove-background", status="200") == before + 3
    assert sample("u2net_requests_total", route="/remove-background", status="400") >= 1
    assert sample("u2net_images_total", model="u2netp") == images + 3
    assert sample("u2net_megapixels_total", model="u2netp") >= 3 * 0.02
    for stage in ("read", "decode", "resize", "forward", "upsample", "compose", "encode", "write"):
        assert f'u2net_stage_seconds_bucket{{le="0.005",stage="{stage}"}}' in text, stage
    assert sample("u2net_batch_size_count", model="u2netp") >= 3
    device = client.get("/model-info").json["device"]
    assert sample("u2net_model_info", model="u2netp", engine="onnxruntime", device=device,
                  precision="fp32") == 1
    assert "u2net_queue_depth" in text and "u2net_model_load_seconds" in text


def test_refusals_are_counted_by_reason(sandbox, random_weights):
    settings = make_settings(sandbox["root"], random_weights)
    cold = ModelRuntime.load(settings.runtime_options())  # loaded, never warmed up
    try:
        client = API.create_app(settings, runtime=cold).test_client()
        before = sample("u2net_refusals_total", reason="not_ready")
        assert client.post("/remove-background", json={
            "sourceImagePath": "/x.png", "outputImagePath": "/o.png"}).status_code == 503
        assert sample("u2net_refusals_total", reason="not_ready") == before + 1
    finally:
        cold.close()


@pytest.mark.slow
def test_two_gunicorn_workers_report_one_merged_view(sandbox, random_weights):
    """Multiprocess mode: whichever worker answers /metrics, it counts every worker's requests."""
    with u2netp_server(sandbox["root"], random_weights, WEB_CONCURRENCY="2") as (base, output):
        save_image(sandbox["root"] / "in.png", photo(120, 90))
        # the server is ready when one worker is: wait until both answer /ready with 200
        deadline, in_a_row = time.monotonic() + 120, 0
        while in_a_row < 10 and time.monotonic() < deadline:
            ready = requests.get(f"{base}/ready", timeout=10, headers={"Connection": "close"})
            in_a_row = in_a_row + 1 if ready.status_code == 200 else 0
            time.sleep(0 if in_a_row else 0.5)
        for i in range(6):  # new connections: gunicorn spreads them over both workers
            reply = requests.post(f"{base}/remove-background", timeout=60, headers={
                "Connection": "close"}, json={"sourceImagePath": "/in.png",
                                              "outputImagePath": f"/o{i}.png"})
            assert reply.status_code == 200
        texts = [requests.get(f"{base}/metrics", timeout=10, headers={"Connection": "close"}).text
                 for _ in range(4)]
    log = output[0]
    for text in texts:
        line = next(x for x in text.splitlines()
                    if x.startswith('u2net_requests_total{route="/remove-background",status="200"}'))
        assert float(line.split()[-1]) == 6, log[-2000:]
    promtool_check(texts[0])
    assert 'u2net_model_warmup_seconds{model="u2netp"}' in texts[0]
    info = [x for x in texts[0].splitlines() if x.startswith("u2net_model_info{")]
    assert info and all('model="u2netp"' in x and x.endswith(" 1.0") for x in info), info
