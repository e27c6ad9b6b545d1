"""Authentication: every call proves its caller with an RS256 bearer token from a trusted issuer.

The first part talks to the session's real patient service (the runtime's authentication
interceptor with a JWKS file key source); the second drives `TokenVerifier` directly with a key
source whose fetches are counted, for key rotation, refetch limits, key outages and the cache.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from his.base.errors import Unauthenticated, Unavailable
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime import tokens
from his.runtime.config import AuthConfig
from his.runtime.health import SERVING, probe
from his.runtime.server import RunningService
from his.runtime.tokens import TokenVerifier
from tests.identity import AUDIENCE, ISSUER, ISSUER_URL, REGISTRAR, Issuer, metadata
from tests.patient.helpers import Stub, create
from tests.support import RpcFailure, fails

Metadata = tuple[tuple[str, str], ...]


def _missing_patient() -> pb.GetPatientRequest:
    # A well-formed name of no patient: an authenticated registrar gets NOT_FOUND, so any
    # UNAUTHENTICATED answer below comes from authentication and nothing else.
    return pb.GetPatientRequest(name=f"patients/{uuid.uuid4()}")


async def _refused(patients: Stub, md: Metadata) -> RpcFailure:
    failure = await fails(patients.GetPatient(_missing_patient(), metadata=md))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED, failure
    return failure


def _claims(subject: str = "", roles: tuple[str, ...] = ("REGISTRAR",)) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER_URL,
        "aud": AUDIENCE,
        "sub": subject or f"staff/{uuid.uuid4()}",
        "preferred_username": "someone",
        "roles": list(roles),
        "departments": [],
        "iat": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
    }


def _signed(claims: Mapping[str, Any], key_pem: bytes, kid: str) -> str:
    return jwt.encode(dict(claims), key_pem, algorithm="RS256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _handmade(header: Mapping[str, Any], claims: Mapping[str, Any], secret: bytes | None) -> str:
    """A JWT assembled by hand (PyJWT refuses to make the forgeries an attacker would)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b""
    if secret is not None:
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _public_pem(issuer: Issuer) -> bytes:
    document = json.loads(issuer.jwks_path.read_text(encoding="utf-8"))
    public = jwt.algorithms.RSAAlgorithm.from_jwk(document["keys"][0])
    assert isinstance(public, rsa.RSAPublicKey)
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- through the real patient service -------------------------------------------------------


async def test_a_call_without_any_token_is_missing_credentials(
    patient_service: RunningService,
) -> None:
    async with grpc.aio.insecure_channel(patient_service.address) as channel:
        stub: Stub = pb_grpc.PatientServiceStub(channel)
        failure = await fails(stub.GetPatient(_missing_patient()))

    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "MISSING_CREDENTIALS"


@pytest.mark.parametrize(
    "value",
    ["Basic x", "Bearer ", "Bearer", "Token abc", "bearer-" + "x" * 20],
    ids=["basic", "bearer-empty", "bearer-only", "other-scheme", "no-space"],
)
async def test_authorization_that_is_not_a_bearer_token_is_invalid(
    patients: Stub, value: str
) -> None:
    failure = await _refused(patients, (("authorization", value),))

    assert failure.reason == "INVALID_TOKEN"


@pytest.mark.parametrize("scheme", ["Basic", "Token", "MAC"])
async def test_a_valid_token_under_another_scheme_is_invalid(patients: Stub, scheme: str) -> None:
    failure = await _refused(patients, (("authorization", f"{scheme} {REGISTRAR}"),))

    assert failure.reason == "INVALID_TOKEN"


async def test_the_bearer_scheme_name_is_case_insensitive(patients: Stub) -> None:
    md = (("authorization", f"bEARER {REGISTRAR}"),)

    failure = await fails(patients.GetPatient(_missing_patient(), metadata=md))

    assert failure.code == grpc.StatusCode.NOT_FOUND, failure


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.AAAA"])
async def test_a_token_that_is_not_a_signed_jwt_is_invalid(patients: Stub, garbage: str) -> None:
    failure = await _refused(patients, metadata(garbage))

    assert failure.reason == "INVALID_TOKEN"


