"""Care relationships: which departments and practitioners see a patient, and until when.

GetPatient lets a doctor or nurse read a patient only with a care relationship (least privilege,
issue 17): an appointment or encounter of one of their departments, or with them as its
practitioner, that starts no later than `before` from now and ended no more than `after` ago (an
encounter still open has not ended). The scheduling service stores an `AppointmentChanged` event
with every change of an appointment, the EMR an `EncounterChanged` with every change of an
encounter; their relays deliver them here (DeliverEvents, applied exactly once by event id,
his.runtime.inbox) and this service keeps the newest revision per record. So the read decides from
its own database, with no call to another service per read.

What the copy costs: a booking or an encounter reaches it after the relay's delivery delay (tens of
milliseconds when the services are up), so a clinician reading the patient within that moment is
refused once; a cancellation ends the relationship with the same delay.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from google.protobuf.message import Message
from sqlalchemy import ColumnElement, exists, false, func, or_
from sqlalchemy.ext.asyncio import AsyncSession

from his.base import env
from his.base.errors import InvalidArgument
from his.base.identity import Principal
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.patient.mapping import SCOPE
from his.patient.tables import SCHEMA, care_relationships, patients
from his.patient.v1 import patient_service_pb2 as pb
from his.runtime.database import Database, driver_of
from his.runtime.inbox import Consumes, consuming
from his.runtime.validation import Violations, reference
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb

# The services whose events feed the relationships.
SCHEDULING = "scheduling"
EMR = "emr"
_DAY_S = 86_400
# A cancelled appointment relates nobody; a no-show still does (the clinic follows it up). An
# encounter cancelled or entered in error relates nobody.
_UNRELATED_APPOINTMENT = frozenset({scheduling_pb.APPOINTMENT_STATUS_CANCELLED})
_UNRELATED_ENCOUNTER = frozenset(
    {emr_pb.ENCOUNTER_STATUS_CANCELLED, emr_pb.ENCOUNTER_STATUS_ENTERED_IN_ERROR}
)
_PRIVACY = SCOPE.text(pb.CONSENT_SCOPE_PATIENT_PRIVACY)


@dataclass(frozen=True)
class CareConfig:
    """The window of a care relationship (`HIS_PATIENT_CARE_*`): an appointment or encounter
    relates its department and practitioner to the patient from `before_s` ahead of its start
    until `after_s` after its end (preparing the visit, writing it up, following up results)."""

    before_s: int = 7 * _DAY_S
    after_s: int = 30 * _DAY_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CareConfig:
        return cls(
            before_s=env.integer(environ, "HIS_PATIENT_CARE_BEFORE_DAYS", 7) * _DAY_S,
            after_s=env.integer(environ, "HIS_PATIENT_CARE_AFTER_DAYS", 30) * _DAY_S,
        )


@dataclass(frozen=True)
class Relation:
    """A caller's relationship with one patient: one of their departments that has an appointment
    or encounter with the patient in the window (empty for none), and whether they are the
    practitioner of one."""

    department: str = ""
    under_care: bool = False


NONE = Relation()

_TABLE = f'"{SCHEMA}".care_relationships'
# Newest revision wins, whatever order the events arrive in.
_UPSERT = (
    f"INSERT INTO {_TABLE} (record, patient_id, department_id, practitioner_id, "  # noqa: S608
    "start_time, end_time, related, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
    "ON CONFLICT (record) DO UPDATE SET patient_id = excluded.patient_id, "
    "department_id = excluded.department_id, practitioner_id = excluded.practitioner_id, "
    "start_time = excluded.start_time, end_time = excluded.end_time, "
    "related = excluded.related, revision = excluded.revision, update_time = now() "
    f"WHERE {_TABLE}.revision < excluded.revision"
)
_COLUMNS = (
    "record",
    "patient_id",
    "department_id",
    "practitioner_id",
    "start_time",
    "end_time",
    "related",
    "revision",
)
# The caller's relationships with each of the given patients, now.
_RELATIONS = (
    "SELECT patient_id, department_id, practitioner_id = $3 AS practitioner "  # noqa: S608
    f"FROM {_TABLE} WHERE patient_id = ANY($1::uuid[]) AND related "
    "AND start_time <= now() + make_interval(secs => $4) "
    "AND (end_time IS NULL OR end_time >= now() - make_interval(secs => $5)) "
    "AND (department_id = ANY($2::uuid[]) OR practitioner_id = $3)"
)
# Privacy consent as the policies see it (his_client.patient.privacy_consent says the same).
_CONSENT = (
    "SELECT bool_or(status = 'active' AND period_start <= now() "  # noqa: S608
    "AND (period_end IS NULL OR period_end > now())) AS in_force "
    f'FROM "{SCHEMA}".consents WHERE patient_id = $1 AND scope = $2'
)


def _values(event: scheduling_pb.AppointmentChanged) -> dict[str, object]:
    v = Violations()
    appointment = event.appointment
    values: dict[str, object] = {
        "record": _record(v, "appointment.name", appointment.name, "appointments"),
        "patient_id": v.resource_id(
            "appointment.patient", appointment.patient, collection="patients"
        ),
        "department_id": v.resource_id(
            "appointment.department", appointment.department, collection="departments"
        ),
        "practitioner_id": reference(
            v, "appointment.practitioner", appointment.practitioner, "staff"
        ),
    }
    for field in ("start_time", "end_time"):
        if not appointment.HasField(field):
            v.add(f"appointment.{field}", "is required")
    if event.revision < 1:
        v.add("revision", "must be at least 1")
    v.raise_if_any()
    values["start_time"] = appointment.start_time.ToDatetime(dt.UTC)
    values["end_time"] = appointment.end_time.ToDatetime(dt.UTC)
    _ordered(values, "appointment.end_time")
    values["related"] = appointment.status not in _UNRELATED_APPOINTMENT
    values["revision"] = event.revision
    return values


def _encounter_values(event: emr_pb.EncounterChanged) -> dict[str, object]:
    v = Violations()
    encounter = event.encounter
    values: dict[str, object] = {
        "record": _record(v, "encounter.name", encounter.name, "encounters"),
        "patient_id": v.resource_id("encounter.patient", encounter.patient, collection="patients"),
        "department_id": v.resource_id(
            "encounter.department", encounter.department, collection="departments"
        ),
        "practitioner_id": reference(
            v, "encounter.attending_practitioner", encounter.attending_practitioner, "staff"
        ),
    }
    # Planned encounters have no period yet: they relate from when they were made.
    period = encounter.period
    if not period.HasField("start_time") and not encounter.HasField("create_time"):
        v.add("encounter.period.start_time", "is required (or create_time)")
    if event.revision < 1:
        v.add("revision", "must be at least 1")
    v.raise_if_any()
    start = period.start_time if period.HasField("start_time") else encounter.create_time
    values["start_time"] = start.ToDatetime(dt.UTC)
    values["end_time"] = period.end_time.ToDatetime(dt.UTC) if period.HasField("end_time") else None
    _ordered(values, "encounter.period.end_time")
    values["related"] = encounter.status not in _UNRELATED_ENCOUNTER
    values["revision"] = event.revision
    return values


def _ordered(values: Mapping[str, object], field: str) -> None:
    """INVALID_ARGUMENT (a dead letter at the source) for an end before the start: the table's
    check would refuse it as an internal error, retried for ever, holding up the events after it."""
    start, end = values["start_time"], values["end_time"]
    if isinstance(start, dt.datetime) and isinstance(end, dt.datetime) and end < start:
        raise InvalidArgument.field(field, "must not be before the start")


def _record(v: Violations, field: str, name: str, collection: str) -> str:
    record = v.resource_id(field, name, collection=collection)
    return f"{collection}/{record}" if record is not None else ""


async def _upsert(session: AsyncSession, values: Mapping[str, object]) -> None:
    # On the session's own connection, without SQLAlchemy: every booking and encounter change
    # comes through here.
    driver = await driver_of(session)
    await driver.execute(_UPSERT, *(values[column] for column in _COLUMNS))


async def _apply(session: AsyncSession, _: EventEnvelope, payload: Message) -> None:
    assert isinstance(payload, scheduling_pb.AppointmentChanged)
    await _upsert(session, _values(payload))


async def _apply_encounter(session: AsyncSession, _: EventEnvelope, payload: Message) -> None:
    assert isinstance(payload, emr_pb.EncounterChanged)
    await _upsert(session, _encounter_values(payload))


CONSUMES = consuming(
    Consumes(SCHEDULING, scheduling_pb.AppointmentChanged, _apply),
    Consumes(EMR, emr_pb.EncounterChanged, _apply_encounter),
)


def _ids(names: Collection[str], prefix: str) -> list[uuid.UUID]:
    ids = []
    for name in names:
        try:
            ids.append(uuid.UUID(name.removeprefix(prefix)))
        except ValueError:
            continue
    return ids


class CareRelationships:
    """Reads of the relationships and of privacy consent, for the access decisions of reads."""

    def __init__(self, database: Database, config: CareConfig) -> None:
        self._db = database
        self._config = config

    def restriction(self, principal: Principal) -> ColumnElement[bool]:
        """A condition on `patient.patients` rows: the caller has a care relationship with the
        patient now (the same window as `of`). A search of a clinician is restricted by it in
        SQL, so its pages and page tokens say nothing about patients the clinician may not see."""
        me = _ids([principal.subject], "staff/") if principal.is_staff else []
        departments = _ids(principal.departments, "departments/") if principal.is_staff else []
        c = care_relationships
        mine: list[ColumnElement[bool]] = (
            [c.c.department_id.in_(departments)] if departments else []
        )
        if me:
            mine.append(c.c.practitioner_id == me[0])
        if not mine:
            return false()
        now = func.now()
        return exists().where(
            c.c.patient_id == patients.c.id,
            c.c.related,
            c.c.start_time <= now + dt.timedelta(seconds=self._config.before_s),
            or_(
                c.c.end_time.is_(None),
                c.c.end_time >= now - dt.timedelta(seconds=self._config.after_s),
            ),
            or_(*mine),
        )

    async def of(
        self, principal: Principal, patient_ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, Relation]:
        """The caller's relationship with each of `patient_ids` (absent: none), in one query."""
        if not patient_ids or not principal.is_staff:
            return {}
        me = _ids([principal.subject], "staff/")
        departments = _ids(principal.departments, "departments/")
        async with self._db.driver() as connection:
            rows = await connection.fetch(
                _RELATIONS,
                list(patient_ids),
                departments,
                me[0] if me else None,
                float(self._config.before_s),
                float(self._config.after_s),
            )
        found: dict[uuid.UUID, Relation] = {}
        for row in rows:
            known = found.get(row["patient_id"], NONE)
            department = f"departments/{row['department_id']}"
            found[row["patient_id"]] = Relation(
                department=known.department
                or (department if department in principal.departments else ""),
                under_care=known.under_care or bool(row["practitioner"]),
            )
        return found

    async def consent(self, patient_id: uuid.UUID) -> str:
        """The patient's privacy consent: "active", "revoked" (given once, none in force) or
        "none" (never given)."""
        async with self._db.driver() as connection:
            in_force = await connection.fetchval(_CONSENT, patient_id, _PRIVACY)
        if in_force is None:
            return "none"
        return "active" if in_force else "revoked"
