"""gRPC-web through the real Envoy gateway to the real services: what a browser or a phone app
gets for each kind of call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from google.protobuf.message import Message

from his.gateway.runner import LocalGateway, ipv6_loopback_available
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc
from tests.gateway.conftest import SIGN_IN_PER_MINUTE
from tests.gateway.grpc_web import call, http_request
from tests.identity import Issuer
from tests.patient.helpers import create

GET_PATIENT = "/his.patient.v1.PatientService/GetPatient"
ISSUE_TOKEN = "/his.iam.v1.IamService/IssueToken"
LISTED_ORIGIN = "https://staff.his.hospital.example"
OK, UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE = 0, 16, 7, 14


async def test_a_staff_token_gets_the_answer_through_the_gateway(
    gateway: LocalGateway,
    patients: patient_service_pb2_grpc.PatientServiceAsyncStub,
    registrar_token: str,
) -> None:
    patient = await create(patients)

    reply = await call(
        gateway.config.port,
        GET_PATIENT,
        pb.GetPatientRequest(name=patient.name),
        token=registrar_token,
    )

    assert reply.http_status == 200
    assert reply.headers["content-type"].startswith("application/grpc-web")
    assert (reply.grpc_status, reply.grpc_message) == (OK, "")
    assert pb.Patient.FromString(reply.messages[0]).name == patient.name


async def test_without_a_token_the_gateway_answers_unauthenticated(
    gateway: LocalGateway,
) -> None:
    reply = await call(gateway.config.port, GET_PATIENT, pb.GetPatientRequest(name="patients/x"))

    assert reply.grpc_status == UNAUTHENTICATED
    assert reply.messages == []


async def test_a_token_of_another_issuer_is_refused_at_the_gateway(
    gateway: LocalGateway, issuer: Issuer
) -> None:
    forged = issuer.token("staff/x", ("REGISTRAR",), issuer="https://elsewhere.example")

    reply = await call(
        gateway.config.port, GET_PATIENT, pb.GetPatientRequest(name="patients/x"), token=forged
    )

    assert reply.grpc_status == UNAUTHENTICATED


@pytest.mark.parametrize(
    "path",
    [
        "/his.audit.v1.AuditService/ListAuditEvents",
        "/his.audit.v1.AuditService/WriteAuditEvents",
        "/his.iam.v1.IamService/CreateStaffMember",
        "/his.iam.v1.IamService/GetJwks",
        "/his.patient.v1.PatientService/ListResearchPatients",
    ],
)
async def test_rpcs_off_the_allow_list_are_refused_at_the_gateway(
    gateway: LocalGateway, issuer: Issuer, path: str
) -> None:
    # An administrator's and an auditor's token: the gateway refuses the rpc whoever calls.
    token = issuer.staff("ADMINISTRATOR", "AUDITOR")

    reply = await call(gateway.config.port, path, pb.GetPatientRequest(), token=token)

    assert reply.grpc_status == PERMISSION_DENIED
    assert "RBAC" in reply.grpc_message  # Envoy's refusal, not the service's


async def test_preflight_from_a_listed_origin_is_answered_for_grpc_web(
    gateway: LocalGateway,
) -> None:
    status, headers, _ = await http_request(
        gateway.config.port,
        "OPTIONS",
        GET_PATIENT,
        {
            "origin": LISTED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-grpc-web",
        },
    )

    assert status == 200
    assert headers["access-control-allow-origin"] == LISTED_ORIGIN
    allowed = headers["access-control-allow-headers"].split(",")
    assert {"authorization", "content-type", "x-grpc-web", "grpc-timeout"} <= set(allowed)
    assert "access-control-allow-credentials" not in headers


async def test_preflight_from_an_unlisted_origin_is_refused(gateway: LocalGateway) -> None:
    status, headers, _ = await http_request(
        gateway.config.port,
        "OPTIONS",
        GET_PATIENT,
        {"origin": "https://evil.example", "access-control-request-method": "POST"},
    )

    assert status == 405
    assert "access-control-allow-origin" not in headers


async def test_a_listed_origin_may_read_the_grpc_status_of_a_refusal(
    gateway: LocalGateway,
) -> None:
    reply = await call(
        gateway.config.port,
        GET_PATIENT,
        pb.GetPatientRequest(name="patients/x"),
        origin=LISTED_ORIGIN,
    )

    assert reply.grpc_status == UNAUTHENTICATED
    assert reply.headers["access-control-allow-origin"] == LISTED_ORIGIN
    exposed = reply.headers["access-control-expose-headers"].split(",")
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= set(exposed)


async def test_sign_in_is_reachable_without_a_token_and_rate_limited(
    gateway: LocalGateway,
) -> None:
    wrong = iam_pb.IssueTokenRequest(username="nobody.here", credential="wrong")

    replies = [
        await call(gateway.config.port, ISSUE_TOKEN, wrong) for _ in range(SIGN_IN_PER_MINUTE + 2)
    ]

    answers = [(reply.grpc_status, reply.grpc_message) for reply in replies]
    # iam itself answered the first ones (a wrong login), the gateway refused the rest.
    assert [status for status, _ in answers[:SIGN_IN_PER_MINUTE]] == [
        UNAUTHENTICATED
    ] * SIGN_IN_PER_MINUTE
    assert answers[SIGN_IN_PER_MINUTE:] == [(UNAVAILABLE, "local_rate_limited")] * 2


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/his.iam.v1.IamService/StartPatientSignIn", iam_pb.StartPatientSignInRequest()),
        ("/his.iam.v1.IamService/CompletePatientSignIn", iam_pb.CompletePatientSignInRequest()),
    ],
)
async def test_patient_sign_in_reaches_iam_without_a_token(
    gateway: LocalGateway, path: str, message: Message
) -> None:
    reply = await call(gateway.config.port, path, message)

    # iam's own answer (an error with its ErrorInfo details: bad input, or not open yet), not a
    # refusal of the gateway's, which has no details.
    assert reply.grpc_status != OK
    assert "grpc-status-details-bin" in {*reply.headers, *reply.trailers}
    assert "RBAC" not in reply.grpc_message
    assert "Jwt" not in reply.grpc_message


async def test_the_web_app_is_served_from_the_gateway_origin(
    gateway: LocalGateway, web_app_dir: Path
) -> None:
    port = gateway.config.port
    status, headers, body = await http_request(port, "GET", "/", {})
    assert status == 503
    assert b"not built" in body
    assert headers["content-type"] == "text/html; charset=utf-8"

    (web_app_dir / "assets").mkdir(parents=True)
    (web_app_dir / "index.html").write_text("<!doctype html><title>HIS</title>")
    (web_app_dir / "assets" / "app-1a2b.js").write_text("console.log('his')")
    await asyncio.sleep(0)

    status, headers, body = await http_request(port, "GET", "/", {})
    assert (status, body) == (200, b"<!doctype html><title>HIS</title>")
    assert headers["cache-control"] == "no-cache"
    status, headers, body = await http_request(port, "GET", "/appointments/new", {})
    assert (status, body) == (200, b"<!doctype html><title>HIS</title>")
    status, headers, _ = await http_request(port, "GET", "/assets/app-1a2b.js", {})
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert "immutable" in headers["cache-control"]
    status, _, _ = await http_request(port, "GET", "/assets/gone.js", {})
    assert status == 404
    # Envoy normalizes the dots away (or refuses); nothing outside the build is ever served.
    for outside in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/assets/../../x.js"):
        status, _, body = await http_request(port, "GET", outside, {})
        assert b"root:" not in body
        assert (outside, status) in ((outside, 200), (outside, 400), (outside, 404))


async def test_the_gateway_answers_on_both_loopback_addresses(gateway: LocalGateway) -> None:
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback on this machine")
    for host in ("127.0.0.1", "::1"):
        reader, writer = await asyncio.open_connection(host, gateway.config.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status.split()[0] == b"HTTP/1.1", host


async def test_envoy_admin_listens_on_loopback_only(gateway: LocalGateway) -> None:
    listeners = json.loads(gateway.bootstrap_path.read_text())["admin"]["address"]
    assert listeners["socket_address"]["address"] == "127.0.0.1"


async def test_a_token_in_the_url_is_not_taken(
    gateway: LocalGateway,
    patients: patient_service_pb2_grpc.PatientServiceAsyncStub,
    registrar_token: str,
) -> None:
    # Only the Authorization header carries a token: one in a URL ends up in logs and histories.
    patient = await create(patients)

    reply = await call(
        gateway.config.port,
        f"{GET_PATIENT}?access_token={registrar_token}",
        pb.GetPatientRequest(name=patient.name),
    )

    assert reply.grpc_status == UNAUTHENTICATED
