"""The SDK's identity: where its own token comes from, and who each outbound call speaks for.

Token sources run against a real file and the session's real iam service; outbound metadata is
observed by a small real gRPC server that records what every call carried.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import jwt
import pytest
from prometheus_client import CollectorRegistry

from his.base import identity
from his.base.identity import Principal
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.server import RunningService
from his_client import HisClients, credentials
from his_client.config import ClientConfig
from his_client.credentials import (
    RENEW_BEFORE_S,
    TokenSource,
    iam_login,
    service_credential,
    static_token,
    token_file,
)
from tests.client.upstream import ScriptedPatientService
from tests.conftest import SERVICE_CREDENTIAL_KEY
from tests.support import fails

Context = grpc.aio.ServicerContext[Any, Any]
Headers = list[tuple[str, str]]

OWN = "own-token"
PERSON = Principal(
    subject="staff/7f0c1e9a-0000-4000-8000-000000000001",
    username="u",
    roles=frozenset({"DOCTOR"}),
    token="person-token",
)
SERVICE = Principal(
    subject="services/scheduling",
    username="scheduling",
    roles=frozenset({"SERVICE"}),
    token="scheduling-token",
)


class Clock:
    """`time.monotonic`/`time.time` as the credentials module sees them, moved on by hand."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The SDK credentials' clock (only that module sees it; the event loop keeps the real one)."""
    fake = Clock()
    monkeypatch.setattr(
        credentials, "time", SimpleNamespace(monotonic=fake.monotonic, time=fake.time)
    )
    return fake


# --- token sources ---------------------------------------------------------------------------


def _write_token(path: Path, token: str) -> None:
    """Replace the token file as a platform does; its mtime moves on even within one clock tick."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(f"{token}\n", encoding="utf-8")
    mtime = max(path.stat().st_mtime_ns, before + 1_000_000)
    os.utime(path, ns=(mtime, mtime))


async def test_a_token_file_gives_its_token_and_the_new_one_once_it_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    _write_token(path, "first-token")
    source = token_file(path, recheck_s=0)

    assert await source() == "first-token"
    assert await source() == "first-token"
    _write_token(path, "second-token")
    assert await source() == "second-token"


async def test_a_token_file_is_looked_at_again_only_after_the_recheck_interval(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "token"
    _write_token(path, "first-token")
    source = token_file(path, recheck_s=60)
    assert await source() == "first-token"

    _write_token(path, "second-token")
    assert await source() == "first-token"
    clock.offset += 59
    assert await source() == "first-token"
    clock.offset += 1
    assert await source() == "second-token"


def test_a_service_credential_is_the_hex_hmac_sha256_of_the_service_name() -> None:
    # RFC 4231 test case 2: HMAC-SHA256(key "Jefe", "what do ya want for nothing?").
    assert service_credential(b"Jefe", "what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    key = SERVICE_CREDENTIAL_KEY.encode()
    assert service_credential(key, "patient") != service_credential(key, "scheduling")
    assert service_credential(key, "patient") != service_credential(b"other-key", "patient")


class CountingIam:
    """The real iam stub behind a counter of IssueToken calls."""

    def __init__(self, stub: iam_grpc.IamServiceAsyncStub) -> None:
        self._stub = stub
        self.logins = 0

    async def IssueToken(
        self, request: iam_pb.IssueTokenRequest, **kwargs: Any
    ) -> iam_pb.IssueTokenResponse:
        self.logins += 1
        return await self._stub.IssueToken(request, **kwargs)

    def stub(self) -> iam_grpc.IamServiceAsyncStub:
        return cast("iam_grpc.IamServiceAsyncStub", self)


@pytest.fixture
async def iam(iam_service: RunningService) -> AsyncIterator[CountingIam]:
    """The session's iam service, with its logins counted."""
    async with grpc.aio.insecure_channel(iam_service.address) as channel:
        yield CountingIam(iam_grpc.IamServiceStub(channel))


def _own(service: str) -> str:
    """The credential `his up` hands `service` (only iam holds the key it derives from)."""
    return service_credential(SERVICE_CREDENTIAL_KEY.encode(), service)


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def test_a_service_logs_in_at_iam_once_and_reuses_its_token(iam: CountingIam) -> None:
    source = iam_login("patient", _own("patient"), iam.stub)

    token = await source()
    again = await source()

    claims = _claims(token)
    assert claims["sub"] == "services/patient"
    assert claims["roles"] == ["SERVICE"]
    assert again == token
    assert iam.logins == 1


async def test_concurrent_first_calls_share_one_login(iam: CountingIam) -> None:
    source = iam_login("scheduling", _own("scheduling"), iam.stub)

    tokens = await asyncio.gather(*(source() for _ in range(20)))

    assert len(set(tokens)) == 1
    assert _claims(tokens[0])["sub"] == "services/scheduling"
    assert iam.logins == 1


