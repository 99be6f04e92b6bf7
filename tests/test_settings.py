"""Settings come from the environment once, with clear errors for bad values."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import PROJECT as PROJECT_ROOT

from GlobalVariables import Settings, SettingsError


def test_defaults():
    s = Settings.from_env({})
    assert s.port == 5002 and s.model == "u2net_human_seg" and s.default_mode == "refine"
    # In the working directory, not next to the code (site-packages after `pip install .`).
    assert s.fs_root == Path.cwd() / "OpenCloneFS" and not s.fs_root_from_env
    assert s.models_dir == Path.cwd() / "saved_models" and s.weights is None


def test_environment_overrides():
    s = Settings.from_env({"OpenClone_OpenCloneFS": "/OpenCloneFS", "PORT": "6000",
                           "U2NET_MODEL": "u2netp", "U2NET_WEIGHTS": "/w/mine.pth",
                           "U2NET_BATCH_WAIT_MS": "2.5", "MAX_SOURCE_MB": "3",
                           "U2NET_DEVICE": "cuda:1", "LOG_LEVEL": "debug"})
    assert s.fs_root == Path("/OpenCloneFS") and s.fs_root_from_env
    assert (s.port, s.model, s.weights) == (6000, "u2netp", Path("/w/mine.pth"))
    assert s.batch_wait_ms == 2.5 and s.max_source_bytes == 3 << 20
    assert s.device == "cuda:1" and s.log_level == "DEBUG"
    options = s.runtime_options()
    assert options.model == "u2netp" and options.max_wait_ms == 2.5


@pytest.mark.parametrize("env,message", [
    ({"PORT": "http"}, "PORT must be an integer"),
    ({"PORT": "70000"}, "PORT must be between 1 and 65535"),
    ({"U2NET_BATCH_WAIT_MS": "soon"}, "U2NET_BATCH_WAIT_MS must be a number"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be"),
    ({"U2NET_DEFAULT_MODE": "blur"}, "U2NET_DEFAULT_MODE must be one of"),
    ({"U2NET_THRESHOLD_EDGES": "soft"}, "U2NET_THRESHOLD_EDGES must be one of hard, refined"),
    ({"U2NET_MODEL": "nope"},
     "U2NET_MODEL must be one of u2net_human_seg, u2net, u2netp, isnet-general-use, or the path "
     "of an .onnx file with its .onnx.json description beside it; got 'nope'"),
    ({"U2NET_ENGINE": "tensorrt"}, "U2NET_ENGINE must be one of auto, torch, onnxruntime"),
    ({"U2NET_PRECISION": "int4"}, "U2NET_PRECISION must be one of auto, fp32, tf32, bf16, fp16"),
    ({"U2NET_ENGINE": "onnxruntime", "U2NET_PRECISION": "bf16"}, "runs fp32 only"),
    ({"U2NET_DEVICE": "gpu"}, "U2NET_DEVICE must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"U2NET_DEVICE": "cuda:x"}, "U2NET_DEVICE must be"),
    ({"U2NET_MEMORY_BUDGET_MB": "8"}, "U2NET_MEMORY_BUDGET_MB must be between 16"),
    ({"U2NET_MEMORY_WAIT_S": "-1"}, "U2NET_MEMORY_WAIT_S must be between 0"),
    ({"U2NET_API_TOKEN": "abc"}, "U2NET_API_TOKEN must be at least 16"),
    ({"MAX_IMAGE_PIXELS": "0"}, "MAX_IMAGE_PIXELS must be between 1"),
    ({"U2NET_WEIGHTS_SHA256": "abc"}, "U2NET_WEIGHTS_SHA256 must be 64 hexadecimal digits"),
    ({"U2NET_MAX_QUEUE": "0"}, "U2NET_MAX_QUEUE must be between 1"),
])
def test_bad_values_are_named(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("env, threads", [
    ({}, 8),                                           # CPU default: max batch 1
    ({"U2NET_MAX_BATCH": "8"}, 16),                    # the compose file (GPU)
    ({"U2NET_MAX_BATCH": "32"}, 64),                   # the GPU benchmark
    ({"U2NET_MAX_BATCH": "32", "GUNICORN_THREADS": "12"}, 12),  # an explicit choice wins
])
def test_gunicorn_threads_leave_room_for_full_batches(monkeypatch, env, threads):
    """Each request holds a thread until its cut-out is written, so with fewer threads than twice
    the batch, batches under load stay smaller than U2NET_MAX_BATCH allows."""
    import runpy

    for name in ("U2NET_MAX_BATCH", "GUNICORN_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = runpy.run_path(str(PROJECT_ROOT / "gunicorn_conf.py"))
    assert config["threads"] == threads


def test_the_settings_and_the_core_paths_do_not_load_torch():
    """The settings (read by gunicorn's master, which must never touch CUDA) and the shared
    root's code import no torch: the lists of models, engines and precisions are torch-free."""
    import subprocess
    import sys

    code = ("import sys, GlobalVariables, bgservice.paths, bgservice.errors, bgservice.limits; "
            "GlobalVariables.Settings.from_env({'U2NET_MODEL': 'u2netp'}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PROJECT_ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_commands_that_run_no_network_do_not_load_torch(tmp_path):
    """`bgremove models`, `--help`, an unknown model and a bad setting answer without importing
    torch (two seconds of the command's 2.3 s before, measured: 0.23 s now)."""
    import subprocess
    import sys

    code = ("import contextlib, io, os, sys; from bgservice.cli import main\n"
            "for argv in (['models'], ['--help'], ['download', 'no-such-model'], ['remove', 'a.png']):\n"
            "    if argv[0] == 'remove': os.environ['U2NET_MAX_BATCH'] = 'lots'\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try: assert main(argv) == (0 if argv == ['models'] else 2), argv\n"
            "        except SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PROJECT_ROOT, env={**os.environ, "U2NET_MODELS_DIR": str(tmp_path)})
    assert out.stdout.strip() == "[]", out.stdout[:300] + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("env, message", [
    ({"U2NET_MAX_BATCH": "lots"}, "error: U2NET_MAX_BATCH must be an integer, got 'lots'"),
    ({"U2NET_ENGINE": "tensorrt"}, "error: U2NET_ENGINE must be one of auto, torch, onnxruntime"),
    ({"GUNICORN_THREADS": "-1"}, "error: GUNICORN_THREADS must be between 0 and 1024"),
])
def test_bad_settings_stop_every_entry_point_with_one_line_and_exit_2(env, message, tmp_path):
    """gunicorn (its master reads the settings before any worker boots), `python API.py` and
    `bgremove` print one line naming the variable, no traceback, and exit 2."""
    import os
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    commands = [[str(bin_dir / "gunicorn"), "-c", "gunicorn_conf.py"], [sys.executable, "API.py"],
                [str(bin_dir / "bgremove"), "models"]]
    for command in commands:
        out = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PORT": "5999", **env}, check=False)
        assert out.returncode == 2, (command, out.returncode, out.stderr[-2000:])
        assert message in out.stderr and "Traceback" not in out.stderr, (command, out.stderr[-2000:])
