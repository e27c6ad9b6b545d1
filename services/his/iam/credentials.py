"""Staff credentials: enrolment by one-time code, password (argon2id) and TOTP login, lockout.

Enrolment: an administrator creates a code (CreateStaffEnrolment; stored as a keyed hash, a new
one retires the open ones); the staff member gives it with a new password (CompleteStaffEnrolment)
and receives a fresh TOTP secret. One transaction locks the open enrolment rows, so a code enrols
exactly once. Where his.iam.enrolment_rule asks for two administrators, the creator's code is only
one half: the enrolment works once a second administrator approved it (ApproveStaffEnrolment) and
received the other half, and the staff member gives both. Each half is a separate keyed hash.

Login (IssueToken): the failure limits are checked first, in one short transaction under advisory
locks on the username's key and the source; then the password and TOTP code are checked with no
transaction open (argon2id is deliberately slow, and memory-hard: at most two run at once); a
failure is then counted. A burst of concurrent
wrong attempts can overshoot a limit by at most the burst, never keep going past it.

Unknown usernames, staff never enrolled and inactive staff are verified against a dummy hash, so
the answer and its timing are the same as for a wrong password. Nothing here logs a password, a
code or a secret.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import FailedPrecondition, NotFound, RateLimited, Unauthenticated
from his.iam import approvals, enrolment_rule, sign_in_store, store
from his.iam import credential_store as cstore
from his.iam.config import StaffLoginConfig
from his.iam.enrolment_rule import TOTP_ROLES
from his.iam.sign_in_store import Count, retry_after
from his.iam.tokens import IssuedToken, TokenIssuer
from his.runtime.database import Database
from his.runtime.validation import Violations

log = logging.getLogger(__name__)
_T = TypeVar("_T")

LOCKED = "STAFF_LOGIN_LOCKED"
# A one-administrator credential of someone who now holds a TOTP role (enrolment_rule).
REENROLMENT_REQUIRED = "REENROLMENT_REQUIRED"
MIN_PASSWORD = 12
MAX_PASSWORD = 256
ENROLMENT_CODE_LENGTH = 16
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_ENROLMENT_CODE = re.compile(f"[{_BASE32}]{{{ENROLMENT_CODE_LENGTH}}}")
_TOTP_CODE = re.compile(r"[0-9]{6}")
_ISSUER_NAME = "HIS Mesh"
# argon2-cffi's defaults are RFC 9106's second recommendation for argon2id (64 MiB, t=3, p=4).
_HASHER = PasswordHasher()
# Verified against when there is no credential to verify: same answer, same cost.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
# Each hash or verification holds 64 MiB for about 0.1 s. IssueToken and CompleteStaffEnrolment
# are public: unbounded, a burst of them (the thread pool has up to 32 workers) would take the
# pod past its memory limit. Two at a time, a bounded queue, and the rest are told to come back.
ARGON2_CONCURRENCY = 2
ARGON2_QUEUE = 64


def invalid_credentials() -> Unauthenticated:
    """One answer for unknown user, wrong password or TOTP, never enrolled, inactive."""
    return Unauthenticated("unknown username or wrong credential", reason="INVALID_CREDENTIALS")


def invalid_enrolment() -> Unauthenticated:
    """One answer for a wrong, used, retired or expired code and an unknown or inactive user."""
    return Unauthenticated(
        "the enrolment code is wrong, expired or already used; ask an administrator for a new one",
        reason="ENROLMENT_CODE_INVALID",
    )


def credential_key(config: StaffLoginConfig, fallback: bytes) -> bytes:
    """The key of the hashes and the TOTP encryption: the configured one, else derived from
    `fallback` (the patient sign-in hash key, itself from the signing key)."""
    if config.credential_key:
        return config.credential_key
    return hashlib.sha256(b"his-iam-staff-credentials\0" + fallback).digest()


@dataclass(frozen=True)
class Enrolment:
    """An enrolment as created or approved, with the code (or the half) that call hands out:
    the only time it exists in clear."""

    row: Any
    code: str


@dataclass(frozen=True)
class Enrolled:
    """What CompleteStaffEnrolment gives back."""

    staff_id: uuid.UUID
    totp_secret: str
    totp_uri: str
    totp_required: bool


@dataclass(frozen=True)
class Completion:
    """What a completed enrolment changed, for its audit: the staff member, the enrolment
    before and after, whether a credential was replaced (rather than set first), and the new
    credential's assurance (enrolment_rule)."""

    member: Any
    before: Any
    after: Any
    replaced: bool
    assurance: str


