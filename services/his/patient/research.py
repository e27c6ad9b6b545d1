"""ListResearchPatients: patients with an active research consent, de-identified in the service.

Only the id (turned into a keyed pseudonym), birth date (cut to the year), gender and state are
read: the encrypted identifiers and the names never leave the table for an export, so nothing here
needs the field cipher.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.patient.mapping import GENDER, SCOPE, STATE
from his.patient.tables import consents, patients
from his.patient.v1 import patient_service_pb2 as pb
from his.runtime.pagination import PageTokens
from his.runtime.pseudonyms import Pseudonyms
from his.runtime.server import ServiceResources
from his.runtime.validation import Violations

_RESEARCH_PATIENT = pb.ResearchPatient.DESCRIPTOR.full_name
_RESEARCH = SCOPE.text(pb.CONSENT_SCOPE_RESEARCH)
# Binds page tokens to this list (it has no filters).
_QUERY = "research-patients"


async def research_patients(
    session: AsyncSession, *, after: uuid.UUID | None, limit: int
) -> list[Any]:
    """Up to `limit` non-merged patients with a research consent in force, by id after `after`."""
    now = func.now()
    consented = exists().where(
        consents.c.patient_id == patients.c.id,
        consents.c.scope == _RESEARCH,
        consents.c.status == "active",
        consents.c.period_start <= now,
        or_(consents.c.period_end.is_(None), consents.c.period_end > now),
    )
    conditions: list[Any] = [patients.c.state != "merged", consented]
    if after is not None:
        conditions.append(patients.c.id > after)
    query = (
        select(patients.c.id, patients.c.birth_date, patients.c.gender, patients.c.state)
        .where(*conditions)
        .order_by(patients.c.id)
        .limit(limit)
    )
    return list((await session.execute(query)).all())


class ResearchPatients:
    """The research export of the patient service."""

    def __init__(self, resources: ServiceResources) -> None:
        self._db = resources.database
        self._pages = PageTokens(resources.config.page_token_key)
        self._access = resources.access
        self._pseudonyms = Pseudonyms.from_config(resources.config.research)

    async def page(
        self, request: pb.ListResearchPatientsRequest
    ) -> pb.ListResearchPatientsResponse:
        """One page of ListResearchPatients: validate, authorize, read, audit, de-identify."""
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        permit = await self._access.require("execute", "research.export")
        keyset = self._pages.keyset(
            request.page_token, query=_QUERY, limit=limit, after=lambda c: c.uuid("i")
        )
        async with self._db.read() as session:
            rows = await research_patients(session, after=keyset.after, limit=keyset.read_limit)
        page = keyset.page(rows, lambda row: {"i": str(row.id)})
        await self._access.record_each(
            "execute",
            [(permit, f"patients/{row.id}", f"patients/{row.id}") for row in page.rows],
            _RESEARCH_PATIENT,
            purpose=audit_pb.PURPOSE_OF_USE_RESEARCH,
        )
        return pb.ListResearchPatientsResponse(
            research_patients=[self._to_proto(row) for row in page.rows],
            pseudonym_key_id=self._pseudonyms.key_id,
            next_page_token=page.next_page_token,
        )

    def _to_proto(self, row: Any) -> pb.ResearchPatient:
        return pb.ResearchPatient(
            pseudonym=self._pseudonyms.patient(row.id),
            birth_year=row.birth_date.year,
            gender=GENDER.number(row.gender),  # type: ignore[arg-type]
            state=STATE.number(row.state),  # type: ignore[arg-type]
        )
