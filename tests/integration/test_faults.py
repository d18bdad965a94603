"""The short fault suite (issue #11): ``forum run`` in its own process on a homeserver of
its own, a workload of about 100 events by people and a moderator, while the process is
killed with SIGKILL three times, Synapse restarts once, the database is locked for 3 s
and the homeserver answers a burst of 429; afterwards nothing is lost, nothing is done
twice, no withdrawn or refused words are stored or shown, every timed mute is lifted, and
the public pages answered every request made while the process was up.
``benchmarks/faults.py`` runs the long version (1,000+ events, 20 kills...)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from forum.homeserver import EmbeddedHomeserver, free_port
from tests.faults import FaultPlan, run_fault_suite

pytestmark = pytest.mark.homeserver

SHORT = FaultPlan(
    members=9,
    posts=4,
    parallel=5,
    kills=3,
    synapse_restarts=1,
    locks=1,
    lock_seconds=3,
    bursts=1,
    burst_seconds=2,
    gap=3,
    web_requests=600,
    web_concurrency=20,
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def own_synapse(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddedHomeserver]:
    """A Synapse of this module's own: the suite restarts it (the session's is shared)."""
    hs = EmbeddedHomeserver(
        tmp_path_factory.mktemp("synapse-faults"),
        server_name="faults.test",
        port=free_port(),
        for_tests=True,
    )
    await hs.start()
    try:
        yield hs
    finally:
        await hs.stop()


async def test_nothing_lost_nothing_doubled_under_faults(
    own_synapse: EmbeddedHomeserver, db_url: str, tmp_path: Path
) -> None:
    figures = await run_fault_suite(own_synapse, tmp_path, db_url, SHORT)
    text = json.dumps(figures, indent=1, ensure_ascii=False)[:6000]
    print(text)  # the figures, seen with -s
    assert figures["events"] >= 100, text
    assert figures["kills"] == SHORT.kills, text
    assert figures["synapse_restarts"] == SHORT.synapse_restarts, text
    assert figures["answered_429"] > 0, text
    assert figures["database_locks_s"], text
    assert figures["database_locks_s"][0] >= 2.9, text
    outcome = figures["outcome"]
    assert (outcome["lost"], outcome["doubled"], outcome["leaked"]) == (0, 0, 0), text
    assert figures["exit_code"] == 0, text
    lags = [v for k, v in figures["sync_lag_s_after"].items() if "sync_lag" in k]
    assert lags, text
    assert max(lags) < 35, text  # back within one long poll
    web = figures["web"]
    assert web["errors"] == 0, text
    assert web["answered"] + web["refused_while_process_down"] == SHORT.web_requests, text
