"""The PatientService servicer: validate → authorize → store in one transaction → audit → respond.

Writes are audited inside their transaction, so an audit outage rolls the write back; reads are
audited before the data leaves, so an audit outage means no data (UNAVAILABLE).
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy.exc import IntegrityError

from his.base import identity
from his.base.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from his.patient import care, store
from his.patient.care import CareConfig, CareRelationships, Relation
from his.patient.events import state_changed
from his.patient.label_view import for_caller, label_view_only
from his.patient.mapping import consent_to_proto, patient_to_proto
from his.patient.research import ResearchPatients
from his.patient.tables import SCHEMA
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.patient.validation import (
    MAX_NAME,
    MAX_NOTE,
    UPDATABLE,
    consent_fields,
    national_id,
    patient_fields,
    phone,
)
from his.runtime.access import ALLOWED, Facts, Permit
from his.runtime.database import Database
from his.runtime.fieldcrypt import FieldCipher
from his.runtime.idempotency import RequestKey
from his.runtime.inbox import apply_events
from his.runtime.outbox import Outbox
from his.runtime.pagination import PageTokens, time_and_id, time_and_id_values
from his.runtime.server import ServiceResources
from his.runtime.validation import (
    Violations,
    require_paths,
    required_child_id,
    required_id,
)

Context = grpc.aio.ServicerContext[Any, Any]
_PATIENT = pb.Patient.DESCRIPTOR.full_name
_CONSENT = pb.Consent.DESCRIPTOR.full_name
_ALL_FIELDS = UPDATABLE
_DEMOGRAPHICS = "patient.demographics"


@dataclass(frozen=True)
class _Found:
    """A patient read for GetPatient, with the caller's care relationship with them."""

    row: Any
    relation: Relation