async def test_an_expired_token_beyond_the_leeway_is_token_expired(patients: Stub) -> None:
    token = ISSUER.token(f"staff/{uuid.uuid4()}", ("REGISTRAR",), ttl_s=-120)

    failure = await _refused(patients, metadata(token))

    assert failure.reason == "TOKEN_EXPIRED"


async def test_a_token_expired_within_the_leeway_is_still_accepted(patients: Stub) -> None:
    token = ISSUER.token(f"staff/{uuid.uuid4()}", ("REGISTRAR",), ttl_s=-5)

    failure = await fails(patients.GetPatient(_missing_patient(), metadata=metadata(token)))

    assert failure.code == grpc.StatusCode.NOT_FOUND, failure


@pytest.mark.parametrize(
    ("issuer", "audience"),
    [("https://evil.example", AUDIENCE), (ISSUER_URL, "another-system")],
    ids=["wrong-issuer", "wrong-audience"],
)
async def test_a_token_from_another_issuer_or_for_another_audience_is_invalid(
    patients: Stub, issuer: str, audience: str
) -> None:
    token = ISSUER.token(f"staff/{uuid.uuid4()}", ("REGISTRAR",), issuer=issuer, audience=audience)

    failure = await _refused(patients, metadata(token))

    assert failure.reason == "INVALID_TOKEN"


async def test_a_token_signed_by_another_key_under_the_trusted_key_id_is_invalid(
    patients: Stub, tmp_path: Path
) -> None:
    other = Issuer(tmp_path)
    assert other.kid != ISSUER.kid  # the key id is the key's own thumbprint
    claims = _claims()
    genuine = _signed(claims, ISSUER.signing_key_path.read_bytes(), ISSUER.kid)
    forged = _signed(claims, other.signing_key_path.read_bytes(), ISSUER.kid)

    failure = await _refused(patients, metadata(forged))
    accepted = await fails(patients.GetPatient(_missing_patient(), metadata=metadata(genuine)))

    assert failure.reason == "INVALID_TOKEN"
    assert accepted.code == grpc.StatusCode.NOT_FOUND, accepted


async def test_a_token_signed_by_an_untrusted_key_under_its_own_key_id_is_invalid(
    patients: Stub, tmp_path: Path
) -> None:
    other = Issuer(tmp_path)

    failure = await _refused(patients, metadata(other.staff("REGISTRAR")))

    assert failure.reason == "INVALID_TOKEN"


@pytest.mark.parametrize("alg", ["HS256", "none"])
async def test_a_token_with_another_algorithm_is_invalid(patients: Stub, alg: str) -> None:
    header = {"alg": alg, "typ": "JWT", "kid": ISSUER.kid}
    # HS256 keyed with the published public key: the classic algorithm-confusion forgery.
    secret = _public_pem(ISSUER) if alg == "HS256" else None

    failure = await _refused(patients, metadata(_handmade(header, _claims(), secret)))

    assert failure.reason == "INVALID_TOKEN"


@pytest.mark.parametrize("subject", ["patient/123", "staffer/1", "users/staff/1", "admin"])
async def test_a_subject_that_is_neither_staff_a_patient_nor_a_service_is_invalid(
    patients: Stub, subject: str
) -> None:
    failure = await _refused(patients, metadata(ISSUER.token(subject, ("ADMINISTRATOR",))))

    assert failure.reason == "INVALID_TOKEN"


