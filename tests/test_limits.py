"""What one worker takes on at once: cheap refusals when the network is saturated, and a memory
budget that decompression bombs (a small file that decodes to a huge image) cannot break."""
from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import pytest
from conftest import photo, save_image
from helpers import bomb_burst, bomb_png, worker_pids

from bgservice.errors import TooLarge, Unavailable
from bgservice.limits import Admission, MemoryBudget
from bgservice.options import OutputOptions
from bgservice.pipeline import BYTES_PER_PIXEL, memory_needed

MB = 1 << 20


def test_admission_refuses_beyond_its_limit_and_counts_releases_once():
    admission = Admission(2)
    with admission.ticket() as first, admission.ticket():
        with pytest.raises(Unavailable, match="busy") as refused, admission.ticket():
            pass
        assert refused.value.retry_after == 2
        first.release()
        first.release()  # idempotent: the mask is back, and then the request ends
        assert admission.admitted == 1
        with admission.ticket():
            assert admission.admitted == 2
    assert admission.admitted == 0


def test_memory_budget_413_for_what_never_fits_503_after_the_wait_and_wakes_waiters():
    budget = MemoryBudget(100 * MB, wait_s=0.2)
    with pytest.raises(TooLarge, match="needs about 101 MB .* budget of 100 MB"), \
            budget.reserve(101 * MB):
        pass
    with budget.reserve(60 * MB):
        started = time.monotonic()
        with pytest.raises(Unavailable) as busy, budget.reserve(50 * MB):
            pass
        assert 0.15 < time.monotonic() - started < 2 and busy.value.retry_after == 5
        with budget.reserve(40 * MB):  # fits beside it
            assert budget.used == 100 * MB
    got_in = threading.Event()
    budget.wait_s = 5
    hold = budget.reserve(80 * MB)
    hold.__enter__()

    def waiter():
        with budget.reserve(50 * MB):
            got_in.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not got_in.wait(0.2)  # waiting for memory ...
    hold.__exit__(None, None, None)
    assert got_in.wait(2)  # ... and let in as soon as it is free
    thread.join()
    assert budget.used == 0 and budget.peak == 100 * MB


def test_the_estimate_follows_the_mode_and_the_source():
    pixels = 4_000_000
    refine = OutputOptions(mode="refine")
    assert memory_needed(pixels, refine, 1000) == pixels * BYTES_PER_PIXEL["refine"] + 1000
    assert memory_needed(pixels, OutputOptions(mode="threshold", threshold=200), 0) < \
        memory_needed(pixels, OutputOptions(mode="refine"), 0)
    assert memory_needed(pixels, OutputOptions(mode="soft", bg_color=(1, 2, 3)), 0) > \
        memory_needed(pixels, OutputOptions(mode="soft"), 0)
    website = OutputOptions(mode="threshold", threshold=200)  # with refined edges: refine's work
    assert memory_needed(pixels, website, 0, "refined") == memory_needed(pixels, refine, 0)


def test_a_saturated_worker_refuses_before_reading_the_source(app, client, sandbox, monkeypatch):
    """With every admission slot taken, a request is refused without touching the file (it
    costs JSON parsing only), and is served again once a slot frees."""
    save_image(sandbox["root"] / "Clones" / "4" / "in.png", photo())
    state = app.extensions["u2net"]
    reads = []
    real_read = type(state.root).read_source
    monkeypatch.setattr(type(state.root), "read_source",
                        lambda self, *a: reads.append(a) or real_read(self, *a))
    job = {"sourceImagePath": "/Clones/4/in.png", "outputImagePath": "/Clones/4/out.png",
           "threshold": 200}
    admission = state.remover.admission
    with ExitStack() as stack:
        for _ in range(admission.limit):
            stack.enter_context(admission.ticket())
        r = client.post("/remove-background", json=job)
        assert r.status_code == 503 and r.headers["Retry-After"] == "2" and "busy" in r.get_json()["error"]
        upload = client.post("/api/remove", data=(sandbox["root"] / "Clones/4/in.png").read_bytes())
        assert upload.status_code == 503
        assert reads == []
    assert client.post("/remove-background", json=job).status_code == 200
    assert len(reads) == 1 and admission.admitted == 0


def test_an_image_beyond_the_budget_is_413_before_decoding(settings, runtime, sandbox):
    import API

    app = API.create_app(settings.with_(memory_budget_bytes=64 * MB), runtime=runtime)
    data = bomb_png(3000, 2000)  # 6 MP: threshold needs ~108 MB
    (sandbox["root"] / "bomb.png").write_bytes(data)
    r = app.test_client().post("/remove-background", json={
        "sourceImagePath": "/bomb.png", "outputImagePath": "/out.png", "threshold": 200})
    assert r.status_code == 413 and "memory budget of 64 MB" in r.get_json()["error"], r.get_json()
    assert not (sandbox["root"] / "out.png").exists()


@pytest.mark.slow
def test_a_burst_of_bombs_keeps_the_worker_within_its_budget(sandbox, random_weights):
    """The production server with a 600 MB budget; uploads and batch jobs of a 13 KB PNG that
    decodes to 20 MP, eight at once. Without the budget they would need ~3 GB together; the
    worker's peak resident memory during the burst stays under what it held before plus the
    budget (and a little for the allocator), and each request still succeeds or gets a clean
    413 / 503."""
    from helpers import start_server, stop, wait_until_ready

    budget_mb = 600  # 128 MB of it set aside for Pillow's block cache
    data = bomb_png(6000, 3400)
    assert len(data) < 100_000
    for i in range(4):
        (sandbox["root"] / f"bomb{i}.png").write_bytes(data)
    proc, port = start_server({"OpenClone_OpenCloneFS": str(sandbox["root"]), "U2NET_MODEL": "u2netp",
                               "U2NET_WEIGHTS": str(random_weights),
                               "U2NET_MEMORY_BUDGET_MB": str(budget_mb), "U2NET_MEMORY_WAIT_S": "120"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, base)
        (worker,) = worker_pids(proc.pid)
        time.sleep(0.5)
        statuses, before, peak = bomb_burst(
            base, worker, data, ["threshold", "soft", "threshold", "refine"],
            [f"/bomb{i}.png" for i in range(4)])
    finally:
        print(stop(proc)[-3000:])
    grown_mb = (peak - before) / 1024
    print(f"idle {before / 1024:.0f} MB, peak {peak / 1024:.0f} MB, grown {grown_mb:.0f} MB")
    assert grown_mb < budget_mb + 80, f"peak {peak / 1024:.0f} MB, {grown_mb:.0f} MB over the idle worker"
    # refine at 20 MP needs ~690 MB: more than the whole budget, so 413; the rest are served.
    assert statuses == [200, 200, 200, 413, 200, 200, 200, 200], statuses