class PatientService(pb_grpc.PatientServiceServicer):
    """Master patient index and consents over the `patient` schema."""

    def __init__(self, resources: ServiceResources, care_config: CareConfig | None = None) -> None:
        self._db: Database = resources.database
        self._care = CareRelationships(resources.database, care_config or CareConfig())
        self._pages = PageTokens(resources.config.page_token_key)
        self._access = resources.access
        self._cipher = FieldCipher.from_config(
            resources.config.crypto, "patient", resources.database.engine
        )
        self._research = ResearchPatients(resources)
        assert resources.outbox is not None  # every service but audit has one
        self._outbox: Outbox = resources.outbox

    async def _state_changed(self, row: Any) -> None:
        """Tell the services that keep a copy of patient states (events.py), in the open
        transaction."""
        await self._outbox.add([state_changed(row)])

    async def _audit(self, action: str, permit: Permit, patient_id: uuid.UUID, **name: str) -> None:
        """Record one access to a patient's record (or to its consents)."""
        patient = f"patients/{patient_id}"
        await self._access.record(
            action,
            permit,
            patient=patient,
            resource_name=name.get("consent", patient),
            resource_type=_CONSENT if "consent" in name else _PATIENT,
        )

    async def GetPatient(self, request: pb.GetPatientRequest, context: Context) -> pb.Patient:
        patient_id = required_id("name", request.name, collection="patients")
        name = f"patients/{patient_id}"
        # The registration desk reads anyone; a clinician needs a care relationship (care.py,
        # from this service's own tables: no remote call per read), or else a break-the-glass
        # grant; a signed-in patient reads their own record only (policy: patients.rego).
        alone = self._access.allowed_alone("read", _DEMOGRAPHICS)

        async def load() -> _Found | None:
            try:
                row = await store.read_patient(self._db, self._cipher, patient_id)
            except NotFound:
                return None
            if alone:
                return _Found(row, care.NONE)
            relations = await self._care.of(identity.current(), [patient_id])
            return _Found(row, relations.get(patient_id, care.NONE))

        def facts(found: _Found | None) -> Facts:
            # Asked only of a record that was found (mypy solves authorize's T as optional).
            return self._facts(name, found.relation if found else care.NONE)

        permit, found = await self._access.authorize("read", _DEMOGRAPHICS, load, facts)
        if found is None:
            raise NotFound(f"{name} not found", metadata={"name": name})
        await self._audit("read", permit, found.row.id)
        return for_caller(patient_to_proto(found.row))

    def _facts(self, name: str, relation: Relation) -> Facts:
        """What the policy looks at for one patient's demographics: the caller's relationship
        with them and (asked only when it decides) their privacy consent."""
        patient_id = uuid.UUID(name.removeprefix("patients/"))
        return Facts(
            patient=name,
            department=relation.department,
            under_care=relation.under_care,
            consent=functools.partial(self._care.consent, patient_id),
        )

    async def ListPatients(
        self, request: pb.ListPatientsRequest, context: Context
    ) -> pb.ListPatientsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        prefix = v.text("name_prefix", request.name_prefix, max_len=MAX_NAME)
        birth_date = None
        if request.HasField("birth_date"):
            d = request.birth_date
            birth_date = v.date("birth_date", d.year, d.month, d.day)
        where = store.PatientFilter(
            name_prefix=prefix,
            birth_date=birth_date,
            national_id=national_id(v, request.national_id, "national_id"),
            phone=phone(v, "phone", request.phone),
            include_merged=request.include_merged,
        )
        v.raise_if_any()
        # Who may read every patient is answered here; a clinician sees the patients of the page
        # they have a care relationship with (below); anyone else is refused with the policy's
        # reason (a signed-in patient reads their own record with GetPatient).
        alone = self._access.allowed_alone("read", _DEMOGRAPHICS)
        related_only = not alone and self._access.allowed_when_related("read", _DEMOGRAPHICS)
        permit = Permit(ALLOWED)
        if not related_only:
            permit = await self._access.require("read", _DEMOGRAPHICS)
        if label_view_only() and (request.national_id.value or request.phone):
            # The label view has neither: searching by them would reveal them one guess at a time.
            raise PermissionDenied(
                "the label view of patients is not searched by national id or phone",
                reason="LABEL_VIEW_ONLY",
            )
        keyset = self._pages.keyset(
            request.page_token,
            query=where.fingerprint(),
            limit=limit,
            after=lambda c: (c.text("f"), c.text("g"), c.uuid("i")),
        )
        # A clinician's search is restricted to related patients in SQL: filtered after paging,
        # an empty page with a next_page_token would tell them more patients match.
        restriction = self._care.restriction(identity.current()) if related_only else None
        async with self._db.read() as session:
            rows = await store.list_patients(
                session,
                self._cipher,
                where,
                after=keyset.after,
                limit=keyset.read_limit,
                restriction=restriction,
            )
        page = keyset.page(rows, lambda r: {"f": r.family_key, "g": r.given_key, "i": str(r.id)})
        shown = [(r, permit) for r in page.rows]
        if related_only:
            # Quietly left out, as lists do; no break-the-glass here (it would ask iam once per
            # unrelated patient): a grant opens GetPatient.
            relations = await self._care.of(identity.current(), [r.id for r in page.rows])
            shown = await self._access.filter(
                "read",
                _DEMOGRAPHICS,
                page.rows,
                lambda r: self._facts(f"patients/{r.id}", relations.get(r.id, care.NONE)),
                emergency=False,
            )
        await self._access.record_each(
            "read",
            [(p, f"patients/{r.id}", f"patients/{r.id}") for r, p in shown],
            _PATIENT,
        )
        return pb.ListPatientsResponse(
            patients=[for_caller(patient_to_proto(r)) for r, _ in shown],
            next_page_token=page.next_page_token,
        )

    async def CreatePatient(self, request: pb.CreatePatientRequest, context: Context) -> pb.Patient:
        v = Violations()
        if not request.HasField("patient"):
            raise InvalidArgument.field("patient", "is required")
        values = patient_fields(v, request.patient, "patient", _ALL_FIELDS)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        key = RequestKey.of(request, request_id)
        values["create_request_fingerprint"] = key.fingerprint
        permit = await self._access.require("create", "patient.demographics")
        try:
            async with self._db.transaction() as session:
                row = await key.create(
                    lambda: store.insert_patient(session, self._cipher, values, request_id),
                    lambda used: store.patient_by_request(session, self._cipher, used),
                )
                await self._audit("create", permit, row.id)
                await self._state_changed(row)
        except IntegrityError as error:
            # A concurrent replay may lose on the national-id index before the request-id one:
            # the first registration is then the answer, not a conflict.
            async with self._db.transaction() as session:
                earlier = await key.first(
                    lambda used: store.patient_by_request(session, self._cipher, used)
                )
                if earlier is not None:
                    await self._audit("create", permit, earlier.id)
            if earlier is not None:
                return patient_to_proto(earlier)
            if store.unique_violation(error) == "national_id_unique":
                raise store.national_id_taken() from None
            raise
        return patient_to_proto(row)

    async def UpdatePatient(self, request: pb.UpdatePatientRequest, context: Context) -> pb.Patient:
        v = Violations()
        patient_id = v.resource_id("patient.name", request.patient.name, collection="patients")
        paths = require_paths(v, "update_mask", request.update_mask.paths, UPDATABLE)
        values = patient_fields(v, request.patient, "patient", frozenset(paths))
        v.raise_if_any()
        assert patient_id is not None
        permit = await self._access.require("update", "patient.demographics", fields=paths)
        try:
            async with self._db.transaction() as session:
                row = await store.update_patient(
                    session, self._cipher, patient_id, values, request.patient.etag
                )
                await self._audit("update", permit, row.id)
        except IntegrityError as error:
            if store.unique_violation(error) == "national_id_unique":
                raise store.national_id_taken() from None
            raise
        return patient_to_proto(row)

    async def DeactivatePatient(
        self, request: pb.DeactivatePatientRequest, context: Context
    ) -> pb.Patient:
        return await self._set_state(request.name, request.etag, "inactive")

    async def ReactivatePatient(
        self, request: pb.ReactivatePatientRequest, context: Context
    ) -> pb.Patient:
        return await self._set_state(request.name, request.etag, "active")

    async def _set_state(self, name: str, etag: str, state: str) -> pb.Patient:
        patient_id = required_id("name", name, collection="patients")
        permit = await self._access.require("update", "patient.demographics", fields=("state",))
        async with self._db.transaction() as session:
            row = await store.set_state(session, self._cipher, patient_id, to=state, etag=etag)
            await self._audit("update", permit, row.id)
            await self._state_changed(row)
        return patient_to_proto(row)

    async def MergePatients(self, request: pb.MergePatientsRequest, context: Context) -> pb.Patient:
        v = Violations()
        duplicate_id = v.resource_id("name", request.name, collection="patients")
        survivor_id = v.resource_id("survivor", request.survivor, collection="patients")
        reason = v.text("reason", request.reason, max_len=MAX_NOTE) or ""
        if duplicate_id is not None and duplicate_id == survivor_id:
            v.add("survivor", "must be a different patient than name")
        v.raise_if_any()
        assert duplicate_id is not None and survivor_id is not None
        permit = await self._access.require("merge", "patient.demographics")
        async with self._db.transaction() as session:
            row = await store.merge(session, self._cipher, duplicate_id, survivor_id, reason)
            await self._audit("merge", permit, duplicate_id)
            await self._audit("merge", permit, survivor_id)
            await self._state_changed(row)
        return patient_to_proto(row)

    async def UnmergePatient(
        self, request: pb.UnmergePatientRequest, context: Context
    ) -> pb.Patient:
        v = Violations()
        patient_id = v.resource_id("name", request.name, collection="patients")
        reason = v.text("reason", request.reason, max_len=MAX_NOTE) or ""
        v.raise_if_any()
        assert patient_id is not None
        permit = await self._access.require("merge", "patient.demographics")
        async with self._db.transaction() as session:
            row = await store.unmerge(session, self._cipher, patient_id, reason)
            await self._audit("merge", permit, patient_id)
            await self._state_changed(row)
        return patient_to_proto(row)

    async def GrantConsent(self, request: pb.GrantConsentRequest, context: Context) -> pb.Consent:
        v = Violations()
        patient_id = v.resource_id("parent", request.parent, collection="patients")
        if not request.HasField("consent"):
            v.add("consent", "is required")
        values = consent_fields(v, request.consent, dt.datetime.now(dt.UTC))
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert patient_id is not None
        key = RequestKey.of(request, request_id)
        values["create_request_fingerprint"] = key.fingerprint
        permit = await self._access.require("create", "patient.consent")
        async with self._db.transaction() as session:
            # The patient's row lock serialises grants (and their replays) per patient.
            patient = await store.get_patient(session, self._cipher, patient_id, lock=True)
            # A replay is answered even if the patient was merged since the first grant.
            earlier = await key.first(
                lambda used: store.consent_by_request(session, patient_id, used)
            )
            if earlier is not None:
                await self._audit("create", permit, patient_id, consent=_name(earlier))
                return consent_to_proto(earlier)
            if patient.state == "merged":
                raise FailedPrecondition(
                    "consent must be recorded on the surviving patient record",
                    reason="PATIENT_MERGED",
                )
            row = await store.insert_consent(session, patient_id, values, request_id)
            assert row is not None  # the patient lock rules out a concurrent insert of the same id
            await self._audit("create", permit, patient_id, consent=_name(row))
        return consent_to_proto(row)

    async def RevokeConsent(self, request: pb.RevokeConsentRequest, context: Context) -> pb.Consent:
        patient_id, consent_id = required_child_id(
            "name", request.name, parent="patients", collection="consents"
        )
        permit = await self._access.require("update", "patient.consent", fields=("status",))
        async with self._db.transaction() as session:
            row = await store.revoke_consent(session, patient_id, consent_id)
            await self._audit("update", permit, patient_id, consent=_name(row))
        return consent_to_proto(row)

    async def GetConsent(self, request: pb.GetConsentRequest, context: Context) -> pb.Consent:
        patient_id, consent_id = required_child_id(
            "name", request.name, parent="patients", collection="consents"
        )
        permit = await self._access.require("read", "patient.consent")
        async with self._db.read() as session:
            row = await store.get_consent(session, patient_id, consent_id)
        await self._audit("read", permit, patient_id, consent=_name(row))
        return consent_to_proto(row)

    async def ListConsents(
        self, request: pb.ListConsentsRequest, context: Context
    ) -> pb.ListConsentsResponse:
        v = Violations()
        patient_id = v.resource_id("parent", request.parent, collection="patients")
        limit = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        assert patient_id is not None
        permit = await self._access.require("read", "patient.consent")
        query = f"consents {patient_id} {request.active_only}"
        keyset = self._pages.keyset(request.page_token, query=query, limit=limit, after=time_and_id)
        async with self._db.read() as session:
            await store.get_patient(session, self._cipher, patient_id)
            rows = await store.list_consents(
                session,
                patient_id,
                active_only=request.active_only,
                after=keyset.after,
                limit=keyset.read_limit,
            )
        await self._audit("read", permit, patient_id, consent=f"patients/{patient_id}/consents")
        page = keyset.page(rows, lambda r: time_and_id_values(r.create_time, r.id))
        return pb.ListConsentsResponse(
            consents=[consent_to_proto(r) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    async def ListResearchPatients(
        self, request: pb.ListResearchPatientsRequest, context: Context
    ) -> pb.ListResearchPatientsResponse:
        return await self._research.page(request)

    async def DeliverEvents(
        self, request: pb.DeliverEventsRequest, context: Context
    ) -> pb.DeliverEventsResponse:
        outcome = await apply_events(self._db, SCHEMA, request.events, care.CONSUMES)
        return pb.DeliverEventsResponse(applied=outcome.applied, duplicates=outcome.duplicates)


def _name(consent: Any) -> str:
    return f"patients/{consent.patient_id}/consents/{consent.id}"
