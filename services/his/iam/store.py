"""Queries of the iam schema. Each function runs inside the caller's session.

Invariants are the database's job where it can hold them: unique codes, usernames, practitioner
identifiers and request ids, known roles, ordered periods, no overlapping memberships (trigger).
Functions here translate their violations into domain errors.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, Text, and_, exists, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import Aborted, AlreadyExists, FailedPrecondition, HisError, NotFound
from his.iam.mapping import department_name, grant_name, membership_name, staff_name
from his.iam.tables import (
    DEPARTMENT_OVERLAP,
    ONE_OPEN_GRANT,
    PRIMARY_OVERLAP,
    departments,
    emergency_access_grants,
    memberships,
    staff,
)
from his.runtime.database import EXCLUSION_VIOLATION, UNIQUE_VIOLATION, integrity_violation
from his.runtime.idempotency import skip_taken

ADMINISTRATOR = "ADMINISTRATOR"
# Serialises every change that could take the last ADMINISTRATOR away (role change, deactivation).
_ADMINISTRATORS_LOCK = "his-iam-administrators"

_DEPARTMENT = tuple(departments.c)
_STAFF = tuple(staff.c)
_MEMBERSHIP = tuple(memberships.c)
_GRANT = tuple(emergency_access_grants.c)


def conflict(error: IntegrityError) -> HisError | None:
    """The domain error of a violated iam constraint; None for anything unexpected."""
    violation = integrity_violation(error)
    if violation is None:
        return None
    state, constraint = violation
    if state == UNIQUE_VIOLATION and constraint == "department_code_unique":
        return AlreadyExists(
            "another department has this code",
            reason="DEPARTMENT_CODE_EXISTS",
            metadata={"field": "department.code"},
        )
    if state == UNIQUE_VIOLATION and constraint == "staff_username_unique":
        return AlreadyExists(
            "another staff member has this username",
            reason="USERNAME_EXISTS",
            metadata={"field": "staff_member.username"},
        )
    if state == UNIQUE_VIOLATION and constraint == "staff_practitioner_unique":
        return AlreadyExists(
            "another staff member has this practitioner identifier",
            reason="PRACTITIONER_IDENTIFIER_EXISTS",
            metadata={"field": "staff_member.practitioner_identifier"},
        )
    if state == EXCLUSION_VIOLATION and constraint == DEPARTMENT_OVERLAP:
        return AlreadyExists(
            "the staff member already has a membership of this department in an overlapping period",
            reason="MEMBERSHIP_EXISTS",
        )
    if state == EXCLUSION_VIOLATION and constraint == PRIMARY_OVERLAP:
        return FailedPrecondition(
            "the staff member already has a primary membership in an overlapping period",
            reason="PRIMARY_MEMBERSHIP_OVERLAPS",
        )
    return None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- departments -------------------------------------------------------------------------------


async def insert_department(
    session: AsyncSession, values: dict[str, Any], request_id: str | None
) -> Row[Any] | None:
    """Insert a department; None when `request_id` was already used (the caller re-reads it)."""
    statement = insert(departments).values(id=uuid.uuid4(), create_request_id=request_id, **values)
    statement = skip_taken(statement, request_id, departments.c.create_request_id)
    return (await session.execute(statement.returning(*_DEPARTMENT))).first()


async def department_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The department created by the CreateDepartment call with this request id."""
    query = select(*_DEPARTMENT).where(departments.c.create_request_id == request_id)
    return (await session.execute(query)).first()


async def get_department(session: AsyncSession, department_id: uuid.UUID) -> Row[Any]:
    """One department, or NOT_FOUND."""
    row = (
        await session.execute(select(*_DEPARTMENT).where(departments.c.id == department_id))
    ).first()
    if row is None:
        name = department_name(department_id)
        raise NotFound(f"{name} not found", metadata={"name": name})
    return row


async def department_exists(session: AsyncSession, department_id: uuid.UUID) -> bool:
    """Whether the department exists."""
    query = select(exists().where(departments.c.id == department_id))
    return bool((await session.execute(query)).scalar())


async def list_departments(
    session: AsyncSession, *, kind: str | None, after: str | None, limit: int
) -> list[Row[Any]]:
    """Up to `limit` departments after the cursor code, ordered by code."""
    conditions: list[Any] = []
    if kind is not None:
        conditions.append(departments.c.kind == kind)
    if after is not None:
        conditions.append(departments.c.code > after)
    query = (
        select(*_DEPARTMENT)
        .where(and_(True, *conditions))
        .order_by(departments.c.code)
        .limit(limit)
    )
    return list((await session.execute(query)).all())


