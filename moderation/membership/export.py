"""A person's data (``!mes-donnees``): everything stored about them, as JSON."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.consent import ConsentRecords
from forum.public_names import PublicNames
from forum.storage import utcnow

from .models import approval_dict, person_dict
from .repositories import People


async def export_person(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: str
) -> dict[str, Any]:
    """Everything stored about one person (flow state, approvals, consent history)."""
    async with sessionmaker() as s:
        people = People(s)
        person = await people.get(user_id)
        approvals = await people.approvals(user_id)
        records = await ConsentRecords(s).history(user_id)
        status = await ConsentRecords(s).status(user_id)
        public_name = await PublicNames(s).get(user_id)
    return {
        "user_id": user_id,
        "exported_at": utcnow().isoformat(),
        "status": {
            "charter_version": status.charter_version,
            "publication": status.publication,
            "step": person.step if person else None,
        },
        "membership": person_dict(person) if person else None,
        "public_name": public_name.as_dict() if public_name else None,
        "approvals": [approval_dict(a) for a in approvals],
        "consent_records": [
            {
                "scope": r.scope,
                "granted": r.granted,
                "charter_version": r.charter_version,
                "text_sha256": r.text_sha256,
                "method": r.method,
                "event_id": r.event_id,
                "created_at": r.created_at.isoformat(),
            }
            for r in records
        ],
    }


def export_file(data: dict[str, Any], lang: str) -> tuple[str, bytes]:
    """The file name (in the person's language) and the JSON bytes of an export."""
    filename = "my-data.json" if lang != "fr" else "mes-donnees.json"
    return filename, json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")
