"""Patient sign-in by phone number and one-time code (StartPatientSignIn, CompletePatientSignIn).

Start: the limits for the number and the source are counted (and the start with them) in one
short transaction; then the patient service is asked, as iam itself and with no transaction
open, for the one active patient with the number; then a second transaction retires the number's
open sign-ins and stores the new one, and the code goes out after it committed. A number no
active patient has gets a decoy sign-in that can never complete and no code: the answer is the
same either way.

Complete: one transaction locks the sign-in row (concurrent completions of one sign-in run one
at a time, so a code gives exactly one token), checks the wrong-code limits, then the state,
expiry and code, and records the outcome; the error (if any) is raised after it committed.

Codes and phone numbers are stored as keyed hashes only (HMAC-SHA256). A code appears in no
log line, error, audit event or trace attribute; only the local sender writes it down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from his.base import identity
from his.base.errors import RateLimited, Unauthenticated
from his.base.identity import PATIENT_ROLE
from his.iam import sign_in_store as store
from his.iam.config import SignInConfig
from his.iam.sign_in_sender import CodeSender
from his.iam.tokens import IssuedToken, TokenIssuer
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.database import Database
from his.runtime.validation import Violations
from his_client import HisClients

log = logging.getLogger(__name__)

CODE_LENGTH = 6
COLLECTION = "patientSignIns"
# Patient.phone's form (his.patient.validation): an optional `+` and 6 to 20 digits.
_PHONE = re.compile(r"\+?[0-9]{6,20}")
_CODE = re.compile(f"[0-9]{{{CODE_LENGTH}}}")
_FORWARDED_FOR = "x-forwarded-for"
# Longest textual IPv6 address.
_MAX_SOURCE = 45
RATE_LIMITED = "SIGN_IN_RATE_LIMITED"


def sign_in_name(sign_in_id: uuid.UUID) -> str:
    """`patientSignIns/{id}`."""
    return f"{COLLECTION}/{sign_in_id}"


def hash_key(config: SignInConfig, signing_key: rsa.RSAPrivateKey) -> bytes:
    """The key of the code and phone hashes: the configured one, else one derived from the
    signing key (shared by every replica already; a key rotation voids codes of the last
    minutes, which is harmless)."""
    if config.hash_key:
        return config.hash_key
    der = signing_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return hashlib.sha256(b"his-iam-patient-sign-in\0" + der).digest()


def source_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's address: the last hop of `x-forwarded-for` when a gateway set it, else the
    gRPC peer; an IPv6 address stands for its /64. The gateways (the local Envoy, the Istio
    ingress) append the address they saw to whatever the client sent (`use_remote_address`, no
    trusted hops), so only the last entry is theirs: the ones before it are the client's to
    invent. Only the gateways reach iam from outside (mesh/istio/authorization), so the header is
    theirs. One subscriber holds a whole /64 and picks any address in it: counted one by one,
    they would be as many sources as it likes."""
    for key, value in context.invocation_metadata() or ():
        if key == _FORWARDED_FOR:
            last = str(value).rsplit(",", 1)[-1].strip()
            if _is_address(last):
                return _network_of(last)
            break
    return _network_of(_peer_address(context.peer() or ""))


