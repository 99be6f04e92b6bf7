"""The one cut-out pipeline (bgservice.pipeline), without HTTP: stages timed, the admission ticket
given back once the mask is there, memory reserved for exactly the request's lifetime, and the
website's call as dataclasses in and out."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from conftest import photo, save_image
from PIL import Image

from bgservice import pipeline
from bgservice.options import OutputOptions
from bgservice.paths import SharedRoot
from bgservice.pipeline import BackgroundRemover, PathJob, Stopwatch, memory_needed


@pytest.fixture
def remover(runtime) -> BackgroundRemover:
    return BackgroundRemover(runtime, max_image_pixels=10**7, max_source_bytes=1 << 24,
                             request_timeout_s=30, memory_budget_bytes=1 << 28)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_a_stage_entered_twice_adds_up():
    watch = Stopwatch()
    for _ in range(2):
        with watch.stage("decode"):
            time.sleep(0.01)
    assert watch.ms["decode"] >= 19


def test_the_ticket_is_given_back_when_the_mask_is_there_and_memory_when_done(remover, monkeypatch):
    """Compose and encode run outside the admission (they do not load the network's queue), but
    inside the memory reservation, which is exactly what the estimate says."""
    seen = {}
    real_encode = pipeline.encode_output

    def encode(pixels, fmt):
        seen["admitted"] = remover.admission.admitted
        seen["reserved"] = remover.memory.used
        return real_encode(pixels, fmt)

    monkeypatch.setattr("bgservice.pipeline.encode_output", encode)
    data = png(photo(80, 60))
    options = OutputOptions(mode="soft")
    rendered = remover.process(data, options)
    assert (rendered.width, rendered.height) == (80, 60)
    aside = remover.memory.set_aside  # Pillow's block cache, reserved for good
    assert seen == {"admitted": 0, "reserved": aside + memory_needed(80 * 60, options, len(data))}
    assert remover.memory.used == aside and remover.admission.admitted == 0
    assert set(rendered.timings_ms) >= {"decode", "resize", "forward", "upsample", "compose", "encode"}


def test_the_websites_call_in_dataclasses(remover, sandbox):
    save_image(sandbox["root"] / "Clones" / "4" / "in.png", photo(64, 48))
    job = PathJob("/Clones/4/in.png", "/Clones/4/out.png", OutputOptions(mode="threshold", threshold=200))
    result = remover.remove_paths(SharedRoot(sandbox["root"]), job)
    assert result.job is job and (result.width, result.height) == (64, 48)
    assert result.model == "u2netp"
    assert result.bytes == (sandbox["root"] / "Clones" / "4" / "out.png").stat().st_size
    assert set(result.timings_ms) >= {"read", "decode", "forward", "compose", "encode", "write"}


def test_a_failure_gives_the_ticket_and_the_memory_back(remover):
    from bgservice.errors import NotAnImage

    data = png(photo(80, 60))
    with pytest.raises(NotAnImage):
        remover.process(data[:200], OutputOptions(mode="soft"))  # the header, then nothing
    assert remover.memory.used == remover.memory.set_aside and remover.admission.admitted == 0


def test_the_remover_refines_with_its_models_parameters(remover):
    import Image_PostProcesser as post

    assert remover.refine == post.refine_params(remover.runtime.spec.refine)
