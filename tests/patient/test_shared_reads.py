"""GetPatient's reads by id: concurrent reads share one statement, each gets its own patient (or
NOT_FOUND), and a read sees what was committed before it was asked."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from his.base.errors import NotFound
from his.patient.reads import SharedReads
from his.runtime.database import Database
from his.runtime.fieldcrypt import FieldCipher
from tests.conftest import service_config
from tests.patient.helpers import Stub, create, patient_id


@pytest.fixture
async def shared(database_url: str, patient_cipher: FieldCipher) -> AsyncIterator[SharedReads]:
    database = Database(database_url, service_config("patient").database, application_name="t")
    yield SharedReads(database, patient_cipher)
    await database.dispose()


async def test_concurrent_reads_share_one_statement_and_each_gets_its_own(
    patients: Stub, shared: SharedReads
) -> None:
    made = [await create(patients) for _ in range(3)]
    missing = uuid.uuid4()
    asked = [patient_id(p.name) for p in made] * 10 + [missing]
    answers = await asyncio.gather(*(shared.read(one) for one in asked), return_exceptions=True)
    assert shared.statements == 1
    for one, answer in zip(asked[:-1], answers[:-1], strict=True):
        assert not isinstance(answer, BaseException)
        assert answer.id == one
        assert answer.family_name == next(p.family_name for p in made if patient_id(p.name) == one)
        assert answer.national_id_value == next(
            p.national_id.value for p in made if patient_id(p.name) == one
        )
    assert isinstance(answers[-1], NotFound)


async def test_a_read_sees_a_patient_registered_before_it_was_asked(
    patients: Stub, shared: SharedReads
) -> None:
    # A read in flight, then a registration, then a read: the second read waits for the next
    # statement, which starts after it was asked.
    first = asyncio.ensure_future(shared.read(uuid.uuid4()))
    made = await create(patients)
    found = await shared.read(patient_id(made.name))
    assert found.family_name == made.family_name
    with pytest.raises(NotFound):
        await first


async def test_a_cancelled_read_leaves_the_others_answered(
    patients: Stub, shared: SharedReads
) -> None:
    made = await create(patients)
    one = patient_id(made.name)
    gone = asyncio.ensure_future(shared.read(one))
    kept = asyncio.ensure_future(shared.read(one))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await kept).family_name == made.family_name
    assert gone.cancelled()
