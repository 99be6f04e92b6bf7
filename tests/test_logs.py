"""Request ids (X-Request-ID) on responses and on every log line; LOG_FORMAT=json."""
from __future__ import annotations

import json
import logging
import re

import pytest
from conftest import photo, save_image
from helpers import u2netp_server

from bgservice.logs import JsonFormatter, RequestIdFilter, incoming_or_new, request_id


def test_a_sane_incoming_id_is_kept_and_anything_else_replaced():
    assert incoming_or_new("req-42.a_b:c") == "req-42.a_b:c"
    for bad in (None, "", "has space", "x" * 129, "line\nbreak", "é"):
        new = incoming_or_new(bad)
        assert re.fullmatch(r"[0-9a-f]{32}", new), bad


def test_every_response_carries_the_request_id(client):
    given = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    assert client.get("/health").headers["X-Request-ID"] != made.headers["X-Request-ID"]
    refused = client.post("/remove-background", data="x", headers={"X-Request-ID": "r-415"})
    assert refused.status_code == 415 and refused.headers["X-Request-ID"] == "r-415"


def test_a_requests_log_lines_carry_its_id(client, sandbox, caplog):
    save_image(sandbox["root"] / "in.png", photo(60, 40))
    with caplog.at_level(logging.INFO):
        client.post("/remove-background", headers={"X-Request-ID": "website-7"},
                    json={"sourceImagePath": "/in.png", "outputImagePath": "/out.png"})
    line = next(r for r in caplog.records if "POST /remove-background -> 200" in r.getMessage())
    assert line.request_id == "website-7"
    assert request_id.get() is None  # forgotten once the request is over


def test_batch_jobs_log_with_their_requests_id(client, sandbox, caplog, monkeypatch):
    """A job runs in another thread; what it logs still names the request."""
    state = client.application.extensions["u2net"]

    def broken(root, job):
        raise RuntimeError("a bug in one job")

    monkeypatch.setattr(state.remover, "remove_paths", broken)
    reply = client.post("/remove-background/batch", headers={"X-Request-ID": "batch-9"},
                        json={"jobs": [{"sourceImagePath": "/a.png", "outputImagePath": "/b.png"}]})
    assert reply.json["jobs"][0]["status"] == 500
    failed = next(r for r in caplog.records if "batch job 0 failed" in r.getMessage())
    assert failed.request_id == "batch-9"


def test_the_json_format_is_one_object_per_line():
    logger = logging.getLogger("u2net-test-json")
    record = logger.makeRecord("u2net-test-json", logging.ERROR, __file__, 1, "cut %s", ("out",),
                               None)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    token = request_id.set("r-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "cut out" and entry["level"] == "ERROR"
    assert entry["request_id"] == "r-1" and entry["logger"] == "u2net-test-json"
    assert "ValueError: boom" in entry["exception"] and entry["time"].endswith("+00:00")


@pytest.mark.slow
def test_log_format_json_makes_every_line_of_the_production_server_json(sandbox, random_weights):
    """gunicorn's own lines (start, workers, access) and the app's, all JSON objects; the request's
    lines carry its id."""
    import requests

    with u2netp_server(sandbox["root"], random_weights, LOG_FORMAT="json") as (base, output):
        save_image(sandbox["root"] / "in.png", photo(80, 60))
        reply = requests.post(f"{base}/remove-background", headers={"X-Request-ID": "site-1"},
                              json={"sourceImagePath": "/in.png", "outputImagePath": "/o.png"},
                              timeout=60)
        assert reply.status_code == 200 and reply.headers["X-Request-ID"] == "site-1"
    log = output[0]
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert any(e["logger"] == "gunicorn.error" for e in entries)  # gunicorn's own, as JSON
    tagged = [e for e in entries if e.get("request_id") == "site-1"]
    assert any("POST /remove-background -> 200" in e["message"] for e in tagged)
    access = [e for e in entries if e["logger"] == "gunicorn.access"]
    assert any(e["message"].endswith(" site-1") for e in access)