@pytest.mark.parametrize(
    ("subject", "roles"),
    [
        ("staff/7", ("SERVICE",)),  # a person carrying a service's role
        ("services/patient", ("DOCTOR",)),  # a service carrying a person's role
        ("services/patient", ("SERVICE", "DOCTOR")),
        ("services/patient", ()),
        # A patient is exactly PATIENT, and nobody else ever holds it.
        ("patients/123", ("ADMINISTRATOR",)),
        ("patients/123", ("PATIENT", "DOCTOR")),
        ("patients/123", ("PATIENT", "SERVICE")),
        ("patients/123", ()),
        ("staff/7", ("PATIENT",)),
        ("staff/7", ("REGISTRAR", "PATIENT")),
        ("services/patient", ("PATIENT",)),
    ],
)
async def test_roles_that_do_not_fit_the_subject_are_invalid(
    patients: Stub, subject: str, roles: tuple[str, ...]
) -> None:
    failure = await _refused(patients, metadata(ISSUER.token(subject, roles)))

    assert failure.reason == "INVALID_TOKEN"


async def test_a_patient_token_with_departments_is_invalid(patients: Stub) -> None:
    token = ISSUER.token("patients/123", ("PATIENT",), departments=("departments/1",))
    failure = await _refused(patients, metadata(token))

    assert failure.reason == "INVALID_TOKEN"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "iss", "aud"])
async def test_a_token_without_a_required_claim_is_invalid(patients: Stub, claim: str) -> None:
    claims = _claims()
    del claims[claim]

    token = _signed(claims, ISSUER.signing_key_path.read_bytes(), ISSUER.kid)
    failure = await _refused(patients, metadata(token))

    assert failure.reason == "INVALID_TOKEN"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_a_token_not_valid_until_later_is_invalid(patients: Stub, claim: str) -> None:
    later = int(time.time()) + 3600
    token = ISSUER.token(f"staff/{uuid.uuid4()}", ("REGISTRAR",), extra={claim: later})

    failure = await _refused(patients, metadata(token))

    assert failure.reason == "INVALID_TOKEN"


@pytest.mark.parametrize(
    "extra",
    [{"roles": "REGISTRAR"}, {"roles": [1]}, {"departments": "departments/1"}],
    ids=["roles-string", "roles-not-names", "departments-string"],
)
async def test_malformed_roles_or_departments_make_the_token_invalid(
    patients: Stub, extra: dict[str, Any]
) -> None:
    token = ISSUER.token(f"staff/{uuid.uuid4()}", ("REGISTRAR",), extra=extra)

    failure = await _refused(patients, metadata(token))

    assert failure.reason == "INVALID_TOKEN"


async def test_a_relaying_caller_header_with_a_staff_token_is_invalid(patients: Stub) -> None:
    person = ISSUER.staff("REGISTRAR")
    md = (*metadata(person), ("x-his-caller", f"Bearer {ISSUER.staff('REGISTRAR')}"))

    failure = await _refused(patients, md)

    assert failure.reason == "INVALID_TOKEN"


@pytest.mark.parametrize(
    ("relay", "reason"),
    [
        ("Basic x", "INVALID_TOKEN"),
        ("Bearer not-a-jwt", "INVALID_TOKEN"),
        (f"Bearer {ISSUER.service('scheduling', ttl_s=-120)}", "TOKEN_EXPIRED"),
    ],
    ids=["not-bearer", "garbage", "expired"],
)
async def test_a_relaying_caller_header_must_itself_be_a_valid_token(
    patients: Stub, relay: str, reason: str
) -> None:
    md = (*metadata(ISSUER.staff("REGISTRAR")), ("x-his-caller", relay))

    failure = await _refused(patients, md)

    assert failure.reason == reason


async def test_a_person_relayed_by_a_service_token_is_accepted(patients: Stub) -> None:
    patient = await create(patients)
    md = (
        *metadata(ISSUER.staff("REGISTRAR")),
        ("x-his-caller", f"Bearer {ISSUER.service('scheduling')}"),
    )

    read = await patients.GetPatient(pb.GetPatientRequest(name=patient.name), metadata=md)

    assert read.name == patient.name


async def test_health_check_needs_no_token(patient_service: RunningService) -> None:
    async with grpc.aio.insecure_channel(patient_service.address) as channel:
        status = await probe(channel, "his.patient.v1.PatientService", timeout_s=5)

    assert status == SERVING


