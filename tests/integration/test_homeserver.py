"""The embedded homeserver and the test users, against a real Synapse."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest
import yaml

from forum.homeserver import EmbeddedHomeserver, HomeserverStartError, free_port
from tests.conftest import MakeUser
from tests.harness import is_membership
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver


async def test_health(synapse: EmbeddedHomeserver) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{synapse.url}/health") as resp:
        assert resp.status == 200
        assert await resp.text() == "OK"


async def test_register_twice_returns_same_id_and_user_logs_in(
    synapse: EmbeddedHomeserver,
) -> None:
    first = await synapse.register("twice", "secret-pw", display_name="Twice")
    second = await synapse.register("twice", "another-pw")
    assert first == second == f"@twice:{synapse.server_name}"
    user = await TestUser.login(synapse, first, "secret-pw")
    try:
        whoami = await user.request("GET", "/_matrix/client/v3/account/whoami")
        assert whoami["user_id"] == first
        profile = await user.request("GET", f"/_matrix/client/v3/profile/{first}")
        assert profile["displayname"] == "Twice"
    finally:
        await user.close()


async def test_message_reaches_another_user(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    assert alice.user_id != bob.user_id
    room_id = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    assert await bob.wait_for_invite(room_id) == room_id
    await bob.join(room_id)
    await alice.wait_for(is_membership(room_id, bob.user_id, "join"))
    event_id = await alice.send_text(room_id, "Bonjour Bob", html="<b>Bonjour</b> Bob")
    seen = await bob.wait_for_text(room_id, "Bonjour Bob")
    assert seen["event_id"] == event_id
    assert seen["sender"] == alice.user_id
    assert seen["content"]["formatted_body"] == "<b>Bonjour</b> Bob"

    reaction_id = await bob.react(room_id, event_id, "👍")
    reaction = await alice.wait_for(lambda e: e.get("event_id") == reaction_id)
    assert reaction["content"]["m.relates_to"]["key"] == "👍"


async def test_state_and_hierarchy(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    space = await alice.create_room(creation_content={"type": "m.space"}, preset="public_chat")
    child = await alice.create_room(preset="public_chat", name="Topic")
    await alice.put_state(space, "m.space.child", {"via": [alice.hs.server_name]}, child)
    content = await alice.get_state_event(space, "m.space.child", child)
    assert content["via"] == [alice.hs.server_name]
    rooms = {r["room_id"] for r in await alice.hierarchy(space)}
    assert rooms == {space, child}


async def test_generated_config_binds_loopback_only(synapse: EmbeddedHomeserver) -> None:
    assert synapse.config.config_path == synapse.config.directory / "homeserver.yaml"
    assert synapse.config.config_path.is_file()
    overrides = yaml.safe_load(synapse.config.overrides_path.read_text())
    for listener in overrides["listeners"]:
        assert listener["bind_addresses"] == ["127.0.0.1"]
        names = {n for r in listener["resources"] for n in r["names"]}
        assert "federation" not in names
    assert overrides["enable_registration"] is False
    assert overrides["trusted_key_servers"] == []
    assert overrides["caches"]["sync_response_cache_duration"] == 0
    assert overrides["bcrypt_rounds"] == 4  # the tests only: make run keeps the default
    assert Path(overrides["database"]["args"]["database"]).parent == synapse.config.directory
    assert synapse.config.log_path.is_file()


async def test_restart_reuses_state_and_ignores_stale_pid_file(tmp_path: Path) -> None:
    port = free_port()
    hs = EmbeddedHomeserver(tmp_path, server_name="restart.test", port=port, for_tests=True)
    async with hs:
        user_id = await hs.register("keeper", "keeper-pw")
        secret = hs.config.registration_shared_secret
    assert not hs.process.running
    await hs.stop()  # idempotent
    signing_key = (tmp_path / "restart.test.signing.key").read_text()
    # A pid file left by a dead process must not block the next start.
    (tmp_path / "forum-synapse.pid").write_text("999999999\n")

    again = EmbeddedHomeserver(tmp_path, server_name="restart.test", port=free_port())
    async with again:
        assert again.config.registration_shared_secret == secret
        assert (tmp_path / "restart.test.signing.key").read_text() == signing_key
        user = await TestUser.login(again, user_id, "keeper-pw")
        await user.close()
    assert not (tmp_path / "forum-synapse.pid").exists()


async def test_port_taken_gives_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        hs = EmbeddedHomeserver(tmp_path, server_name="taken.test", port=port)
        with pytest.raises(HomeserverStartError, match=f"port {port}.*already in use"):
            await hs.start()
        assert not hs.process.running


async def test_running_synapse_on_same_directory_is_refused(
    synapse: EmbeddedHomeserver,
) -> None:
    twin = EmbeddedHomeserver(
        synapse.config.directory, server_name=synapse.server_name, port=free_port()
    )
    with pytest.raises(HomeserverStartError, match="still running"):
        await twin.start()
    assert synapse.process.running
