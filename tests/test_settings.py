"""Settings come from the environment once, with clear errors for bad values."""
from __future__ import annotations

from pathlib import Path

import pytest

from GlobalVariables import PROJECT_ROOT, Settings, SettingsError


def test_defaults():
    s = Settings.from_env({})
    assert s.port == 5002 and s.model == "u2net_human_seg" and s.default_mode == "refine"
    assert s.fs_root == PROJECT_ROOT / "OpenCloneFS" and not s.fs_root_from_env
    assert s.models_dir == PROJECT_ROOT / "saved_models" and s.weights is None


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
])
def test_bad_values_are_named(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("env, threads", [
    ({}, 8),                                           # CPU default: max batch 1
    ({"U2NET_MAX_BATCH": "8"}, 16),                    # the compose file (GPU)
    ({"U2NET_MAX_BATCH": "32"}, 64),                   # the GPU benchmark
    ({"U2NET_MAX_BATCH": "32", "GUNICORN_THREADS": "12"}, 12),  # an explicit choice wins
    ({"U2NET_MAX_BATCH": "lots"}, 8),                  # the worker's settings reject it
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
