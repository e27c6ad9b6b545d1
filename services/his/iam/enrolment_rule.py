"""Which enrolments need a second administrator, and the refusals of an enrolment's approval.

An enrolment sets a person's password and TOTP secret, and the administrator who hands out its
code could complete it themselves: re-enrolling another administrator would let them sign in as
that person and approve their own access changes, defeating the two-person rule. So an
enrolment takes two administrators (two halves of the code, one each; his.iam.credentials) when:

- the staff member has a credential already (a re-enrolment: the takeover case), or
- they hold, or are proposed in a pending access change, a role that needs TOTP (clinical or
  administrator roles: a credential that opens patient records or changes who may).

One administrator suffices for the first enrolment of someone with no credential and no such
role (their access still needs the two-person rule to grow), and for the first enrolment of
someone with no credential while nobody else with a credential is or ever was an administrator: a
new installation's second administrator, enrolled by the bootstrap administrator. (Counting only
active administrators let one administrator reopen that exception by stripping the others' role.)
Neither can replace anybody's credential, which the database holds too (migration 0007's
trigger). Functions here run inside the caller's transaction.

The administrator who enrols someone alone knows their password and TOTP secret, so such a
credential (ONE_ADMINISTRATOR) never signs in while its person holds a TOTP role: a role approved
later (a registrar promoted to administrator by an honest second administrator) would otherwise
hand the first administrator a second administrator's account. The person re-enrols with two.
The bootstrap exception's credentials (LONE_ADMINISTRATOR) do sign in: nobody else could have
approved. Each enrolment and credential records its assurance (migration 0009).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import PermissionDenied
from his.iam.approvals import ADMINISTRATOR, APPROVED, PENDING
from his.iam.tables import access_changes, staff, staff_credentials

# Roles whose logins need a second factor: those that open patient records or change who may.
TOTP_ROLES = frozenset({"DOCTOR", "NURSE", "PHARMACIST", "LAB_TECHNICIAN", "ADMINISTRATOR"})

# How many administrators stand behind an enrolment and the credential it sets (module docstring).
TWO_ADMINISTRATORS = "TWO_ADMINISTRATORS"
LONE_ADMINISTRATOR = "LONE_ADMINISTRATOR"  # one, under the bootstrap exception
ONE_ADMINISTRATOR = "ONE_ADMINISTRATOR"  # one, for someone with no TOTP role
UNCHECKED = "UNCHECKED"  # security off: no caller is checked, so no rule either
DIRECT = "DIRECT"  # set without an enrolment: the development bootstrap administrator


async def has_credential(session: AsyncSession, staff_id: uuid.UUID) -> bool:
    """Whether the staff member has a password and TOTP secret already."""
    query = select(exists().where(staff_credentials.c.staff_id == staff_id))
    return bool((await session.execute(query)).scalar())


async def _proposed_totp_role(session: AsyncSession, staff_id: uuid.UUID) -> bool:
    query = select(
        exists().where(
            access_changes.c.staff_id == staff_id,
            access_changes.c.kind == "roles",
            access_changes.c.state == PENDING,
            access_changes.c.roles.overlap(sorted(TOTP_ROLES)),
        )
    )
    return bool((await session.execute(query)).scalar())


async def _another_could_approve(
    session: AsyncSession, staff_id: uuid.UUID, creator_id: uuid.UUID | None
) -> bool:
    """Whether a staff member with a credential who is or was an administrator exists, other
    than the staff member and the creator (in iam's tables). Active or not, holding the role now
    or not: taking access away is immediate and needs one administrator, so counting only active
    administrators would let one administrator reopen the lone-administrator exception by
    stripping or deactivating the others (review rev17)."""
    others = [staff_id] if creator_id is None else [staff_id, creator_id]
    was_administrator = or_(
        staff.c.roles.contains([ADMINISTRATOR]),
        exists().where(
            access_changes.c.staff_id == staff.c.id,
            access_changes.c.kind == "roles",
            access_changes.c.state == APPROVED,
            access_changes.c.roles.contains([ADMINISTRATOR]),
        ),
        # Only administrators propose or decide access changes: this also covers the bootstrap
        # administrator, whose role was never granted through a change.
        exists().where(
            or_(
                access_changes.c.proposer_id == staff.c.id,
                access_changes.c.decider_id == staff.c.id,
            )
        ),
    )
    query = select(
        exists().where(
            was_administrator,
            staff.c.id.not_in(others),
            exists().where(staff_credentials.c.staff_id == staff.c.id),
        )
    )
    return bool((await session.execute(query)).scalar())


async def assurance(session: AsyncSession, member: Any, creator_id: uuid.UUID | None) -> str:
    """How many administrators enrolling `member` (a staff row) takes: TWO_ADMINISTRATORS, or
    one, ONE_ADMINISTRATOR or LONE_ADMINISTRATOR (the bootstrap exception; module docstring)."""
    if await has_credential(session, member.id):
        return TWO_ADMINISTRATORS
    if not (set(member.roles) & TOTP_ROLES or await _proposed_totp_role(session, member.id)):
        return ONE_ADMINISTRATOR
    if await _another_could_approve(session, member.id, creator_id):
        return TWO_ADMINISTRATORS
    return LONE_ADMINISTRATOR


def signs_in(credential_assurance: str, roles: Iterable[str]) -> bool:
    """Whether a credential of this assurance may sign in a person holding `roles`: not one a
    single administrator set (who knows its secrets) once the person holds a TOTP role."""
    return credential_assurance != ONE_ADMINISTRATOR or not set(roles) & TOTP_ROLES


def creator_id(created_by: str) -> uuid.UUID | None:
    """The staff id of an enrolment's `created_by` (`staff/{id}`); None for anyone else."""
    if not created_by.startswith("staff/"):
        return None
    try:
        return uuid.UUID(created_by.removeprefix("staff/"))
    except ValueError:
        return None


def refuse_self(caller: uuid.UUID | None, staff_id: uuid.UUID, what: str) -> None:
    """PERMISSION_DENIED (SELF_ENROLMENT) when the caller is the staff member to enrol."""
    if caller is not None and caller == staff_id:
        raise PermissionDenied(f"nobody may {what} for themselves", reason="SELF_ENROLMENT")


def refuse_creator(approver: uuid.UUID | None, enrolment: Any, name: str) -> None:
    """PERMISSION_DENIED (APPROVER_IS_PROPOSER) when the approver created the enrolment."""
    if approver is not None and enrolment.created_by == f"staff/{approver}":
        raise PermissionDenied(
            "the administrator who created an enrolment cannot approve it: a second "
            "administrator must",
            reason="APPROVER_IS_PROPOSER",
            metadata={"enrolment": name},
        )
