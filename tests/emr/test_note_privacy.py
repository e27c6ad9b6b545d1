"""Note text is patient data: encrypted at rest and never logged.

Notes are written, changed, signed, amended, read, listed and refused while everything the process
logs is captured as a service logs it (JSON, DEBUG); no line holds their text. Then every file of
the database's data directory (tables, indexes, WAL, server log) is searched: the text is nowhere
in plain text, while the encrypted column really holds each version.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.emr.v1 import emr_service_pb2 as pb
from tests.emr.helpers import Clinic, Emr, Patients, new_patient, note, open_encounter
from tests.security.test_no_identifiers_in_logs import captured_logs
from tests.support import fails


def _marker(label: str) -> str:
    """A phrase that can only come from this test's notes."""
    return f"{label} qzxv{uuid.uuid4().hex[:12]} murmur over the aortic valve"


async def test_note_text_is_in_no_log_line_and_in_no_database_file(
    emr: Emr, patients: Patients, clinic: Clinic, emr_db: AsyncEngine
) -> None:
    doctor, stranger = clinic.doctor, clinic.other_doctor
    assert doctor is not None and stranger is not None
    secrets = [_marker("draft"), _marker("revised"), _marker("amended")]
    # Stored in clear (an amendment's reason): the search below must find it, or it proves nothing.
    in_clear = f"wording qzxv{uuid.uuid4().hex[:12]}"
    with captured_logs() as lines:
        made = await open_encounter(emr, doctor, await new_patient(patients), clinic.clinic)
        draft = await emr.CreateNote(
            pb.CreateNoteRequest(parent=made.name, note=note(secrets[0])), metadata=doctor.md
        )
        await emr.UpdateNote(
            pb.UpdateNoteRequest(
                note=pb.ClinicalNote(name=draft.name, text=secrets[1]),
                update_mask=FieldMask(paths=["text"]),
            ),
            metadata=doctor.md,
        )
        await emr.SignNote(pb.SignNoteRequest(name=draft.name), metadata=doctor.md)
        await emr.AmendNote(
            pb.AmendNoteRequest(name=draft.name, text=secrets[2], reason=in_clear),
            metadata=doctor.md,
        )
        # Refusals and bad input carry the text too: neither may echo it.
        await fails(emr.GetNote(pb.GetNoteRequest(name=draft.name), metadata=stranger.md))
        await fails(
            emr.CreateNote(
                pb.CreateNoteRequest(parent=made.name, note=pb.ClinicalNote(text=secrets[0])),
                metadata=doctor.md,
            )
        )
        listed = await emr.ListNotes(
            pb.ListNotesRequest(parent=made.name, include_superseded=True), metadata=doctor.md
        )
    assert {n.text for n in listed.notes} == {secrets[1], secrets[2]}
    assert lines, "nothing was captured: the check below would mean nothing"
    for secret in secrets:
        for word in (secret, secret.split()[1]):
            assert not [line for line in lines if word in line], "note text in a log line"

    async with emr_db.connect() as connection:
        versions = await connection.scalar(
            text("SELECT count(*) FROM emr.notes WHERE encounter_id = :id"),
            {"id": made.name.removeprefix("encounters/")},
        )
        await connection.execute(text("CHECKPOINT"))
        data_dir = Path(await connection.scalar(text("SHOW data_directory")))
    assert versions == 2
    needles = [secret.split()[1].encode() for secret in secrets]
    found, searched = await asyncio.to_thread(_search, data_dir, needles)
    assert searched > 100, "the data directory was not searched"
    assert found == [], "note text in plain text in these files"
    control, _ = await asyncio.to_thread(_search, data_dir, [in_clear.split()[1].encode()])
    assert control, "a value stored in clear was not found: the search cannot see this test's rows"


def _search(data_dir: Path, needles: list[bytes]) -> tuple[list[str], int]:
    """(files holding any needle, files searched) under `data_dir`."""
    found: list[str] = []
    searched = 0
    for path in data_dir.rglob("*"):
        if not path.is_file():
            continue
        try:
            content = path.read_bytes()
        except OSError:
            continue
        searched += 1
        found += [str(path) for needle in needles if needle in content]
    return found, searched
