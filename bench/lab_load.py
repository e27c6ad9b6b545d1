"""Load benchmark of the lab service: the lab-result queries, each as a ratio to echo.

Starts its own embedded PostgreSQL and real `his serve` processes (lab with patient, iam and
audit: every call is authenticated, authorized — the laboratory's members, the ordering team — and
audited). Lab orders arrive as the orders relay delivers them (DeliverEvents as the orders
service); a lab technician of a real iam laboratory collects, reports and releases them (one
result in five critical). Then a doctor of the ordering team drives the lab-result queries:
GetDiagnosticReport, ListDiagnosticReports of a patient, and ListCriticalResults (the doctor's
unacknowledged critical results), alternating with the echo server (bench/echo.py). The seeds'
target is a lab-result query within 500 ms. Run: `python -m bench.lab_load`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import uuid

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
)
from his.common.v1 import types_pb2
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.lab.v1 import lab_service_pb2 as pb
from his.lab.v1 import lab_service_pb2_grpc as pb_grpc
from his.login import enrol, issue_token
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.patient.v1 import patient_service_pb2_grpc as patient_grpc
from his.runtime.outbox import envelope
from his_client import HisClients, static_token
from his_client.config import ClientConfig

GLUCOSE = types_pb2.Coding(system="http://loinc.org", code="2345-7", display="Glucose")
BLOOD = types_pb2.Coding(system="http://snomed.info/sct", code="119297000", display="Blood")


async def _people(hospital: Hospital) -> dict[str, str]:
    """A laboratory and a clinic, a technician and a doctor of each, the orders service's token:
    tokens and names by key."""
    config = ClientConfig.from_env(hospital.env)
    admin = await issue_token("admin", data_dir=hospital.data_dir, config=config)
    found: dict[str, str] = {}
    async with HisClients(config, token=static_token(admin)) as his:
        for key, kind in (
            ("lab", iam_pb.DEPARTMENT_KIND_LAB),
            ("clinic", iam_pb.DEPARTMENT_KIND_OUTPATIENT),
        ):
            made = await his.iam.CreateDepartment(
                iam_pb.CreateDepartmentRequest(
                    department=iam_pb.Department(
                        code=f"BENCH-{key.upper()}", display_name=f"Bench {key}", kind=kind
                    ),
                    request_id=f"bench-{key}",
                ),
                timeout=10,
            )
            found[key] = made.name
        changes: list[str] = []
        for username, role, department in (
            ("bench.technician", iam_pb.STAFF_ROLE_LAB_TECHNICIAN, found["lab"]),
            ("bench.registrar", iam_pb.STAFF_ROLE_REGISTRAR, ""),
            ("bench.doctor", iam_pb.STAFF_ROLE_DOCTOR, found["clinic"]),
        ):
            member = await his.iam.CreateStaffMember(
                iam_pb.CreateStaffMemberRequest(
                    staff_member=iam_pb.StaffMember(
                        username=username, display_name=username, roles=[role]
                    ),
                    request_id=f"bench-{username}",
                ),
                timeout=10,
            )
            found[username] = member.name
            changes.append(member.pending_access_change)
            await enrol(his, member.name, username, data_dir=hospital.data_dir)
            if department:
                added = await his.iam.AddMembership(
                    iam_pb.AddMembershipRequest(
                        parent=member.name,
                        membership=iam_pb.DepartmentMembership(department=department),
                        request_id=f"bench-membership-{username}",
                    ),
                    timeout=10,
                )
                changes.append(added.access_change)
        reply = await his.iam.IssueToken(
            iam_pb.IssueTokenRequest(
                username="service:orders", credential=hospital.secrets.service_credential("orders")
            ),
            timeout=10,
        )
        found["orders-token"] = reply.access_token
    await approve(hospital, *changes)
    for username in ("bench.technician", "bench.registrar", "bench.doctor"):
        found[f"{username}-token"] = await issue_token(
            username, data_dir=hospital.data_dir, config=config
        )
    return found


async def _seed(people: dict[str, str], count: int) -> tuple[list[str], list[str]]:
    """`count` released glucose reports of as many patients: (report names, patient names)."""
    async with (
        channel(address("patient"), people["bench.registrar-token"]) as patient_channel,
        channel(address("lab"), people["bench.technician-token"]) as tech_channel,
        channel(address("lab"), people["orders-token"]) as orders_channel,
    ):
        patients = patient_grpc.PatientServiceStub(patient_channel)
        lab = pb_grpc.LabServiceStub(tech_channel)
        relay = pb_grpc.LabServiceStub(orders_channel)
        reports: list[str] = []
        names: list[str] = []
        collected = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        for i in range(count):
            patient = await patients.CreatePatient(
                patient_pb.CreatePatientRequest(
                    patient=patient_pb.Patient(
                        family_name=f"Bench{i}",
                        given_names=["Lab"],
                        gender=patient_pb.ADMINISTRATIVE_GENDER_FEMALE,
                        birth_date=types_pb2.Date(year=1950 + i % 50, month=1, day=1),
                    ),
                    request_id=f"bench-lab-patient-{i}",
                ),
                timeout=10,
            )
            request = orders_pb.ServiceRequest(
                name=f"serviceRequests/{uuid.uuid4()}",
                patient=patient.name,
                encounter=f"encounters/{uuid.uuid4()}",
                requester=people["bench.doctor"],
                code=GLUCOSE,
                priority=orders_pb.REQUEST_PRIORITY_ROUTINE,
                status=orders_pb.SERVICE_REQUEST_STATUS_ACTIVE,
                performer=people["lab"],
            )
            request.create_time.GetCurrentTime()
            event = orders_pb.ServiceRequestChanged(service_request=request, revision=1)
            await relay.DeliverEvents(
                pb.DeliverEventsRequest(events=[envelope(event, source="orders", trace_id="")]),
                timeout=10,
            )
            specimen = pb.Specimen(
                service_requests=[request.name],
                specimen_type=BLOOD,
                accession_id=f"BENCH-{i}",
                collector=people["bench.technician"],
            )
            specimen.collect_time.FromDatetime(collected)
            made = await lab.CreateSpecimen(pb.CreateSpecimenRequest(specimen=specimen), timeout=10)
            report = await lab.CreateDiagnosticReport(
                pb.CreateDiagnosticReportRequest(
                    diagnostic_report=pb.DiagnosticReport(
                        service_request=request.name, specimens=[made.name]
                    )
                ),
                timeout=10,
            )
            value = 30.0 if i % 5 == 0 else 90.0  # one in five critically low
            await lab.RecordObservations(
                pb.RecordObservationsRequest(
                    parent=report.name,
                    observations=[
                        pb.Observation(
                            code=GLUCOSE,
                            value_quantity=types_pb2.Quantity(value=value, unit="mg/dL"),
                            status=pb.OBSERVATION_STATUS_PRELIMINARY,
                        )
                    ],
                ),
                timeout=10,
            )
            await lab.FinalizeReport(pb.FinalizeReportRequest(name=report.name), timeout=10)
            reports.append(report.name)
            names.append(patient.name)
        return reports, names


async def _bench(hospital: Hospital, calls: int, concurrency: int, seed: int, rounds: int) -> None:
    people = await _people(hospital)
    reports, patients = await _seed(people, seed)
    token = people["bench.doctor-token"]
    async with (
        channel(address("lab"), token) as lab_channel,
        channel(hospital.echo, token) as echo_channel,
    ):
        lab = pb_grpc.LabServiceStub(lab_channel)

        def like(message: Message) -> Call:
            return echo_call(echo_channel, message)

        rng = random.Random(7)  # noqa: S311 (a reproducible pick, not a secret)
        print(HEADER)
        await compare(
            {
                "GetDiagnosticReport": lambda i: lab.GetDiagnosticReport(
                    pb.GetDiagnosticReportRequest(name=rng.choice(reports)), timeout=10
                ),
                "ListDiagnosticReports": lambda i: lab.ListDiagnosticReports(
                    pb.ListDiagnosticReportsRequest(patient=rng.choice(patients)), timeout=10
                ),
                "ListCriticalResults": lambda i: lab.ListCriticalResults(
                    pb.ListCriticalResultsRequest(page_size=50), timeout=10
                ),
            },
            calls // rounds,
            concurrency,
            like(pb.GetDiagnosticReportRequest(name=reports[0])),
            rounds=rounds,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=50, help="reports released first")
    parser.add_argument("--rounds", type=int, default=2, help="echo/service alternations per rpc")
    args = parser.parse_args()
    with services("patient", "lab") as hospital:
        asyncio.run(_bench(hospital, args.calls, args.concurrency, args.seed, args.rounds))


if __name__ == "__main__":
    main()
