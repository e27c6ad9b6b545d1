"""Staff credentials against the running iam: one-time enrolment codes, argon2id passwords, TOTP
for clinical and administrator roles, lockout per username and per source, deactivation.

The iam under test locks a username after 3 failures (tests/iam/conftest.py LOGIN_LIMITS); the
per-source limit is tested on a server of its own. Every test uses its own staff members and its
own source address (`x-forwarded-for`, as a gateway sets it); expiry is moved through the
database, not slept.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pyotp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.iam import credentials
from his.iam.config import IamConfig, StaffLoginConfig
from his.iam.v1 import iam_service_pb2 as pb
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.runtime.server import RunningService, start
from his_client import rich_status
from tests.conftest import service_config
from tests.iam.conftest import LOGIN_LIMITS, iam_spec
from tests.iam.helpers import (
    PASSWORD,
    Enrolled,
    Stub,
    approve_enrolment,
    create_staff,
    enrol,
    invalid,
    login,
    login_as,
    staff_id,
    verify,
)
from tests.identity import Issuer, metadata
from tests.support import fails

R = pb.StaffRole
TOTP_ROLES = (
    R.STAFF_ROLE_DOCTOR,
    R.STAFF_ROLE_NURSE,
    R.STAFF_ROLE_PHARMACIST,
    R.STAFF_ROLE_LAB_TECHNICIAN,
    R.STAFF_ROLE_ADMINISTRATOR,
)


def a_source() -> str:
    """A documentation-range address no other test uses (iam counts IPv6 by its /64)."""
    return f"2001:db8:{random.randrange(1, 2**16):x}:{random.randrange(1, 2**16):x}::1"


def wrong_totp(enrolled: Enrolled) -> str:
    """A six-digit code that none of the steps the server accepts now gives."""
    totp = pyotp.TOTP(enrolled.totp_secret)
    code = 0
    while totp.verify(f"{code:06d}", valid_window=1):
        code += 1
    return f"{code:06d}"


async def locked(call: Any) -> float:
    """Await a call that must be refused by the lockout; its RetryInfo delay in seconds."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        status = rich_status(error)
        assert (status.code, status.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "STAFF_LOGIN_LOCKED",
        ), status
        assert status.domain == "iam.his"
        assert status.retry_delay_s is not None, "the lockout carries no RetryInfo"
        return status.retry_delay_s
    raise AssertionError("expected RESOURCE_EXHAUSTED")


# --- enrolment -------------------------------------------------------------------------------


async def test_enrolment_sets_a_password_and_returns_a_totp_secret(
    iam: Stub, iam_db: AsyncEngine
) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    enrolment = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
    assert enrolment.name.startswith(f"{member.name}/enrolments/")
    assert len(enrolment.enrolment_code) == 16
    # A doctor's enrolment takes a second administrator (test_enrolment_approval.py).
    assert enrolment.approval_required
    approved = await approve_enrolment(iam, enrolment.name)

    reply = await iam.CompleteStaffEnrolment(
        pb.CompleteStaffEnrolmentRequest(
            username=member.username,
            enrolment_code=enrolment.enrolment_code,
            approval_code=approved.enrolment_code,
            password=PASSWORD,
        )
    )

    assert reply.staff_member == member.name
    assert reply.totp_required
    assert reply.totp_uri.startswith("otpauth://totp/")
    assert reply.totp_secret in reply.totp_uri
    enrolled = Enrolled(member.username, PASSWORD, reply.totp_secret)
    claims = verify(
        (await login_as(iam, enrolled)).access_token, await iam.GetJwks(pb.GetJwksRequest())
    )
    assert claims["sub"] == member.name
    async with iam_db.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT password_hash, totp_secret_enc FROM iam.staff_credentials "
                    "WHERE staff_id = :id"
                ),
                {"id": staff_id(member.name)},
            )
        ).one()
        stored_codes = (
            (
                await connection.execute(
                    text(
                        "SELECT code_hash FROM iam.staff_enrolments WHERE staff_id = :id "
                        "UNION ALL SELECT approval_code_hash FROM iam.staff_enrolments "
                        "WHERE staff_id = :id"
                    ),
                    {"id": staff_id(member.name)},
                )
            )
            .scalars()
            .all()
        )
    # Only an argon2id hash of the password, only ciphertext of the secret, only a keyed hash of
    # the code are stored.
    assert row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in row.password_hash
    assert reply.totp_secret.encode() not in row.totp_secret_enc
    assert [len(code) for code in stored_codes] == [32, 32]
    for code in (enrolment.enrolment_code, approved.enrolment_code):
        assert all(code.encode() not in stored for stored in stored_codes)


