"""Every curl and command-line example in README.md, run as written against a live server on
loopback (the port rewritten, curl told to fail on an HTTP error), so the README cannot promise
what the service does not do. The few that cannot run here are listed in NOT_RUN, with why."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import make_settings, photo, save_image
from PIL import Image
from werkzeug.serving import make_server

import API

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"

# Examples not run here, each with the reason and where it is tested instead.
NOT_RUN = {
    "bgremove watch ": "runs until stopped; tests/test_cli.py watches a temporary folder",
    "bgremove evaluate ": "minutes on ../shared's data; tests/test_quality_real.py runs it",
    "bgremove download ": "fetches from the internet; tests/test_weights.py uses a local server",
    "bgremove train ": "hours of training; tests/test_train.py trains a few steps",
    "bgremove serve ": "the development server itself, which runs until stopped",
    "bgremove import-onnx ": "needs the 176 MB IS-Net export; tests/test_onnx_import.py",
}
# Files the examples name, made before they run (the website's own example makes its photo).
INPUTS = ("photo.jpg", "a.jpg", "b.png", "party.jpg", "beach.jpg", "shoots/one.jpg",
          "shoots/more/two.png", "OpenCloneFS/Clones/4/a.png", "OpenCloneFS/Clones/5/b.png",
          "OpenCloneFS/a.png")


def readme_commands() -> list[str]:
    """The shell commands of README.md's ```sh blocks (indented ones too), continuation lines
    and lines inside open quotes joined: those that run curl or bgremove, and the mkdir/cp
    lines that prepare their files."""
    commands = []
    for _indent, body in re.findall(r"^( *)```sh\n(.*?)^\1```", README.read_text(), re.S | re.M):
        pending = ""
        for line in textwrap.dedent(body).splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            try:  # a quote still open (JSON over several lines) continues the command too
                shlex.split(pending + line, comments=True)
            except ValueError:
                pending += line + "\n"
                continue
            command, pending = pending + line, ""
            if re.search(r"(^|\| *)(curl|bgremove) ", command) or command.startswith("mkdir -p OpenCloneFS"):
                commands.append(command)
    return commands


def not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


@pytest.fixture
def workdir(tmp_path, random_weights, runtime):
    """A working directory with the examples' files, the service on loopback serving its
    OpenCloneFS/, and the environment the CLI examples run in."""
    for i, name in enumerate(INPUTS):
        save_image(tmp_path / name, photo(160, 120, seed=i))
    models = tmp_path / "models" / "u2netp"
    models.mkdir(parents=True)
    (models / "u2netp.pth").symlink_to(random_weights)
    app = API.create_app(make_settings(tmp_path / "OpenCloneFS", random_weights), runtime=runtime)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "U2NET_MODEL": "u2netp", "U2NET_MODELS_DIR": str(tmp_path / "models"),
           "U2NET_DEVICE": "cpu", "U2NET_PRECISION": "fp32", "LOG_LEVEL": "WARNING",
           "U2NET_CACHE_DIR": str(random_weights.parent / "onnx-cache"),
           "U2NET_API_TOKEN": "not-checked-by-this-server-0123"}
    yield tmp_path, server.server_port, env
    server.shutdown()


def test_the_readme_has_the_examples_this_test_expects():
    commands = readme_commands()
    assert sum(c.startswith("curl") for c in commands) >= 15
    assert sum("bgremove remove" in c for c in commands) >= 8
    for start in NOT_RUN:  # an exception with no example left is stale
        assert any(c.startswith(start) for c in commands), start


def test_every_readme_example_runs_against_a_live_server(workdir):
    cwd, port, env = workdir
    ran = []
    for command in readme_commands():
        if not_run(command):
            continue
        runnable = re.sub(r"(http://)?localhost:5002", f"http://127.0.0.1:{port}", command)
        runnable = re.sub(r"^curl ", "curl --fail-with-body ", runnable)
        done = subprocess.run(["bash", "-c", runnable], cwd=cwd, env=env, capture_output=True,
                              timeout=300)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        if command.startswith("curl") and "-o " not in command:  # a JSON answer: no error in it
            body = json.loads(done.stdout)
            assert body.get("error") is None and body.get("failed", 0) == 0, body
        ran.append(command)
    assert len(ran) >= 25, ran
    # What the examples say they make is there, and is what they say.
    made = {"cutout.png": "PNG", "mask.png": "PNG", "product.png": "PNG", "cutout.webp": "WEBP",
            "on-navy.jpg": "JPEG", "on-the-beach.png": "PNG", "portrait.jpg": "JPEG",
            "photo-nobg.png": "PNG", "out/a-nobg.png": "PNG", "out/b-nobg.png": "PNG",
            "cutouts/one.png": "PNG", "cutouts/more/two.png": "PNG", "product.webp": "WEBP",
            "party-nobg.png": "PNG", "on-the-beach.jpg": "JPEG",
            "OpenCloneFS/Clones/4/clone-image-no-bg.png": "PNG",
            "OpenCloneFS/Clones/4/on-the-beach.png": "PNG",
            "OpenCloneFS/Clones/4/a-nobg.png": "PNG", "OpenCloneFS/Clones/5/b-nobg.png": "PNG"}
    for name, fmt in made.items():
        assert Image.open(cwd / name).format == fmt, name
    assert Image.open(cwd / "mask.png").mode == "L"
    assert Image.open(cwd / "on-navy.jpg").getpixel((0, 0)) != (0, 0, 0)
