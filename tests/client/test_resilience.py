"""The SDK's deadlines, retries and circuit breaker, against real servers that fail on purpose."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf.message import Message

from his.base import deadline
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his_client import HisClients, UpstreamError
from his_client.errors import translate_error
from his_client.idempotency import retryable_methods
from tests.client.conftest import MakeClients
from tests.client.upstream import OK, UNAVAILABLE, Answer, Upstream, fail, sleep
from tests.support import failure_of

NAME = "patients/7b0e6b1e-9a7e-4c4e-9a3e-0f6f1d2c3b4a"


def _request(method: str) -> Message:
    """A valid-looking request for `method` of PatientService."""
    patient = pb.Patient(name=NAME, family_name="Wang", given_names=["Fang"])
    requests: dict[str, Message] = {
        "GetPatient": pb.GetPatientRequest(name=NAME),
        "ListPatients": pb.ListPatientsRequest(page_size=10),
        "UpdatePatient": pb.UpdatePatientRequest(patient=patient),
        "CreatePatient": pb.CreatePatientRequest(patient=patient),
        "UnmergePatient": pb.UnmergePatientRequest(name=NAME, reason="not the same person"),
    }
    return requests[method]


async def _call(
    clients: HisClients, method: str, request: Message | None = None, **kw: float
) -> Message:
    """Call `method` through the SDK's typed patient stub."""
    rpc = getattr(clients.patient, method)
    response: Message = await rpc(request if request is not None else _request(method), **kw)
    return response


def _retries(clients: HisClients, method: str) -> float:
    value = clients.metrics.registry.get_sample_value(
        "his_client_retries_total", {"upstream": "patient", "grpc_method": method}
    )
    return 0.0 if value is None else value


def _breaker_state(clients: HisClients) -> float | None:
    return clients.metrics.registry.get_sample_value(
        "his_client_breaker_state", {"upstream": "patient"}
    )


# Retries: only where the proto (or a request_id) makes repeating safe.


@pytest.mark.parametrize("method", ["GetPatient", "ListPatients", "UpdatePatient"])
async def test_idempotent_method_is_retried_on_unavailable_until_it_succeeds(
    upstream: Upstream, make_clients: MakeClients, method: str
) -> None:
    upstream.service.script(method, UNAVAILABLE, UNAVAILABLE, OK)
    clients = make_clients(max_attempts=3)

    await _call(clients, method)

    assert upstream.service.attempts[method] == 3
    assert _retries(clients, method) == 2


async def test_idempotent_method_gives_up_after_max_attempts(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE)
    clients = make_clients(max_attempts=3)

    with pytest.raises(UpstreamError) as caught:
        await _call(clients, "GetPatient")

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.upstream == "patient"
    assert upstream.service.attempts["GetPatient"] == 3
    assert _retries(clients, "GetPatient") == 2


@pytest.mark.parametrize("method", ["CreatePatient", "UnmergePatient"])
async def test_non_idempotent_method_is_never_retried(
    upstream: Upstream, make_clients: MakeClients, method: str
) -> None:
    upstream.service.script(method, UNAVAILABLE, OK)
    clients = make_clients(max_attempts=3)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(clients, method)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert upstream.service.attempts[method] == 1
    assert _retries(clients, method) == 0


async def test_create_with_request_id_is_retried_with_the_same_id(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("CreatePatient", UNAVAILABLE, UNAVAILABLE, OK)
    clients = make_clients(max_attempts=3)
    request = pb.CreatePatientRequest(
        patient=pb.Patient(family_name="Wang", given_names=["Fang"]),
        request_id="create-wang-fang-1",
    )

    created = await _call(clients, "CreatePatient", request)

    assert isinstance(created, pb.Patient) and created.name
    assert upstream.service.attempts["CreatePatient"] == 3
    seen = upstream.service.requests["CreatePatient"]
    assert [r.request_id for r in seen if isinstance(r, pb.CreatePatientRequest)] == [
        "create-wang-fang-1"
    ] * 3
    assert _retries(clients, "CreatePatient") == 2


@pytest.mark.parametrize("method", ["GetPatient", "UpdatePatient"])
@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND],
)
async def test_answers_other_than_unavailable_are_not_retried(
    upstream: Upstream, make_clients: MakeClients, method: str, code: grpc.StatusCode
) -> None:
    upstream.service.script(method, fail(code), OK)
    clients = make_clients(max_attempts=3)

    with pytest.raises(UpstreamError) as caught:
        await _call(clients, method)

    assert caught.value.code() == code
    assert caught.value.upstream == "patient"
    assert "scripted" in (caught.value.details() or "")
    assert upstream.service.attempts[method] == 1
    assert _retries(clients, method) == 0


