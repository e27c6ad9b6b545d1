"""Database rows of the iam schema as proto messages, and resource names."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from his.iam.v1 import iam_service_pb2 as pb
from his.runtime import wire
from his.runtime.enums import EnumText

KIND = EnumText(pb.DepartmentKind.DESCRIPTOR)
# 'pending' ↔ EMERGENCY_ACCESS_REVIEW_STATE_PENDING, and so on.
REVIEW_STATE = EnumText(pb.EmergencyAccessReviewState.DESCRIPTOR)
APPROVAL = EnumText(pb.AccessChangeState.DESCRIPTOR)
_ROLE_PREFIX = "STAFF_ROLE_"


def role_name(number: int) -> str:
    """The token claim name of a StaffRole (`STAFF_ROLE_DOCTOR` → `DOCTOR`)."""
    return pb.StaffRole.Name(number).removeprefix(_ROLE_PREFIX)  # type: ignore[arg-type]


def role_number(name: str) -> int:
    """The StaffRole of a claim name (`DOCTOR` → `STAFF_ROLE_DOCTOR`)."""
    return int(pb.StaffRole.Value(_ROLE_PREFIX + name))


def department_name(department_id: uuid.UUID) -> str:
    """`departments/{id}`."""
    return f"departments/{department_id}"


def staff_name(staff_id: uuid.UUID) -> str:
    """`staff/{id}`."""
    return f"staff/{staff_id}"


def membership_name(staff_id: uuid.UUID, membership_id: uuid.UUID) -> str:
    """`staff/{id}/memberships/{id}`."""
    return f"staff/{staff_id}/memberships/{membership_id}"


def grant_name(grant_id: uuid.UUID) -> str:
    """`emergencyAccessGrants/{id}`."""
    return f"emergencyAccessGrants/{grant_id}"


def patient_name(patient_id: uuid.UUID) -> str:
    """`patients/{id}`."""
    return f"patients/{patient_id}"


def department_to_proto(row: Any) -> pb.Department:
    """An `iam.departments` row as a Department."""
    return pb.Department(
        name=department_name(row.id),
        code=row.code,
        display_name=row.display_name,
        kind=KIND.number(row.kind),  # type: ignore[arg-type]
        create_time=wire.timestamp(row.create_time),
    )


def staff_to_proto(row: Any) -> pb.StaffMember:
    """An `iam.staff` row as a StaffMember."""
    member = pb.StaffMember(
        name=staff_name(row.id),
        username=row.username,
        display_name=row.display_name,
        roles=[role_number(role) for role in row.roles],  # type: ignore[misc]
        active=row.active,
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
    )
    if row.practitioner_id_value is not None:
        member.practitioner_identifier.system = row.practitioner_id_system
        member.practitioner_identifier.value = row.practitioner_id_value
    return member


def membership_to_proto(row: Any) -> pb.DepartmentMembership:
    """An `iam.memberships` row as a DepartmentMembership."""
    membership = pb.DepartmentMembership(
        name=membership_name(row.staff_id, row.id),
        department=department_name(row.department_id),
        primary=row.is_primary,
        create_time=wire.timestamp(row.create_time),
    )
    membership.approval_state = APPROVAL.number(row.approval_state)  # type: ignore[assignment]
    if row.access_change_id is not None:
        membership.access_change = f"accessChanges/{row.access_change_id}"
    membership.period.start_time.FromDatetime(row.period_start)
    if row.period_end is not None:
        membership.period.end_time.FromDatetime(row.period_end)
    return membership


def grant_to_proto(row: Any) -> pb.EmergencyAccessGrant:
    """An `iam.emergency_access_grants` row as an EmergencyAccessGrant."""
    return pb.EmergencyAccessGrant(
        name=grant_name(row.id),
        staff=staff_name(row.staff_id),
        patient=patient_name(row.patient_id),
        reason=row.reason,
        grant_time=wire.timestamp(row.grant_time),
        expire_time=wire.timestamp(row.expire_time),
        revoked=row.revoke_time is not None,
        revoke_time=wire.timestamp(row.revoke_time),
        review_state=REVIEW_STATE.number(row.review_state),  # type: ignore[arg-type]
        reviewer=staff_name(row.reviewer_id) if row.reviewer_id else "",
        review_time=wire.timestamp(row.review_time),
        review_comment=row.review_comment or "",
    )


def jwks_to_proto(document: Mapping[str, Sequence[Mapping[str, str]]]) -> pb.JsonWebKeySet:
    """A JWKS document (`tokens.jwks`) as the JsonWebKeySet message."""
    return pb.JsonWebKeySet(
        keys=[
            pb.JsonWebKey(
                kty=key["kty"],
                kid=key["kid"],
                use=key["use"],
                alg=key["alg"],
                n=key["n"],
                e=key["e"],
            )
            for key in document["keys"]
        ]
    )
