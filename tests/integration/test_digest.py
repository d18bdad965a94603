"""The digest end to end: real Synapse, test users talking in topic rooms, consent
written through the consent records, curation by reaction and command, the published
week seen on the web (HTML, Atom, JSON)."""

from __future__ import annotations

import json

import feedparser
import pytest
from sqlalchemy import select

from bridge.models import DigestActivity, DigestHighlight, DigestReaction, QuotePermission
from tests.harness import TOPIC, ForumStarter

pytestmark = pytest.mark.homeserver

A_MESSAGES = [
    "L'éducation des filles est la clé du développement de nos communautés rurales.",
    "Les écoles rurales manquent de moyens pour accueillir les filles. Il faut des cantines.",
    "Nous devons parler de l'éducation des filles avec les chefs des communautés rurales.",
]
A_PAYLOAD_BODY = "Regardez <script>alert('pwn')</script> ceci"
A_PAYLOAD_HTML = (
    "<p>Regardez <img src=x onerror=alert(1)><script>alert('pwn')</script>"
    '<a href="javascript:alert(2)">ici</a> <b>gras-important</b></p>'
)
B_PERMITTED = "Bruno-permis: les cantines scolaires gardent les filles à l'école."
B_REFUSED = "BRUNO-REFUSE: mon histoire personnelle que je ne veux pas voir publiée."
B_UNMARKED = "BRUNO-JAMAIS: les écoles rurales et les filles, encore une idée privée."


def reply(body: str, to: str) -> dict:
    return {"msgtype": "m.text", "body": body, "m.relates_to": {"m.in_reply_to": {"event_id": to}}}


async def wait_invite(user, after: int) -> str:
    event = await user.wait_for(
        lambda e: (
            e["_section"] == "invite"
            and e["type"] == "m.room.member"
            and e["state_key"] == user.user_id
        ),
        20,
        after=after,
    )
    return str(event["room_id"])


