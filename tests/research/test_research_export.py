"""`his export research`: the files a researcher gets from the session's patient and scheduling."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from his.patient.v1 import patient_service_pb2 as patient_pb
from his.research_export import (
    APPOINTMENT_COLUMNS,
    FILES,
    PATIENT_COLUMNS,
    ExportError,
    ExportSummary,
    export_research,
    run,
)
from his.runtime.pseudonyms import Pseudonyms
from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb
from his_client import HisClients, static_token
from his_client.config import ClientConfig
from tests.conftest import addresses, service_config
from tests.identity import ISSUER
from tests.patient.helpers import make_patient, unique_word
from tests.scheduling.helpers import Patients, Stub, book, future_slots, tomorrow

ADMIN = ISSUER.staff("ADMINISTRATOR")


@dataclass
class Person:
    """A patient the test registered, with everything that identifies them."""

    patient: patient_pb.Patient

    @property
    def id(self) -> str:
        """The record id."""
        return self.patient.name.split("/")[1]

    @property
    def pseudonym(self) -> str:
        """The pseudonym the session's services give the patient."""
        return Pseudonyms.from_config(service_config("patient").research).patient(self.id)

    @property
    def identifying(self) -> list[str]:
        """Values that must not appear in an export."""
        p = self.patient
        return [
            p.family_name,
            *p.given_names,
            p.national_id.value,
            p.phone,
            p.phone.lstrip("+"),
            *p.address.lines,
            p.address.city,
            p.mrn,
            self.id,
        ]


async def _person(patients: Patients, *, research: bool, born: int = 1971) -> Person:
    patient = make_patient(
        family_name=unique_word("Rx"),
        given_names=[unique_word("Gv")],
        birth_date=(born, 8, 19),
        address=patient_pb.Address(lines=[f"{unique_word('St')} Road 7"], city=unique_word("Cy")),
    )
    created = await patients.CreatePatient(patient_pb.CreatePatientRequest(patient=patient))
    if research:
        await patients.GrantConsent(
            patient_pb.GrantConsentRequest(
                parent=created.name,
                consent=patient_pb.Consent(
                    scope=patient_pb.CONSENT_SCOPE_RESEARCH,
                    purpose=patient_pb.PURPOSE_OF_USE_RESEARCH,
                ),
            )
        )
    return Person(created)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _files(directory: Path) -> dict[str, str]:
    """Every file in `directory` by name, with its text."""
    return {p.name: p.read_text(encoding="utf-8") for p in directory.iterdir()}


def _clients(*running: RunningService, token: str = ADMIN) -> HisClients:
    return HisClients(ClientConfig.from_env(addresses(*running)), token=static_token(token))


async def _export(
    directory: Path, patient_service: RunningService, scheduling_service: RunningService, **kw: bool
) -> ExportSummary:
    async with _clients(patient_service, scheduling_service) as his:
        return await export_research(directory, his, time_zone="Asia/Shanghai", **kw)


@pytest.fixture
async def people(scheduling: Stub, patients: Patients) -> dict[str, Person]:
    """Consented with two appointments, consented without, and not consented with one."""
    made = await future_slots(scheduling, count=3)
    people = {
        "consented": await _person(patients, research=True, born=1966),
        "no_appointments": await _person(patients, research=True),
        "not_consented": await _person(patients, research=False),
    }
    await book(scheduling, people["consented"].patient.name, made.slots[0])
    cancelled = await book(scheduling, people["consented"].patient.name, made.slots[1])
    await scheduling.CancelAppointment(
        scheduling_pb.CancelAppointmentRequest(name=cancelled.name, reason="moved abroad")
    )
    await book(scheduling, people["not_consented"].patient.name, made.slots[2])
    return people


