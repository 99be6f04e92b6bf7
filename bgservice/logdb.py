"""OpenClone's log database: log records also go to its PostgreSQL table `log`, as LogWeaver
writes them, so OpenClone's log viewer (which filters on application_name = 'U-2-Net') shows
this service's lines beside the others'.

On only when OpenClone_DB_Host is set (with OpenClone_DB_Port, OpenClone_LogDB_Name,
OpenClone_LogDB_User, OpenClone_LogDB_Password: the variables OpenClone's deployment passes).
A request never waits for the database and never fails because of it: `emit` puts the row on a
bounded queue and returns; one writer thread inserts them in batches. While the database is
down or slow the rows wait in the queue (at most `capacity`), the writer reconnects with
back-off, and what did not fit is counted and reported on stderr once it is written again.
`close` (at exit, and by gunicorn's worker_exit hook) writes what is left, within a timeout.

Columns (LogWeaver's): log_id (serial), run_number (per process start: one more than the largest
stored for this application and machine), application_name, open_clone_log (true for this
service's own records, false for its libraries'), timestamp (with time zone), message, tags
(the logger's name and the request's id), level (INFO, ...), machine_name, ip_address.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

APPLICATION = "U-2-Net"
# Loggers whose records are this service's own (open_clone_log = true).
OWN_LOGGERS = ("u2net", "u2net_service", "bgservice", "API", "GlobalVariables", "webapp",
               "Image_PostProcesser")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS log (
    log_id serial PRIMARY KEY,
    run_number integer NOT NULL,
    application_name text NOT NULL,
    open_clone_log boolean NOT NULL,
    "timestamp" timestamp with time zone NOT NULL,
    message text NOT NULL,
    tags text,
    level text NOT NULL,
    machine_name text,
    ip_address text
)"""
NEXT_RUN = ("SELECT COALESCE(MAX(run_number), 0) + 1 FROM log "
            "WHERE application_name = %s AND machine_name = %s")
INSERT = ('INSERT INTO log (run_number, application_name, open_clone_log, "timestamp", message, '
          "tags, level, machine_name, ip_address) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")

log = logging.getLogger(__name__)


class LogDbSettingsError(ValueError):
    pass


@dataclass(frozen=True)
class LogDbConfig:
    """Where OpenClone's log database is (from OpenClone_DB_Host and its companions)."""

    host: str
    port: int
    dbname: str
    user: str
    password: str = field(default="", repr=False)  # never in logs

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LogDbConfig | None:
        """None when OpenClone_DB_Host is unset (no database logging); else every companion
        checked, with a message naming the variable that is wrong."""
        host = env.get("OpenClone_DB_Host", "").strip()
        if not host:
            return None
        port_text = env.get("OpenClone_DB_Port", "").strip() or "5432"
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise LogDbSettingsError(f"OpenClone_DB_Port must be a port number (1-65535), got "
                                     f"{port_text!r}")
        missing = [name for name in ("OpenClone_LogDB_Name", "OpenClone_LogDB_User")
                   if not env.get(name, "").strip()]
        if missing:
            raise LogDbSettingsError(f"OpenClone_DB_Host is set, so {' and '.join(missing)} "
                                     f"{'is' if len(missing) == 1 else 'are'} needed too")
        return cls(host, int(port_text), env["OpenClone_LogDB_Name"].strip(),
                   env["OpenClone_LogDB_User"].strip(), env.get("OpenClone_LogDB_Password", ""))

    def connect_kwargs(self) -> dict:
        return {"host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user,
                "password": self.password, "connect_timeout": 5,
                "application_name": APPLICATION}


