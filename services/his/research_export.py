"""`his export research <dir>`: a de-identified research export of patients and appointments.

The services de-identify: PatientService.ListResearchPatients gives only the patients with an
active research consent, as keyed pseudonyms with birth year, gender and state;
SchedulingService.ListResearchAppointments gives every appointment under the same pseudonyms with
a start date only. This module pages through both, keeps the appointments of the exported patients
only, and writes `patients.csv`, `appointments.csv` and a `README.txt` saying what was removed.
No identifying value ever reaches it.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.enums import EnumText
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb
from his_client import HisClients, static_token

PATIENTS_FILE = "patients.csv"
APPOINTMENTS_FILE = "appointments.csv"
README_FILE = "README.txt"
FILES = (PATIENTS_FILE, APPOINTMENTS_FILE, README_FILE)
PATIENT_COLUMNS = ("pseudonym", "birth_year", "gender", "state")
APPOINTMENT_COLUMNS = (
    "patient_pseudonym",
    "department",
    "service_type_system",
    "service_type_code",
    "start_date",
    "status",
)
PAGE_SIZE = 500

_GENDER = EnumText(patient_pb.AdministrativeGender.DESCRIPTOR)
_STATE = EnumText(patient_pb.PatientState.DESCRIPTOR)
_STATUS = EnumText(scheduling_pb.AppointmentStatus.DESCRIPTOR)


class ExportError(Exception):
    """The export cannot be made as asked (files exist, keys differ); nothing was written."""


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    directory: Path
    patients: int
    # Appointments of exported patients (written) and of everyone else (left out).
    appointments: int
    appointments_left_out: int
    key_id: str
    created: dt.datetime


class _Page(Protocol):
    next_page_token: str
    pseudonym_key_id: str


P = TypeVar("P", bound=_Page)


async def _pages(call: Callable[[str], Awaitable[P]]) -> AsyncIterator[P]:
    """Every page of a List rpc, following next_page_token to the end."""
    token = ""
    while True:
        page = await call(token)
        yield page
        token = page.next_page_token
        if not token:
            return


def _refuse_existing(directory: Path, force: bool) -> None:
    existing = [name for name in FILES if (directory / name).exists()]
    if existing and not force:
        raise ExportError(
            f"{directory} already holds {', '.join(existing)}; "
            "choose an empty directory or pass --force to overwrite"
        )


async def export_research(
    directory: Path,
    his: HisClients,
    *,
    force: bool = False,
    time_zone: str = "UTC",
    page_size: int = PAGE_SIZE,
) -> ExportSummary:
    """Write the research export of the hospital `his` reaches into `directory` (created)."""
    await asyncio.to_thread(_refuse_existing, directory, force)
    key_ids: set[str] = set()

    patients: dict[str, patient_pb.ResearchPatient] = {}

    async def patient_page(token: str) -> patient_pb.ListResearchPatientsResponse:
        return await his.patient.ListResearchPatients(
            patient_pb.ListResearchPatientsRequest(page_size=page_size, page_token=token)
        )

    async for patient_reply in _pages(patient_page):
        key_ids.add(patient_reply.pseudonym_key_id)
        for patient in patient_reply.research_patients:
            patients[patient.pseudonym] = patient

    appointments: list[scheduling_pb.ResearchAppointment] = []
    left_out = 0

    async def appointment_page(token: str) -> scheduling_pb.ListResearchAppointmentsResponse:
        return await his.scheduling.ListResearchAppointments(
            scheduling_pb.ListResearchAppointmentsRequest(
                page_size=page_size, page_token=token, time_zone=time_zone
            )
        )

    async for appointment_reply in _pages(appointment_page):
        key_ids.add(appointment_reply.pseudonym_key_id)
        for appointment in appointment_reply.research_appointments:
            if appointment.patient_pseudonym in patients:
                appointments.append(appointment)
            else:
                left_out += 1

    if len(key_ids) != 1:
        raise ExportError(
            "the patient and scheduling services made pseudonyms under different keys "
            f"({', '.join(sorted(key_ids))}): their tables would not join; give both the same "
            "HIS_RESEARCH_PSEUDONYM_KEY"
        )
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    summary = ExportSummary(
        directory=directory,
        patients=len(patients),
        appointments=len(appointments),
        appointments_left_out=left_out,
        key_id=key_ids.pop(),
        created=created,
    )
    files = {
        PATIENTS_FILE: _patients_csv(patients.values()),
        APPOINTMENTS_FILE: _appointments_csv(appointments),
        README_FILE: _readme(summary, time_zone),
    }
    await asyncio.to_thread(_write_all, directory, files, force)
    return summary


def _patients_csv(patients: Iterable[patient_pb.ResearchPatient]) -> str:
    rows = sorted(
        (p.pseudonym, str(p.birth_year), _GENDER.text(p.gender), _STATE.text(p.state))
        for p in patients
    )
    return _csv(PATIENT_COLUMNS, rows)


def _appointments_csv(appointments: list[scheduling_pb.ResearchAppointment]) -> str:
    rows = [
        (
            a.patient_pseudonym,
            a.department,
            a.service_type.system,
            a.service_type.code,
            dt.date(a.start_date.year, a.start_date.month, a.start_date.day).isoformat(),
            _STATUS.text(a.status),
        )
        for a in appointments
    ]
    # By date and pseudonym: the order of the rows tells nothing about the time of day.
    rows.sort(key=lambda row: (row[4], *row[:4], row[5]))
    return _csv(APPOINTMENT_COLUMNS, rows)


def _csv(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _readme(summary: ExportSummary, time_zone: str) -> str:
    return f"""HIS Mesh de-identified research export
