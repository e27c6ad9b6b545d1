"""Fixtures of the iam tests: an iam service on its own database, with two signing keys (the first
signs, the second is retired but published), a development credential and a service key.

The iam server trusts the session's test issuer (tests/identity.py) for the tokens of its callers,
so a test can be any staff member; tokens iam itself issues are checked with PyJWT against its
own JWKS. Emergency access grants ask the session's patient service and audit through the
session's audit service, both real servers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.iam.config import IamConfig, SignInConfig, StaffLoginConfig
from his.iam.service import IamService
from his.iam.spec import SPEC as IAM
from his.iam.v1 import iam_service_pb2 as pb
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService, ServiceResources, ServiceSpec, start
from tests import support
from tests.conftest import addresses, service_config
from tests.iam.helpers import DEV_CREDENTIAL, LOCAL_ISSUER, SERVICE_KEY, Stub, service_credential
from tests.identity import Issuer, channel_as
from tests.support import track_relay

# The patient sign-in settings of the iam under test.
# Staff logins lock after 3 failures for one username; a source's limit is out of the way of the
# other tests (which all call from localhost) and tested on a server of its own.
LOGIN_LIMITS = StaffLoginConfig(window_s=600, failures_per_user=3, failures_per_source=10_000)
SIGN_IN_LIMITS = SignInConfig(
    window_s=600,
    starts_per_phone=3,
    starts_per_source=6,
    failures_per_phone=3,
    failures_per_source=6,
)


async def fresh_database(postgres: EmbeddedPostgres, name: str) -> str:
    """A new database `name` in the session's PostgreSQL with the iam schema migrated."""
    return await support.fresh_database(postgres.url, name, "iam")


def write_key(path: Path) -> Path:
    """A new RSA-2048 private key in PEM at `path`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def iam_spec(config: IamConfig) -> ServiceSpec:
    """The iam service spec with explicit settings instead of the process environment."""

    def make(resources: ServiceResources) -> IamService:
        return IamService(resources, config)

    return dataclasses.replace(IAM, make_servicer=make)


@pytest.fixture(scope="session")
def iam_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two signing keys: the current one and a retired one."""
    directory = tmp_path_factory.mktemp("iam-keys")
    return write_key(directory / "current.pem"), write_key(directory / "retired.pem")


@pytest.fixture(scope="session")
def make_iam_config(
    iam_keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., IamConfig]:
    """IamConfig of the tests, with any field overridden."""
    data_dir = tmp_path_factory.mktemp("iam-data")

    def make(**overrides: object) -> IamConfig:
        values: dict[str, object] = {
            "signing_key_paths": iam_keys,
            "issuer": LOCAL_ISSUER,
            "audience": "his",
            "token_ttl_s": 600,
            "dev_credential": DEV_CREDENTIAL,
            "service_credential_key": SERVICE_KEY,
            "emergency_min_s": 1,
            "data_dir": data_dir,
            # Small limits, so the sign-in tests reach them in a few calls (each test uses its
            # own phone numbers and sources).
            "sign_in": SIGN_IN_LIMITS,
            "login": LOGIN_LIMITS,
            **overrides,
        }
        return IamConfig(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
async def iam_url(postgres: EmbeddedPostgres) -> str:
    """The iam tests' own database: row counts and the bootstrap administrator are theirs."""
    return await fresh_database(postgres, "his_iam_tests")


@pytest.fixture(scope="session")
async def iam_server(
    iam_url: str,
    make_iam_config: Callable[..., IamConfig],
    patient_service: RunningService,
    audit_service: RunningService,
) -> AsyncIterator[RunningService]:
    """The iam under test (not the session's `iam_service`): its own database and keys, asking
    the session's patient and audit services."""
    config = service_config("iam", **addresses(patient_service, audit_service))
    running = await start(iam_spec(make_iam_config()), config, iam_url)
    track_relay(running)
    async with grpc.aio.insecure_channel(running.address) as channel:
        # As under `his up`, a service logs in first: the bootstrap administrator exists from here.
        await pb_grpc.IamServiceStub(channel).IssueToken(
            pb.IssueTokenRequest(
                username="service:patient", credential=service_credential("patient")
            )
        )
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
async def iam_db(iam_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the iam database, to count rows behind the API's back."""
    engine = create_async_engine(async_url(iam_url), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def admin_token(issuer: Issuer) -> str:
    """An ADMINISTRATOR's token (a staff id iam does not know: roles are what count)."""
    return issuer.staff("ADMINISTRATOR")


@pytest.fixture(scope="session")
async def iam(iam_server: RunningService, admin_token: str) -> AsyncIterator[Stub]:
    """The iam service as an administrator calls it (other callers pass their own metadata)."""
    async with channel_as(iam_server.address, admin_token) as channel:
        yield pb_grpc.IamServiceStub(channel)
