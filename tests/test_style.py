"""The code follows the rules written down in pyproject.toml ([tool.ruff]): pycodestyle, pyflakes,
import order, bugbear, pyupgrade, simplify and a complexity limit. Run `ruff check --fix .` to
mend what it can."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=PROJECT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_core_never_imports_the_http_layer():
    """bgservice and u2net are the core; the HTTP layer (API.py and its webapp package: the OpenAPI
    description, the web page) builds on them, never the reverse."""
    import re

    http = r"^\s*(import (API|webapp|flask)\b|from (API|webapp|flask)\b)"
    offenders = [str(path.relative_to(PROJECT)) for folder in ("bgservice", "U-2-Net")
                 for path in (PROJECT / folder).rglob("*.py")
                 if re.search(http, path.read_text(), re.MULTILINE)]
    assert offenders == []
    assert not (PROJECT / "bgservice" / "web").exists()
    assert not (PROJECT / "bgservice" / "openapi.py").exists()


@pytest.mark.slow
def test_mypy_finds_nothing(tmp_path):
    """A type check of the service's code (settings in pyproject.toml, [tool.mypy])."""
    (tmp_path / "u2net").symlink_to(PROJECT / "U-2-Net", target_is_directory=True)
    mypy = Path(sys.executable).with_name("mypy")
    targets = ["-p", "u2net", "-p", "bgservice", "-p", "webapp", "-m", "API", "-m", "GlobalVariables",
               "-m", "Image_PostProcesser", "-m", "gunicorn_conf"]
    result = subprocess.run([str(mypy), "--cache-dir", str(tmp_path / "cache"), *targets],
                            cwd=PROJECT, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "MYPYPATH": f"{tmp_path}:{PROJECT}"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