async def test_an_enrolment_code_works_once(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    enrolment = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
    request = pb.CompleteStaffEnrolmentRequest(
        username=member.username, enrolment_code=enrolment.enrolment_code, password=PASSWORD
    )
    await iam.CompleteStaffEnrolment(request)

    request.password = "another long password"
    again = await fails(iam.CompleteStaffEnrolment(request))

    assert (again.code, again.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "ENROLMENT_CODE_INVALID",
    )
    # The first password stands; the second never took effect.
    assert (await login(iam, member.username, PASSWORD)).access_token
    assert (await fails(login(iam, member.username, "another long password"))).code == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_concurrent_completions_of_one_code_enrol_exactly_once(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    enrolment = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
    # Three: the losers count as failures for the username, and a third would lock it.
    passwords = [f"racing password number {i}" for i in range(3)]

    results = await asyncio.gather(
        *(
            iam.CompleteStaffEnrolment(
                pb.CompleteStaffEnrolmentRequest(
                    username=member.username,
                    enrolment_code=enrolment.enrolment_code,
                    password=password,
                ),
                metadata=(("x-forwarded-for", a_source()),),
            )
            for password in passwords
        ),
        return_exceptions=True,
    )

    won = [p for p, r in zip(passwords, results, strict=True) if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == len(passwords) - 1, results
    assert {rich_status(error).reason for error in lost} == {"ENROLMENT_CODE_INVALID"}
    assert (await login(iam, member.username, won[0])).access_token


async def test_an_expired_enrolment_code_is_refused(iam: Stub, iam_db: AsyncEngine) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    enrolment = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
    async with iam_db.begin() as connection:
        await connection.execute(
            text(
                "UPDATE iam.staff_enrolments SET create_time = now() - interval '2 days', "
                "expire_time = now() - interval '1 second' WHERE staff_id = :id"
            ),
            {"id": staff_id(member.name)},
        )

    failure = await fails(
        iam.CompleteStaffEnrolment(
            pb.CompleteStaffEnrolmentRequest(
                username=member.username,
                enrolment_code=enrolment.enrolment_code,
                password=PASSWORD,
            )
        )
    )

    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "ENROLMENT_CODE_INVALID",
    )


async def test_a_new_enrolment_code_retires_the_previous_one(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    first = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
    second = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))

    def completing(code: str) -> Any:
        return iam.CompleteStaffEnrolment(
            pb.CompleteStaffEnrolmentRequest(
                username=member.username, enrolment_code=code, password=PASSWORD
            )
        )

    assert (await fails(completing(first.enrolment_code))).reason == "ENROLMENT_CODE_INVALID"
    assert (await completing(second.enrolment_code)).staff_member == member.name


async def test_enrolling_again_replaces_the_password_and_the_totp_secret(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_NURSE)
    old = await enrol(iam, member)
    new = await enrol(iam, member, "a brand new long password")

    assert old.totp_secret != new.totp_secret
    assert (await login_as(iam, new)).access_token
    refused = await fails(login(iam, member.username, old.password, new.totp_code()))
    assert refused.reason == "INVALID_CREDENTIALS"


async def test_a_wrong_enrolment_code_for_an_unknown_user_looks_like_any_wrong_code(
    iam: Stub,
) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
    answers = [
        await fails(
            iam.CompleteStaffEnrolment(
                pb.CompleteStaffEnrolmentRequest(
                    username=username, enrolment_code="A" * 16, password=PASSWORD
                ),
                metadata=(("x-forwarded-for", a_source()),),
            )
        )
        for username in (member.username, "nobody.here")
    ]
    assert [(a.code, a.reason, a.message) for a in answers] == [
        (answers[0].code, "ENROLMENT_CODE_INVALID", answers[0].message)
    ] * 2


async def test_wrong_enrolment_codes_lock_the_username(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    enrolment = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
    source = (("x-forwarded-for", a_source()),)

    def completing(code: str) -> Any:
        return iam.CompleteStaffEnrolment(
            pb.CompleteStaffEnrolmentRequest(
                username=member.username, enrolment_code=code, password=PASSWORD
            ),
            metadata=source,
        )

    for _ in range(LOGIN_LIMITS.failures_per_user):
        assert (await fails(completing("B" * 16))).reason == "ENROLMENT_CODE_INVALID"
    # Even the right code is refused until the window has passed: guessing stops here.
    assert await locked(completing(enrolment.enrolment_code)) > 0


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"enrolment_code": "A" * 16, "password": PASSWORD}, "username"),
        ({"username": "t.someone", "password": PASSWORD}, "enrolment_code"),
        (
            {"username": "t.someone", "enrolment_code": "a0" * 8, "password": PASSWORD},
            "enrolment_code",
        ),
        (
            {
                "username": "t.someone",
                "enrolment_code": "A" * 16,
                "approval_code": "short",
                "password": PASSWORD,
            },
            "approval_code",
        ),
        ({"username": "t.someone", "enrolment_code": "A" * 16}, "password"),
        ({"username": "t.someone", "enrolment_code": "A" * 16, "password": "short"}, "password"),
        ({"username": "t.someone", "enrolment_code": "A" * 16, "password": "p" * 257}, "password"),
    ],
)
async def test_complete_enrolment_with_bad_input_names_the_field(
    iam: Stub, request_fields: dict[str, str], field: str
) -> None:
    request = pb.CompleteStaffEnrolmentRequest(**request_fields)
    assert await invalid(iam.CompleteStaffEnrolment(request)) == [field]