async def test_a_service_token_is_renewed_shortly_before_it_expires(
    iam: CountingIam, clock: Clock
) -> None:
    source = iam_login("patient", _own("patient"), iam.stub)
    token = await source()
    renew_at = float(_claims(token)["exp"]) - RENEW_BEFORE_S

    clock.offset = renew_at - time.time() - 2
    assert await source() == token
    assert iam.logins == 1

    clock.offset = renew_at - time.time() + 1
    renewed = await source()
    assert iam.logins == 2
    assert renewed != token
    assert _claims(renewed)["sub"] == "services/patient"


async def test_a_login_with_another_services_credential_is_refused(iam: CountingIam) -> None:
    source = iam_login("patient", _own("scheduling"), iam.stub)

    failure = await fails(source())

    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "INVALID_CREDENTIALS"


# --- what outbound calls carry ---------------------------------------------------------------


@dataclass
class Recorder:
    """The metadata of every call the recording server answered, per method."""

    calls: dict[str, list[Headers]] = field(default_factory=dict)

    def record(self, method: str, context: Context) -> None:
        headers = [(key, str(value)) for key, value in context.invocation_metadata() or ()]
        self.calls.setdefault(method, []).append(headers)

    def last(self, method: str) -> Headers:
        assert self.calls.get(method), f"{method} was never called"
        return self.calls[method][-1]


class RecordingPatients(ScriptedPatientService):
    """GetPatient echoes the name and records what the call carried."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self._recorder = recorder

    async def GetPatient(self, request: pb.GetPatientRequest, context: Context) -> pb.Patient:
        self._recorder.record("GetPatient", context)
        return pb.Patient(name=request.name)


class RecordingIam(iam_grpc.IamServiceServicer):
    """The public IssueToken/GetJwks and one ordinary rpc, recording what each call carried."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    async def IssueToken(
        self, request: iam_pb.IssueTokenRequest, context: Context
    ) -> iam_pb.IssueTokenResponse:
        self._recorder.record("IssueToken", context)
        return iam_pb.IssueTokenResponse(access_token="issued", token_type="Bearer")

    async def GetJwks(
        self, request: iam_pb.GetJwksRequest, context: Context
    ) -> iam_pb.JsonWebKeySet:
        self._recorder.record("GetJwks", context)
        return iam_pb.JsonWebKeySet()

    async def ListDepartments(
        self, request: iam_pb.ListDepartmentsRequest, context: Context
    ) -> iam_pb.ListDepartmentsResponse:
        self._recorder.record("ListDepartments", context)
        return iam_pb.ListDepartmentsResponse()


@dataclass
class Recording:
    """The recording server and where it listens."""

    recorder: Recorder
    address: str


@pytest.fixture
async def recording() -> AsyncIterator[Recording]:
    """A real grpc.aio server on a free port, serving patient and iam rpcs that record metadata."""
    recorder = Recorder()
    server = grpc.aio.server()
    pb_grpc.add_PatientServiceServicer_to_server(RecordingPatients(recorder), server)
    # Only the rpcs these tests call are implemented; the others answer UNIMPLEMENTED.
    iam = RecordingIam(recorder)  # type: ignore[abstract]
    iam_grpc.add_IamServiceServicer_to_server(iam, server)
    port = server.add_insecure_port("[::]:0")
    assert port != 0, "could not bind a port for the recording server"
    await server.start()
    yield Recording(recorder, f"localhost:{port}")
    await server.stop(0)


@pytest.fixture
async def opened() -> AsyncIterator[list[HisClients]]:
    """HisClients a test made; closed after it."""
    made: list[HisClients] = []
    yield made
    for clients in made:
        await clients.close()


def _clients(
    recording: Recording, opened: list[HisClients], token: TokenSource | None
) -> HisClients:
    config = ClientConfig(addresses={"patient": recording.address, "iam": recording.address})
    clients = HisClients(config, registry=CollectorRegistry(), token=token)
    opened.append(clients)
    return clients


@pytest.fixture
def his(recording: Recording, opened: list[HisClients]) -> HisClients:
    """Clients of the recording server whose own token is `own-token`."""
    return _clients(recording, opened, static_token(OWN))


@contextmanager
def serving(principal: Principal) -> Iterator[None]:
    """Run the block as if serving a call of `principal` (as the authentication interceptor
    sets it up)."""
    entered = identity.enter(principal, "his.x/Y")
    try:
        yield
    finally:
        identity.leave(entered)


