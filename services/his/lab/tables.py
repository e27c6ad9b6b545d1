"""The lab schema: the laboratory's copy of lab orders, its test catalogue, specimens, reports with
their results, every released version of a report, and critical results awaiting acknowledgement.

Invariants live here where the database can hold them: one accession id per specimen, one report
per order, one result per code in a report, one kept copy per released version, a released
version never changes (trigger, migration 0001).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from his.runtime.inbox import declare as declare_inbox
from his.runtime.outbox import declare as declare_outbox

SCHEMA = "lab"
metadata = MetaData(schema=SCHEMA)


def _times() -> list[Column[object]]:
    return [
        Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


# The laboratory's copy of the orders service's lab orders (ServiceRequestChanged events): the
# state of the highest revision delivered. Checks of specimens and reports read only this.
lab_orders = Table(
    "lab_orders",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("encounter_id", UUID(as_uuid=True)),
    Column("requester_id", UUID(as_uuid=True)),
    Column("laboratory_id", UUID(as_uuid=True)),
    Column("code_system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("code_display", Text, nullable=False, server_default=""),
    Column("priority", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    # The order as delivered (his.orders.v1.ServiceRequest), returned by the worklist as it is.
    Column("body", LargeBinary, nullable=False),
    Column("order_time", DateTime(timezone=True), nullable=False),
    Column("receive_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index(
    "lab_orders_worklist",
    lab_orders.c.laboratory_id,
    lab_orders.c.status,
    lab_orders.c.priority.desc(),
    lab_orders.c.order_time,
    lab_orders.c.id,
)
Index("lab_orders_by_patient", lab_orders.c.patient_id)

# The test catalogue: what each orderable LOINC code (a panel or a single test) measures.
lab_tests = Table(
    "lab_tests",
    metadata,
    Column("code", Text, primary_key=True),
    Column("display", Text, nullable=False),
    # The UCUM unit results are recorded in; empty for a unitless or textual result.
    Column("unit", Text, nullable=False, server_default=""),
)

panel_items = Table(
    "panel_items",
    metadata,
    Column("order_code", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("test_code", Text, ForeignKey("lab_tests.code"), nullable=False),
    PrimaryKeyConstraint("order_code", "position"),
    UniqueConstraint("order_code", "test_code", name="panel_items_once"),
)

# Reference and critical limits of a test, by sex ('any', 'male', 'female') and age band in days
# [age_from_days, age_to_days). The most specific matching row wins (sex before 'any').
reference_ranges = Table(
    "reference_ranges",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("test_code", Text, ForeignKey("lab_tests.code"), nullable=False),
    Column("sex", Text, nullable=False, server_default="any"),
    Column("age_from_days", Integer, nullable=False, server_default="0"),
    Column("age_to_days", Integer),
    Column("low", Double),
    Column("high", Double),
    Column("critical_low", Double),
    Column("critical_high", Double),
    CheckConstraint("sex IN ('any', 'male', 'female')", name="range_sex_known"),
    CheckConstraint("low IS NULL OR high IS NULL OR low <= high", name="range_ordered"),
    CheckConstraint(
        "critical_low IS NULL OR low IS NULL OR critical_low <= low", name="critical_low_below"
    ),
    CheckConstraint(
        "critical_high IS NULL OR high IS NULL OR critical_high >= high",
        name="critical_high_above",
    ),
)
Index("reference_ranges_by_test", reference_ranges.c.test_code)

specimens = Table(
    "specimens",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("laboratory_id", UUID(as_uuid=True), nullable=False),
    Column("type_system", Text, nullable=False),
    Column("type_code", Text, nullable=False),
    Column("type_display", Text, nullable=False, server_default=""),
    Column("accession_id", Text, nullable=False, unique=True),
    Column("collect_time", DateTime(timezone=True), nullable=False),
    Column("collector_id", UUID(as_uuid=True), nullable=False),
    Column("receive_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("status", Text, nullable=False),
    Column("reject_reason", Text),
    Column("entered_in_error_reason", Text),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("version", Integer, nullable=False, server_default="1"),
    *_times(),
    CheckConstraint(
        "status IN ('available', 'unsatisfactory', 'entered_in_error')", name="specimen_status"
    ),
    CheckConstraint(
        "status <> 'unsatisfactory' OR reject_reason IS NOT NULL", name="rejected_has_reason"
    ),
)
Index("specimens_by_laboratory", specimens.c.laboratory_id, specimens.c.create_time)
Index("specimens_by_patient", specimens.c.patient_id, specimens.c.create_time)

specimen_orders = Table(
    "specimen_orders",
    metadata,
    Column("specimen_id", UUID(as_uuid=True), ForeignKey("specimens.id"), nullable=False),
    Column("service_request_id", UUID(as_uuid=True), ForeignKey("lab_orders.id"), nullable=False),
    Column("position", Integer, nullable=False),
    PrimaryKeyConstraint("specimen_id", "service_request_id"),
)
Index("specimen_orders_by_order", specimen_orders.c.service_request_id)

reports = Table(
    "reports",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "service_request_id",
        UUID(as_uuid=True),
        ForeignKey("lab_orders.id"),
        nullable=False,
        unique=True,
    ),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("encounter_id", UUID(as_uuid=True)),
    Column("requester_id", UUID(as_uuid=True)),
    Column("laboratory_id", UUID(as_uuid=True), nullable=False),
    # The departments of the ordering doctor when the report was opened: the ordering team.
    Column("ordering_departments", ARRAY(UUID(as_uuid=True)), nullable=False),
    Column("code_system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("code_display", Text, nullable=False, server_default=""),
    # What reference ranges depend on, read from the patient service when the report was opened.
    Column("patient_sex", Text, nullable=False),
    Column("patient_birth_date", Date),
    Column("status", Text, nullable=False),
    Column("conclusion", Text, nullable=False, server_default=""),
    Column("issue_time", DateTime(timezone=True)),
    Column("performer_id", UUID(as_uuid=True)),
    Column("amend_reason", Text),
    Column("released_version", Integer, nullable=False, server_default="0"),
    # Counts every change: the revision of DiagnosticReportIssued events.
    Column("revision", BigInteger, nullable=False, server_default="1"),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("version", Integer, nullable=False, server_default="1"),
    *_times(),
    CheckConstraint(
        "status IN ('registered', 'preliminary', 'final', 'amended')", name="report_status"
    ),
    CheckConstraint(
        "(status IN ('final', 'amended')) = (issue_time IS NOT NULL AND released_version > 0)",
        name="released_has_time",
    ),
)
Index("reports_by_patient", reports.c.patient_id, reports.c.create_time, reports.c.id)
Index("reports_by_laboratory", reports.c.laboratory_id, reports.c.create_time, reports.c.id)
Index("reports_by_time", reports.c.create_time, reports.c.id)

report_specimens = Table(
    "report_specimens",
    metadata,
    Column("report_id", UUID(as_uuid=True), ForeignKey("reports.id"), nullable=False),
    Column("specimen_id", UUID(as_uuid=True), ForeignKey("specimens.id"), nullable=False),
    Column("position", Integer, nullable=False),
    PrimaryKeyConstraint("report_id", "specimen_id"),
)
Index("report_specimens_by_specimen", report_specimens.c.specimen_id)

observations = Table(
    "observations",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("report_id", UUID(as_uuid=True), ForeignKey("reports.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("code_system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("code_display", Text, nullable=False, server_default=""),
    Column("value_number", Double),
    Column("value_unit", Text),
    Column("value_text", Text),
    Column("range_low", Double),
    Column("range_high", Double),
    Column("range_text", Text),
    Column("interpretation", Integer, nullable=False, server_default="0"),
    Column("status", Text, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "status IN ('registered', 'preliminary', 'final', 'amended', 'corrected', 'cancelled')",
        name="observation_status",
    ),
    CheckConstraint("value_number IS NULL OR value_text IS NULL", name="one_value"),
    UniqueConstraint("report_id", "code", name="observations_code_once"),
)
Index("observations_by_report", observations.c.report_id, observations.c.position)

# Every released version of a report as it was released (a serialized DiagnosticReport). Never
# changed once written (trigger `report_versions_immutable`, migration 0001).
report_versions = Table(
    "report_versions",
    metadata,
    Column("report_id", UUID(as_uuid=True), ForeignKey("reports.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("issue_time", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("report_id", "version"),
)

# A critical value as released in one report version, for its ordering doctor until acknowledged.
critical_results = Table(
    "critical_results",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("observation_id", UUID(as_uuid=True), ForeignKey("observations.id"), nullable=False),
    Column("report_id", UUID(as_uuid=True), ForeignKey("reports.id"), nullable=False),
    Column("report_version", Integer, nullable=False),
    Column("requester_id", UUID(as_uuid=True)),
    # The observation as released (a serialized Observation).
    Column("body", LargeBinary, nullable=False),
    Column("issue_time", DateTime(timezone=True), nullable=False),
    Column("acknowledge_time", DateTime(timezone=True)),
    Column("acknowledged_by", UUID(as_uuid=True)),
    UniqueConstraint("observation_id", "report_version", name="critical_once_per_version"),
    CheckConstraint(
        "(acknowledge_time IS NULL) = (acknowledged_by IS NULL)", name="acknowledged_by_someone"
    ),
)
Index(
    "critical_results_open",
    critical_results.c.requester_id,
    critical_results.c.issue_time,
    critical_results.c.id,
    postgresql_where=text("acknowledge_time IS NULL"),
)
Index("critical_results_by_observation", critical_results.c.observation_id)

REPORT_VERSIONS_IMMUTABLE_TRIGGER = "report_versions_immutable"

# Events for other services (audit, DiagnosticReportIssued), stored with the change.
outbox = declare_outbox(metadata)
# Events of other services applied here, by event id (his.runtime.inbox).
inbox = declare_inbox(metadata)