async def test_inside_istio_the_client_does_not_retry_even_idempotent_methods(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE, OK)
    clients = make_clients(mesh="istio", max_attempts=3)

    with pytest.raises(UpstreamError) as caught:
        await _call(clients, "GetPatient")

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert upstream.service.attempts["GetPatient"] == 1
    assert _retries(clients, "GetPatient") == 0


# Deadlines.


async def test_retries_stop_at_the_deadline_not_at_max_attempts(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE)
    # Full jitter: each sleep is random in [0, min(0.2, 0.1 * 2^n)] s.
    clients = make_clients(max_attempts=50, backoff_base_s=0.1, backoff_max_s=0.2)

    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        await _call(clients, "GetPatient", timeout=0.5)
    elapsed = time.monotonic() - started

    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # About 0.5 s; the bound is loose for slow CI machines, far below 50 attempts' worth of sleep.
    assert elapsed < 2.0
    attempts = upstream.service.attempts["GetPatient"]
    assert 2 <= attempts <= 20
    assert _retries(clients, "GetPatient") == attempts - 1


async def test_call_to_an_upstream_slower_than_the_timeout_fails_with_deadline_exceeded(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", sleep(5.0))
    clients = make_clients()

    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        await _call(clients, "GetPatient", timeout=0.3)
    elapsed = time.monotonic() - started

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.upstream == "patient"
    assert elapsed < 3.0
    assert upstream.service.attempts["GetPatient"] == 1


async def test_default_timeout_applies_when_the_caller_gives_none(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    clients = make_clients(default_timeout_s=2.0)

    await _call(clients, "GetPatient")

    (seen,) = upstream.service.time_remaining["GetPatient"]
    assert seen is not None and 0 < seen <= 2.0


async def test_outbound_deadline_is_derived_from_the_incoming_call(
    upstream: Upstream, front_stub: pb_grpc.PatientServiceAsyncStub
) -> None:
    # The front's clients default to 30 s; the incoming call's 0.8 s must win.
    found = await front_stub.GetPatient(pb.GetPatientRequest(name=NAME), timeout=0.8)

    assert found.name == NAME
    (seen,) = upstream.service.time_remaining["GetPatient"]
    assert seen is not None and 0 < seen <= 0.8


async def test_unhandled_upstream_outage_is_dependency_unavailable_not_internal(
    upstream: Upstream, front_stub: pb_grpc.PatientServiceAsyncStub
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await front_stub.GetPatient(pb.GetPatientRequest(name=NAME), timeout=10)

    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = failure_of(error)
    assert info.reason == "DEPENDENCY_UNAVAILABLE"
    assert info.metadata["dependency"] == "patient"
    assert info.domain == "patient.his"
    assert upstream.service.attempts["GetPatient"] >= 1


# Circuit breaker.


async def test_breaker_opens_after_consecutive_outages_and_fails_fast(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE)
    # One attempt per call, so each call is exactly one failure for the breaker.
    clients = make_clients(max_attempts=1, breaker_fail_max=3, breaker_reset_s=0.5)

    for _ in range(3):
        assert _breaker_state(clients) in (None, 0)
        with pytest.raises(UpstreamError) as outage:
            await _call(clients, "GetPatient")
        assert outage.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not outage.value.circuit_open
    assert upstream.service.attempts["GetPatient"] == 3
    assert _breaker_state(clients) == 2

    with pytest.raises(UpstreamError) as caught:
        await _call(clients, "GetPatient")

    error = caught.value
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.circuit_open
    assert error.upstream == "patient"
    assert upstream.service.attempts["GetPatient"] == 3
    rejected = clients.metrics.registry.get_sample_value(
        "his_client_breaker_rejections_total", {"upstream": "patient"}
    )
    assert rejected == 1


async def test_open_breaker_lets_a_trial_call_through_after_the_reset_timeout(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE)
    clients = make_clients(max_attempts=1, breaker_fail_max=3, breaker_reset_s=0.5)
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await _call(clients, "GetPatient")
    assert _breaker_state(clients) == 2
    upstream.service.script("GetPatient", OK)

    # Until the reset timeout has passed, calls fail fast; then one trial call goes through.
    fast_failures = 0
    give_up = time.monotonic() + 10.0
    while True:
        try:
            await _call(clients, "GetPatient")
            break
        except UpstreamError as error:
            assert error.circuit_open, f"unexpected failure {error.code()}"
            fast_failures += 1
        assert time.monotonic() < give_up, "the breaker never let a trial call through"
        await asyncio.sleep(0.05)

    assert _breaker_state(clients) == 0
    # Only the successful trial reached the server after the three outages.
    assert upstream.service.attempts["GetPatient"] == 4
    assert fast_failures >= 1
    await _call(clients, "GetPatient")
    assert upstream.service.attempts["GetPatient"] == 5


async def test_failed_trial_call_opens_the_breaker_again(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE)
    clients = make_clients(max_attempts=1, breaker_fail_max=3, breaker_reset_s=0.3)
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await _call(clients, "GetPatient")

    give_up = time.monotonic() + 10.0
    while upstream.service.attempts["GetPatient"] == 3:
        with pytest.raises(UpstreamError):
            await _call(clients, "GetPatient")
        assert time.monotonic() < give_up, "the breaker never let a trial call through"
        await asyncio.sleep(0.05)

    assert upstream.service.attempts["GetPatient"] == 4
    assert _breaker_state(clients) == 2
    with pytest.raises(UpstreamError) as caught:
        await _call(clients, "GetPatient")
    assert caught.value.circuit_open
    assert upstream.service.attempts["GetPatient"] == 4


async def test_the_breaker_counts_a_retried_call_as_one_failure(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE)
    clients = make_clients(max_attempts=4, breaker_fail_max=2, breaker_reset_s=10.0)

    with pytest.raises(UpstreamError) as first:
        await _call(clients, "GetPatient")

    # Four attempts, but one logical call: one failure, the breaker stays closed.
    assert not first.value.circuit_open
    assert upstream.service.attempts["GetPatient"] == 4
    assert _breaker_state(clients) == 0

    with pytest.raises(UpstreamError):
        await _call(clients, "GetPatient")
    assert _breaker_state(clients) == 2  # the second failed call opens it
    with pytest.raises(UpstreamError) as third:
        await _call(clients, "GetPatient")
    assert third.value.circuit_open
    assert upstream.service.attempts["GetPatient"] == 8


async def test_half_open_lets_exactly_one_trial_call_through(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE)
    clients = make_clients(max_attempts=1, breaker_fail_max=1, breaker_reset_s=0.2)
    with pytest.raises(UpstreamError):
        await _call(clients, "GetPatient")
    assert _breaker_state(clients) == 2
    upstream.service.script("GetPatient", sleep(0.3))
    await asyncio.sleep(0.25)  # past the reset time: the next call is the trial

    results = await asyncio.gather(
        *(_call(clients, "GetPatient") for _ in range(10)), return_exceptions=True
    )

    fast = [r for r in results if isinstance(r, UpstreamError) and r.circuit_open]
    assert len(fast) == 9
    assert upstream.service.attempts["GetPatient"] == 2
    assert _breaker_state(clients) == 0


async def test_answers_like_not_found_never_open_the_breaker(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script(
        "GetPatient",
        *[fail(grpc.StatusCode.NOT_FOUND), fail(grpc.StatusCode.INVALID_ARGUMENT)] * 5,
        fail(grpc.StatusCode.NOT_FOUND),
    )
    clients = make_clients(max_attempts=1, breaker_fail_max=3, breaker_reset_s=10.0)

    for _ in range(10):
        with pytest.raises(UpstreamError) as caught:
            await _call(clients, "GetPatient")
        assert not caught.value.circuit_open
        assert caught.value.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
        )

    assert _breaker_state(clients) == 0
    assert upstream.service.attempts["GetPatient"] == 10


async def test_a_success_resets_the_count_of_consecutive_outages(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script(
        "GetPatient", UNAVAILABLE, UNAVAILABLE, OK, UNAVAILABLE, UNAVAILABLE, OK
    )
    clients = make_clients(max_attempts=1, breaker_fail_max=3, breaker_reset_s=10.0)

    outcomes = []
    for _ in range(6):
        try:
            await _call(clients, "GetPatient")
            outcomes.append("ok")
        except UpstreamError as error:
            assert not error.circuit_open
            outcomes.append(error.code().name)

    assert outcomes == ["UNAVAILABLE", "UNAVAILABLE", "ok", "UNAVAILABLE", "UNAVAILABLE", "ok"]
    assert _breaker_state(clients) == 0


async def test_open_breaker_fails_fast_for_every_method_of_the_upstream(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", UNAVAILABLE)
    clients = make_clients(max_attempts=1, breaker_fail_max=2, breaker_reset_s=10.0)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await _call(clients, "GetPatient")
    assert _breaker_state(clients) == 2

    with pytest.raises(UpstreamError) as caught:
        await _call(clients, "ListPatients")

    assert caught.value.circuit_open
    assert upstream.service.attempts["ListPatients"] == 0


# Which methods are safe to repeat.


def test_retryable_methods_are_read_from_the_proto_idempotency_levels() -> None:
    methods = retryable_methods()

    assert "/his.patient.v1.PatientService/GetPatient" in methods
    assert "/his.patient.v1.PatientService/UpdatePatient" in methods
    assert "/his.scheduling.v1.SchedulingService/CancelAppointment" in methods
    assert "/his.patient.v1.PatientService/CreatePatient" not in methods
    assert "/his.patient.v1.PatientService/UnmergePatient" not in methods
    assert "/his.scheduling.v1.SchedulingService/BookAppointment" not in methods


async def test_an_outage_relayed_from_further_upstream_is_not_retried_again(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    # The upstream already retried its own dependency; retrying here would multiply the load.
    relayed = Answer(grpc.StatusCode.UNAVAILABLE, reason="DEPENDENCY_UNAVAILABLE")
    upstream.service.script("GetPatient", relayed, OK)
    clients = make_clients(max_attempts=3)

    with pytest.raises(UpstreamError) as caught:
        await _call(clients, "GetPatient")

    assert caught.value.relayed_outage
    assert upstream.service.attempts["GetPatient"] == 1


async def test_a_deadline_cut_short_by_the_caller_does_not_open_the_breaker(
    upstream: Upstream, make_clients: MakeClients
) -> None:
    upstream.service.script("GetPatient", sleep(1.0))
    clients = make_clients(max_attempts=1, breaker_fail_max=1, default_timeout_s=5.0)
    token = deadline.enter(0.2)  # as if serving a call with 0.2 s left
    try:
        with pytest.raises(UpstreamError) as caught:
            await _call(clients, "GetPatient")
    finally:
        deadline.leave(token)

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.budget_limited
    assert _breaker_state(clients) == 0


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DEPENDENCY_DEADLINE_EXCEEDED",
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.PERMISSION_DENIED,
            "DEPENDENCY_PERMISSION_DENIED",
        ),
        (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION, "DEPENDENCY_REFUSED"),
        (grpc.StatusCode.INTERNAL, grpc.StatusCode.FAILED_PRECONDITION, "DEPENDENCY_REFUSED"),
    ],
)
def test_an_unhandled_upstream_answer_becomes_a_status_naming_the_dependency(
    code: grpc.StatusCode, status: grpc.StatusCode, reason: str
) -> None:
    translated = translate_error(UpstreamError("patient", code, "from upstream"))

    assert translated is not None
    assert (translated.code, translated.reason) == (status, reason)
    assert translated.metadata == {"dependency": "patient", "code": code.name}
