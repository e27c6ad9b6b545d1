"""The IamService servicer: validate → authorize → store in one transaction (→ audit) → respond."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from sqlalchemy.exc import IntegrityError

from his.base import identity
from his.base.catalog import BY_NAME
from his.base.errors import (
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
)
from his.base.identity import SERVICE_ROLE, Principal
from his.iam import approvals, dev_credentials, store
from his.iam.approvals import (
    change_view,
    changed_fields,
    grant_view,
    membership_view,
    refuse_own,
    staff_view,
)
from his.iam.config import IamConfig
from his.iam.credentials import (
    Completion,
    Enrolment,
    StaffCredentials,
    credential_key,
    enrolment_name,
)
from his.iam.enrolment_rule import refuse_self
from his.iam.grant_reason import reason_problem
from his.iam.mapping import (
    KIND,
    REVIEW_STATE,
    department_name,
    department_to_proto,
    grant_name,
    grant_to_proto,
    jwks_to_proto,
    membership_name,
    membership_to_proto,
    patient_name,
    role_name,
    staff_name,
    staff_to_proto,
)
from his.iam.sign_in import CODE_LENGTH, PatientSignIn, hash_key, source_of
from his.iam.sign_in_sender import CodeSender, LocalCodeSender
from his.iam.tokens import IssuedToken, TokenIssuer, signing_keys
from his.iam.v1 import iam_service_pb2 as pb
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.iam.validation import (
    MAX_CREDENTIAL,
    MAX_LOGIN_NAME,
    MAX_PREFIX,
    MAX_REASON,
    MIN_REASON,
    STAFF_UPDATABLE,
    department_fields,
    duration_s,
    membership_fields,
    parent_staff,
    staff_fields,
    username,
)
from his.runtime.access import ALLOWED, Access, Permit
from his.runtime.database import Database
from his.runtime.idempotency import RequestKey
from his.runtime.pagination import PageTokens, time_and_id, time_and_id_values
from his.runtime.policy import Request
from his.runtime.security import peer_binding
from his.runtime.server import ServiceResources
from his.runtime.validation import (
    Violations,
    require_paths,
    required_child_id,
    required_id,
)
from his_client import HisClients
from his_client.credentials import service_credential
from his_client.patient import require_active

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

_CREATE_PATHS = frozenset({"username", "display_name", "roles", "practitioner_identifier"})
_SERVICE_PREFIX = "service:"
_GRANT_TYPE = "his.iam.v1.EmergencyAccessGrant"
_CLINICIANS = frozenset({"DOCTOR", "NURSE"})
_STAFF_TYPE = "his.iam.v1.StaffMember"
_MEMBERSHIP_TYPE = "his.iam.v1.DepartmentMembership"
_CHANGE_TYPE = "his.iam.v1.AccessChange"
_DEPARTMENT_TYPE = "his.iam.v1.Department"
_ENROLMENT_TYPE = "his.iam.v1.StaffEnrolment"
_COMPLETE_ENROLMENT = (
    f"{pb.DESCRIPTOR.services_by_name['IamService'].full_name}/CompleteStaffEnrolment"
)
# The token type of every issued token (RFC 6750), not a secret.
_BEARER = "Bearer"


def _refused() -> Unauthenticated:
    # One answer for unknown user, wrong credential and inactive staff: it reveals nothing.
    return Unauthenticated("unknown username or wrong credential", reason="INVALID_CREDENTIALS")


def _enrolment_to_proto(enrolment: Enrolment) -> pb.StaffEnrolment:
    """An enrolment with the code (or half) the call hands out."""
    row = enrolment.row
    answer = pb.StaffEnrolment(
        name=enrolment_name(row.staff_id, row.id),
        enrolment_code=enrolment.code,
        approval_required=row.approval_required,
        creator=row.created_by,
        approver=row.approved_by or "",
    )
    answer.expire_time.FromDatetime(row.expire_time)
    if row.approve_time is not None:
        answer.approve_time.FromDatetime(row.approve_time)
    return answer


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _with_change(member: pb.StaffMember, change: Any) -> pb.StaffMember:
    """The member as answered by a create or update: naming the change its roles wait in."""
    if change is not None and change.state == approvals.PENDING:
        member.pending_access_change = approvals.change_name(change.id)
    return member


class IamService(pb_grpc.IamServiceServicer):
    """Departments, staff, memberships, tokens and break-the-glass grants over the `iam` schema."""

    def __init__(
        self,
        resources: ServiceResources,
        config: IamConfig,
        *,
        sender: CodeSender | None = None,
    ) -> None:
        self._db: Database = resources.database
        self._clients: HisClients = resources.clients
        self._pages = PageTokens(resources.config.page_token_key)
        self._config = config
        # In the mesh: service tokens are issued only to the service's own mTLS principal.
        self._peers = peer_binding(resources.config.auth)
        # Policy decisions and the audit trail, shared by the process (off with HIS_SECURITY=off).
        self._access: Access = resources.access
        self._issuer: TokenIssuer | None = None
        self._jwks: pb.JsonWebKeySet | None = None
        # Patient sign-in needs the local provider's issuer: without it, UNIMPLEMENTED.
        self._sign_in: PatientSignIn | None = None
        # Staff passwords and TOTP, with the local provider only.
        self._credentials: StaffCredentials | None = None
        if config.local_provider:
            keys = signing_keys(config.signing_key_paths, config.generated_key_path)
            self._issuer = TokenIssuer(
                keys, issuer=config.issuer, audience=config.audience, ttl_s=config.token_ttl_s
            )
            self._jwks = jwks_to_proto(self._issuer.jwks())
            self._credentials = StaffCredentials(
                self._db,
                self._issuer,
                config.login,
                key=credential_key(config.login, hash_key(config.sign_in, keys[0])),
            )
            if config.sign_in.enabled:
                # Codes go through `sender` (production: an SMS gateway's), else the local one.
                self._sign_in = PatientSignIn(
                    self._db,
                    self._clients,
                    self._issuer,
                    config.sign_in,
                    sender=sender or LocalCodeSender(config.sign_in_codes_path),
                    key=hash_key(config.sign_in, keys[0]),
                )
        # The bootstrap administrator is made before the first token is issued (services log in
        # as they start): no background task, which could outlive a quick stop.
        self._bootstrapped = not config.bootstrap_admin
        self._bootstrap_lock = asyncio.Lock()

    @property
    def config(self) -> IamConfig:
        """The settings this servicer runs with."""
        return self._config

    @property
    def issuer(self) -> TokenIssuer | None:
        """The local provider's token issuer (its keys), None when the provider is off."""
        return self._issuer

    # --- authorization ---------------------------------------------------------------------

    async def _require(
        self, action: str, resource: str, *, own: bool = False, fields: Sequence[str] = ()
    ) -> None:
        """PERMISSION_DENIED unless the policy lets the caller do `action` on `resource`."""
        await self._access.require(action, resource, own=own, fields=fields)

    def _allows(self, principal: Principal, action: str, resource: str, *, own: bool) -> bool:
        request = Request(roles=tuple(principal.roles), action=action, resource=resource, own=own)
        return self._access.policy.decide(request).allow

    # --- departments -----------------------------------------------------------------------

    async def CreateDepartment(
        self, request: pb.CreateDepartmentRequest, context: Context
    ) -> pb.Department:
        v = Violations()
        if not request.HasField("department"):
            v.add("department", "is required")
        values = department_fields(v, request.department)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        await self._require("create", "iam.department")
        key = RequestKey.of(request, request_id)
        values["create_request_fingerprint"] = key.fingerprint
        try:
            async with self._db.transaction() as session:
                row = await store.insert_department(session, values, request_id)
                if row is None:  # a replay, or one that lost the request id to a concurrent one
                    row = await key.taken(lambda used: store.department_by_request(session, used))
                else:
                    await self._audit_change(
                        "create",
                        department_name(row.id),
                        _DEPARTMENT_TYPE,
                        None,
                        {"code": row.code, "display_name": row.display_name, "kind": row.kind},
                    )
        except IntegrityError as error:
            # A concurrent replay may lose on the code's index before the request id's.
            async with self._db.read() as session:
                earlier = await key.first(lambda used: store.department_by_request(session, used))
            if earlier is not None:
                return department_to_proto(earlier)
            raise store.conflict(error) or error from None
        return department_to_proto(row)

    async def GetDepartment(
        self, request: pb.GetDepartmentRequest, context: Context
    ) -> pb.Department:
        department_id = required_id("name", request.name, collection="departments")
        await self._require("read", "iam.department")
        async with self._db.read() as session:
            return department_to_proto(await store.get_department(session, department_id))

    async def ListDepartments(
        self, request: pb.ListDepartmentsRequest, context: Context
    ) -> pb.ListDepartmentsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        kind = v.enum("kind", request.kind, pb.DepartmentKind.DESCRIPTOR, required=False)
        v.raise_if_any()
        await self._require("read", "iam.department")
        kind_text = KIND.text(kind) if kind else None
        query = f"departments {kind_text}"
        keyset = self._pages.keyset(
            request.page_token, query=query, limit=limit, after=lambda c: c.text("c")
        )
        async with self._db.read() as session:
            rows = await store.list_departments(
                session, kind=kind_text, after=keyset.after, limit=keyset.read_limit
            )
        page = keyset.page(rows, lambda row: {"c": row.code})
        return pb.ListDepartmentsResponse(
            departments=[department_to_proto(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    # --- staff -----------------------------------------------------------------------------

    async def CreateStaffMember(
        self, request: pb.CreateStaffMemberRequest, context: Context
    ) -> pb.StaffMember:
        v = Violations()
        if not request.HasField("staff_member"):
            v.add("staff_member", "is required")
        values = staff_fields(v, request.staff_member, "staff_member", _CREATE_PATHS)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        await self._require("create", "iam.staff")
        proposer = self._proposer()
        key = RequestKey.of(request, request_id)
        values["create_request_fingerprint"] = key.fingerprint
        # Two-person rule: the member starts with no role; the roles asked for wait as a change.
        wanted = values["roles"]
        if proposer is not None:
            values["roles"] = []
        change = None
        try:
            async with self._db.transaction() as session:
                row = await store.insert_staff(session, values, request_id)
                if row is None:  # a replay: the first creation is the answer, as it stands now
                    row = await key.taken(lambda used: store.staff_by_request(session, used))
                    change = await approvals.first_role_change(session, row.id)
                elif proposer is not None:
                    await self._audit_change(
                        "create", staff_name(row.id), _STAFF_TYPE, None, staff_view(row)
                    )
                    row, change = await self._propose_roles(session, row, wanted, proposer)
        except IntegrityError as error:
            # A concurrent replay may lose on the username's index before the request id's:
            # the first creation is then the answer, not a conflict.
            async with self._db.read() as session:
                earlier = await key.first(lambda used: store.staff_by_request(session, used))
                if earlier is not None:
                    first = await approvals.first_role_change(session, earlier.id)
                    return _with_change(staff_to_proto(earlier), first)
            raise store.conflict(error) or error from None
        return _with_change(staff_to_proto(row), change)

    async def GetStaffMember(
        self, request: pb.GetStaffMemberRequest, context: Context
    ) -> pb.StaffMember:
        staff_id = required_id("name", request.name, collection="staff")
        await self._require("read", "iam.staff", own=self._is_caller(staff_id))
        async with self._db.read() as session:
            return staff_to_proto(await store.get_staff(session, staff_id))

    async def ListStaffMembers(
        self, request: pb.ListStaffMembersRequest, context: Context
    ) -> pb.ListStaffMembersResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        exact = username(v, "username", request.username) if request.username else None
        prefix = v.text("display_name_prefix", request.display_name_prefix, max_len=MAX_PREFIX)
        role = v.enum("role", request.role, pb.StaffRole.DESCRIPTOR, required=False)
        v.raise_if_any()
        await self._require("read", "iam.staff")
        where = store.StaffFilter(
            username=exact,
            display_name_prefix=prefix,
            role=role_name(role) if role else None,
            include_inactive=request.include_inactive,
        )
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=lambda c: c.text("u")
        )
        async with self._db.read() as session:
            rows = await store.list_staff(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
        page = keyset.page(rows, lambda row: {"u": row.username})
        return pb.ListStaffMembersResponse(
            staff_members=[staff_to_proto(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    async def UpdateStaffMember(
        self, request: pb.UpdateStaffMemberRequest, context: Context
    ) -> pb.StaffMember:
        v = Violations()
        member = request.staff_member
        staff_id = v.resource_id("staff_member.name", member.name, collection="staff")
        paths = require_paths(v, "update_mask", request.update_mask.paths, STAFF_UPDATABLE)
        values = staff_fields(v, member, "staff_member", frozenset(paths))
        v.raise_if_any()
        assert staff_id is not None
        await self._require("update", "iam.staff", own=self._is_caller(staff_id), fields=paths)
        proposer = self._proposer()
        if "roles" in values:
            refuse_own(proposer, staff_id)
        change = None
        try:
            async with self._db.transaction() as session:
                before = await store.get_staff(session, staff_id, lock="update")
                wanted: list[str] | None = values.get("roles")
                if wanted is not None and proposer is not None:
                    # Roles taken away go at once; roles added wait for a second administrator.
                    values["roles"] = [role for role in before.roles if role in wanted]
                row = await store.update_staff(session, staff_id, values, member.etag)
                if row.version != before.version:
                    await self._audit_change(
                        "update",
                        staff_name(row.id),
                        _STAFF_TYPE,
                        staff_view(before),
                        staff_view(row),
                    )
                if wanted is not None and proposer is not None:
                    added = [role for role in wanted if role not in row.roles]
                    if added:
                        if not row.active:
                            raise FailedPrecondition(
                                f"{staff_name(row.id)} is inactive", reason="STAFF_INACTIVE"
                            )
                        if await approvals.pending_role_change(session, row.id, added) is None:
                            # A retry finds its change; a new proposal needs a fresh etag.
                            store.check_etag(before, member.etag)
                        row, change = await self._propose_roles(session, row, added, proposer)
        except IntegrityError as error:
            raise store.conflict(error) or error from None
        return _with_change(staff_to_proto(row), change)

    async def DeactivateStaffMember(
        self, request: pb.DeactivateStaffMemberRequest, context: Context
    ) -> pb.StaffMember:
        staff_id = required_id("name", request.name, collection="staff")
        await self._require(
            "update", "iam.staff", own=self._is_caller(staff_id), fields=("active",)
        )
        refuse_own(self._proposer(), staff_id)
        async with self._db.transaction() as session:
            before = await store.get_staff(session, staff_id, lock="update")
            done = await store.deactivate_staff(session, staff_id, request.etag)
            row = done.staff
            if row.version != before.version:
                await self._audit_change(
                    "update", staff_name(row.id), _STAFF_TYPE, staff_view(before), staff_view(row)
                )
            # What the deactivation ended with it is audited too, each with its own story.
            for ended_before, ended in done.memberships:
                await self._audit_change(
                    "update",
                    membership_name(ended.staff_id, ended.id),
                    _MEMBERSHIP_TYPE,
                    membership_view(ended_before),
                    membership_view(ended),
                )
            for revoked_before, revoked in done.grants:
                await self._access.record(
                    "update",
                    Permit(ALLOWED, patient=patient_name(revoked.patient_id)),
                    resource_name=grant_name(revoked.id),
                    resource_type=_GRANT_TYPE,
                    changes=changed_fields(grant_view(revoked_before), grant_view(revoked)),
                )
        return staff_to_proto(row)

    def _is_caller(self, staff_id: uuid.UUID) -> bool:
        principal = identity.current_or_none()
        return principal is not None and principal.subject == f"staff/{staff_id}"

    # --- memberships -----------------------------------------------------------------------

    async def AddMembership(
        self, request: pb.AddMembershipRequest, context: Context
    ) -> pb.DepartmentMembership:
        v = Violations()
        staff_id = v.resource_id("parent", request.parent, collection="staff")
        if not request.HasField("membership"):
            v.add("membership", "is required")
        values = membership_fields(v, request.membership, dt.datetime.now(dt.UTC))
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert staff_id is not None
        await self._require("create", "iam.membership", own=self._is_caller(staff_id))
        proposer = self._proposer()
        refuse_own(proposer, staff_id)
        key = RequestKey.of(request, request_id)
        values["create_request_fingerprint"] = key.fingerprint
        change_id = uuid.uuid4()
        if proposer is not None:
            # Two-person rule: not in force (tokens, current lists) until approved.
            values["approval_state"] = approvals.PENDING
            values["access_change_id"] = change_id
        try:
            async with self._db.transaction() as session:
                # The staff row lock serialises this staff member's membership changes, their
                # replays and deactivation.
                member = await store.get_staff(session, staff_id, lock="update")
                # A replay is answered even if the staff member was deactivated since.
                earlier = await key.first(lambda used: store.membership_by_request(session, used))
                if earlier is not None:
                    return membership_to_proto(earlier)
                if not member.active:
                    raise FailedPrecondition(
                        f"{request.parent} is inactive", reason="STAFF_INACTIVE"
                    )
                if not await store.department_exists(session, values["department_id"]):
                    raise FailedPrecondition(
                        "the department does not exist",
                        reason="DEPARTMENT_NOT_FOUND",
                        metadata={"department": request.membership.department},
                    )
                # The id may have been used concurrently (or for another staff member).
                row = await key.create(
                    lambda: store.insert_membership(session, staff_id, values, request_id),
                    lambda used: store.membership_by_request(session, used),
                )
                if row.access_change_id == change_id:  # added now, not a replay's
                    await self._audit_change(
                        "create",
                        membership_name(staff_id, row.id),
                        _MEMBERSHIP_TYPE,
                        None,
                        membership_view(row),
                    )
                    if proposer is not None:
                        change = await approvals.propose_membership(
                            session,
                            change_id=change_id,
                            staff_id=staff_id,
                            membership_id=row.id,
                            proposer_id=proposer,
                        )
                        await self._audit_change(
                            "create",
                            approvals.change_name(change.id),
                            _CHANGE_TYPE,
                            None,
                            change_view(change),
                        )
        except IntegrityError as error:
            async with self._db.read() as session:
                earlier = await key.first(lambda used: store.membership_by_request(session, used))
            if earlier is not None:
                return membership_to_proto(earlier)
            raise store.conflict(error) or error from None
        return membership_to_proto(row)

    async def RemoveMembership(
        self, request: pb.RemoveMembershipRequest, context: Context
    ) -> pb.DepartmentMembership:
        staff_id, membership_id = required_child_id(
            "name", request.name, parent="staff", collection="memberships"
        )
        await self._require("delete", "iam.membership", own=self._is_caller(staff_id))
        proposer = self._proposer()
        refuse_own(proposer, staff_id)
        async with self._db.transaction() as session:
            before = await store.get_membership(session, staff_id, membership_id, lock=True)
            pending = await approvals.pending_change_of_membership(session, membership_id)
            if pending is not None:
                # Removing a membership still waiting for approval withdraws it.
                decided = await approvals.reject_pending(session, pending.id, proposer)
                await self._audit_change(
                    "update",
                    approvals.change_name(decided.id),
                    _CHANGE_TYPE,
                    change_view(pending),
                    change_view(decided),
                )
                _, row = await approvals.reject_membership(session, membership_id)
            else:
                row = await store.end_membership(session, staff_id, membership_id)
            if row != before:
                await self._audit_change(
                    "update",
                    membership_name(staff_id, row.id),
                    _MEMBERSHIP_TYPE,
                    membership_view(before),
                    membership_view(row),
                )
        return membership_to_proto(row)

    async def ListMemberships(
        self, request: pb.ListMembershipsRequest, context: Context
    ) -> pb.ListMembershipsResponse:
        v = Violations()
        staff_id = parent_staff(v, "parent", request.parent)
        limit = v.page_size("page_size", request.page_size)
        department_id = None
        if request.department:
            department_id = v.resource_id(
                "department", request.department, collection="departments"
            )
        v.raise_if_any()
        own = staff_id is not None and self._is_caller(staff_id)
        await self._require("read", "iam.membership", own=own)
        where = store.MembershipFilter(
            staff_id=staff_id, department_id=department_id, current_only=request.current_only
        )
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        async with self._db.read() as session:
            if staff_id is not None:
                await store.get_staff(session, staff_id)
            rows = await store.list_memberships(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
        page = keyset.page(rows, lambda row: time_and_id_values(row.period_start, row.id))
        return pb.ListMembershipsResponse(
            memberships=[membership_to_proto(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    # --- two-person rule --------------------------------------------------------------------

    def _proposer(self) -> uuid.UUID | None:
        """The calling administrator's staff id, to hold to the two-person rule; None with
        security off (HIS_SECURITY=off: no caller is checked, and changes take effect at once)."""
        principal = identity.current_or_none()
        if principal is not None and principal.is_staff:
            try:
                return uuid.UUID(principal.subject.removeprefix("staff/"))
            except ValueError:
                pass
        if not self._access.enabled:
            return None
        raise PermissionDenied(
            "access is given and approved by staff administrators", reason="STAFF_CALLER_REQUIRED"
        )

    async def _propose_roles(
        self, session: Any, member: Any, roles: Sequence[str], proposer: uuid.UUID
    ) -> tuple[Any, Any]:
        """A pending change adding `roles` (audited when new); ADMINISTRATOR alone is granted at
        once in the setup window (approvals.py). Returns the staff row and the change."""
        change, new = await approvals.propose_roles(
            session, staff_id=member.id, roles=roles, proposer_id=proposer
        )
        if not new:
            return member, change
        await self._audit_change(
            "create", approvals.change_name(change.id), _CHANGE_TYPE, None, change_view(change)
        )
        if list(change.roles) == [approvals.ADMINISTRATOR] and await approvals.setup_window_open(
            session
        ):
            decided, row = await approvals.grant_at_setup(session, change, member)
            await self._audit_decision(approvals.Decision(change, decided, member, row))
            return row, decided
        return member, change

    async def _audit_change(
        self,
        action: str,
        name: str,
        resource_type: str,
        before: dict[str, object] | None,
        after: dict[str, object] | None,
    ) -> None:
        """Audit one iam write with its changed fields before and after, in the open
        transaction (the outbox): the write and its audit event commit together."""
        await self._access.record(
            action,
            Permit(ALLOWED),
            resource_name=name,
            resource_type=resource_type,
            changes=changed_fields(before, after),
        )

    async def _audit_decision(self, decision: approvals.Decision) -> None:
        """Audit a decided change, and the staff member or membership it changed."""
        change = decision.change
        if decision.change_before == change:
            return  # already decided: nothing changed
        await self._audit_change(
            "update",
            approvals.change_name(change.id),
            _CHANGE_TYPE,
            change_view(decision.change_before),
            change_view(change),
        )
        before, after = decision.resource_before, decision.resource
        if before is None or after is None:
            return
        if change.kind == "roles":
            await self._audit_change(
                "update", staff_name(after.id), _STAFF_TYPE, staff_view(before), staff_view(after)
            )
        else:
            await self._audit_change(
                "update",
                membership_name(after.staff_id, after.id),
                _MEMBERSHIP_TYPE,
                membership_view(before),
                membership_view(after),
            )

    async def GetAccessChange(
        self, request: pb.GetAccessChangeRequest, context: Context
    ) -> pb.AccessChange:
        change_id = required_id("name", request.name, collection=approvals.COLLECTION)
        await self._require("read", "iam.staff")
        async with self._db.read() as session:
            return approvals.change_to_proto(await approvals.get_change(session, change_id))

    async def ListAccessChanges(
        self, request: pb.ListAccessChangesRequest, context: Context
    ) -> pb.ListAccessChangesResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        staff_id = None
        if request.staff:
            staff_id = v.resource_id("staff", request.staff, collection="staff")
        state = v.enum("state", request.state, pb.AccessChangeState.DESCRIPTOR, required=False)
        v.raise_if_any()
        await self._require("read", "iam.staff")
        where = approvals.ChangeFilter(
            staff_id=staff_id, state=approvals.STATE.text(state) if state else None
        )
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        async with self._db.read() as session:
            rows = await approvals.list_changes(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
        page = keyset.page(rows, lambda row: time_and_id_values(row.create_time, row.id))
        return pb.ListAccessChangesResponse(
            access_changes=[approvals.change_to_proto(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    async def ApproveAccessChange(
        self, request: pb.ApproveAccessChangeRequest, context: Context
    ) -> pb.AccessChange:
        change_id = required_id("name", request.name, collection=approvals.COLLECTION)
        await self._require("update", "iam.staff", fields=("roles",))
        decider = self._proposer()
        async with self._db.transaction() as session:
            decision = await approvals.approve(session, change_id, decider)
            await self._audit_decision(decision)
        return approvals.change_to_proto(decision.change)

    async def RejectAccessChange(
        self, request: pb.RejectAccessChangeRequest, context: Context
    ) -> pb.AccessChange:
        change_id = required_id("name", request.name, collection=approvals.COLLECTION)
        await self._require("update", "iam.staff", fields=("roles",))
        decider = self._proposer()
        async with self._db.transaction() as session:
            decision = await approvals.reject(session, change_id, decider)
            await self._audit_decision(decision)
        return approvals.change_to_proto(decision.change)

    # --- local identity provider -----------------------------------------------------------

    async def IssueToken(
        self, request: pb.IssueTokenRequest, context: Context
    ) -> pb.IssueTokenResponse:
        credentials = self._staff_credentials()
        assert self._issuer is not None
        v = Violations()
        if not request.username:
            v.add("username", "is required")
        elif len(request.username) > MAX_LOGIN_NAME:
            v.add("username", f"must be at most {MAX_LOGIN_NAME} characters")
        if not request.credential:
            v.add("credential", "is required")
        elif len(request.credential) > MAX_CREDENTIAL:
            v.add("credential", f"must be at most {MAX_CREDENTIAL} characters")
        credentials.check_totp_field(v, request.totp_code)
        v.raise_if_any()
        # Services log in as they start, so this runs when a new installation first comes up.
        await self._bootstrap()
        if request.username.startswith(_SERVICE_PREFIX):
            service = request.username[len(_SERVICE_PREFIX) :]
            issued = self._service_token(self._issuer, service, request.credential)
            if self._peers is not None:
                # In the mesh a service's token goes only to its own workload: a credential
                # copied out of one pod is useless in another (checked after the credential, so
                # a wrong one never learns whether its principal would have fitted).
                self._peers.require(context.invocation_metadata(), service, "a token")
        else:
            issued = await credentials.login(
                request.username, request.credential, request.totp_code, source_of(context)
            )
        response = pb.IssueTokenResponse(access_token=issued.token, token_type=_BEARER)
        response.expire_time.FromSeconds(issued.expires_at)
        return response

    def _staff_credentials(self) -> StaffCredentials:
        if self._credentials is None:
            raise Unimplemented(
                "the local identity provider is switched off; use the hospital identity provider",
                reason="LOCAL_PROVIDER_OFF",
            )
        return self._credentials

    def _service_token(self, issuer: TokenIssuer, service: str, credential: str) -> IssuedToken:
        key = self._config.service_credential_key
        known = service in BY_NAME
        # Compared even for an unknown name, so the answer takes as long either way.
        expected = service_credential(key or b"-", service)
        if not (_same_secret(credential, expected) and known and key):
            raise _refused()
        return issuer.sign(f"services/{service}", username=service, roles=[SERVICE_ROLE])

    async def CreateStaffEnrolment(
        self, request: pb.CreateStaffEnrolmentRequest, context: Context
    ) -> pb.StaffEnrolment:
        credentials = self._staff_credentials()
        staff_id = required_id("parent", request.parent, collection="staff")
        # Nobody enrols themselves: a stolen session must not become a permanent credential.
        refuse_self(identity.caller_staff_id(), staff_id, "create an enrolment code")
        await self._require("update", "iam.staff")
        creator = self._proposer()
        principal = identity.current_or_none()
        created_by = principal.subject if principal is not None else "anonymous"
        enrolment = await credentials.create_enrolment(
            staff_id,
            creator=creator,
            created_by=created_by,
            audit=self._audit_enrolment,
        )
        log.info(
            "staff enrolment code created",
            extra={
                "fields": {
                    "staff": f"staff/{staff_id}",
                    "created_by": created_by,
                    "approval_required": enrolment.row.approval_required,
                }
            },
        )
        return _enrolment_to_proto(enrolment)

    async def ApproveStaffEnrolment(
        self, request: pb.ApproveStaffEnrolmentRequest, context: Context
    ) -> pb.StaffEnrolment:
        credentials = self._staff_credentials()
        staff_id, enrolment_id = required_child_id(
            "name", request.name, parent="staff", collection="enrolments"
        )
        refuse_self(identity.caller_staff_id(), staff_id, "approve an enrolment")
        await self._require("update", "iam.staff")
        approver = self._proposer()
        principal = identity.current_or_none()
        approved_by = principal.subject if principal is not None else "anonymous"
        enrolment = await credentials.approve_enrolment(
            staff_id,
            enrolment_id,
            approver=approver,
            approved_by=approved_by,
            audit=self._audit_enrolment,
        )
        log.info(
            "staff enrolment approved",
            extra={"fields": {"staff": f"staff/{staff_id}", "approved_by": approved_by}},
        )
        return _enrolment_to_proto(enrolment)

    async def _audit_enrolment(
        self, name: str, before: dict[str, object] | None, after: dict[str, object]
    ) -> None:
        # Who gave whom a way to set a password, who approved it, until when; never a code.
        await self._audit_change(
            "create" if before is None else "update", name, _ENROLMENT_TYPE, before, after
        )

    async def CompleteStaffEnrolment(
        self, request: pb.CompleteStaffEnrolmentRequest, context: Context
    ) -> pb.CompleteStaffEnrolmentResponse:
        credentials = self._staff_credentials()
        credentials.complete_request(
            request.username, request.enrolment_code, request.password, request.approval_code
        )
        enrolled = await credentials.complete_enrolment(
            request.username,
            request.enrolment_code,
            approval_code=request.approval_code,
            password=request.password,
            source=source_of(context),
            audit=self._audit_completion,
        )
        log.info("staff member enrolled", extra={"fields": {"staff": f"staff/{enrolled.staff_id}"}})
        return pb.CompleteStaffEnrolmentResponse(
            staff_member=f"staff/{enrolled.staff_id}",
            totp_secret=enrolled.totp_secret,
            totp_uri=enrolled.totp_uri,
            totp_required=enrolled.totp_required,
        )

    async def _audit_completion(self, done: Completion) -> None:
        """Audit a completed enrolment in its transaction. Nobody is signed in (the code is the
        proof): the actor recorded is the staff member concerned, completing their enrolment.
        What changed is that a password and a TOTP secret were set, never their values."""
        member = done.member
        actor = Principal(
            subject=staff_name(member.id), username=member.username, roles=frozenset(member.roles)
        )
        # A public rpc: the authentication interceptor entered no caller, nor the method.
        entered = identity.enter(actor, _COMPLETE_ENROLMENT)
        try:
            await self._audit_change(
                "update",
                enrolment_name(member.id, done.after.id),
                _ENROLMENT_TYPE,
                approvals.enrolment_view(done.before),
                approvals.enrolment_view(done.after),
            )
            before = "set" if done.replaced else None
            after = "replaced" if done.replaced else "set"
            await self._audit_change(
                "update",
                staff_name(member.id),
                _STAFF_TYPE,
                {"credential.password": before, "credential.totp_secret": before},
                {
                    "credential.password": after,
                    "credential.totp_secret": after,
                    # How many administrators stood behind it (his.iam.enrolment_rule).
                    "credential.assurance": done.assurance,
                },
            )
        finally:
            identity.leave(entered)

    # --- patient sign-in -------------------------------------------------------------------

    def _patient_sign_in(self) -> PatientSignIn:
        if self._sign_in is None:
            raise Unimplemented(
                "patient sign-in is switched off here", reason="PATIENT_SIGN_IN_OFF"
            )
        return self._sign_in

    async def StartPatientSignIn(
        self, request: pb.StartPatientSignInRequest, context: Context
    ) -> pb.StartPatientSignInResponse:
        sign_in = self._patient_sign_in()
        phone = PatientSignIn.start_request(request.phone)
        started = await sign_in.start(phone, source_of(context))
        response = pb.StartPatientSignInResponse(sign_in=started.sign_in, code_length=CODE_LENGTH)
        response.expire_time.FromDatetime(started.expire_time)
        return response

    async def CompletePatientSignIn(
        self, request: pb.CompletePatientSignInRequest, context: Context
    ) -> pb.CompletePatientSignInResponse:
        sign_in = self._patient_sign_in()
        sign_in_id, code = PatientSignIn.complete_request(request.sign_in, request.code)
        signed_in = await sign_in.complete(sign_in_id, code, source_of(context))
        response = pb.CompletePatientSignInResponse(
            access_token=signed_in.token.token, token_type=_BEARER, patient=signed_in.patient
        )
        response.expire_time.FromSeconds(signed_in.token.expires_at)
        return response

    async def GetJwks(self, request: pb.GetJwksRequest, context: Context) -> pb.JsonWebKeySet:
        if self._jwks is None:
            raise Unimplemented(
                "the local identity provider is switched off; its key set is not published",
                reason="LOCAL_PROVIDER_OFF",
            )
        return self._jwks

    async def _bootstrap(self) -> None:
        """Create the bootstrap ADMINISTRATOR if there is no staff member at all (once)."""
        if self._bootstrapped:
            return
        async with self._bootstrap_lock:
            if self._bootstrapped:
                return
            seed = self._config.dev_credential
            async with self._db.transaction() as session:
                row = await store.bootstrap_administrator(session, self._config.bootstrap_admin)
                if row is not None and seed and self._credentials is not None:
                    # Development only (the seed is refused in the mesh): a known password and
                    # TOTP secret, which `his token` derives from the same seed.
                    await self._credentials.set_known(
                        session,
                        row.id,
                        dev_credentials.password(seed, row.username),
                        dev_credentials.totp_secret(seed, row.username),
                    )
            self._bootstrapped = True
            if row is not None:
                log.info(
                    "bootstrap administrator created",
                    extra={"fields": {"staff": f"staff/{row.id}", "username": row.username}},
                )

    # --- break the glass -------------------------------------------------------------------

    async def CreateEmergencyAccessGrant(
        self, request: pb.CreateEmergencyAccessGrantRequest, context: Context
    ) -> pb.EmergencyAccessGrant:
        v = Violations()
        grant = request.emergency_access_grant
        if not request.HasField("emergency_access_grant"):
            v.add("emergency_access_grant", "is required")
        patient_id = v.resource_id(
            "emergency_access_grant.patient", grant.patient, collection="patients"
        )
        reason_field = "emergency_access_grant.reason"
        reason = v.text(
            reason_field,
            grant.reason,
            min_len=MIN_REASON,
            max_len=MAX_REASON,
            required=True,
        )
        # Only a reason of the right length is judged for substance: one problem a field.
        judged = reason is not None and all(item.field != reason_field for item in v.items)
        if judged and reason is not None and (problem := reason_problem(reason)) is not None:
            v.add(reason_field, problem)
        config = self._config
        seconds = duration_s(
            v,
            request,
            default=config.emergency_default_s,
            low=config.emergency_min_s,
            high=config.emergency_max_s,
        )
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert patient_id is not None and reason is not None
        principal = identity.current()
        staff_id = self._clinician(principal)
        await self._require("create", "iam.emergency_access", own=True)
        key = RequestKey.of(request, request_id)
        async with self._db.read() as session:
            await self._require_active_caller(session, staff_id)
            earlier = await key.first(lambda used: store.grant_by_request(session, staff_id, used))
            if earlier is not None:
                return grant_to_proto(earlier)
        await self._require_active_patient(grant.patient)
        try:
            return await self._insert_grant(
                key,
                request_id=request_id,
                staff_id=staff_id,
                patient_id=patient_id,
                patient=grant.patient,
                reason=reason,
                seconds=seconds,
            )
        except IntegrityError as error:
            if not store.is_second_open_grant(error):
                raise
        # A concurrent replay of this very request may have won with its grant: the answer.
        async with self._db.read() as session:
            earlier = await key.first(lambda used: store.grant_by_request(session, staff_id, used))
        if earlier is not None:
            return grant_to_proto(earlier)
        raise AlreadyExists(
            "the caller already holds a grant in force for this patient (one at a time)",
            reason="EMERGENCY_ACCESS_ALREADY_GRANTED",
            metadata={"patient": grant.patient},
        )

    async def _insert_grant(
        self,
        key: RequestKey,
        *,
        request_id: str | None,
        staff_id: uuid.UUID,
        patient_id: uuid.UUID,
        patient: str,
        reason: str,
        seconds: float,
    ) -> pb.EmergencyAccessGrant:
        """Insert, audit and return the grant (or the replay's); IntegrityError for a second
        open grant of the caller for the patient (store.is_second_open_grant)."""
        async with self._db.transaction() as session:
            # Shares the lock DeactivateStaffMember takes: no grant slips past a deactivation.
            await self._require_active_caller(session, staff_id, lock=True)
            row = await store.insert_grant(
                session,
                staff_id=staff_id,
                patient_id=patient_id,
                reason=reason,
                duration=dt.timedelta(seconds=seconds),
                request_id=request_id,
                fingerprint=key.fingerprint,
            )
            if row is None:
                # A concurrent replay of the same request committed first: it is the answer.
                earlier = await key.taken(
                    lambda used: store.grant_by_request(session, staff_id, used)
                )
                return grant_to_proto(earlier)
            name = grant_name(row.id)
            # Audited before it takes effect (action EXECUTE, purpose EMERGENCY_TREATMENT, the
            # grant as emergency_access_grant): an audit outage rolls it back (UNAVAILABLE).
            await self._access.record(
                "execute",
                Permit(ALLOWED, patient=patient, emergency_grant=name),
                resource_name=name,
                resource_type=_GRANT_TYPE,
                changes=changed_fields(None, grant_view(row)),
            )
        return grant_to_proto(row)

    def _clinician(self, principal: Principal) -> uuid.UUID:
        """The staff id of a DOCTOR or NURSE caller; PERMISSION_DENIED for anyone else."""
        if not principal.is_staff or not principal.roles & _CLINICIANS:
            raise PermissionDenied(
                "only doctors and nurses may break the glass", reason="ROLE_NOT_PERMITTED"
            )
        try:
            return uuid.UUID(principal.subject.removeprefix("staff/"))
        except ValueError:
            raise PermissionDenied(
                "the caller is not a staff member of this hospital", reason="STAFF_NOT_ACTIVE"
            ) from None

    async def _require_active_caller(
        self, session: Any, staff_id: uuid.UUID, *, lock: bool = False
    ) -> None:
        row = await store.find_staff(session, staff_id, lock="share" if lock else None)
        if row is None or not row.active:
            raise PermissionDenied(
                "the caller is not an active staff member", reason="STAFF_NOT_ACTIVE"
            )

    async def _require_active_patient(self, name: str) -> None:
        await require_active(
            self._clients, name, when_merged="ask for access to the surviving record"
        )

    async def ListEmergencyAccessGrants(
        self, request: pb.ListEmergencyAccessGrantsRequest, context: Context
    ) -> pb.ListEmergencyAccessGrantsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        staff_id = patient_id = None
        if request.staff:
            staff_id = v.resource_id("staff", request.staff, collection="staff")
        if request.patient:
            patient_id = v.resource_id("patient", request.patient, collection="patients")
        review_state = None
        if request.review_state:
            if request.review_state not in pb.EmergencyAccessReviewState.values():
                v.add("review_state", "is not a known review state")
            else:
                review_state = REVIEW_STATE.text(request.review_state)
        v.raise_if_any()
        own = staff_id is not None and self._is_caller(staff_id)
        await self._require("read", "iam.emergency_access", own=own)
        where = store.GrantFilter(
            staff_id=staff_id,
            patient_id=patient_id,
            active_only=request.active_only,
            review_state=review_state,
        )
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        async with self._db.read() as session:
            rows = await store.list_grants(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
        page = keyset.page(rows, lambda row: time_and_id_values(row.grant_time, row.id))
        caller = identity.current_or_none()
        if caller is not None and caller.is_staff:
            # A grant names a patient and why their record was opened: a person reading grants
            # is a disclosure. (A service's own lookup before it decides is not: the access it
            # leads to is audited there.)
            await self._access.record_each(
                "read",
                [
                    (Permit(ALLOWED), patient_name(row.patient_id), grant_name(row.id))
                    for row in page.rows
                ],
                _GRANT_TYPE,
            )
        return pb.ListEmergencyAccessGrantsResponse(
            emergency_access_grants=[grant_to_proto(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    async def RevokeEmergencyAccessGrant(
        self, request: pb.RevokeEmergencyAccessGrantRequest, context: Context
    ) -> pb.EmergencyAccessGrant:
        grant_id = required_id("name", request.name, collection="emergencyAccessGrants")
        if self._access.enabled:
            await self._authorize_revoke(identity.current(), grant_id)
        async with self._db.transaction() as session:
            before = await store.find_grant(session, grant_id)
            row = await store.revoke_grant(session, grant_id)
            # Ending emergency access is part of its story: audited like its start.
            await self._access.record(
                "update",
                Permit(ALLOWED, patient=patient_name(row.patient_id)),
                resource_name=grant_name(row.id),
                resource_type=_GRANT_TYPE,
                changes=changed_fields(
                    None if before is None else grant_view(before), grant_view(row)
                ),
            )
        return grant_to_proto(row)

    async def _authorize_revoke(self, principal: Principal, grant_id: uuid.UUID) -> None:
        """Anyone the policy lets revoke any grant; otherwise only the holder of this one.

        A missing grant is judged as someone else's (PERMISSION_DENIED), so the answer never
        tells a holder-only caller whether a grant exists.
        """
        if self._allows(principal, "update", "iam.emergency_access", own=False):
            return
        own = False
        if self._allows(principal, "update", "iam.emergency_access", own=True):
            async with self._db.read() as session:
                row = await store.find_grant(session, grant_id)
            own = row is not None and principal.subject == f"staff/{row.staff_id}"
        await self._require("update", "iam.emergency_access", own=own)

    async def ReviewEmergencyAccessGrant(
        self, request: pb.ReviewEmergencyAccessGrantRequest, context: Context
    ) -> pb.EmergencyAccessGrant:
        v = Violations()
        grant_id = v.resource_id("name", request.name, collection="emergencyAccessGrants")
        if request.outcome not in _REVIEW_OUTCOMES:
            v.add(
                "outcome",
                "must be EMERGENCY_ACCESS_REVIEW_STATE_JUSTIFIED or "
                "EMERGENCY_ACCESS_REVIEW_STATE_FLAGGED",
            )
        comment = v.text("comment", request.comment, max_len=MAX_REASON)
        if request.outcome == pb.EMERGENCY_ACCESS_REVIEW_STATE_FLAGGED and not comment:
            v.add("comment", "is required when the outcome is FLAGGED: say what looked wrong")
        v.raise_if_any()
        assert grant_id is not None
        # Reviewing is its own action (execute), the privacy officer's only: an auditor or an
        # administrator who may revoke a grant does not judge it.
        await self._require("execute", "iam.emergency_access")
        principal = identity.current()
        reviewer_id = _staff_id(principal)
        state = REVIEW_STATE.text(request.outcome)
        async with self._db.transaction() as session:
            found = await store.find_grant(session, grant_id)
            if found is not None and found.staff_id == reviewer_id:
                # Nobody judges their own break-the-glass (a privacy officer who is a clinician).
                raise PermissionDenied(
                    "a grant is reviewed by someone other than its holder", reason="SELF_REVIEW"
                )
            row = await store.review_grant(
                session, grant_id, reviewer_id=reviewer_id, state=state, comment=comment or None
            )
            # The outcome is part of the grant's story, in the patient's trail with the grant:
            # committed with the review or not at all (an audit outage rolls it back).
            await self._access.record(
                "execute",
                Permit(ALLOWED, patient=patient_name(row.patient_id)),
                resource_name=grant_name(row.id),
                resource_type=_GRANT_TYPE,
                outcome_description=f"emergency access review: {state}",
                changes=changed_fields(
                    None if found is None else grant_view(found), grant_view(row)
                ),
            )
        return grant_to_proto(row)


# The outcomes a review may record (PENDING is where every grant starts).
_REVIEW_OUTCOMES = frozenset(
    {pb.EMERGENCY_ACCESS_REVIEW_STATE_JUSTIFIED, pb.EMERGENCY_ACCESS_REVIEW_STATE_FLAGGED}
)


def _staff_id(principal: Principal) -> uuid.UUID:
    """The caller's staff id; PERMISSION_DENIED for a caller who is no staff member."""
    try:
        if principal.is_staff:
            return uuid.UUID(principal.subject.removeprefix("staff/"))
    except ValueError:
        pass
    raise PermissionDenied("the caller is not a staff member", reason="STAFF_NOT_ACTIVE")
