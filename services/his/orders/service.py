"""The OrdersService servicer: validate → authorize (the order's encounter facts) → ask other
services → one transaction (change + Changed event + audit event in the outbox) → respond.

Lab orders and prescriptions live the same life (create, hold, resume, revoke or cancel, enter in
error, complete), so one set of helpers serves both through an `_Kind`; what differs (validation,
the peer asked before writing, the event's destination) stays in the rpc.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from sqlalchemy import Row, Table

from his.base import identity
from his.base.errors import FailedPrecondition, PermissionDenied
from his.emr.mapping import ENCOUNTER_CLASS, POLICY_CLASS
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.orders import events, store
from his.orders.mapping import (
    medication_request_changed,
    medication_request_name,
    medication_request_to_proto,
    service_request_changed,
    service_request_name,
    service_request_to_proto,
)
from his.orders.tables import SCHEMA, medication_requests, service_requests
from his.orders.v1 import orders_service_pb2 as pb
from his.orders.v1 import orders_service_pb2_grpc as pb_grpc
from his.orders.validation import (
    MEDICATION_UPDATABLE,
    medication_fields,
    medication_request_statuses,
    new_medication_request,
    new_service_request,
    reason,
    service_request_statuses,
)

# Named apart: `GetMedicationRequest` is also an orders rpc (tests/mesh/test_calls.py scans calls).
from his.pharmacy.v1.pharmacy_service_pb2 import GetMedicationRequest as MedicationLookup
from his.runtime.access import ALLOWED, Facts, Permit
from his.runtime.database import Database
from his.runtime.idempotency import RequestKey
from his.runtime.inbox import apply_events
from his.runtime.outbox import Outbox, Outgoing
from his.runtime.pagination import PageTokens, TimeAndId, time_and_id, visible_page
from his.runtime.server import ServiceResources
from his.runtime.validation import Violations, reference, require_paths, required_id
from his_client import HisClients, UpstreamError
from his_client.patient import privacy_consent, require_active

Context = grpc.aio.ServicerContext[Any, Any]
_OPEN_ENCOUNTER = (emr_pb.ENCOUNTER_STATUS_ARRIVED, emr_pb.ENCOUNTER_STATUS_IN_PROGRESS)


@dataclass(frozen=True)
class _Kind:
    """One kind of order: its table, policy class, names, message and Changed event."""

    table: Table
    policy_class: str
    collection: str
    resource_type: str
    # The column of the doctor who placed it (requester / prescriber).
    author_column: str
    # The service whose work completes it, and whose events it takes.
    fulfiller: str
    name: Callable[[uuid.UUID], str]
    to_proto: Callable[[Any], Any]
    changed: Callable[[Any], list[Outgoing]]


SERVICE_REQUEST = _Kind(
    table=service_requests,
    policy_class="orders.lab_order",
    collection="serviceRequests",
    resource_type=pb.ServiceRequest.DESCRIPTOR.full_name,
    author_column="requester_id",
    fulfiller="lab",
    name=service_request_name,
    to_proto=service_request_to_proto,
    changed=service_request_changed,
)
MEDICATION_REQUEST = _Kind(
    table=medication_requests,
    policy_class="orders.medication_order",
    collection="medicationRequests",
    resource_type=pb.MedicationRequest.DESCRIPTOR.full_name,
    author_column="prescriber_id",
    fulfiller="pharmacy",
    name=medication_request_name,
    to_proto=medication_request_to_proto,
    changed=medication_request_changed,
)


@dataclass(frozen=True)
class _Encounter:
    """What an order keeps of its encounter for the policy (also the facts of a proposed one)."""

    patient_id: uuid.UUID
    department_id: uuid.UUID
    attending_id: uuid.UUID | None
    encounter_class: str
    surgical: bool
    author_id: uuid.UUID
    performer_id: uuid.UUID | None = None

    def columns(self) -> dict[str, Any]:
        return {
            "department_id": self.department_id,
            "attending_id": self.attending_id,
            "encounter_class": self.encounter_class,
            "surgical": self.surgical,
        }


class OrdersService(pb_grpc.OrdersServiceServicer):
    """Service requests, medication requests and the events that fulfil them, over `orders`."""

    def __init__(self, resources: ServiceResources) -> None:
        self._db: Database = resources.database
        self._clients: HisClients = resources.clients
        self._pages = PageTokens(resources.config.page_token_key)
        self._access = resources.access
        assert resources.outbox is not None  # every service but audit has one
        self._outbox: Outbox = resources.outbox
        self._consumes = events.consumes(self._access, self._outbox)

    # --- access ------------------------------------------------------------------------------

    def _facts(self, action: str) -> Callable[[Any], Facts]:
        """What the policy needs about an order (a row, or the `_Encounter` of a proposed one).

        A lab technician's department is the laboratory that performs a lab order; for reading,
        an order belongs to that laboratory as well as to the encounter's department."""

        def facts(row: Any) -> Facts:
            patient = f"patients/{row.patient_id}"
            department = f"departments/{row.department_id}"
            performer = getattr(row, "performer_id", None)
            principal = identity.current_or_none()
            if (
                action == "read"
                and performer is not None
                and principal is not None
                and f"departments/{performer}" in principal.departments
            ):
                department = f"departments/{performer}"
            # The doctor who placed a stored order; a proposed one has none yet (whoever asks to
            # place it is not in the patient's care for that alone).
            author = getattr(row, "requester_id", None) or getattr(row, "prescriber_id", None)

            async def consent() -> str:
                return await privacy_consent(self._clients, patient, missing="none")

            return Facts(
                patient=patient,
                department=department,
                encounter_class=row.encounter_class,
                surgical=row.surgical,
                # The doctor who placed the order and the encounter's attending care for the
                # patient wherever they work.
                under_care=identity.is_caller(author) or identity.is_caller(row.attending_id),
                consent=consent,
            )

        return facts

    async def _load(self, kind: _Kind, ident: uuid.UUID) -> Row[Any] | None:
        async with self._db.read() as session:
            return await store.find_order(session, kind.table, ident)

    async def _authorize(
        self, action: str, kind: _Kind, ident: uuid.UUID, fields: tuple[str, ...] = ()
    ) -> tuple[Permit, Row[Any]]:
        """Allow or refuse the caller on one order; NOT_FOUND after that."""
        permit, row = await self._access.authorize(
            action,
            kind.policy_class,
            lambda: self._load(kind, ident),
            self._facts(action),
            fields=fields,
        )
        if row is None:
            raise store.not_found(kind.name(ident))
        return permit, row

    async def _audit(self, action: str, permit: Permit, kind: _Kind, row: Any) -> None:
        await self._access.record(
            action,
            permit,
            patient=f"patients/{row.patient_id}",
            resource_name=kind.name(row.id),
            resource_type=kind.resource_type,
        )

    async def _require_doctor_may(self, kind: _Kind) -> None:
        """Refuse at once (audited) a caller who could never place this kind of order, before
        anything is asked of other services."""
        if not self._access.could_ever("create", kind.policy_class):
            await self._access.require("create", kind.policy_class)

    # --- what other services know ------------------------------------------------------------

    async def _encounter(self, encounter: str) -> emr_pb.Encounter:
        """The encounter, asked as the caller: emr refuses a caller who may not see it with the
        same policy orders decides with, and its reason is passed on."""
        try:
            return await self._clients.emr.GetEncounter(emr_pb.GetEncounterRequest(name=encounter))
        except UpstreamError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition(
                    "the encounter does not exist", reason="ENCOUNTER_NOT_FOUND"
                ) from None
            if error.code() == grpc.StatusCode.PERMISSION_DENIED and error.reason:
                raise PermissionDenied(
                    "the caller may not see the encounter", reason=error.reason
                ) from None
            raise

    @staticmethod
    def _require_open(found: emr_pb.Encounter, patient: str) -> None:
        """FAILED_PRECONDITION unless the encounter is of `patient` and ARRIVED or IN_PROGRESS."""
        if found.patient != patient:
            raise FailedPrecondition(
                "the encounter belongs to another patient", reason="ENCOUNTER_OTHER_PATIENT"
            )
        if found.status not in _OPEN_ENCOUNTER:
            raise FailedPrecondition(
                "orders are placed only in an ARRIVED or IN_PROGRESS encounter",
                reason="ENCOUNTER_NOT_OPEN",
                metadata={"status": emr_pb.EncounterStatus.Name(found.status)},
            )

    async def _placed_in(
        self, kind: _Kind, encounter: str, patient: str, performer_id: uuid.UUID | None = None
    ) -> tuple[Permit, _Encounter]:
        """The patient active, the caller allowed to order on the encounter's facts (the
        facts the new order keeps), and the encounter open."""
        await require_active(
            self._clients, patient, when_merged="place the order on the surviving record"
        )
        found = await self._encounter(encounter)
        attending = found.attending_practitioner
        placed = _Encounter(
            patient_id=uuid.UUID(patient.removeprefix("patients/")),
            department_id=uuid.UUID(found.department.removeprefix("departments/")),
            attending_id=uuid.UUID(attending.removeprefix("staff/")) if attending else None,
            encounter_class=POLICY_CLASS[ENCOUNTER_CLASS.text(found.encounter_class)],
            surgical=found.surgical,
            author_id=identity.caller_staff_id_or_nobody(),
            performer_id=performer_id,
        )
        permit, _ = await self._access.authorize(
            "create", kind.policy_class, lambda: _found(placed), self._facts("create")
        )
        self._require_open(found, patient)
        return permit, placed

    async def _require_lab(self, performer: str) -> None:
        """FAILED_PRECONDITION unless `performer` is an iam department of kind LAB."""
        try:
            found = await self._clients.iam.GetDepartment(
                iam_pb.GetDepartmentRequest(name=performer)
            )
        except UpstreamError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition(
                    "the performer does not exist", reason="PERFORMER_NOT_FOUND"
                ) from None
            raise
        if found.kind != iam_pb.DEPARTMENT_KIND_LAB:
            raise FailedPrecondition(
                "the performer is not a laboratory", reason="PERFORMER_NOT_LAB"
            )

    async def _formulary(self, medication: str, dispense_unit: str | None) -> dict[str, Any]:
        """The ATC code and unit price of an active formulary medication, asked as the caller."""
        try:
            found = await self._clients.pharmacy.GetMedication(MedicationLookup(name=medication))
        except UpstreamError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition(
                    "the medication is not in the formulary", reason="MEDICATION_NOT_FOUND"
                ) from None
            raise
        if not found.active:
            raise FailedPrecondition("the medication is inactive", reason="MEDICATION_INACTIVE")
        if dispense_unit is not None and dispense_unit != found.dispense_unit:
            raise FailedPrecondition(
                f"the medication is dispensed in {found.dispense_unit!r}",
                reason="DISPENSE_UNIT_MISMATCH",
                metadata={"dispense_unit": found.dispense_unit},
            )
        return {
            "atc_system": found.code.system,
            "atc_code": found.code.code,
            "atc_display": found.code.display,
            "price_currency": found.unit_price.currency_code,
            "price_minor": found.unit_price.amount_minor,
        }

    # --- the shared life of orders -------------------------------------------------------------

    async def _create(
        self,
        kind: _Kind,
        request: Message,
        request_id: str | None,
        values: dict[str, Any],
        placed: tuple[Permit, _Encounter],
    ) -> Any:
        permit, facts = placed
        key = RequestKey.of(request, request_id)
        values = {**values, **facts.columns(), kind.author_column: facts.author_id}
        async with self._db.transaction() as session:
            inserted = await store.insert_order(session, kind.table, values, key.pair)
            # None: a concurrent call with the same request id won; its order is the answer.
            row = inserted or await key.taken(
                lambda used: store.order_by_request(session, kind.table, used)
            )
            if inserted is not None:
                await self._outbox.add(kind.changed(inserted))
            await self._audit("create", permit, kind, row)
        return kind.to_proto(row)

    async def _replay(self, kind: _Kind, request: Message, request_id: str | None) -> Any:
        """The order a repeated create made the first time, audited, or None."""
        key = RequestKey.of(request, request_id)
        async with self._db.read() as session:
            earlier = await key.first(
                lambda used: store.order_by_request(session, kind.table, used)
            )
        if earlier is None:
            return None
        permit, row = await self._authorize("read", kind, earlier.id)
        await self._audit("create", permit, kind, row)
        return kind.to_proto(row)

    async def _get(self, kind: _Kind, name: str) -> Any:
        ident = required_id("name", name, collection=kind.collection)
        permit, row = await self._authorize("read", kind, ident)
        await self._audit("read", permit, kind, row)
        return kind.to_proto(row)

    async def _transition(
        self,
        kind: _Kind,
        name: str,
        to: str,
        etag: str,
        *,
        why: str | None = None,
        values: Callable[[str | None], dict[str, Any]] = lambda _: {},
        check: Callable[[Row[Any]], None] = lambda _: None,
    ) -> Any:
        """A status change by a doctor caring for the patient, with its event and audit; `why`
        is the request's reason where the rpc requires one."""
        v = Violations()
        ident = v.resource_id("name", name, collection=kind.collection)
        if why is not None:
            why = reason(v, "reason", why)
        v.raise_if_any()
        assert ident is not None
        permit, _ = await self._authorize("update", kind, ident, ("status",))
        async with self._db.transaction() as session:
            current = await store.get_order(session, kind.table, ident, kind.name(ident))
            if current.status != to:
                check(current)
            changed = await store.transition(
                session, kind.table, current, to, etag=etag, values=values(why)
            )
            row = changed or current
            if changed is not None:
                await self._outbox.add(kind.changed(changed))
            await self._audit("update", permit, kind, row)
        return kind.to_proto(row)

    async def _complete(self, kind: _Kind, name: str, etag: str) -> Any:
        """Completion by the fulfilling service calling as itself (its identity decides, as for
        its events); everyone else hears the policy's answer first, and a person it allows is
        refused all the same: completion is the fulfiller's."""
        ident = required_id("name", name, collection=kind.collection)
        principal = identity.current_or_none()
        if self._access.enabled and (principal is None or principal.service_name != kind.fulfiller):
            await self._authorize("update", kind, ident, ("status",))
            raise PermissionDenied(
                f"only the {kind.fulfiller} service completes an order, through its events",
                reason="COMPLETED_BY_FULFILLER",
            )
        async with self._db.transaction() as session:
            current = await store.get_order(session, kind.table, ident, kind.name(ident))
            changed = await store.transition(session, kind.table, current, "completed", etag=etag)
            if changed is not None:
                await self._outbox.add(kind.changed(changed))
            row = changed or current
            await self._audit("update", Permit(ALLOWED), kind, row)
        return kind.to_proto(row)

    async def _list(
        self, kind: _Kind, request: Any, where: store.OrderFilter, limit: int
    ) -> tuple[list[Any], str]:
        """One page of the orders the caller may see (hidden ones passed over: visible_page)."""
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(kind.table), limit=limit, after=time_and_id
        )
        if not self._access.could_ever("read", kind.policy_class):
            return [], ""

        async def read(after: TimeAndId | None, batch: int) -> Sequence[Any]:
            async with self._db.read() as session:
                return await store.list_orders(session, kind.table, where, after=after, limit=batch)

        async def decide(rows: Sequence[Any]) -> list[tuple[Any, Permit]]:
            return await self._access.filter("read", kind.policy_class, rows, self._facts("read"))

        page = await visible_page(keyset, read, decide, lambda row: (row.create_time, row.id))
        await self._access.record_each(
            "read",
            [(p, f"patients/{r.patient_id}", kind.name(r.id)) for r, p in page.rows],
            kind.resource_type,
        )
        return [kind.to_proto(r) for r, _ in page.rows], page.next_page_token

    # --- service requests ----------------------------------------------------------------------

    async def CreateServiceRequest(
        self, request: pb.CreateServiceRequestRequest, context: Context
    ) -> pb.ServiceRequest:
        v = Violations()
        if not request.HasField("service_request"):
            v.add("service_request", "is required")
        values = new_service_request(v, request.service_request)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        await self._require_doctor_may(SERVICE_REQUEST)
        replay = await self._replay(SERVICE_REQUEST, request, request_id)
        if replay is not None:
            return replay  # type: ignore[no-any-return]
        order = request.service_request
        # Ask first (nothing remote under a lock), then one short transaction.
        placed = await self._placed_in(
            SERVICE_REQUEST, order.encounter, order.patient, values["performer_id"]
        )
        await self._require_lab(order.performer)
        return await self._create(  # type: ignore[no-any-return]
            SERVICE_REQUEST, request, request_id, values, placed
        )

    async def GetServiceRequest(
        self, request: pb.GetServiceRequestRequest, context: Context
    ) -> pb.ServiceRequest:
        return await self._get(SERVICE_REQUEST, request.name)  # type: ignore[no-any-return]

    async def ListServiceRequests(
        self, request: pb.ListServiceRequestsRequest, context: Context
    ) -> pb.ListServiceRequestsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        where = store.OrderFilter(
            patient_id=reference(v, "patient", request.patient, "patients"),
            encounter_id=reference(v, "encounter", request.encounter, "encounters"),
            performer_id=reference(v, "performer", request.performer, "departments"),
            statuses=service_request_statuses(v, "statuses", request.statuses),
            completed=(
                v.period("complete_period", request.complete_period)
                if request.HasField("complete_period")
                else None
            ),
        )
        v.raise_if_any()
        rows, token = await self._list(SERVICE_REQUEST, request, where, limit)
        return pb.ListServiceRequestsResponse(service_requests=rows, next_page_token=token)

    async def RevokeServiceRequest(
        self, request: pb.RevokeServiceRequestRequest, context: Context
    ) -> pb.ServiceRequest:
        return await self._transition(  # type: ignore[no-any-return]
            SERVICE_REQUEST,
            request.name,
            "revoked",
            request.etag,
            why=request.reason,
            values=lambda r: {"revoke_reason": r, "status_reason": None},
        )

    async def HoldServiceRequest(
        self, request: pb.HoldServiceRequestRequest, context: Context
    ) -> pb.ServiceRequest:
        return await self._transition(  # type: ignore[no-any-return]
            SERVICE_REQUEST,
            request.name,
            "on_hold",
            request.etag,
            why=request.reason,
            values=lambda r: {"status_reason": r},
        )

    async def ResumeServiceRequest(
        self, request: pb.ResumeServiceRequestRequest, context: Context
    ) -> pb.ServiceRequest:
        return await self._transition(  # type: ignore[no-any-return]
            SERVICE_REQUEST,
            request.name,
            "active",
            request.etag,
            values=lambda _: {"status_reason": None},
        )

    async def MarkServiceRequestEnteredInError(
        self, request: pb.MarkServiceRequestEnteredInErrorRequest, context: Context
    ) -> pb.ServiceRequest:
        return await self._transition(  # type: ignore[no-any-return]
            SERVICE_REQUEST,
            request.name,
            "entered_in_error",
            request.etag,
            why=request.reason,
            values=lambda r: {"status_reason": r},
        )

    async def CompleteServiceRequest(
        self, request: pb.CompleteServiceRequestRequest, context: Context
    ) -> pb.ServiceRequest:
        return await self._complete(SERVICE_REQUEST, request.name, "")  # type: ignore[no-any-return]

    # --- medication requests -------------------------------------------------------------------

    async def CreateMedicationRequest(
        self, request: pb.CreateMedicationRequestRequest, context: Context
    ) -> pb.MedicationRequest:
        v = Violations()
        if not request.HasField("medication_request"):
            v.add("medication_request", "is required")
        values = new_medication_request(v, request.medication_request)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        await self._require_doctor_may(MEDICATION_REQUEST)
        replay = await self._replay(MEDICATION_REQUEST, request, request_id)
        if replay is not None:
            return replay  # type: ignore[no-any-return]
        order = request.medication_request
        placed = await self._placed_in(MEDICATION_REQUEST, order.encounter, order.patient)
        values.update(await self._formulary(order.medication, values["dispense_unit"]))
        return await self._create(  # type: ignore[no-any-return]
            MEDICATION_REQUEST, request, request_id, values, placed
        )

    async def GetMedicationRequest(
        self, request: pb.GetMedicationRequestRequest, context: Context
    ) -> pb.MedicationRequest:
        return await self._get(MEDICATION_REQUEST, request.name)  # type: ignore[no-any-return]

    async def ListMedicationRequests(
        self, request: pb.ListMedicationRequestsRequest, context: Context
    ) -> pb.ListMedicationRequestsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        where = store.OrderFilter(
            patient_id=reference(v, "patient", request.patient, "patients"),
            encounter_id=reference(v, "encounter", request.encounter, "encounters"),
            statuses=medication_request_statuses(v, "statuses", request.statuses),
        )
        v.raise_if_any()
        rows, token = await self._list(MEDICATION_REQUEST, request, where, limit)
        return pb.ListMedicationRequestsResponse(medication_requests=rows, next_page_token=token)

    async def UpdateMedicationRequest(
        self, request: pb.UpdateMedicationRequestRequest, context: Context
    ) -> pb.MedicationRequest:
        v = Violations()
        order = request.medication_request
        ident = v.resource_id(
            "medication_request.name", order.name, collection="medicationRequests"
        )
        paths = require_paths(v, "update_mask", request.update_mask.paths, MEDICATION_UPDATABLE)
        values = medication_fields(v, order, paths)
        v.raise_if_any()
        assert ident is not None
        # A new drug brings its own code and price: the policy hears of those changes too.
        fields = tuple(paths) + (("medication_code", "unit_price") if "medication" in paths else ())
        permit, row = await self._authorize("update", MEDICATION_REQUEST, ident, fields)
        if self._access.enabled and not identity.is_caller(row.prescriber_id):
            raise PermissionDenied(
                "only the prescriber changes a prescription", reason="NOT_PRESCRIBER"
            )
        unit = values.get("dispense_unit", row.dispense_unit)
        if "medication" in paths:
            values.update(await self._formulary(order.medication, unit))
        elif "dispense_quantity" in paths and unit != row.dispense_unit:
            raise FailedPrecondition(
                f"the medication is dispensed in {row.dispense_unit!r}",
                reason="DISPENSE_UNIT_MISMATCH",
                metadata={"dispense_unit": row.dispense_unit},
            )
        async with self._db.transaction() as session:
            current = await store.get_order(
                session, medication_requests, ident, medication_request_name(ident)
            )
            changed = await store.update_fields(
                session, medication_requests, current, values, order.etag
            )
            await self._outbox.add(medication_request_changed(changed))
            await self._audit("update", permit, MEDICATION_REQUEST, changed)
        return medication_request_to_proto(changed)

    async def CancelMedicationRequest(
        self, request: pb.CancelMedicationRequestRequest, context: Context
    ) -> pb.MedicationRequest:
        return await self._transition(  # type: ignore[no-any-return]
            MEDICATION_REQUEST,
            request.name,
            "cancelled",
            request.etag,
            why=request.reason,
            values=lambda r: {"cancel_reason": r, "status_reason": None},
        )

    async def HoldMedicationRequest(
        self, request: pb.HoldMedicationRequestRequest, context: Context
    ) -> pb.MedicationRequest:
        return await self._transition(  # type: ignore[no-any-return]
            MEDICATION_REQUEST,
            request.name,
            "on_hold",
            request.etag,
            why=request.reason,
            values=lambda r: {"status_reason": r},
        )

    async def ResumeMedicationRequest(
        self, request: pb.ResumeMedicationRequestRequest, context: Context
    ) -> pb.MedicationRequest:
        return await self._transition(  # type: ignore[no-any-return]
            MEDICATION_REQUEST,
            request.name,
            "active",
            request.etag,
            values=lambda _: {"status_reason": None},
        )

    async def MarkMedicationRequestEnteredInError(
        self, request: pb.MarkMedicationRequestEnteredInErrorRequest, context: Context
    ) -> pb.MedicationRequest:
        return await self._transition(  # type: ignore[no-any-return]
            MEDICATION_REQUEST,
            request.name,
            "entered_in_error",
            request.etag,
            why=request.reason,
            values=lambda r: {"status_reason": r},
            check=_nothing_dispensed,
        )

    async def CompleteMedicationRequest(
        self, request: pb.CompleteMedicationRequestRequest, context: Context
    ) -> pb.MedicationRequest:
        return await self._complete(  # type: ignore[no-any-return]
            MEDICATION_REQUEST, request.name, request.etag
        )

    # --- events of the lab and the pharmacy ----------------------------------------------------

    async def DeliverEvents(
        self, request: pb.DeliverEventsRequest, context: Context
    ) -> pb.DeliverEventsResponse:
        outcome = await apply_events(self._db, SCHEMA, request.events, self._consumes)
        return pb.DeliverEventsResponse(applied=outcome.applied, duplicates=outcome.duplicates)


async def _found(value: _Encounter) -> _Encounter:
    return value


def _nothing_dispensed(row: Row[Any]) -> None:
    """A prescription that something was dispensed of was no mistake: it is cancelled instead."""
    if row.dispensed > 0 or row.handed_over > 0:
        raise FailedPrecondition(
            "something has been dispensed of this prescription; cancel it instead",
            reason="ALREADY_DISPENSED",
        )
