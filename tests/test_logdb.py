"""OpenClone's log database (bgservice/logdb.py) against a real PostgreSQL server the suite starts."""
from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import make_settings, photo, save_image
from pgserver import PostgresServer

import API
import GlobalVariables
from bgservice.logdb import APPLICATION, DatabaseLogHandler, LogDbConfig
from bgservice.logs import RequestIdFilter, request_id
from GlobalVariables import Settings, SettingsError

pytestmark = pytest.mark.slow  # a PostgreSQL cluster per module (a few seconds)

@pytest.fixture(scope="module")
def pg():
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture
def config(pg) -> LogDbConfig:
    config = LogDbConfig.from_env(pg.env())
    assert config is not None
    return config


def record(name: str = "u2net_service.api", message: str = "hello", level: int = logging.INFO):
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def handler_for(config, **kwargs) -> DatabaseLogHandler:
    handler = DatabaseLogHandler(config, retry_max_s=0.5, **kwargs)
    handler.addFilter(RequestIdFilter())
    return handler


def rows(pg, run_number: int) -> list[tuple]:
    return pg.sql("SELECT run_number, application_name, open_clone_log, timestamp, message, tags, "
                  "level, machine_name, ip_address FROM log WHERE run_number = %s "
                  "AND machine_name = %s ORDER BY log_id", (run_number, socket.gethostname()))


def test_settings_take_openclones_variables_and_name_what_is_wrong(pg):
    assert Settings.from_env({}).log_db is None
    settings = Settings.from_env(pg.env())
    assert settings.log_db == LogDbConfig("127.0.0.1", pg.port, "openclone_logs", "openclone",
                                          "log-secret")
    assert "log-secret" not in repr(settings)
    with pytest.raises(SettingsError, match="OpenClone_DB_Port"):
        Settings.from_env({**pg.env(), "OpenClone_DB_Port": "70000"})
    with pytest.raises(SettingsError, match="OpenClone_LogDB_Name and OpenClone_LogDB_User"):
        Settings.from_env({"OpenClone_DB_Host": "db"})


def test_rows_arrive_with_logweavers_columns(pg, config):
    handler = handler_for(config)
    token = request_id.set("req-42")
    try:
        handler.handle(record(message="cut out /in.png"))
    finally:
        request_id.reset(token)
    handler.handle(record("werkzeug", "a library's line", logging.WARNING))
    assert handler.wait_written(10)
    run = handler.run_number
    handler.close()
    (ours, theirs) = rows(pg, run)
    assert ours[:3] == (run, APPLICATION, True) and theirs[:3] == (run, "U-2-Net", False)
    assert abs(ours[3] - datetime.now(UTC)) < timedelta(minutes=1) and ours[3].tzinfo is not None
    assert ours[4:7] == ("cut out /in.png", "u2net_service.api request_id=req-42", "INFO")
    assert theirs[4:7] == ("a library's line", "werkzeug", "WARNING")
    assert ours[7] == socket.gethostname() and ours[8]


def test_the_run_number_grows_with_each_process_start(pg, config):
    numbers = []
    for _ in range(2):
        handler = handler_for(config)
        handler.handle(record())
        assert handler.wait_written(10)
        numbers.append(handler.run_number)
        handler.close()
    assert numbers[1] == numbers[0] + 1


def test_a_database_stopped_and_restarted_loses_nothing_within_the_buffer(pg, config, capfd):
    handler = handler_for(config)
    for i in range(20):
        handler.handle(record(message=f"before {i}"))
    assert handler.wait_written(10)
    pg.stop()
    try:
        started = time.perf_counter()
        for i in range(30):
            handler.handle(record(message=f"while down {i}"))
        down_s = time.perf_counter() - started
        time.sleep(1.0)  # the writer fails and backs off meanwhile
    finally:
        pg.start()
    assert handler.wait_written(30)
    messages = [row[4] for row in rows(pg, handler.run_number)]
    handler.close()
    assert messages == [f"before {i}" for i in range(20)] + [f"while down {i}" for i in range(30)]
    assert down_s < 0.05, down_s  # logging never waited for the database
    assert "log database unavailable" in capfd.readouterr().err


def test_records_beyond_the_buffer_are_counted_and_reported(pg, config, capfd):
    handler = handler_for(config, capacity=10, batch=5)
    handler.handle(record(message="first"))
    assert handler.wait_written(10)
    pg.stop()
    try:
        for i in range(40):
            handler.handle(record(message=f"burst {i}"))
    finally:
        pg.start()
    assert handler.wait_written(30)
    written = len(rows(pg, handler.run_number))
    handler.close()
    assert handler.dropped >= 40 - 15 and written == 1 + 40 - handler.dropped
    assert f"{handler.dropped} records were dropped" in capfd.readouterr().err


