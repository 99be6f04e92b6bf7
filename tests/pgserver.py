"""A throw-away PostgreSQL server for the log-database tests: Debian's `postgresql` package (.ci/run
installs it), a new cluster in a temporary folder, on loopback, with a password user. PostgreSQL
refuses to run as root, and CI runs as root: then the cluster belongs to the `postgres` user the
package creates, and its commands run through `runuser`."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import free_port

USER, PASSWORD, DATABASE = "openclone", "log-secret", "openclone_logs"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        message = "PostgreSQL missing: apt-get install postgresql (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self):
        self.bin = _bin_dir()
        self.folder = Path(tempfile.mkdtemp(prefix="u2net-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:  # the cluster's files belong to postgres, which must reach them
            os.chmod(self.folder, 0o755)
            shutil.chown(self.folder, "postgres", "postgres")
        password_file = self.folder / "password"
        password_file.write_text(PASSWORD)
        if self.as_root:
            shutil.chown(password_file, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256",
                  f"--pwfile={password_file}", "-E", "UTF8", "--no-sync")
        self.start()
        self.sql(f"CREATE DATABASE {DATABASE}", database="postgres")

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / program), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and done.returncode:
            raise RuntimeError(f"{program} failed: {done.stdout}{done.stderr}")
        return done

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.folder / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def env(self) -> dict[str, str]:
        """The variables OpenClone's deployment passes."""
        return {"OpenClone_DB_Host": "127.0.0.1", "OpenClone_DB_Port": str(self.port),
                "OpenClone_LogDB_Name": DATABASE, "OpenClone_LogDB_User": USER,
                "OpenClone_LogDB_Password": PASSWORD}

    def sql(self, statement: str, params=(), database: str = DATABASE) -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD,
                             dbname=database, autocommit=True) as connection:
            cursor = connection.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
