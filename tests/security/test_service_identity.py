"""One identity per service (issue 17, ADR 0007), against running servers.

A pod holds only its own credential: with patient's it gets patient's token and nobody else's.
In the mesh a service's token follows its mTLS principal: iam issues it only to that principal,
and every server accepts it only from that principal. The principal reaches the app in the
header the Istio sidecar sets (`x-forwarded-client-cert`); these tests send it as the sidecar would,
to a real iam started as it runs in the mesh.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import jwt
import pytest

from his.base.catalog import implemented
from his.base.env import ConfigError
from his.iam.spec import SPEC as IAM
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.runtime.config import load
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.peer_identity import DEFAULT_PREFIX, XFCC
from his.runtime.security import own_token_source
from his.runtime.server import RunningService, start
from his_client.credentials import CALLER, service_credential
from tests.conftest import DEV_CREDENTIAL, SERVICE_CREDENTIAL_KEY, addresses, service_config
from tests.identity import ISSUER, metadata
from tests.support import fails, fresh_database

KEY = SERVICE_CREDENTIAL_KEY.encode()
SERVICES = sorted(entry.name for entry in implemented())
OTHERS = [name for name in SERVICES if name != "patient"]


def own(service: str) -> str:
    """The credential `his up` (or the service's own Secret) hands `service`."""
    return service_credential(KEY, service)


def sidecar(*services: str) -> tuple[str, str]:
    """The XFCC header an Istio sidecar hands the app: one element per hop, the last its own."""
    elements = [
        f'By={DEFAULT_PREFIX}iam;Hash=00ff;Subject="";URI={DEFAULT_PREFIX}{name}'
        for name in services
    ]
    return (XFCC, ",".join(elements))


def subject(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


async def login(
    stub: iam_grpc.IamServiceAsyncStub,
    service: str,
    credential: str,
    headers: tuple[tuple[str, str], ...] = (),
) -> str:
    reply = await stub.IssueToken(
        iam_pb.IssueTokenRequest(username=f"service:{service}", credential=credential),
        metadata=headers,
        timeout=10,
    )
    return reply.access_token


# --- a pod holds only its own credential (as `his up` and Kubernetes hand them out) ----------


@pytest.fixture(scope="module")
async def iam(iam_service: RunningService) -> AsyncIterator[iam_grpc.IamServiceAsyncStub]:
    """The session's iam, which holds the key of every service credential."""
    async with grpc.aio.insecure_channel(iam_service.address) as channel:
        yield iam_grpc.IamServiceStub(channel)


async def test_a_pod_with_patients_credential_gets_patients_token(
    iam: iam_grpc.IamServiceAsyncStub,
) -> None:
    # The runtime's own path: the patient service's settings, as its Secret gives them.
    config = load("patient", {"HIS_SERVICE_CREDENTIAL": own("patient"), "HIS_PORT": "0"})
    source = own_token_source(config.auth, "patient", lambda: iam)
    assert source is not None

    assert subject(await source()) == "services/patient"


@pytest.mark.parametrize("other", OTHERS)
async def test_patients_credential_cannot_get_another_services_token(
    iam: iam_grpc.IamServiceAsyncStub, other: str
) -> None:
    failure = await fails(login(iam, other, own("patient")))

    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "INVALID_CREDENTIALS"


async def test_a_service_other_than_iam_refuses_to_start_with_the_credential_key() -> None:
    with pytest.raises(ConfigError, match="HIS_SERVICE_CREDENTIAL_KEY is for iam alone"):
        load("patient", {"HIS_SERVICE_CREDENTIAL_KEY": SERVICE_CREDENTIAL_KEY})
    assert load("iam", {"HIS_SERVICE_CREDENTIAL_KEY": SERVICE_CREDENTIAL_KEY}).name == "iam"


# --- in the mesh: a service's token follows its mTLS principal ------------------------------


@pytest.fixture(scope="module")
async def meshed_iam(
    postgres: EmbeddedPostgres, patient_service: RunningService, audit_service: RunningService
) -> AsyncIterator[iam_grpc.IamServiceAsyncStub]:
    """An iam configured as in the mesh (HIS_AUTH_SERVICE_PEERS, the default with
    HIS_MESH=istio), on a database of its own."""
    url = await fresh_database(postgres.url, "his_service_identity", "iam")
    config = service_config(
        "iam",
        **addresses(patient_service, audit_service),
        HIS_IAM_SIGNING_KEYS=str(ISSUER.signing_key_path),
        HIS_IAM_DEV_CREDENTIAL=DEV_CREDENTIAL,
        HIS_SERVICE_CREDENTIAL_KEY=SERVICE_CREDENTIAL_KEY,
        HIS_AUTH_SERVICE_PEERS=DEFAULT_PREFIX,
    )
    running = await start(IAM, config, url)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            yield iam_grpc.IamServiceStub(channel)
    finally:
        await running.stop(grace_s=1)


async def test_iam_issues_a_services_token_to_that_services_principal(
    meshed_iam: iam_grpc.IamServiceAsyncStub,
) -> None:
    token = await login(meshed_iam, "patient", own("patient"), (sidecar("patient"),))

    assert subject(token) == "services/patient"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param((sidecar("orders"),), id="from orders' pod"),
        pytest.param((), id="no mTLS principal"),
        # A header the caller wrote itself ends before the sidecar's element: only that counts.
        pytest.param((sidecar("patient", "orders"),), id="forged earlier element"),
    ],
)
async def test_a_stolen_credential_is_refused_from_another_pod(
    meshed_iam: iam_grpc.IamServiceAsyncStub, headers: tuple[tuple[str, str], ...]
) -> None:
    failure = await fails(login(meshed_iam, "patient", own("patient"), headers))

    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "SERVICE_PEER_MISMATCH"


