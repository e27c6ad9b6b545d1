"""Session fixtures: one real embedded PostgreSQL and real servers on free ports.

Nothing here is a mock: tests talk gRPC over TCP to the same servers `his serve` runs.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from his.audit.spec import SPEC as AUDIT
from his.billing.spec import SPEC as BILLING
from his.billing.v1 import billing_service_pb2_grpc
from his.emr.spec import SPEC as EMR
from his.emr.v1 import emr_service_pb2_grpc
from his.iam.spec import SPEC as IAM
from his.lab.spec import SPEC as LAB
from his.lab.v1 import lab_service_pb2_grpc
from his.orders.spec import SPEC as ORDERS
from his.orders.v1 import orders_service_pb2_grpc
from his.patient.spec import SPEC as PATIENT
from his.patient.v1 import patient_service_pb2_grpc
from his.pharmacy.spec import SPEC as PHARMACY
from his.pharmacy.v1 import pharmacy_service_pb2_grpc
from his.runtime.config import ServiceConfig, load
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.migrations import upgrade
from his.runtime.server import RunningService, start
from his.scheduling.spec import SPEC as SCHEDULING
from his.scheduling.v1 import scheduling_service_pb2_grpc
from tests.identity import ISSUER, REGISTRAR, Issuer, channel_as
from tests.support import free_port, track_relay

# Audit servers keep no checkpoint log and take no checkpoint by themselves unless a test says so:
# a log in the shared data directory would outlive each test database (and accuse the next one
# of losing checkpoints), and a timer would make tampering tests depend on timing.
TEST_ENV = {
    "HIS_PORT": "0",
    "HIS_METRICS_PORT": "-1",
    "HIS_GRACE_S": "2",
    "HIS_IAM_HTTP_PORT": "0",
    "HIS_AUDIT_CHECKPOINT_LOG": "",
    "HIS_AUDIT_CHECKPOINT_INTERVAL_S": "86400",
}


def service_config(service: str, **overrides: str) -> ServiceConfig:
    """A service's config for tests: any free port, no metrics endpoint, short grace, trusting
    the session's test issuer and speaking with its own service token."""
    return load(service, {**TEST_ENV, **ISSUER.service_env(service), **overrides})


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    """The test identity provider every server of the session trusts."""
    return ISSUER


@pytest.fixture(scope="session")
def registrar_token() -> str:
    """The token session channels send by default: a registrar (demographics and scheduling)."""
    return REGISTRAR


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """Embedded PostgreSQL 16 for the whole session, in a fresh data directory."""
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")) / "pgdata")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres: EmbeddedPostgres) -> str:
    """The URL of the session database, with every implemented schema migrated."""
    for service in (
        "patient",
        "scheduling",
        "audit",
        "iam",
        "emr",
        "orders",
        "lab",
        "pharmacy",
        "billing",
    ):
        upgrade(service, postgres.url)
    return postgres.url


def addresses(*running: RunningService) -> dict[str, str]:
    """HIS_<SERVICE>_ADDR settings pointing a service's clients at session servers."""
    return {f"HIS_{r.spec.name.upper()}_ADDR": r.address for r in running}


@pytest.fixture(scope="session")
async def audit_service(database_url: str) -> AsyncIterator[RunningService]:
    """The audit service on a free port: every other session service audits through it."""
    running = await start(AUDIT, service_config("audit"), database_url)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
