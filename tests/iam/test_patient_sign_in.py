"""Patient sign-in (StartPatientSignIn, CompletePatientSignIn) against the real iam, patient and
audit servers: codes go through the local sender (its file is read as the patient's phone),
limits are counted in the database, and the clock is moved through the database, not slept.

The iam under test has small limits (tests/iam/conftest.py SIGN_IN_LIMITS); every test uses its
own phone numbers and its own source address (`x-forwarded-for`, as a gateway sets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.iam.config import IamConfig
from his.iam.v1 import iam_service_pb2 as pb
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.config import AuthConfig
from his.runtime.server import RunningService
from his.runtime.tokens import TokenVerifier
from his_client import HisClients, local_code, patient_sign_in, rich_status
from his_client.config import ClientConfig
from his_client.patient_sign_in import last_code
from tests.iam.conftest import SIGN_IN_LIMITS
from tests.iam.helpers import DOMAIN, LOCAL_ISSUER, Stub, verify
from tests.patient.helpers import make_patient, unique_phone
from tests.support import fails, invalid_in

if TYPE_CHECKING:
    from his.patient.v1.patient_service_pb2_grpc import PatientServiceAsyncStub


def a_source() -> str:
    """An address of the documentation range no other test uses."""
    # Its own /64: iam counts an IPv6 source by its /64.
    return f"2001:db8:{random.randrange(1, 2**16):x}:{random.randrange(1, 2**16):x}::1"


def _invented() -> str:
    """An address a client writes into its own x-forwarded-for, new at every call."""
    return f"198.51.100.{random.randrange(1, 255)}"


def from_source(source: str) -> tuple[tuple[str, str], ...]:
    """Call metadata as a gateway passes it on: whatever the client sent (a different invented
    address each time), then the address the gateway saw, appended."""
    return (("x-forwarded-for", f"{_invented()}, {source}"),)


async def rate_limited(call: Any) -> float:
    """Await a call that must be refused by a sign-in limit; its RetryInfo delay (his_client's
    rich_status decodes it)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        status = rich_status(error)
        assert (status.code, status.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "SIGN_IN_RATE_LIMITED",
        ), status
        assert status.retry_delay_s is not None, "the refusal carries no RetryInfo"
        return status.retry_delay_s
    raise AssertionError("expected RESOURCE_EXHAUSTED")


@pytest.fixture(scope="module")
def codes(make_iam_config: Callable[..., IamConfig]) -> Path:
    """The local sender's file of the iam under test: the patients' "phone"."""
    return make_iam_config().sign_in_codes_path


async def registered(
    patients: PatientServiceAsyncStub, phone: str | None = None
) -> patient_pb.Patient:
    """A new active patient with a phone number of its own."""
    return await patients.CreatePatient(
        patient_pb.CreatePatientRequest(patient=make_patient(phone=phone or unique_phone()))
    )


@dataclasses.dataclass
class Phone:
    """One patient's phone: starts sign-ins from one source, reads the codes sent to it."""

    iam: Stub
    codes: Path
    number: str
    source: str

    async def start(self) -> pb.StartPatientSignInResponse:
        return await self.iam.StartPatientSignIn(
            pb.StartPatientSignInRequest(phone=self.number), metadata=from_source(self.source)
        )

    def code(self) -> str:
        code = last_code(self.codes, self.number)
        assert code is not None, "no code was sent"
        return code

    def complete(self, sign_in: str, code: str) -> Any:
        return self.iam.CompletePatientSignIn(
            pb.CompletePatientSignInRequest(sign_in=sign_in, code=code),
            metadata=from_source(self.source),
        )


@pytest.fixture
async def phone(iam: Stub, codes: Path, patients: PatientServiceAsyncStub) -> Phone:
    """The phone of a newly registered patient."""
    patient = await registered(patients)
    return Phone(iam, codes, patient.phone, a_source())


def wrong(code: str) -> str:
    """Another code of the same length."""
    return f"{(int(code) + 1) % 10**6:06d}"


