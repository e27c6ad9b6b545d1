"""Validation of iam requests: proto messages in, plain column values out."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from his.common.v1 import types_pb2
from his.iam.mapping import KIND, role_name
from his.iam.v1 import iam_service_pb2 as pb
from his.runtime.validation import Violations

MAX_DISPLAY_NAME = 200
MAX_PREFIX = 100
MAX_IDENTIFIER = 200
MIN_REASON = 20
MAX_REASON = 1000
MAX_LOGIN_NAME = 64
MAX_CREDENTIAL = 256
_CODE = re.compile(r"[A-Z0-9-]{1,20}")
USERNAME = re.compile(r"[a-z][a-z0-9._-]{2,63}")

# Paths UpdateStaffMember accepts; everything else in StaffMember is output only or immutable.
STAFF_UPDATABLE = frozenset({"display_name", "roles", "practitioner_identifier"})


def department_fields(v: Violations, department: pb.Department) -> dict[str, Any]:
    """Column values of a department to create."""
    code = department.code
    if not code:
        v.add("department.code", "is required")
    elif not _CODE.fullmatch(code):
        v.add("department.code", "must be 1 to 20 upper-case letters, digits and hyphens")
    display = v.text(
        "department.display_name", department.display_name, max_len=MAX_DISPLAY_NAME, required=True
    )
    kind = v.enum("department.kind", department.kind, pb.DepartmentKind.DESCRIPTOR)
    return {"code": code, "display_name": display, "kind": KIND.text(kind) if kind else None}


def username(v: Violations, field: str, value: str) -> str | None:
    """A sign-in name: 3 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter."""
    if not value:
        v.add(field, "is required")
        return None
    if not USERNAME.fullmatch(value):
        v.add(
            field,
            "must be 3 to 64 lower-case letters, digits, '.', '_' or '-', starting with a letter",
        )
        return None
    return value


def staff_fields(
    v: Violations, member: pb.StaffMember, prefix: str, paths: frozenset[str]
) -> dict[str, Any]:
    """Column values for the given StaffMember fields; problems are recorded under `prefix.`."""
    values: dict[str, Any] = {}
    if "username" in paths:
        values["username"] = username(v, f"{prefix}.username", member.username)
    if "display_name" in paths:
        values["display_name"] = v.text(
            f"{prefix}.display_name", member.display_name, max_len=MAX_DISPLAY_NAME, required=True
        )
    if "roles" in paths:
        values["roles"] = roles(v, f"{prefix}.roles", list(member.roles))
    if "practitioner_identifier" in paths:
        pair = identifier(v, f"{prefix}.practitioner_identifier", member.practitioner_identifier)
        values["practitioner_id_system"] = pair[0] if pair else None
        values["practitioner_id_value"] = pair[1] if pair else None
    return values


def roles(v: Violations, field: str, numbers: list[int]) -> list[str]:
    """Role claim names: at least one, known, no duplicates, in the order given."""
    if not numbers:
        v.add(field, "needs at least one role")
        return []
    names: list[str] = []
    for index, number in enumerate(numbers):
        checked = v.enum(f"{field}[{index}]", number, pb.StaffRole.DESCRIPTOR)
        if checked is None:
            continue
        name = role_name(checked)
        if name in names:
            v.add(f"{field}[{index}]", f"duplicate role {name}")
        else:
            names.append(name)
    return names


def identifier(v: Violations, field: str, value: types_pb2.Identifier) -> tuple[str, str] | None:
    """(system, value) of an optional Identifier; both parts are required once either is set."""
    if not value.system and not value.value:
        return None
    system = v.text(f"{field}.system", value.system, max_len=MAX_IDENTIFIER, required=True)
    text = v.text(f"{field}.value", value.value, max_len=MAX_IDENTIFIER, required=True)
    if system is None or text is None:
        return None
    return system, text


def membership_fields(
    v: Violations, membership: pb.DepartmentMembership, now: dt.datetime
) -> dict[str, Any]:
    """Column values of a membership to add (the department as an id)."""
    department_id = v.resource_id(
        "membership.department", membership.department, collection="departments"
    )
    start = now
    end: dt.datetime | None = None
    if membership.HasField("period"):
        if membership.period.HasField("start_time"):
            start = v.instant("membership.period.start_time", membership.period.start_time) or now
        if membership.period.HasField("end_time"):
            end = v.instant("membership.period.end_time", membership.period.end_time)
    if end is not None and end <= start:
        v.add("membership.period.end_time", "must be after the start of the period")
    return {
        "department_id": department_id,
        "period_start": start,
        "period_end": end,
        "is_primary": membership.primary,
    }


def parent_staff(v: Violations, field: str, parent: str) -> uuid.UUID | None:
    """`staff/{id}` as an id, `staff/-` (every staff member) as None."""
    if parent == "staff/-":
        return None
    return v.resource_id(field, parent, collection="staff")


def duration_s(
    v: Violations,
    request: pb.CreateEmergencyAccessGrantRequest,
    *,
    default: int,
    low: int,
    high: int,
) -> float:
    """The grant's length in seconds: the default when unset, else within [low, high]."""
    if not request.HasField("duration"):
        return float(default)
    duration = request.duration
    seconds = duration.seconds + duration.nanos / 1e9
    if duration.nanos < 0 or duration.seconds < 0 or abs(duration.nanos) >= 1_000_000_000:
        v.add("duration", "must be a positive duration")
    elif not low <= seconds <= high:
        v.add("duration", f"must be from {low} to {high} seconds")
    return seconds
