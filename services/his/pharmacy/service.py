"""The PharmacyService servicer: validate → authorize → one transaction (change + events in the
outbox) → respond.

The formulary (`pharmacy.medication`) and stock (`pharmacy.stock`) are not patient data; their
writes are audited. Dispenses (`pharmacy.dispense`) are: every read and write is authorized on
the dispense's facts (pharmacists always; doctors and nurses of the encounter's department, its
attending practitioner and the prescriber read them, others only under break-the-glass) and
audited. Dispensing checks the pharmacy's own copy of the prescription
(events.py), never calling orders on the way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from his.base import identity
from his.base.errors import FailedPrecondition, InvalidArgument
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.pharmacy import store
from his.pharmacy.events import CONSUMES, dispense_changed
from his.pharmacy.mapping import (
    DISPENSE_STATUS,
    dispense_name,
    dispense_to_proto,
    medication_name,
    medication_to_proto,
    stock_item_name,
    stock_item_to_proto,
)
from his.pharmacy.tables import SCHEMA
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.pharmacy.v1 import pharmacy_service_pb2_grpc as pb_grpc
from his.pharmacy.validation import (
    MAX_DISPENSE,
    MAX_RECEIVE,
    MEDICATION_UPDATABLE,
    adjustment,
    atc_prefix,
    expiry,
    lot_number,
    medication_changes,
    name_prefix,
    new_medication,
    quantity,
)
from his.runtime.access import Facts, Permit
from his.runtime.database import Database
from his.runtime.idempotency import RequestKey
from his.runtime.inbox import apply_events
from his.runtime.outbox import Outbox
from his.runtime.pagination import (
    Cursor,
    PageTokens,
    TimeAndId,
    time_and_id,
    visible_page,
)
from his.runtime.server import ServiceResources
from his.runtime.validation import (
    Violations,
    full_date,
    reference,
    require_paths,
    required_child_id,
    required_id,
)
from his_client import HisClients, UpstreamError
from his_client.patient import privacy_consent

Context = grpc.aio.ServicerContext[Any, Any]
_MEDICATION = pb.Medication.DESCRIPTOR.full_name
_STOCK_ITEM = pb.StockItem.DESCRIPTOR.full_name
_DISPENSE = pb.MedicationDispense.DESCRIPTOR.full_name


# The roles whose access to a dispense depends on its encounter (policies: care_permissions).
# Encounters asked of emr at once for one page of dispenses.
ENCOUNTERS_AT_ONCE = 16
CLINICIANS = frozenset({"DOCTOR", "NURSE"})


@dataclass(frozen=True)
class Care:
    """A dispense's encounter as emr shows it to the caller: its department and attending
    practitioner (empty and None when emr does not show it)."""

    department: str = ""
    attending: uuid.UUID | None = None


UNSEEN = Care()


def _expiry(cursor: Cursor) -> dt.date:
    """The expiry date of a ListStockItems cursor (a day number), checked like its other values."""
    day = cursor.integer("d")
    if not 1 <= day <= dt.date.max.toordinal():
        raise InvalidArgument.field("page_token", "is not a page token of this list")
    return dt.date.fromordinal(day)


class PharmacyService(pb_grpc.PharmacyServiceServicer):
    """The formulary, stock and dispenses over the `pharmacy` schema."""

    def __init__(self, resources: ServiceResources) -> None:
        self._db: Database = resources.database
        self._clients: HisClients = resources.clients
        self._pages = PageTokens(resources.config.page_token_key)
        self._access = resources.access
        assert resources.outbox is not None  # every service but audit has one
        self._outbox: Outbox = resources.outbox

    def _dispense_facts(
        self, row: Any, care: dict[uuid.UUID, Care], consents: dict[str, str] | None = None
    ) -> Facts:
        """What the policy needs about a dispense, as orders decides about the prescription: its
        patient, the department of its encounter, whether the caller prescribed it or attends
        the encounter, and, when that decides, the patient's privacy consent (`care` and
        `consents` remember lookups for one call). Pharmacists are allowed whatever."""
        caller = identity.caller_staff_id()
        patient = f"patients/{row.patient_id}"
        seen = care.get(row.encounter_id, UNSEEN)
        known = {} if consents is None else consents

        async def consent() -> str:
            if patient not in known:
                known[patient] = await privacy_consent(self._clients, patient, missing="none")
            return known[patient]

        return Facts(
            patient=patient,
            department=seen.department,
            under_care=caller is not None and caller in (row.prescriber_id, seen.attending),
            consent=consent,
        )

    async def _look_up_care(self, rows: list[Any], care: dict[uuid.UUID, Care]) -> None:
        """The encounters of `rows` not yet in `care`, asked of emr on the caller's behalf — for
        a clinician only (DOCTOR or NURSE: their access depends on it, a pharmacist's does not).
        An encounter emr does not show the caller leaves the dispense with no department."""
        principal = identity.current_or_none()
        if principal is None or not principal.is_staff or not principal.roles & CLINICIANS:
            return
        gate = asyncio.Semaphore(ENCOUNTERS_AT_ONCE)

        async def look_up(encounter_id: uuid.UUID) -> None:
            async with gate:
                try:
                    found = await self._clients.emr.GetEncounter(
                        emr_pb.GetEncounterRequest(name=f"encounters/{encounter_id}")
                    )
                except UpstreamError as error:
                    if error.code() not in (
                        grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.NOT_FOUND,
                    ):
                        raise
                    care[encounter_id] = UNSEEN
                    return
            attending = found.attending_practitioner.removeprefix("staff/")
            care[encounter_id] = Care(found.department, uuid.UUID(attending) if attending else None)

        await asyncio.gather(
            *(look_up(e) for e in {row.encounter_id for row in rows} - care.keys())
        )

    async def _audit(
        self, action: str, permit: Permit, name: str, kind: str, patient: str = ""
    ) -> None:
        await self._access.record(
            action, permit, patient=patient, resource_name=name, resource_type=kind
        )

    # --- the formulary -----------------------------------------------------------------------

    async def CreateMedication(
        self, request: pb.CreateMedicationRequest, context: Context
    ) -> pb.Medication:
        v = Violations()
        if not request.HasField("medication"):
            raise InvalidArgument.field("medication", "is required")
        values = new_medication(v, request.medication)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        permit = await self._access.require("create", "pharmacy.medication")
        key = RequestKey.of(request, request_id)
        try:
            async with self._db.transaction() as session:
                row = await key.create(
                    lambda: store.insert_medication(session, values, key.pair),
                    lambda used: store.medication_by_request(session, used),
                )
                await self._audit("create", permit, medication_name(row.id), _MEDICATION)
        except IntegrityError as error:
            async with self._db.read() as session:
                earlier = await key.first(lambda used: store.medication_by_request(session, used))
            if earlier is not None:
                return medication_to_proto(earlier)
            conflict = store.product_taken(error)
            if conflict is not None:
                raise conflict from None
            raise
        return medication_to_proto(row)

    async def GetMedication(
        self, request: pb.GetMedicationRequest, context: Context
    ) -> pb.Medication:
        medication_id = required_id("name", request.name, collection="medications")
        await self._access.require("read", "pharmacy.medication")
        async with self._db.read() as session:
            return medication_to_proto(await store.get_medication(session, medication_id))

    async def ListMedications(
        self, request: pb.ListMedicationsRequest, context: Context
    ) -> pb.ListMedicationsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        prefix = name_prefix(v, "display_name_prefix", request.display_name_prefix)
        atc = atc_prefix(v, "atc_code_prefix", request.atc_code_prefix)
        v.raise_if_any()
        query = repr(("medications", prefix and prefix.lower(), atc, request.include_inactive))
        keyset = self._pages.keyset(
            request.page_token,
            query=query,
            limit=limit,
            after=lambda c: (c.text("n"), c.uuid("i")),
        )
        await self._access.require("read", "pharmacy.medication")
        async with self._db.read() as session:
            rows = await store.list_medications(
                session,
                name_prefix=prefix,
                atc_prefix=atc,
                include_inactive=request.include_inactive,
                after=keyset.after,
                limit=keyset.read_limit,
            )
        page = keyset.page(rows, lambda r: {"n": r.display_name, "i": str(r.id)})
        return pb.ListMedicationsResponse(
            medications=[medication_to_proto(r) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    async def UpdateMedication(
        self, request: pb.UpdateMedicationRequest, context: Context
    ) -> pb.Medication:
        v = Violations()
        medication_id = v.resource_id(
            "medication.name", request.medication.name, collection="medications"
        )
        paths = require_paths(v, "update_mask", request.update_mask.paths, MEDICATION_UPDATABLE)
        values = medication_changes(v, request.medication, paths)
        v.raise_if_any()
        assert medication_id is not None
        permit = await self._access.require("update", "pharmacy.medication", fields=paths)
        try:
            async with self._db.transaction() as session:
                row = await store.update_medication(
                    session, medication_id, values, request.medication.etag
                )
                await self._audit("update", permit, medication_name(row.id), _MEDICATION)
        except IntegrityError as error:
            conflict = store.product_taken(error)
            if conflict is not None:
                raise conflict from None
            raise
        return medication_to_proto(row)

    # --- stock -------------------------------------------------------------------------------

    async def _require_pharmacy(self, location: str) -> None:
        """FAILED_PRECONDITION unless `location` is a department of kind PHARMACY."""
        try:
            with identity.as_service():  # the service checks; the caller may not read iam
                found = await self._clients.iam.GetDepartment(
                    iam_pb.GetDepartmentRequest(name=location)
                )
        except UpstreamError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition(
                    "the location does not exist",
                    reason="DEPARTMENT_NOT_FOUND",
                    metadata={"location": location},
                ) from None
            raise
        if found.kind != iam_pb.DEPARTMENT_KIND_PHARMACY:
            raise FailedPrecondition(
                "the location is not a pharmacy",
                reason="LOCATION_NOT_PHARMACY",
                metadata={"location": location},
            )

    async def ReceiveStock(self, request: pb.ReceiveStockRequest, context: Context) -> pb.StockItem:
        today = dt.datetime.now(dt.UTC).date()
        v = Violations()
        medication_id = v.resource_id("parent", request.parent, collection="medications")
        location_id = v.resource_id("location", request.location, collection="departments")
        lot = lot_number(v, "lot_number", request.lot_number)
        expires = expiry(
            v, "expiry_date", request.expiry_date, request.HasField("expiry_date"), today
        )
        quantity(v, "quantity", request.quantity, MAX_RECEIVE)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert medication_id is not None and location_id is not None and lot is not None
        permit = await self._access.require("create", "pharmacy.stock")
        key = RequestKey.of(request, request_id)

        async def replay() -> Any:
            async with self._db.read() as session:
                return await key.first(
                    lambda used: store.receipt(session, used),
                    stored=lambda row: row.request_fingerprint,
                )

        earlier = await replay()
        if earlier is not None:
            return stock_item_to_proto(earlier)
        async with self._db.read() as session:
            medication = await store.get_medication(session, medication_id)
        if not medication.active:
            raise FailedPrecondition("the medication is inactive", reason="MEDICATION_INACTIVE")
        await self._require_pharmacy(request.location)
        try:
            async with self._db.transaction() as session:
                row = await store.receive(
                    session,
                    medication_id=medication_id,
                    location_id=location_id,
                    lot_number=lot,
                    expiry=expires,
                    quantity=request.quantity,
                    staff_id=identity.caller_staff_id(),
                    request=key.pair,
                )
                name = stock_item_name(medication_id, row.id)
                await self._audit("create", permit, name, _STOCK_ITEM)
        except IntegrityError:
            # A concurrent replay of this request id stored its receipt first: it is the answer.
            earlier = await replay()
            if earlier is None:
                raise
            return stock_item_to_proto(earlier)
        return stock_item_to_proto(row)

    async def ListStockItems(
        self, request: pb.ListStockItemsRequest, context: Context
    ) -> pb.ListStockItemsResponse:
        v = Violations()
        medication_id = None
        if request.parent != "medications/-":
            medication_id = v.resource_id("parent", request.parent, collection="medications")
        limit = v.page_size("page_size", request.page_size)
        before = None
        if request.HasField("expiring_before"):
            before = full_date(v, "expiring_before", request.expiring_before, present=True)
        where = store.StockFilter(
            medication_id=medication_id,
            location_id=reference(v, "location", request.location, "departments"),
            expiring_before=before,
            include_empty=request.include_empty,
        )
        v.raise_if_any()
        keyset = self._pages.keyset(
            request.page_token,
            query=where.fingerprint(),
            limit=limit,
            after=lambda c: (_expiry(c), c.text("l"), c.uuid("i")),
        )
        await self._access.require("read", "pharmacy.stock")
        async with self._db.read() as session:
            if medication_id is not None:
                await store.get_medication(session, medication_id)
            rows = await store.list_stock_items(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
        page = keyset.page(
            rows,
            lambda r: {"d": r.expiry_date.toordinal(), "l": r.lot_number, "i": str(r.id)},
        )
        return pb.ListStockItemsResponse(
            stock_items=[stock_item_to_proto(r) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    async def GetStockItem(self, request: pb.GetStockItemRequest, context: Context) -> pb.StockItem:
        medication_id, stock_item_id = required_child_id(
            "name", request.name, parent="medications", collection="stockItems"
        )
        await self._access.require("read", "pharmacy.stock")
        async with self._db.read() as session:
            row = await store.find_stock_item(session, medication_id, stock_item_id)
        if row is None:
            raise store.not_found(request.name)
        return stock_item_to_proto(row)

    async def AdjustStock(self, request: pb.AdjustStockRequest, context: Context) -> pb.StockItem:
        v = Violations()
        ids = v.child_id("name", request.name, parent="medications", collection="stockItems")
        change = adjustment(v, request)
        v.raise_if_any()
        assert ids is not None
        medication_id, stock_item_id = ids
        permit = await self._access.require("update", "pharmacy.stock")
        async with self._db.transaction() as session:
            row = await store.adjust(
                session,
                medication_id=medication_id,
                stock_item_id=stock_item_id,
                change=change,
                etag=request.etag,
                staff_id=identity.caller_staff_id(),
            )
            await self._audit("update", permit, request.name, _STOCK_ITEM)
        return stock_item_to_proto(row)

    # --- dispenses ---------------------------------------------------------------------------

    async def DispenseMedication(
        self, request: pb.DispenseMedicationRequest, context: Context
    ) -> pb.MedicationDispense:
        v = Violations()
        if not request.HasField("medication_dispense"):
            raise InvalidArgument.field("medication_dispense", "is required")
        given = request.medication_dispense
        prescription_id = v.resource_id(
            "medication_dispense.medication_request",
            given.medication_request,
            collection="medicationRequests",
        )
        stock_item = None
        location_id = None
        if given.stock_item:
            stock_item = v.child_id(
                "medication_dispense.stock_item",
                given.stock_item,
                parent="medications",
                collection="stockItems",
            )
        else:
            location_id = v.resource_id(
                "medication_dispense.location", given.location, collection="departments"
            )
        quantity(v, "medication_dispense.quantity", given.quantity, MAX_DISPENSE)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert prescription_id is not None
        # Pharmacists dispense whatever the patient: decided from the caller alone.
        permit = await self._access.require("create", "pharmacy.dispense")
        key = RequestKey.of(request, request_id)

        async def replay() -> Any:
            return await key.first(lambda used: store.find_replay(self._db, used))

        earlier = await replay()
        if earlier is not None:
            await self._audit_dispense("create", permit, earlier)
            return dispense_to_proto(earlier)
        ask = store.Dispensing(
            prescription_id=prescription_id,
            quantity=given.quantity,
            stock_item=stock_item,
            location_id=location_id,
            dispenser_id=identity.caller_staff_id(),
            request=key.pair,
        )
        try:
            async with self._db.driver_transaction() as connection:
                row = await store.dispense(connection, ask)
                await self._outbox.add(dispense_changed(row))
                await self._audit_dispense("create", permit, row)
        except (store.ReplayRaced, asyncpg.UniqueViolationError):
            # A concurrent replay of this request got there first: it is the answer.
            earlier = await replay()
            if earlier is None:
                raise
            await self._audit_dispense("create", permit, earlier)
            return dispense_to_proto(earlier)
        return dispense_to_proto(row)

    async def _audit_dispense(self, action: str, permit: Permit, row: Any) -> None:
        patient = f"patients/{row.patient_id}"
        await self._audit(action, permit, dispense_name(row.id), _DISPENSE, patient)

    async def _authorize_dispense(self, action: str, dispense_id: uuid.UUID) -> tuple[Permit, Any]:
        """Allow or refuse the caller on one dispense; NOT_FOUND after that."""

        care: dict[uuid.UUID, Care] = {}

        async def load() -> Any:
            async with self._db.read() as session:
                row = await store.find_dispense(session, dispense_id)
            if row is not None:
                await self._look_up_care([row], care)
            return row

        permit, row = await self._access.authorize(
            action, "pharmacy.dispense", load, lambda found: self._dispense_facts(found, care)
        )
        if row is None:
            raise store.not_found(dispense_name(dispense_id))
        return permit, row

    async def GetMedicationDispense(
        self, request: pb.GetMedicationDispenseRequest, context: Context
    ) -> pb.MedicationDispense:
        dispense_id = required_id("name", request.name, collection="medicationDispenses")
        permit, row = await self._authorize_dispense("read", dispense_id)
        await self._audit_dispense("read", permit, row)
        return dispense_to_proto(row)

    async def ListMedicationDispenses(
        self, request: pb.ListMedicationDispensesRequest, context: Context
    ) -> pb.ListMedicationDispensesResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        status = None
        if request.status:
            number = v.enum("status", request.status, pb.MedicationDispenseStatus.DESCRIPTOR)
            status = DISPENSE_STATUS.text(number) if number else None
        where = store.DispenseFilter(
            patient_id=reference(v, "patient", request.patient, "patients"),
            prescription_id=reference(
                v, "medication_request", request.medication_request, "medicationRequests"
            ),
            status=status,
            handed_over=(
                v.period("handed_over_period", request.handed_over_period)
                if request.HasField("handed_over_period")
                else None
            ),
        )
        v.raise_if_any()
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        if not self._access.could_ever("read", "pharmacy.dispense"):
            return pb.ListMedicationDispensesResponse()  # the same answer whatever exists
        # Dispenses the caller may not see are left out (visible_page).
        consents: dict[str, str] = {}
        care: dict[uuid.UUID, Care] = {}

        async def read(after: TimeAndId | None, batch: int) -> Sequence[Any]:
            async with self._db.read() as session:
                rows = await store.list_dispenses(session, where, after=after, limit=batch)
            await self._look_up_care(rows, care)
            return rows

        async def decide(rows: Sequence[Any]) -> list[tuple[Any, Permit]]:
            return await self._access.filter(
                "read",
                "pharmacy.dispense",
                rows,
                lambda row: self._dispense_facts(row, care, consents),
            )

        page = await visible_page(keyset, read, decide, lambda row: (row.create_time, row.id))
        await self._access.record_each(
            "read",
            [(p, f"patients/{r.patient_id}", dispense_name(r.id)) for r, p in page.rows],
            _DISPENSE,
        )
        return pb.ListMedicationDispensesResponse(
            medication_dispenses=[dispense_to_proto(r) for r, _ in page.rows],
            next_page_token=page.next_page_token,
        )

    async def HandOverMedicationDispense(
        self, request: pb.HandOverMedicationDispenseRequest, context: Context
    ) -> pb.MedicationDispense:
        dispense_id = required_id("name", request.name, collection="medicationDispenses")
        return await self._change_dispense(
            dispense_id, lambda session: store.hand_over(session, dispense_id, request.etag)
        )

    async def CancelMedicationDispense(
        self, request: pb.CancelMedicationDispenseRequest, context: Context
    ) -> pb.MedicationDispense:
        v = Violations()
        dispense_id = v.resource_id("name", request.name, collection="medicationDispenses")
        why = v.text("reason", request.reason, max_len=500, required=True)
        v.raise_if_any()
        assert dispense_id is not None and why is not None
        return await self._change_dispense(
            dispense_id, lambda session: store.cancel(session, dispense_id, why, request.etag)
        )

    async def _change_dispense(
        self, dispense_id: uuid.UUID, change: Callable[[AsyncSession], Awaitable[Any]]
    ) -> pb.MedicationDispense:
        """Authorize an update of the dispense, then in one transaction: the change (None when it
        was made before: nothing changes, no event), its MedicationDispenseChanged event and the
        audit event."""
        permit, row = await self._authorize_dispense("update", dispense_id)
        async with self._db.transaction() as session:
            changed = await change(session)
            if changed is not None:
                await self._outbox.add(dispense_changed(changed))
                row = changed
            else:
                row = await store.find_dispense(session, dispense_id)
            await self._audit_dispense("update", permit, row)
        return dispense_to_proto(row)

    # --- the order loop ----------------------------------------------------------------------

    async def DeliverEvents(
        self, request: pb.DeliverEventsRequest, context: Context
    ) -> pb.DeliverEventsResponse:
        outcome = await apply_events(self._db, SCHEMA, request.events, CONSUMES)
        return pb.DeliverEventsResponse(applied=outcome.applied, duplicates=outcome.duplicates)