async def test_a_patient_signs_in_with_the_code_sent_to_their_phone(
    iam: Stub, codes: Path, patients: PatientServiceAsyncStub
) -> None:
    patient = await registered(patients)
    phone = Phone(iam, codes, patient.phone, a_source())

    started = await phone.start()
    assert started.sign_in.startswith("patientSignIns/")
    assert started.code_length == 6
    lifetime = started.expire_time.ToDatetime(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)
    assert 250 < lifetime.total_seconds() <= SIGN_IN_LIMITS.code_ttl_s
    reply = await phone.complete(started.sign_in, phone.code())

    assert reply.patient == patient.name
    assert reply.token_type == "Bearer"
    jwks = await iam.GetJwks(pb.GetJwksRequest())
    claims = verify(reply.access_token, jwks)
    assert claims["sub"] == patient.name
    assert claims["roles"] == ["PATIENT"]
    assert claims["departments"] == []
    assert claims["exp"] - claims["iat"] == SIGN_IN_LIMITS.token_ttl_s == 1800
    assert reply.expire_time.ToSeconds() == claims["exp"]
    # The services' verifier takes it as a patient.
    document = {
        "keys": [
            {"kty": k.kty, "kid": k.kid, "use": k.use, "alg": k.alg, "n": k.n, "e": k.e}
            for k in jwks.keys
        ]
    }

    async def fetch() -> Mapping[str, Any]:
        return document

    verifier = TokenVerifier(AuthConfig(issuer=LOCAL_ISSUER, audience="his"), fetch)
    principal = await verifier.verify(reply.access_token)
    assert principal.is_patient and not principal.is_staff and not principal.is_service
    assert principal.subject == patient.name
    assert principal.roles == frozenset({"PATIENT"})


async def test_his_client_signs_a_patient_in_with_the_local_senders_code(
    iam_server: RunningService, codes: Path, patients: PatientServiceAsyncStub
) -> None:
    patient = await registered(patients)
    config = ClientConfig(addresses={"iam": iam_server.address})
    async with HisClients(config) as his:
        signed_in = await patient_sign_in(his, patient.phone, local_code(codes))
    assert signed_in.patient == patient.name
    assert signed_in.access_token not in repr(signed_in)
    assert signed_in.expire_time > dt.datetime.now(dt.UTC)


async def test_an_unknown_phone_gets_the_same_answer_and_no_code_is_sent(
    iam: Stub, codes: Path, patients: PatientServiceAsyncStub
) -> None:
    known = Phone(iam, codes, (await registered(patients)).phone, a_source())
    unknown = Phone(iam, codes, unique_phone(), a_source())
    # Two patients sharing a number: nobody can be told apart by it, so nobody gets a code.
    shared_number = unique_phone()
    await registered(patients, shared_number)
    await registered(patients, shared_number)
    shared = Phone(iam, codes, shared_number, a_source())

    answers = [await known.start(), await unknown.start(), await shared.start()]

    assert [a.code_length for a in answers] == [6, 6, 6]
    assert all(a.sign_in.startswith("patientSignIns/") for a in answers)
    first = answers[0].expire_time.ToDatetime()
    assert all(abs((a.expire_time.ToDatetime() - first).total_seconds()) < 5 for a in answers)
    assert last_code(codes, unknown.number) is None
    assert last_code(codes, shared.number) is None
    for decoy, started in ((unknown, answers[1]), (shared, answers[2])):
        failure = await fails(decoy.complete(started.sign_in, "123456"))
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "SIGN_IN_CODE_INVALID",
        )


async def test_a_wrong_code_is_refused_and_the_right_one_still_works(phone: Phone) -> None:
    started = await phone.start()
    code = phone.code()

    failure = await fails(phone.complete(started.sign_in, wrong(code)))

    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "SIGN_IN_CODE_INVALID",
    )
    assert code not in failure.message
    assert (await phone.complete(started.sign_in, code)).access_token


async def test_a_used_code_fails(phone: Phone) -> None:
    started = await phone.start()
    code = phone.code()
    await phone.complete(started.sign_in, code)

    failure = await fails(phone.complete(started.sign_in, code))

    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "SIGN_IN_CODE_INVALID",
    )


async def test_an_unknown_sign_in_is_refused_like_a_wrong_code(phone: Phone) -> None:
    failure = await fails(phone.complete(f"patientSignIns/{uuid.uuid4()}", "000000"))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "SIGN_IN_CODE_INVALID",
    )


