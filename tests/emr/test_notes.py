"""Clinical notes: drafts, signing (then immutable), amendments that keep every version."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as pb
from tests.emr.helpers import (
    DOMAIN,
    Clinic,
    Clinician,
    Emr,
    Patients,
    missing,
    new_patient,
    note,
    open_encounter,
    request_id,
)
from tests.support import fails, invalid_in

DISCHARGE = types_pb2.Coding(system="http://loinc.org", code="18842-5", display="Discharge summary")


async def _encounter(emr: Emr, patients: Patients, clinic: Clinic) -> tuple[Clinician, str]:
    doctor = clinic.doctor
    assert doctor is not None
    made = await open_encounter(emr, doctor, await new_patient(patients), clinic.clinic)
    return doctor, made.name


async def _signed(emr: Emr, doctor: Clinician, encounter: str, words: str) -> pb.ClinicalNote:
    draft = await emr.CreateNote(
        pb.CreateNoteRequest(parent=encounter, note=note(words)), metadata=doctor.md
    )
    return await emr.SignNote(pb.SignNoteRequest(name=draft.name), metadata=doctor.md)


async def test_a_draft_is_written_changed_and_signed_by_its_author(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    draft = await emr.CreateNote(
        pb.CreateNoteRequest(parent=encounter, note=note("Chest pain since\nthis morning.")),
        metadata=doctor.md,
    )
    assert draft.status == pb.NOTE_STATUS_PRELIMINARY
    assert draft.author == doctor.name
    assert draft.text == "Chest pain since\nthis morning."
    assert not draft.HasField("sign_time")
    changed = await emr.UpdateNote(
        pb.UpdateNoteRequest(
            note=pb.ClinicalNote(name=draft.name, text="Chest pain since 6 am.", etag=draft.etag),
            update_mask=FieldMask(paths=["text"]),
        ),
        metadata=doctor.md,
    )
    assert changed.text == "Chest pain since 6 am."
    assert changed.etag != draft.etag
    # Signing what the signer read: a stale etag is ABORTED, nothing is signed.
    stale = await fails(
        emr.SignNote(pb.SignNoteRequest(name=draft.name, etag=draft.etag), metadata=doctor.md)
    )
    assert stale.code == grpc.StatusCode.ABORTED
    signed = await emr.SignNote(
        pb.SignNoteRequest(name=draft.name, etag=changed.etag), metadata=doctor.md
    )
    assert signed.status == pb.NOTE_STATUS_FINAL
    assert signed.HasField("sign_time")
    again = await emr.SignNote(pb.SignNoteRequest(name=draft.name, etag="x"), metadata=doctor.md)
    assert again == signed
    got = await emr.GetNote(pb.GetNoteRequest(name=draft.name), metadata=doctor.md)
    assert got == signed


async def test_a_stale_etag_on_a_draft_is_aborted(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    draft = await emr.CreateNote(
        pb.CreateNoteRequest(parent=encounter, note=note("first words")), metadata=doctor.md
    )
    update = pb.UpdateNoteRequest(
        note=pb.ClinicalNote(name=draft.name, text="second words", etag=draft.etag),
        update_mask=FieldMask(paths=["text"]),
    )
    await emr.UpdateNote(update, metadata=doctor.md)
    update.note.text = "third words"
    failure = await fails(emr.UpdateNote(update, metadata=doctor.md))
    assert failure.code == grpc.StatusCode.ABORTED
    assert failure.reason == "ETAG_MISMATCH"


async def test_a_signed_note_cannot_be_changed(
    emr: Emr, patients: Patients, clinic: Clinic, emr_db: AsyncEngine
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    signed = await _signed(emr, doctor, encounter, "Signed words stay as they are.")
    for paths, changed in (
        (["text"], pb.ClinicalNote(name=signed.name, text="rewritten")),
        (["note_type"], pb.ClinicalNote(name=signed.name, note_type=DISCHARGE)),
    ):
        failure = await fails(
            emr.UpdateNote(
                pb.UpdateNoteRequest(note=changed, update_mask=FieldMask(paths=paths)),
                metadata=doctor.md,
            )
        )
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.reason == "NOTE_SIGNED"
    # Not even behind the service's back: the database refuses to change or delete it.
    note_id = signed.name.rsplit("/", 1)[1]
    for statement in (
        "UPDATE emr.notes SET text_enc = '\\x00'::bytea WHERE id = :id",
        "UPDATE emr.notes SET status = 'preliminary', sign_time = NULL WHERE id = :id",
        "DELETE FROM emr.notes WHERE id = :id",
    ):
        with pytest.raises(Exception, match=r"never deleted|cannot be changed"):
            async with emr_db.begin() as connection:
                await connection.execute(text(statement), {"id": note_id})
    assert await emr.GetNote(pb.GetNoteRequest(name=signed.name), metadata=doctor.md) == signed


async def test_an_amendment_keeps_the_original_and_the_history_lists_every_version(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    original = await _signed(emr, doctor, encounter, "BP 150/95, no medication.")
    draft_fail = await fails(
        emr.AmendNote(
            pb.AmendNoteRequest(name=missing(f"{encounter}/notes"), text="x", reason="y"),
            metadata=doctor.md,
        )
    )
    assert draft_fail.code == grpc.StatusCode.NOT_FOUND
    first = await emr.AmendNote(
        pb.AmendNoteRequest(
            name=original.name,
            text="BP 150/95, on amlodipine 5 mg.",
            reason="medication omitted",
            request_id=request_id(),
        ),
        metadata=doctor.md,
    )
    assert first.status == pb.NOTE_STATUS_AMENDED
    assert first.amends == original.name
    assert first.amend_reason == "medication omitted"
    assert first.HasField("sign_time")
    assert first.note_type == original.note_type
    before = await emr.GetNote(pb.GetNoteRequest(name=original.name), metadata=doctor.md)
    assert before.text == original.text
    assert before.status == pb.NOTE_STATUS_FINAL
    assert before.superseded_by == first.name
    # Only the newest version can be amended.
    superseded = await fails(
        emr.AmendNote(
            pb.AmendNoteRequest(name=original.name, text="again", reason="again"),
            metadata=doctor.md,
        )
    )
    assert superseded.code == grpc.StatusCode.FAILED_PRECONDITION
    assert superseded.reason == "NOTE_SUPERSEDED"
    second = await emr.AmendNote(
        pb.AmendNoteRequest(
            name=first.name, text="BP 150/95, on amlodipine 10 mg.", reason="dose corrected"
        ),
        metadata=doctor.md,
    )
    for version in (original.name, first.name, second.name):
        history = await emr.ListNoteVersions(
            pb.ListNoteVersionsRequest(name=version), metadata=doctor.md
        )
        assert [n.name for n in history.notes] == [original.name, first.name, second.name]
        assert [n.text for n in history.notes] == [
            "BP 150/95, no medication.",
            "BP 150/95, on amlodipine 5 mg.",
            "BP 150/95, on amlodipine 10 mg.",
        ]
    current = await emr.ListNotes(pb.ListNotesRequest(parent=encounter), metadata=doctor.md)
    assert [n.name for n in current.notes] == [second.name]
    everything = await emr.ListNotes(
        pb.ListNotesRequest(parent=encounter, include_superseded=True), metadata=doctor.md
    )
    assert [n.name for n in everything.notes] == [second.name, first.name, original.name]


async def test_a_draft_cannot_be_amended_and_a_replayed_amendment_is_the_first(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    draft = await emr.CreateNote(
        pb.CreateNoteRequest(parent=encounter, note=note("draft")), metadata=doctor.md
    )
    failure = await fails(
        emr.AmendNote(
            pb.AmendNoteRequest(name=draft.name, text="x", reason="y"), metadata=doctor.md
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "NOTE_NOT_SIGNED"
    signed = await emr.SignNote(pb.SignNoteRequest(name=draft.name), metadata=doctor.md)
    amend = pb.AmendNoteRequest(
        name=signed.name, text="corrected", reason="typo", request_id=request_id()
    )
    results = await asyncio.gather(*(emr.AmendNote(amend, metadata=doctor.md) for _ in range(8)))
    assert len({r.name for r in results}) == 1


async def test_only_the_author_changes_or_signs_a_draft_and_nurses_never_sign_a_doctors_note(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    colleague, nurse = clinic.colleague, clinic.nurse
    assert colleague is not None and nurse is not None
    draft = await emr.CreateNote(
        pb.CreateNoteRequest(parent=encounter, note=note("doctor's draft")), metadata=doctor.md
    )
    for caller in (colleague, nurse):
        failure = await fails(emr.SignNote(pb.SignNoteRequest(name=draft.name), metadata=caller.md))
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED, caller
    # The nurse records her own note, and signs that one.
    nursing = await emr.CreateNote(
        pb.CreateNoteRequest(
            parent=encounter,
            note=note(
                "Observations at 10:00: BP 130/85",
                types_pb2.Coding(system="http://loinc.org", code="34746-8"),
            ),
        ),
        metadata=nurse.md,
    )
    assert nursing.author == nurse.name
    signed = await emr.SignNote(pb.SignNoteRequest(name=nursing.name), metadata=nurse.md)
    assert signed.status == pb.NOTE_STATUS_FINAL


async def test_notes_of_a_cancelled_encounter_cannot_be_written(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    await emr.CancelEncounter(
        pb.CancelEncounterRequest(name=encounter, reason="left before seen"), metadata=doctor.md
    )
    failure = await fails(
        emr.CreateNote(
            pb.CreateNoteRequest(parent=encounter, note=note("late")), metadata=doctor.md
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "ENCOUNTER_CANCELLED"


async def test_a_replayed_create_returns_the_first_note(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    request = pb.CreateNoteRequest(parent=encounter, note=note("once"), request_id=request_id())
    results = await asyncio.gather(
        *(emr.CreateNote(request, metadata=doctor.md) for _ in range(10))
    )
    assert len({r.name for r in results}) == 1
    listed = await emr.ListNotes(pb.ListNotesRequest(parent=encounter), metadata=doctor.md)
    assert len(listed.notes) == 1


async def test_bad_notes_are_refused_naming_each_field(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    fields = await invalid_in(
        DOMAIN,
        emr.CreateNote(
            pb.CreateNoteRequest(
                parent=encounter,
                note=pb.ClinicalNote(
                    note_type=types_pb2.Coding(system="http://snomed.info/sct", code="x1"),
                    text="   ",
                ),
            ),
            metadata=doctor.md,
        ),
    )
    assert set(fields) == {"note.note_type.system", "note.note_type.code", "note.text"}
    long = await invalid_in(
        DOMAIN,
        emr.CreateNote(
            pb.CreateNoteRequest(parent=encounter, note=note("x" * 100_001)), metadata=doctor.md
        ),
    )
    assert long == ["note.text"]
    assert await invalid_in(
        DOMAIN, emr.CreateNote(pb.CreateNoteRequest(parent="visits/1"), metadata=doctor.md)
    ) == ["parent", "note", "note.note_type.system", "note.note_type.code", "note.text"]
    assert await invalid_in(
        DOMAIN,
        emr.AmendNote(pb.AmendNoteRequest(name=f"{encounter}/notes/1"), metadata=doctor.md),
    ) == ["name", "text", "reason"]
    assert await invalid_in(
        DOMAIN,
        emr.UpdateNote(
            pb.UpdateNoteRequest(
                note=pb.ClinicalNote(name=f"{encounter}/notes/1"),
                update_mask=FieldMask(paths=["author"]),
            ),
            metadata=doctor.md,
        ),
    ) == ["note.name", "update_mask"]
    for call in (
        emr.GetNote(pb.GetNoteRequest(name=encounter), metadata=doctor.md),
        emr.SignNote(pb.SignNoteRequest(name="notes/1"), metadata=doctor.md),
        emr.ListNoteVersions(pb.ListNoteVersionsRequest(name=""), metadata=doctor.md),
    ):
        assert await invalid_in(DOMAIN, call) == ["name"]
    assert await invalid_in(
        DOMAIN,
        emr.ListNotes(pb.ListNotesRequest(parent=encounter, page_size=-1), metadata=doctor.md),
    ) == ["page_size"]


async def test_a_missing_note_of_a_visible_encounter_is_not_found(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    name = missing(f"{encounter}/notes")
    for call in (
        emr.GetNote(pb.GetNoteRequest(name=name), metadata=doctor.md),
        emr.SignNote(pb.SignNoteRequest(name=name), metadata=doctor.md),
        emr.ListNoteVersions(pb.ListNoteVersionsRequest(name=name), metadata=doctor.md),
    ):
        assert (await fails(call)).code == grpc.StatusCode.NOT_FOUND


async def test_notes_are_listed_newest_first_in_pages(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    made = [
        (
            await emr.CreateNote(
                pb.CreateNoteRequest(parent=encounter, note=note(f"note {i}")), metadata=doctor.md
            )
        ).name
        for i in range(5)
    ]
    seen: list[str] = []
    request = pb.ListNotesRequest(parent=encounter, page_size=2)
    while True:
        page = await emr.ListNotes(request, metadata=doctor.md)
        seen += [n.name for n in page.notes]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == list(reversed(made))