=======================================

Created:           {summary.created.isoformat().replace("+00:00", "Z")}
Pseudonym key id:  {summary.key_id}
Patients:          {summary.patients}
Appointments:      {summary.appointments}
Start dates in:    {time_zone}

Who is in it
- Only patients with an active research consent (scope research, in force on the day of the
  export). Merged duplicate records are left out; inactive records are kept (state column).
- Only the appointments of those patients; the other patients' appointments
  ({summary.appointments_left_out}) were left out.

What was removed (inside the services; no identifying value left them for this export)
- Names, national identifiers, phone numbers, addresses, medical record numbers and record ids.
  Each patient appears only as a pseudonym: HMAC-SHA256 of the patient's record name under the
  research pseudonym key (base32, 20 characters). It is the same in both files and in every export
  with the same key id, and cannot be turned back into the patient without the key.
- The date of birth: only the year is kept.
- Appointment times: only the start date is kept. Practitioners, slots, notes and cancellation
  reasons are left out.

Files
- {PATIENTS_FILE}: {", ".join(PATIENT_COLUMNS)}
- {APPOINTMENTS_FILE}: {", ".join(APPOINTMENT_COLUMNS)}
  (appointments.csv joins patients.csv on patient_pseudonym = pseudonym)

Exports with different key ids use unrelated pseudonyms and cannot be joined.
"""


def _write_all(directory: Path, files: Mapping[str, str], force: bool) -> None:
    """Create the directory and write the files (checked again: it may have filled meanwhile)."""
    directory.mkdir(parents=True, exist_ok=True)
    _refuse_existing(directory, force)
    for name, text in files.items():
        _write(directory / name, text)


def _write(path: Path, text: str) -> None:
    """Write `text` under a temporary name and rename it, so no half file is ever seen."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


async def run(
    directory: Path, *, user: str, force: bool = False, time_zone: str = "UTC"
) -> ExportSummary:
    """The command: log in (unless HIS_TOKEN holds a token) and export."""
    from his.login import issue_token  # noqa: PLC0415

    token = os.environ.get("HIS_TOKEN") or await issue_token(user)
    async with HisClients(token=static_token(token)) as his:
        return await export_research(directory, his, force=force, time_zone=time_zone)
