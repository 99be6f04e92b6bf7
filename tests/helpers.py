"""Helpers shared by several test files (and by bench/reliability.py, which runs the same
attacks): servers started as an operator would start them, the audit's attacks, synthetic scenes.
Fixtures stay in conftest.py."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import torch
from conftest import PROJECT
from PIL import Image


def dockerfile_cmd() -> list[str]:
    text = (PROJECT / "Dockerfile").read_text()
    return json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env_overrides: dict, app: str | None = None) -> tuple[subprocess.Popen, int]:
    """The Dockerfile's command on a free port; `app` replaces gunicorn_conf.py's wsgi_app."""
    cmd = dockerfile_cmd()
    assert cmd[0] == "gunicorn"
    cmd[0] = str(Path(sys.executable).with_name("gunicorn"))  # this environment's gunicorn
    if app:
        cmd.append(app)
    port = free_port()
    # Exact fp32 unless a test asks otherwise: auto on an AMX CPU would compile bf16 (minutes).
    env = {**os.environ, "PORT": str(port), "U2NET_DEVICE": "cpu", "U2NET_WARMUP_RUNS": "1",
           "U2NET_PRECISION": "fp32",
           "U2NET_CACHE_DIR": str(env_overrides.pop("cache", PROJECT / ".pytest-onnx-cache")),
           **env_overrides}
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, port


@contextlib.contextmanager
def u2netp_server(root: Path, weights: Path, **env: str):
    """The production server with u2netp `weights` on shared root `root`, ready: yields
    (base URL, a list that receives the server's whole output once it has stopped)."""
    proc, port = start_server({"OpenClone_OpenCloneFS": str(root), "U2NET_MODEL": "u2netp",
                               "U2NET_WEIGHTS": str(weights), **env})
    base, output = f"http://127.0.0.1:{port}", []
    try:
        wait_until_ready(proc, base)
        yield base, output
    finally:
        output.append(stop(proc))


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out


def wait_for_exit(proc: subprocess.Popen, timeout: float = 90) -> str:
    """The server's log once it has exited by itself (stopped after `timeout` if it has not)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    return stop(proc)


def poll_ready(proc: subprocess.Popen, base: str, timeout: float = 120) -> list[int]:
    """Poll /ready until it says 200; the statuses seen (503s while warming, then 200). Raises
    RuntimeError when the process exits first, TimeoutError when it never gets ready."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            status = requests.get(f"{base}/ready", timeout=2).status_code
            seen.append(status)
            if status == 200:
                return seen
        except requests.RequestException:  # refused while booting, or a read timeout
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the server was not ready within {timeout} s")


def wait_until_ready(proc, base: str, timeout: float = 120) -> list[int]:
    """poll_ready, failing the test with the server's log."""
    try:
        return poll_ready(proc, base, timeout)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}:\n{stop(proc)}")


