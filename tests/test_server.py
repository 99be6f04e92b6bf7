"""The production command, for real: the Dockerfile's CMD (gunicorn with the project's config) on a
free port, called over HTTP like the website does (a new connection per call)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from conftest import PROJECT, WEBSITE_REQUEST, photo, save_image
from helpers import (
    NGINX_TEMPLATE,
    free_port,
    start_server,
    stop,
    template_variables,
    wait_for_exit,
    wait_until_ready,
    write_model,
)
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture
def server(sandbox, random_weights, tmp_path):
    """The production server serving u2netp (the default) and, beside it, a tiny custom model."""
    tiny = write_model(tmp_path)
    proc, port = start_server({"OpenClone_OpenCloneFS": str(sandbox["root"]),
                               "U2NET_MODELS": f"u2netp={random_weights},{tiny}"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, base)
        yield proc, base
    finally:
        log = stop(proc)
        print(log[-3000:])


def test_production_server_answers_the_website(server, sandbox):
    _, base = server
    save_image(sandbox["root"] / "Clones/4/clone-image-with-bg.png", photo(320, 240))
    response = requests.post(f"{base}/remove-background", json=WEBSITE_REQUEST,
                             headers={"Accept": "application/json", "Connection": "close"},
                             timeout=100)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    out = Image.open(sandbox["root"] / "Clones/4/clone-image-no-bg.png")
    assert out.mode == "RGBA" and out.size == (320, 240)

    bad = requests.post(f"{base}/remove-background", json={**WEBSITE_REQUEST,
                        "sourceImagePath": "/../../etc/passwd"}, timeout=30)
    assert bad.status_code == 400 and "error" in bad.json()
    info = requests.get(f"{base}/model-info", timeout=10).json()
    assert info["model"] == "u2netp" and info["device"].startswith("cpu")


def test_master_process_never_loads_torch(server):
    proc, _ = server
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "libtorch" not in maps  # gunicorn's master: no torch, so no CUDA before fork
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert workers, "no worker process"
    assert "libtorch" in Path(f"/proc/{workers[0]}/maps").read_text()


def test_concurrent_clients_over_http(server, sandbox):
    from concurrent.futures import ThreadPoolExecutor

    _, base = server
    for i in range(4):
        save_image(sandbox["root"] / f"in/{i}.jpg", photo(200 + 20 * i, 150, seed=i), quality=90)

    def call(i):
        return requests.post(f"{base}/remove-background", json={
            "sourceImagePath": f"/in/{i}.jpg", "outputImagePath": f"/out/{i}.png",
            "threshold": 0}, timeout=100)

    with ThreadPoolExecutor(4) as pool:
        statuses = [r.status_code for r in pool.map(call, range(4))]
    assert statuses == [200] * 4
    for i in range(4):
        out = np.asarray(Image.open(sandbox["root"] / f"out/{i}.png"))
        assert out.shape == (150, 200 + 20 * i, 4) and (out[..., 3] == 255).all()


def test_the_production_server_serves_every_model_it_lists(server, sandbox):
    _, base = server
    assert requests.get(f"{base}/ready", timeout=10).json()["models"] == ["u2netp", "tiny"]
    save_image(sandbox["root"] / "in.png", photo(160, 120))
    for model in ("tiny", "u2netp"):
        reply = requests.post(f"{base}/remove-background", timeout=60, json={
            "sourceImagePath": "/in.png", "outputImagePath": f"/{model}.png", "model": model})
        assert reply.status_code == 200 and reply.json()["model"] == model
        assert Image.open(sandbox["root"] / f"{model}.png").size == (160, 120)


def test_missing_weights_refuse_to_start_naming_the_file_and_the_command(sandbox, tmp_path):
    proc, _ = start_server({"OpenClone_OpenCloneFS": str(sandbox["root"]),
                            "U2NET_MODEL": "u2net_human_seg",
                            "U2NET_MODELS_DIR": str(tmp_path / "empty")})
    log = wait_for_exit(proc)
    assert proc.returncode not in (0, None)
    assert str(tmp_path / "empty" / "u2net_human_seg" / "u2net_human_seg.pth") in log
    assert "bgremove download u2net_human_seg" in log


def test_a_worker_whose_model_fails_to_warm_up_stops_the_server(sandbox, random_weights):
    """gunicorn_conf.py's hook: rather than a live process that is never ready, the server exits
    as a boot failure, so that Docker's restart policy or Kubernetes restarts it with back-off."""
    proc, _ = start_server({"OpenClone_OpenCloneFS": str(sandbox["root"]),
                            "U2NET_MODEL": "u2netp", "U2NET_WEIGHTS": str(random_weights),
                            "PYTHONPATH": os.pathsep.join([str(PROJECT / "tests"),
                                                           os.environ.get("PYTHONPATH", "")])},
                           app="warmup_failure_app:app")
    log = wait_for_exit(proc)
    assert proc.returncode == 3, log[-3000:]  # gunicorn's "Worker failed to boot"
    assert "warm-up failed: CUDA out of memory (simulated)" in log


