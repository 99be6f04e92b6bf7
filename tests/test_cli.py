"""The command line, run for real: files, folders, stdin/stdout, exit codes, progress."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import photo, save_image
from PIL import Image

import Image_PostProcesser as post

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(random_weights, tmp_path):
    env = {**os.environ, "U2NET_MODEL": "u2netp", "U2NET_WEIGHTS": str(random_weights),
           "U2NET_DEVICE": "cpu", "U2NET_CACHE_DIR": str(random_weights.parent / "onnx-cache"),
           "LOG_LEVEL": "WARNING"}

    def run(*args, stdin: bytes | None = None, **env_changes):
        return subprocess.run([sys.executable, "-m", "bgservice", *map(str, args)],
                              env={**env, **env_changes}, cwd=tmp_path, input=stdin,
                              capture_output=True, timeout=300)

    return run


def test_one_file_next_to_its_input(cli, tmp_path):
    src = save_image(tmp_path / "portrait.jpg", photo(90, 70))
    done = cli("remove", src)
    assert done.returncode == 0, done.stderr.decode()
    out = Image.open(tmp_path / "portrait-nobg.png")
    assert out.mode == "RGBA" and out.size == (90, 70)
    # one file: no progress bar, one line that says where the cut-out went
    assert done.stderr.decode() == f"wrote {tmp_path / 'portrait-nobg.png'}\n"
    # --quiet at the default log level: nothing at all (not the runtime's "loaded" lines)
    quiet = cli("remove", src, "--overwrite", "--quiet", LOG_LEVEL="INFO")
    assert quiet.returncode == 0 and quiet.stderr == b"", quiet.stderr.decode()
    assert "loaded u2netp" in cli("remove", src, "--overwrite", LOG_LEVEL="INFO").stderr.decode()


def test_a_folder_recursively_keeping_the_tree_with_progress_and_skips(cli, tmp_path):
    for rel in ("a.jpg", "sub/b.png", "sub/deeper/c.jpg"):
        save_image(tmp_path / "in" / rel, photo(60, 40, seed=len(rel)))
    (tmp_path / "in" / "notes.txt").write_text("not an image, ignored")
    done = cli("remove", tmp_path / "in", "-o", tmp_path / "out", "--mode", "soft", "--jobs", "1")
    assert done.returncode == 0, done.stderr.decode()
    one_at_a_time = {}
    for rel in ("a.png", "sub/b.png", "sub/deeper/c.png"):
        assert Image.open(tmp_path / "out" / rel).mode == "RGBA"
        one_at_a_time[rel] = np.asarray(Image.open(tmp_path / "out" / rel), np.int16)
    err = done.stderr.decode()
    assert "100%" in err and "3/3" in err and "3 done, 0 failed, 0 skipped" in err
    # everything is there: done without loading the model (weights that do not exist prove it)
    again = cli("remove", tmp_path / "in", "-o", tmp_path / "out",
                U2NET_WEIGHTS=str(tmp_path / "absent.pth"))
    assert again.returncode == 0 and "0 done, 0 failed, 3 skipped" in again.stderr.decode()
    # three at a time, with a server's small queue in the environment: none refused as busy
    forced = cli("remove", tmp_path / "in", "-o", tmp_path / "out", "--overwrite", "--mode", "soft",
                 "--jobs", "3", U2NET_MAX_QUEUE="1")
    assert "3 done, 0 failed" in forced.stderr.decode(), forced.stderr.decode()
    for rel, before in one_at_a_time.items():  # three at a time: the same cut-outs
        after = np.asarray(Image.open(tmp_path / "out" / rel), np.int16)
        assert np.abs(after - before).max() <= 1, rel


def test_several_inputs_and_an_output_that_names_a_file_exit_2(cli, tmp_path):
    a, b = save_image(tmp_path / "a.jpg", photo(30, 20)), save_image(tmp_path / "b.jpg", photo(30, 20))
    done = cli("remove", a, b, "-o", tmp_path / "single.png")
    assert done.returncode == 2
    assert "2 inputs need an output folder, but -o" in done.stderr.decode()
    assert not (tmp_path / "single.png").exists()  # no folder of that name made


def test_a_failed_file_gives_one_line_and_exit_1(cli, tmp_path):
    save_image(tmp_path / "in" / "good.jpg", photo(50, 40))
    (tmp_path / "in" / "broken.png").write_bytes(b"definitely not a png")
    done = cli("remove", tmp_path / "in", "-o", tmp_path / "out")
    assert done.returncode == 1
    errors = [line for line in done.stderr.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0] and "not a decodable image" in errors[0]
    assert (tmp_path / "out" / "good.png").exists() and not (tmp_path / "out" / "broken.png").exists()


def test_stdin_to_stdout_round_trip(cli, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(photo(64, 48)).save(buf, "PNG")
    done = cli("remove", "-", "--only-mask", stdin=buf.getvalue())
    assert done.returncode == 0, done.stderr.decode()
    mask = Image.open(io.BytesIO(done.stdout))
    assert mask.mode == "L" and mask.size == (64, 48)
    filtered = cli("remove", "-", "--only-mask", "--subject-filter", stdin=buf.getvalue())
    assert filtered.returncode == 0, filtered.stderr.decode()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(filtered.stdout))),
                                  post.drop_small_regions(np.asarray(mask)))


def test_options_reach_the_output(cli, tmp_path):
    src = save_image(tmp_path / "p.jpg", photo(80, 60))
    done = cli("remove", src, "-o", tmp_path / "p.webp", "--format", "webp", "--bg-color",
               "#ff0000", "--threshold", "255")
    assert done.returncode == 0, done.stderr.decode()
    out = Image.open(tmp_path / "p.webp")
    assert out.format == "WEBP"
    assert np.asarray(out.convert("RGB")).shape == (60, 80, 3)


@pytest.mark.parametrize("args,message", [
    (["--threshold", "300"], "'threshold' must be an integer from 0 to 255"),
    (["--bg-color", "nope"], "'bg_color' must be"),
    (["--mode", "soft", "--threshold", "3"], "applies to mode 'threshold' only"),
])
def test_bad_options_exit_2(cli, tmp_path, args, message):
    src = save_image(tmp_path / "p.jpg", photo(30, 20))
    done = cli("remove", src, *args)
    assert done.returncode == 2 and message in done.stderr.decode()


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "bgremove")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("download", "models", "remove", "evaluate", "train", "serve"):
        assert command in done.stdout, command


def test_evaluate_compares_models_and_modes_in_one_run(cli, tmp_path, random_weights):
    import csv

    from conftest import shared_path
    from helpers import blurred_disc_scene

    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(2):
        rgb, _, alpha, _ = blurred_disc_scene(96, seed=i)
        Image.fromarray(rgb).save(tmp_path / "data" / "images" / f"disc{i}.png")
        Image.fromarray((alpha * 255).astype(np.uint8)).save(tmp_path / "data" / "masks" / f"disc{i}.png")
    real = shared_path("models", "u2netp", "u2netp.pth")
    done = cli("evaluate", tmp_path / "data", "--mode", "soft", "--mode", "threshold:128",
               "--model", f"u2netp={random_weights}", "--model", f"u2netp={real}",
               "--out", tmp_path / "eval")
    assert done.returncode == 0, done.stderr.decode()
    with open(tmp_path / "eval" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    labels = {r["mode"] for r in rows}
    assert labels == {f"u2netp:{random_weights.stem}/soft", f"u2netp:{random_weights.stem}/threshold:128",
                      "u2netp:u2netp/soft", "u2netp:u2netp/threshold:128"}
    assert len(rows) == 8 and all(0 <= float(r["iou"]) <= 1 for r in rows)
    # The real weights find the disc; random weights do not.
    def mean_iou(label):
        return np.mean([float(r["iou"]) for r in rows if r["mode"] == label])

    real_iou = mean_iou("u2netp:u2netp/soft")
    assert real_iou > 0.8 and real_iou > mean_iou(f"u2netp:{random_weights.stem}/soft") + 0.2
    assert (tmp_path / "eval" / "contact_sheet.png").exists()
    assert "median" in done.stdout.decode()


def test_evaluate_on_the_portraits_layout_scores_composites_by_default(cli, tmp_path, random_weights):
    import csv

    from helpers import blurred_disc_scene

    for sub in ("images", "alphas"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(2):
        _, _, alpha, fg = blurred_disc_scene(64, seed=i)
        Image.fromarray((fg * 255).astype(np.uint8)).save(tmp_path / "data" / "images" / f"p{i}.png")
        Image.fromarray((alpha * 255).astype(np.uint8)).save(tmp_path / "data" / "alphas" / f"p{i}.png")
    done = cli("evaluate", tmp_path / "data", "--mode", "soft", "--model", f"u2netp={random_weights}",
               "--limit", "1", "--out", tmp_path / "eval")
    assert done.returncode == 0, done.stderr.decode()
    with open(tmp_path / "eval" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["image"], r["background"]) for r in rows] == [
        ("p0", "green"), ("p0", "blue"), ("p0", "scene-a"), ("p0", "scene-b")]
    assert "composite_edge" in done.stdout.decode() and (tmp_path / "eval" / "worst_edges.png").exists()


@pytest.fixture
def watch(random_weights, tmp_path):
    """`bgremove watch` started in the background; returns the process."""
    env = {**os.environ, "U2NET_MODEL": "u2netp", "U2NET_WEIGHTS": str(random_weights),
           "U2NET_DEVICE": "cpu", "U2NET_CACHE_DIR": str(random_weights.parent / "onnx-cache"),
           "LOG_LEVEL": "WARNING", "U2NET_PRECISION": "fp32"}
    started = []

    def start(*args, **env_changes):
        proc = subprocess.Popen([sys.executable, "-m", "bgservice", "watch", *map(str, args)],
                                env={**env, **env_changes}, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_watch_cuts_out_images_as_they_appear_even_one_copied_in_slowly(watch, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    proc = watch(inbox, out, "--interval", "0.2", "--idle-exit", "3", "--mode", "soft")
    time.sleep(0.5)
    save_image(inbox / "a.png", photo(80, 60, seed=1))
    save_image(inbox / "sub" / "b.jpg", photo(64, 48, seed=2))
    (inbox / "notes.txt").write_text("not an image: ignored")
    slow = io.BytesIO()
    Image.fromarray(photo(72, 54, seed=3)).save(slow, "PNG")
    with open(inbox / "c.png", "wb") as f:  # copied in over a second: never read half-written
        for start in range(0, len(slow.getvalue()), len(slow.getvalue()) // 10 + 1):
            f.write(slow.getvalue()[start:start + len(slow.getvalue()) // 10 + 1])
            f.flush()
            time.sleep(0.1)
    outputs = [out / "a.png", out / "sub" / "b.png", out / "c.png"]
    assert wait_for(lambda: all(p.exists() for p in outputs)), proc.stderr
    _, err = proc.communicate(timeout=60)  # exits 3 s after the last image
    err = err.decode()
    assert proc.returncode == 0, err
    for path, size in zip(outputs, [(80, 60), (64, 48), (72, 54)], strict=True):
        image = Image.open(path)
        assert image.mode == "RGBA" and image.size == size
    assert "error" not in err and "3 done, 0 failed" in err
    assert f"wrote {out / 'c.png'}" in err
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["a.png", "b.png", "c.png"]


def test_watch_stops_on_sigterm_or_after_max_files_and_loads_no_model_for_nothing(watch, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    idle = watch(inbox, out, "--interval", "0.2", U2NET_WEIGHTS=str(tmp_path / "absent.pth"))
    assert idle.stderr.readline().startswith(b"watching")  # started: its handlers are set
    time.sleep(0.5)
    idle.send_signal(signal.SIGTERM)
    _, err = idle.communicate(timeout=30)
    assert idle.returncode == 0 and "0 done, 0 failed" in err.decode()  # no model was loaded
    for name in ("a.png", "b.png"):
        save_image(inbox / name, photo(40, 30))
    bounded = watch(inbox, out, "--interval", "0.2", "--max-files", "1", "--quiet")
    _, err = bounded.communicate(timeout=120)
    assert bounded.returncode == 0 and err.decode() == ""
    assert len(list(out.glob("*.png"))) == 1
    inside = watch(inbox, inbox / "cutouts")
    _, err = inside.communicate(timeout=30)
    assert inside.returncode == 2 and "is inside" in err.decode()


def test_watch_reports_a_bad_image_once_and_retries_it_when_it_changes(watch, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    (inbox / "bad.png").write_bytes(b"not an image")
    proc = watch(inbox, out, "--interval", "0.2")
    lines: list[str] = []

    def read_stderr():
        for line in iter(proc.stderr.readline, b""):
            lines.append(line.decode())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    # The first image loads the model (seconds) before it is read: wait for its error line.
    assert wait_for(lambda: any("is not a decodable image" in line for line in lines)), lines
    assert lines[0].startswith("watching")
    time.sleep(2.0)  # ten more scans: still one error line, not ten
    save_image(inbox / "bad.png", photo(40, 30))
    assert wait_for(lambda: (out / "bad.png").exists())
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    reader.join(timeout=30)
    err = "".join(lines)
    assert err.count("is not a decodable image") == 1, err
    assert "1 done, 1 failed" in err and proc.returncode == 1