async def test_collect_curate_publish(make_user, start_forum: ForumStarter):
    mod = await make_user("mod", display_name="Modératrice")
    amina = await make_user("amina", display_name="Amina")
    bruno = await make_user("bruno", display_name="Bruno")
    forum = await start_forum("digest", moderator=mod, moderator_joins=())
    room = forum.room()
    for user in (mod, amina, bruno):
        await forum.join(user, room)

    # Amina consents; Bruno does not. A message Amina sent before consenting is not kept.
    early = await amina.send_text(room, "AMINA-AVANT: écrit avant mon consentement.")
    await forum.consent(amina)
    a_ids = [await amina.send_text(room, text) for text in A_MESSAGES]
    payload = await amina.send_text(room, A_PAYLOAD_BODY, A_PAYLOAD_HTML)
    b_permitted = await bruno.send_text(room, B_PERMITTED)
    b_refused = await bruno.send_text(room, B_REFUSED)
    await bruno.send_text(room, B_UNMARKED)
    await amina.react(room, a_ids[0], "❤️")

    async def collected() -> bool:
        stored = " ".join(await forum.stored_bodies())
        async with forum.ctx.db.sessionmaker() as s:
            hearts = await s.scalars(select(DigestReaction.target))
        # Amina's ❤️ is later in the stream than every message: Bruno's were handled.
        return all(t in stored for t in A_MESSAGES) and a_ids[0] in list(hearts)

    await forum.assert_not_stored(
        collected, "BRUNO", "Bruno-permis", "AMINA-AVANT", what="Amina's messages stored"
    )
    stored = " ".join(await forum.stored_bodies())
    assert "gras-important" in stored
    # The message before consent was seen (it counts in the figures), its words not kept.
    async with forum.ctx.db.sessionmaker() as s:
        counted = await s.scalar(
            select(DigestActivity.event_id).where(DigestActivity.event_id == early)
        )
    assert counted == early
    # the formatted body is sanitised on the way in (the plain body is text, escaped later)
    assert "onerror" not in stored
    assert "<img" not in stored
    assert "javascript:" not in stored

    # The moderator marks Amina's first message with 📰: a highlight at once.
    await mod.react(room, a_ids[0], "📰")
    await mod.react(room, payload, "📰")
    # ... and Bruno's message with "!digest <heading>": Bruno is asked in a DM.
    mark = bruno.mark()
    await mod.send(room, "m.room.message", reply("!digest Des cantines pour rester", b_permitted))
    dm = await wait_invite(bruno, mark)
    await bruno.join(dm)
    question = await bruno.wait_for_text(dm, "Bruno-permis", timeout=20, after=mark)
    assert "citer" in question["content"]["body"] or "quote" in question["content"]["body"]
    assert question["sender"] == forum.ctx.settings.membership_bot_id
    mark = bruno.mark()
    await bruno.send_text(dm, "oui")
    await bruno.wait_for_text(dm, "Merci", timeout=20, after=mark)

    # A second message marked by reaction; this time Bruno says no (same DM reused).
    await mod.react(room, b_refused, "📰")
    await bruno.wait_for_text(dm, "BRUNO-REFUSE", timeout=20, after=mark)
    mark = bruno.mark()
    await bruno.send_text(dm, "non")
    await bruno.wait_for_text(dm, "ne sera pas cité", timeout=20, after=mark)

    async with forum.ctx.db.sessionmaker() as s:
        highlights = {h.target: h.status for h in await s.scalars(select(DigestHighlight))}
        answers = {p.target: p.granted for p in await s.scalars(select(QuotePermission))}
    assert highlights == {
        a_ids[0]: "ok",
        payload: "ok",
        b_permitted: "ok",
        b_refused: "refused",
    }
    assert answers == {b_permitted: True, b_refused: False}
    stored = " ".join(await forum.stored_bodies())
    assert "Bruno-permis" in stored
    assert "BRUNO-REFUSE" not in stored

    # The week is published and seen on the web.
    week = forum.week()
    await forum.digest.publish(week)
    status, page, headers = await forum.get(f"/fr/week/{week}/")
    assert status == 200, page
    assert A_MESSAGES[0].replace("'", "&#39;") in page
    assert "Des cantines pour rester" in page
    assert "Bruno-permis" in page
    assert page.index(A_MESSAGES[0].replace("'", "&#39;")) < page.index("Points clés")
    assert "BRUNO-REFUSE" not in page
    assert "BRUNO-JAMAIS" not in page
    assert "AMINA-AVANT" not in page
    assert "https://matrix.to/#/" in page
    assert a_ids[0].replace("$", "") in page
    # Figures count everyone: 5 + 3 messages, 2 people writing, 3 new members.
    assert "8 messages, 2 personnes actives, 3 nouveaux membres" in page, page[
        page.find("figures") :
    ][:300]
    assert "Rien de nouveau dans ce thème cette semaine." in page  # the other topics
    # Hostile HTML is inert.
    assert "<script" not in page
    assert "onerror" not in page
    assert "javascript:" not in page
    assert "<img" not in page
    assert "<b>gras-important</b>" in page
    assert headers["Cache-Control"].startswith("public")
    assert "ETag" in headers
    status, _, _ = await forum.get(f"/fr/week/{week}/", headers={"If-None-Match": headers["ETag"]})
    assert status == 304

    _, css, _ = await forum.get("/static/style.css")
    assert len(page.encode()) + len(css.encode()) < 30_000

    # English page, home pages, topic archive, real 404s.
    status, en, _ = await forum.get(f"/en/week/{week}/")
    assert status == 200
    assert "Key points" in en
    assert "8 messages, 2 participants" in en
    status, home, _ = await forum.get("/fr/")
    assert status == 200
    assert f"/fr/week/{week}/" in home
    assert "Bruno-permis" in home
    assert f"/fr/topic/{TOPIC}/" in home
    status, topic, _ = await forum.get(f"/fr/topic/{TOPIC}/")
    assert status == 200
    assert "Bruno-permis" in topic
    assert "BRUNO-REFUSE" not in topic
    for path in ("/fr/week/2001-W01/", "/fr/week/nonsense/", "/fr/topic/inconnu/", "/de/"):
        status, body, _ = await forum.get(path)
        assert status == 404, path
    status, _, headers = await forum.get("/", headers={"Accept-Language": "en"})
    assert status == 302
    assert headers["Location"] == "/en/"

    # The Atom feed, parsed by a real feed parser.
    status, atom, headers = await forum.get("/fr/feed.atom")
    assert status == 200
    assert headers["Content-Type"].startswith("application/atom+xml")
    parsed = feedparser.parse(atom)
    assert not parsed.bozo, parsed.bozo_exception
    # the week as a reader says it ("Résumé : semaine du 23 au 29 novembre 2026")
    assert [e.title for e in parsed.entries] == [
        f"Résumé : {forum.digest.site.week_name('fr', week)}"
    ]
    assert parsed.entries[0].title.startswith("Résumé : semaine du ")
    content = parsed.entries[0].content[0].value
    assert "Bruno-permis" in content
    assert "BRUNO-REFUSE" not in content
    assert "<script" not in atom
    assert "BRUNO-JAMAIS" not in atom

    # The JSON API.
    status, raw, _ = await forum.get("/api/digests.json")
    data = json.loads(raw)
    assert status == 200
    assert [w["week"] for w in data["weeks"]] == [week]
    topics = {t["slug"]: t for t in data["weeks"][0]["topics"]}
    ours = topics[TOPIC]
    assert [h["heading"] for h in ours["highlights"]] == [None, None, "Des cantines pour rester"]
    assert (ours["messages"], ours["participants"], ours["new_members"]) == (8, 2, 3)
    assert ours["key_points"], "the summariser found key points"
    assert all(kp["author"] == "Amina" for kp in ours["key_points"])
    assert all(kp["url"].startswith("https://matrix.to/#/") for kp in ours["key_points"])
    assert "BRUNO" not in raw
    assert "AMINA-AVANT" not in raw


