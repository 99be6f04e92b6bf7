"""Finding and downloading weights: a local HTTP server stands in for every kind of source (a .pth
with its SHA-256, an ONNX export with its MD5 that is imported, a source that fails then the next).
"""
from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import export_onnx, trained_like_u2netp
from u2net.registry import MODELS, Source, get_spec, source_kind
from u2net.weights import WeightsError, build_model, default_weights_path, download, resolve_weights

SPEC = get_spec("u2netp")


def pth(url: str, sha256: str | None = None) -> tuple[Source, ...]:
    return (Source(url, "test server", sha256=sha256),)


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


@pytest.fixture(scope="module")
def u2netp_onnx(tmp_path_factory) -> bytes:
    """An ONNX export of U2NETP (batch norm folded, as rembg's are), made by the project's exporter."""
    return export_onnx(trained_like_u2netp(), tmp_path_factory.mktemp("onnx")).read_bytes()


@pytest.fixture
def onnx_route(u2netp_onnx):
    """The export, served at /u2netp.onnx by `server` (made only for the tests that need it)."""
    _Handler.routes["/u2netp.onnx"] = ("file", u2netp_onnx)
    return hashlib.md5(u2netp_onnx).hexdigest()


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
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", hashlib.sha256(data).hexdigest()
    httpd.shutdown()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_pth_source_is_checked_against_its_own_sha256_and_by_a_strict_load(server, tmp_path):
    base, sha = server
    dest = default_weights_path(tmp_path, SPEC)
    got = download(SPEC, dest, sources=pth(f"{base}/u2netp.pth", sha), progress=False)
    assert got.sha256 == got.fetched_sha256 == sha and got.source.url == f"{base}/u2netp.pth"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    assert leftovers(dest.parent) == ["u2netp.pth"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, sha = server
    dest = default_weights_path(tmp_path, SPEC)
    with pytest.raises(WeightsError, match="checksum mismatch: sha256"):
        download(SPEC, dest, sources=pth(f"{base}/u2netp.pth", "0" * 64), progress=False)
    with pytest.raises(WeightsError, match="checksum mismatch"):  # a pin overrides the source's
        download(SPEC, dest, sources=pth(f"{base}/u2netp.pth", sha), sha256="0" * 64, progress=False)
    assert leftovers(dest.parent) == []


@pytest.mark.slow
def test_an_onnx_source_is_checked_against_its_md5_then_imported_and_proved(server, onnx_route,
                                                                            tmp_path, u2netp_onnx):
    """rembg's releases are ONNX with an MD5: the file is checked, imported into the architecture,
    proved against ONNX Runtime, and only then written as the model's .pth."""
    base, _ = server
    source = Source(f"{base}/u2netp.onnx", "rembg-like release", kind="onnx", md5=onnx_route)
    dest = default_weights_path(tmp_path, SPEC)
    got = download(SPEC, dest, sources=(source,), progress=False)
    assert got.fetched_sha256 == hashlib.sha256(u2netp_onnx).hexdigest()
    assert got.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest() != got.fetched_sha256
    net = build_model(SPEC, dest)  # a strict load of the written .pth
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (net(x, fused_only=True) - trained_like_u2netp()(x, fused_only=True)).abs().max() < 1e-4
    assert leftovers(dest.parent) == ["u2netp.pth"]
    wrong = Source(source.url, source.host, kind="onnx", md5="0" * 32)
    with pytest.raises(WeightsError, match="checksum mismatch: md5"):
        download(SPEC, tmp_path / "again.pth", sources=(wrong,), progress=False)
    assert not (tmp_path / "again.pth").exists()


@pytest.mark.slow
def test_an_onnx_source_of_another_architecture_is_refused(server, onnx_route, tmp_path):
    base, _ = server
    source = Source(f"{base}/u2netp.onnx", "mislabelled", kind="onnx", md5=onnx_route)
    dest = tmp_path / "u2net.pth"
    with pytest.raises(WeightsError, match=r"mislabelled .*convolution 1 .* has shape \(16, 64, 3, 3\); "
                                           r"the architecture expects \(32, 64, 3, 3\)"):
        download(get_spec("u2net"), dest, sources=(source,), progress=False)
    assert leftovers(tmp_path) == []


def test_registry_checksum_is_enforced_when_none_is_pinned(server, tmp_path):
    """The registry's own u2netp sources, pointed at the local server: random weights cannot
    match the official MD5s, so both are refused and nothing is written."""
    base, _ = server
    sources = tuple(Source(f"{base}/u2netp.pth", s.host, s.kind, s.sha256, s.md5)
                    for s in SPEC.sources)
    with pytest.raises(WeightsError, match="md5") as info:
        download(SPEC, tmp_path / "u2netp.pth", sources=sources, progress=False)
    assert str(info.value).count("checksum mismatch: md5") == 2
    assert leftovers(tmp_path) == []


def test_every_model_has_a_checksummed_source_and_isnet_starts_with_one():
    for spec in MODELS.values():
        assert any(s.sha256 or s.md5 for s in spec.sources), spec.name
        assert all(source_kind(s.url) == s.kind or "drive" in s.url for s in spec.sources)
    assert get_spec("isnet-general-use").sources[0].md5 == "fc16ebd8b0c10d971d3513d564d01e29"
    assert [s.kind for s in get_spec("u2net_human_seg").sources] == ["pth", "pth", "onnx"]


def test_the_failure_message_tells_an_offline_user_how_to_use_a_local_copy(server, tmp_path):
    base, _ = server
    with pytest.raises(WeightsError) as info:
        download(SPEC, tmp_path / "u2netp.pth", sources=pth(f"{base}/absent.pth"), progress=False)
    assert "--url file:///path/to/u2netp.pth" in str(info.value) and "--sha256" in str(info.value)


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
        download(SPEC, dest, sources=pth(f"{base}{path}", sha), progress=False)
    assert dest.read_bytes() == b"previous"
    assert leftovers(tmp_path) == ["u2netp.pth"]


@pytest.mark.slow
def test_falls_back_to_the_next_source(server, onnx_route, tmp_path):
    """Drive's quota page, then a missing file, then a checksummed ONNX export: the third is used."""
    base, _ = server
    sources = (*pth(f"{base}/quota.html"), *pth(f"{base}/absent.pth"),
               Source(f"{base}/u2netp.onnx", "third", kind="onnx", md5=onnx_route))
    dest = tmp_path / "u2netp.pth"
    assert download(SPEC, dest, sources=sources, progress=False).source.host == "third"
    assert leftovers(tmp_path) == ["u2netp.pth"]


@pytest.mark.slow
def test_cli_download_shows_progress_and_lands_where_the_service_looks(server, tmp_path):
    base, sha = server
    env = {"PATH": "/usr/bin:/bin", "U2NET_MODELS_DIR": str(tmp_path), "U2NET_MODEL": "u2netp"}
    done = subprocess.run([sys.executable, "-m", "bgservice", "download", "--url",
                           f"{base}/u2netp.pth", "--sha256", sha], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr  # the progress bar
    assert f"from the --url given: {base}/u2netp.pth" in done.stdout and sha in done.stdout
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
