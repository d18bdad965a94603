"""`forum run` as a newcomer runs it (`make run`): its own Synapse, SQLite, the web app."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import sys
import tomllib
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import tomli_w

from forum.homeserver import free_port, port_is_free
from forum.settings import DEFAULT_CONFIG

pytestmark = pytest.mark.homeserver


async def start_run(
    config: Path, home: Path, extra_env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    env = dict(os.environ, FORUM_HOME=str(home), **(extra_env or {}))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forum",
        "--config",
        str(config),
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def read_until(proc: asyncio.subprocess.Process, marker: str, timeout: float = 120) -> str:
    out = ""
    async with asyncio.timeout(timeout):
        while marker not in out:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"forum run exited early:\n{out}")
            out += line.decode()
    return out


async def stop(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        rest = await proc.stdout.read()
        await proc.wait()
    return rest.decode()


async def test_forum_run_end_to_end(tmp_path):
    data = copy.deepcopy(tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8")))
    hs_port, web_port = free_port(), free_port()
    data["homeserver"]["embedded"]["port"] = hs_port
    data["web"]["port"] = web_port
    antispam_port = data["antispam"]["port"] = free_port()
    config = tmp_path / "forum.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    (tmp_path / "charter").symlink_to(DEFAULT_CONFIG.parent / "charter")
    home = tmp_path / "home"

    proc = await start_run(config, home)
    try:
        out = await read_until(proc, "Press Ctrl-C to stop")
        facts = json.loads((home / "demo.json").read_text(encoding="utf-8"))
        assert facts["homeserver_url"] == f"http://127.0.0.1:{hs_port}"
        assert facts["web_url"] == f"http://127.0.0.1:{web_port}/"
        assert {a["role"] for a in facts["accounts"]} == {"moderator", "member"}
        assert len(facts["accounts"]) == 3
        for a in facts["accounts"]:
            assert a["user_id"] in out
            assert a["password"] in out
        assert (home / "synapse" / "homeserver.yaml").is_file()
        # the embedded Synapse asks the forum's spam checker, with the secret of secrets.json
        overrides = (home / "synapse" / "forum-overrides.yaml").read_text(encoding="utf-8")
        assert "synapse_http_antispam.HTTPAntispam" in overrides
        assert f"http://127.0.0.1:{antispam_port}" in overrides
        secret = json.loads((home / "secrets.json").read_text(encoding="utf-8"))["antispam"]
        shared = (home / "synapse" / "forum-antispam-secret").read_text(encoding="utf-8")
        assert shared.strip() == secret
        assert secret not in overrides
        async with aiohttp.ClientSession() as http:
            checker = f"http://127.0.0.1:{antispam_port}/ping"
            async with http.post(checker, json={"id": "a"}) as resp:
                assert resp.status == 401
            auth = {"Authorization": f"Bearer {secret}"}
            async with http.post(checker, json={"id": "a"}, headers=auth) as resp:
                assert await resp.json() == {"id": "a", "status": "ok"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{facts['web_url']}healthz") as resp:
                assert resp.status == 200
                health = await resp.json()
                assert (health["homeserver"], health["database"]) == ("ok", "ok")
                assert {"outbox", "sync:membership", "sync:moderation"} <= set(health["tasks"])
                assert not health.get("stale")
            async with http.get(f"{facts['web_url']}fr/") as resp:
                page = await resp.text()
                assert "Droits des enfants" in page
                assert "Espace commun" in page
            moderator = next(a for a in facts["accounts"] if a["role"] == "moderator")
            login = {
                "type": "m.login.password",
                "password": moderator["password"],
                "identifier": {"type": "m.id.user", "user": moderator["user_id"]},
            }
            # Signing in again and again from this machine (clients, scripts, the CLI)
            # is not refused: everyone here comes from 127.0.0.1.
            for _ in range(8):
                async with http.post(
                    f"{facts['homeserver_url']}/_matrix/client/v3/login", json=login
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    token = (await resp.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(
                f"{facts['homeserver_url']}/_matrix/client/v3/sync", headers=headers
            ) as resp:
                invites = (await resp.json())["rooms"].get("invite", {})
            assert len(invites) >= 11  # the moderator is invited to every forum room
            # Accepting them all in a row, as a client does on first sign-in: no 429.
            for room_id in invites:
                async with http.post(
                    f"{facts['homeserver_url']}/_matrix/client/v3/join/{quote(room_id)}",
                    headers=headers,
                    json={},
                ) as resp:
                    assert resp.status == 200, (room_id, await resp.text())
    finally:
        if proc.returncode is None:
            rest = await stop(proc)
    assert proc.returncode == 0, rest
    assert "Stopped." in rest
    assert port_is_free("127.0.0.1", hs_port)  # the homeserver stopped with it

    # An operator adds an account while the service is stopped (the homeserver is started
    # for the command and stopped again).
    env = dict(os.environ, FORUM_HOME=str(home))
    added = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forum",
        "--config",
        str(config),
        "homeserver",
        "register",
        "yao",
        "--password",
        "mot-de-passe-yao",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_reg, err_reg = await asyncio.wait_for(added.communicate(), 120)
    assert added.returncode == 0, err_reg.decode()
    assert "@yao:localhost" in out_reg.decode()
    assert port_is_free("127.0.0.1", hs_port)

    # Running it again reuses the same state: same accounts and passwords, no new rooms.
    proc = await start_run(config, home)
    try:
        out2 = await read_until(proc, "Press Ctrl-C to stop")
        again = json.loads((home / "demo.json").read_text(encoding="utf-8"))
        assert again["accounts"] == facts["accounts"]
        # The account added by the operator signs in; `forum provision` uses the running
        # homeserver and finds nothing to change.
        login = {
            "type": "m.login.password",
            "password": "mot-de-passe-yao",
            "identifier": {"type": "m.id.user", "user": "@yao:localhost"},
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{again['homeserver_url']}/_matrix/client/v3/login", json=login) as resp,
        ):
            assert resp.status == 200
        prov = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "forum",
            "--config",
            str(config),
            "provision",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out_prov, err_prov = await asyncio.wait_for(prov.communicate(), 120)
        assert prov.returncode == 0, err_prov.decode()
        assert "Nothing to change" in out_prov.decode()
    finally:
        rest = await stop(proc)
    assert proc.returncode == 0, rest
    assert "provisioned: 0 change(s) applied" in out2
