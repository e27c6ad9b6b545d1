"""GetPatient, the service's hot read: served as soon as the service is ready, before the rest of
the servicer (and SQLAlchemy, which the writes and searches use) is loaded (his.runtime.deferred).

Nothing here imports SQLAlchemy: the read, the caller's care relationship and the patient's
privacy consent run on the driver's connections, and the audit event goes to the outbox's group
commit, which runs on them too.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc

from his.base import identity
from his.base.errors import NotFound
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
_READ_ONE = (
    "SELECT "  # noqa: S608 (column and table names from schema.py; the id is bound)
    + ", ".join(f'"{column}"' for column in PATIENT_COLUMNS)
    + f' FROM "{SCHEMA}".patients WHERE id = $1'
)


async def read_patient(
    database: Database, cipher: FieldCipher, patient_id: uuid.UUID
) -> PatientRecord:
    """One patient, or NOT_FOUND, outside any transaction (GetPatient's hot path); the data keys
    its values need and memory lacks are read on the same connection."""
    async with database.driver() as connection:
        record = await connection.fetchrow(_READ_ONE, patient_id)
        if record is None:
            raise NotFound(
                f"patients/{patient_id} not found", metadata={"name": f"patients/{patient_id}"}
            )
        # Read by attribute, as the mapping reads SQLAlchemy rows.
        row = SimpleNamespace(**dict(record.items()))
        if cipher.missing_keys(encrypted_values(row)):
            await cipher.load_on(connection, encrypted_values(row))
    return decrypt_patient(cipher, row)


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
                row = await read_patient(self._db, self._cipher, patient_id)
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
