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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="per state")
    args = parser.parse_args()

    import tempfile

    import numpy as np
    import psycopg
    from pgserver import PostgresServer
    from PIL import Image

    import API
    import GlobalVariables
    from GlobalVariables import Settings

    pg = PostgresServer()
    root = Path(tempfile.mkdtemp(prefix="u2net-bench-logdb-"))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(root / "in.png")
    weights = SHARED / "models" / "u2netp" / "u2netp.pth"
    base = Settings(fs_root=root, model="u2netp", weights=weights if weights.exists() else None,
                    precision="fp32", warmup_runs=1, log_level="INFO")
    if base.weights is None:
        import torch
        from u2net.model import U2NETP
        base = base.with_(weights=root / "u2netp-random.pth")
        torch.save(U2NETP().state_dict(), base.weights)
    with_db = base.with_(log_db=GlobalVariables.LogDbConfig.from_env(pg.env()))
    plain_app = API.create_app(base, warm_up_in_background=False)
    runtimes = plain_app.extensions["u2net"].runtimes
    db_app = API.create_app(with_db, list(runtimes), warm_up_in_background=False)
    GlobalVariables.configure_logging("INFO", "text")  # the plain app's: no database handler yet
    body = {"sourceImagePath": "/in.png", "outputImagePath": "/out.png", "threshold": 200}
    blocker = None

    def use(state: str):
        nonlocal blocker
        if state == "none":
            GlobalVariables.configure_logging("INFO", "text")
            return plain_app.test_client()
        GlobalVariables.configure_logging("INFO", "text", with_db.log_db)
        if state == "down":
            pg.stop()
        elif state == "slow":
            blocker = psycopg.connect(**with_db.log_db.connect_kwargs())
            blocker.execute("LOCK TABLE log IN ACCESS EXCLUSIVE MODE")
        return db_app.test_client()

    def leave(state: str):
        nonlocal blocker
        if state == "down":
            pg.start()
        elif state == "slow" and blocker is not None:
            blocker.rollback()
            blocker.close()
            blocker = None

    times: dict[str, list[float]] = {s: [] for s in ("none", "up", "down", "slow")}
    try:
        for client in (plain_app.test_client(), db_app.test_client()):  # warm both paths
            client.post("/remove-background", json=body)
        rounds = 4
        for _ in range(rounds):
            for state in times:
                client = use(state)
                for _ in range(args.requests // rounds):
                    started = time.perf_counter()
                    reply = client.post("/remove-background", json=body)
                    times[state].append((time.perf_counter() - started) * 1000)
                    assert reply.status_code == 200, reply.get_data(as_text=True)
                leave(state)
        handler = GlobalVariables._log_database
        dropped = handler.dropped if handler else 0
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
