"""The SchedulingService servicer: validate → authorize → (ask patient service) → one transaction
→ audit → respond.

Schedules and slots hold no patient data: they are authorized, not audited. Appointments are
patient data: clinicians see those of their own departments (or their own patients), and only
while the patient's privacy consent stands, unless they hold a break-the-glass grant.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import grpc

from his.base import identity
from his.base.errors import FailedPrecondition, NotFound
from his.runtime.access import Facts, Permit
from his.runtime.database import CHECK_VIOLATION, EXCLUSION_VIOLATION, Database
from his.runtime.idempotency import RequestKey
from his.runtime.inbox import apply_events
from his.runtime.pagination import (
    PageTokens,
    TimeAndId,
    time_and_id,
    time_and_id_values,
    visible_page,
)
from his.runtime.server import ServiceResources
from his.runtime.validation import Violations, day_window, reference, required_id
from his.scheduling import store
from his.scheduling.care_events import appointment_changed
from his.scheduling.check_in import checked_in
from his.scheduling.mapping import (
    APPOINTMENT_STATUS,
    appointment_to_proto,
    schedule_to_proto,
    slot_to_proto,
)
from his.scheduling.patient_states import CONSUMES, require_bookable
from his.scheduling.research import ResearchAppointments
from his.scheduling.tables import SCHEMA
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his.scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc
from his.scheduling.validation import MAX_ARRIVE_SPAN, MAX_REASON, plan_slots
from his_client import HisClients
from his_client.patient import privacy_consent

Context = grpc.aio.ServicerContext[Any, Any]
_APPOINTMENT = pb.Appointment.DESCRIPTOR.full_name


class SchedulingService(pb_grpc.SchedulingServiceServicer):
    """Schedules, slots and appointments over the `scheduling` schema."""

    def __init__(self, resources: ServiceResources) -> None:
        self._db: Database = resources.database
        self._clients: HisClients = resources.clients
        self._pages = PageTokens(resources.config.page_token_key)
        self._access = resources.access
        self._research = ResearchAppointments(resources)
        self._outbox = resources.outbox

    # --- access ------------------------------------------------------------------------------

    def _facts(
        self,
        patient: str,
        department_id: uuid.UUID,
        practitioner_id: Any,
        consents: dict[str, str] | None = None,
    ) -> Facts:
        """What the policy needs about an appointment (or a booking into a slot); `consents`
        remembers consent states across the records of one list."""

        async def consent() -> str:
            if consents is None:
                return await self._privacy_consent(patient)
            if patient not in consents:
                consents[patient] = await self._privacy_consent(patient)
            return consents[patient]

        caller = identity.current_or_none()
        return Facts(
            patient=patient,
            department=f"departments/{department_id}",
            under_care=bool(
                caller and practitioner_id and caller.subject == f"staff/{practitioner_id}"
            ),
            consent=consent,
        )

    def _appointment_facts(self, row: Any, consents: dict[str, str] | None = None) -> Facts:
        return self._facts(
            f"patients/{row.patient_id}", row.department_id, row.practitioner_id, consents
        )

    async def _privacy_consent(self, patient: str) -> str:
        return await privacy_consent(self._clients, patient)

    async def _find_appointment(self, appointment_id: uuid.UUID) -> Any:
        async with self._db.read() as session:
            try:
                return await store.get_appointment(session, appointment_id)
            except NotFound:
                return None

    async def _audit(self, action: str, permit: Permit, row: Any) -> None:
        await self._access.record(
            action,
            permit,
            patient=f"patients/{row.patient_id}",
            resource_name=f"appointments/{row.id}",
            resource_type=_APPOINTMENT,
        )

    async def _changed(self, row: Any) -> None:
        """Store the appointment's AppointmentChanged for the patient service, in the open
        transaction (care_events.py)."""
        if self._outbox is not None:
            await self._outbox.add([appointment_changed(row)])

    # --- schedules ---------------------------------------------------------------------------

    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Context
    ) -> pb.Schedule:
        v = Violations()
        schedule = request.schedule
        if not request.HasField("schedule"):
            v.add("schedule", "is required")
        department_id = v.resource_id(
            "schedule.department", schedule.department, collection="departments"
        )
        practitioner_id = reference(v, "schedule.practitioner", schedule.practitioner, "staff")
        system = v.text(
            "schedule.service_type.system", schedule.service_type.system, max_len=200, required=True
        )
        code = v.text(
            "schedule.service_type.code", schedule.service_type.code, max_len=200, required=True
        )
        display = v.text(
            "schedule.service_type.display", schedule.service_type.display, max_len=200
        )
        horizon = schedule.planning_horizon
        start = end = None
        if not horizon.HasField("start_time"):
            v.add("schedule.planning_horizon.start_time", "is required")
        else:
            start = v.instant("schedule.planning_horizon.start_time", horizon.start_time)
        if horizon.HasField("end_time"):
            end = v.instant("schedule.planning_horizon.end_time", horizon.end_time)
            if start and end and end <= start:
                v.add("schedule.planning_horizon.end_time", "must be after the start")
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        await self._access.require("create", "scheduling.schedule")
        key = RequestKey.of(request, request_id)
        values = {
            "create_request_fingerprint": key.fingerprint,
            "department_id": department_id,
            "practitioner_id": practitioner_id,
            "service_type_system": system,
            "service_type_code": code,
            "service_type_display": display or "",
            "horizon_start": start,
            "horizon_end": end,
        }
        async with self._db.transaction() as session:
            row = await key.create(
                lambda: store.insert_schedule(session, values, request_id),
                lambda used: store.schedule_by_request(session, used),
            )
        return schedule_to_proto(row)

    async def GetSchedule(self, request: pb.GetScheduleRequest, context: Context) -> pb.Schedule:
        schedule_id = required_id("name", request.name, collection="schedules")
        await self._access.require("read", "scheduling.schedule")
        async with self._db.read() as session:
            return schedule_to_proto(await store.get_schedule(session, schedule_id))

    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        department_id = reference(v, "department", request.department, "departments")
        practitioner_id = reference(v, "practitioner", request.practitioner, "staff")
        v.raise_if_any()
        await self._access.require("read", "scheduling.schedule")
        query = repr(("schedules", department_id, practitioner_id))
        keyset = self._pages.keyset(
            request.page_token,
            query=query,
            limit=limit,
            after=lambda c: (c.uuid("d"), c.uuid("i")),
        )
        async with self._db.read() as session:
            rows = await store.list_schedules(
                session,
                department_id=department_id,
                practitioner_id=practitioner_id,
                after=keyset.after,
                limit=keyset.read_limit,
            )
        page = keyset.page(rows, lambda r: {"d": str(r.department_id), "i": str(r.id)})
        return pb.ListSchedulesResponse(
            schedules=[schedule_to_proto(r) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    # --- slots -------------------------------------------------------------------------------

    async def GenerateSlots(
        self, request: pb.GenerateSlotsRequest, context: Context
    ) -> pb.GenerateSlotsResponse:
        v = Violations()
        schedule_id = v.resource_id("parent", request.parent, collection="schedules")
        plan = plan_slots(v, request)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert schedule_id is not None and plan is not None
        await self._access.require("create", "scheduling.slot")
        key = RequestKey.of(request, request_id)
        async with self._db.transaction() as session:
            # The schedule's row lock serialises generations (and their replays) per schedule.
            schedule = await store.get_schedule(session, schedule_id, lock=True)
            earlier = await key.first(
                lambda used: store.generation(session, schedule_id, used),
                stored=lambda row: row.request_fingerprint,
            )
            if earlier is not None:
                rows = await store.generation_slots(session, earlier)
            else:
                rows = await store.create_slots(
                    session, schedule, plan.slots, plan.capacity, key.pair
                )
        return pb.GenerateSlotsResponse(slots=[slot_to_proto(r) for r in rows])

    async def GetSlot(self, request: pb.GetSlotRequest, context: Context) -> pb.Slot:
        slot_id = required_id("name", request.name, collection="slots")
        await self._access.require("read", "scheduling.slot")
        async with self._db.read() as session:
            return slot_to_proto(await store.get_slot(session, slot_id))

    async def ListSlots(
        self, request: pb.ListSlotsRequest, context: Context
    ) -> pb.ListSlotsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        where = store.SlotFilter(
            schedule_id=reference(v, "schedule", request.schedule, "schedules"),
            department_id=reference(v, "department", request.department, "departments"),
            practitioner_id=reference(v, "practitioner", request.practitioner, "staff"),
            window=day_window(v, request),
            only_free=request.only_free,
        )
        v.raise_if_any()
        await self._access.require("read", "scheduling.slot")
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        async with self._db.read() as session:
            rows = await store.list_slots(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
        page = keyset.page(rows, _start_cursor)
        return pb.ListSlotsResponse(
            slots=[slot_to_proto(r) for r in page.rows], next_page_token=page.next_page_token
        )

    async def BlockSlot(self, request: pb.BlockSlotRequest, context: Context) -> pb.Slot:
        v = Violations()
        slot_id = v.resource_id("name", request.name, collection="slots")
        reason = v.text("reason", request.reason, max_len=MAX_REASON, required=True)
        v.raise_if_any()
        assert slot_id is not None
        await self._access.require("update", "scheduling.slot", fields=("block_reason",))
        async with self._db.transaction() as session:
            return slot_to_proto(await store.set_block(session, slot_id, reason))

    async def UnblockSlot(self, request: pb.UnblockSlotRequest, context: Context) -> pb.Slot:
        slot_id = required_id("name", request.name, collection="slots")
        await self._access.require("update", "scheduling.slot", fields=("block_reason",))
        async with self._db.transaction() as session:
            return slot_to_proto(await store.set_block(session, slot_id, None))

    # --- appointments ------------------------------------------------------------------------

    async def BookAppointment(
        self, request: pb.BookAppointmentRequest, context: Context
    ) -> pb.Appointment:
        v = Violations()
        patient_id = v.resource_id("patient", request.patient, collection="patients")
        slot_id = v.resource_id("slot", request.slot, collection="slots")
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert patient_id is not None and slot_id is not None

        def slot_facts(found: Any) -> Facts:
            return self._facts(request.patient, found.department_id, found.practitioner_id)

        # Whether the caller may book into this slot's department decides before anything else.
        permit, slot = await self._access.authorize(
            "create",
            "scheduling.appointment",
            lambda: store.find_slot(self._db, slot_id),
            slot_facts,
        )
        key = RequestKey.of(request, request_id)
        # A replay returns the first booking, even once the slot has filled up since.
        replay = await key.first(lambda used: store.find_booking(self._db, used))
        if replay is not None:
            await self._audit("create", permit, replay)
            return appointment_to_proto(replay)
        if slot is None:
            raise store.not_found(f"slots/{slot_id}")
        # At the morning rush most attempts find the slot already full: refuse those here,
        # before asking the patient service. The UPDATE in store.book stays the real guard.
        problem = store.unbookable(slot, dt.datetime.now(dt.UTC))
        if problem is not None:
            raise problem
        await require_bookable(self._db, self._clients, patient_id, request.patient)
        try:
            async with self._db.driver_transaction() as connection:
                row = await store.book(connection, patient_id, slot_id, key.pair)
                await self._audit("create", permit, row)
                # The patient service learns of the care relationship (care_events.py).
                await self._changed(row)
        except (FailedPrecondition, asyncpg.IntegrityConstraintViolationError) as error:
            # A concurrent replay of this request may have taken the place first: it is the answer.
            replay = await key.first(lambda used: store.find_booking(self._db, used))
            if replay is not None:
                await self._audit("create", permit, replay)
                return appointment_to_proto(replay)
            if isinstance(error, asyncpg.IntegrityConstraintViolationError):
                raise _booking_conflict(error) from None
            raise
        return appointment_to_proto(row)

    async def GetAppointment(
        self, request: pb.GetAppointmentRequest, context: Context
    ) -> pb.Appointment:
        appointment_id = required_id("name", request.name, collection="appointments")
        permit, row = await self._access.authorize(
            "read",
            "scheduling.appointment",
            lambda: self._find_appointment(appointment_id),
            self._appointment_facts,
        )
        if row is None:
            raise store.not_found(f"appointments/{appointment_id}")
        await self._audit("read", permit, row)
        return appointment_to_proto(row)

    async def ListAppointments(
        self, request: pb.ListAppointmentsRequest, context: Context
    ) -> pb.ListAppointmentsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        arrived = None
        if request.HasField("arrive_period"):
            # A period bounds the list on its own (billing's reconciliation asks the whole
            # hospital's check-ins): both ends, a month at most.
            arrived = v.period("arrive_period", request.arrive_period, max_span=MAX_ARRIVE_SPAN)
        elif not (request.patient or request.practitioner or request.department):
            v.add(
                "patient", "one of patient, practitioner, department or arrive_period is required"
            )
        statuses = []
        for index, status in enumerate(request.statuses):
            number = v.enum(f"statuses[{index}]", status, pb.AppointmentStatus.DESCRIPTOR)
            if number:
                statuses.append(APPOINTMENT_STATUS.text(number))
        where = store.AppointmentFilter(
            patient_id=reference(v, "patient", request.patient, "patients"),
            practitioner_id=reference(v, "practitioner", request.practitioner, "staff"),
            department_id=reference(v, "department", request.department, "departments"),
            window=day_window(v, request),
            statuses=tuple(sorted(set(statuses))),
            arrived=arrived,
        )
        v.raise_if_any()
        caller = identity.current_or_none()
        if caller is not None and caller.is_patient:
            # A signed-in patient lists their own appointments by naming themselves as `patient`:
            # another patient's (or none, with only a department or period) is refused outright,
            # rather than scanning others' rows to leave them all out.
            await self._access.require(
                "read", "scheduling.appointment", own=request.patient == caller.subject
            )
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        # Appointments the caller may not see are left out (visible_page).
        if not self._access.could_ever("read", "scheduling.appointment"):
            return pb.ListAppointmentsResponse()  # the same answer whatever exists
        consents: dict[str, str] = {}

        async def read(after: TimeAndId | None, batch: int) -> Sequence[Any]:
            async with self._db.read() as session:
                return await store.list_appointments(session, where, after=after, limit=batch)

        async def decide(rows: Sequence[Any]) -> list[tuple[Any, Permit]]:
            return await self._access.filter(
                "read",
                "scheduling.appointment",
                rows,
                lambda row: self._appointment_facts(row, consents),
            )

        page = await visible_page(keyset, read, decide, lambda row: (row.start_time, row.id))
        await self._access.record_each(
            "read",
            [(p, f"patients/{r.patient_id}", f"appointments/{r.id}") for r, p in page.rows],
            _APPOINTMENT,
        )
        return pb.ListAppointmentsResponse(
            appointments=[appointment_to_proto(r) for r, _ in page.rows],
            next_page_token=page.next_page_token,
        )

    async def CancelAppointment(
        self, request: pb.CancelAppointmentRequest, context: Context
    ) -> pb.Appointment:
        v = Violations()
        appointment_id = v.resource_id("name", request.name, collection="appointments")
        reason = v.text("reason", request.reason, max_len=MAX_REASON, required=True)
        v.raise_if_any()
        assert appointment_id is not None
        return await self._transition(
            appointment_id, "cancelled", request.etag, reason, fields=("status", "cancel_reason")
        )

    async def CheckInAppointment(
        self, request: pb.CheckInAppointmentRequest, context: Context
    ) -> pb.Appointment:
        return await self._transition(
            required_id("name", request.name, collection="appointments"), "arrived", request.etag
        )

    async def MarkNoShow(self, request: pb.MarkNoShowRequest, context: Context) -> pb.Appointment:
        return await self._transition(
            required_id("name", request.name, collection="appointments"), "noshow", request.etag
        )

    async def CompleteAppointment(
        self, request: pb.CompleteAppointmentRequest, context: Context
    ) -> pb.Appointment:
        return await self._transition(
            required_id("name", request.name, collection="appointments"), "fulfilled", request.etag
        )

    async def _transition(
        self,
        appointment_id: uuid.UUID,
        to: str,
        etag: str,
        reason: str | None = None,
        *,
        fields: Sequence[str] = ("status",),
    ) -> pb.Appointment:
        # `fields` are what the transition changes: a cancellation also sets cancel_reason, which
        # is how the policy tells the one change a patient may make from the desk's.
        permit, found = await self._access.authorize(
            "update",
            "scheduling.appointment",
            lambda: self._find_appointment(appointment_id),
            self._appointment_facts,
            fields=fields,
        )
        if found is None:
            raise store.not_found(f"appointments/{appointment_id}")
        async with self._db.transaction() as session:
            if to == "arrived":
                before = await store.get_appointment(session, appointment_id, lock=True)
            row = await store.transition(session, appointment_id, to, etag=etag, reason=reason)
            await self._audit("update", permit, row)
            await self._changed(row)
            if to == "arrived" and before.status != "arrived" and self._outbox is not None:
                # The visit's encounter (emr) and its registration charge (billing) follow
                # through the outbox (check_in.py).
                await self._outbox.add(checked_in(row))
        return appointment_to_proto(row)

    async def ListResearchAppointments(
        self, request: pb.ListResearchAppointmentsRequest, context: Context
    ) -> pb.ListResearchAppointmentsResponse:
        return await self._research.page(request)

    async def DeliverEvents(
        self, request: pb.DeliverEventsRequest, context: Context
    ) -> pb.DeliverEventsResponse:
        outcome = await apply_events(self._db, SCHEMA, request.events, CONSUMES)
        return pb.DeliverEventsResponse(applied=outcome.applied, duplicates=outcome.duplicates)

    # --- paging ------------------------------------------------------------------------------


def _start_cursor(row: Any) -> dict[str, Any]:
    """The cursor after a slot or appointment, in (start time, id) order."""
    return time_and_id_values(row.start_time, row.id)


def _booking_conflict(
    error: asyncpg.IntegrityConstraintViolationError,
) -> FailedPrecondition | asyncpg.IntegrityConstraintViolationError:
    """What a constraint a booking ran into means; any other violation stays itself (INTERNAL)."""
    if error.sqlstate == EXCLUSION_VIOLATION:
        return FailedPrecondition(
            "the patient already has an appointment at an overlapping time",
            reason="PATIENT_DOUBLE_BOOKED",
        )
    if error.sqlstate == CHECK_VIOLATION:
        return FailedPrecondition("the slot is fully booked", reason="SLOT_FULL")
    return error
