"""The two-person rule: access changes proposed by one administrator, decided by another.

Giving access (roles added to a staff member, a department membership) is an access change that
takes effect only when a second administrator approves it; taking access away is immediate and
needs nobody else. The approver is neither the proposer nor the staff member concerned, and nobody
proposes a change of their own access: the servicer checks it first (PERMISSION_DENIED with a
reason), and the `access_changes` checks hold it even against a bug.

Setup window: a new installation has one (bootstrap) administrator, who could never get a second
one approved. So, until the installation has ever had an ADMINISTRATOR grant approved, the
ADMINISTRATOR role may be given at once (rule `setup`), to one staff member: from the moment a
second administrator exists the window is closed for good, since an approved (or setup) grant of
ADMINISTRATOR is never deleted. An administrator who later takes the others' role away stays alone
and can approve nothing: the rule fails safe.

Functions here run inside the caller's transaction, as store.py's do.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, and_, exists, func, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.base.errors import FailedPrecondition, NotFound, PermissionDenied
from his.iam.mapping import APPROVAL, membership_name, role_number, staff_name
from his.iam.tables import access_changes, memberships, staff
from his.iam.v1 import iam_service_pb2 as pb
from his.runtime import wire

ADMINISTRATOR = "ADMINISTRATOR"
COLLECTION = "accessChanges"
STATE = APPROVAL
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
# How a change was decided (the `rule` column).
TWO_PERSON, SETUP, DEMO_SEED = "two_person", "setup", "demo_seed"
# Serialises the setup window's check with every ADMINISTRATOR grant (store.py's lock too).
_ADMINISTRATORS_LOCK = "his-iam-administrators"

_CHANGE = tuple(access_changes.c)


def change_name(change_id: uuid.UUID) -> str:
    """`accessChanges/{id}`."""
    return f"{COLLECTION}/{change_id}"


def change_to_proto(row: Any) -> pb.AccessChange:
    """An `iam.access_changes` row as an AccessChange."""
    change = pb.AccessChange(
        name=change_name(row.id),
        staff=staff_name(row.staff_id),
        roles=[role_number(role) for role in row.roles or ()],  # type: ignore[misc]
        state=STATE.number(row.state),  # type: ignore[arg-type]
        proposer=staff_name(row.proposer_id),
        decider=staff_name(row.decider_id) if row.decider_id else "",
        create_time=wire.timestamp(row.create_time),
        decide_time=wire.timestamp(row.decide_time),
    )
    if row.membership_id is not None:
        change.membership = membership_name(row.staff_id, row.membership_id)
    return change


# --- who -----------------------------------------------------------------------------------------


def refuse_own(caller: uuid.UUID | None, staff_id: uuid.UUID) -> None:
    """PERMISSION_DENIED (SELF_CHANGE_REFUSED) when the caller is the staff member concerned."""
    if caller is not None and caller == staff_id:
        raise PermissionDenied(
            "nobody changes their own roles, memberships or access changes",
            reason="SELF_CHANGE_REFUSED",
            metadata={"staff": staff_name(staff_id)},
        )


# --- audit values ------------------------------------------------------------------------------


# The audit service's limit of one value (AuditFieldChange.before/after).
_MAX_VALUE = 2000


def _json(value: object) -> str:
    text = "" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)
    # Free text (a grant's reason, a review comment) may escape past the audit limit; the
    # stored row keeps it whole, the trail keeps its beginning.
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def field_change(path: str, before: object, after: object) -> audit_pb.AuditFieldChange:
    """One changed field for the audit trail, values as JSON (None: the field did not exist)."""
    return audit_pb.AuditFieldChange(field_path=path, before=_json(before), after=_json(after))


def changed_fields(
    before: dict[str, object] | None, after: dict[str, object] | None
) -> list[audit_pb.AuditFieldChange]:
    """The fields whose values differ between two views of a resource (None: absent)."""
    old, new = before or {}, after or {}
    return [
        field_change(path, old.get(path), new.get(path))
        for path in sorted(old.keys() | new.keys())
        if old.get(path) != new.get(path) or before is None or after is None
    ]


def grant_view(row: Any) -> dict[str, object]:
    """The audited fields of a break-the-glass grant."""
    return {
        "staff": staff_name(row.staff_id),
        "patient": f"patients/{row.patient_id}",
        "reason": row.reason,
        "expire_time": _instant(row.expire_time),
        "revoke_time": _instant(row.revoke_time),
        "review_state": row.review_state,
        "reviewer": None if row.reviewer_id is None else staff_name(row.reviewer_id),
        "review_comment": row.review_comment,
    }


def staff_view(row: Any) -> dict[str, object]:
    """The audited fields of a staff row (no secret is among them)."""
    identifier = None
    if row.practitioner_id_value is not None:
        identifier = {"system": row.practitioner_id_system, "value": row.practitioner_id_value}
    return {
        "username": row.username,
        "display_name": row.display_name,
        "roles": sorted(row.roles),
        "practitioner_identifier": identifier,
        "active": row.active,
    }


def _instant(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def enrolment_view(row: Any) -> dict[str, object]:
    """The audited fields of an enrolment (never a code or its hash)."""
    return {
        "staff": f"staff/{row.staff_id}",
        "creator": row.created_by,
        "expire_time": _instant(row.expire_time),
        "approval_required": row.approval_required,
        "assurance": row.assurance,
        "approver": row.approved_by,
        "approve_time": _instant(row.approve_time),
        "used_time": _instant(row.used_time),
        "void_time": _instant(row.void_time),
    }


def membership_view(row: Any) -> dict[str, object]:
    """The audited fields of a membership row."""
    return {
        "department": f"departments/{row.department_id}",
        "period.start": _instant(row.period_start),
        "period.end": _instant(row.period_end),
        "primary": row.is_primary,
        "approval_state": row.approval_state,
    }


def change_view(row: Any) -> dict[str, object]:
    """The audited fields of an access change row."""
    return {
        "staff": staff_name(row.staff_id),
        "roles": sorted(row.roles) if row.roles else None,
        "membership": (
            membership_name(row.staff_id, row.membership_id) if row.membership_id else None
        ),
        "state": row.state,
        "proposer": staff_name(row.proposer_id),
        "decider": staff_name(row.decider_id) if row.decider_id else None,
        "rule": row.rule,
    }


# --- proposals ---------------------------------------------------------------------------------


async def propose_roles(
    session: AsyncSession,
    *,
    staff_id: uuid.UUID,
    roles: Iterable[str],
    proposer_id: uuid.UUID,
) -> tuple[Row[Any], bool]:
    """A pending change adding `roles` to the staff member (whose row the caller has locked):
    the same pending one if it exists already (a retried call), else a new one. Returns the row
    and whether it is new."""
    wanted = list(dict.fromkeys(roles))  # in the order given, as a staff member's roles are
    earlier = await pending_role_change(session, staff_id, wanted)
    if earlier is not None:
        return earlier, False
    statement = insert(access_changes).values(
        id=uuid.uuid4(),
        staff_id=staff_id,
        kind="roles",
        roles=wanted,
        state=PENDING,
        proposer_id=proposer_id,
    )
    return (await session.execute(statement.returning(*_CHANGE))).one(), True


async def pending_role_change(
    session: AsyncSession, staff_id: uuid.UUID, roles: Sequence[str]
) -> Row[Any] | None:
    """The pending change adding exactly these roles (in any order) to the staff member."""
    query = select(*_CHANGE).where(
        access_changes.c.staff_id == staff_id,
        access_changes.c.kind == "roles",
        access_changes.c.state == PENDING,
        access_changes.c.roles.contains(list(roles)),
        access_changes.c.roles.contained_by(list(roles)),
    )
    return (await session.execute(query.limit(1))).first()


async def propose_membership(
    session: AsyncSession,
    *,
    change_id: uuid.UUID,
    staff_id: uuid.UUID,
    membership_id: uuid.UUID,
    proposer_id: uuid.UUID,
) -> Row[Any]:
    """The pending change that approves a (pending) membership just added."""
    statement = insert(access_changes).values(
        id=change_id,
        staff_id=staff_id,
        kind="membership",
        membership_id=membership_id,
        state=PENDING,
        proposer_id=proposer_id,
    )
    return (await session.execute(statement.returning(*_CHANGE))).one()


async def first_role_change(session: AsyncSession, staff_id: uuid.UUID) -> Row[Any] | None:
    """The first role change of a staff member (the one CreateStaffMember made)."""
    query = (
        select(*_CHANGE)
        .where(access_changes.c.staff_id == staff_id, access_changes.c.kind == "roles")
        .order_by(access_changes.c.create_time, access_changes.c.id)
        .limit(1)
    )
    return (await session.execute(query)).first()


async def setup_window_open(session: AsyncSession) -> bool:
    """Whether the installation has never had an ADMINISTRATOR grant approved (see the module
    docstring), under the administrators' lock until the transaction ends."""
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(_ADMINISTRATORS_LOCK, 0)))
    )
    granted = select(
        exists().where(
            access_changes.c.state == APPROVED,
            access_changes.c.roles.contains([ADMINISTRATOR]),
        )
    )
    if (await session.execute(granted)).scalar():
        return False
    # Administrators made before the two-person rule (no approved grant recorded) count too.
    holders = select(func.count()).where(staff.c.roles.contains([ADMINISTRATOR]))
    return int((await session.execute(holders)).scalar_one()) <= 1


