"""Load benchmark of the emr service: GetEncounter and CreateNote, each as a ratio to echo.

Starts its own embedded PostgreSQL and real `his serve` processes (emr with patient, scheduling,
iam and audit: every call is authenticated, authorized — on the encounter's facts — and audited),
opens encounters as a cardiologist of a real iam department, then drives GetEncounter (a record
read: policy on the encounter, an audit event group-committed) and CreateNote (note text
encrypted, written with its audit event in one transaction), alternating with the echo server
(bench/echo.py). Run: `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import random

from google.protobuf.message import Message

from bench.harness import (
    HEADER,
    Call,
    Hospital,
    address,
    approve,
    channel,
    compare,
    echo_call,
    services,
    staff_token,
)
from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as pb
from his.emr.v1 import emr_service_pb2_grpc as pb_grpc
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.login import enrol, issue_token
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.patient.v1 import patient_service_pb2_grpc as patient_grpc
from his_client import HisClients, static_token
from his_client.config import ClientConfig

PROGRESS_NOTE = types_pb2.Coding(system="http://loinc.org", code="11506-3", display="Progress note")
TEXT = (
    "Exertional chest tightness for two weeks, relieved by rest. BP 142/90, pulse 78 regular. "
    "Heart sounds normal, no murmur. Resting ECG: sinus rhythm, no ischaemic changes. "
    "Plan: exercise test, lipid profile, review in one week."
)


async def _doctor(hospital: Hospital) -> tuple[str, str, str]:
    """A cardiologist with a membership of a new department: (token, staff name, department)."""
    config = ClientConfig.from_env(hospital.env)
    admin = await issue_token("admin", data_dir=hospital.data_dir, config=config)
    async with HisClients(config, token=static_token(admin)) as his:
        department = await his.iam.CreateDepartment(
            iam_pb.CreateDepartmentRequest(
                department=iam_pb.Department(
                    code="BENCH-CARD",
                    display_name="Bench cardiology",
                    kind=iam_pb.DEPARTMENT_KIND_OUTPATIENT,
                ),
                request_id="bench-department",
            ),
            timeout=10,
        )
        doctor = await his.iam.CreateStaffMember(
            iam_pb.CreateStaffMemberRequest(
                staff_member=iam_pb.StaffMember(
                    username="bench.cardiologist",
                    display_name="Bench Cardiologist",
                    roles=[iam_pb.STAFF_ROLE_DOCTOR],
                ),
                request_id="bench-cardiologist",
            ),
            timeout=10,
        )
        added = await his.iam.AddMembership(
            iam_pb.AddMembershipRequest(
                parent=doctor.name,
                membership=iam_pb.DepartmentMembership(department=department.name),
                request_id="bench-membership",
            ),
            timeout=10,
        )
        await enrol(his, doctor.name, "bench.cardiologist", data_dir=hospital.data_dir)
    await approve(hospital, doctor.pending_access_change, added.access_change)
    token = await issue_token("bench.cardiologist", data_dir=hospital.data_dir, config=config)
    return token, doctor.name, department.name


async def _bench(hospital: Hospital, calls: int, concurrency: int, seed: int, rounds: int) -> None:
    registrar = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    token, doctor, department = await _doctor(hospital)
    async with (
        channel(address("patient"), registrar) as patient_channel,
        channel(address("emr"), token) as emr_channel,
        channel(hospital.echo, token) as echo_channel,
    ):
        patients = [
            (
                await patient_grpc.PatientServiceStub(patient_channel).CreatePatient(
                    patient_pb.CreatePatientRequest(
                        patient=patient_pb.Patient(
                            family_name=f"Bench{i}",
                            given_names=["Emr"],
                            gender=patient_pb.ADMINISTRATIVE_GENDER_UNKNOWN,
                            birth_date=types_pb2.Date(year=1960 + i % 40, month=1, day=1),
                        ),
                        request_id=f"bench-emr-patient-{i}",
                    ),
                    timeout=10,
                )
            ).name
            for i in range(seed)
        ]
        emr = pb_grpc.EmrServiceStub(emr_channel)
        encounters = [
            (
                await emr.CreateEncounter(
                    pb.CreateEncounterRequest(
                        encounter=pb.Encounter(
                            patient=name,
                            encounter_class=pb.ENCOUNTER_CLASS_AMBULATORY,
                            status=pb.ENCOUNTER_STATUS_ARRIVED,
                            department=department,
                            attending_practitioner=doctor,
                        ),
                        request_id=f"bench-encounter-{i}",
                    ),
                    timeout=10,
                )
            ).name
            for i, name in enumerate(patients)
        ]

        def like(message: Message) -> Call:
            return echo_call(echo_channel, message)

        rng = random.Random(7)  # noqa: S311 (a reproducible pick, not a secret)
        print(HEADER)
        await compare(
            {
                "GetEncounter": lambda i: emr.GetEncounter(
                    pb.GetEncounterRequest(name=rng.choice(encounters)), timeout=10
                )
            },
            calls // rounds,
            concurrency,
            like(pb.GetEncounterRequest(name=encounters[0])),
            rounds=rounds,
        )
        note = pb.ClinicalNote(note_type=PROGRESS_NOTE, text=TEXT)
        await compare(
            {
                "CreateNote": lambda i: emr.CreateNote(
                    pb.CreateNoteRequest(
                        parent=encounters[i % len(encounters)],
                        note=note,
                        request_id=f"bench-note-{i}",
                    ),
                    timeout=10,
                )
            },
            calls // 2 // rounds,
            concurrency,
            like(pb.CreateNoteRequest(parent=encounters[0], note=note, request_id="bench-note")),
            rounds=rounds,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=50, help="encounters opened first")
    parser.add_argument("--rounds", type=int, default=2, help="echo/service alternations per rpc")
    args = parser.parse_args()
    with services("patient", "scheduling", "emr") as hospital:
        asyncio.run(_bench(hospital, args.calls, args.concurrency, args.seed, args.rounds))


if __name__ == "__main__":
    main()
