"""`bgremove models`: every model with its architecture, size, licence, and whether its weights are
where the service looks (in-process: no model is loaded)."""
from __future__ import annotations

from u2net.registry import MODELS

from bgservice.cli import main


def test_models_lists_licences_sizes_and_what_is_downloaded(tmp_path, monkeypatch, capsys):
    (tmp_path / "u2netp").mkdir()
    (tmp_path / "u2netp" / "u2netp.pth").write_bytes(b"weights")
    monkeypatch.setenv("U2NET_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("U2NET_MODEL", "u2netp")
    monkeypatch.delenv("U2NET_WEIGHTS", raising=False)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[1 if line.startswith("*") else 0]: line for line in lines
               if not line.startswith("    ")}
    assert set(by_name) == set(MODELS)
    assert by_name["u2netp"].startswith("*")  # the default
    assert f"downloaded: {tmp_path / 'u2netp' / 'u2netp.pth'}" in by_name["u2netp"]
    assert by_name["u2net"].endswith("not downloaded")
    assert "Apache-2.0" in by_name["isnet-general-use"] and "1024px" in by_name["isnet-general-use"]
    assert "176.6 MB" in by_name["isnet-general-use"]
