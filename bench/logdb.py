"""Request latency with OpenClone's log database up, down and slow, against none, in one run.

    python bench/logdb.py [--requests 40]

Starts a throw-away PostgreSQL cluster (Debian's postgresql package, as the tests do), builds the
app in-process with the real U2NETP weights from ../shared (random ones when absent), and times
the website's request (threshold 200, a 640x480 photo) through Flask's test client, interleaving
four states round by round: no database configured; the database up; stopped; and slow (its
table locked by another connection, so every insert waits). Prints each state's median and 90th
percentile with the ratio to no database. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
sys.path[:0] = [str(PROJECT), str(PROJECT / "tests")]


def build(root: Path):
    """(app without a log database, app with one, the database server), sharing one runtime."""
    import numpy as np
    from pgserver import PostgresServer
    from PIL import Image

    import API
    from bgservice.logdb import LogDbConfig
    from GlobalVariables import Settings

    pg = PostgresServer()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(root / "in.png")
    weights = SHARED / "models" / "u2netp" / "u2netp.pth"
    if not weights.exists():
        import torch
        from u2net.model import U2NETP
        weights = root / "u2netp-random.pth"
        torch.save(U2NETP().state_dict(), weights)
    base = Settings(fs_root=root, model="u2netp", weights=weights, precision="fp32",
                    warmup_runs=1)
    plain = API.create_app(base, warm_up_in_background=False)
    runtimes = list(plain.extensions["u2net"].runtimes)
    with_db = API.create_app(base.with_(log_db=LogDbConfig.from_env(pg.env())), runtimes,
                             warm_up_in_background=False)
    return plain, with_db, pg


class States:
    """Switches between: no database configured, up, stopped, slow (its table locked)."""

    names = ("none", "up", "down", "slow")

    def __init__(self, plain, with_db, pg):
        self.plain, self.with_db, self.pg, self.blocker = plain, with_db, pg, None
        self.config = with_db.extensions["u2net"].settings.log_db

    def enter(self, state: str):
        import psycopg

        import GlobalVariables
        if state == "none":
            GlobalVariables.configure_logging("INFO", "text")
            return self.plain.test_client()
        GlobalVariables.configure_logging("INFO", "text", self.config)
        if state == "down":
            self.pg.stop()
        elif state == "slow":
            self.blocker = psycopg.connect(**self.config.connect_kwargs())
            self.blocker.execute("LOCK TABLE log IN ACCESS EXCLUSIVE MODE")
        return self.with_db.test_client()

    def leave(self, state: str) -> None:
        if state == "down":
            self.pg.start()
        elif state == "slow" and self.blocker is not None:
            self.blocker.rollback()
            self.blocker.close()
            self.blocker = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="per state")
    args = parser.parse_args()
    import tempfile

    import GlobalVariables

    plain, with_db, pg = build(Path(tempfile.mkdtemp(prefix="u2net-bench-logdb-")))
    states = States(plain, with_db, pg)
    body = {"sourceImagePath": "/in.png", "outputImagePath": "/out.png", "threshold": 200}
    times: dict[str, list[float]] = {s: [] for s in States.names}
    rounds, dropped = 4, 0
    try:
        for client in (plain.test_client(), with_db.test_client()):  # warm both paths
            client.post("/remove-background", json=body)
        for _ in range(rounds):
            for state in times:
                client = states.enter(state)
                for _ in range(args.requests // rounds):
                    started = time.perf_counter()
                    reply = client.post("/remove-background", json=body)
                    times[state].append((time.perf_counter() - started) * 1000)
                    assert reply.status_code == 200, reply.get_data(as_text=True)
                states.leave(state)
                handler = GlobalVariables._log_database
                dropped += handler.dropped if handler else 0
    finally:
        GlobalVariables.close_log_database(timeout=10)
        pg.close()
    baseline = statistics.median(times["none"])
    print(f"{args.requests} website requests per state (640x480, threshold 200, u2netp), "
          f"interleaved in {rounds} rounds; ms; ratio of medians to no database")
    for state, values in times.items():
        values.sort()
        median = statistics.median(values)
        print(f"  {state:5s} median {median:7.1f}   p90 {values[int(0.9 * (len(values) - 1))]:7.1f}"
              f"   {median / baseline:5.2f}x")
    print(f"log lines dropped (queue full): {dropped}")


if __name__ == "__main__":
    main()