async def test_asking_again_retires_the_previous_code(phone: Phone) -> None:
    first = await phone.start()
    first_code = phone.code()
    second = await phone.start()

    failure = await fails(phone.complete(first.sign_in, first_code))

    assert failure.reason == "SIGN_IN_CODE_INVALID"
    assert (await phone.complete(second.sign_in, phone.code())).access_token


async def test_an_expired_code_is_refused(phone: Phone, iam_db: AsyncEngine) -> None:
    started = await phone.start()
    sign_in_id = uuid.UUID(started.sign_in.removeprefix("patientSignIns/"))
    # The clock moves on: the code was made six minutes ago and lived five.
    async with iam_db.begin() as connection:
        await connection.execute(
            text(
                "UPDATE iam.patient_sign_ins SET create_time = create_time - interval '6 minutes', "
                "expire_time = expire_time - interval '6 minutes' WHERE id = :id"
            ),
            {"id": sign_in_id},
        )

    failure = await fails(phone.complete(started.sign_in, phone.code()))

    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "SIGN_IN_CODE_EXPIRED",
    )


async def test_wrong_codes_beyond_the_limit_are_refused_for_a_while(
    phone: Phone, iam_db: AsyncEngine
) -> None:
    started = await phone.start()
    code = phone.code()
    for _ in range(SIGN_IN_LIMITS.failures_per_phone):
        failure = await fails(phone.complete(started.sign_in, wrong(code)))
        assert failure.reason == "SIGN_IN_CODE_INVALID"

    # Even the right code is refused now, from any source, and the sign-in is void.
    delay = await rate_limited(phone.complete(started.sign_in, code))
    other_source = dataclasses.replace(phone, source=a_source())
    await rate_limited(other_source.complete(started.sign_in, code))
    assert SIGN_IN_LIMITS.window_s - 60 < delay <= SIGN_IN_LIMITS.window_s

    # A window later the number may sign in again; the voided sign-in stays void.
    async with iam_db.begin() as connection:
        await connection.execute(
            text(
                "UPDATE iam.sign_in_attempts SET at = at - make_interval(secs => :window) "
                "WHERE source = :source"
            ),
            # iam stores an IPv6 source as its /64.
            {
                "window": SIGN_IN_LIMITS.window_s,
                "source": str(ipaddress.ip_network(f"{phone.source}/64", strict=False)),
            },
        )
    failure = await fails(phone.complete(started.sign_in, code))
    assert failure.reason == "SIGN_IN_CODE_INVALID"
    again = await phone.start()
    assert (await phone.complete(again.sign_in, phone.code())).access_token


async def test_starts_per_phone_are_limited(phone: Phone) -> None:
    for _ in range(SIGN_IN_LIMITS.starts_per_phone):
        await phone.start()

    delay = await rate_limited(phone.start())
    # From another source too: the number is what is limited.
    await rate_limited(dataclasses.replace(phone, source=a_source()).start())

    assert 0 < delay <= SIGN_IN_LIMITS.window_s


async def test_starts_per_source_are_limited(iam: Stub, codes: Path) -> None:
    source = a_source()
    for _ in range(SIGN_IN_LIMITS.starts_per_source):
        await Phone(iam, codes, unique_phone(), source).start()

    delay = await rate_limited(Phone(iam, codes, unique_phone(), source).start())

    assert 0 < delay <= SIGN_IN_LIMITS.window_s
    # Another source is not affected.
    await Phone(iam, codes, unique_phone(), a_source()).start()


async def test_the_addresses_of_one_ipv6_64_are_one_source(iam: Stub, codes: Path) -> None:
    # A subscriber picks any address of its /64: a new one per call must not mean a new source.
    network = a_source().removesuffix("::1")
    for i in range(SIGN_IN_LIMITS.starts_per_source):
        await Phone(iam, codes, unique_phone(), f"{network}::{i + 2:x}").start()

    await rate_limited(Phone(iam, codes, unique_phone(), f"{network}:abcd::1").start())


