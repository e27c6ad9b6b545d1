"""The EmrService servicer: validate → authorize (encounter facts) → ask other services → one
transaction (change + audit event in the outbox) → respond.

Every read and write of an encounter, note or diagnosis is patient data: authorized against the
encounter's facts (class, department, attending practitioner, care relationship, surgical,
consent) and audited. Note text is encrypted at rest and never logged.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from sqlalchemy.exc import IntegrityError

from his.base import identity
from his.base.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from his.emr import store
from his.emr.care_events import encounter_changed
from his.emr.mapping import (
    ENCOUNTER_STATUS,
    POLICY_CLASS,
    diagnosis_name,
    diagnosis_to_proto,
    encounter_name,
    encounter_to_proto,
    note_name,
    note_to_proto,
)
from his.emr.v1 import emr_service_pb2 as pb
from his.emr.v1 import emr_service_pb2_grpc as pb_grpc
from his.emr.validation import (
    DIAGNOSIS_UPDATABLE,
    ENCOUNTER_UPDATABLE,
    NOTE_UPDATABLE,
    diagnosis_code,
    diagnosis_fields,
    encounter_changes,
    new_encounter,
    note_text,
    note_type,
    reason,
)
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.runtime.access import Facts, Permit
from his.runtime.database import Database
from his.runtime.fieldcrypt import FieldCipher
from his.runtime.idempotency import RequestKey
from his.runtime.pagination import (
    PageTokens,
    TimeAndId,
    time_and_id,
    time_and_id_values,
    visible_page,
)
from his.runtime.server import ServiceResources
from his.runtime.validation import (
    Violations,
    day_window,
    reference,
    require_paths,
    required_child_id,
    required_id,
)
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb
from his_client import HisClients, UpstreamError
from his_client.patient import privacy_consent, require_active

Context = grpc.aio.ServicerContext[Any, Any]
_ENCOUNTER = pb.Encounter.DESCRIPTOR.full_name
_NOTE = pb.ClinicalNote.DESCRIPTOR.full_name
_DIAGNOSIS = pb.Diagnosis.DESCRIPTOR.full_name
# The one service that may open an encounter as itself: scheduling, for a check-in.
CHECK_IN_SOURCE = "scheduling"


@dataclass(frozen=True)
class Seen:
    """An encounter as the policy sees it: the row, whether the caller attends another open
    encounter of the patient (a care relationship), and the note an rpc is about."""

    encounter: Any
    attends_elsewhere: bool = False
    note: Any = None


class EmrService(pb_grpc.EmrServiceServicer):
    """Encounters, clinical notes and diagnoses over the `emr` schema."""

    def __init__(self, resources: ServiceResources) -> None:
        self._db: Database = resources.database
        self._clients: HisClients = resources.clients
        self._pages = PageTokens(resources.config.page_token_key)
        self._access = resources.access
        self._cipher = FieldCipher.from_config(
            resources.config.crypto, "emr", resources.database.engine
        )
        self._outbox = resources.outbox

    # --- access ------------------------------------------------------------------------------

    def _facts(self, seen: Seen | None, consents: dict[str, str] | None = None) -> Facts:
        """What the policy needs about an encounter (and the note an rpc is about)."""
        assert seen is not None  # the runtime asks only about records it found
        row = seen.encounter
        patient = f"patients/{row.patient_id}"

        async def consent() -> str:
            if consents is None:
                return await privacy_consent(self._clients, patient, missing="none")
            if patient not in consents:
                consents[patient] = await privacy_consent(self._clients, patient, missing="none")
            return consents[patient]

        attending = identity.is_caller(row.practitioner_id)
        return Facts(
            patient=patient,
            department=f"departments/{row.department_id}",
            encounter_class=POLICY_CLASS[row.encounter_class],
            surgical=row.surgical,
            # A sensitive encounter opens to its attending practitioner, not to other carers.
            under_care=attending or (seen.attends_elsewhere and not row.sensitive),
            own=seen.note is not None and identity.is_caller(seen.note.author_id),
            consent=consent,
        )

    async def _attends_elsewhere(self, session: Any, row: Any) -> bool:
        """Whether the caller's care relationship must be looked up, and what it is."""
        principal = identity.current_or_none()
        if principal is None or not principal.is_staff or row.sensitive:
            return False
        if f"departments/{row.department_id}" in principal.departments:
            return False
        if identity.is_caller(row.practitioner_id):
            return False
        return await store.attends_open_encounter(
            session, identity.caller_staff_id_or_nobody(), row.patient_id
        )

    async def _seen(self, encounter_id: uuid.UUID, note_id: uuid.UUID | None = None) -> Seen | None:
        async with self._db.read() as session:
            row = await store.find_encounter(session, encounter_id)
            if row is None:
                return None
            note = None
            if note_id is not None:
                # A missing note of an encounter the caller may see is NOT_FOUND (_authorize).
                note = await store.find_note(session, self._cipher, encounter_id, note_id)
            return Seen(row, await self._attends_elsewhere(session, row), note)

    async def _authorize(
        self,
        action: str,
        resource: str,
        encounter_id: uuid.UUID,
        *,
        note_id: uuid.UUID | None = None,
        fields: tuple[str, ...] = (),
    ) -> tuple[Permit, Seen]:
        """Allow or refuse the caller on one encounter (and note); NOT_FOUND after that."""
        permit, seen = await self._access.authorize(
            action,
            resource,
            lambda: self._seen(encounter_id, note_id),
            self._facts,
            fields=fields,
        )
        if seen is None:
            raise store.not_found(encounter_name(encounter_id))
        if note_id is not None and seen.note is None:
            raise store.not_found(note_name(encounter_id, note_id))
        return permit, seen

    async def _audit(self, action: str, permit: Permit, row: Any, name: str, kind: str) -> None:
        await self._access.record(
            action,
            permit,
            patient=f"patients/{row.patient_id}",
            resource_name=name,
            resource_type=kind,
        )

    # --- what other services know ------------------------------------------------------------

    async def _department_kind(self, department: str) -> int:
        """The kind of an existing department, else FAILED_PRECONDITION."""
        try:
            found = await self._clients.iam.GetDepartment(
                iam_pb.GetDepartmentRequest(name=department)
            )
        except UpstreamError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition(
                    "the department does not exist",
                    reason="DEPARTMENT_NOT_FOUND",
                    metadata={"department": department},
                ) from None
            raise
        return int(found.kind)

    async def _require_practitioner(self, staff: str) -> None:
        """FAILED_PRECONDITION unless `staff` is an active staff member."""
        try:
            found = await self._clients.iam.GetStaffMember(iam_pb.GetStaffMemberRequest(name=staff))
        except UpstreamError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition(
                    "the attending practitioner does not exist",
                    reason="PRACTITIONER_NOT_FOUND",
                    metadata={"attending_practitioner": staff},
                ) from None
            raise
        if not found.active:
            raise FailedPrecondition(
                "the attending practitioner is not active", reason="PRACTITIONER_INACTIVE"
            )

    async def _require_appointment(self, appointment: str, patient: str) -> None:
        """FAILED_PRECONDITION unless `appointment` is a BOOKED or ARRIVED one of `patient`."""
        try:
            found = await self._clients.scheduling.GetAppointment(
                scheduling_pb.GetAppointmentRequest(name=appointment)
            )
        except UpstreamError as error:
            # Scheduling does not say whether an appointment the caller may not see exists.
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                raise FailedPrecondition(
                    "the appointment does not exist or is not one the caller may see",
                    reason="APPOINTMENT_NOT_FOUND",
                ) from None
            raise
        usable = (scheduling_pb.APPOINTMENT_STATUS_BOOKED, scheduling_pb.APPOINTMENT_STATUS_ARRIVED)
        if found.patient != patient or found.status not in usable:
            raise FailedPrecondition(
                "the appointment is not a booked or arrived appointment of this patient",
                reason="APPOINTMENT_MISMATCH",
            )

    # --- encounters --------------------------------------------------------------------------

    async def CreateEncounter(
        self, request: pb.CreateEncounterRequest, context: Context
    ) -> pb.Encounter:
        v = Violations()
        if not request.HasField("encounter"):
            raise InvalidArgument.field("encounter", "is required")
        values = new_encounter(v, request.encounter)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        encounter = request.encounter
        principal = identity.current_or_none()
        by_service = principal is not None and principal.is_service
        if by_service and (
            principal is None
            or principal.service_name != CHECK_IN_SOURCE
            or values["appointment_id"] is None
        ):
            raise PermissionDenied(
                "a service opens only the encounter of a check-in", reason="SERVICE_NOT_PERMITTED"
            )
        proposed = Seen(
            _Proposed(
                patient_id=values["patient_id"],
                department_id=values["department_id"],
                practitioner_id=values["practitioner_id"],
                encounter_class=values["encounter_class"],
                surgical=values["surgical"],
                sensitive=values["sensitive"],
            )
        )
        permit, _ = await self._access.authorize(
            "create", "emr.encounter", lambda: _found(proposed), self._facts
        )
        key = RequestKey.of(request, request_id)
        async with self._db.read() as session:
            # A replay returns the first encounter, whatever changed since.
            replay = await key.first(lambda used: store.encounter_by_request(session, used))
        if replay is not None:
            await self._audit("create", permit, replay, encounter_name(replay.id), _ENCOUNTER)
            return encounter_to_proto(replay)
        # Ask first (nothing remote under a lock), then one short transaction.
        await require_active(
            self._clients,
            encounter.patient,
            when_merged="open the encounter on the surviving record",
        )
        kind = await self._department_kind(encounter.department)
        if encounter.attending_practitioner:
            await self._require_practitioner(encounter.attending_practitioner)
        if encounter.appointment and not by_service:
            # A check-in event comes from scheduling itself, which vouches for its appointment.
            await self._require_appointment(encounter.appointment, encounter.patient)
        if kind == iam_pb.DEPARTMENT_KIND_SURGERY and not values["surgical"]:
            # A surgical department makes the record surgical whatever the request said: the
            # policy decides once more on the encounter as it will be stored.
            values["surgical"] = True
            proposed = Seen(replace(proposed.encounter, surgical=True))
            await self._access.authorize(
                "create", "emr.encounter", lambda: _found(proposed), self._facts
            )
        try:
            async with self._db.transaction() as session:
                row = await key.create(
                    lambda: store.insert_encounter(session, values, key.pair),
                    lambda used: store.encounter_by_request(session, used),
                )
                await self._audit("create", permit, row, encounter_name(row.id), _ENCOUNTER)
                await self._changed(row)
        except IntegrityError as error:
            # A concurrent replay may lose on the appointment's index before the request id's:
            # the first encounter is then the answer, not a conflict.
            async with self._db.transaction() as session:
                earlier = await key.first(lambda used: store.encounter_by_request(session, used))
                if earlier is not None:
                    await self._audit(
                        "create", permit, earlier, encounter_name(earlier.id), _ENCOUNTER
                    )
            if earlier is not None:
                return encounter_to_proto(earlier)
            conflict = store.appointment_taken(error)
            if conflict is not None:
                raise conflict from None
            raise
        return encounter_to_proto(row)

    async def GetEncounter(self, request: pb.GetEncounterRequest, context: Context) -> pb.Encounter:
        encounter_id = required_id("name", request.name, collection="encounters")
        permit, seen = await self._authorize("read", "emr.encounter", encounter_id)
        row = seen.encounter
        await self._audit("read", permit, row, encounter_name(row.id), _ENCOUNTER)
        return encounter_to_proto(row)

    async def ListEncounters(
        self, request: pb.ListEncountersRequest, context: Context
    ) -> pb.ListEncountersResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        statuses: list[str] = []
        for index, status in enumerate(request.statuses):
            number = v.enum(f"statuses[{index}]", status, pb.EncounterStatus.DESCRIPTOR)
            if number:
                statuses.append(ENCOUNTER_STATUS.text(number))
        where = store.EncounterFilter(
            patient_id=reference(v, "patient", request.patient, "patients"),
            department_id=reference(v, "department", request.department, "departments"),
            practitioner_id=reference(
                v, "attending_practitioner", request.attending_practitioner, "staff"
            ),
            appointment_id=reference(v, "appointment", request.appointment, "appointments"),
            statuses=tuple(sorted(set(statuses))),
            window=day_window(v, request),
        )
        v.raise_if_any()
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        # Encounters the caller may not see are left out (visible_page).
        if not self._access.could_ever("read", "emr.encounter"):
            return pb.ListEncountersResponse()
        consents: dict[str, str] = {}
        care: dict[uuid.UUID, bool] = {}

        async def read(after: TimeAndId | None, batch: int) -> list[Seen]:
            async with self._db.read() as session:
                rows = await store.list_encounters(session, where, after=after, limit=batch)
                seen = []
                for row in rows:
                    if row.patient_id not in care:
                        care[row.patient_id] = await self._attends_elsewhere(session, row)
                    seen.append(Seen(row, care[row.patient_id]))
            return seen

        async def decide(seen: Sequence[Seen]) -> list[tuple[Seen, Permit]]:
            return await self._access.filter(
                "read", "emr.encounter", seen, lambda s: self._facts(s, consents)
            )

        page = await visible_page(
            keyset, read, decide, lambda s: (s.encounter.create_time, s.encounter.id)
        )
        await self._access.record_each(
            "read",
            [
                (p, f"patients/{s.encounter.patient_id}", encounter_name(s.encounter.id))
                for s, p in page.rows
            ],
            _ENCOUNTER,
        )
        return pb.ListEncountersResponse(
            encounters=[encounter_to_proto(s.encounter) for s, _ in page.rows],
            next_page_token=page.next_page_token,
        )

    async def UpdateEncounter(
        self, request: pb.UpdateEncounterRequest, context: Context
    ) -> pb.Encounter:
        v = Violations()
        encounter_id = v.resource_id(
            "encounter.name", request.encounter.name, collection="encounters"
        )
        paths = require_paths(v, "update_mask", request.update_mask.paths, ENCOUNTER_UPDATABLE)
        values = encounter_changes(v, request.encounter, paths)
        v.raise_if_any()
        assert encounter_id is not None
        permit, seen = await self._authorize(
            "update", "emr.encounter", encounter_id, fields=tuple(paths)
        )
        if "department_id" in values:
            kind = await self._department_kind(request.encounter.department)
            if kind == iam_pb.DEPARTMENT_KIND_SURGERY and not seen.encounter.surgical:
                values["surgical"] = True
        if values.get("practitioner_id") is not None:
            await self._require_practitioner(request.encounter.attending_practitioner)
        # Every updatable field changes what the policy decides on (department, class, attending,
        # sensitivity): the caller must also be allowed on the encounter as it would become, the
        # same decision CreateEncounter makes, so nobody moves a record where they could not
        # have opened it (another department, an attending that is not them).
        now = seen.encounter
        becomes = Seen(
            _Proposed(
                patient_id=now.patient_id,
                department_id=values.get("department_id", now.department_id),
                practitioner_id=values.get("practitioner_id", now.practitioner_id),
                encounter_class=values.get("encounter_class", now.encounter_class),
                surgical=values.get("surgical", now.surgical),
                sensitive=values.get("sensitive", now.sensitive),
            ),
            # The caller's care relationship is to the patient, whom an update never changes.
            attends_elsewhere=seen.attends_elsewhere,
        )
        await self._access.authorize(
            "update", "emr.encounter", lambda: _found(becomes), self._facts, fields=tuple(paths)
        )
        async with self._db.transaction() as session:
            row = await store.update_encounter(
                session, encounter_id, values, request.encounter.etag
            )
            await self._audit("update", permit, row, encounter_name(row.id), _ENCOUNTER)
            await self._changed(row)
        return encounter_to_proto(row)

    async def StartEncounter(
        self, request: pb.StartEncounterRequest, context: Context
    ) -> pb.Encounter:
        encounter_id = required_id("name", request.name, collection="encounters")
        return await self._transition(encounter_id, "in_progress", request.etag)

    async def FinishEncounter(
        self, request: pb.FinishEncounterRequest, context: Context
    ) -> pb.Encounter:
        encounter_id = required_id("name", request.name, collection="encounters")
        return await self._transition(encounter_id, "finished", request.etag)

    async def CancelEncounter(
        self, request: pb.CancelEncounterRequest, context: Context
    ) -> pb.Encounter:
        v = Violations()
        encounter_id = v.resource_id("name", request.name, collection="encounters")
        why = reason(v, "reason", request.reason)
        v.raise_if_any()
        assert encounter_id is not None
        return await self._transition(encounter_id, "cancelled", request.etag, why)

    async def MarkEncounterEnteredInError(
        self, request: pb.MarkEncounterEnteredInErrorRequest, context: Context
    ) -> pb.Encounter:
        v = Violations()
        encounter_id = v.resource_id("name", request.name, collection="encounters")
        why = reason(v, "reason", request.reason)
        v.raise_if_any()
        assert encounter_id is not None
        return await self._transition(encounter_id, "entered_in_error", request.etag, why)

    async def _transition(
        self, encounter_id: uuid.UUID, to: str, etag: str, why: str | None = None
    ) -> pb.Encounter:
        permit, _ = await self._authorize(
            "update", "emr.encounter", encounter_id, fields=("status",)
        )
        async with self._db.transaction() as session:
            row = await store.transition(session, encounter_id, to, etag=etag, reason=why)
            await self._audit("update", permit, row, encounter_name(row.id), _ENCOUNTER)
            await self._changed(row)
        return encounter_to_proto(row)

    async def _changed(self, row: Any) -> None:
        """Store the encounter's EncounterChanged for the patient service, in the open
        transaction (care_events.py): the care relationship GetPatient decides from."""
        if self._outbox is not None:
            await self._outbox.add([encounter_changed(row)])

    # --- notes -------------------------------------------------------------------------------

    async def CreateNote(self, request: pb.CreateNoteRequest, context: Context) -> pb.ClinicalNote:
        v = Violations()
        encounter_id = v.resource_id("parent", request.parent, collection="encounters")
        if not request.HasField("note"):
            v.add("note", "is required")
        values = note_type(v, "note.note_type", request.note.note_type)
        text = note_text(v, "note.text", request.note.text)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert encounter_id is not None and text is not None
        permit, _ = await self._authorize("create", "emr.note", encounter_id)
        key = RequestKey.of(request, request_id)
        values.update(
            encounter_id=encounter_id,
            author_id=identity.caller_staff_id_or_nobody(),
            status="preliminary",
        )

        async def write() -> store.Note:
            async with self._db.transaction() as session:
                encounter = await store.get_encounter(session, encounter_id, share=True)
                earlier = await key.first(
                    lambda used: store.note_by_request(session, self._cipher, used)
                )
                if earlier is None:
                    store.writable(encounter)
                note = earlier or await key.create(
                    lambda: store.insert_note(session, self._cipher, values, text, key.pair),
                    lambda used: store.note_by_request(session, self._cipher, used),
                )
                assert note is not None  # key.create returns a row or raises
                await self._audit("create", permit, encounter, _note(note), _NOTE)
                return note

        return _note_proto(await write())

    async def GetNote(self, request: pb.GetNoteRequest, context: Context) -> pb.ClinicalNote:
        encounter_id, note_id = required_child_id(
            "name", request.name, parent="encounters", collection="notes"
        )
        permit, seen = await self._authorize("read", "emr.note", encounter_id, note_id=note_id)
        await self._audit("read", permit, seen.encounter, _note(seen.note), _NOTE)
        return _note_proto(seen.note)

    async def ListNotes(
        self, request: pb.ListNotesRequest, context: Context
    ) -> pb.ListNotesResponse:
        v = Violations()
        encounter_id = v.resource_id("parent", request.parent, collection="encounters")
        limit = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        assert encounter_id is not None
        query = f"notes {encounter_id} {request.include_superseded}"
        keyset = self._pages.keyset(request.page_token, query=query, limit=limit, after=time_and_id)
        permit, seen = await self._authorize("read", "emr.note", encounter_id)
        async with self._db.read() as session:
            rows = await store.list_notes(
                session,
                self._cipher,
                encounter_id,
                include_superseded=request.include_superseded,
                after=keyset.after,
                limit=keyset.read_limit,
            )
        page = keyset.page(rows, lambda n: time_and_id_values(n.create_time, n.id))
        patient = f"patients/{seen.encounter.patient_id}"
        await self._access.record_each(
            "read", [(permit, patient, _note(n)) for n in page.rows], _NOTE
        )
        return pb.ListNotesResponse(
            notes=[_note_proto(n) for n in page.rows], next_page_token=page.next_page_token
        )

    async def ListNoteVersions(
        self, request: pb.ListNoteVersionsRequest, context: Context
    ) -> pb.ListNoteVersionsResponse:
        encounter_id, note_id = required_child_id(
            "name", request.name, parent="encounters", collection="notes"
        )
        permit, seen = await self._authorize("read", "emr.note", encounter_id, note_id=note_id)
        async with self._db.read() as session:
            versions = await store.history(session, self._cipher, seen.note)
        patient = f"patients/{seen.encounter.patient_id}"
        await self._access.record_each(
            "read", [(permit, patient, _note(n)) for n in versions], _NOTE
        )
        return pb.ListNoteVersionsResponse(notes=[_note_proto(n) for n in versions])

    async def UpdateNote(self, request: pb.UpdateNoteRequest, context: Context) -> pb.ClinicalNote:
        v = Violations()
        ids = v.child_id("note.name", request.note.name, parent="encounters", collection="notes")
        paths = require_paths(v, "update_mask", request.update_mask.paths, NOTE_UPDATABLE)
        values: dict[str, Any] = {}
        if "note_type" in paths:
            values = note_type(v, "note.note_type", request.note.note_type)
        text = note_text(v, "note.text", request.note.text) if "text" in paths else None
        v.raise_if_any()
        assert ids is not None
        encounter_id, note_id = ids
        permit, seen = await self._authorize(
            "update", "emr.note", encounter_id, note_id=note_id, fields=tuple(paths)
        )
        _require_author(seen.note)
        async with self._db.transaction() as session:
            encounter = await store.get_encounter(session, encounter_id, share=True)
            note = await store.get_note(session, self._cipher, encounter_id, note_id, lock=True)
            if note.status == "preliminary":
                store.writable(encounter)
            note = await store.update_note(
                session, self._cipher, note, values=values, text=text, etag=request.note.etag
            )
            await self._audit("update", permit, encounter, _note(note), _NOTE)
        return _note_proto(note)

    async def SignNote(self, request: pb.SignNoteRequest, context: Context) -> pb.ClinicalNote:
        encounter_id, note_id = required_child_id(
            "name", request.name, parent="encounters", collection="notes"
        )
        permit, seen = await self._authorize(
            "update", "emr.note", encounter_id, note_id=note_id, fields=("status",)
        )
        _require_author(seen.note)
        async with self._db.transaction() as session:
            encounter = await store.get_encounter(session, encounter_id, share=True)
            note = await store.get_note(session, self._cipher, encounter_id, note_id, lock=True)
            if note.status == "preliminary":
                store.writable(encounter)
            note = await store.sign_note(session, self._cipher, note, request.etag)
            await self._audit("update", permit, encounter, _note(note), _NOTE)
        return _note_proto(note)

    async def AmendNote(self, request: pb.AmendNoteRequest, context: Context) -> pb.ClinicalNote:
        v = Violations()
        ids = v.child_id("name", request.name, parent="encounters", collection="notes")
        text = note_text(v, "text", request.text)
        why = reason(v, "reason", request.reason)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert ids is not None and text is not None
        encounter_id, note_id = ids
        permit, seen = await self._authorize("create", "emr.note", encounter_id, note_id=note_id)
        author, attending = seen.note.author_id, seen.encounter.practitioner_id
        allowed = identity.is_caller(author) or identity.is_caller(attending)
        if not allowed and identity.current_or_none() is not None:
            raise PermissionDenied(
                "only the note's author or the attending practitioner may amend it",
                reason="NOT_AUTHOR_OR_ATTENDING",
            )
        key = RequestKey.of(request, request_id)

        async def write() -> store.Note:
            async with self._db.transaction() as session:
                encounter = await store.get_encounter(session, encounter_id, share=True)
                original = await store.get_note(
                    session, self._cipher, encounter_id, note_id, lock=True
                )
                earlier = await key.first(
                    lambda used: store.note_by_request(session, self._cipher, used)
                )
                if earlier is not None:
                    await self._audit("create", permit, encounter, _note(earlier), _NOTE)
                    return earlier
                store.writable(encounter)
                refused = store.amendment_refused(original)
                if refused is not None:
                    raise refused
                values = {
                    "encounter_id": encounter_id,
                    "author_id": identity.caller_staff_id_or_nobody(),
                    "type_system": original.type_system,
                    "type_code": original.type_code,
                    "type_display": original.type_display,
                    "status": "amended",
                    "sign_time": dt.datetime.now(dt.UTC),
                    "amends_id": original.id,
                    "amend_reason": why,
                }
                note = await key.create(
                    lambda: store.insert_note(session, self._cipher, values, text, key.pair),
                    lambda used: store.note_by_request(session, self._cipher, used),
                )
                await self._audit("create", permit, encounter, _note(note), _NOTE)
                return note

        try:
            return _note_proto(await write())
        except IntegrityError as error:
            raced = store.superseded_race(error)
            if raced is not None:
                raise raced from None
            raise

    # --- diagnoses ---------------------------------------------------------------------------

    async def AddDiagnosis(self, request: pb.AddDiagnosisRequest, context: Context) -> pb.Diagnosis:
        v = Violations()
        encounter_id = v.resource_id("parent", request.parent, collection="encounters")
        if not request.HasField("diagnosis"):
            v.add("diagnosis", "is required")
        diagnosis = request.diagnosis
        values = diagnosis_code(v, "diagnosis.code", diagnosis.code)
        values.update(
            diagnosis_fields(v, diagnosis, DIAGNOSIS_UPDATABLE, dt.datetime.now(dt.UTC).date())
        )
        if diagnosis.verification_status == pb.CONDITION_VERIFICATION_STATUS_ENTERED_IN_ERROR:
            v.add("diagnosis.verification_status", "cannot be ENTERED_IN_ERROR on a new diagnosis")
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert encounter_id is not None
        permit, _ = await self._authorize("create", "emr.diagnosis", encounter_id)
        key = RequestKey.of(request, request_id)
        values.update(encounter_id=encounter_id, recorder_id=identity.caller_staff_id_or_nobody())

        async def write() -> Any:
            async with self._db.transaction() as session:
                encounter = await store.get_encounter(session, encounter_id, share=True)
                earlier = await key.first(lambda used: store.diagnosis_by_request(session, used))
                if earlier is None:
                    store.writable(encounter)
                row = earlier or await key.create(
                    lambda: store.insert_diagnosis(session, values, key.pair),
                    lambda used: store.diagnosis_by_request(session, used),
                )
                assert row is not None  # key.create returns a row or raises
                name = diagnosis_name(encounter_id, row.id)
                await self._audit("create", permit, encounter, name, _DIAGNOSIS)
                return row

        try:
            return diagnosis_to_proto(await write())
        except IntegrityError as error:
            conflict = store.diagnosis_conflict(error)
            if conflict is not None:
                raise conflict from None
            raise

    async def GetDiagnosis(self, request: pb.GetDiagnosisRequest, context: Context) -> pb.Diagnosis:
        encounter_id, diagnosis_id = required_child_id(
            "name", request.name, parent="encounters", collection="diagnoses"
        )
        permit, seen = await self._authorize("read", "emr.diagnosis", encounter_id)
        async with self._db.read() as session:
            row = await store.get_diagnosis(session, encounter_id, diagnosis_id)
        name = diagnosis_name(encounter_id, row.id)
        await self._audit("read", permit, seen.encounter, name, _DIAGNOSIS)
        return diagnosis_to_proto(row)

    async def ListDiagnoses(
        self, request: pb.ListDiagnosesRequest, context: Context
    ) -> pb.ListDiagnosesResponse:
        v = Violations()
        encounter_id = v.resource_id("parent", request.parent, collection="encounters")
        limit = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        assert encounter_id is not None
        query = f"diagnoses {encounter_id} {request.include_entered_in_error}"
        keyset = self._pages.keyset(
            request.page_token,
            query=query,
            limit=limit,
            after=lambda c: (c.integer("r"), c.time("t"), c.uuid("i")),
        )
        permit, seen = await self._authorize("read", "emr.diagnosis", encounter_id)
        async with self._db.read() as session:
            rows = await store.list_diagnoses(
                session,
                encounter_id,
                include_entered_in_error=request.include_entered_in_error,
                after=keyset.after,
                limit=keyset.read_limit,
            )
        page = keyset.page(rows, lambda r: {"r": r.rank, **time_and_id_values(r.create_time, r.id)})
        patient = f"patients/{seen.encounter.patient_id}"
        await self._access.record_each(
            "read",
            [(permit, patient, diagnosis_name(encounter_id, r.id)) for r in page.rows],
            _DIAGNOSIS,
        )
        return pb.ListDiagnosesResponse(
            diagnoses=[diagnosis_to_proto(r) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    async def UpdateDiagnosis(
        self, request: pb.UpdateDiagnosisRequest, context: Context
    ) -> pb.Diagnosis:
        v = Violations()
        ids = v.child_id(
            "diagnosis.name", request.diagnosis.name, parent="encounters", collection="diagnoses"
        )
        paths = require_paths(v, "update_mask", request.update_mask.paths, DIAGNOSIS_UPDATABLE)
        values = diagnosis_fields(
            v, request.diagnosis, frozenset(paths), dt.datetime.now(dt.UTC).date()
        )
        v.raise_if_any()
        assert ids is not None
        encounter_id, diagnosis_id = ids
        permit, _ = await self._authorize(
            "update", "emr.diagnosis", encounter_id, fields=tuple(paths)
        )
        try:
            async with self._db.transaction() as session:
                encounter = await store.get_encounter(session, encounter_id, share=True)
                store.writable(encounter)
                row = await store.update_diagnosis(
                    session, encounter_id, diagnosis_id, values, request.diagnosis.etag
                )
                name = diagnosis_name(encounter_id, row.id)
                await self._audit("update", permit, encounter, name, _DIAGNOSIS)
        except IntegrityError as error:
            conflict = store.diagnosis_conflict(error)
            if conflict is not None:
                raise conflict from None
            raise
        return diagnosis_to_proto(row)


@dataclass(frozen=True)
class _Proposed:
    """The encounter a CreateEncounter would make, as the policy sees it."""

    patient_id: uuid.UUID
    department_id: uuid.UUID
    practitioner_id: uuid.UUID | None
    encounter_class: str
    surgical: bool
    sensitive: bool


async def _found(seen: Seen) -> Seen:
    return seen


def _require_author(note: Any) -> None:
    if identity.current_or_none() is not None and not identity.is_caller(note.author_id):
        raise PermissionDenied("only the note's author may change or sign it", reason="NOT_AUTHOR")


def _note(note: Any) -> str:
    return note_name(note.encounter_id, note.id)


def _note_proto(note: store.Note) -> pb.ClinicalNote:
    return note_to_proto(note.row, note.text)
