"""Shared test helpers: valid unique patients, rich error details, a few small checks."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import string
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeAlias

from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as pb
from tests.support import invalid_in

if TYPE_CHECKING:
    from his.patient.v1.patient_service_pb2_grpc import PatientServiceAsyncStub

    # The async stub exists only in the type stubs; at run time the fixture's stub is used as is.
    Stub: TypeAlias = PatientServiceAsyncStub
else:
    Stub = Any


NATIONAL_ID_SYSTEM = "urn:oid:2.16.156.10011.1.1"
DOMAIN = "patient.his"

_counter = itertools.count(1)


def unique_word(prefix: str = "Zq") -> str:
    """A random name-like word of letters only, unique enough for a shared database."""
    letters = "".join(random.choices(string.ascii_lowercase, k=10))
    return f"{prefix}{letters}"


def unique_national_id() -> types_pb2.Identifier:
    """A national identifier no other test uses."""
    return types_pb2.Identifier(system=NATIONAL_ID_SYSTEM, value=f"T{uuid.uuid4().hex[:20]}")


def unique_phone() -> str:
    """A valid phone number no other test uses."""
    return f"+86{random.randrange(10**11, 10**12)}"


def make_patient(
    *,
    family_name: str | None = None,
    given_names: list[str] | None = None,
    gender: pb.AdministrativeGender.ValueType = pb.ADMINISTRATIVE_GENDER_FEMALE,
    birth_date: tuple[int, int, int] = (1980, 5, 17),
    national_id: types_pb2.Identifier | None = None,
    with_national_id: bool = True,
    phone: str | None = None,
    address: pb.Address | None = None,
) -> pb.Patient:
    """A valid Patient for CreatePatient with a unique family name and national identifier."""
    patient = pb.Patient(
        family_name=family_name if family_name is not None else unique_word(),
        given_names=given_names if given_names is not None else ["Mei", "Lin"],
        gender=gender,
        birth_date=types_pb2.Date(year=birth_date[0], month=birth_date[1], day=birth_date[2]),
        phone=phone if phone is not None else unique_phone(),
    )
    if with_national_id:
        patient.national_id.CopyFrom(national_id or unique_national_id())
    if address is not None:
        patient.address.CopyFrom(address)
    return patient


def request_id() -> str:
    """A fresh idempotency key."""
    return f"req-{next(_counter)}-{uuid.uuid4().hex}"


async def create(stub: Stub, patient: pb.Patient | None = None, **kwargs: Any) -> pb.Patient:
    """Register a patient (a fresh valid one unless given) and return it."""
    request = pb.CreatePatientRequest(patient=patient or make_patient(**kwargs))
    return await stub.CreatePatient(request)


def grant_request(
    parent: str,
    *,
    scope: pb.ConsentScope.ValueType = pb.CONSENT_SCOPE_TREATMENT,
    purpose: pb.PurposeOfUse.ValueType = pb.PURPOSE_OF_USE_TREATMENT,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    note: str = "signed form 12-B",
    request_id: str = "",
) -> pb.GrantConsentRequest:
    """A GrantConsentRequest; the period is only set for the given bounds."""
    consent = pb.Consent(scope=scope, purpose=purpose, note=note)
    if start is not None:
        consent.period.start_time.FromDatetime(start)
    if end is not None:
        consent.period.end_time.FromDatetime(end)
    return pb.GrantConsentRequest(parent=parent, consent=consent, request_id=request_id)


async def invalid(call: Awaitable[Any]) -> list[str]:
    """Await a call that must be INVALID_ARGUMENT; the field paths its BadRequest names."""
    return await invalid_in(DOMAIN, call)


def luhn_valid(number: str) -> bool:
    """The standard Luhn check over a string of digits (check digit included)."""
    total = 0
    for index, char in enumerate(reversed(number)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def patient_id(name: str) -> uuid.UUID:
    """The id part of `patients/{id}`."""
    collection, _, raw = name.partition("/")
    assert collection == "patients"
    return uuid.UUID(raw)
