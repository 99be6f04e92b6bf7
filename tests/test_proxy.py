"""Production behind nginx (Debian's package), started by deploy/run-local.sh exactly as an
operator would: slow clients do not starve the service, nginx's refusals are JSON, and SIGTERM
stops both servers."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time

import pytest
import requests
from conftest import PROJECT, WEBSITE_REQUEST, photo, save_image
from test_server import free_port

pytestmark = pytest.mark.slow
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def need_nginx():
    if not os.path.exists(NGINX):
        message = "nginx missing: apt-get install nginx-light (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


class LocalProduction:
    """deploy/run-local.sh PORT in its own process group."""

    def __init__(self, root, weights, log=None, **env):
        """`log`: a file for both servers' output (default: a pipe, read when stopped; keep
        what is logged meanwhile under 64 KB, or the servers block on it)."""
        need_nginx()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["bash", str(PROJECT / "deploy" / "run-local.sh"), str(self.port)], cwd=PROJECT,
            env={**os.environ, "OpenClone_OpenCloneFS": str(root), "U2NET_MODEL": "u2netp",
                 "U2NET_WEIGHTS": str(weights), "U2NET_DEVICE": "cpu", "U2NET_WARMUP_RUNS": "1",
                 "U2NET_CACHE_DIR": str(PROJECT / ".pytest-onnx-cache"), "NGINX": NGINX, **env},
            stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stop()
            try:
                if requests.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        pytest.fail(f"never ready:\n{self.stop()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # the script, as an operator's Ctrl-C or kill
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
        return out or ""


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


class SlowClients(threading.Thread):
    """`count` connections that each announce a large upload and then send one byte every
    `every_s` seconds, for as long as they run."""

    def __init__(self, port: int, count: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.port, self.count, self.every_s = port, count, every_s
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []

    def run(self):
        for _ in range(self.count):
            s = socket.create_connection(("127.0.0.1", self.port))
            s.sendall(b"POST /api/remove HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream"
                      b"\r\nContent-Length: 1000000\r\n\r\n")
            self.sockets.append(s)
        while not self.stop.wait(self.every_s):
            for s in self.sockets:
                try:
                    s.send(b"x")
                except OSError:
                    pass
        for s in self.sockets:
            s.close()


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
          f"{statistics.median(busy) * 1000:.0f} ms over {len(busy)}; /health max {max(health) * 1000:.0f} ms")
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