# Records an enrolment's change in the open transaction: (name, before or None, after).
AuditEnrolment = Callable[[str, "dict[str, object] | None", "dict[str, object]"], Awaitable[None]]


def enrolment_name(staff_id: uuid.UUID, enrolment_id: uuid.UUID) -> str:
    """`staff/{staff}/enrolments/{enrolment}`."""
    return f"staff/{staff_id}/enrolments/{enrolment_id}"


def _new_code() -> str:
    return "".join(secrets.choice(_BASE32) for _ in range(ENROLMENT_CODE_LENGTH))


def _closed(row: Any, now: dt.datetime) -> str | None:
    """Why an enrolment can no longer be used ("used", "retired", "expired"); None if open."""
    if row.used_time is not None:
        return "used"
    if row.void_time is not None:
        return "retired"
    if row.expire_time <= now:
        return "expired"
    return None


def _verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class StaffCredentials:
    """Enrols staff members and checks their logins for the IamService servicer."""

    def __init__(
        self, database: Database, issuer: TokenIssuer, config: StaffLoginConfig, *, key: bytes
    ) -> None:
        self._db = database
        self._issuer = issuer
        self._config = config
        self._key = key
        self._aead = AESGCM(hmac.new(key, b"totp-secret", hashlib.sha256).digest())
        self._window = dt.timedelta(seconds=config.window_s)
        self._argon2_slots = asyncio.Semaphore(ARGON2_CONCURRENCY)
        self._argon2_queued = 0

    # --- keys ----------------------------------------------------------------------------------

    def _user_key(self, username: str) -> bytes:
        return hmac.new(self._key, b"user\0" + username.encode(), hashlib.sha256).digest()

    def _code_hash(self, enrolment_id: uuid.UUID, code: str) -> bytes:
        message = b"enrolment\0" + enrolment_id.bytes + code.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _approval_hash(self, enrolment_id: uuid.UUID, code: str) -> bytes:
        # Its own label: one half never passes for the other.
        message = b"enrolment-approval\0" + enrolment_id.bytes + code.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def seal(self, staff_id: uuid.UUID, secret: str) -> bytes:
        """A TOTP secret encrypted for the database, bound to its staff member."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, secret.encode(), staff_id.bytes)

    def _open(self, staff_id: uuid.UUID, sealed: bytes) -> str | None:
        """The staff member's TOTP secret; None when it cannot be opened (another credential
        key sealed it: the key changed), which is logged and answered as a wrong code."""
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], staff_id.bytes).decode()
        except InvalidTag:
            log.error(
                "a TOTP secret does not open with this credential key (was "
                "HIS_IAM_CREDENTIAL_KEY changed?): the staff member must be enrolled again",
                extra={"fields": {"staff": f"staff/{staff_id}"}},
            )
            return None

    async def _argon2(self, work: Callable[..., _T], *args: object) -> _T:
        """Run an argon2id hash or verification in a thread, at most ARGON2_CONCURRENCY at a
        time; RESOURCE_EXHAUSTED when ARGON2_QUEUE calls are already waiting."""
        if self._argon2_queued >= ARGON2_QUEUE:
            raise RateLimited(
                "too many logins at once; try again in a moment",
                retry_after_s=1.0,
                reason="STAFF_LOGIN_BUSY",
            )
        self._argon2_queued += 1
        try:
            async with self._argon2_slots:
                return await asyncio.to_thread(work, *args)
        finally:
            self._argon2_queued -= 1

    # --- requests ------------------------------------------------------------------------------

    @staticmethod
    def complete_request(username: str, code: str, password: str, approval_code: str = "") -> None:
        """INVALID_ARGUMENT naming each bad field of a CompleteStaffEnrolment request."""
        v = Violations()
        if not username:
            v.add("username", "is required")
        elif len(username) > 64:
            v.add("username", "must be at most 64 characters")
        if not code:
            v.add("enrolment_code", "is required")
        elif not _ENROLMENT_CODE.fullmatch(code):
            v.add("enrolment_code", f"must be {ENROLMENT_CODE_LENGTH} characters of A-Z and 2-7")
        if approval_code and not _ENROLMENT_CODE.fullmatch(approval_code):
            v.add("approval_code", f"must be {ENROLMENT_CODE_LENGTH} characters of A-Z and 2-7")
        if not password:
            v.add("password", "is required")
        elif not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            v.add("password", f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        v.raise_if_any()

    @staticmethod
    def check_totp_field(v: Violations, totp_code: str) -> None:
        """A TOTP code, when given, is six digits."""
        if totp_code and not _TOTP_CODE.fullmatch(totp_code):
            v.add("totp_code", "must be 6 digits")

    # --- enrolment -----------------------------------------------------------------------------

    async def create_enrolment(
        self,
        staff_id: uuid.UUID,
        *,
        creator: uuid.UUID | None,
        created_by: str,
        audit: AuditEnrolment,
    ) -> Enrolment:
        """A new one-time code (or its first half, when enrolment_rule asks for a second
        administrator; with no `creator`, security is off and nobody could approve) for the staff
        member; their open codes are retired. `audit` records each change in the same
        transaction."""
        code = _new_code()
        enrolment_id = uuid.uuid4()
        async with self._db.transaction() as session:
            # The staff row lock orders this against deactivation, approvals and other new codes.
            member = await store.get_staff(session, staff_id, lock="update")
            if not member.active:
                raise store.inactive(staff_id)
            # With the rule off (security off) nothing is checked, here or at completion.
            assurance = (
                await enrolment_rule.assurance(session, member, creator)
                if creator is not None
                else enrolment_rule.UNCHECKED
            )
            required = assurance == enrolment_rule.TWO_ADMINISTRATORS
            now = await sign_in_store.now(session)
            for retired in await cstore.retire_open_enrolments(session, staff_id, now):
                after = approvals.enrolment_view(retired)
                await audit(
                    enrolment_name(staff_id, retired.id), {**after, "void_time": None}, after
                )
            row = await cstore.insert_enrolment(
                session,
                id=enrolment_id,
                staff_id=staff_id,
                code_hash=self._code_hash(enrolment_id, code),
                created_by=created_by,
                create_time=now,
                expire_time=now + dt.timedelta(seconds=self._config.enrolment_ttl_s),
                approval_required=required,
                assurance=assurance,
            )
            await audit(enrolment_name(staff_id, enrolment_id), None, approvals.enrolment_view(row))
        return Enrolment(row=row, code=code)

    async def approve_enrolment(
        self,
        staff_id: uuid.UUID,
        enrolment_id: uuid.UUID,
        *,
        approver: uuid.UUID | None,
        approved_by: str,
        audit: AuditEnrolment,
    ) -> Enrolment:
        """The second administrator's approval of an enrolment: the second half of its code."""
        name = enrolment_name(staff_id, enrolment_id)
        half = _new_code()
        async with self._db.transaction() as session:
            # Locked as create_enrolment locks it: a new code cannot slip in between.
            member = await store.find_staff(session, staff_id, lock="update")
            row = None
            if member is not None:
                row = await cstore.enrolment_for_update(session, staff_id, enrolment_id)
            if member is None or row is None:
                raise NotFound(f"{name} not found", metadata={"name": name})
            enrolment_rule.refuse_creator(approver, row, name)
            await approvals.require_administrator_now(session, approver)
            now = await sign_in_store.now(session)
            if not row.approval_required:
                raise FailedPrecondition(
                    f"{name} needs no second administrator: its code is whole already",
                    reason="ENROLMENT_APPROVAL_NOT_REQUIRED",
                )
            if row.approve_time is not None:
                raise FailedPrecondition(
                    f"{name} was approved already (its second half is given only once); "
                    "create a new enrolment if that half was lost",
                    reason="ENROLMENT_ALREADY_APPROVED",
                )
            if (closed := _closed(row, now)) is not None:
                raise FailedPrecondition(
                    f"{name} is {closed}; create a new enrolment",
                    reason="ENROLMENT_CLOSED",
                    metadata={"state": closed},
                )
            if not member.active:
                raise store.inactive(staff_id)
            after = await cstore.approve_enrolment(
                session,
                enrolment_id,
                approved_by=approved_by,
                approval_code_hash=self._approval_hash(enrolment_id, half),
                at=now,
            )
            await audit(name, approvals.enrolment_view(row), approvals.enrolment_view(after))
        return Enrolment(row=after, code=half)

    async def complete_enrolment(
        self,
        username: str,
        code: str,
        *,
        approval_code: str,
        password: str,
        source: str,
        audit: Callable[[Completion], Awaitable[None]],
    ) -> Enrolled:
        """Set the password and a new TOTP secret with a valid code (both halves where the
        enrolment needed a second administrator), once; `audit` records it in the same
        transaction."""
        user_key = self._user_key(username)
        # Hashed before the transaction: argon2id never runs while rows are locked.
        password_hash = await self._argon2(_HASHER.hash, password)
        async with self._db.transaction() as session:
            now = await sign_in_store.now(session)
            retry_after = await self._limited(session, user_key, source, now)
            enrolled: Enrolled | None = None
            if retry_after is None:
                done = await self._enrol(
                    session,
                    username,
                    code,
                    approval_code=approval_code,
                    password_hash=password_hash,
                    now=now,
                )
                if done is None:
                    await cstore.add_failure(session, user_key, source, now, now - self._window)
                else:
                    enrolled, completion = done
                    await audit(completion)
        if retry_after is not None:
            raise self._locked(retry_after)
        if enrolled is None:
            raise invalid_enrolment()
        return enrolled

    async def _matching(
        self, session: AsyncSession, member: Any, code: str, approval_code: str, now: dt.datetime
    ) -> tuple[Any, str] | None:
        """The open enrolment of `member` these codes complete and the assurance of the credential
        it sets (enrolment_rule), or None."""
        # Locks the open codes: two completions of one code run one after the other.
        rows = await cstore.open_enrolments_for_update(session, member.id)
        match = next(
            (
                row
                for row in rows
                if hmac.compare_digest(row.code_hash, self._code_hash(row.id, code))
            ),
            None,
        )
        if match is None or match.expire_time <= now:
            return None
        if match.approval_required:
            # Not before the second administrator acted, and only with their half.
            if match.approval_code_hash is None or not approval_code:
                return None
            expected = self._approval_hash(match.id, approval_code)
            if not hmac.compare_digest(match.approval_code_hash, expected):
                return None
            return match, enrolment_rule.TWO_ADMINISTRATORS
        if approval_code:
            return None
        if match.assurance == enrolment_rule.UNCHECKED:
            # Created with security off, which said no approval was needed: completion agrees.
            return match, enrolment_rule.UNCHECKED
        # Made as a one-administrator enrolment: the rule may ask for two by now (a clinical role
        # approved since, a credential set since), or the bootstrap exception be over.
        creator = enrolment_rule.creator_id(match.created_by)
        assurance = await enrolment_rule.assurance(session, member, creator)
        if assurance == enrolment_rule.TWO_ADMINISTRATORS:
            return None
        if assurance == enrolment_rule.LONE_ADMINISTRATOR != match.assurance:
            # A TOTP role proposed since the code was made for a lone administrator's registrar:
            # the credential claims no more than its enrolment recorded (migration 0009).
            assurance = enrolment_rule.ONE_ADMINISTRATOR
        return match, assurance

    async def _enrol(
        self,
        session: AsyncSession,
        username: str,
        code: str,
        *,
        approval_code: str,
        password_hash: str,
        now: dt.datetime,
    ) -> tuple[Enrolled, Completion] | None:
        found = await store.staff_by_username(session, username)
        if found is None or not found.active:
            return None
        # Shared lock: no role is approved, and no deactivation lands, while this completes.
        member = await store.get_staff(session, found.id, lock="share")
        if not member.active:  # deactivated since the unlocked read
            return None
        matching = await self._matching(session, member, code, approval_code, now)
        if matching is None:
            return None
        match, assurance = matching
        replaced = await enrolment_rule.has_credential(session, member.id)
        secret = pyotp.random_base32()
        await cstore.set_credential(
            session,
            member.id,
            password_hash=password_hash,
            totp_secret_enc=self.seal(member.id, secret),
            at=now,
            enrolment_id=match.id,
            assurance=assurance,
        )
        used = await cstore.mark_enrolment_used(session, match.id, now)
        uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=_ISSUER_NAME)
        enrolled = Enrolled(
            staff_id=member.id,
            totp_secret=secret,
            totp_uri=uri,
            totp_required=bool(set(member.roles) & TOTP_ROLES),
        )
        completion = Completion(
            member=member, before=match, after=used, replaced=replaced, assurance=assurance
        )
        return enrolled, completion

    async def set_known(
        self, session: AsyncSession, staff_id: uuid.UUID, password: str, secret: str
    ) -> None:
        """Give a staff member a credential directly (the development bootstrap administrator)."""
        password_hash = await self._argon2(_HASHER.hash, password)
        await cstore.set_credential(
            session,
            staff_id,
            password_hash=password_hash,
            totp_secret_enc=self.seal(staff_id, secret),
            at=dt.datetime.now(dt.UTC),
            assurance=enrolment_rule.DIRECT,
        )

    # --- login ---------------------------------------------------------------------------------

    async def login(self, username: str, password: str, totp_code: str, source: str) -> IssuedToken:
        """A token for the right password (and TOTP code where the roles need one)."""
        user_key = self._user_key(username)
        async with self._db.transaction() as session:
            now = await sign_in_store.now(session)
            retry_after = await self._limited(session, user_key, source, now)
            member = credential = None
            departments: list[uuid.UUID] = []
            if retry_after is None:
                member = await store.staff_by_username(session, username)
                if member is not None and member.active:
                    credential = await cstore.credential(session, member.id)
                    departments = await store.current_department_ids(session, member.id)
        if retry_after is not None:
            raise self._locked(retry_after)
        # No transaction is open while argon2id works.
        right = await self._argon2(
            _verify_password, credential.password_hash if credential else None, password
        )
        needs_totp = member is not None and bool(set(member.roles) & TOTP_ROLES)
        if right and needs_totp and not totp_code:
            # The password was right: not a failure, the client asks for the second factor.
            raise Unauthenticated(
                "a TOTP code from the authenticator app is required for this role",
                reason="TOTP_REQUIRED",
            )
        if right and needs_totp:
            assert member is not None and credential is not None
            secret = self._open(member.id, credential.totp_secret_enc)
            # One step either side: an authenticator's clock may be 30 s off.
            right = secret is not None and pyotp.TOTP(secret).verify(totp_code, valid_window=1)
        async with self._db.transaction() as session:
            if right:
                await cstore.forget_user_failures(session, user_key)
            else:
                await cstore.lock_keys(session, user_key, source)
                await cstore.add_failure(session, user_key, source, now, now - self._window)
        if not right or member is None:
            raise invalid_credentials()
        assert credential is not None
        if not enrolment_rule.signs_in(credential.assurance, member.roles):
            # Told only to whoever knows both secrets: the person, or the administrator who
            # enrolled them alone (module docstring of enrolment_rule). Logged for the
            # administrators: either a re-enrolment is due or someone tried the takeover.
            log.warning(
                "one-administrator credential refused for a TOTP role: re-enrolment required",
                extra={"fields": {"staff": f"staff/{member.id}", "reason": REENROLMENT_REQUIRED}},
            )
            raise FailedPrecondition(
                "this credential was set through an enrolment by one administrator, and its "
                "roles now need two: ask two administrators for a new enrolment",
                reason=REENROLMENT_REQUIRED,
                metadata={"staff_member": f"staff/{member.id}"},
            )
        return self._issuer.sign(
            f"staff/{member.id}",
            username=member.username,
            roles=list(member.roles),
            departments=[f"departments/{department}" for department in departments],
        )

    # --- limits --------------------------------------------------------------------------------

    async def _limited(
        self, session: AsyncSession, user_key: bytes, source: str, now: dt.datetime
    ) -> float | None:
        """Seconds until this username and source may try again; None when they may now."""
        await cstore.lock_keys(session, user_key, source)
        since = now - self._window
        counts: tuple[tuple[Count, int], ...] = (
            (
                await cstore.count_failures(session, since, user_key=user_key),
                self._config.failures_per_user,
            ),
            (
                await cstore.count_failures(session, since, source=source),
                self._config.failures_per_source,
            ),
        )
        return retry_after(now, self._window, counts)

    @staticmethod
    def _locked(retry_after_s: float) -> RateLimited:
        return RateLimited(
            "too many failed logins for this username or from this address; the account is "
            "locked for now, try again later or ask an administrator",
            retry_after_s=retry_after_s,
            reason=LOCKED,
        )