# --- staff -------------------------------------------------------------------------------------


async def insert_staff(
    session: AsyncSession, values: dict[str, Any], request_id: str | None
) -> Row[Any] | None:
    """Insert an active staff member; None when `request_id` was already used."""
    statement = insert(staff).values(id=uuid.uuid4(), create_request_id=request_id, **values)
    statement = skip_taken(statement, request_id, staff.c.create_request_id)
    return (await session.execute(statement.returning(*_STAFF))).first()


async def staff_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The staff member created by the CreateStaffMember call with this request id."""
    query = select(*_STAFF).where(staff.c.create_request_id == request_id)
    return (await session.execute(query)).first()


async def find_staff(
    session: AsyncSession, staff_id: uuid.UUID, *, lock: str | None = None
) -> Row[Any] | None:
    """One staff member or None; `lock` is None, "share" or "update"."""
    query = select(*_STAFF).where(staff.c.id == staff_id)
    if lock == "update":
        query = query.with_for_update()
    elif lock == "share":
        query = query.with_for_update(read=True)
    return (await session.execute(query)).first()


async def get_staff(
    session: AsyncSession, staff_id: uuid.UUID, *, lock: str | None = None
) -> Row[Any]:
    """One staff member, or NOT_FOUND."""
    row = await find_staff(session, staff_id, lock=lock)
    if row is None:
        name = staff_name(staff_id)
        raise NotFound(f"{name} not found", metadata={"name": name})
    return row


async def staff_by_username(session: AsyncSession, username: str) -> Row[Any] | None:
    """The staff member with this username, active or not."""
    return (await session.execute(select(*_STAFF).where(staff.c.username == username))).first()


async def current_department_ids(session: AsyncSession, staff_id: uuid.UUID) -> list[uuid.UUID]:
    """The departments of the staff member's memberships in force now, ordered by id."""
    now = func.now()
    query = (
        select(memberships.c.department_id)
        .where(
            memberships.c.staff_id == staff_id,
            # Two-person rule: a membership counts once a second administrator approved it.
            memberships.c.approval_state == "approved",
            memberships.c.period_start <= now,
            or_(memberships.c.period_end.is_(None), memberships.c.period_end > now),
        )
        .distinct()
        .order_by(memberships.c.department_id)
    )
    return [row[0] for row in (await session.execute(query)).all()]


@dataclass(frozen=True)
class StaffFilter:
    """The filters of ListStaffMembers, already validated."""

    username: str | None = None
    display_name_prefix: str | None = None
    role: str | None = None
    include_inactive: bool = False

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(
            ("staff", self.username, self.display_name_prefix, self.role, self.include_inactive)
        )


async def list_staff(
    session: AsyncSession, where: StaffFilter, *, after: str | None, limit: int
) -> list[Row[Any]]:
    """Up to `limit` staff members after the cursor username, ordered by username."""
    conditions: list[Any] = []
    if where.username is not None:
        conditions.append(staff.c.username == where.username)
    if where.display_name_prefix is not None:
        # Lower-cased by PostgreSQL, as the stored key is (Python's lower() differs).
        pattern = (
            func.lower(literal(_escape_like(where.display_name_prefix), Text), type_=Text) + "%"
        )
        conditions.append(staff.c.display_key.like(pattern, escape="\\"))
    if where.role is not None:
        conditions.append(staff.c.roles.contains([where.role]))
    if not where.include_inactive:
        conditions.append(staff.c.active.is_(True))
    if after is not None:
        conditions.append(staff.c.username > after)
    query = select(*_STAFF).where(and_(True, *conditions)).order_by(staff.c.username).limit(limit)
    return list((await session.execute(query)).all())


def check_etag(row: Row[Any], etag: str) -> None:
    """ABORTED when a given etag is not the row's current version."""
    if etag and etag != str(row.version):
        raise Aborted(
            "the staff member was changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"etag": str(row.version)},
        )


def inactive(staff_id: uuid.UUID) -> FailedPrecondition:
    """FAILED_PRECONDITION STAFF_INACTIVE for a deactivated staff member."""
    return FailedPrecondition(f"{staff_name(staff_id)} is inactive", reason="STAFF_INACTIVE")