async def patient_service(
    database_url: str, audit_service: RunningService, scheduling_port: int, iam_port: int
) -> AsyncIterator[RunningService]:
    """The patient service on a free port, auditing through the session's audit service,
    delivering patient states to the session's scheduling port and asking the session's iam port
    for break-the-glass grants. `delivered()` waits for its audit events only: a session need not
    run scheduling (its events then wait in the outbox)."""
    config = service_config(
        "patient",
        **addresses(audit_service),
        HIS_SCHEDULING_ADDR=f"localhost:{scheduling_port}",
        HIS_IAM_ADDR=f"localhost:{iam_port}",
    )
    running = await start(PATIENT, config, database_url)
    track_relay(running, ("audit",))
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
async def patient_channel(
    patient_service: RunningService, registrar_token: str
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the patient service, calling as a registrar unless a call says otherwise."""
    async with channel_as(patient_service.address, registrar_token) as channel:
        yield channel


@pytest.fixture(scope="session")
def patients(
    patient_channel: grpc.aio.Channel,
) -> patient_service_pb2_grpc.PatientServiceAsyncStub:
    """The patient service stub."""
    return patient_service_pb2_grpc.PatientServiceStub(patient_channel)


# The development seed of the session iam (its bootstrap administrator's known credential), and
# its service login key.
DEV_CREDENTIAL = "session-dev-credential"
SERVICE_CREDENTIAL_KEY = "session-service-credential-key"


@pytest.fixture(scope="session")
def iam_port() -> int:
    """The port the session's iam service will listen on: patient, which starts first (iam checks
    a grant's patient there), asks iam there for the grants of clinicians with no relationship."""
    return free_port()


@pytest.fixture(scope="session")
async def iam_service(
    database_url: str, patient_service: RunningService, audit_service: RunningService, iam_port: int
) -> AsyncIterator[RunningService]:
    """The iam service, signing with the test issuer's key (its tokens are trusted everywhere);
    break-the-glass grants may be as short as one second."""
    config = service_config(
        "iam",
        **addresses(patient_service, audit_service),
        HIS_PORT=str(iam_port),
        HIS_IAM_SIGNING_KEYS=str(ISSUER.signing_key_path),
        HIS_IAM_DEV_CREDENTIAL=DEV_CREDENTIAL,
        HIS_SERVICE_CREDENTIAL_KEY=SERVICE_CREDENTIAL_KEY,
        HIS_IAM_EMERGENCY_MIN_S="1",
        # Every test calls from localhost: the source lockout (tests/iam) must not reach them.
        HIS_IAM_LOGIN_FAILURES_PER_SOURCE="100000",
    )
    running = await start(IAM, config, database_url)
    track_relay(running)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
def scheduling_port() -> int:
    """The port the session's scheduling service will listen on: emr, which starts first (check-ins
    are delivered to it), calls scheduling there."""
    return free_port()


@pytest.fixture(scope="session")
async def emr_service(
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
    scheduling_port: int,
) -> AsyncIterator[RunningService]:
    """The emr service on a free port, calling the session's patient, audit, iam and scheduling."""
    config = service_config(
        "emr",
        **addresses(patient_service, audit_service, iam_service),
        HIS_SCHEDULING_ADDR=f"localhost:{scheduling_port}",
    )
    running = await start(EMR, config, database_url)
    track_relay(running)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
async def emr_channel(
    emr_service: RunningService, scheduling_service: RunningService, registrar_token: str
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the emr service (calls set their own clinician's token); scheduling, which emr
    asks about appointments, runs too."""
    async with channel_as(emr_service.address, registrar_token) as channel:
        yield channel


@pytest.fixture(scope="session")
def emr(emr_channel: grpc.aio.Channel) -> emr_service_pb2_grpc.EmrServiceAsyncStub:
    """The emr service stub."""
    return emr_service_pb2_grpc.EmrServiceStub(emr_channel)


@pytest.fixture(scope="session")
async def scheduling_service(
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
    emr_service: RunningService,
    billing_server: RunningService,
    scheduling_port: int,
) -> AsyncIterator[RunningService]:
    """The scheduling service, calling the session's patient, audit and iam, and delivering
    check-ins to its emr and its billing (its relay is drained by `delivered()`, so both run)."""
    config = service_config(
        "scheduling",
        **addresses(patient_service, audit_service, iam_service, emr_service, billing_server),
        HIS_PORT=str(scheduling_port),
    )
    running = await start(SCHEDULING, config, database_url)
    track_relay(running)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
async def scheduling_channel(
    scheduling_service: RunningService, registrar_token: str
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the scheduling service, calling as a registrar unless a call says otherwise."""
    async with channel_as(scheduling_service.address, registrar_token) as channel:
        yield channel


@pytest.fixture(scope="session")
def scheduling(
    scheduling_channel: grpc.aio.Channel,
) -> scheduling_service_pb2_grpc.SchedulingServiceAsyncStub:
    """The scheduling service stub."""
    return scheduling_service_pb2_grpc.SchedulingServiceStub(scheduling_channel)


# --- the order loop: orders, lab and pharmacy deliver events to each other through their relays,
# so each one's peers are named by a port reserved for the session before any of them starts.


@pytest.fixture(scope="session")
def orders_port() -> int:
    """The port the session's orders service listens on (lab and pharmacy deliver to it)."""
    return free_port()


@pytest.fixture(scope="session")
def lab_port() -> int:
    """The port the session's lab service listens on (orders delivers lab orders to it)."""
    return free_port()


@pytest.fixture(scope="session")
def pharmacy_port() -> int:
    """The port the session's pharmacy service listens on (orders delivers prescriptions to it)."""
    return free_port()


# --- orders fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def orders_service(
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
    emr_service: RunningService,
    orders_port: int,
    lab_port: int,
    pharmacy_port: int,
    billing_port: int,
) -> AsyncIterator[RunningService]:
    """The orders service on its reserved port, calling the session's patient, audit, iam and
    emr, and the lab, pharmacy and billing at their reserved ports (its relay delivers lab orders
    and prescriptions there, and completed lab orders to billing; while nothing listens, they
    wait in its outbox). Its relay is not among the session's drained ones for that reason:
    `delivered()` would wait on a lab that may not run."""
    config = service_config(
        "orders",
        **addresses(patient_service, audit_service, iam_service, emr_service),
        HIS_PORT=str(orders_port),
        HIS_LAB_ADDR=f"localhost:{lab_port}",
        HIS_PHARMACY_ADDR=f"localhost:{pharmacy_port}",
        HIS_BILLING_ADDR=f"localhost:{billing_port}",
    )
    running = await start(ORDERS, config, database_url)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
async def orders_channel(
    orders_service: RunningService,
    emr_service: RunningService,
    registrar_token: str,
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the orders service (calls set their own clinician's token)."""
    async with channel_as(orders_service.address, registrar_token) as channel:
        yield channel


@pytest.fixture(scope="session")
def orders(orders_channel: grpc.aio.Channel) -> orders_service_pb2_grpc.OrdersServiceAsyncStub:
    """The orders service stub."""
    return orders_service_pb2_grpc.OrdersServiceStub(orders_channel)


# --- lab fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def lab_service(
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
    lab_port: int,
    orders_service: RunningService,
) -> AsyncIterator[RunningService]:
    """The lab service on its session port, calling the session's patient, audit and iam, and
    delivering issued reports to the session's orders service."""
    config = service_config(
        "lab",
        **addresses(patient_service, audit_service, iam_service),
        HIS_PORT=str(lab_port),
        **addresses(orders_service),
    )
    running = await start(LAB, config, database_url)
    track_relay(running)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
async def lab_channel(
    lab_service: RunningService, registrar_token: str
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the lab service (calls set their own caller's token)."""
    async with channel_as(lab_service.address, registrar_token) as channel:
        yield channel


@pytest.fixture(scope="session")
def lab(lab_channel: grpc.aio.Channel) -> lab_service_pb2_grpc.LabServiceAsyncStub:
    """The lab service stub."""
    return lab_service_pb2_grpc.LabServiceStub(lab_channel)


# --- pharmacy fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def pharmacy_service(
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
    emr_service: RunningService,
    pharmacy_port: int,
    orders_service: RunningService,
    billing_server: RunningService,
) -> AsyncIterator[RunningService]:
    """The pharmacy service on its reserved port, auditing through the session's audit service,
    asking iam about locations, emr about encounters and patient about consents, and delivering
    dispense changes to the session's orders and hand-overs to its billing (its relay is drained
    by `delivered()`, so both run)."""
    config = service_config(
        "pharmacy",
        **addresses(patient_service, audit_service, iam_service, emr_service),
        HIS_PORT=str(pharmacy_port),
        **addresses(orders_service, billing_server),
    )
    running = await start(PHARMACY, config, database_url)
    track_relay(running)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
async def pharmacy_channel(
    pharmacy_service: RunningService, registrar_token: str
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the pharmacy service (calls set their own pharmacist's or clinician's token)."""
    async with channel_as(pharmacy_service.address, registrar_token) as channel:
        yield channel


@pytest.fixture(scope="session")
def pharmacy(
    pharmacy_channel: grpc.aio.Channel,
) -> pharmacy_service_pb2_grpc.PharmacyServiceAsyncStub:
    """The pharmacy service stub."""
    return pharmacy_service_pb2_grpc.PharmacyServiceStub(pharmacy_channel)


# --- billing fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def billing_port() -> int:
    """The port the session's billing service listens on (scheduling, orders and pharmacy
    deliver their charging events to it)."""
    return free_port()


@pytest.fixture(scope="session")
async def billing_server(
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
    scheduling_port: int,
    orders_port: int,
    pharmacy_port: int,
    billing_port: int,
) -> AsyncIterator[RunningService]:
    """The billing service on its reserved port, auditing through the session's audit service,
    asking patient whether a manually charged patient exists, and scheduling, orders and
    pharmacy what they rendered (ReconcileCharges) at their reserved ports. Those deliver their
    charging events to it, so they start after it: tests use `billing_service`, which waits for
    them too."""
    config = service_config(
        "billing",
        **addresses(patient_service, audit_service, iam_service),
        HIS_SCHEDULING_ADDR=f"localhost:{scheduling_port}",
        HIS_ORDERS_ADDR=f"localhost:{orders_port}",
        HIS_PHARMACY_ADDR=f"localhost:{pharmacy_port}",
        HIS_PORT=str(billing_port),
    )
    running = await start(BILLING, config, database_url)
    track_relay(running)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
def billing_service(
    billing_server: RunningService,
    scheduling_service: RunningService,
    orders_service: RunningService,
    pharmacy_service: RunningService,
) -> RunningService:
    """The session's billing service, with scheduling, orders and pharmacy (which it asks when
    it reconciles, and which deliver their events to it) running too."""
    return billing_server


@pytest.fixture(scope="session")
async def billing_channel(
    billing_service: RunningService, registrar_token: str
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the billing service (calls set their own clerk's or service's token)."""
    async with channel_as(billing_service.address, registrar_token) as channel:
        yield channel


@pytest.fixture(scope="session")
def billing(
    billing_channel: grpc.aio.Channel,
) -> billing_service_pb2_grpc.BillingServiceAsyncStub:
    """The billing service stub."""
    return billing_service_pb2_grpc.BillingServiceStub(billing_channel)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_RUN = re.compile(r"[A-Za-z0-9_-]{24,}")


def _random_looking(run: str) -> bool:
    return (
        any(c.isupper() for c in run)
        and any(c.islower() for c in run)
        and any(c.isdigit() for c in run)
    )


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Test ids without the random parts of a parameter (a fresh uuid, random token bytes):
    pytest-xdist's workers each collect the suite and must find the same ids."""
    if not isinstance(val, str):
        return None
    stable = _UUID.sub("uuid", val)
    stable = _RUN.sub(lambda m: "random" if _random_looking(m.group()) else m.group(), stable)
    return None if stable == val else stable
