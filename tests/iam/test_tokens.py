"""IssueToken and GetJwks: RS256 tokens with the contract's claims, keys named by their RFC 7638
thumbprint, rotation, service logins, one answer for every refused login, switching off."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.field_mask_pb2 import FieldMask

from his.base.env import ConfigError
from his.base.errors import Unauthenticated
from his.iam import dev_credentials
from his.iam.config import IamConfig, SignInConfig
from his.iam.tokens import jwks, load_private_key, public_jwk, thumbprint
from his.iam.v1 import iam_service_pb2 as pb
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.runtime.config import AuthConfig
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService, start
from his.runtime.tokens import TokenVerifier
from tests.conftest import service_config
from tests.iam.conftest import fresh_database, iam_spec
from tests.iam.helpers import (
    DEV_CREDENTIAL,
    LOCAL_ISSUER,
    PASSWORD,
    Stub,
    add_membership,
    approve,
    bootstrap_login,
    create_department,
    create_staff,
    enrol,
    enrolled_token,
    invalid,
    login,
    login_as,
    service_credential,
    verify,
)
from tests.support import fails


async def _jwks(stub: Stub) -> pb.JsonWebKeySet:
    return await stub.GetJwks(pb.GetJwksRequest())


async def test_staff_token_verifies_against_the_published_key_and_carries_the_contract_claims(
    iam: Stub,
) -> None:
    member = await create_staff(iam, pb.STAFF_ROLE_DOCTOR, pb.STAFF_ROLE_NURSE)
    current = await create_department(iam)
    ended = await create_department(iam)
    upcoming = await create_department(iam)
    await add_membership(iam, member.name, current.name, primary=True)
    removed = await add_membership(iam, member.name, ended.name)
    await iam.RemoveMembership(pb.RemoveMembershipRequest(name=removed.name))
    later = pb.DepartmentMembership(department=upcoming.name)
    later.period.start_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
    await iam.AddMembership(pb.AddMembershipRequest(parent=member.name, membership=later))
    before = int(time.time())

    reply = await enrolled_token(iam, member)

    claims = verify(reply.access_token, await _jwks(iam))
    assert claims["iss"] == LOCAL_ISSUER
    assert claims["aud"] == "his"
    assert claims["sub"] == member.name
    assert claims["preferred_username"] == member.username
    assert claims["roles"] == ["DOCTOR", "NURSE"]
    assert claims["departments"] == [current.name]
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 600
    assert str(uuid.UUID(claims["jti"])) == claims["jti"]
    assert reply.token_type == "Bearer"
    assert reply.expire_time.seconds == claims["exp"]


async def test_every_token_has_its_own_id(iam: Stub) -> None:
    enrolled = await enrol(iam, await create_staff(iam))

    first = verify((await login_as(iam, enrolled)).access_token, await _jwks(iam))
    second = verify((await login_as(iam, enrolled)).access_token, await _jwks(iam))

    assert first["jti"] != second["jti"]


async def test_token_header_names_the_current_key_by_its_rfc7638_thumbprint(
    iam: Stub, iam_keys: tuple[Path, Path]
) -> None:
    member = await create_staff(iam)

    token = (await enrolled_token(iam, member)).access_token

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["kid"] == thumbprint(load_private_key(iam_keys[0]).public_key())


async def test_jwks_publishes_the_signing_key_first_then_the_retired_one(
    iam: Stub, iam_keys: tuple[Path, Path]
) -> None:
    jwks = await _jwks(iam)

    expected = [public_jwk(load_private_key(path).public_key()) for path in iam_keys]
    assert [
        {"kty": k.kty, "kid": k.kid, "use": k.use, "alg": k.alg, "n": k.n, "e": k.e}
        for k in jwks.keys
    ] == expected
    assert {k.kty for k in jwks.keys} == {"RSA"}
    assert {k.use for k in jwks.keys} == {"sig"}
    assert {k.alg for k in jwks.keys} == {"RS256"}
    assert all("=" not in k.n and "=" not in k.e for k in jwks.keys)


async def test_tokens_are_signed_by_the_first_key_only(
    iam: Stub, iam_keys: tuple[Path, Path]
) -> None:
    member = await create_staff(iam)
    token = (await enrolled_token(iam, member)).access_token
    current, retired = (load_private_key(path).public_key() for path in iam_keys)

    jwt.decode(token, key=current, algorithms=["RS256"], audience="his")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, key=retired, algorithms=["RS256"], audience="his")


def test_thumbprint_matches_the_rfc7638_example() -> None:
    # RFC 7638 section 3.1: this key's thumbprint is NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
        "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhA"
        "I4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    modulus = int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big")
    key = rsa.RSAPublicNumbers(65537, modulus).public_key()

    assert thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert public_jwk(key)["n"] == n
    assert public_jwk(key)["e"] == "AQAB"


async def test_the_runtime_verifier_accepts_iam_tokens_through_the_published_key_set(
    iam: Stub,
) -> None:
    member = await create_staff(iam, pb.STAFF_ROLE_REGISTRAR)
    token = (await enrolled_token(iam, member)).access_token
    jwks = await _jwks(iam)
    document = {
        "keys": [
            {"kty": k.kty, "kid": k.kid, "use": k.use, "alg": k.alg, "n": k.n, "e": k.e}
            for k in jwks.keys
        ]
    }

    async def fetch() -> Mapping[str, Any]:
        return document

    verifier = TokenVerifier(AuthConfig(issuer=LOCAL_ISSUER, audience="his"), fetch)
    principal = await verifier.verify(token)

    assert principal.subject == member.name
    assert principal.username == member.username
    assert principal.roles == frozenset({"REGISTRAR"})
    with pytest.raises(Unauthenticated):
        await TokenVerifier(AuthConfig(issuer=LOCAL_ISSUER, audience="other"), fetch).verify(token)


async def test_refused_logins_all_look_the_same(iam: Stub) -> None:
    member = await create_staff(iam, pb.STAFF_ROLE_REGISTRAR)
    enrolled = await enrol(iam, member)
    gone = await create_staff(iam, pb.STAFF_ROLE_REGISTRAR)
    await enrol(iam, gone)
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=gone.name))
    never = await create_staff(iam, pb.STAFF_ROLE_REGISTRAR)
    source = f"198.51.100.{uuid.uuid4().int % 250}"
    assert (await login_as(iam, enrolled)).access_token

    # As many failures for `member` as the lockout allows (3): each gets the ordinary refusal.
    wrong = await fails(login(iam, member.username, "not the password", source=source))
    unknown = await fails(login(iam, "nobody.here", source=source))
    inactive = await fails(login(iam, gone.username, source=source))
    prefix = await fails(login(iam, member.username, PASSWORD[:-1], source=source))
    not_enrolled = await fails(login(iam, never.username, source=source))
    # The shared development seed is no password of anyone's.
    seed = await fails(login(iam, member.username, DEV_CREDENTIAL, source=source))

    for failure in (wrong, unknown, inactive, prefix, not_enrolled, seed):
        assert failure.code == grpc.StatusCode.UNAUTHENTICATED
        assert (failure.message, failure.reason, failure.metadata) == (
            wrong.message,
            wrong.reason,
            wrong.metadata,
        )


async def test_login_needs_no_token(iam_server: RunningService) -> None:
    async with grpc.aio.insecure_channel(iam_server.address) as channel:
        stub: Stub = pb_grpc.IamServiceStub(channel)
        assert len((await _jwks(stub)).keys) == 2
        reply = await login(stub, "service:patient", service_credential("patient"))
    assert reply.access_token


async def test_other_rpcs_need_a_token(iam_server: RunningService) -> None:
    async with grpc.aio.insecure_channel(iam_server.address) as channel:
        stub: Stub = pb_grpc.IamServiceStub(channel)
        failure = await fails(stub.ListDepartments(pb.ListDepartmentsRequest()))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("username", "credential", "field"),
    [
        ("", "x", "username"),
        ("a" * 65, "x", "username"),
        ("dr.someone", "", "credential"),
        ("dr.someone", "x" * 257, "credential"),
    ],
)
async def test_login_with_empty_or_too_long_input_names_the_field(
    iam: Stub, username: str, credential: str, field: str
) -> None:
    assert await invalid(login(iam, username, credential)) == [field]


async def test_service_logs_in_with_the_hmac_of_its_name(iam: Stub) -> None:
    reply = await login(iam, "service:scheduling", service_credential("scheduling"))

    claims = verify(reply.access_token, await _jwks(iam))
    assert claims["sub"] == "services/scheduling"
    assert claims["roles"] == ["SERVICE"]
    assert claims["departments"] == []
    assert claims["preferred_username"] == "scheduling"


@pytest.mark.parametrize(
    ("username", "credential"),
    [
        ("service:scheduling", service_credential("patient")),
        ("service:scheduling", service_credential("scheduling", b"another key")),
        ("service:radiology", service_credential("radiology")),
        ("service:", service_credential("")),
    ],
)
async def test_service_login_with_a_wrong_credential_or_unknown_service_is_refused(
    iam: Stub, username: str, credential: str
) -> None:
    failure = await fails(login(iam, username, credential))

    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "INVALID_CREDENTIALS"


async def test_new_roles_appear_in_tokens_issued_afterwards(iam: Stub) -> None:
    member = await create_staff(iam, pb.STAFF_ROLE_NURSE)
    enrolled = await enrol(iam, member)
    first = verify((await login_as(iam, enrolled)).access_token, await _jwks(iam))

    member.ClearField("roles")
    member.roles.extend([pb.STAFF_ROLE_NURSE, pb.STAFF_ROLE_REGISTRAR])
    updated = await iam.UpdateStaffMember(
        pb.UpdateStaffMemberRequest(staff_member=member, update_mask=FieldMask(paths=["roles"]))
    )
    # The added role takes effect once a second administrator approves it (two-person rule).
    await approve(iam, updated.pending_access_change)
    second = verify((await login_as(iam, enrolled)).access_token, await _jwks(iam))

    assert first["roles"] == ["NURSE"]
    assert second["roles"] == ["NURSE", "REGISTRAR"]


async def test_without_a_development_seed_the_bootstrap_administrator_has_no_password(
    postgres: EmbeddedPostgres, make_iam_config: Callable[..., IamConfig]
) -> None:
    url = await fresh_database(postgres, "his_iam_no_seed")
    async with _server(url, make_iam_config(dev_credential="", bootstrap_admin="admin")) as stub:
        assert (await fails(login(stub, "admin", ""))).code == grpc.StatusCode.INVALID_ARGUMENT
        for password in (DEV_CREDENTIAL, dev_credentials.password("", "admin")):
            failure = await fails(
                login(stub, "admin", password, dev_credentials.totp_code("A" * 32))
            )
            assert failure.code == grpc.StatusCode.UNAUTHENTICATED


async def test_switched_off_local_provider_answers_unimplemented(
    iam_url: str, make_iam_config: Callable[..., IamConfig], admin_token: str
) -> None:
    async with _server(iam_url, make_iam_config(local_provider=False)) as stub:
        for call in (
            stub.GetJwks(pb.GetJwksRequest()),
            login(stub, "admin"),
            login(stub, "service:patient", service_credential("patient")),
            stub.CreateStaffEnrolment(
                pb.CreateStaffEnrolmentRequest(parent=f"staff/{uuid.uuid4()}"),
                metadata=_bearer(admin_token),
            ),
            stub.CompleteStaffEnrolment(
                pb.CompleteStaffEnrolmentRequest(
                    username="t.someone", enrolment_code="A" * 16, password=PASSWORD
                )
            ),
        ):
            failure = await fails(call)
            assert failure.code == grpc.StatusCode.UNIMPLEMENTED
            assert failure.reason == "LOCAL_PROVIDER_OFF"


@pytest.mark.parametrize("switch", ["sign_in", "local_provider"])
async def test_switched_off_patient_sign_in_answers_unimplemented(
    iam_url: str, make_iam_config: Callable[..., IamConfig], switch: str
) -> None:
    # Patient sign-in needs the local provider's issuer: off with it, or on its own.
    off = (
        {"sign_in": SignInConfig(enabled=False)}
        if switch == "sign_in"
        else {"local_provider": False}
    )
    async with _server(iam_url, make_iam_config(**off)) as stub:
        for call in (
            stub.StartPatientSignIn(pb.StartPatientSignInRequest(phone="+8613800000001")),
            stub.CompletePatientSignIn(
                pb.CompletePatientSignInRequest(
                    sign_in=f"patientSignIns/{uuid.uuid4()}", code="123456"
                )
            ),
        ):
            failure = await fails(call)
            assert (failure.code, failure.reason) == (
                grpc.StatusCode.UNIMPLEMENTED,
                "PATIENT_SIGN_IN_OFF",
            )


async def test_without_configured_keys_one_development_key_is_generated_and_kept(
    iam_url: str, make_iam_config: Callable[..., IamConfig], tmp_path: Path
) -> None:
    config = make_iam_config(signing_key_paths=(), data_dir=tmp_path)
    kids = []
    for _ in range(2):
        async with _server(iam_url, config) as stub:
            kids.append([key.kid for key in (await _jwks(stub)).keys])

    path = tmp_path / "secrets" / "iam-signing-key.pem"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    expected = thumbprint(load_private_key(path).public_key())
    assert kids == [[expected], [expected]]
    assert [p.name for p in path.parent.iterdir()] == ["iam-signing-key.pem"]


async def test_the_first_start_creates_the_bootstrap_administrator_once(
    postgres: EmbeddedPostgres, make_iam_config: Callable[..., IamConfig]
) -> None:
    url = await fresh_database(postgres, "his_iam_bootstrap")
    config = make_iam_config(bootstrap_admin="chief.admin")
    subjects = []
    for _ in range(2):
        async with _server(url, config, trust_own_keys=True) as stub:
            token = (await bootstrap_login(stub, "chief.admin")).access_token
            claims = verify(token, await _jwks(stub))
            subjects.append(claims["sub"])
            assert claims["roles"] == ["ADMINISTRATOR"]
            listed = await stub.ListStaffMembers(
                pb.ListStaffMembersRequest(), metadata=_bearer(token)
            )
            assert [m.username for m in listed.staff_members] == ["chief.admin"]
    assert subjects[0] == subjects[1]


async def test_no_bootstrap_administrator_when_staff_exist(
    iam: Stub, iam_url: str, make_iam_config: Callable[..., IamConfig]
) -> None:
    await create_staff(iam)
    async with _server(iam_url, make_iam_config(bootstrap_admin="second.admin")) as stub:
        failure = await fails(bootstrap_login(stub, "second.admin"))
        assert failure.code == grpc.StatusCode.UNAUTHENTICATED


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@asynccontextmanager
async def _server(
    url: str, config: IamConfig, *, trust_own_keys: bool = False
) -> AsyncIterator[Stub]:
    """A second iam server with its own settings; callers use the session's test issuer unless
    it trusts the tokens it issues itself (its own key set as the JWKS file)."""
    env: dict[str, str] = {}
    if trust_own_keys:
        path = config.data_dir / f"jwks-{uuid.uuid4().hex}.json"
        keys = [load_private_key(p).public_key() for p in config.signing_key_paths]
        path.write_text(json.dumps(jwks(keys)), encoding="utf-8")
        env = {"HIS_AUTH_JWKS_FILE": str(path), "HIS_AUTH_ISSUER": config.issuer}
    running = await start(iam_spec(config), service_config("iam", **env), url)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            yield pb_grpc.IamServiceStub(channel)
    finally:
        await running.stop(grace_s=1)


def test_config_reads_the_environment() -> None:
    config = IamConfig.from_env(
        {
            "HIS_IAM_SIGNING_KEYS": "/keys/a.pem, /keys/b.pem",
            "HIS_AUTH_ISSUER": "https://idp.example",
            "HIS_AUTH_AUDIENCE": "mesh",
            "HIS_IAM_TOKEN_TTL_S": "43200",
            "HIS_IAM_DEV_CREDENTIAL": "pw",
            "HIS_SERVICE_CREDENTIAL_KEY": "k",
            "HIS_IAM_LOCAL_PROVIDER": "off",
            "HIS_IAM_EMERGENCY_DEFAULT_S": "600",
            "HIS_IAM_EMERGENCY_MAX_S": "900",
            "HIS_IAM_EMERGENCY_MIN_S": "1",
            "HIS_IAM_BOOTSTRAP_ADMIN": "",
            "HIS_DATA_DIR": "/data",
        }
    )
    assert config.signing_key_paths == (Path("/keys/a.pem"), Path("/keys/b.pem"))
    assert (config.issuer, config.audience, config.token_ttl_s) == (
        "https://idp.example",
        "mesh",
        43200,
    )
    assert (config.dev_credential, config.service_credential_key) == ("pw", b"k")
    assert config.local_provider is False
    assert (config.emergency_min_s, config.emergency_default_s, config.emergency_max_s) == (
        1,
        600,
        900,
    )
    assert config.bootstrap_admin == ""
    assert config.generated_key_path == Path("/data/secrets/iam-signing-key.pem")
    assert "pw" not in repr(config)


def test_config_defaults() -> None:
    config = IamConfig.from_env({})
    assert config.signing_key_paths == ()
    assert (config.issuer, config.audience, config.token_ttl_s) == (
        "https://iam.his.local",
        "his",
        900,
    )
    assert config.local_provider is True
    assert (config.emergency_min_s, config.emergency_default_s, config.emergency_max_s) == (
        60,
        3600,
        14400,
    )
    assert config.bootstrap_admin == "admin"
    assert config.sign_in == SignInConfig()
    sign_in = config.sign_in
    assert (sign_in.enabled, sign_in.code_ttl_s, sign_in.token_ttl_s) == (True, 300, 1800)
    assert (sign_in.window_s, sign_in.starts_per_phone, sign_in.starts_per_source) == (900, 5, 200)
    assert (sign_in.failures_per_phone, sign_in.failures_per_source) == (5, 100)
    assert config.sign_in_codes_path == Path(".his/sign-in-codes.log")


def test_in_the_mesh_the_local_sender_is_refused_and_sign_in_off_is_fine() -> None:
    # The local sender writes codes to the log: in a cluster, whoever reads logs would sign in.
    with pytest.raises(ConfigError, match="HIS_IAM_PATIENT_SIGN_IN is on with the local sender"):
        SignInConfig.from_env({"HIS_MESH": "istio"})
    off = SignInConfig.from_env({"HIS_MESH": "istio", "HIS_IAM_PATIENT_SIGN_IN": "off"})
    assert not off.enabled
    assert SignInConfig.from_env({}).sender == "local"


def test_in_the_mesh_a_development_seed_is_refused() -> None:
    # The seed gives the bootstrap administrator a known password: a developer's machine only.
    with pytest.raises(ConfigError, match="HIS_IAM_DEV_CREDENTIAL"):
        IamConfig.from_env(
            {"HIS_MESH": "istio", "HIS_IAM_PATIENT_SIGN_IN": "off", "HIS_IAM_DEV_CREDENTIAL": "x"}
        )
    assert IamConfig.from_env(
        {"HIS_MESH": "istio", "HIS_IAM_PATIENT_SIGN_IN": "off", "HIS_IAM_CREDENTIAL_KEY": "k" * 32}
    )


def test_in_the_mesh_the_staff_credential_key_is_required() -> None:
    # Derived from the signing key it would change with the first rotation and void every TOTP
    # secret: every clinician and administrator locked out, nobody left to re-enrol them.
    mesh = {"HIS_MESH": "istio", "HIS_IAM_PATIENT_SIGN_IN": "off"}
    with pytest.raises(ConfigError, match="HIS_IAM_CREDENTIAL_KEY is required"):
        IamConfig.from_env(mesh)
    assert not IamConfig.from_env({**mesh, "HIS_IAM_LOCAL_PROVIDER": "off"}).local_provider


def test_staff_login_config_reads_the_environment_and_refuses_unusable_values() -> None:
    config = IamConfig.from_env(
        {
            "HIS_IAM_LOGIN_WINDOW_S": "300",
            "HIS_IAM_LOGIN_FAILURES_PER_USER": "7",
            "HIS_IAM_LOGIN_FAILURES_PER_SOURCE": "70",
            "HIS_IAM_ENROLMENT_TTL_S": "3600",
            "HIS_IAM_CREDENTIAL_KEY": "secret-key",
        }
    )
    login = config.login
    assert (login.window_s, login.failures_per_user, login.failures_per_source) == (300, 7, 70)
    assert (login.enrolment_ttl_s, login.credential_key) == (3600, b"secret-key")
    assert "secret-key" not in repr(config)
    defaults = IamConfig.from_env({}).login
    assert (defaults.window_s, defaults.failures_per_user, defaults.failures_per_source) == (
        900,
        5,
        50,
    )
    for bad in (
        {"HIS_IAM_LOGIN_WINDOW_S": "10"},
        {"HIS_IAM_LOGIN_FAILURES_PER_USER": "0"},
        {"HIS_IAM_ENROLMENT_TTL_S": "5"},
    ):
        with pytest.raises(ConfigError):
            IamConfig.from_env(bad)


def test_sign_in_config_reads_the_environment() -> None:
    config = IamConfig.from_env(
        {
            "HIS_IAM_PATIENT_SIGN_IN": "off",
            "HIS_IAM_SIGN_IN_CODE_TTL_S": "120",
            "HIS_IAM_PATIENT_TOKEN_TTL_S": "600",
            "HIS_IAM_SIGN_IN_WINDOW_S": "3600",
            "HIS_IAM_SIGN_IN_STARTS_PER_PHONE": "2",
            "HIS_IAM_SIGN_IN_STARTS_PER_SOURCE": "50",
            "HIS_IAM_SIGN_IN_FAILURES_PER_PHONE": "4",
            "HIS_IAM_SIGN_IN_FAILURES_PER_SOURCE": "40",
            "HIS_IAM_SIGN_IN_KEY": "sign-in-secret",
            "HIS_DATA_DIR": "/data",
        }
    )
    assert config.sign_in == SignInConfig(
        enabled=False,
        code_ttl_s=120,
        token_ttl_s=600,
        window_s=3600,
        starts_per_phone=2,
        starts_per_source=50,
        failures_per_phone=4,
        failures_per_source=40,
        hash_key=b"sign-in-secret",
    )
    assert "sign-in-secret" not in repr(config)
    assert config.sign_in_codes_path == Path("/data/sign-in-codes.log")


@pytest.mark.parametrize(
    "env",
    [
        {"HIS_IAM_SIGN_IN_CODE_TTL_S": "5"},
        {"HIS_IAM_PATIENT_TOKEN_TTL_S": "43201"},
        {"HIS_IAM_SIGN_IN_WINDOW_S": "10"},
        {"HIS_IAM_SIGN_IN_STARTS_PER_PHONE": "0"},
        {"HIS_IAM_SIGN_IN_FAILURES_PER_SOURCE": "many"},
        {"HIS_IAM_PATIENT_SIGN_IN": "perhaps"},
        {"HIS_IAM_SIGN_IN_SENDER": "carrier-pigeon"},
        {"HIS_IAM_TOKEN_TTL_S": "43201"},
        {"HIS_IAM_TOKEN_TTL_S": "0"},
        {"HIS_IAM_TOKEN_TTL_S": "an hour"},
        {"HIS_IAM_EMERGENCY_MAX_S": "30"},
        {"HIS_IAM_EMERGENCY_MIN_S": "7200"},
        {"HIS_IAM_LOCAL_PROVIDER": "maybe"},
        {"HIS_IAM_BOOTSTRAP_ADMIN": "Root"},
    ],
)
def test_config_refuses_unusable_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        IamConfig.from_env(env)
