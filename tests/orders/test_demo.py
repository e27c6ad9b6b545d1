"""The orders demo data: Dr. Chen's lab orders for the visit in progress, once however often it
is loaded, on the demo data of iam, patient, scheduling and emr (loaded here into the session's
services: the scheduling demo's bookings give Dr. Chen the care relationship with the patients of
the emr demo's visits)."""

from __future__ import annotations

import uuid

import pyotp

from his.emr import demo as emr_demo
from his.iam import demo as iam_demo
from his.iam import demo_seed
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.orders import demo
from his.orders.v1 import orders_service_pb2 as pb
from his.patient import demo as patient_demo
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.server import RunningService
from his.scheduling import demo as scheduling_demo
from his_client import HisClients, static_token
from his_client.config import ClientConfig
from tests.identity import DEMO_ADMINISTRATOR, ISSUER, REGISTRAR


async def test_the_demo_orders_tests_for_the_visit_in_progress_once(
    iam_service: RunningService,
    patient_service: RunningService,
    emr_service: RunningService,
    orders_service: RunningService,
    scheduling_service: RunningService,
    database_url: str,
) -> None:
    config = ClientConfig(
        addresses={
            r.spec.name: r.address
            for r in (iam_service, patient_service, emr_service, orders_service, scheduling_service)
        }
    )
    async with HisClients(config, token=static_token(DEMO_ADMINISTRATOR)) as admin:
        await iam_demo.load(admin)
        # As `his up --demo` does: the demo staff's roles and memberships approved directly.
        await demo_seed.approve_demo_changes(database_url)
        # Whether the doctor's enrolment needs a second administrator depends on whether tests
        # before this one enrolled administrators: one iam knows is at hand either way.
        second = await _second_administrator(config, admin)

        async def token(username: str) -> str:
            # Enrolled as `his up --demo` does, then logged in with password and TOTP.
            names = await iam_demo.directory(admin)
            enrolment = await admin.iam.CreateStaffEnrolment(
                iam_pb.CreateStaffEnrolmentRequest(parent=names.staff[username])
            )
            approval_code = ""
            if enrolment.approval_required:  # a second administrator approves, on their channel
                async with HisClients(config, token=static_token(second)) as approver:
                    approved = await approver.iam.ApproveStaffEnrolment(
                        iam_pb.ApproveStaffEnrolmentRequest(name=enrolment.name)
                    )
                approval_code = approved.enrolment_code
            password = "a demo password for the test"
            enrolled = await admin.iam.CompleteStaffEnrolment(
                iam_pb.CompleteStaffEnrolmentRequest(
                    username=username,
                    enrolment_code=enrolment.enrolment_code,
                    approval_code=approval_code,
                    password=password,
                )
            )
            issued = await admin.iam.IssueToken(
                iam_pb.IssueTokenRequest(
                    username=username,
                    credential=password,
                    totp_code=pyotp.TOTP(enrolled.totp_secret).now(),
                )
            )
            return issued.access_token

        doctor = await token(demo.USER)
    # The session's registrar, as every test that loads the demo patients (same request ids, same
    # caller: one set of patients whoever loads it first).
    async with HisClients(config, token=static_token(REGISTRAR)) as his:
        await patient_demo.load(his)
        await scheduling_demo.load(his)
    async with HisClients(config, token=static_token(doctor)) as his:
        await emr_demo.load(his)
        assert await demo.load(his) == "2 lab orders"
        assert await demo.load(his) == "2 lab orders"
        liu = await his.patient.ListPatients(patient_pb.ListPatientsRequest(name_prefix="Liu"))
        placed = await his.orders.ListServiceRequests(
            pb.ListServiceRequestsRequest(patient=liu.patients[0].name)
        )
    assert sorted(o.code.code for o in placed.service_requests) == ["10839-9", "51990-0"]
    assert {o.performer for o in placed.service_requests} == {await _laboratory(config, doctor)}


async def _second_administrator(config: ClientConfig, admin: HisClients) -> str:
    """A token of an administrator iam knows (active, holding the role), other than the demo
    administrator: HisClients sends its own token on every call, so the approver calls through
    clients of their own."""
    proposed = await admin.iam.CreateStaffMember(
        iam_pb.CreateStaffMemberRequest(
            staff_member=iam_pb.StaffMember(
                username=f"second.admin.{uuid.uuid4().hex[:12]}",
                display_name="Second Administrator",
                roles=[iam_pb.STAFF_ROLE_ADMINISTRATOR],
            )
        )
    )
    if proposed.pending_access_change:
        # Approved by a third administrator (the tests' issuer's, taken at its word by iam).
        async with HisClients(config, token=static_token(ISSUER.staff("ADMINISTRATOR"))) as third:
            await third.iam.ApproveAccessChange(
                iam_pb.ApproveAccessChangeRequest(name=proposed.pending_access_change)
            )
    staff_id = proposed.name.removeprefix("staff/")
    return ISSUER.staff("ADMINISTRATOR", staff_id=staff_id)


async def _laboratory(config: ClientConfig, token: str) -> str:
    async with HisClients(config, token=static_token(token)) as his:
        names = await iam_demo.directory(his)
    return names.departments[iam_demo.LABORATORY]