def _machine() -> tuple[str, str]:
    """(machine name, IP address) as LogWeaver records them: the host name (a pod's name in
    Kubernetes) and the address it resolves to."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = "127.0.0.1"
    return name, address


Row = tuple  # (open_clone_log, timestamp, message, tags, level)


class DatabaseLogHandler(logging.Handler):
    """A logging handler that writes to OpenClone's log table from a writer thread (see the
    module's description). `connect`: psycopg.connect, or a stand-in in tests."""

    def __init__(self, config: LogDbConfig, *, capacity: int = 10_000, batch: int = 500,
                 connect: Callable | None = None, retry_max_s: float = 30.0):
        super().__init__()
        self.config = config
        self.batch = batch
        self.retry_max_s = retry_max_s
        self._queue: queue.Queue[Row] = queue.Queue(capacity)
        self._connect = connect or _psycopg_connect
        self._connection = None
        self._pending: list[Row] = []  # taken from the queue, not yet committed
        self.run_number: int | None = None  # known after the first connection
        self.machine_name, self.ip_address = _machine()
        self.dropped = 0  # records that found the queue full
        self._dropped_reported = 0
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-db-writer", daemon=True)
        self._thread.start()

    # -- the request's side: never blocks --------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            rid = getattr(record, "request_id", None)
            tags = record.name + (f" request_id={rid}" if rid else "")
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            row = (record.name.split(".")[0] in OWN_LOGGERS,
                   datetime.fromtimestamp(record.created, UTC), message, tags, record.levelname)
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.5
        while not (self._stop.is_set() and self._queue.empty() and not self._pending):
            self._take(timeout=0.2)
            if not self._pending:
                continue
            try:
                self._write_pending()
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - any database error: reconnect later
                self._disconnect()
                if self._stop.is_set():
                    break  # stopping: close() reports what could not be written
                reason = " ".join(str(exc).split())  # psycopg's messages span lines
                _stderr(f"log database unavailable ({type(exc).__name__}: {reason}); "
                        f"{len(self._pending) + self._queue.qsize()} records wait, retrying in "
                        f"{delay:.1f} s")
                self._stop.wait(delay)
                delay = min(self.retry_max_s, delay * 2)

    def _take(self, timeout: float) -> None:
        """Moves up to a batch from the queue into the pending rows (waiting `timeout` for one)."""
        if len(self._pending) >= self.batch:
            return
        try:
            self._pending.append(self._queue.get(timeout=timeout))
        except queue.Empty:
            return
        while len(self._pending) < self.batch:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _write_pending(self) -> None:
        connection = self._connection or self._open()
        fixed = (self.run_number, APPLICATION)
        place = (self.machine_name, self.ip_address)
        rows = [(*fixed, *row, *place) for row in self._pending]
        with connection.cursor() as cursor:
            cursor.executemany(INSERT, rows)
        connection.commit()
        self.written += len(rows)
        self._pending.clear()
        if self.dropped > self._dropped_reported:
            lost = self.dropped - self._dropped_reported
            self._dropped_reported = self.dropped
            _stderr(f"log database: {lost} records were dropped while it was unavailable "
                    f"(the queue holds {self._queue.maxsize})")

    def _open(self):
        connection = self._connect(**self.config.connect_kwargs())
        with connection.cursor() as cursor:
            cursor.execute(CREATE_TABLE)
            if self.run_number is None:  # once per process start, as LogWeaver numbers runs
                cursor.execute(NEXT_RUN, (APPLICATION, self.machine_name))
                self.run_number = int(cursor.fetchone()[0])
        connection.commit()
        self._connection = connection
        return connection

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken
                connection.close()

    # -- stopping --------------------------------------------------------------------------

    def flush(self) -> None:
        self.wait_written()

    def wait_written(self, timeout: float = 5.0) -> bool:
        """Waits up to `timeout` until everything queued so far is written; True if it was."""
        deadline = time.monotonic() + timeout
        while (self._queue.qsize() or self._pending) and time.monotonic() < deadline:
            if not self._thread.is_alive():
                return False
            time.sleep(0.02)
        return not (self._queue.qsize() or self._pending)

    def close(self, timeout: float = 5.0) -> None:
        """Writes what is queued (up to `timeout`), then stops the writer."""
        if not self._stop.is_set():
            self.wait_written(timeout)
            self._stop.set()
            self._thread.join(timeout)
            self._disconnect()
            left = self._queue.qsize() + len(self._pending)
            if left:
                _stderr(f"log database: {left} records could not be written before exit")
        super().close()


def _psycopg_connect(**kwargs):
    import psycopg  # only when the log database is configured

    return psycopg.connect(**kwargs)


def _stderr(text: str) -> None:
    """A note about the log database itself: to stderr only (logging it would queue it for the
    database it is about)."""
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} WARNING [{os.getpid()}] "
          f"bgservice.logdb: {text}", file=sys.stderr, flush=True)