def test_compose_file_runs_the_image_behind_nginx_with_gpu_volume_and_health_check():
    services = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())["services"]
    proxy, service = services["proxy"], services["u2net"]
    assert proxy["ports"] == ["5002:5002"] and "ports" not in service  # only through nginx
    assert proxy["image"].startswith("nginx:")
    mount = proxy["volumes"][0].split(":")
    assert PROJECT / mount[0] == NGINX_TEMPLATE and mount[1].startswith("/etc/nginx/templates/")
    assert template_variables() <= set(proxy["environment"])
    assert proxy["environment"]["U2NET_UPSTREAM"] == "u2net:5002"
    assert service["environment"]["HOST"] == "0.0.0.0"
    assert any(v.endswith(":/OpenCloneFS") for v in service["volumes"])
    assert service["environment"]["OpenClone_OpenCloneFS"] == "/OpenCloneFS"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "/ready" in " ".join(service["healthcheck"]["test"])
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile and "HEALTHCHECK" in dockerfile  # numeric: runAsNonRoot
    assert "bgremove download" in dockerfile
    # the log database: opt-in, and named as the service's variables expect
    logdb = services["logdb"]
    assert logdb["profiles"] == ["logdb"] and logdb["image"].startswith("postgres:")
    env = service["environment"]
    assert env["OpenClone_DB_Host"] == "${OpenClone_DB_Host:-}"  # unset: no database logging
    assert logdb["environment"]["POSTGRES_DB"] == env["OpenClone_LogDB_Name"]
    assert logdb["environment"]["POSTGRES_USER"] == env["OpenClone_LogDB_User"]


def test_dockerfile_passes_hadolint():
    """No Docker engine builds the image here; the linter catches what a build review would."""
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(PROJECT / "Dockerfile")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# The CUDA major of PyPI's Linux torch wheel, per pinned version: `pip install --dry-run --report
# r.json --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.12
# --target /tmp/t torch==X` lists its `cuda-toolkit==...` requirement without downloading it.
TORCH_WHEEL_CUDA_MAJOR = {"2.13.0": 13}


def test_docker_base_image_matches_the_torch_wheels_cuda():
    """A base image of another CUDA version carries mismatched libraries and driver requirement
    (a driver too old for the wheel would leave the service silently on the CPU)."""
    pin = re.search(r"^torch==(\S+)$", (PROJECT / "requirements.txt").read_text(), re.MULTILINE)
    assert pin, "requirements.txt must pin torch exactly"
    assert pin.group(1) in TORCH_WHEEL_CUDA_MAJOR, (
        f"torch {pin.group(1)}: look up its wheel's CUDA version and add it to the table")
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.[\d.]+-base-", (PROJECT / "Dockerfile").read_text(),
                     re.MULTILINE)
    assert base, "the image should start from an nvidia/cuda base flavour"
    assert int(base.group(1)) == TORCH_WHEEL_CUDA_MAJOR[pin.group(1)]


@pytest.mark.parametrize("command", [["API.py"], ["-m", "bgservice.cli", "serve"]])
def test_development_server_runs_on_port(sandbox, random_weights, command):
    """`python API.py` and `bgremove serve` (which runs API.py as its own program)."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "OpenClone_OpenCloneFS": str(sandbox["root"]),
           "U2NET_MODEL": "u2netp", "U2NET_WEIGHTS": str(random_weights), "U2NET_DEVICE": "cpu",
           "U2NET_PRECISION": "fp32", "U2NET_CACHE_DIR": str(PROJECT / ".pytest-onnx-cache")}
    proc = subprocess.Popen([sys.executable, *command], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_until_ready(proc, f"http://127.0.0.1:{port}")
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json() == {"status": "ok"}
    finally:
        stop(proc)