async def _require_another_administrator(session: AsyncSession, staff_id: uuid.UUID) -> None:
    """FAILED_PRECONDITION unless an active ADMINISTRATOR other than `staff_id` remains."""
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(_ADMINISTRATORS_LOCK, 0)))
    )
    others = select(
        exists().where(
            staff.c.active.is_(True),
            staff.c.roles.contains([ADMINISTRATOR]),
            staff.c.id != staff_id,
        )
    )
    if not (await session.execute(others)).scalar():
        raise FailedPrecondition(
            "this would leave no active staff member with the ADMINISTRATOR role",
            reason="LAST_ADMINISTRATOR",
        )


async def update_staff(
    session: AsyncSession, staff_id: uuid.UUID, values: dict[str, Any], etag: str
) -> Row[Any]:
    """Apply `values` to an active staff member whose version matches `etag` (when given).

    UpdateStaffMember is IDEMPOTENT: when the row already holds exactly these values (a retry
    whose first attempt committed), it is returned as it is, whatever the etag.
    """
    current = await get_staff(session, staff_id, lock="update")
    if not current.active:
        raise inactive(staff_id)
    if all(_same(getattr(current, column), value) for column, value in values.items()):
        return current
    check_etag(current, etag)
    if (
        "roles" in values
        and ADMINISTRATOR in current.roles
        and ADMINISTRATOR not in values["roles"]
    ):
        await _require_another_administrator(session, staff_id)
    statement = (
        update(staff)
        .where(staff.c.id == staff_id)
        .values(**values, version=staff.c.version + 1, update_time=func.now())
        .returning(*_STAFF)
    )
    return (await session.execute(statement)).one()


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, list | tuple) and isinstance(wanted, list | tuple):
        return list(stored) == list(wanted)
    return bool(stored == wanted)


@dataclass(frozen=True)
class Deactivation:
    """What a deactivation changed, each row before and after (for the audit trail)."""

    staff: Row[Any]
    memberships: list[tuple[Row[Any], Row[Any]]] = field(default_factory=list)
    grants: list[tuple[Row[Any], Row[Any]]] = field(default_factory=list)


async def deactivate_staff(session: AsyncSession, staff_id: uuid.UUID, etag: str) -> Deactivation:
    """Mark a staff member inactive, end their open memberships and revoke their grants.

    Already inactive is a no-op success, whatever the etag (a retry whose first attempt committed).
    """
    current = await get_staff(session, staff_id, lock="update")
    if not current.active:
        return Deactivation(current)
    check_etag(current, etag)
    if ADMINISTRATOR in current.roles:
        await _require_another_administrator(session, staff_id)
    now = func.now()
    open_memberships = and_(
        memberships.c.staff_id == staff_id,
        or_(memberships.c.period_end.is_(None), memberships.c.period_end > now),
    )
    open_grants = and_(
        emergency_access_grants.c.staff_id == staff_id,
        emergency_access_grants.c.revoke_time.is_(None),
        emergency_access_grants.c.expire_time > now,
    )
    # The staff row lock keeps both sets still between the reads and the updates.
    ending = {r.id: r for r in await session.execute(select(*_MEMBERSHIP).where(open_memberships))}
    ended = await session.execute(
        update(memberships)
        .where(open_memberships)
        .values(period_end=func.greatest(now, memberships.c.period_start))
        .returning(*_MEMBERSHIP)
    )
    revoking = {r.id: r for r in await session.execute(select(*_GRANT).where(open_grants))}
    revoked = await session.execute(
        update(emergency_access_grants)
        .where(open_grants)
        .values(revoke_time=now, closed_time=now)
        .returning(*_GRANT)
    )
    statement = (
        update(staff)
        .where(staff.c.id == staff_id)
        .values(active=False, version=staff.c.version + 1, update_time=now)
        .returning(*_STAFF)
    )
    return Deactivation(
        (await session.execute(statement)).one(),
        [(ending[r.id], r) for r in ended if r.id in ending],
        [(revoking[r.id], r) for r in revoked if r.id in revoking],
    )


async def bootstrap_administrator(session: AsyncSession, username: str) -> Row[Any] | None:
    """Create an ADMINISTRATOR named `username` when there is no staff member at all.

    Safe for replicas starting together: the insert is conditional and loses quietly on the
    username's unique index. Returns the new row, None when nothing was created.
    """
    source = select(
        literal(uuid.uuid4()).label("id"),
        literal(username, Text).label("username"),
        literal("Administrator", Text).label("display_name"),
        literal([ADMINISTRATOR], staff.c.roles.type).label("roles"),
    ).where(~exists().where(staff.c.id.is_not(None)))
    statement = (
        insert(staff)
        .from_select(["id", "username", "display_name", "roles"], source)
        .on_conflict_do_nothing()
        .returning(*_STAFF)
    )
    return (await session.execute(statement)).first()