async def test_the_export_holds_consented_patients_and_their_appointments_only(
    people: dict[str, Person],
    patient_service: RunningService,
    scheduling_service: RunningService,
    tmp_path: Path,
) -> None:
    directory = tmp_path / "new" / "export"

    summary = await _export(directory, patient_service, scheduling_service)

    assert sorted(_files(directory)) == sorted(FILES)
    patients = _rows(directory / "patients.csv")
    appointments = _rows(directory / "appointments.csv")
    assert tuple(patients[0]) == PATIENT_COLUMNS
    assert tuple(appointments[0]) == APPOINTMENT_COLUMNS
    by_pseudonym = {row["pseudonym"]: row for row in patients}
    consented = people["consented"]
    assert by_pseudonym[consented.pseudonym] == {
        "pseudonym": consented.pseudonym,
        "birth_year": "1966",
        "gender": "female",
        "state": "active",
    }
    assert people["no_appointments"].pseudonym in by_pseudonym
    assert people["not_consented"].pseudonym not in by_pseudonym
    mine = [row for row in appointments if row["patient_pseudonym"] == consented.pseudonym]
    day = tomorrow().isoformat()
    assert sorted((row["start_date"], row["status"]) for row in mine) == [
        (day, "booked"),
        (day, "cancelled"),
    ]
    assert all(row["service_type_code"] == "general" for row in mine)
    assert all(row["department"].startswith("departments/") for row in mine)
    # Join consistency: every appointment belongs to an exported patient.
    assert {row["patient_pseudonym"] for row in appointments} <= set(by_pseudonym)
    assert not any(
        row["patient_pseudonym"] == people["not_consented"].pseudonym for row in appointments
    )
    assert summary.patients == len(patients) == len(by_pseudonym)
    assert summary.appointments == len(appointments)
    assert summary.appointments_left_out >= 1
    readme = (directory / "README.txt").read_text(encoding="utf-8")
    assert f"Pseudonym key id:  {summary.key_id}" in readme
    assert f"Patients:          {summary.patients}" in readme
    assert "only the year is kept" in readme


async def test_no_name_identifier_phone_or_address_appears_in_any_file(
    people: dict[str, Person],
    patient_service: RunningService,
    scheduling_service: RunningService,
    tmp_path: Path,
) -> None:
    await _export(tmp_path, patient_service, scheduling_service)

    text = "\n".join(_files(tmp_path).values())
    for person in people.values():
        for value in person.identifying:
            assert value
            assert value not in text, value
    assert "moved abroad" not in text
    assert "T" not in "".join(row["start_date"] for row in _rows(tmp_path / "appointments.csv"))


async def test_existing_files_are_kept_unless_forced_and_pseudonyms_stay_the_same(
    people: dict[str, Person],
    patient_service: RunningService,
    scheduling_service: RunningService,
    tmp_path: Path,
) -> None:
    first = await _export(tmp_path, patient_service, scheduling_service)
    before = _files(tmp_path)

    with pytest.raises(ExportError, match="--force"):
        await _export(tmp_path, patient_service, scheduling_service)
    assert _files(tmp_path) == before

    again = await _export(tmp_path, patient_service, scheduling_service, force=True)

    assert again.key_id == first.key_id
    patients = {row["pseudonym"] for row in _rows(tmp_path / "patients.csv")}
    assert {people["consented"].pseudonym, people["no_appointments"].pseudonym} <= patients
    after = _files(tmp_path)
    assert set(before["patients.csv"].splitlines()) <= set(after["patients.csv"].splitlines())
    assert sorted(after) == sorted(FILES)  # no temporaries left


async def test_a_caller_who_may_not_export_gets_no_files(
    patient_service: RunningService, scheduling_service: RunningService, tmp_path: Path
) -> None:
    directory = tmp_path / "export"
    async with _clients(
        patient_service, scheduling_service, token=ISSUER.staff("REGISTRAR")
    ) as his:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await export_research(directory, his)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not directory.exists()


async def test_the_command_uses_the_token_in_his_token(
    people: dict[str, Person],
    patient_service: RunningService,
    scheduling_service: RunningService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in addresses(patient_service, scheduling_service).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HIS_TOKEN", ADMIN)

    summary = await run(tmp_path, user="nobody-logs-in")

    assert summary.patients >= 2
    assert people["consented"].pseudonym in _files(tmp_path)["patients.csv"]


async def _his(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the `his` command in a child process while the session servers keep serving."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "his.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_his_export_research_writes_the_files_prints_counts_and_keeps_them(
    people: dict[str, Person],
    patient_service: RunningService,
    scheduling_service: RunningService,
    tmp_path: Path,
) -> None:
    env = {**addresses(patient_service, scheduling_service), "HIS_TOKEN": ADMIN}
    directory = str(tmp_path / "research")

    code, out, err = await _his("export", "research", directory, env=env)
    again = await _his("export", "research", directory, env=env)
    forced = await _his("export", "research", directory, "--force", env=env)

    assert (code, err) == (0, "")
    patients = len(_rows(tmp_path / "research" / "patients.csv"))
    appointments = len(_rows(tmp_path / "research" / "appointments.csv"))
    assert out.startswith(f"{patients} patients and {appointments} appointments written to ")
    assert again[0] == 1
    assert "--force" in again[2]
    assert forced[0] == 0
