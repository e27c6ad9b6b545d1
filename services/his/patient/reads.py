"""GetPatient, the service's hot read: served as soon as the service is ready, before the rest of
the servicer (and SQLAlchemy, which the writes and searches use) is loaded (his.runtime.deferred).

Nothing here imports SQLAlchemy: the read, the caller's care relationship and the patient's
privacy consent run on the driver's connections, and the audit event goes to the outbox's group
commit, which runs on them too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc

from his.base import identity
from his.base.errors import NotFound, Unavailable
from his.patient import care
from his.patient.care import CareConfig, CareRelationships, Relation
from his.patient.label_view import for_caller
from his.patient.mapping import PatientRecord, decrypt_patient, encrypted_values, patient_to_proto
from his.patient.schema import PATIENT_COLUMNS, SCHEMA
from his.patient.v1 import patient_service_pb2 as pb
from his.runtime.access import Facts, Permit
from his.runtime.database import Database
from his.runtime.fieldcrypt import FieldCipher
from his.runtime.server import ServiceResources
from his.runtime.validation import required_id

Context = grpc.aio.ServicerContext[Any, Any]
_PATIENT = pb.Patient.DESCRIPTOR.full_name
_CONSENT = pb.Consent.DESCRIPTOR.full_name
_DEMOGRAPHICS = "patient.demographics"

# GetPatient's one statement, for the driver: SQLAlchemy's ORM session cost more CPU than the
# rest of the call around this primary-key SELECT (profiled under load: ~28 % of the process).
# By a list of ids: concurrent reads share it (SharedReads).
_READ_MANY = (
    "SELECT "  # noqa: S608 (column and table names from schema.py; the ids are bound)
    + ", ".join(f'"{column}"' for column in PATIENT_COLUMNS)
    + f' FROM "{SCHEMA}".patients WHERE id = ANY($1::uuid[])'
)


class SharedReads:
    """GetPatient's reads by id, outside any transaction, concurrent ones sharing a statement.

    The first read starts a statement at once; reads that arrive while it runs wait for it and
    then share the next one, as the outbox's group commit does for audit events. Each statement
    starts after every read it answers arrived, so a read sees every commit made before it was
    asked (a caller's own write included). Under load one round trip, one statement and one
    checkout of a driver connection serve many calls; at one call at a time nothing waits.
    The data keys the rows need and memory lacks are read on the same connection.
    """

    def __init__(self, database: Database, cipher: FieldCipher) -> None:
        self._database = database
        self._cipher = cipher
        self._queue: dict[uuid.UUID, list[asyncio.Future[Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        # Statements run (a figure for tests).
        self.statements = 0

    async def read(self, patient_id: uuid.UUID) -> PatientRecord:
        """One patient, or NOT_FOUND."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.setdefault(patient_id, []).append(future)
        if self._reader is None:
            # Belongs to no caller: no deadline, identity or span of the first one.
            self._reader = asyncio.create_task(self._read_all(), context=contextvars.Context())
        row = await future
        if row is None:
            raise NotFound(
                f"patients/{patient_id} not found", metadata={"name": f"patients/{patient_id}"}
            )
        return decrypt_patient(self._cipher, row)

    async def _read_all(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue, {}
                await self._read(group)
        finally:
            self._reader = None

    async def _read(self, group: dict[uuid.UUID, list[asyncio.Future[Any]]]) -> None:
        self.statements += 1
        try:
            async with self._database.driver() as connection:
                records = await connection.fetch(_READ_MANY, list(group))
                # Read by attribute, as the mapping reads SQLAlchemy rows.
                rows = {record["id"]: SimpleNamespace(**dict(record.items())) for record in records}
                values = [value for row in rows.values() for value in encrypted_values(row)]
                if self._cipher.missing_keys(values):
                    await self._cipher.load_on(connection, values)
        except BaseException as error:
            failure = error if isinstance(error, Exception) else _stopped()
            for futures in group.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(failure)
            if not isinstance(error, Exception):
                raise
            return
        for patient_id, futures in group.items():
            for future in futures:
                if not future.done():
                    future.set_result(rows.get(patient_id))


def _stopped() -> Exception:
    return Unavailable("the service is stopping", reason="SERVICE_STOPPING")


@dataclass(frozen=True)
class _Found:
    """A patient read for GetPatient, with the caller's care relationship with them."""

    row: Any
    relation: Relation


class PatientReads:
    """GetPatient, and what the whole servicer shares with it (PatientService, service.py)."""

    def __init__(self, resources: ServiceResources, care_config: CareConfig | None = None) -> None:
        self._db: Database = resources.database
        self._care = CareRelationships(resources.database, care_config or CareConfig())
        self._access = resources.access
        # Given the Database, not its engine: the engine (SQLAlchemy) is made only if a data key
        # must be created, which a read never does.
        self._cipher = FieldCipher.from_config(resources.config.crypto, SCHEMA, resources.database)
        self._reads = SharedReads(resources.database, self._cipher)

    async def _audit(self, action: str, permit: Permit, patient_id: uuid.UUID, **name: str) -> None:
        """Record one access to a patient's record (or to its consents)."""
        patient = f"patients/{patient_id}"
        await self._access.record(
            action,
            permit,
            patient=patient,
            resource_name=name.get("consent", patient),
            resource_type=_CONSENT if "consent" in name else _PATIENT,
        )

    async def GetPatient(self, request: pb.GetPatientRequest, context: Context) -> pb.Patient:
        patient_id = required_id("name", request.name, collection="patients")
        name = f"patients/{patient_id}"
        # The registration desk reads anyone; a clinician needs a care relationship (care.py,
        # from this service's own tables: no remote call per read), or else a break-the-glass
        # grant; a signed-in patient reads their own record only (policy: patients.rego).
        alone = self._access.allowed_alone("read", _DEMOGRAPHICS)

        async def load() -> _Found | None:
            try:
                row = await self._reads.read(patient_id)
            except NotFound:
                return None
            if alone:
                return _Found(row, care.NONE)
            relations = await self._care.of(identity.current(), [patient_id])
            return _Found(row, relations.get(patient_id, care.NONE))

        def facts(found: _Found | None) -> Facts:
            # Asked only of a record that was found (mypy solves authorize's T as optional).
            return self._facts(name, found.relation if found else care.NONE)

        permit, found = await self._access.authorize("read", _DEMOGRAPHICS, load, facts)
        if found is None:
            raise NotFound(f"{name} not found", metadata={"name": name})
        await self._audit("read", permit, found.row.id)
        return for_caller(patient_to_proto(found.row))

    def _facts(self, name: str, relation: Relation) -> Facts:
        """What the policy looks at for one patient's demographics: the caller's relationship
        with them and (asked only when it decides) their privacy consent."""
        patient_id = uuid.UUID(name.removeprefix("patients/"))
        return Facts(
            patient=name,
            department=relation.department,
            under_care=relation.under_care,
            consent=functools.partial(self._care.consent, patient_id),
        )