async def test_create_enrolment_errors(iam: Stub, issuer: Issuer) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    gone = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=gone.name))

    assert await invalid(iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest())) == ["parent"]
    assert await invalid(
        iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent="patients/1"))
    ) == ["parent"]
    missing = await fails(
        iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=f"staff/{uuid.uuid4()}"))
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
    inactive = await fails(
        iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=gone.name))
    )
    assert (inactive.code, inactive.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STAFF_INACTIVE",
    )
    # Only an administrator enrols, and never themselves.
    registrar = await fails(
        iam.CreateStaffEnrolment(
            pb.CreateStaffEnrolmentRequest(parent=member.name),
            metadata=metadata(issuer.staff("REGISTRAR")),
        )
    )
    assert registrar.code == grpc.StatusCode.PERMISSION_DENIED
    admin = await create_staff(iam, R.STAFF_ROLE_ADMINISTRATOR)
    own = issuer.staff("ADMINISTRATOR", staff_id=staff_id(admin.name))
    itself = await fails(
        iam.CreateStaffEnrolment(
            pb.CreateStaffEnrolmentRequest(parent=admin.name), metadata=metadata(own)
        )
    )
    assert (itself.code, itself.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SELF_ENROLMENT")


# --- login -----------------------------------------------------------------------------------


async def test_wrong_password_n_times_locks_the_account_with_retry_info(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    enrolled = await enrol(iam, member)
    other = await enrol(iam, await create_staff(iam, R.STAFF_ROLE_REGISTRAR))
    source = a_source()

    for _ in range(LOGIN_LIMITS.failures_per_user):
        wrong = await fails(login(iam, member.username, "not the password", source=source))
        assert (wrong.code, wrong.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )

    # Locked: even the right password, from any source, until the oldest failure leaves the
    # window; RetryInfo says when.
    delay = await locked(login(iam, member.username, enrolled.password, source=source))
    assert 0 < delay <= LOGIN_LIMITS.window_s
    await locked(login(iam, member.username, enrolled.password, source=a_source()))
    # Another person from the same source is not locked (a ward shares an address).
    assert (await login(iam, other.username, other.password, source=source)).access_token


async def test_failures_from_one_source_lock_that_source(
    iam: Stub, iam_url: str, make_iam_config: Callable[..., IamConfig]
) -> None:
    limits = StaffLoginConfig(window_s=600, failures_per_user=100, failures_per_source=4)
    members = [await create_staff(iam, R.STAFF_ROLE_REGISTRAR) for _ in range(2)]
    async with _server(iam_url, make_iam_config(login=limits)) as stub:
        # Enrolled through the main server: this one would count localhost's earlier failures.
        enrolled = [await enrol(iam, member) for member in members]
        source = a_source()
        # Four different usernames guessed from one address (password spraying).
        for _ in range(limits.failures_per_source):
            wrong = await fails(login(stub, f"t.{uuid.uuid4().hex[:12]}", "guess", source=source))
            assert wrong.reason == "INVALID_CREDENTIALS"

        await locked(login(stub, enrolled[0].username, enrolled[0].password, source=source))
        # The same person from another address, and the username itself, are not locked.
        other = a_source()
        assert await login(stub, enrolled[0].username, enrolled[0].password, source=other)


@pytest.mark.parametrize("role", TOTP_ROLES)
async def test_totp_missing_is_refused_for_clinical_and_administrator_roles(
    iam: Stub, role: pb.StaffRole.ValueType
) -> None:
    member = await create_staff(iam, role)
    enrolled = await enrol(iam, member)

    missing = await fails(login(iam, member.username, enrolled.password, source=a_source()))

    assert (missing.code, missing.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOTP_REQUIRED")
    assert (await login_as(iam, enrolled)).access_token


async def test_totp_wrong_is_refused_and_counts_towards_the_lockout(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    enrolled = await enrol(iam, member)
    source = a_source()

    for _ in range(LOGIN_LIMITS.failures_per_user):
        wrong = await fails(
            login(iam, member.username, enrolled.password, wrong_totp(enrolled), source=source)
        )
        # The same answer as a wrong password: it does not confirm the password.
        assert (wrong.code, wrong.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )

    await locked(login_as(iam, enrolled))


async def test_a_totp_code_of_another_person_is_refused(iam: Stub) -> None:
    doctor = await enrol(iam, await create_staff(iam, R.STAFF_ROLE_DOCTOR))
    nurse = await enrol(iam, await create_staff(iam, R.STAFF_ROLE_NURSE))
    if doctor.totp_code() == nurse.totp_code():  # one in a million: the test would prove nothing
        pytest.skip("the two secrets give the same code right now")
    refused = await fails(
        login(iam, doctor.username, doctor.password, nurse.totp_code(), source=a_source())
    )
    assert refused.reason == "INVALID_CREDENTIALS"


async def test_a_registrar_logs_in_with_the_password_alone(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    enrolment = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
    reply = await iam.CompleteStaffEnrolment(
        pb.CompleteStaffEnrolmentRequest(
            username=member.username, enrolment_code=enrolment.enrolment_code, password=PASSWORD
        )
    )
    assert not reply.totp_required
    assert (await login(iam, member.username, PASSWORD)).access_token


async def test_a_malformed_totp_code_names_the_field(iam: Stub) -> None:
    assert await invalid(login(iam, "t.someone", PASSWORD, "12ab56")) == ["totp_code"]


async def test_deactivated_staff_can_no_longer_get_a_token(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_NURSE)
    enrolled = await enrol(iam, member)
    token = (await login_as(iam, enrolled)).access_token
    claims = verify(token, await iam.GetJwks(pb.GetJwksRequest()))
    # The token already issued lives at most the configured lifetime: the revocation bound.
    assert claims["exp"] - claims["iat"] == 600

    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=member.name))

    refused = await fails(login_as(iam, enrolled))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )


@asynccontextmanager
async def _server(url: str, config: IamConfig) -> AsyncIterator[Stub]:
    """A second iam server with its own settings on the same database."""
    running: RunningService = await start(iam_spec(config), service_config("iam"), url)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            yield pb_grpc.IamServiceStub(channel)
    finally:
        await running.stop(grace_s=1)


async def test_a_burst_of_logins_beyond_the_argon2_queue_is_told_to_come_back(
    iam: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # argon2id holds 64 MiB per run: a flood of public logins must queue, then be refused, and
    # never take the pod past its memory.
    monkeypatch.setattr(credentials, "ARGON2_QUEUE", 2)
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    outcomes = await asyncio.gather(
        *(
            fails(login(iam, member.username, "not the password", source=a_source()))
            for _ in range(8)
        )
    )
    assert {(o.code, o.reason) for o in outcomes} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "STAFF_LOGIN_BUSY"),
        (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS"),
    }