async def test_a_wrong_credential_learns_nothing_about_principals(
    meshed_iam: iam_grpc.IamServiceAsyncStub,
) -> None:
    failure = await fails(login(meshed_iam, "audit", own("patient"), (sidecar("audit"),)))

    assert failure.reason == "INVALID_CREDENTIALS"


async def _list_departments(
    stub: iam_grpc.IamServiceAsyncStub, headers: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    try:
        await stub.ListDepartments(iam_pb.ListDepartmentsRequest(), metadata=headers, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_token_of_service_a_presented_by_service_b_is_refused(
    meshed_iam: iam_grpc.IamServiceAsyncStub,
) -> None:
    patient = await login(meshed_iam, "patient", own("patient"), (sidecar("patient"),))

    failure = await fails(
        meshed_iam.ListDepartments(
            iam_pb.ListDepartmentsRequest(),
            metadata=(*metadata(patient), sidecar("scheduling")),
            timeout=10,
        )
    )

    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "SERVICE_PEER_MISMATCH"
    # From its own pod the same token passes authentication.
    own_pod = await _list_departments(meshed_iam, (*metadata(patient), sidecar("patient")))
    assert own_pod != grpc.StatusCode.UNAUTHENTICATED


async def test_a_relaying_services_token_must_come_from_that_service(
    meshed_iam: iam_grpc.IamServiceAsyncStub,
) -> None:
    person = ISSUER.token(f"staff/{uuid.uuid4()}", ("REGISTRAR",))
    patient = ISSUER.service("patient")
    relayed = (*metadata(person), (CALLER, f"Bearer {patient}"))

    failure = await fails(
        meshed_iam.ListDepartments(
            iam_pb.ListDepartmentsRequest(), metadata=(*relayed, sidecar("billing")), timeout=10
        )
    )

    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "SERVICE_PEER_MISMATCH"
    assert await _list_departments(meshed_iam, (*relayed, sidecar("patient"))) == (
        grpc.StatusCode.OK
    )


async def test_a_persons_token_is_not_bound_to_a_workload(
    meshed_iam: iam_grpc.IamServiceAsyncStub,
) -> None:
    # The mobile gateway and relaying services carry people's tokens from their own pods.
    person = ISSUER.token(f"staff/{uuid.uuid4()}", ("REGISTRAR",))

    code = await _list_departments(meshed_iam, (*metadata(person), sidecar("mobile-gateway")))

    assert code == grpc.StatusCode.OK
