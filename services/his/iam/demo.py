"""Demo departments, staff and memberships for `his up --demo`, through the public API.

Loaded as the bootstrap administrator (`USER`). Every call carries a fixed request id, so loading
twice creates nothing twice. iam assigns resource names, so other demo loaders find what this one
made through `directory` (by department code and username). All people are fictional.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from his.common.v1 import types_pb2
from his.iam.v1 import iam_service_pb2 as pb
from his_client import HisClients

# The staff member `his up --demo` loads this data set as: the bootstrap ADMINISTRATOR.
USER = "admin"
LICENCE_SYSTEM = "urn:oid:2.16.156.10011.1.4"  # practising certificate numbers (illustrative)

# Department codes. The three outpatient clinics are the ones the scheduling demo books into.
CARDIOLOGY = "CARD-OP"
GENERAL_MEDICINE = "GEN-OP"
PEDIATRICS = "PAED-OP"
ORTHOPAEDIC_WARD = "ORTH-WARD"
PHARMACY = "PHARM"
LABORATORY = "LAB"
BILLING = "BILLING"

K = pb.DepartmentKind
R = pb.StaffRole


@dataclass(frozen=True)
class DemoDepartment:
    """One demo department."""

    code: str
    display_name: str
    kind: int


@dataclass(frozen=True)
class DemoStaff:
    """One demo staff member and the departments they belong to (the first is primary)."""

    username: str
    display_name: str
    roles: tuple[pb.StaffRole.ValueType, ...]
    departments: tuple[str, ...] = ()
    licence: str = ""


DEPARTMENTS = (
    DemoDepartment(CARDIOLOGY, "Cardiology Outpatient Clinic", K.DEPARTMENT_KIND_OUTPATIENT),
    DemoDepartment(
        GENERAL_MEDICINE, "General Medicine Outpatient Clinic", K.DEPARTMENT_KIND_OUTPATIENT
    ),
    DemoDepartment(PEDIATRICS, "Paediatrics Outpatient Clinic", K.DEPARTMENT_KIND_OUTPATIENT),
    DemoDepartment(ORTHOPAEDIC_WARD, "Orthopaedic Surgical Ward", K.DEPARTMENT_KIND_INPATIENT),
    DemoDepartment(PHARMACY, "Hospital Pharmacy", K.DEPARTMENT_KIND_PHARMACY),
    DemoDepartment(LABORATORY, "Clinical Laboratory", K.DEPARTMENT_KIND_LAB),
    DemoDepartment(BILLING, "Billing Office", K.DEPARTMENT_KIND_ADMIN),
)

STAFF = (
    DemoStaff("reg.amina", "Amina Yusuf", (R.STAFF_ROLE_REGISTRAR,), (GENERAL_MEDICINE,)),
    DemoStaff("dr.chen", "Dr. Chen Wei", (R.STAFF_ROLE_DOCTOR,), (CARDIOLOGY,), "110101200300001"),
    DemoStaff("dr.sun", "Dr. Sun Hui", (R.STAFF_ROLE_DOCTOR,), (PEDIATRICS,), "110101200300002"),
    DemoStaff(
        "dr.okafor",
        "Dr. Chidi Okafor",
        (R.STAFF_ROLE_DOCTOR,),
        (ORTHOPAEDIC_WARD,),
        "110101200300003",
    ),
    DemoStaff("nurse.li", "Li Na", (R.STAFF_ROLE_NURSE,), (ORTHOPAEDIC_WARD, GENERAL_MEDICINE)),
    # The cardiology clinic's nurse: reads the orders Dr. Chen places there (orders demo).
    DemoStaff("nurse.wang", "Wang Fang", (R.STAFF_ROLE_NURSE,), (CARDIOLOGY,)),
    DemoStaff("pharm.sato", "Sato Yuki", (R.STAFF_ROLE_PHARMACIST,), (PHARMACY,)),
    DemoStaff("lab.ivanova", "Elena Ivanova", (R.STAFF_ROLE_LAB_TECHNICIAN,), (LABORATORY,)),
    DemoStaff("bill.garcia", "Maria Garcia", (R.STAFF_ROLE_BILLING_CLERK,), (BILLING,)),
    DemoStaff("audit.khan", "Imran Khan", (R.STAFF_ROLE_AUDITOR,)),
    # Reviews the break-the-glass grants (ReviewEmergencyAccessGrant); reads no patient data.
    DemoStaff("privacy.osei", "Ama Osei", (R.STAFF_ROLE_PRIVACY_OFFICER,)),
)


@dataclass(frozen=True)
class Directory:
    """Resource names of the demo data: department code → `departments/{id}`, username →
    `staff/{id}`."""

    departments: Mapping[str, str]
    staff: Mapping[str, str]


def _exists(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.ALREADY_EXISTS


async def load(his: HisClients) -> str:
    """Create the demo departments, staff and memberships; returns a one-line summary."""
    departments: dict[str, str] = {}
    for department in DEPARTMENTS:
        try:
            created = await his.iam.CreateDepartment(
                pb.CreateDepartmentRequest(
                    department=pb.Department(
                        code=department.code,
                        display_name=department.display_name,
                        kind=department.kind,  # type: ignore[arg-type]
                    ),
                    request_id=f"demo-department-{department.code}",
                )
            )
            departments[department.code] = created.name
        except grpc.aio.AioRpcError as error:
            if not _exists(error):
                raise  # made earlier by hand with the same code: found below
    staff: dict[str, str] = {}
    for person in STAFF:
        member = pb.StaffMember(
            username=person.username, display_name=person.display_name, roles=person.roles
        )
        if person.licence:
            member.practitioner_identifier.CopyFrom(
                types_pb2.Identifier(system=LICENCE_SYSTEM, value=person.licence)
            )
        try:
            created_member = await his.iam.CreateStaffMember(
                pb.CreateStaffMemberRequest(
                    staff_member=member, request_id=f"demo-staff-{person.username}"
                )
            )
            staff[person.username] = created_member.name
        except grpc.aio.AioRpcError as error:
            if not _exists(error):
                raise
    found = await directory(his)
    departments = {**found.departments, **departments}
    staff = {**found.staff, **staff}
    memberships = 0
    for person in STAFF:
        for index, code in enumerate(person.departments):
            try:
                await his.iam.AddMembership(
                    pb.AddMembershipRequest(
                        parent=staff[person.username],
                        membership=pb.DepartmentMembership(
                            department=departments[code], primary=index == 0
                        ),
                        request_id=f"demo-membership-{person.username}-{code}",
                    )
                )
                memberships += 1
            except grpc.aio.AioRpcError as error:
                if not _exists(error):
                    raise  # a membership added by hand already covers it
    return (
        f"{len(departments)} departments, {len(staff)} staff members "
        f"({', '.join(p.username for p in STAFF)} and {USER}), "
        f"{memberships} memberships"
    )


async def directory(his: HisClients) -> Directory:
    """The names of the demo departments and staff members that exist (an ADMINISTRATOR's or a
    service's token can read them)."""
    codes = {department.code for department in DEPARTMENTS}
    departments: dict[str, str] = {}
    token = ""
    while True:
        page = await his.iam.ListDepartments(
            pb.ListDepartmentsRequest(page_size=500, page_token=token)
        )
        departments.update({d.code: d.name for d in page.departments if d.code in codes})
        token = page.next_page_token
        if not token:
            break
    staff: dict[str, str] = {}
    for person in STAFF:
        reply = await his.iam.ListStaffMembers(
            pb.ListStaffMembersRequest(username=person.username, include_inactive=True)
        )
        staff.update({m.username: m.name for m in reply.staff_members})
    return Directory(departments=departments, staff=staff)
