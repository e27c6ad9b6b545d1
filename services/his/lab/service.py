"""The LabService servicer: validate → authorize (laboratory, ordering team) → ask other services
→ one transaction (change + audit event + domain event in the outbox) → respond.

Specimens and reports are checked against the laboratory's own copy of the lab orders, kept up to
date by the orders service's ServiceRequestChanged events (DeliverEvents): nothing here waits on
the orders service. Every read and write of a specimen, order or report is patient data: it is
authorized through the policy (lab technicians by laboratory membership, clinicians by the ordering
team and care, with consent) and audited.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from his.base import identity
from his.base.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.lab import store
from his.lab.interpretation import CRITICAL, age_in_days, choose, interpret
from his.lab.issued import issued
from his.lab.mapping import (
    LOINC,
    REPORT_STATUS,
    SPECIMEN_STATUS,
    critical_to_proto,
    observation_name,
    order_name,
    order_to_proto,
    report_name,
    report_to_proto,
    specimen_name,
    specimen_to_proto,
)
from his.lab.v1 import lab_service_pb2 as pb
from his.lab.v1 import lab_service_pb2_grpc as pb_grpc
from his.lab.validation import (
    MAX_RESULTS,
    Result,
    conclusion,
    extra_codes,
    ids,
    new_specimen,
    reason,
    results,
)
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.access import Facts, Permit
from his.runtime.database import UNIQUE_VIOLATION, Database, integrity_violation
from his.runtime.idempotency import RequestKey
from his.runtime.inbox import Consumes, apply_events, consuming
from his.runtime.outbox import Outbox
from his.runtime.pagination import (
    PageTokens,
    TimeAndId,
    time_and_id,
    time_and_id_values,
    visible_page,
)
from his.runtime.server import ServiceResources
from his.runtime.validation import Violations, reference, required_child_id, required_id
from his_client import HisClients, UpstreamError
from his_client.patient import privacy_consent, require_existing

Context = grpc.aio.ServicerContext[Any, Any]
SCHEMA = "lab"
_SPECIMEN = pb.Specimen.DESCRIPTOR.full_name
_REPORT = pb.DiagnosticReport.DESCRIPTOR.full_name
_OBSERVATION = pb.Observation.DESCRIPTOR.full_name
_ORDER = orders_pb.ServiceRequest.DESCRIPTOR.full_name
_CLINICIANS = frozenset({"DOCTOR", "NURSE"})
_SEX = {
    patient_pb.ADMINISTRATIVE_GENDER_MALE: "male",
    patient_pb.ADMINISTRATIVE_GENDER_FEMALE: "female",
}
# A report holds at most this many results (RecordObservations adds reflex tests).
_RELEASED = ("final", "amended")
# A list asks the patient service for at most this many consents at once.
CONSENTS_AT_ONCE = 16


def _caller_departments() -> tuple[uuid.UUID, ...] | None:
    """The departments of a staff caller (lists show only their laboratories); None when no
    person is behind the call (access off, or a service)."""
    principal = identity.current_or_none()
    if principal is None or not principal.is_staff:
        return None
    return tuple(sorted(uuid.UUID(d.removeprefix("departments/")) for d in principal.departments))


@dataclass(frozen=True)
class _Labelled:
    """What the policy needs of a record of one laboratory: its patient and laboratory."""

    patient_id: uuid.UUID
    laboratory_id: uuid.UUID | None


async def _found(value: Any) -> Any:
    return value


class LabService(pb_grpc.LabServiceServicer):
    """Lab orders (the copy), specimens and diagnostic reports over the `lab` schema."""

    def __init__(self, resources: ServiceResources) -> None:
        self._db: Database = resources.database
        self._clients: HisClients = resources.clients
        self._pages = PageTokens(resources.config.page_token_key)
        self._access = resources.access
        self._outbox: Outbox | None = resources.outbox
        self._consumes = consuming(
            Consumes("orders", orders_pb.ServiceRequestChanged, self._apply_order)
        )

    # --- access ------------------------------------------------------------------------------

    async def _consent(self, patient: str, seen: dict[str, str] | None = None) -> str:
        """The patient's privacy consent; `seen` remembers answers for the rest of one call (a
        list asks once per patient, not once per row)."""
        if seen is not None and patient in seen:
            return seen[patient]
        state = await privacy_consent(self._clients, patient, missing="none")
        if seen is not None:
            seen[patient] = state
        return state

    async def _consents_of(
        self, patient_ids: set[uuid.UUID], known: dict[str, str]
    ) -> dict[str, str]:
        """The privacy consents of a list's patients not `known` yet, asked at once
        (concurrently) when the caller is a clinician, whose access depends on them; nothing for
        anyone else."""
        principal = identity.current_or_none()
        if principal is None or not principal.roles & _CLINICIANS or not self._access.enabled:
            return {}
        names = sorted({f"patients/{p}" for p in patient_ids} - set(known))
        gate = asyncio.Semaphore(CONSENTS_AT_ONCE)

        async def one(name: str) -> str:
            async with gate:
                return await self._consent(name)

        states = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, states, strict=True))

    def _lab_facts(self, record: Any, seen: dict[str, str] | None = None) -> Facts:
        """A record of one laboratory: its technicians are its members; the ordering doctor
        (the order's requester) has the patient in their care."""
        patient = f"patients/{record.patient_id}"
        return Facts(
            patient=patient,
            department=f"departments/{record.laboratory_id}" if record.laboratory_id else "",
            under_care=identity.is_caller(getattr(record, "requester_id", None)),
            consent=lambda: self._consent(patient, seen),
        )

    def _report_facts(
        self, row: Any, *, team_only: bool = False, seen: dict[str, str] | None = None
    ) -> Facts:
        """A report: the laboratory's members (unless `team_only`), the clinicians of the
        ordering team (the ordering doctor's departments when it was opened) and the ordering
        doctor (under their care) may see it."""
        patient = f"patients/{row.patient_id}"
        principal = identity.current_or_none()
        mine = principal.departments if principal is not None else frozenset()
        department = "" if team_only else f"departments/{row.laboratory_id}"
        if department not in mine and principal is not None and principal.roles & _CLINICIANS:
            team = [f"departments/{d}" for d in row.ordering_departments]
            department = next((d for d in team if d in mine), department)
        return Facts(
            patient=patient,
            department=department,
            under_care=identity.is_caller(row.requester_id),
            consent=lambda: self._consent(patient, seen),
        )

    async def _authorize_report(
        self, action: str, report_id: uuid.UUID, *, team_only: bool = False
    ) -> tuple[Permit, Any]:
        async def load() -> Any:
            async with self._db.read() as session:
                return await store.find_report(session, report_id)

        permit, row = await self._access.authorize(
            action,
            "lab.result",
            load,
            lambda r: self._report_facts(r, team_only=team_only),
        )
        if row is None:
            raise store.not_found(report_name(report_id))
        return permit, row

    async def _authorize_specimen(self, action: str, specimen_id: uuid.UUID) -> tuple[Permit, Any]:
        async def load() -> Any:
            async with self._db.read() as session:
                return await store.find_specimen(session, specimen_id)

        permit, row = await self._access.authorize(action, "lab.specimen", load, self._lab_facts)
        if row is None:
            raise store.not_found(specimen_name(specimen_id))
        return permit, row

    async def _authorize_orders(
        self, action: str, resource: str, order_ids: Sequence[uuid.UUID]
    ) -> tuple[Permit, dict[uuid.UUID, Any]]:
        """Allow or refuse work on the laboratory's orders (all of one patient and laboratory):
        FAILED_PRECONDITION for orders not known here (yet), or not of one patient and
        laboratory, once the caller is one who could ever do this."""
        async with self._db.read() as session:
            found = await store.find_orders(session, order_ids)
        if not self._access.could_ever(action, resource):
            await self._access.require(action, resource)  # refuses, audited
        missing = [o for o in order_ids if o not in found]
        if missing:
            store.usable_orders(missing, found)
        rows = [found[o] for o in order_ids]
        if (
            len({(r.patient_id, r.laboratory_id) for r in rows}) != 1
            or rows[0].laboratory_id is None
        ):
            raise FailedPrecondition(
                "the service requests are not all of one patient and one laboratory",
                reason="ORDERS_MISMATCH",
            )
        labelled = _Labelled(rows[0].patient_id, rows[0].laboratory_id)
        permit, _ = await self._access.authorize(
            action, resource, lambda: _found(labelled), self._lab_facts
        )
        return permit, found

    async def _audit(
        self, action: str, permit: Permit, patient_id: uuid.UUID, name: str, kind: str
    ) -> None:
        await self._access.record(
            action, permit, patient=f"patients/{patient_id}", resource_name=name, resource_type=kind
        )

    # --- the copy of the lab orders ----------------------------------------------------------

    async def _apply_order(
        self, session: AsyncSession, event: EventEnvelope, payload: Message
    ) -> None:
        assert isinstance(payload, orders_pb.ServiceRequestChanged)
        await store.apply_order(session, payload.service_request, payload.revision)

    async def DeliverEvents(
        self, request: pb.DeliverEventsRequest, context: Context
    ) -> pb.DeliverEventsResponse:
        outcome = await apply_events(self._db, SCHEMA, request.events, self._consumes)
        return pb.DeliverEventsResponse(applied=outcome.applied, duplicates=outcome.duplicates)

    async def ListLabOrders(
        self, request: pb.ListLabOrdersRequest, context: Context
    ) -> pb.ListLabOrdersResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        laboratory = reference(v, "laboratory", request.laboratory, "departments")
        statuses = [
            v.enum(f"statuses[{i}]", s, orders_pb.ServiceRequestStatus.DESCRIPTOR)
            for i, s in enumerate(request.statuses)
        ]
        priorities = [
            v.enum(f"priorities[{i}]", p, orders_pb.RequestPriority.DESCRIPTOR)
            for i, p in enumerate(request.priorities)
        ]
        patient = reference(v, "patient", request.patient, "patients")
        v.raise_if_any()
        labs = _caller_departments()
        if laboratory is not None:
            labs = (laboratory,) if labs is None or laboratory in labs else ()
        where = store.OrderFilter(
            laboratories=labs,
            statuses=tuple(sorted({s for s in statuses if s})) or (store.ACTIVE,),
            priorities=tuple(sorted({p for p in priorities if p})),
            patient_id=patient,
        )
        keyset = self._pages.keyset(
            request.page_token,
            query=where.fingerprint(),
            limit=limit,
            after=lambda c: (c.integer("p"), c.time("t"), c.uuid("i")),
        )
        if not self._access.could_ever("read", "lab.order") or labs == ():
            return pb.ListLabOrdersResponse()
        async with self._db.read() as session:
            rows = await store.list_orders(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
        seen: dict[str, str] = {}
        visible = await self._access.filter(
            "read", "lab.order", rows, lambda r: self._lab_facts(r, seen)
        )
        page = keyset.page(
            visible,
            lambda item: {
                "p": item[0].priority,
                **time_and_id_values(item[0].order_time, item[0].id),
            },
        )
        await self._access.record_each(
            "read",
            [(p, f"patients/{r.patient_id}", order_name(r.id)) for r, p in page.rows],
            _ORDER,
        )
        return pb.ListLabOrdersResponse(
            service_requests=[order_to_proto(r) for r, _ in page.rows],
            next_page_token=page.next_page_token,
        )

    # --- specimens ---------------------------------------------------------------------------

    async def CreateSpecimen(
        self, request: pb.CreateSpecimenRequest, context: Context
    ) -> pb.Specimen:
        v = Violations()
        if not request.HasField("specimen"):
            raise InvalidArgument.field("specimen", "is required")
        values = new_specimen(v, request.specimen, dt.datetime.now(dt.UTC))
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert values is not None
        permit, _ = await self._authorize_orders("create", "lab.specimen", values.orders)
        key = RequestKey.of(request, request_id)
        try:
            async with self._db.transaction() as session:
                earlier = await key.first(lambda used: store.specimen_by_request(session, used))
                if earlier is not None:
                    row = earlier
                else:
                    # Held against a revocation being applied meanwhile.
                    found = await store.find_orders(session, values.orders, share=True)
                    store.usable_orders(values.orders, found)
                    first = found[values.orders[0]]
                    row = await key.create(
                        lambda: store.insert_specimen(
                            session,
                            {
                                "patient_id": first.patient_id,
                                "laboratory_id": first.laboratory_id,
                                "type_system": request.specimen.specimen_type.system,
                                "type_code": values.type_code,
                                "type_display": values.type_display,
                                "accession_id": values.accession_id,
                                "collect_time": values.collect_time,
                                "collector_id": values.collector_id,
                                "status": "available",
                            },
                            values.orders,
                            key.pair,
                        ),
                        lambda used: store.specimen_by_request(session, used),
                    )
                orders = (await store.orders_of_specimens(session, [row.id]))[row.id]
                await self._audit(
                    "create", permit, row.patient_id, specimen_name(row.id), _SPECIMEN
                )
        except IntegrityError as error:
            if integrity_violation(error) == (UNIQUE_VIOLATION, "specimens_accession_id_key"):
                raise AlreadyExists(
                    "another specimen has this accession id",
                    reason="ACCESSION_ID_TAKEN",
                    metadata={"accession_id": values.accession_id},
                ) from None
            raise
        return specimen_to_proto(row, orders)

    async def GetSpecimen(self, request: pb.GetSpecimenRequest, context: Context) -> pb.Specimen:
        specimen_id = required_id("name", request.name, collection="specimens")
        permit, row = await self._authorize_specimen("read", specimen_id)
        async with self._db.read() as session:
            orders = (await store.orders_of_specimens(session, [row.id]))[row.id]
        await self._audit("read", permit, row.patient_id, specimen_name(row.id), _SPECIMEN)
        return specimen_to_proto(row, orders)

    async def ListSpecimens(
        self, request: pb.ListSpecimensRequest, context: Context
    ) -> pb.ListSpecimensResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        statuses = [
            v.enum(f"statuses[{i}]", s, pb.SpecimenStatus.DESCRIPTOR)
            for i, s in enumerate(request.statuses)
        ]
        if request.accession_id and len(request.accession_id) > 64:
            v.add("accession_id", "must be at most 64 characters")
        where = store.SpecimenFilter(
            laboratories=_caller_departments(),
            patient_id=reference(v, "patient", request.patient, "patients"),
            order_id=reference(v, "service_request", request.service_request, "serviceRequests"),
            accession_id=request.accession_id,
            statuses=tuple(sorted({SPECIMEN_STATUS.text(s) for s in statuses if s})),
        )
        v.raise_if_any()
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        if not self._access.could_ever("read", "lab.specimen") or where.laboratories == ():
            return pb.ListSpecimensResponse()
        seen: dict[str, str] = {}

        async def read(after: TimeAndId | None, batch: int) -> Sequence[Any]:
            async with self._db.read() as session:
                return await store.list_specimens(session, where, after=after, limit=batch)

        async def decide(rows: Sequence[Any]) -> list[tuple[Any, Permit]]:
            return await self._access.filter(
                "read", "lab.specimen", rows, lambda r: self._lab_facts(r, seen)
            )

        # Specimens the caller may not see are passed over, never end a page early.
        page = await visible_page(keyset, read, decide, lambda r: (r.create_time, r.id))
        async with self._db.read() as session:
            orders = await store.orders_of_specimens(session, [r.id for r, _ in page.rows])
        await self._access.record_each(
            "read",
            [(p, f"patients/{r.patient_id}", specimen_name(r.id)) for r, p in page.rows],
            _SPECIMEN,
        )
        return pb.ListSpecimensResponse(
            specimens=[specimen_to_proto(r, orders[r.id]) for r, _ in page.rows],
            next_page_token=page.next_page_token,
        )

    async def RejectSpecimen(
        self, request: pb.RejectSpecimenRequest, context: Context
    ) -> pb.Specimen:
        return await self._close_specimen(request.name, request.reason, "unsatisfactory")

    async def MarkSpecimenEnteredInError(
        self, request: pb.MarkSpecimenEnteredInErrorRequest, context: Context
    ) -> pb.Specimen:
        return await self._close_specimen(request.name, request.reason, "entered_in_error")

    async def _close_specimen(self, name: str, text: str, to: str) -> pb.Specimen:
        v = Violations()
        specimen_id = v.resource_id("name", name, collection="specimens")
        why = reason(v, "reason", text)
        v.raise_if_any()
        assert specimen_id is not None
        permit, _ = await self._authorize_specimen("update", specimen_id)
        async with self._db.transaction() as session:
            row = await store.find_specimen(session, specimen_id, lock=True)
            assert row is not None  # specimens are never deleted
            if row.status != to:
                if row.status == "entered_in_error":
                    raise FailedPrecondition(
                        "the specimen was entered in error", reason="SPECIMEN_ENTERED_IN_ERROR"
                    )
                if await store.specimen_in_report(session, specimen_id):
                    raise FailedPrecondition(
                        "a diagnostic report names the specimen", reason="SPECIMEN_IN_REPORT"
                    )
                column = "reject_reason" if to == "unsatisfactory" else "entered_in_error_reason"
                row = await store.set_specimen_status(
                    session, specimen_id, {"status": to, column: why}
                )
            orders = (await store.orders_of_specimens(session, [row.id]))[row.id]
            await self._audit("update", permit, row.patient_id, specimen_name(row.id), _SPECIMEN)
        return specimen_to_proto(row, orders)

    # --- reports -----------------------------------------------------------------------------

    async def _report_proto(self, session: AsyncSession, row: Any) -> pb.DiagnosticReport:
        specimens_of, results_of = await store.details(session, [row.id])
        return report_to_proto(row, specimens_of[row.id], results_of[row.id])

    async def _patient_sex_and_birth(self, patient: str) -> tuple[str, dt.date | None]:
        """What reference ranges depend on, read as the caller (a lab technician's restricted
        view of the patient)."""
        found = await require_existing(self._clients, patient)
        born = None
        if found.HasField("birth_date") and found.birth_date.year:
            d = found.birth_date
            born = dt.date(d.year, d.month or 1, d.day or 1)
        return _SEX.get(found.gender, "unknown"), born

    async def _ordering_team(self, requester_id: uuid.UUID | None) -> list[uuid.UUID]:
        """The current departments of the ordering doctor (their team)."""
        if requester_id is None:
            return []
        try:
            reply = await self._clients.iam.ListMemberships(
                iam_pb.ListMembershipsRequest(
                    parent=f"staff/{requester_id}", current_only=True, page_size=500
                )
            )
        except UpstreamError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
        return sorted(
            {uuid.UUID(m.department.removeprefix("departments/")) for m in reply.memberships}
        )

    async def CreateDiagnosticReport(
        self, request: pb.CreateDiagnosticReportRequest, context: Context
    ) -> pb.DiagnosticReport:
        v = Violations()
        if not request.HasField("diagnostic_report"):
            raise InvalidArgument.field("diagnostic_report", "is required")
        report = request.diagnostic_report
        order_id = v.resource_id(
            "diagnostic_report.service_request",
            report.service_request,
            collection="serviceRequests",
        )
        specimen_ids = ids(v, "diagnostic_report.specimens", report.specimens, "specimens")
        extra = extra_codes(v, report.results)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert order_id is not None
        permit, found = await self._authorize_orders("create", "lab.result", [order_id])
        key = RequestKey.of(request, request_id)
        async with self._db.read() as session:
            replay = await key.first(lambda used: store.report_by_request(session, used))
            if replay is not None:
                await self._audit(
                    "create", permit, replay.patient_id, report_name(replay.id), _REPORT
                )
                return await self._report_proto(session, replay)
        order = found[order_id]
        store.usable_orders([order_id], found)
        # Ask first (nothing remote under a lock), then one short transaction.
        (sex, born), team = await asyncio.gather(
            self._patient_sex_and_birth(f"patients/{order.patient_id}"),
            self._ordering_team(order.requester_id),
        )
        try:
            async with self._db.transaction() as session:
                found = await store.find_orders(session, [order_id], share=True)
                store.usable_orders([order_id], found)
                order = found[order_id]
                specimens_of = await store.orders_of_specimens(session, specimen_ids)
                for index, specimen_id in enumerate(specimen_ids):
                    specimen = await store.find_specimen(session, specimen_id)
                    if (
                        specimen is None
                        or specimen.status != "available"
                        or order_id not in specimens_of[specimen_id]
                    ):
                        raise FailedPrecondition(
                            "the specimen does not exist, is not AVAILABLE or was not taken for "
                            "the service request",
                            reason="SPECIMEN_NOT_USABLE",
                            metadata={"specimen": specimen_name(specimen_id), "index": str(index)},
                        )
                tests = [
                    (t.code, t.display) for t in await store.expected_tests(session, order.code)
                ]
                tests += [(c, d) for c, d in extra if c not in {t for t, _ in tests}]
                if not tests:
                    raise FailedPrecondition(
                        "the order's code is not in the laboratory's catalogue; name the tests",
                        reason="TEST_NOT_IN_CATALOGUE",
                        metadata={"code": order.code},
                    )
                if len(tests) > MAX_RESULTS:
                    raise InvalidArgument.field(
                        "diagnostic_report.results", f"a report holds at most {MAX_RESULTS} results"
                    )
                values = {
                    "service_request_id": order_id,
                    "patient_id": order.patient_id,
                    "encounter_id": order.encounter_id,
                    "requester_id": order.requester_id,
                    "laboratory_id": order.laboratory_id,
                    "ordering_departments": team,
                    "code_system": order.code_system,
                    "code": order.code,
                    "code_display": order.code_display,
                    "patient_sex": sex,
                    "patient_birth_date": born,
                }
                row = await key.create(
                    lambda: store.insert_report(session, values, specimen_ids, tests, key.pair),
                    lambda used: store.report_by_request(session, used),
                )
                await self._audit("create", permit, row.patient_id, report_name(row.id), _REPORT)
                return await self._report_proto(session, row)
        except IntegrityError as error:
            if integrity_violation(error) == (UNIQUE_VIOLATION, "reports_service_request_id_key"):
                raise AlreadyExists(
                    "the service request already has a report",
                    reason="REPORT_EXISTS",
                    metadata={"service_request": order_name(order_id)},
                ) from None
            raise

    async def GetDiagnosticReport(
        self, request: pb.GetDiagnosticReportRequest, context: Context
    ) -> pb.DiagnosticReport:
        report_id = required_id("name", request.name, collection="diagnosticReports")
        permit, row = await self._authorize_report("read", report_id)
        async with self._db.read() as session:
            result = await self._report_proto(session, row)
        await self._audit("read", permit, row.patient_id, report_name(row.id), _REPORT)
        return result

    async def ListDiagnosticReports(
        self, request: pb.ListDiagnosticReportsRequest, context: Context
    ) -> pb.ListDiagnosticReportsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        statuses = [
            v.enum(f"statuses[{i}]", s, pb.DiagnosticReportStatus.DESCRIPTOR)
            for i, s in enumerate(request.statuses)
        ]
        where = store.ReportFilter(
            patient_id=reference(v, "patient", request.patient, "patients"),
            order_id=reference(v, "service_request", request.service_request, "serviceRequests"),
            statuses=tuple(sorted({REPORT_STATUS.text(s) for s in statuses if s})),
        )
        v.raise_if_any()
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        if not self._access.could_ever("read", "lab.result"):
            return pb.ListDiagnosticReportsResponse()
        seen: dict[str, str] = {}

        async def read(after: TimeAndId | None, batch: int) -> Sequence[Any]:
            async with self._db.read() as session:
                return await store.list_reports(session, where, after=after, limit=batch)

        async def decide(rows: Sequence[Any]) -> list[tuple[Any, Permit]]:
            seen.update(await self._consents_of({r.patient_id for r in rows}, seen))
            return await self._access.filter(
                "read", "lab.result", rows, lambda r: self._report_facts(r, seen=seen)
            )

        # Reports the caller may not see are passed over, never end a page early.
        page = await visible_page(keyset, read, decide, lambda r: (r.create_time, r.id))
        async with self._db.read() as session:
            specimens_of, results_of = await store.details(session, [r.id for r, _ in page.rows])
        await self._access.record_each(
            "read",
            [(p, f"patients/{r.patient_id}", report_name(r.id)) for r, p in page.rows],
            _REPORT,
        )
        return pb.ListDiagnosticReportsResponse(
            diagnostic_reports=[
                report_to_proto(r, specimens_of[r.id], results_of[r.id]) for r, _ in page.rows
            ],
            next_page_token=page.next_page_token,
        )

    async def ListDiagnosticReportVersions(
        self, request: pb.ListDiagnosticReportVersionsRequest, context: Context
    ) -> pb.ListDiagnosticReportVersionsResponse:
        report_id = required_id("name", request.name, collection="diagnosticReports")
        permit, row = await self._authorize_report("read", report_id)
        async with self._db.read() as session:
            bodies = await store.versions(session, report_id)
        await self._audit("read", permit, row.patient_id, report_name(row.id), _REPORT)
        return pb.ListDiagnosticReportVersionsResponse(
            diagnostic_reports=[pb.DiagnosticReport.FromString(b) for b in bodies]
        )

    async def _computed(
        self, session: AsyncSession, report: Any, given: Sequence[Result], field: str
    ) -> list[dict[str, Any]]:
        """Each result's stored values: the catalogue's range for this patient and the computed
        interpretation; INVALID_ARGUMENT for a unit other than the catalogue's."""
        codes = [r.code for r in given]
        catalogue = await store.tests(session, codes)
        limits_of = await store.ranges(session, codes)
        age = age_in_days(report.patient_birth_date, report.create_time.date())
        v = Violations()
        computed: list[dict[str, Any]] = []
        for index, result in enumerate(given):
            test = catalogue.get(result.code)
            if test is not None and result.number is not None and result.unit != test.unit:
                v.add(
                    f"{field}[{index}].value_quantity.unit", f"must be {test.unit!r} for this test"
                )
            limits = choose(limits_of.get(result.code, []), report.patient_sex, age)
            numeric = result.number is not None and limits is not None
            computed.append(
                {
                    "code_display": test.display if test is not None else result.display,
                    "value_number": result.number,
                    "value_unit": result.unit,
                    "value_text": result.text,
                    "range_low": limits.low if numeric and limits else None,
                    "range_high": limits.high if numeric and limits else None,
                    "range_text": None,
                    "interpretation": (
                        interpret(result.number, limits)
                        if result.number is not None
                        else pb.OBSERVATION_INTERPRETATION_UNSPECIFIED
                    ),
                    "note": result.note,
                }
            )
        v.raise_if_any()
        return computed

    async def _active_order(self, session: AsyncSession, report: Any) -> None:
        found = await store.find_orders(session, [report.service_request_id], share=True)
        store.usable_orders([report.service_request_id], found)

    async def RecordObservations(
        self, request: pb.RecordObservationsRequest, context: Context
    ) -> pb.DiagnosticReport:
        v = Violations()
        report_id = v.resource_id("parent", request.parent, collection="diagnosticReports")
        given = results(v, "observations", request.observations, amend=False)
        v.raise_if_any()
        assert report_id is not None
        permit, _ = await self._authorize_report("update", report_id)
        async with self._db.transaction() as session:
            report = await store.find_report(session, report_id, lock=True)
            assert report is not None  # reports are never deleted
            if report.status in _RELEASED:
                raise FailedPrecondition(
                    "the report is released; use AmendReport", reason="REPORT_RELEASED"
                )
            await self._active_order(session, report)
            _, results_of = await store.details(session, [report_id])
            stored = {r.code: r for r in results_of[report_id]}
            new_codes = {r.code for r in given} - set(stored)
            if len(stored) + len(new_codes) > MAX_RESULTS:
                raise InvalidArgument.field(
                    "observations", f"a report holds at most {MAX_RESULTS} results"
                )
            changed = False
            for result, values in zip(
                given, await self._computed(session, report, given, "observations"), strict=True
            ):
                values["status"] = "cancelled" if result.cancelled else "preliminary"
                before = stored.get(result.code)
                if before is None:
                    await store.add_observation(
                        session,
                        report_id,
                        code_system=LOINC,
                        code=result.code,
                        **values,
                    )
                    changed = True
                elif any(getattr(before, k) != values[k] for k in values if k != "code_display"):
                    await store.set_observation(session, before.id, **values)
                    changed = True
            if changed or report.status == "registered":
                report = await store.set_report(session, report_id, status="preliminary")
            await self._audit("update", permit, report.patient_id, report_name(report_id), _REPORT)
            return await self._report_proto(session, report)

    async def _release(
        self, session: AsyncSession, report: Any, critical_ids: set[uuid.UUID]
    ) -> pb.DiagnosticReport:
        """Keeps the version just released, lists its critical results for the ordering doctor
        and stores the DiagnosticReportIssued event: all in the caller's transaction."""
        result = await self._report_proto(session, report)
        await store.keep_version(
            session,
            report.id,
            report.released_version,
            result.SerializeToString(deterministic=True),
            report.issue_time,
        )
        await store.add_critical(
            session,
            [
                {
                    "observation_id": uuid.UUID(o.name.rsplit("/", 1)[1]),
                    "report_id": report.id,
                    "report_version": report.released_version,
                    "requester_id": report.requester_id,
                    "body": o.SerializeToString(deterministic=True),
                    "issue_time": report.issue_time,
                }
                for o in result.results
                if o.interpretation in CRITICAL
                and uuid.UUID(o.name.rsplit("/", 1)[1]) in critical_ids
            ],
        )
        if self._outbox is not None:
            await self._outbox.add([issued(result, report.revision)])
        return result

    async def FinalizeReport(
        self, request: pb.FinalizeReportRequest, context: Context
    ) -> pb.DiagnosticReport:
        v = Violations()
        report_id = v.resource_id("name", request.name, collection="diagnosticReports")
        said = conclusion(v, "conclusion", request.conclusion)
        v.raise_if_any()
        assert report_id is not None
        permit, _ = await self._authorize_report("update", report_id)
        async with self._db.transaction() as session:
            report = await store.find_report(session, report_id, lock=True)
            assert report is not None
            if report.status == "final" and report.conclusion == said:
                await self._audit(
                    "update", permit, report.patient_id, report_name(report_id), _REPORT
                )
                return await self._report_proto(session, report)
            if report.status in _RELEASED:
                raise FailedPrecondition(
                    "the report is already released; use AmendReport", reason="REPORT_RELEASED"
                )
            store.check_etag(request.etag, report.version)
            await self._active_order(session, report)
            _, results_of = await store.details(session, [report_id])
            pending = [r for r in results_of[report_id] if r.status == "registered"]
            if pending:
                raise FailedPrecondition(
                    "a result is still REGISTERED",
                    reason="RESULTS_PENDING",
                    metadata={"code": pending[0].code},
                )
            released = [r.id for r in results_of[report_id] if r.status == "preliminary"]
            for observation_id in released:
                await store.set_observation(session, observation_id, status="final")
            report = await store.set_report(
                session,
                report_id,
                status="final",
                conclusion=said,
                issue_time=dt.datetime.now(dt.UTC),
                performer_id=identity.caller_staff_id_or_nobody(),
                released_version=1,
            )
            result = await self._release(session, report, set(released))
            await self._audit("update", permit, report.patient_id, report_name(report_id), _REPORT)
        return result

    async def AmendReport(
        self, request: pb.AmendReportRequest, context: Context
    ) -> pb.DiagnosticReport:
        v = Violations()
        report_id = v.resource_id("name", request.name, collection="diagnosticReports")
        why = reason(v, "reason", request.reason)
        said = conclusion(v, "conclusion", request.conclusion)
        given = results(v, "observations", request.observations, amend=True)
        if not said and not request.observations:
            v.add("observations", "is required when no conclusion is given")
        v.raise_if_any()
        assert report_id is not None
        permit, _ = await self._authorize_report("update", report_id)
        async with self._db.transaction() as session:
            report = await store.find_report(session, report_id, lock=True)
            assert report is not None
            if report.status not in _RELEASED:
                raise FailedPrecondition(
                    "the report is not released; use RecordObservations and FinalizeReport",
                    reason="REPORT_NOT_RELEASED",
                )
            _, results_of = await store.details(session, [report_id])
            stored = {r.code: r for r in results_of[report_id]}
            for index, result in enumerate(given):
                if result.code not in stored:
                    raise FailedPrecondition(
                        "the code is not in the report",
                        reason="CODE_NOT_IN_REPORT",
                        metadata={"field": f"observations[{index}].code"},
                    )
            changes: list[tuple[uuid.UUID, dict[str, Any]]] = []
            corrected: set[uuid.UUID] = set()
            computed = await self._computed(session, report, given, "observations")
            for result, values in zip(given, computed, strict=True):
                before = stored[result.code]
                value_keys = ("value_number", "value_unit", "value_text")
                if any(getattr(before, k) != values[k] for k in value_keys):
                    values["status"] = "corrected"
                    corrected.add(before.id)
                elif before.note != values["note"]:
                    values["status"] = "amended"
                else:
                    continue
                changes.append((before.id, values))
            if not changes and (not said or said == report.conclusion):
                await self._audit(
                    "update", permit, report.patient_id, report_name(report_id), _REPORT
                )
                return await self._report_proto(session, report)
            store.check_etag(request.etag, report.version)
            for observation_id, values in changes:
                await store.set_observation(session, observation_id, **values)
            report = await store.set_report(
                session,
                report_id,
                status="amended",
                conclusion=said or report.conclusion,
                issue_time=dt.datetime.now(dt.UTC),
                performer_id=identity.caller_staff_id_or_nobody(),
                amend_reason=why,
                released_version=report.released_version + 1,
            )
            released = await self._release(session, report, corrected)
            await self._audit("update", permit, report.patient_id, report_name(report_id), _REPORT)
        return released

    # --- critical results --------------------------------------------------------------------

    async def ListCriticalResults(
        self, request: pb.ListCriticalResultsRequest, context: Context
    ) -> pb.ListCriticalResultsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        caller = identity.caller_staff_id_or_nobody()
        keyset = self._pages.keyset(
            request.page_token, query=f"critical {caller}", limit=limit, after=time_and_id
        )
        if not self._access.could_ever("execute", "lab.result"):
            # Only doctors are told of critical results: anyone else's list is empty.
            return pb.ListCriticalResultsResponse()
        reports: dict[Any, Any] = {}
        seen: dict[str, str] = {}

        async def read(after: TimeAndId | None, batch: int) -> Sequence[Any]:
            async with self._db.read() as session:
                rows = await store.open_criticals(session, caller, after=after, limit=batch)
                wanted = list({r.report_id for r in rows} - set(reports))
                reports.update(await store.reports_by_id(session, wanted))
            return rows

        async def decide(rows: Sequence[Any]) -> list[tuple[Any, Permit]]:
            patients = {reports[r.report_id].patient_id for r in rows}
            seen.update(await self._consents_of(patients, seen))
            return await self._access.filter(
                "read",
                "lab.result",
                rows,
                lambda r: self._report_facts(reports[r.report_id], seen=seen),
            )

        # Results the caller may not see are passed over, never end a page early.
        page = await visible_page(keyset, read, decide, lambda r: (r.issue_time, r.id))
        await self._access.record_each(
            "read",
            [
                (p, f"patients/{reports[r.report_id].patient_id}", _observation(r))
                for r, p in page.rows
            ],
            _OBSERVATION,
        )
        return pb.ListCriticalResultsResponse(
            critical_results=[critical_to_proto(r, reports[r.report_id]) for r, _ in page.rows],
            next_page_token=page.next_page_token,
        )

    async def AcknowledgeCriticalResult(
        self, request: pb.AcknowledgeCriticalResultRequest, context: Context
    ) -> pb.CriticalResult:
        report_id, observation_id = required_child_id(
            "name", request.name, parent="diagnosticReports", collection="observations"
        )
        permit, report = await self._authorize_report("execute", report_id, team_only=True)
        name = observation_name(report_id, observation_id)
        async with self._db.transaction() as session:
            rows = await store.criticals_of(session, observation_id, lock=True)
            if not rows or rows[0].report_id != report_id:
                raise store.not_found(name)
            if any(r.acknowledge_time is None for r in rows):
                await store.acknowledge(
                    session, observation_id, identity.caller_staff_id_or_nobody()
                )
                rows = await store.criticals_of(session, observation_id)
            await self._audit("execute", permit, report.patient_id, name, _OBSERVATION)
        return critical_to_proto(rows[-1], report)


def _observation(row: Any) -> str:
    return observation_name(row.report_id, row.observation_id)


__all__ = ["LabService"]
