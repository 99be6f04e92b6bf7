"""Finding and downloading weights: a local HTTP server stands in for the official source."""
from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from u2net.registry import get_spec
from u2net.weights import WeightsError, default_weights_path, download, resolve_weights

SPEC = get_spec("u2netp")


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):
        kind, payload = self.routes.get(self.path, ("missing", b""))
        if kind == "missing":
            self.send_error(404)
            return
        self.send_response(200)
        if kind == "html":
            self.send_header("Content-Type", "text/html; charset=utf-8")
        else:
            self.send_header("Content-Type", "application/octet-stream")
        # "cut" promises the whole file but sends half, then drops the connection.
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2] if kind == "cut" else payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(random_weights):
    data = random_weights.read_bytes()
    _Handler.routes = {
        "/u2netp.pth": ("file", data),
        "/cut.pth": ("cut", data),
        "/quota.html": ("html", b"<html>Google Drive - quota exceeded</html>"),
        "/junk.pth": ("file", b"not a checkpoint at all"),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", hashlib.sha256(data).hexdigest()
    httpd.shutdown()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_the_pinned_sha256_and_strict_load(server, tmp_path):
    base, sha = server
    dest = default_weights_path(tmp_path, SPEC)
    assert download(SPEC, dest, urls=(f"{base}/u2netp.pth",), sha256=sha, progress=False) == sha
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    assert leftovers(dest.parent) == ["u2netp.pth"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, _ = server
    dest = default_weights_path(tmp_path, SPEC)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        download(SPEC, dest, urls=(f"{base}/u2netp.pth",), sha256="0" * 64, progress=False)
    assert leftovers(dest.parent) == []


def test_registry_checksum_is_enforced_when_none_is_pinned(server, tmp_path):
    base, _ = server  # random weights cannot match the official u2netp MD5
    with pytest.raises(WeightsError, match="md5"):
        download(SPEC, tmp_path / "u2netp.pth", urls=(f"{base}/u2netp.pth",), progress=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("path,reason", [("/cut.pth", "cut short: got [0-9]+ of [0-9]+ bytes"),
                                         ("/quota.html", "web page"),
                                         ("/junk.pth", "cannot read weights file"),
                                         ("/absent.pth", "404")])
def test_broken_downloads_leave_nothing_and_keep_the_old_file(server, tmp_path, path, reason):
    base, sha = server
    dest = tmp_path / "u2netp.pth"
    dest.write_bytes(b"previous")
    if path == "/junk.pth":  # its checksum is right; only the strict load can catch it
        sha = hashlib.sha256(b"not a checkpoint at all").hexdigest()
    with pytest.raises(WeightsError, match=reason):
        download(SPEC, dest, urls=(f"{base}{path}",), sha256=sha, progress=False)
    assert dest.read_bytes() == b"previous"
    assert leftovers(tmp_path) == ["u2netp.pth"]


def test_falls_back_to_the_next_source(server, tmp_path):
    base, sha = server
    dest = tmp_path / "u2netp.pth"
    download(SPEC, dest, urls=(f"{base}/absent.pth", f"{base}/u2netp.pth"), sha256=sha,
             progress=False)
    assert dest.exists()


@pytest.mark.slow
def test_cli_download_shows_progress_and_lands_where_the_service_looks(server, tmp_path):
    base, sha = server
    env = {"PATH": "/usr/bin:/bin", "U2NET_MODELS_DIR": str(tmp_path), "U2NET_MODEL": "u2netp"}
    done = subprocess.run([sys.executable, "-m", "bgservice", "download", "--url",
                           f"{base}/u2netp.pth", "--sha256", sha], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr  # the progress bar
    assert resolve_weights(SPEC, tmp_path) == default_weights_path(tmp_path, SPEC)
    again = subprocess.run([sys.executable, "-m", "bgservice", "download"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already exists" in again.stdout


@pytest.mark.slow
def test_cli_download_failure_exits_1_with_one_clear_line(server, tmp_path):
    base, _ = server
    env = {"PATH": "/usr/bin:/bin", "U2NET_MODELS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "bgservice", "download", "u2netp", "--quiet",
                           "--url", f"{base}/quota.html"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("error: could not download u2netp")


@pytest.mark.slow
def test_cli_download_verifies_the_sha256_pinned_in_the_environment(server, tmp_path):
    """U2NET_WEIGHTS_SHA256 (the Dockerfile's build argument) is what `download` verifies."""
    base, sha = server
    env = {"PATH": "/usr/bin:/bin", "U2NET_MODELS_DIR": str(tmp_path), "U2NET_MODEL": "u2netp"}
    command = [sys.executable, "-m", "bgservice", "download", "--quiet", "--url", f"{base}/u2netp.pth"]
    wrong = subprocess.run(command, env={**env, "U2NET_WEIGHTS_SHA256": "0" * 64},
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1 and "sha256" in wrong.stderr.lower(), wrong.stderr
    assert not default_weights_path(tmp_path, SPEC).exists()
    right = subprocess.run(command, env={**env, "U2NET_WEIGHTS_SHA256": sha.upper()},
                           capture_output=True, text=True, timeout=120)
    assert right.returncode == 0, right.stderr


def test_missing_weights_name_the_file_and_the_command(tmp_path):
    with pytest.raises(WeightsError) as info:
        resolve_weights(get_spec("u2net_human_seg"), tmp_path)
    message = str(info.value)
    assert str(tmp_path / "u2net_human_seg" / "u2net_human_seg.pth") in message
    assert "bgremove download u2net_human_seg" in message
