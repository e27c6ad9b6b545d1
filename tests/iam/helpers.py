"""Shared helpers of the iam tests: unique valid resources, local tokens, rich errors."""

from __future__ import annotations

import hashlib
import hmac
import random
import string
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import jwt
import pyotp

from his.common.v1 import types_pb2
from his.iam import dev_credentials
from his.iam.v1 import iam_service_pb2 as pb
from tests.identity import ISSUER, metadata
from tests.support import invalid_in

if TYPE_CHECKING:
    from his.iam.v1.iam_service_pb2_grpc import IamServiceAsyncStub

    # The async stub exists only in the type stubs; at run time the fixture's stub is used as is.
    Stub: TypeAlias = IamServiceAsyncStub
else:
    Stub = Any

DOMAIN = "iam.his"
# The iam server under test signs with this issuer; its callers use the session test issuer's.
LOCAL_ISSUER = "https://iam.his.local-test"
# The development seed of the iam under test (the bootstrap administrator's known credential).
DEV_CREDENTIAL = "correct horse battery staple"
# The password the tests enrol staff members with.
PASSWORD = "a long enough test password"
SERVICE_KEY = b"test-service-credential-key"
LICENCE_SYSTEM = "urn:his:test:practising-certificate"
# A second administrator: approves what the tests' administrator proposes (two-person rule).
SECOND_ADMINISTRATOR = ISSUER.staff("ADMINISTRATOR")


def word(length: int = 10) -> str:
    """Random lower-case letters."""
    return "".join(random.choices(string.ascii_lowercase, k=length))


def unique_username(prefix: str = "t") -> str:
    """A valid username no other test uses."""
    return f"{prefix}.{word(12)}"


def unique_code() -> str:
    """A valid department code no other test uses."""
    return f"T-{uuid.uuid4().hex[:16].upper()}"


def request_id() -> str:
    """A fresh idempotency key."""
    return f"req-{uuid.uuid4().hex}"


def make_department(
    kind: pb.DepartmentKind.ValueType = pb.DEPARTMENT_KIND_OUTPATIENT, *, code: str | None = None
) -> pb.Department:
    """A valid Department with a unique code."""
    return pb.Department(code=code or unique_code(), display_name=f"Clinic {word(6)}", kind=kind)


def make_staff(
    *roles: pb.StaffRole.ValueType,
    username: str | None = None,
    display_name: str | None = None,
    licence: str | None = None,
) -> pb.StaffMember:
    """A valid StaffMember (a doctor unless roles are given) with a unique username."""
    member = pb.StaffMember(
        username=username or unique_username(),
        display_name=display_name or f"Dr. {word(8).capitalize()}",
        roles=list(roles) or [pb.STAFF_ROLE_DOCTOR],
    )
    if licence is not None:
        member.practitioner_identifier.CopyFrom(
            types_pb2.Identifier(system=LICENCE_SYSTEM, value=licence)
        )
    return member


async def create_department(stub: Stub, department: pb.Department | None = None) -> pb.Department:
    """Create a department (a fresh valid one unless given)."""
    return await stub.CreateDepartment(
        pb.CreateDepartmentRequest(department=department or make_department())
    )


async def approve(stub: Stub, change: str) -> pb.AccessChange:
    """Approve an access change as the second administrator (the two-person rule)."""
    return await stub.ApproveAccessChange(
        pb.ApproveAccessChangeRequest(name=change), metadata=as_(SECOND_ADMINISTRATOR)
    )


async def propose_staff(
    stub: Stub, *roles: pb.StaffRole.ValueType, **kwargs: Any
) -> pb.StaffMember:
    """Create a staff member (a doctor unless roles are given) whose roles still wait."""
    return await stub.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(*roles, **kwargs))
    )


async def create_staff(stub: Stub, *roles: pb.StaffRole.ValueType, **kwargs: Any) -> pb.StaffMember:
    """Create a staff member (a doctor unless roles are given), their roles approved by a second
    administrator; the member as it reads afterwards."""
    proposed = await propose_staff(stub, *roles, **kwargs)
    if proposed.pending_access_change:  # else granted at once (ADMINISTRATOR, setup window)
        await approve(stub, proposed.pending_access_change)
    return await stub.GetStaffMember(pb.GetStaffMemberRequest(name=proposed.name))


