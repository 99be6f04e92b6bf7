"""Production behind nginx (Debian's package), started by deploy/run-local.sh exactly as an
operator would: slow clients do not starve the service, nginx's refusals are JSON, and SIGTERM
stops both servers."""
from __future__ import annotations

import os
import statistics
import subprocess
import time

import pytest
import requests
from conftest import WEBSITE_REQUEST, photo, save_image
from helpers import LocalProduction, SlowClients

pytestmark = pytest.mark.slow


@pytest.fixture
def production(sandbox, random_weights):
    server = LocalProduction(sandbox["root"], random_weights, MAX_UPLOAD_MB="2")
    try:
        server.wait_ready()
        yield server
    finally:
        print(server.stop()[-3000:])


def website_call(base: str) -> float:
    started = time.perf_counter()
    r = requests.post(f"{base}/remove-background", json=WEBSITE_REQUEST,
                      headers={"Connection": "close"}, timeout=100)
    assert r.status_code == 200, r.text
    return time.perf_counter() - started


def test_slow_clients_do_not_starve_the_service_behind_nginx(production, sandbox):
    save_image(sandbox["root"] / "Clones/4/clone-image-with-bg.png", photo(320, 240))
    website_call(production.base)
    idle = statistics.median(website_call(production.base) for _ in range(6))
    slow = SlowClients(production.port, 50)
    slow.start()
    health, busy = [], []
    try:
        time.sleep(1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            busy.append(website_call(production.base))
            started = time.perf_counter()
            assert requests.get(f"{production.base}/health", timeout=5).status_code == 200
            health.append(time.perf_counter() - started)
        assert len(slow.sockets) == 50
    finally:
        slow.stop.set()
        slow.join(10)
    print(f"idle median {idle * 1000:.0f} ms; under 50 slow clients median "
          f"{statistics.median(busy) * 1000:.0f} ms over {len(busy)}; "
          f"/health max {max(health) * 1000:.0f} ms")
    assert statistics.median(busy) < 2 * idle
    assert max(health) < 1.0


def test_nginx_refuses_oversized_bodies_as_json_and_passes_errors_through(production):
    r = requests.post(f"{production.base}/api/remove", data=b"x" * (3 << 20), timeout=30)
    assert r.status_code == 413 and "over the limit of 2 MB" in r.json()["error"]
    r = requests.post(f"{production.base}/remove-background", data="{}", timeout=30,
                      headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]  # the app's own
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_sigterm_stops_nginx_and_gunicorn(sandbox, random_weights):
    server = LocalProduction(sandbox["root"], random_weights)
    server.wait_ready()
    group = os.getpgid(server.proc.pid)
    log = server.stop()
    assert server.proc.returncode == 0, log[-2000:]
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout
    assert left.strip() == "", f"still running: {left}"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.base}/health", timeout=2)