def files_under(folder: Path) -> dict:
    """Every file under `folder` with its bytes (snapshot() compares sizes and times only)."""
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Swapper(threading.Thread):
    """Flips `path` between the real thing and a symlink to `target`, as fast as it can, until
    stopped; counts the flips."""

    def __init__(self, path: Path, target: Path, hold_s: float = 0.0):
        super().__init__(daemon=True)
        self.path, self.target, self.hold_s, self.flips = path, target, hold_s, 0
        self.stop = threading.Event()
        self.real = path.with_name(path.name + ".real")

    def run(self):
        link = self.path.with_name(self.path.name + ".link")
        while not self.stop.is_set():
            try:
                os.rename(self.path, self.real)  # the real folder or file steps aside
                os.symlink(self.target, link)
                os.rename(link, self.path)  # ... and a link to the outside takes its place
                time.sleep(self.hold_s)
                os.unlink(self.path)
                os.rename(self.real, self.path)
                self.flips += 1
                time.sleep(self.hold_s)
            except OSError:  # the service made the folder again meanwhile: put things back
                self._restore(link)
        self._restore(link)

    def _restore(self, link: Path) -> None:
        """Put the real thing back, removing whatever the service created at its place."""
        if link.is_symlink():
            link.unlink()
        while self.real.exists():
            try:
                if self.path.is_symlink():
                    self.path.unlink()
                elif self.path.is_dir():
                    shutil.rmtree(self.path, ignore_errors=True)
                os.rename(self.real, self.path)
            except OSError:
                continue

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(5)


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG that decodes to width x height: flat colour with a disc, compressed hard."""
    yy, xx = np.ogrid[:height, :width]
    image = np.zeros((height, width, 3), np.uint8)
    image[(yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (height / 3) ** 2] = (200, 150, 120)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def bomb_burst(base: str, worker: int, data: bytes, upload_modes: list[str],
               batch_sources: list[str]) -> tuple[list[int], int, int]:
    """Uploads of `data` (one per mode) and one batch with a website job per source, all at
    once, against the server at `base` whose worker is `worker`. (statuses, uploads' then the
    batch jobs'; the worker's resident kB before; its peak resident kB during the burst)."""
    idle = status_kb(worker, "VmRSS")
    with open(f"/proc/{worker}/clear_refs", "w") as f:
        f.write("5")  # reset the peak: measure the burst alone

    def upload(mode: str) -> int:
        return requests.post(f"{base}/api/remove?mode={mode}", data=data, timeout=300).status_code

    def batch() -> list[int]:
        jobs = [{"sourceImagePath": source, "outputImagePath": f"/out/{i}.png", "threshold": 200}
                for i, source in enumerate(batch_sources)]
        r = requests.post(f"{base}/remove-background/batch", json={"jobs": jobs}, timeout=300)
        return [job["status"] for job in r.json()["jobs"]]

    with ThreadPoolExecutor(len(upload_modes) + 1) as pool:
        uploads = [pool.submit(upload, mode) for mode in upload_modes]
        jobs = pool.submit(batch)
        statuses = [u.result() for u in uploads] + jobs.result()
    return statuses, idle, status_kb(worker, "VmHWM")


def worker_pids(master: int) -> list[int]:
    with open(f"/proc/{master}/task/{master}/children") as f:
        return [int(p) for p in f.read().split()]


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_TEMPLATE = PROJECT / "deploy" / "nginx" / "u2net.conf.template"


def template_variables() -> set[str]:
    """The ${NAME} placeholders of the nginx template (nginx's own $variables have no braces)."""
    text = "\n".join(line for line in NGINX_TEMPLATE.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    return set(re.findall(r"\$\{(\w+)\}", text))


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
                 "U2NET_PRECISION": "fp32", "U2NET_CACHE_DIR": str(PROJECT / ".pytest-onnx-cache"),
                 "NGINX": NGINX, **env},
            stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        try:
            poll_ready(self.proc, self.base, timeout)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}:\n{self.stop()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # the script, as an operator's Ctrl-C or kill
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
        return out or ""


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
                with contextlib.suppress(OSError):  # nginx may have timed it out
                    s.send(b"x")
        for s in self.sockets:
            s.close()


def blurred_disc_scene(size=240, seed=0):
    """A textured foreground disc with a soft (blurred) edge composited on a coloured background:
    the true alpha and the true foreground colours are known."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    hard = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3.2) ** 2).astype(np.float32)
    alpha = cv2.GaussianBlur(hard, (0, 0), 3.0)
    fg = np.empty((size, size, 3), np.float32)
    fg[:] = (0.95, 0.85, 0.2)  # yellow subject
    fg += rng.normal(0, 0.03, fg.shape).astype(np.float32)
    bg = np.empty_like(fg)
    bg[:] = (0.1, 0.3, 0.9)  # blue background that must not bleed in
    image = alpha[:, :, None] * fg + (1 - alpha[:, :, None]) * bg
    rgb = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    # The "model" mask: right place, but blurrier than the truth (as U2-Net's 320 px map is).
    mask = np.clip(np.rint(cv2.GaussianBlur(hard, (0, 0), 7.0) * 255), 0, 255).astype(np.uint8)
    return rgb, mask, alpha, np.clip(fg, 0, 1)


def two_subjects_and_a_speck(rgb, timeout=None, timings=None):
    """A stand-in mask: two people (the second 64 % of the first's area) and a speck."""
    h, w = rgb.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 4, h // 2), h // 4, 255, -1)
    cv2.circle(mask, (3 * w // 4, h // 2), h // 5, 255, -1)
    cv2.circle(mask, (w - 6, 5), 2, 255, -1)
    return mask


def export_onnx(net, tmp_path, **kwargs):
    """The network as ONNX (`do_constant_folding=False` keeps its batch norms)."""
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net.eval(), (torch.zeros(1, 3, 64, 64),), buf, input_names=["input"],
                          output_names=["mask"], dynamic_axes={"input": {2: "h", 3: "w"}},
                          opset_version=17, dynamo=False, **kwargs)
    path = tmp_path / "model.onnx"
    path.write_bytes(buf.getvalue())
    return path


def trained_like_u2netp():
    """Random weights with batch-norm statistics that are not the identity (as trained ones)."""
    import torch
    from u2net.model import U2NETP

    torch.manual_seed(0)
    net = U2NETP()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


# -- a tiny custom ONNX model ---------------------------------------------------------------

DESCRIPTION = {"input_size": 64, "resize": "bilinear", "mean": [0.5, 0.5, 0.5],
               "std": [0.25, 0.25, 0.25], "output": 0, "sigmoid": False, "normalise": "none",
               "name": "tiny", "licence": "MIT"}


class Tiny(torch.nn.Module):
    """A stand-in segmentation network: one convolution, then (optionally) the sigmoid; a second
    output that is not the mask."""

    def __init__(self, logits: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 1, 5, padding=2)
        self.logits = logits

    def forward(self, x):
        y = self.conv(x) * 3
        return (y if self.logits else torch.sigmoid(y)), x.mean(dim=1, keepdim=True)


def write_model(folder, logits=False, batch=None, **description):
    """tiny.onnx (batch dynamic unless `batch`) and tiny.onnx.json with `description`'s changes:
    a custom model (u2net/custom.py) small enough for any test."""
    import warnings

    buf = io.BytesIO()
    axes = {} if batch else {"input": {0: "n"}, "mask": {0: "n"}, "other": {0: "n"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Tiny(logits).eval(), (torch.zeros(batch or 1, 3, 64, 64),), buf,
                          input_names=["input"], output_names=["mask", "other"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    path = folder / "tiny.onnx"
    path.write_bytes(buf.getvalue())
    values = {**DESCRIPTION, **description}
    (folder / "tiny.onnx.json").write_text(json.dumps({k: v for k, v in values.items()
                                                      if v is not None}))
    return path
