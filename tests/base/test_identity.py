"""Who the caller is as a staff id (his.base.identity): a service or no principal is nobody, and
nobody is never the person a row names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from his.base import identity
from his.base.identity import NOBODY, Principal


@pytest.fixture
def calling() -> Iterator[list[identity.Entered]]:
    entered: list[identity.Entered] = []
    yield entered
    for token in reversed(entered):
        identity.leave(token)


def _as(entered: list[identity.Entered], subject: str | None) -> None:
    roles = frozenset({"SERVICE"} if subject and subject.startswith("services/") else {"DOCTOR"})
    principal = None if subject is None else Principal(subject, "someone", roles)
    entered.append(identity.enter(principal))


def test_a_person_is_their_staff_id(calling: list[identity.Entered]) -> None:
    staff_id = uuid.uuid4()
    _as(calling, f"staff/{staff_id}")
    assert identity.caller_staff_id() == staff_id
    assert identity.caller_staff_id_or_nobody() == staff_id
    assert identity.is_caller(staff_id)
    assert not identity.is_caller(uuid.uuid4())
    assert not identity.is_caller(None)


@pytest.mark.parametrize("subject", [None, "services/scheduling"])
def test_a_service_or_no_principal_is_nobody(
    calling: list[identity.Entered], subject: str | None
) -> None:
    _as(calling, subject)
    assert identity.caller_staff_id() is None
    assert identity.caller_staff_id_or_nobody() == NOBODY
    assert not identity.is_caller(NOBODY)
    assert not identity.is_caller(None)


def test_nobody_is_never_the_caller_whatever_the_subject(calling: list[identity.Entered]) -> None:
    _as(calling, f"staff/{NOBODY}")
    assert not identity.is_caller(NOBODY)


def test_a_staff_subject_that_is_no_uuid_is_an_error(calling: list[identity.Entered]) -> None:
    _as(calling, "staff/dr-li")
    with pytest.raises(ValueError, match="badly formed"):
        identity.caller_staff_id()
