"""The Python API (bgservice.library): every input kind, the same cut-out as the service's
pipeline, options checked with the service's messages, one lazy session per model."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from conftest import photo
from PIL import Image

import bgservice
from bgservice import library
from bgservice.errors import BadRequest, NotAnImage
from bgservice.imageio import DecodedImage
from bgservice.options import OutputOptions, compose_output

pytestmark = pytest.mark.slow  # loads two sessions (a few seconds each)


@pytest.fixture(scope="module")
def session(random_weights):
    with bgservice.new_session("u2netp", weights=random_weights, device="cpu") as s:
        yield s


def test_a_session_is_ready_without_synthetic_warm_up_passes(session):
    """A job (a session, a `bgremove` command) skips them: its first image warms the model."""
    runtime = session._service.runtime
    assert runtime.ready and runtime.options.warmup_runs == 0


def reference(session, rgb, **options) -> np.ndarray:
    remover = session._service.remover
    image = DecodedImage(rgb, None, "array", "RGB")
    mask = remover.mask(image, remover.runtime)
    return compose_output(image, mask, OutputOptions(**options), refine=remover.refine)[0]


def test_each_input_kind_gives_the_same_kind_back(session, tmp_path):
    rgb = photo(96, 64, seed=3)
    want = reference(session, rgb, mode="refine")
    got = session.remove(rgb)
    assert isinstance(got, np.ndarray) and got.shape == (64, 96, 4)
    np.testing.assert_array_equal(got, want)
    pil = session.remove(Image.fromarray(rgb))
    assert isinstance(pil, Image.Image) and pil.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(pil), want)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    data = session.remove(buf.getvalue())
    assert isinstance(data, bytes) and data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), want)
    path = tmp_path / "in.png"
    path.write_bytes(buf.getvalue())
    np.testing.assert_array_equal(np.asarray(session.remove(str(path))), want)
    np.testing.assert_array_equal(session.remove(path, output="array"), want)
    assert session.remove(path, output="bytes", format="jpg").startswith(b"\xff\xd8")


def test_options_are_the_services_with_its_messages(session):
    rgb = photo(96, 64, seed=4)
    np.testing.assert_array_equal(session.remove(rgb, threshold=200),
                                  reference(session, rgb, mode="threshold", threshold=200))
    on_red = session.remove(rgb, mode="soft", bg_color=(255, 0, 0))
    assert on_red.shape == (64, 96, 3)
    np.testing.assert_array_equal(on_red, session.remove(rgb, mode="soft", bg_color="red"))
    assert session.remove(rgb, only_mask=True).shape == (64, 96)
    see_through = session.remove(rgb, mode="soft", bg_color=(255, 0, 0, 128))
    assert see_through.shape == (64, 96, 4)
    np.testing.assert_array_equal(see_through, session.remove(rgb, mode="soft",
                                                              bg_color="#ff000080"))
    with pytest.raises(BadRequest, match="'threshold' must be an integer from 0 to 255"):
        session.remove(rgb, threshold=300)
    with pytest.raises(BadRequest, match="unknown option"):
        session.remove(rgb, treshold=200)
    with pytest.raises(NotAnImage, match="image array must be uint8"):
        session.remove(rgb.astype(np.float32))
    with pytest.raises(TypeError, match="takes a path, bytes"):
        session.remove(12)


def test_remove_makes_one_session_per_model_however_many_threads_ask(session, monkeypatch):
    made = []

    def slow_new_session(model):  # as loading takes seconds: every thread arrives meanwhile
        made.append(model)
        time.sleep(0.5)
        return session

    monkeypatch.setattr(library, "new_session", slow_new_session)
    monkeypatch.setattr(library, "_sessions", {})
    rgb = photo(64, 48, seed=5)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(bgservice.remove(rgb)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert made == [None] and len(results) == 4
    np.testing.assert_array_equal(results[0], session.remove(rgb))
    bgservice.remove(rgb, model="u2netp")
    assert made == [None, "u2netp"]  # another model: another session
