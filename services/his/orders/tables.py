"""The orders schema: service requests, medication requests and the pharmacy's dispenses of them.

Each order keeps, from the encounter it was placed in, what the access policy decides on
(department, attending practitioner, class, surgical), so reading an order needs no remote call.
`revision` counts every change of an order: it is the etag and the revision of the Changed event
stored in the outbox with the change. `dispenses` is this service's copy of the pharmacy's
dispenses (newest revision wins), from which a prescription's dispensed quantity is summed.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from his.runtime.inbox import declare as declare_inbox
from his.runtime.outbox import declare as declare_outbox

SCHEMA = "orders"
metadata = MetaData(schema=SCHEMA)

PRIORITIES = ("routine", "urgent", "asap", "stat")
SERVICE_REQUEST_STATUSES = ("active", "revoked", "completed", "on_hold", "entered_in_error")
MEDICATION_REQUEST_STATUSES = ("active", "cancelled", "completed", "on_hold", "entered_in_error")
DISPENSE_STATUSES = ("in_progress", "completed", "cancelled")


def one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK that `column` holds one of `values`."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _encounter_facts() -> list[Column[object]]:
    """The encounter's facts the policy decides on, copied when the order is placed."""
    return [
        Column("department_id", UUID(as_uuid=True), nullable=False),
        Column("attending_id", UUID(as_uuid=True)),
        Column("encounter_class", Text, nullable=False),
        Column("surgical", Boolean, nullable=False, server_default=text("false")),
    ]


def _bookkeeping() -> list[Column[object]]:
    return [
        Column("create_request_id", Text, unique=True),
        Column("create_request_fingerprint", Text),
        Column("revision", BigInteger, nullable=False, server_default="1"),
        Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


service_requests = Table(
    "service_requests",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("encounter_id", UUID(as_uuid=True), nullable=False),
    Column("requester_id", UUID(as_uuid=True), nullable=False),
    Column("performer_id", UUID(as_uuid=True), nullable=False),
    *_encounter_facts(),
    Column("code_system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("code_display", Text, nullable=False, server_default=""),
    Column("priority", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason_system", Text),
    Column("reason_code", Text),
    Column("reason_display", Text),
    Column("note", Text, nullable=False, server_default=""),
    Column("revoke_reason", Text),
    Column("status_reason", Text),
    # The lab's report that completed the order.
    Column("report_id", UUID(as_uuid=True)),
    *_bookkeeping(),
    CheckConstraint(one_of("priority", PRIORITIES), name="sr_priority_known"),
    CheckConstraint(one_of("status", SERVICE_REQUEST_STATUSES), name="sr_status_known"),
    CheckConstraint("status <> 'revoked' OR revoke_reason IS NOT NULL", name="sr_revoked_why"),
    CheckConstraint("revision >= 1", name="sr_revision_positive"),
)
Index("service_requests_by_time", service_requests.c.create_time, service_requests.c.id)
# The orders completed in a period (ListServiceRequests complete_period: billing's
# reconciliation); a completed order's update time is its completion time (store.completed_in).
Index(
    "service_requests_completed_by_time",
    service_requests.c.update_time,
    postgresql_where=text("status = 'completed'"),
)
for _column in ("patient_id", "encounter_id", "performer_id"):
    Index(
        f"service_requests_by_{_column.removesuffix('_id')}",
        service_requests.c[_column],
        service_requests.c.create_time,
        service_requests.c.id,
    )

medication_requests = Table(
    "medication_requests",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("encounter_id", UUID(as_uuid=True), nullable=False),
    Column("prescriber_id", UUID(as_uuid=True), nullable=False),
    *_encounter_facts(),
    Column("medication_id", UUID(as_uuid=True), nullable=False),
    Column("atc_system", Text, nullable=False),
    Column("atc_code", Text, nullable=False),
    Column("atc_display", Text, nullable=False, server_default=""),
    Column("dose_value", Float, nullable=False),
    Column("dose_unit", Text, nullable=False),
    Column("route_system", Text, nullable=False),
    Column("route_code", Text, nullable=False),
    Column("route_display", Text, nullable=False, server_default=""),
    Column("frequency_per_day", Integer, nullable=False),
    Column("duration_days", Integer, nullable=False),
    Column("instructions", Text, nullable=False, server_default=""),
    Column("dispense_value", Float, nullable=False),
    Column("dispense_unit", Text, nullable=False),
    Column("refills", Integer, nullable=False),
    Column("price_currency", Text, nullable=False),
    Column("price_minor", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("cancel_reason", Text),
    Column("status_reason", Text),
    # Sums over the dispenses copy: prepared or handed over, and handed over only.
    Column("dispensed", Float, nullable=False, server_default=text("0")),
    Column("handed_over", Float, nullable=False, server_default=text("0")),
    *_bookkeeping(),
    CheckConstraint(one_of("status", MEDICATION_REQUEST_STATUSES), name="mr_status_known"),
    CheckConstraint("status <> 'cancelled' OR cancel_reason IS NOT NULL", name="mr_cancelled_why"),
    CheckConstraint("dose_value > 0 AND dispense_value > 0", name="mr_amounts_positive"),
    CheckConstraint("refills BETWEEN 0 AND 12", name="mr_refills_range"),
    CheckConstraint("frequency_per_day BETWEEN 1 AND 24", name="mr_frequency_range"),
    CheckConstraint("duration_days BETWEEN 1 AND 365", name="mr_duration_range"),
    CheckConstraint("dispensed >= 0 AND handed_over >= 0", name="mr_dispensed_positive"),
    CheckConstraint("revision >= 1", name="mr_revision_positive"),
)
Index("medication_requests_by_time", medication_requests.c.create_time, medication_requests.c.id)
for _column in ("patient_id", "encounter_id"):
    Index(
        f"medication_requests_by_{_column.removesuffix('_id')}",
        medication_requests.c[_column],
        medication_requests.c.create_time,
        medication_requests.c.id,
    )

# The pharmacy's dispenses as its events last told them; no foreign key: an event may name a
# prescription this service does not have (it is kept, and counts if the prescription appears).
dispenses = Table(
    "dispenses",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("medication_request_id", UUID(as_uuid=True), nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(one_of("status", DISPENSE_STATUSES), name="dispense_status_known"),
    CheckConstraint("quantity >= 0", name="dispense_quantity_positive"),
)
Index("dispenses_by_request", dispenses.c.medication_request_id)

# Events for other services (audit, the lab, the pharmacy), stored with the change.
outbox = declare_outbox(metadata)
# Events of the lab and the pharmacy applied here, by event id (his.runtime.inbox).
inbox = declare_inbox(metadata)