# --- memberships -------------------------------------------------------------------------------


async def insert_membership(
    session: AsyncSession, staff_id: uuid.UUID, values: dict[str, Any], request_id: str | None
) -> Row[Any] | None:
    """Insert a membership; None when `request_id` was already used (the caller re-reads it)."""
    statement = insert(memberships).values(
        id=uuid.uuid4(), staff_id=staff_id, create_request_id=request_id, **values
    )
    statement = skip_taken(statement, request_id, memberships.c.create_request_id)
    return (await session.execute(statement.returning(*_MEMBERSHIP))).first()


async def membership_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The membership added by the AddMembership call with this request id."""
    query = select(*_MEMBERSHIP).where(memberships.c.create_request_id == request_id)
    return (await session.execute(query)).first()


async def get_membership(
    session: AsyncSession, staff_id: uuid.UUID, membership_id: uuid.UUID, *, lock: bool = False
) -> Row[Any]:
    """One membership of one staff member, or NOT_FOUND."""
    query = select(*_MEMBERSHIP).where(
        memberships.c.id == membership_id, memberships.c.staff_id == staff_id
    )
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None:
        name = membership_name(staff_id, membership_id)
        raise NotFound(f"{name} not found", metadata={"name": name})
    return row


async def end_membership(
    session: AsyncSession, staff_id: uuid.UUID, membership_id: uuid.UUID
) -> Row[Any]:
    """End a membership now (at its start if it has not begun); an ended one is unchanged."""
    now = func.now()
    statement = (
        update(memberships)
        .where(
            memberships.c.id == membership_id,
            memberships.c.staff_id == staff_id,
            or_(memberships.c.period_end.is_(None), memberships.c.period_end > now),
        )
        .values(period_end=func.greatest(now, memberships.c.period_start))
        .returning(*_MEMBERSHIP)
    )
    row = (await session.execute(statement)).first()
    return row if row is not None else await get_membership(session, staff_id, membership_id)


@dataclass(frozen=True)
class MembershipFilter:
    """The parent and filters of ListMemberships, already validated."""

    staff_id: uuid.UUID | None = None
    department_id: uuid.UUID | None = None
    current_only: bool = False

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(("memberships", self.staff_id, self.department_id, self.current_only))


async def list_memberships(
    session: AsyncSession,
    where: MembershipFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Memberships newest period start first, after the keyset cursor."""
    conditions: list[Any] = []
    if where.staff_id is not None:
        conditions.append(memberships.c.staff_id == where.staff_id)
    if where.department_id is not None:
        conditions.append(memberships.c.department_id == where.department_id)
    if where.current_only:
        now = func.now()
        conditions += [
            memberships.c.approval_state == "approved",
            memberships.c.period_start <= now,
            or_(memberships.c.period_end.is_(None), memberships.c.period_end > now),
        ]
    if after is not None:
        conditions.append(
            tuple_(memberships.c.period_start, memberships.c.id)
            < tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*_MEMBERSHIP)
        .where(and_(True, *conditions))
        .order_by(memberships.c.period_start.desc(), memberships.c.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())


# --- emergency access grants -------------------------------------------------------------------


async def grant_by_request(
    session: AsyncSession, staff_id: uuid.UUID, request_id: str
) -> Row[Any] | None:
    """The grant a CreateEmergencyAccessGrant call of this staff member with this id made."""
    query = select(*_GRANT).where(
        emergency_access_grants.c.staff_id == staff_id,
        emergency_access_grants.c.create_request_id == request_id,
    )
    return (await session.execute(query)).first()


async def insert_grant(
    session: AsyncSession,
    *,
    staff_id: uuid.UUID,
    patient_id: uuid.UUID,
    reason: str,
    duration: dt.timedelta,
    request_id: str | None,
    fingerprint: str | None,
) -> Row[Any] | None:
    """Insert a grant starting now; None when this staff member already used `request_id`.

    The person's open grants for the patient that have expired are closed first: an open one
    still in force makes the insert fail on ONE_OPEN_GRANT (`is_second_open_grant`), also when a
    concurrent insert commits it first (the unique index waits for that transaction)."""
    now = func.now()
    grants = emergency_access_grants
    await session.execute(
        update(grants)
        .where(
            grants.c.staff_id == staff_id,
            grants.c.patient_id == patient_id,
            grants.c.closed_time.is_(None),
            grants.c.expire_time <= now,
        )
        .values(closed_time=now)
    )
    statement = insert(emergency_access_grants).values(
        id=uuid.uuid4(),
        staff_id=staff_id,
        patient_id=patient_id,
        reason=reason,
        grant_time=now,
        expire_time=now + literal(duration),
        create_request_id=request_id,
        create_request_fingerprint=fingerprint,
    )
    statement = skip_taken(
        statement,
        request_id,
        emergency_access_grants.c.staff_id,
        emergency_access_grants.c.create_request_id,
    )
    return (await session.execute(statement.returning(*_GRANT))).first()


