"""The code follows the rules written down in pyproject.toml ([tool.ruff]): pycodestyle, pyflakes,
import order, bugbear, pyupgrade, simplify and a complexity limit. Run `ruff check --fix .` to
mend what it can."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import PROJECT


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=PROJECT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