async def test_wrong_codes_per_source_are_limited(
    iam: Stub, codes: Path, patients: PatientServiceAsyncStub
) -> None:
    source = a_source()
    phones = [
        Phone(iam, codes, (await registered(patients)).phone, source)
        for _ in range(SIGN_IN_LIMITS.failures_per_source // 2 + 1)
    ]
    started = [await p.start() for p in phones]
    # Two wrong codes per number: under each number's limit, over the source's.
    for p, s in zip(phones, started, strict=True):
        for _ in range(2):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await p.complete(s.sign_in, wrong(p.code()))
    last = phones[-1]
    await rate_limited(last.complete(started[-1].sign_in, last.code()))


async def test_bad_input_names_the_field(iam: Stub) -> None:
    start = iam.StartPatientSignIn
    complete = iam.CompletePatientSignIn
    assert await invalid_in(DOMAIN, start(pb.StartPatientSignInRequest())) == ["phone"]
    for bad in ("12345", "+86 138 0000", "phone", "+" + "1" * 21):
        request = pb.StartPatientSignInRequest(phone=bad)
        assert await invalid_in(DOMAIN, start(request)) == ["phone"]
    assert set(await invalid_in(DOMAIN, complete(pb.CompletePatientSignInRequest()))) == {
        "sign_in",
        "code",
    }
    good = f"patientSignIns/{uuid.uuid4()}"
    for bad_code in ("12345", "1234567", "12a456", "\uff11\uff12\uff13\uff14\uff15\uff16"):
        wrong_code = pb.CompletePatientSignInRequest(sign_in=good, code=bad_code)
        assert await invalid_in(DOMAIN, complete(wrong_code)) == ["code"]
    for bad_name in ("patients/x", "patientSignIns/not-a-uuid", f"staff/{uuid.uuid4()}"):
        wrong_name = pb.CompletePatientSignInRequest(sign_in=bad_name, code="123456")
        assert await invalid_in(DOMAIN, complete(wrong_name)) == ["sign_in"]


async def test_twenty_concurrent_completions_with_the_right_code_give_exactly_one_token(
    phone: Phone,
) -> None:
    started = await phone.start()
    code = phone.code()

    results = await asyncio.gather(
        *(phone.complete(started.sign_in, code) for _ in range(20)), return_exceptions=True
    )

    tokens = [r for r in results if isinstance(r, pb.CompletePatientSignInResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(tokens) == 1
    assert len(refused) == 19
    assert {r.code() for r in refused} == {grpc.StatusCode.UNAUTHENTICATED}


async def test_sign_in_needs_no_token(iam_server: RunningService, codes: Path) -> None:
    async with grpc.aio.insecure_channel(iam_server.address) as channel:
        stub = pb_grpc.IamServiceStub(channel)
        started = await stub.StartPatientSignIn(
            pb.StartPatientSignInRequest(phone=unique_phone()), metadata=from_source(a_source())
        )
        failure = await fails(
            stub.CompletePatientSignIn(
                pb.CompletePatientSignInRequest(sign_in=started.sign_in, code="000000")
            )
        )
    assert failure.reason == "SIGN_IN_CODE_INVALID"


async def test_codes_appear_only_in_the_local_senders_log_line(
    phone: Phone, iam_db: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        started = await phone.start()
        code = phone.code()
        wrong_failure = await fails(phone.complete(started.sign_in, wrong(code)))
        reply = await phone.complete(started.sign_in, code)
        used_failure = await fails(phone.complete(started.sign_in, code))

    def mentions(record: logging.LogRecord) -> bool:
        text_of = record.getMessage() + repr(record.__dict__.get("fields", ""))
        return code in text_of

    carrying = [r for r in caplog.records if mentions(r)]
    assert [r.name for r in carrying] == ["his.iam.sign_in_sender"]
    assert phone.number not in carrying[0].getMessage()
    # Nor any other record mentions the phone number.
    assert not [r for r in caplog.records if phone.number in r.getMessage()]
    assert code not in wrong_failure.message and code not in used_failure.message
    assert code not in reply.access_token
    # Stored as keyed hashes only: neither the code nor the number is in the row.
    async with iam_db.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT * FROM iam.patient_sign_ins WHERE id = :id"),
                {"id": uuid.UUID(started.sign_in.removeprefix("patientSignIns/"))},
            )
        ).one()
    stored = repr(tuple(row))
    assert code not in stored
    assert phone.number not in stored
    assert row.used_time is not None