def test_a_slow_database_does_not_slow_logging(pg, config):
    """A table lock held elsewhere makes every insert wait; logging does not."""
    import psycopg

    handler = handler_for(config)
    handler.handle(record(message="warm"))
    assert handler.wait_written(10)
    with psycopg.connect(**config.connect_kwargs()) as blocker:
        blocker.execute("LOCK TABLE log IN ACCESS EXCLUSIVE MODE")
        started = time.perf_counter()
        for i in range(50):
            handler.handle(record(message=f"slow {i}"))
        assert time.perf_counter() - started < 0.05
        assert not handler.wait_written(0.5)  # the writer is stuck behind the lock
        blocker.rollback()
    assert handler.wait_written(10)
    assert len(rows(pg, handler.run_number)) == 51
    handler.close()


def test_close_writes_what_is_queued(pg, config):
    handler = handler_for(config)
    for i in range(200):
        handler.handle(record(message=f"late {i}"))
    handler.close()  # no flush first: close must write them
    assert len(rows(pg, handler.run_number)) == 200


def test_a_requests_lines_reach_the_database_with_its_id(pg, config, sandbox, random_weights,
                                                          runtime):
    settings = make_settings(sandbox["root"], random_weights).with_(log_db=config)
    app = API.create_app(settings, runtime)
    save_image(sandbox["root"] / "in.png", photo(64, 48))
    try:
        reply = app.test_client().post("/remove-background", json={
            "sourceImagePath": "/in.png", "outputImagePath": "/out.png", "threshold": 200},
            headers={"X-Request-ID": "website-77"})
        assert reply.status_code == 200
        handler = GlobalVariables._log_database
        assert handler is not None
        run = handler.run_number
    finally:
        GlobalVariables.close_log_database()
    tagged = [row for row in rows(pg, run) if row[5].endswith("request_id=website-77")]
    assert tagged and all(row[1:3] == (APPLICATION, True) for row in tagged)
    assert any("POST /remove-background -> 200" in row[4] for row in tagged)


def test_sigterm_finishes_the_requests_in_flight_and_writes_their_log_lines(pg, sandbox,
                                                                           random_weights):
    """The clean drain, through gunicorn with OpenClone's variables: SIGTERM with four 8 MP
    refine requests in flight (one worker, batch 1: most still queued). Every one completes with
    a whole PNG, a request sent after the signal is not served (503 'draining' if the worker
    reads it before gunicorn stops accepting; else refused, or left unanswered until the worker
    exits), the server exits 0, and each request's lines, queued or not at the signal, are in the
    table (the worker_exit hook writes the queue)."""
    import os
    import signal
    import threading

    import requests
    from helpers import start_server, stop, wait_until_ready
    from PIL import Image

    count = 4
    for i in range(count):
        save_image(sandbox["root"] / f"big{i}.jpg", photo(3264, 2448, seed=i), quality=90)
    proc, port = start_server({"OpenClone_OpenCloneFS": str(sandbox["root"]),
                               "U2NET_MODEL": "u2netp", "U2NET_WEIGHTS": str(random_weights),
                               **pg.env()})
    base = f"http://127.0.0.1:{port}"
    replies: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            replies[i] = requests.post(f"{base}/remove-background", json={
                "sourceImagePath": f"/big{i}.jpg", "outputImagePath": f"/out/big{i}.png",
                "mode": "refine"}, headers={"X-Request-ID": f"drain-{i}"}, timeout=120)
        except requests.RequestException as exc:
            replies[i] = exc

    try:
        wait_until_ready(proc, base)
        threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # all accepted: running or queued
        signalled = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)  # as Docker and Kubernetes stop a container
        time.sleep(0.2)
        try:
            late = requests.get(f"{base}/ready", timeout=3).status_code
        except requests.RequestException as exc:
            late = type(exc).__name__
        for t in threads:
            t.join(120)
        proc.wait(90)
        drained_s = time.monotonic() - signalled
    finally:
        log = stop(proc)
    assert late != 200, late
    assert proc.returncode == 0, log
    for i in range(count):
        reply = replies[i]
        assert isinstance(reply, requests.Response) and reply.status_code == 200, (reply, log)
        with Image.open(sandbox["root"] / "out" / f"big{i}.png") as out:
            assert out.size == (3264, 2448) and out.mode == "RGBA"
            out.load()  # the whole file decodes
    found = pg.sql("SELECT tags FROM log WHERE tags LIKE %s", ("%request_id=drain-%",))
    assert {tags.rsplit("=", 1)[1] for (tags,) in found} == {f"drain-{i}" for i in range(count)}
    assert "log database" not in log  # no outage, nothing dropped
    print(f"drained {count} requests in flight in {drained_s:.1f} s after SIGTERM; "
          f"a late /ready: {late}")
