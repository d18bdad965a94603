"""The long fault suite of issue #11 (the short one runs in ``make test``:
``tests/integration/test_faults.py``).

``forum run`` in its own process, on a Synapse started here (a temporary directory, the
test rate limits) behind a loopback proxy, and a workload of 1,000+ events (members
knocking, consenting, posting, a banned word, redactions, withdrawals, reports; a
moderator curating, muting for a few seconds, banning) while the process is killed with
SIGKILL 20 times, Synapse restarts twice, the database is locked for 10 s and the proxy
answers bursts of 429. Meanwhile 10,000 GET requests, 100 at a time, on the public
pages. Afterwards: what was lost, done twice or leaked, checked from the database and
from what the people saw.

Prints JSON: events, kills, restarts, lost, doubled, leaked, the time to recover after
each fault (p50, p99), the sync lag after, and the web figures (p50, p99, errors; a
request refused while the process was dead, between a SIGKILL and its restart answering,
is counted apart: no web server answers then).

    .venv/bin/python benchmarks/faults.py [--database sqlite|postgresql] [--members 85]
        [--kills 20] [--web-requests 10000] [--web-concurrency 100] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import make_url  # noqa: E402

from forum.homeserver import EmbeddedHomeserver, free_port  # noqa: E402
from forum.storage import create_database_if_missing, drop_database  # noqa: E402
from tests import faults  # noqa: E402
from tests.faults import FaultPlan, run_fault_suite  # noqa: E402
from tests.storage_fixtures import POSTGRES_BASE_URL  # noqa: E402


async def main(args: argparse.Namespace) -> dict[str, object]:
    plan = FaultPlan(
        members=args.members,
        posts=args.posts,
        parallel=args.parallel,
        kills=args.kills,
        synapse_restarts=2,
        locks=1,
        lock_seconds=10,
        bursts=3,
        burst_seconds=3,
        gap=args.gap,
        web_requests=args.web_requests,
        web_concurrency=args.web_concurrency,
    )
    faults.PATIENCE = args.patience
    with contextlib.ExitStack() as stack:
        if args.dir is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="forum-faults-")))
        else:
            base = args.dir.resolve()
            base.mkdir(parents=True)
        hs = EmbeddedHomeserver(
            base / "synapse", server_name="faults.bench", port=free_port(), for_tests=True
        )
        pg_url = None
        if args.database == "postgresql":
            pg_url = make_url(POSTGRES_BASE_URL).set(
                database=f"forum_faults_{secrets.token_hex(5)}"
            )
            await create_database_if_missing(pg_url)
        await hs.start()
        try:
            run_dir = base / "run"
            run_dir.mkdir()
            db_url = pg_url.render_as_string(hide_password=False) if pg_url else None
            return await run_fault_suite(hs, run_dir, db_url, plan)
        finally:
            await hs.stop()
            if pg_url is not None:
                await drop_database(pg_url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--members", type=int, default=85)
    parser.add_argument("--posts", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--gap", type=float, default=4.0)
    parser.add_argument("--web-requests", type=int, default=10_000)
    parser.add_argument("--web-concurrency", type=int, default=100)
    parser.add_argument(
        "--patience", type=float, default=300.0, help="seconds a person waits for an answer"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="keep the run's files (logs, databases) here"
    )
    figures = asyncio.run(main(parser.parse_args()))
    print(json.dumps(figures, indent=2, ensure_ascii=False))