async def find_grant(session: AsyncSession, grant_id: uuid.UUID) -> Row[Any] | None:
    """One grant or None."""
    query = select(*_GRANT).where(emergency_access_grants.c.id == grant_id)
    return (await session.execute(query)).first()


def grant_missing(grant_id: uuid.UUID) -> NotFound:
    """NOT_FOUND for a grant."""
    name = grant_name(grant_id)
    return NotFound(f"{name} not found", metadata={"name": name})


async def revoke_grant(session: AsyncSession, grant_id: uuid.UUID) -> Row[Any]:
    """Revoke a grant in force now; a revoked or expired grant is returned unchanged."""
    now = func.now()
    statement = (
        update(emergency_access_grants)
        .where(
            emergency_access_grants.c.id == grant_id,
            emergency_access_grants.c.revoke_time.is_(None),
            emergency_access_grants.c.expire_time > now,
        )
        .values(revoke_time=now, closed_time=now)
        .returning(*_GRANT)
    )
    row = (await session.execute(statement)).first()
    if row is None:
        row = await find_grant(session, grant_id)
    if row is None:
        raise grant_missing(grant_id)
    return row


def is_second_open_grant(error: IntegrityError) -> bool:
    """Whether `error` is the refusal of a second open grant of one person and patient."""
    return integrity_violation(error) == (UNIQUE_VIOLATION, ONE_OPEN_GRANT)


async def review_grant(
    session: AsyncSession,
    grant_id: uuid.UUID,
    *,
    reviewer_id: uuid.UUID,
    state: str,
    comment: str | None,
) -> Row[Any]:
    """Record the review of a pending grant; a flagged grant still in force is revoked with it.

    NOT_FOUND for no such grant, FAILED_PRECONDITION GRANT_ALREADY_REVIEWED for a reviewed one
    (the condition on 'pending' makes two concurrent reviews one success and one refusal)."""
    grants = emergency_access_grants
    now = func.now()
    values: dict[str, Any] = {
        "review_state": state,
        "reviewer_id": reviewer_id,
        "review_time": now,
        "review_comment": comment,
    }
    row = (
        await session.execute(
            update(grants)
            .where(grants.c.id == grant_id, grants.c.review_state == "pending")
            .values(**values)
            .returning(*_GRANT)
        )
    ).first()
    if row is None:
        found = await find_grant(session, grant_id)
        if found is None:
            raise grant_missing(grant_id)
        raise FailedPrecondition(
            "the grant was reviewed before",
            reason="GRANT_ALREADY_REVIEWED",
            metadata={"review_state": found.review_state},
        )
    if state == "flagged" and row.revoke_time is None:
        row = await revoke_grant(session, grant_id)
    return row


@dataclass(frozen=True)
class GrantFilter:
    """The filters of ListEmergencyAccessGrants, already validated."""

    staff_id: uuid.UUID | None = None
    patient_id: uuid.UUID | None = None
    active_only: bool = False
    # 'pending', 'justified' or 'flagged'; None for any.
    review_state: str | None = None

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(("grants", self.staff_id, self.patient_id, self.active_only, self.review_state))


async def list_grants(
    session: AsyncSession,
    where: GrantFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Grants newest first, after the keyset cursor."""
    grants = emergency_access_grants
    conditions: list[Any] = []
    if where.staff_id is not None:
        conditions.append(grants.c.staff_id == where.staff_id)
    if where.patient_id is not None:
        conditions.append(grants.c.patient_id == where.patient_id)
    if where.active_only:
        conditions += [grants.c.revoke_time.is_(None), grants.c.expire_time > func.now()]
    if where.review_state is not None:
        conditions.append(grants.c.review_state == where.review_state)
    if after is not None:
        conditions.append(
            tuple_(grants.c.grant_time, grants.c.id) < tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*_GRANT)
        .where(and_(True, *conditions))
        .order_by(grants.c.grant_time.desc(), grants.c.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())