def _values(headers: Headers, key: str) -> list[str]:
    return [value for name, value in headers if name == key]


async def _get_patient(his: HisClients, recorder: Recorder, **kwargs: Any) -> Headers:
    reply = await his.patient.GetPatient(pb.GetPatientRequest(name="patients/p-1"), **kwargs)
    assert reply.name == "patients/p-1"
    return recorder.last("GetPatient")


async def test_outside_a_served_call_the_client_speaks_with_its_own_token(
    his: HisClients, recording: Recording
) -> None:
    headers = await _get_patient(his, recording.recorder)

    assert _values(headers, "authorization") == [f"Bearer {OWN}"]
    assert _values(headers, "x-his-caller") == []


async def test_relaying_a_staff_members_call_carries_the_person_and_names_this_service(
    his: HisClients, recording: Recording
) -> None:
    with serving(PERSON):
        headers = await _get_patient(his, recording.recorder)

    assert _values(headers, "authorization") == ["Bearer person-token"]
    assert _values(headers, "x-his-caller") == [f"Bearer {OWN}"]


async def test_serving_a_service_the_client_speaks_with_its_own_token_not_the_callers(
    his: HisClients, recording: Recording
) -> None:
    with serving(SERVICE):
        headers = await _get_patient(his, recording.recorder)

    assert _values(headers, "authorization") == [f"Bearer {OWN}"]
    assert _values(headers, "x-his-caller") == []


async def test_after_the_served_call_ends_the_client_speaks_for_itself_again(
    his: HisClients, recording: Recording
) -> None:
    with serving(PERSON):
        await _get_patient(his, recording.recorder)

    headers = await _get_patient(his, recording.recorder)

    assert _values(headers, "authorization") == [f"Bearer {OWN}"]
    assert _values(headers, "x-his-caller") == []


@pytest.mark.parametrize(
    ("principal", "authorization", "caller"),
    [(None, f"Bearer {OWN}", []), (PERSON, "Bearer person-token", [f"Bearer {OWN}"])],
    ids=["own", "relaying"],
)
async def test_credentials_the_caller_passed_are_replaced_never_doubled(
    his: HisClients,
    recording: Recording,
    principal: Principal | None,
    authorization: str,
    caller: list[str],
) -> None:
    passed = (
        ("authorization", "Bearer smuggled"),
        ("x-his-caller", "Bearer smuggled-service"),
        ("x-request-tag", "kept"),
    )
    entered = identity.enter(principal, "his.x/Y")
    try:
        headers = await _get_patient(his, recording.recorder, metadata=passed)
    finally:
        identity.leave(entered)

    assert _values(headers, "authorization") == [authorization]
    assert _values(headers, "x-his-caller") == caller
    assert _values(headers, "x-request-tag") == ["kept"]


@pytest.mark.parametrize("principal", [None, PERSON], ids=["own", "relaying"])
async def test_token_requests_and_the_key_set_carry_no_credentials(
    his: HisClients, recording: Recording, principal: Principal | None
) -> None:
    recorder = recording.recorder
    entered = identity.enter(principal, "his.x/Y")
    try:
        await his.iam.IssueToken(iam_pb.IssueTokenRequest(username="u", credential="c"))
        await his.iam.GetJwks(iam_pb.GetJwksRequest())
        await his.iam.ListDepartments(iam_pb.ListDepartmentsRequest())
    finally:
        identity.leave(entered)

    for method in ("IssueToken", "GetJwks"):
        assert _values(recorder.last(method), "authorization") == [], method
        assert _values(recorder.last(method), "x-his-caller") == [], method
    # The same channel does carry credentials on an ordinary rpc of the same service.
    assert _values(recorder.last("ListDepartments"), "authorization") != []


async def test_each_call_asks_the_token_source_so_a_renewed_token_is_used(
    recording: Recording, opened: list[HisClients]
) -> None:
    issued = 0

    async def rotating() -> str:
        nonlocal issued
        issued += 1
        return f"own-{issued}"

    his = _clients(recording, opened, rotating)

    first = await _get_patient(his, recording.recorder)
    second = await _get_patient(his, recording.recorder)

    assert _values(first, "authorization") == ["Bearer own-1"]
    assert _values(second, "authorization") == ["Bearer own-2"]


async def test_without_a_token_of_its_own_the_client_carries_only_the_person(
    recording: Recording, opened: list[HisClients]
) -> None:
    his = _clients(recording, opened, None)

    alone = await _get_patient(his, recording.recorder)
    with serving(PERSON):
        relayed = await _get_patient(his, recording.recorder)

    assert _values(alone, "authorization") == []
    assert _values(relayed, "authorization") == ["Bearer person-token"]
    assert _values(relayed, "x-his-caller") == []