def _network_of(address: str) -> str:
    """An IPv6 address's /64 (`2001:db8:1:2::/64`); anything else as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _is_address(text: str) -> bool:
    if not text or len(text) > _MAX_SOURCE:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _peer_address(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` → `127.0.0.1`; `ipv6:[::1]:5000` → `::1`; else the peer as is."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer[:_MAX_SOURCE] or "unknown"


class Outcome(enum.Enum):
    """How a completion ended."""

    SIGNED_IN = "signed in"
    INVALID = "invalid"
    EXPIRED = "expired"
    LIMITED = "limited"


@dataclass(frozen=True)
class Started:
    """The answer of StartPatientSignIn."""

    sign_in: str
    expire_time: dt.datetime


@dataclass(frozen=True)
class SignedIn:
    """The answer of CompletePatientSignIn."""

    token: IssuedToken
    patient: str


def invalid_code() -> Unauthenticated:
    """One answer for a wrong code, a used one and an unknown sign-in: it reveals nothing."""
    return Unauthenticated(
        "the sign-in code is wrong or was already used; ask for a new one",
        reason="SIGN_IN_CODE_INVALID",
    )


class PatientSignIn:
    """Starts and completes patient sign-ins for the IamService servicer."""

    def __init__(
        self,
        database: Database,
        clients: HisClients,
        issuer: TokenIssuer,
        config: SignInConfig,
        *,
        sender: CodeSender,
        key: bytes,
    ) -> None:
        self._db = database
        self._clients = clients
        self._issuer = issuer
        self._config = config
        self._sender = sender
        self._key = key
        self._window = dt.timedelta(seconds=config.window_s)
        # Codes on their way through a sender that answers later (kept: a task nobody holds may
        # be collected before it ran).
        self._deliveries: set[asyncio.Task[None]] = set()

    # --- hashing -------------------------------------------------------------------------------

    def _phone_key(self, phone: str) -> bytes:
        return hmac.new(self._key, b"phone\0" + phone.encode(), hashlib.sha256).digest()

    def _code_hash(self, sign_in_id: uuid.UUID, code: str) -> bytes:
        message = b"code\0" + sign_in_id.bytes + code.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    # --- start ---------------------------------------------------------------------------------

    @staticmethod
    def start_request(phone: str) -> str:
        """The validated phone number of a StartPatientSignIn request."""
        v = Violations()
        if not phone:
            v.add("phone", "is required")
        elif not _PHONE.fullmatch(phone):
            v.add("phone", "must be an optional '+' followed by 6 to 20 digits")
        v.raise_if_any()
        return phone

    async def start(self, phone: str, source: str) -> Started:
        """Count the start, find the patient, store the sign-in, send the code."""
        phone_key = self._phone_key(phone)
        async with self._db.transaction() as session:
            now = await store.now(session)
            await store.lock_keys(session, phone_key, source)
            since = now - self._window
            limited = self._over(
                now,
                (
                    await store.count_attempts(session, "start", since, phone_key=phone_key),
                    self._config.starts_per_phone,
                ),
                (
                    await store.count_attempts(session, "start", since, source=source),
                    self._config.starts_per_source,
                ),
            )
            if limited is None:
                await store.add_attempt(session, "start", phone_key, source, now)
                await store.forget_old(session, attempts_before=since)
        if limited is not None:
            raise self._rate_limited(limited, "too many sign-in codes were asked for")
        patient_id = await self._patient_with(phone)
        sign_in_id = uuid.uuid4()
        # A decoy gets a random code nobody knows; it could never complete anyway (patient_id).
        code = f"{secrets.randbelow(10**CODE_LENGTH):0{CODE_LENGTH}d}"
        async with self._db.transaction() as session:
            now = await store.now(session)
            expire_time = now + dt.timedelta(seconds=self._config.code_ttl_s)
            await store.retire_open(session, phone_key, now)
            await store.insert_sign_in(
                session,
                id=sign_in_id,
                phone_key=phone_key,
                patient_id=patient_id,
                code_hash=self._code_hash(sign_in_id, code),
                source=source,
                create_time=now,
                expire_time=expire_time,
            )
        if patient_id is not None:
            delivery = self._deliver(phone, code, expire_time, sign_in_id)
            if self._sender.delivers_before_answer:
                await delivery
            else:
                # A real gateway takes its time, and only a registered number waits for it: the
                # answer goes first, or its delay would tell which numbers are registered.
                task = asyncio.create_task(delivery)
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
        return Started(sign_in=sign_in_name(sign_in_id), expire_time=expire_time)

    async def _patient_with(self, phone: str) -> uuid.UUID | None:
        """The one active patient with this number, asked as iam itself (no transaction is
        open: nothing remote under a lock); None for none or several."""
        with identity.as_service():
            reply = await self._clients.patient.ListPatients(
                patient_pb.ListPatientsRequest(phone=phone, page_size=2)
            )
        active = [p for p in reply.patients if p.state == patient_pb.PATIENT_STATE_ACTIVE]
        if len(active) != 1 or len(reply.patients) != 1:
            return None
        return uuid.UUID(active[0].name.removeprefix("patients/"))

    async def _deliver(
        self, phone: str, code: str, expire_time: dt.datetime, sign_in_id: uuid.UUID
    ) -> None:
        try:
            await self._sender.send(phone, code, expire_time=expire_time)
        except Exception as error:
            # Answering differently would tell that the number is registered: the patient asks
            # again (the sender's own alerts tell the operators). Only the error's type: a
            # gateway's message may quote the text it failed to send.
            log.error(
                "sign-in code not sent",
                extra={
                    "fields": {"sign_in": sign_in_name(sign_in_id), "error": type(error).__name__}
                },
            )

    # --- complete ------------------------------------------------------------------------------

    @staticmethod
    def complete_request(sign_in: str, code: str) -> tuple[uuid.UUID, str]:
        """The validated sign-in id and code of a CompletePatientSignIn request (the message
        never quotes the code)."""
        v = Violations()
        sign_in_id = v.resource_id("sign_in", sign_in, collection=COLLECTION)
        if not code:
            v.add("code", "is required")
        elif not _CODE.fullmatch(code):
            v.add("code", f"must be {CODE_LENGTH} digits")
        v.raise_if_any()
        assert sign_in_id is not None
        return sign_in_id, code

    async def complete(self, sign_in_id: uuid.UUID, code: str, source: str) -> SignedIn:
        """The patient's token for the right code, once; the refusal otherwise."""
        outcome, patient_id, retry_after = await self._settle(sign_in_id, code, source)
        if outcome is Outcome.LIMITED:
            raise self._rate_limited(retry_after, "too many wrong sign-in codes")
        if outcome is Outcome.EXPIRED:
            raise Unauthenticated(
                "the sign-in code has expired; ask for a new one", reason="SIGN_IN_CODE_EXPIRED"
            )
        if outcome is Outcome.INVALID or patient_id is None:
            raise invalid_code()
        patient = f"patients/{patient_id}"
        token = self._issuer.sign(
            patient,
            username=patient,
            roles=[PATIENT_ROLE],
            ttl_s=self._config.token_ttl_s,
        )
        log.info(
            "patient signed in",
            extra={"fields": {"sign_in": sign_in_name(sign_in_id), "patient": patient}},
        )
        return SignedIn(token=token, patient=patient)

    async def _settle(
        self, sign_in_id: uuid.UUID, code: str, source: str
    ) -> tuple[Outcome, uuid.UUID | None, float]:
        """Decide and record one completion in one transaction; raise nothing inside it (what
        it recorded, a wrong code among it, must be committed)."""
        async with self._db.transaction() as session:
            row = await store.sign_in_for_update(session, sign_in_id)
            if row is None:
                return Outcome.INVALID, None, 0.0
            now = await store.now(session)
            await store.lock_keys(session, row.phone_key, source)
            since = now - self._window
            limited = self._over(
                now,
                (
                    await store.count_attempts(session, "failure", since, phone_key=row.phone_key),
                    self._config.failures_per_phone,
                ),
                (
                    await store.count_attempts(session, "failure", since, source=source),
                    self._config.failures_per_source,
                ),
            )
            if limited is not None:
                if row.void_time is None and row.used_time is None:
                    await store.mark(session, sign_in_id, void_time=now)
                return Outcome.LIMITED, None, limited
            if row.used_time is not None or row.void_time is not None:
                return Outcome.INVALID, None, 0.0
            if row.expire_time <= now:
                return Outcome.EXPIRED, None, 0.0
            right = hmac.compare_digest(row.code_hash, self._code_hash(sign_in_id, code))
            if not right or row.patient_id is None:
                await store.add_attempt(session, "failure", row.phone_key, source, now)
                return Outcome.INVALID, None, 0.0
            await store.mark(session, sign_in_id, used_time=now)
            return Outcome.SIGNED_IN, row.patient_id, 0.0

    # --- limits --------------------------------------------------------------------------------

    def _over(self, now: dt.datetime, *counts: tuple[store.Count, int]) -> float | None:
        """Seconds until every count is under its limit again; None when all are under now."""
        return store.retry_after(now, self._window, counts)

    @staticmethod
    def _rate_limited(retry_after_s: float, what: str) -> RateLimited:
        return RateLimited(
            f"{what}; try again later",
            retry_after_s=retry_after_s,
            reason=RATE_LIMITED,
        )