async def add_membership(
    stub: Stub, staff: str, department: str, *, primary: bool = False, **kwargs: Any
) -> pb.DepartmentMembership:
    """Make `staff` a member of `department` from now on, approved by a second administrator."""
    added = await stub.AddMembership(
        pb.AddMembershipRequest(
            parent=staff,
            membership=pb.DepartmentMembership(department=department, primary=primary, **kwargs),
        )
    )
    await approve(stub, added.access_change)
    added.approval_state = pb.ACCESS_CHANGE_STATE_APPROVED
    return added


def staff_id(name: str) -> str:
    """The id part of `staff/{id}`."""
    collection, _, raw = name.partition("/")
    assert collection == "staff"
    return str(uuid.UUID(raw))


def service_credential(service: str, key: bytes = SERVICE_KEY) -> str:
    """The credential of `service:{name}` at the iam under test."""
    return hmac.new(key, service.encode(), hashlib.sha256).hexdigest()


async def login(
    stub: Stub,
    username: str,
    credential: str = PASSWORD,
    totp_code: str = "",
    *,
    source: str | None = None,
) -> pb.IssueTokenResponse:
    """IssueToken for a username (from `source`, as a gateway's x-forwarded-for, when given)."""
    metadata = (("x-forwarded-for", source),) if source else None
    return await stub.IssueToken(
        pb.IssueTokenRequest(username=username, credential=credential, totp_code=totp_code),
        metadata=metadata,
    )


@dataclass(frozen=True)
class Enrolled:
    """A staff member's password and TOTP secret, as enrolment gave them."""

    username: str
    password: str
    totp_secret: str

    def totp_code(self) -> str:
        """The current TOTP code."""
        return pyotp.TOTP(self.totp_secret).now()


async def enrol(stub: Stub, member: pb.StaffMember, password: str = PASSWORD) -> Enrolled:
    """Enrol a staff member: an administrator's code (and, where the enrolment needs a second
    administrator, the second administrator's half), then the member's password with it."""
    enrolment = await stub.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
    approval_code = ""
    if enrolment.approval_required:
        approval_code = (await approve_enrolment(stub, enrolment.name)).enrolment_code
    reply = await stub.CompleteStaffEnrolment(
        pb.CompleteStaffEnrolmentRequest(
            username=member.username,
            enrolment_code=enrolment.enrolment_code,
            approval_code=approval_code,
            password=password,
        )
    )
    return Enrolled(member.username, password, reply.totp_secret)


async def approve_enrolment(
    stub: Stub, name: str, token: str = SECOND_ADMINISTRATOR
) -> pb.StaffEnrolment:
    """ApproveStaffEnrolment as the second administrator (or `token`'s holder): the second half."""
    return await stub.ApproveStaffEnrolment(
        pb.ApproveStaffEnrolmentRequest(name=name), metadata=as_(token)
    )


async def login_as(stub: Stub, enrolled: Enrolled) -> pb.IssueTokenResponse:
    """IssueToken with an enrolled member's password and current TOTP code."""
    return await login(stub, enrolled.username, enrolled.password, enrolled.totp_code())


async def bootstrap_login(stub: Stub, username: str) -> pb.IssueTokenResponse:
    """The bootstrap administrator's login with the credential derived from the test seed."""
    secret = dev_credentials.totp_secret(DEV_CREDENTIAL, username)
    password = dev_credentials.password(DEV_CREDENTIAL, username)
    return await login(stub, username, password, dev_credentials.totp_code(secret))


async def enrolled_token(stub: Stub, member: pb.StaffMember) -> pb.IssueTokenResponse:
    """Enrol a staff member and log them in."""
    return await login_as(stub, await enrol(stub, member))


def verify(token: str, jwks: pb.JsonWebKeySet, *, audience: str = "his") -> dict[str, Any]:
    """The claims of an iam token, verified with PyJWT against the published key its kid names."""
    kid = jwt.get_unverified_header(token)["kid"]
    matching = [key for key in jwks.keys if key.kid == kid]
    assert len(matching) == 1, f"no published key has kid {kid}"
    key = matching[0]
    jwk = jwt.PyJWK(
        {"kty": key.kty, "kid": key.kid, "use": key.use, "alg": key.alg, "n": key.n, "e": key.e}
    )
    claims: dict[str, Any] = jwt.decode(
        token,
        key=jwk,
        algorithms=["RS256"],
        audience=audience,
        issuer=LOCAL_ISSUER,
        options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]},
    )
    return claims


def as_(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that makes a call as the holder of `token`."""
    return metadata(token)


async def invalid(call: Awaitable[Any]) -> list[str]:
    """Await a call that must be INVALID_ARGUMENT from iam; the fields it names."""
    return await invalid_in(DOMAIN, call)
