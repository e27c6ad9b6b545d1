"""Who is calling: the verified principal of the call being served.

The authentication interceptor verifies the bearer token(s) of each call and puts a `Principal`
in a context variable; servicers read it with `current()`. Outbound calls made while serving
carry the end user's token onward (his_client), so the next service sees the same person.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from his.base.errors import Unauthenticated

# The role every HIS service's own token carries (never a staff role).
SERVICE_ROLE = "SERVICE"

# The role of a patient signed in by phone (iam's CompletePatientSignIn): a patient token carries
# exactly this role, with the subject `patients/{id}`; never a staff or service role.
PATIENT_ROLE = "PATIENT"

# Staff roles, as they appear in the `roles` claim (StaffRole names without `STAFF_ROLE_`).
STAFF_ROLES = (
    "REGISTRAR",
    "DOCTOR",
    "NURSE",
    "PHARMACIST",
    "LAB_TECHNICIAN",
    "BILLING_CLERK",
    "AUDITOR",
    "ADMINISTRATOR",
    "PRIVACY_OFFICER",
)


@dataclass(frozen=True)
class Principal:
    """A verified caller: a staff member or a patient (possibly reached through a service), or a
    service."""

    # `staff/{id}` for a staff member, `patients/{id}` for a signed-in patient, `services/{name}`
    # for a service acting on its own.
    subject: str
    # Staff username, patient name or service name; for display and audit, never for decisions.
    username: str
    # Role names as in the token (`DOCTOR`, ...; `SERVICE` for a service).
    roles: frozenset[str]
    # `departments/{id}` of the staff member's current memberships.
    departments: frozenset[str] = frozenset()
    # The service that relayed this caller's call (`scheduling`), empty when called directly.
    via_service: str = ""
    # The token's `jti` and `exp` (seconds since the epoch).
    token_id: str = ""
    expires_at: float = 0.0
    # The raw bearer token, to carry the same identity onward on outbound calls.
    token: str = field(default="", repr=False, compare=False)

    @property
    def is_service(self) -> bool:
        """True when a service calls on its own behalf (no person behind the call)."""
        return self.subject.startswith("services/")

    @property
    def is_staff(self) -> bool:
        """True when a person (a staff member) is behind the call."""
        return self.subject.startswith("staff/")

    @property
    def is_patient(self) -> bool:
        """True when a signed-in patient is behind the call (`patients/{id}`)."""
        return self.subject.startswith("patients/")

    @property
    def service_name(self) -> str:
        """`scheduling` for `services/scheduling`; empty for staff."""
        return self.subject.removeprefix("services/") if self.is_service else ""


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "his_principal", default=None
)


def current() -> Principal:
    """The principal of the call being served; UNAUTHENTICATED when there is none."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("this call needs a bearer token", reason="MISSING_CREDENTIALS")
    return principal


def current_or_none() -> Principal | None:
    """The principal of the call being served, if any (outbound calls use it to forward)."""
    return _current.get()


# The staff id recorded for, and never matched by, a call with no person behind it.
NOBODY = uuid.UUID(int=0)


def caller_staff_id() -> uuid.UUID | None:
    """The staff id of the person behind the call being served (`staff/{id}`); None when no
    person is: no principal, or a service calling as itself. None is "nobody", so a service
    never passes for the author, prescriber or attending practitioner of a row. A `staff/`
    subject that is not a UUID raises ValueError (the servicer answers INTERNAL)."""
    principal = _current.get()
    if principal is None or not principal.is_staff:
        return None
    return uuid.UUID(principal.subject.removeprefix("staff/"))


def caller_staff_id_or_nobody() -> uuid.UUID:
    """`caller_staff_id()`, with NOBODY for no person: what a row records as the one who acted
    (its author, performer, recorder) when that column takes no NULL."""
    caller = caller_staff_id()
    return NOBODY if caller is None else caller


def is_caller(staff_id: uuid.UUID | None) -> bool:
    """Is `staff_id` (read from a row) the person calling? Never for a service or no principal,
    and never for NOBODY: a row a service wrote (or one with no one in it) belongs to no caller,
    whatever the caller's subject says."""
    return staff_id is not None and staff_id != NOBODY and staff_id == caller_staff_id()


_method: contextvars.ContextVar[str] = contextvars.ContextVar("his_method", default="")

Entered = tuple[contextvars.Token[Principal | None], contextvars.Token[str]]


@contextlib.contextmanager
def as_service() -> Iterator[None]:
    """Outbound calls inside this block speak as this service, not as the person being served:
    for the service's own checks (a patient's consent state, a break-the-glass grant), which the
    person may not be allowed to read and must not be able to influence."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def current_method() -> str:
    """The full gRPC method being served (`his.patient.v1.PatientService/GetPatient`)."""
    return _method.get()


def enter(principal: Principal | None, method: str = "") -> Entered:
    """Make `principal` the caller (of `method`) for the code that runs until `leave`."""
    return _current.set(principal), _method.set(method.lstrip("/"))


def leave(entered: Entered) -> None:
    """Restore the caller that was current before `enter`."""
    _current.reset(entered[0])
    _method.reset(entered[1])
