"""ListResearchAppointments: every appointment, de-identified in the service.

The patient leaves only as the keyed pseudonym the patient service gives them too (same key, same
function), the start only as a date; practitioner, slot, times and reasons are never read. Which
patients consented to research is the patient service's to say: the exporter keeps only the
appointments of the pseudonyms ListResearchPatients returned.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.runtime import wire
from his.runtime.pagination import PageTokens, time_and_id, time_and_id_values
from his.runtime.pseudonyms import Pseudonyms
from his.runtime.server import ServiceResources
from his.runtime.validation import Violations, time_zone
from his.scheduling.mapping import APPOINTMENT_STATUS, department_name
from his.scheduling.tables import appointments
from his.scheduling.v1 import scheduling_service_pb2 as pb

_RESEARCH_APPOINTMENT = pb.ResearchAppointment.DESCRIPTOR.full_name
_UTC = ZoneInfo("UTC")


async def research_appointments(
    session: AsyncSession, *, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[Any]:
    """Up to `limit` appointments in (start time, id) order after the keyset cursor."""
    query = select(
        appointments.c.id,
        appointments.c.patient_id,
        appointments.c.department_id,
        appointments.c.service_type_system,
        appointments.c.service_type_code,
        appointments.c.service_type_display,
        appointments.c.start_time,
        appointments.c.status,
    )
    if after is not None:
        query = query.where(
            tuple_(appointments.c.start_time, appointments.c.id)
            > tuple_(literal(after[0]), literal(after[1]))
        )
    query = query.order_by(appointments.c.start_time, appointments.c.id).limit(limit)
    return list((await session.execute(query)).all())


class ResearchAppointments:
    """The research export of the scheduling service."""

    def __init__(self, resources: ServiceResources) -> None:
        self._db = resources.database
        self._pages = PageTokens(resources.config.page_token_key)
        self._access = resources.access
        self._pseudonyms = Pseudonyms.from_config(resources.config.research)

    async def page(
        self, request: pb.ListResearchAppointmentsRequest
    ) -> pb.ListResearchAppointmentsResponse:
        """One page of ListResearchAppointments: validate, authorize, read, audit, de-identify."""
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        zone = time_zone(v, "time_zone", request.time_zone, required=False) or _UTC
        v.raise_if_any()
        permit = await self._access.require("execute", "research.export")
        query = repr(("research-appointments", zone.key))
        keyset = self._pages.keyset(request.page_token, query=query, limit=limit, after=time_and_id)
        async with self._db.read() as session:
            rows = await research_appointments(session, after=keyset.after, limit=keyset.read_limit)
        page = keyset.page(rows, lambda row: time_and_id_values(row.start_time, row.id))
        await self._access.record_each(
            "execute",
            [(permit, f"patients/{row.patient_id}", f"appointments/{row.id}") for row in page.rows],
            _RESEARCH_APPOINTMENT,
            purpose=audit_pb.PURPOSE_OF_USE_RESEARCH,
        )
        return pb.ListResearchAppointmentsResponse(
            research_appointments=[self._to_proto(row, zone) for row in page.rows],
            pseudonym_key_id=self._pseudonyms.key_id,
            next_page_token=page.next_page_token,
        )

    def _to_proto(self, row: Any, zone: ZoneInfo) -> pb.ResearchAppointment:
        return pb.ResearchAppointment(
            patient_pseudonym=self._pseudonyms.patient(row.patient_id),
            department=department_name(row.department_id),
            service_type=wire.coding(
                row.service_type_system, row.service_type_code, row.service_type_display
            ),
            start_date=wire.date(row.start_time.astimezone(zone).date()),
            status=APPOINTMENT_STATUS.number(row.status),  # type: ignore[arg-type]
        )