async def test_a_valid_token_is_accepted_again_on_the_next_call(patients: Stub) -> None:
    patient = await create(patients)
    token = ISSUER.staff("REGISTRAR")
    request = pb.GetPatientRequest(name=patient.name)

    first = await patients.GetPatient(request, metadata=metadata(token))
    second = await patients.GetPatient(request, metadata=metadata(token))

    assert first.name == second.name == patient.name


# --- TokenVerifier with a counted key source ------------------------------------------------


class KeySource:
    """A JWKS source publishing the keys of some issuers; counts fetches, can be broken."""

    def __init__(self, *issuers: Issuer) -> None:
        self.issuers = list(issuers)
        self.fetches = 0
        self.error: Exception | None = None

    async def __call__(self) -> Mapping[str, Any]:
        self.fetches += 1
        await asyncio.sleep(0.01)  # a fetch goes over the network: other calls run meanwhile
        if self.error is not None:
            raise self.error
        keys = []
        for issuer in self.issuers:
            keys.extend(json.loads(issuer.jwks_path.read_text(encoding="utf-8"))["keys"])
        return {"keys": keys}


class Clock:
    """`time.monotonic`/`time.time` for the verifier module, moved on by hand."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The verifier's clock (only its module sees it; the event loop keeps the real one)."""
    fake = Clock()
    monkeypatch.setattr(tokens, "time", SimpleNamespace(monotonic=fake.monotonic, time=fake.time))
    return fake


@pytest.fixture
def first(tmp_path: Path) -> Issuer:
    """The key a deployment starts with."""
    (tmp_path / "first").mkdir()
    return Issuer(tmp_path / "first")


@pytest.fixture
def second(tmp_path: Path) -> Issuer:
    """The key it rotates to."""
    (tmp_path / "second").mkdir()
    return Issuer(tmp_path / "second")


def _config(jwks_refresh_s: float = 30.0) -> AuthConfig:
    return AuthConfig(issuer=ISSUER_URL, audience=AUDIENCE, jwks_refresh_s=jwks_refresh_s)


async def test_a_token_of_a_newly_published_key_is_accepted_after_one_refetch(
    first: Issuer, second: Issuer, clock: Clock
) -> None:
    source = KeySource(first)
    verifier = TokenVerifier(_config(jwks_refresh_s=30), source)
    await verifier.verify(first.staff("DOCTOR"))
    assert source.fetches == 1
    source.issuers.append(second)  # the identity provider publishes its next key
    clock.offset += 31

    principal = await verifier.verify(second.staff("NURSE", staff_id="n-1"))

    assert source.fetches == 2
    assert principal.subject == "staff/n-1"
    assert principal.roles == frozenset({"NURSE"})
    await verifier.verify(second.staff("NURSE"))
    await verifier.verify(first.staff("DOCTOR"))
    assert source.fetches == 2


async def test_unknown_key_ids_within_the_refresh_interval_do_not_refetch(
    first: Issuer, second: Issuer, clock: Clock
) -> None:
    source = KeySource(first)
    verifier = TokenVerifier(_config(jwks_refresh_s=30), source)
    await verifier.verify(first.staff("DOCTOR"))
    source.issuers.append(second)

    for _ in range(3):
        with pytest.raises(Unauthenticated) as refused:
            await verifier.verify(second.staff("DOCTOR"))
        assert refused.value.reason == "INVALID_TOKEN"
    clock.offset += 29
    with pytest.raises(Unauthenticated):
        await verifier.verify(second.staff("DOCTOR"))
    assert source.fetches == 1

    clock.offset += 1
    await verifier.verify(second.staff("DOCTOR"))
    assert source.fetches == 2


async def test_an_unknown_key_id_is_refused_after_one_refetch(
    first: Issuer, second: Issuer
) -> None:
    source = KeySource(first)
    verifier = TokenVerifier(_config(jwks_refresh_s=0), source)
    await verifier.verify(first.staff("DOCTOR"))

    with pytest.raises(Unauthenticated) as refused:
        await verifier.verify(second.staff("DOCTOR"))

    assert refused.value.reason == "INVALID_TOKEN"
    assert source.fetches == 2