async def test_only_words_are_published(make_user, start_forum: ForumStarter):
    """Issue #10, point 6: a consenting member's location, file, spoiler and mention of
    someone who never consented reach no public output; the words of the message do."""
    mod = await make_user("mod", display_name="Modératrice")
    amina = await make_user("amina", display_name="Amina")
    zoe = await make_user("zoe", display_name="Zoé Discrète")
    forum = await start_forum("digest", moderator=mod, moderator_joins=())
    room = forum.room()
    for user in (mod, amina, zoe):
        await forum.join(user, room)
    await forum.consent(amina)  # Zoé never consents

    geo = "geo:6.1319,1.2228;u=35"
    where = await amina.send(
        room,
        "m.room.message",
        {"msgtype": "m.location", "body": f"AMINA-LIEU {geo}", "geo_uri": geo},
    )
    file = await amina.send(
        room,
        "m.room.message",
        {
            "msgtype": "m.file",
            "body": "amina-dossier-medical.pdf",
            "filename": "amina-dossier-medical.pdf",
            "url": "mxc://example.test/abcdef",
            "info": {"mimetype": "application/pdf", "size": 1234},
        },
    )
    words = "AMINA-PUBLIC: les cantines scolaires gardent les filles à l'école"
    spoiler = "SPOILER-SECRET-FIN"
    text = await amina.send_text(
        room,
        f"Zoé Discrète: {words}. {spoiler}",
        f'<p><a href="https://matrix.to/#/{zoe.user_id}">Zoé Discrète</a>: {words}. '
        f'<span data-mx-spoiler="la fin">{spoiler}</span></p>',
    )
    # The moderator marks all three for the digest (📰), the words last.
    for target in (where, file, text):
        await mod.react(room, target, "📰")

    async def marked() -> bool:
        async with forum.ctx.db.sessionmaker() as s:
            statuses = {h.target: h.status for h in await s.scalars(select(DigestHighlight))}
        return statuses.get(text) == "ok"

    await forum.assert_not_stored(
        marked,
        geo,
        "dossier-medical",
        "AMINA-LIEU",
        zoe.user_id,
        "Zoé",
        spoiler,
        what="the text message marked and stored",
    )
    async with forum.ctx.db.sessionmaker() as s:
        marks = set(await s.scalars(select(DigestHighlight.target)))
    assert marks == {text}, "a location or a file is not a highlight (nor asked about)"

    week = forum.week()
    await forum.digest.publish(week)
    status, page, _ = await forum.get(f"/fr/week/{week}/")
    assert status == 200
    status, en, _ = await forum.get(f"/en/week/{week}/")
    assert status == 200
    status, atom, _ = await forum.get("/fr/feed.atom")
    assert status == 200
    status, raw, _ = await forum.get("/api/digests.json")
    assert status == 200
    feed = feedparser.parse(atom).entries[0].content[0].value
    outputs = {"page": page, "English page": en, "feed": feed, "atom": atom, "json": raw}
    # the words are published (so the checks below can fail)...
    for name, out in outputs.items():
        assert "AMINA-PUBLIC" in out, name
        assert "cantines scolaires" in out, name
    assert "un·e membre" in page
    # ... and nothing else
    zoe_local = zoe.user_id.split(":", 1)[0].lstrip("@")
    for name, out in outputs.items():
        for secret in (
            geo,
            "geo:",
            "6.1319",
            "AMINA-LIEU",
            "dossier-medical",
            "mxc://",
            zoe.user_id,
            zoe_local,
            "Zoé",
            "Zo&#233;",
            "Discr",
            spoiler,
        ):
            assert secret not in out, (name, secret)