async def grant_at_setup(
    session: AsyncSession, change: Row[Any], staff_row: Row[Any]
) -> tuple[Row[Any], Row[Any]]:
    """Apply a pending ADMINISTRATOR-only change at once (the setup window): (change, staff)."""
    decided = await _decide(session, change.id, APPROVED, decider_id=None, rule=SETUP)
    return decided, await _add_roles(session, staff_row, change.roles)


# --- decisions ---------------------------------------------------------------------------------


async def get_change(
    session: AsyncSession, change_id: uuid.UUID, *, lock: bool = False
) -> Row[Any]:
    """One access change, or NOT_FOUND."""
    query = select(*_CHANGE).where(access_changes.c.id == change_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None:
        name = change_name(change_id)
        raise NotFound(f"{name} not found", metadata={"name": name})
    return row


async def _decide(
    session: AsyncSession,
    change_id: uuid.UUID,
    state: str,
    *,
    decider_id: uuid.UUID | None,
    rule: str = TWO_PERSON,
) -> Row[Any]:
    statement = (
        update(access_changes)
        .where(access_changes.c.id == change_id, access_changes.c.state == PENDING)
        .values(state=state, decider_id=decider_id, decide_time=func.now(), rule=rule)
        .returning(*_CHANGE)
    )
    return (await session.execute(statement)).one()


async def _add_roles(session: AsyncSession, staff_row: Row[Any], roles: Sequence[str]) -> Row[Any]:
    merged = [*staff_row.roles, *(role for role in roles if role not in staff_row.roles)]
    statement = (
        update(staff)
        .where(staff.c.id == staff_row.id)
        .values(roles=merged, version=staff.c.version + 1, update_time=func.now())
        .returning(*staff.c)
    )
    return (await session.execute(statement)).one()


@dataclass(frozen=True)
class Decision:
    """A decided change and what it changed: the staff row or the membership row, before and
    after (None when the decision changed neither, e.g. a rejected role change)."""

    change_before: Row[Any]
    change: Row[Any]
    resource_before: Row[Any] | None = None
    resource: Row[Any] | None = None


def refuse_decider(change: Row[Any], decider_id: uuid.UUID | None, *, approving: bool) -> None:
    """PERMISSION_DENIED when the caller may not decide this change."""
    refuse_own(decider_id, change.staff_id)
    if approving and decider_id is not None and decider_id == change.proposer_id:
        raise PermissionDenied(
            "the administrator who proposed an access change cannot approve it: a second "
            "administrator must",
            reason="APPROVER_IS_PROPOSER",
            metadata={"access_change": change_name(change.id)},
        )


async def require_administrator_now(session: AsyncSession, decider_id: uuid.UUID | None) -> None:
    """PERMISSION_DENIED unless the approver is, in iam's staff table now, an active
    administrator: the token's roles are up to HIS_IAM_TOKEN_TTL_S old, and an administrator
    deactivated or stripped of the role in that time must not approve anything. The row is held
    (FOR SHARE) until the approval commits, so the role cannot be taken away in between. A
    token whose staff member iam does not keep (an external identity provider's, the tests'
    issuer) is taken at its word: the authorisation policy has already checked its role."""
    if decider_id is None:
        return
    row = (
        await session.execute(
            select(staff.c.active, staff.c.roles)
            .where(staff.c.id == decider_id)
            .with_for_update(read=True)
        )
    ).one_or_none()
    if row is not None and (not row.active or ADMINISTRATOR not in row.roles):
        raise PermissionDenied(
            "only an active administrator approves access changes and enrolments",
            reason="APPROVER_NOT_ADMINISTRATOR",
        )


async def approve(
    session: AsyncSession,
    change_id: uuid.UUID,
    decider_id: uuid.UUID | None,
    *,
    rule: str = TWO_PERSON,
) -> Decision:
    """Approve a pending change and apply it; an approved one is returned as it is."""
    change = await get_change(session, change_id, lock=True)
    if rule == TWO_PERSON:
        refuse_decider(change, decider_id, approving=True)
        await require_administrator_now(session, decider_id)
    if change.state == APPROVED:
        return Decision(change, change)
    if change.state == REJECTED:
        raise FailedPrecondition(
            f"{change_name(change.id)} was rejected; propose the access again",
            reason="ACCESS_CHANGE_REJECTED",
        )
    member = (
        await session.execute(
            select(*staff.c).where(staff.c.id == change.staff_id).with_for_update()
        )
    ).one()
    if not member.active:
        raise FailedPrecondition(f"{staff_name(member.id)} is inactive", reason="STAFF_INACTIVE")
    if change.kind == "roles":
        if ADMINISTRATOR in change.roles:
            # Taken so that the setup window's check sees this grant, or waits for it.
            await session.execute(
                select(func.pg_advisory_xact_lock(func.hashtextextended(_ADMINISTRATORS_LOCK, 0)))
            )
        decided = await _decide(session, change.id, APPROVED, decider_id=decider_id, rule=rule)
        return Decision(change, decided, member, await _add_roles(session, member, change.roles))
    membership = (
        await session.execute(
            select(*memberships.c).where(memberships.c.id == change.membership_id)
        )
    ).one()
    decided = await _decide(session, change.id, APPROVED, decider_id=decider_id, rule=rule)
    approved = (
        await session.execute(
            update(memberships)
            .where(memberships.c.id == membership.id)
            .values(approval_state=APPROVED)
            .returning(*memberships.c)
        )
    ).one()
    return Decision(change, decided, membership, approved)


async def reject(
    session: AsyncSession, change_id: uuid.UUID, decider_id: uuid.UUID | None
) -> Decision:
    """Reject a pending change (a pending membership ends at its start and never counts); a
    rejected one is returned as it is."""
    change = await get_change(session, change_id, lock=True)
    refuse_decider(change, decider_id, approving=False)
    if change.state == REJECTED:
        return Decision(change, change)
    if change.state == APPROVED:
        raise FailedPrecondition(
            f"{change_name(change.id)} was approved and is in effect; take the access away "
            "with UpdateStaffMember or RemoveMembership",
            reason="ACCESS_CHANGE_APPROVED",
        )
    decided = await _decide(session, change.id, REJECTED, decider_id=decider_id)
    if change.kind == "roles":
        return Decision(change, decided)
    before, after = await reject_membership(session, change.membership_id)
    return Decision(change, decided, before, after)


async def reject_membership(
    session: AsyncSession, membership_id: uuid.UUID
) -> tuple[Row[Any], Row[Any]]:
    """Mark a pending membership rejected and end it at its start (an empty period, which
    overlaps nothing): (before, after)."""
    before = (
        await session.execute(
            select(*memberships.c).where(memberships.c.id == membership_id).with_for_update()
        )
    ).one()
    after = (
        await session.execute(
            update(memberships)
            .where(memberships.c.id == membership_id)
            .values(approval_state=REJECTED, period_end=memberships.c.period_start)
            .returning(*memberships.c)
        )
    ).one()
    return before, after


async def pending_change_of_membership(
    session: AsyncSession, membership_id: uuid.UUID
) -> Row[Any] | None:
    """The pending change of a membership, locked; None if it has none or it was decided."""
    query = (
        select(*_CHANGE)
        .where(access_changes.c.membership_id == membership_id, access_changes.c.state == PENDING)
        .with_for_update()
    )
    return (await session.execute(query)).first()


async def reject_pending(
    session: AsyncSession, change_id: uuid.UUID, decider_id: uuid.UUID | None
) -> Row[Any]:
    """Reject a pending change as part of another write (RemoveMembership of a pending one)."""
    return await _decide(session, change_id, REJECTED, decider_id=decider_id)


# --- lists -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeFilter:
    """The filters of ListAccessChanges, already validated."""

    staff_id: uuid.UUID | None = None
    state: str | None = None

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(("access-changes", self.staff_id, self.state))


async def list_changes(
    session: AsyncSession,
    where: ChangeFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Access changes newest first, after the keyset cursor."""
    conditions: list[Any] = []
    if where.staff_id is not None:
        conditions.append(access_changes.c.staff_id == where.staff_id)
    if where.state is not None:
        conditions.append(access_changes.c.state == where.state)
    if after is not None:
        conditions.append(
            tuple_(access_changes.c.create_time, access_changes.c.id)
            < tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*_CHANGE)
        .where(and_(True, *conditions))
        .order_by(access_changes.c.create_time.desc(), access_changes.c.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())