async def test_concurrent_first_calls_fetch_the_key_set_once(first: Issuer) -> None:
    source = KeySource(first)
    verifier = TokenVerifier(_config(jwks_refresh_s=0), source)

    principals = await asyncio.gather(
        *(verifier.verify(first.staff("DOCTOR", staff_id=f"d-{i}")) for i in range(20))
    )

    assert {p.subject for p in principals} == {f"staff/d-{i}" for i in range(20)}
    assert source.fetches == 1


async def test_unreachable_keys_are_unavailable_and_the_next_call_fetches_again(
    first: Issuer,
) -> None:
    source = KeySource(first)
    source.error = ConnectionRefusedError("identity provider down")
    verifier = TokenVerifier(_config(), source)

    with pytest.raises(Unavailable) as down:
        await verifier.verify(first.staff("DOCTOR"))
    assert down.value.reason == "AUTH_KEYS_UNAVAILABLE"

    source.error = None
    principal = await verifier.verify(first.staff("DOCTOR", staff_id="d-1"))
    assert principal.subject == "staff/d-1"
    assert source.fetches == 2


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real: Callable[..., Any] = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


async def test_a_verified_token_is_not_fetched_or_decoded_again(
    first: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = _count_decodes(monkeypatch)
    source = KeySource(first)
    verifier = TokenVerifier(_config(jwks_refresh_s=0), source)
    token = first.staff("DOCTOR", departments=("departments/1",))

    once = await verifier.verify(token)
    again = await verifier.verify(token)

    assert (source.fetches, decodes[0]) == (1, 1)
    assert again == once
    assert again.departments == frozenset({"departments/1"})
    await verifier.verify(first.staff("DOCTOR"))
    assert (source.fetches, decodes[0]) == (1, 2)


async def test_a_cached_token_is_checked_again_once_it_has_expired(
    first: Issuer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = _count_decodes(monkeypatch)
    verifier = TokenVerifier(_config(), KeySource(first))
    token = first.token("services/scheduling", ("SERVICE",), ttl_s=60)
    await verifier.verify(token)

    clock.offset += 60 + 30 - 5  # within exp + leeway: the cached answer stands
    await verifier.verify(token)
    assert decodes[0] == 1

    clock.offset += 10  # past exp + leeway on the verifier's clock: decoded again
    await verifier.verify(token)
    assert decodes[0] == 2


async def test_a_key_withdrawn_from_the_key_set_stops_verifying_even_cached_tokens(
    first: Issuer, second: Issuer, clock: Clock
) -> None:
    source = KeySource(first, second)
    verifier = TokenVerifier(
        AuthConfig(issuer=ISSUER_URL, audience=AUDIENCE, jwks_max_age_s=300), source
    )
    cached = first.staff("DOCTOR")
    await verifier.verify(cached)
    await verifier.verify(second.staff("DOCTOR"))
    source.issuers.remove(first)  # the provider withdraws a (compromised) key

    clock.offset += 301
    with pytest.raises(Unauthenticated):
        await verifier.verify(cached)
    with pytest.raises(Unauthenticated):
        await verifier.verify(first.staff("DOCTOR"))
    await verifier.verify(second.staff("DOCTOR"))
    assert source.fetches == 2


async def test_a_stale_key_set_is_kept_when_the_provider_cannot_be_reached(
    first: Issuer, clock: Clock
) -> None:
    source = KeySource(first)
    verifier = TokenVerifier(
        AuthConfig(issuer=ISSUER_URL, audience=AUDIENCE, jwks_max_age_s=300), source
    )
    token = first.staff("DOCTOR")
    await verifier.verify(token)
    source.error = OSError("identity provider down")
    clock.offset += 301

    principal = await verifier.verify(token)  # still verified with the keys it has

    assert principal.roles == frozenset({"DOCTOR"})
