"""Lab schema: the copy of lab orders, the test catalogue (seeded), specimens, reports, results,
released versions, critical results, the outbox and the inbox.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from his.runtime import inbox, outbox

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "lab"

# The tables as tables.py declares them (frozen here: a later change is a new migration).
TABLES = [
    """CREATE TABLE lab.lab_orders (
    id UUID NOT NULL,
    revision BIGINT NOT NULL,
    patient_id UUID NOT NULL,
    encounter_id UUID,
    requester_id UUID,
    laboratory_id UUID,
    code_system TEXT NOT NULL,
    code TEXT NOT NULL,
    code_display TEXT DEFAULT '' NOT NULL,
    priority INTEGER NOT NULL,
    status INTEGER NOT NULL,
    body BYTEA NOT NULL,
    order_time TIMESTAMP WITH TIME ZONE NOT NULL,
    receive_time TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id)
)""",
    """CREATE INDEX lab_orders_by_patient ON lab.lab_orders (patient_id)""",
    """CREATE INDEX lab_orders_worklist
    ON lab.lab_orders (laboratory_id, status, priority DESC, order_time, id)""",
    """CREATE TABLE lab.lab_tests (
    code TEXT NOT NULL,
    display TEXT NOT NULL,
    unit TEXT DEFAULT '' NOT NULL,
    PRIMARY KEY (code)
)""",
    """CREATE TABLE lab.specimens (
    id UUID NOT NULL,
    patient_id UUID NOT NULL,
    laboratory_id UUID NOT NULL,
    type_system TEXT NOT NULL,
    type_code TEXT NOT NULL,
    type_display TEXT DEFAULT '' NOT NULL,
    accession_id TEXT NOT NULL,
    collect_time TIMESTAMP WITH TIME ZONE NOT NULL,
    collector_id UUID NOT NULL,
    receive_time TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    status TEXT NOT NULL,
    reject_reason TEXT,
    entered_in_error_reason TEXT,
    create_request_id TEXT,
    create_request_fingerprint TEXT,
    version INTEGER DEFAULT '1' NOT NULL,
    create_time TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    update_time TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT specimen_status CHECK (
        status IN ('available', 'unsatisfactory', 'entered_in_error')),
    CONSTRAINT rejected_has_reason CHECK (
        status <> 'unsatisfactory' OR reject_reason IS NOT NULL),
    UNIQUE (accession_id),
    UNIQUE (create_request_id)
)""",
    """CREATE INDEX specimens_by_laboratory ON lab.specimens (laboratory_id, create_time)""",
    """CREATE INDEX specimens_by_patient ON lab.specimens (patient_id, create_time)""",
    """CREATE TABLE lab.panel_items (
    order_code TEXT NOT NULL,
    position INTEGER NOT NULL,
    test_code TEXT NOT NULL,
    PRIMARY KEY (order_code, position),
    CONSTRAINT panel_items_once UNIQUE (order_code, test_code),
    FOREIGN KEY(test_code) REFERENCES lab.lab_tests (code)
)""",
    """CREATE TABLE lab.reference_ranges (
    id SERIAL NOT NULL,
    test_code TEXT NOT NULL,
    sex TEXT DEFAULT 'any' NOT NULL,
    age_from_days INTEGER DEFAULT '0' NOT NULL,
    age_to_days INTEGER,
    low DOUBLE PRECISION,
    high DOUBLE PRECISION,
    critical_low DOUBLE PRECISION,
    critical_high DOUBLE PRECISION,
    PRIMARY KEY (id),
    CONSTRAINT range_sex_known CHECK (sex IN ('any', 'male', 'female')),
    CONSTRAINT range_ordered CHECK (low IS NULL OR high IS NULL OR low <= high),
    CONSTRAINT critical_low_below CHECK (
        critical_low IS NULL OR low IS NULL OR critical_low <= low),
    CONSTRAINT critical_high_above CHECK (
        critical_high IS NULL OR high IS NULL OR critical_high >= high),
    FOREIGN KEY(test_code) REFERENCES lab.lab_tests (code)
)""",
    """CREATE INDEX reference_ranges_by_test ON lab.reference_ranges (test_code)""",
    """CREATE TABLE lab.reports (
    id UUID NOT NULL,
    service_request_id UUID NOT NULL,
    patient_id UUID NOT NULL,
    encounter_id UUID,
    requester_id UUID,
    laboratory_id UUID NOT NULL,
    ordering_departments UUID[] NOT NULL,
    code_system TEXT NOT NULL,
    code TEXT NOT NULL,
    code_display TEXT DEFAULT '' NOT NULL,
    patient_sex TEXT NOT NULL,
    patient_birth_date DATE,
    status TEXT NOT NULL,
    conclusion TEXT DEFAULT '' NOT NULL,
    issue_time TIMESTAMP WITH TIME ZONE,
    performer_id UUID,
    amend_reason TEXT,
    released_version INTEGER DEFAULT '0' NOT NULL,
    revision BIGINT DEFAULT '1' NOT NULL,
    create_request_id TEXT,
    create_request_fingerprint TEXT,
    version INTEGER DEFAULT '1' NOT NULL,
    create_time TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    update_time TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT report_status CHECK (status IN ('registered', 'preliminary', 'final', 'amended')),
    CONSTRAINT released_has_time CHECK (
        (status IN ('final', 'amended')) = (issue_time IS NOT NULL AND released_version > 0)),
    UNIQUE (service_request_id),
    FOREIGN KEY(service_request_id) REFERENCES lab.lab_orders (id),
    UNIQUE (create_request_id)
)""",
    """CREATE INDEX reports_by_laboratory ON lab.reports (laboratory_id, create_time, id)""",
    """CREATE INDEX reports_by_patient ON lab.reports (patient_id, create_time, id)""",
    """CREATE INDEX reports_by_time ON lab.reports (create_time, id)""",
    """CREATE TABLE lab.specimen_orders (
    specimen_id UUID NOT NULL,
    service_request_id UUID NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (specimen_id, service_request_id),
    FOREIGN KEY(specimen_id) REFERENCES lab.specimens (id),
    FOREIGN KEY(service_request_id) REFERENCES lab.lab_orders (id)
)""",
    """CREATE INDEX specimen_orders_by_order ON lab.specimen_orders (service_request_id)""",
    """CREATE TABLE lab.observations (
    id UUID NOT NULL,
    report_id UUID NOT NULL,
    position INTEGER NOT NULL,
    code_system TEXT NOT NULL,
    code TEXT NOT NULL,
    code_display TEXT DEFAULT '' NOT NULL,
    value_number DOUBLE PRECISION,
    value_unit TEXT,
    value_text TEXT,
    range_low DOUBLE PRECISION,
    range_high DOUBLE PRECISION,
    range_text TEXT,
    interpretation INTEGER DEFAULT '0' NOT NULL,
    status TEXT NOT NULL,
    note TEXT DEFAULT '' NOT NULL,
    update_time TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT observation_status CHECK (
        status IN ('registered', 'preliminary', 'final', 'amended', 'corrected', 'cancelled')),
    CONSTRAINT one_value CHECK (value_number IS NULL OR value_text IS NULL),
    CONSTRAINT observations_code_once UNIQUE (report_id, code),
    FOREIGN KEY(report_id) REFERENCES lab.reports (id)
)""",
    """CREATE INDEX observations_by_report ON lab.observations (report_id, position)""",
    """CREATE TABLE lab.report_specimens (
    report_id UUID NOT NULL,
    specimen_id UUID NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (report_id, specimen_id),
    FOREIGN KEY(report_id) REFERENCES lab.reports (id),
    FOREIGN KEY(specimen_id) REFERENCES lab.specimens (id)
)""",
    """CREATE INDEX report_specimens_by_specimen ON lab.report_specimens (specimen_id)""",
    """CREATE TABLE lab.report_versions (
    report_id UUID NOT NULL,
    version INTEGER NOT NULL,
    body BYTEA NOT NULL,
    issue_time TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (report_id, version),
    FOREIGN KEY(report_id) REFERENCES lab.reports (id)
)""",
    """CREATE TABLE lab.critical_results (
    id UUID NOT NULL,
    observation_id UUID NOT NULL,
    report_id UUID NOT NULL,
    report_version INTEGER NOT NULL,
    requester_id UUID,
    body BYTEA NOT NULL,
    issue_time TIMESTAMP WITH TIME ZONE NOT NULL,
    acknowledge_time TIMESTAMP WITH TIME ZONE,
    acknowledged_by UUID,
    PRIMARY KEY (id),
    CONSTRAINT critical_once_per_version UNIQUE (observation_id, report_version),
    CONSTRAINT acknowledged_by_someone CHECK (
        (acknowledge_time IS NULL) = (acknowledged_by IS NULL)),
    FOREIGN KEY(observation_id) REFERENCES lab.observations (id),
    FOREIGN KEY(report_id) REFERENCES lab.reports (id)
)""",
    """CREATE INDEX critical_results_by_observation ON lab.critical_results (observation_id)""",
    """CREATE INDEX critical_results_open
    ON lab.critical_results (requester_id, issue_time, id) WHERE acknowledge_time IS NULL""",
]

# A released version of a report is the record of what was told to the clinicians: it never
# changes and is never deleted (tables.py, REPORT_VERSIONS_IMMUTABLE_TRIGGER).
IMMUTABLE_FUNCTION = """
CREATE OR REPLACE FUNCTION lab.report_versions_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'a released report version never changes; amend the report instead'
    USING ERRCODE = 'check_violation', CONSTRAINT = 'report_versions_immutable';
END
$$;
"""

IMMUTABLE_TRIGGER = """
CREATE TRIGGER report_versions_immutable
BEFORE UPDATE OR DELETE ON lab.report_versions
FOR EACH ROW EXECUTE FUNCTION lab.report_versions_immutable();
"""

# The test catalogue: orderable LOINC codes (each single test orders itself; CBC 58410-2 and
# basic metabolic panel 51990-0), UCUM units, and adult/child reference ranges (18 years =
# 6575 days), by sex where they differ, with critical limits. Typical adult values of common
# laboratory references; a laboratory validates its own before clinical use.
SEED = [
    """
INSERT INTO lab.lab_tests (code, display, unit) VALUES
  ('718-7', 'Hemoglobin [Mass/volume] in Blood', 'g/dL'),
  ('4544-3', 'Hematocrit [Volume Fraction] of Blood by Automated count', '%'),
  ('6690-2', 'Leukocytes [#/volume] in Blood by Automated count', '10*3/uL'),
  ('777-3', 'Platelets [#/volume] in Blood by Automated count', '10*3/uL'),
  ('2345-7', 'Glucose [Mass/volume] in Serum or Plasma', 'mg/dL'),
  ('6299-2', 'Urea nitrogen [Mass/volume] in Blood', 'mg/dL'),
  ('2160-0', 'Creatinine [Mass/volume] in Serum or Plasma', 'mg/dL'),
  ('17861-6', 'Calcium [Mass/volume] in Serum or Plasma', 'mg/dL'),
  ('2951-2', 'Sodium [Moles/volume] in Serum or Plasma', 'mmol/L'),
  ('2823-3', 'Potassium [Moles/volume] in Serum or Plasma', 'mmol/L'),
  ('2075-0', 'Chloride [Moles/volume] in Serum or Plasma', 'mmol/L'),
  ('2028-9', 'Carbon dioxide, total [Moles/volume] in Serum or Plasma', 'mmol/L'),
  ('10839-9', 'Troponin I.cardiac [Mass/volume] in Serum or Plasma', 'ng/mL')
    """,
    """
INSERT INTO lab.panel_items (order_code, position, test_code) VALUES
  ('718-7', 1, '718-7'),
  ('4544-3', 1, '4544-3'),
  ('6690-2', 1, '6690-2'),
  ('777-3', 1, '777-3'),
  ('2345-7', 1, '2345-7'),
  ('6299-2', 1, '6299-2'),
  ('2160-0', 1, '2160-0'),
  ('17861-6', 1, '17861-6'),
  ('2951-2', 1, '2951-2'),
  ('2823-3', 1, '2823-3'),
  ('2075-0', 1, '2075-0'),
  ('2028-9', 1, '2028-9'),
  ('10839-9', 1, '10839-9'),
  ('58410-2', 1, '718-7'),
  ('58410-2', 2, '4544-3'),
  ('58410-2', 3, '6690-2'),
  ('58410-2', 4, '777-3'),
  ('51990-0', 1, '2345-7'),
  ('51990-0', 2, '6299-2'),
  ('51990-0', 3, '2160-0'),
  ('51990-0', 4, '17861-6'),
  ('51990-0', 5, '2951-2'),
  ('51990-0', 6, '2823-3'),
  ('51990-0', 7, '2075-0'),
  ('51990-0', 8, '2028-9')
    """,
    """
INSERT INTO lab.reference_ranges (
    id, test_code, sex, age_from_days, age_to_days, low, high, critical_low, critical_high) VALUES
  (1, '718-7', 'any', 0, 6575, 11.0, 16.0, 7.0, 20.0),
  (2, '718-7', 'male', 6575, NULL, 13.5, 17.5, 7.0, 20.0),
  (3, '718-7', 'female', 6575, NULL, 12.0, 15.5, 7.0, 20.0),
  (4, '718-7', 'any', 6575, NULL, 12.0, 17.5, 7.0, 20.0),
  (5, '4544-3', 'any', 0, 6575, 33.0, 45.0, 20.0, 60.0),
  (6, '4544-3', 'male', 6575, NULL, 41.0, 53.0, 20.0, 60.0),
  (7, '4544-3', 'female', 6575, NULL, 36.0, 46.0, 20.0, 60.0),
  (8, '4544-3', 'any', 6575, NULL, 36.0, 53.0, 20.0, 60.0),
  (9, '6690-2', 'any', 0, 6575, 5.0, 15.0, 2.0, 30.0),
  (10, '6690-2', 'any', 6575, NULL, 4.0, 11.0, 2.0, 30.0),
  (11, '777-3', 'any', 0, NULL, 150.0, 400.0, 50.0, 1000.0),
  (12, '2345-7', 'any', 0, NULL, 70.0, 99.0, 40.0, 500.0),
  (13, '6299-2', 'any', 0, NULL, 7.0, 20.0, NULL, NULL),
  (14, '2160-0', 'any', 0, 6575, 0.3, 0.7, NULL, 10.0),
  (15, '2160-0', 'male', 6575, NULL, 0.74, 1.35, NULL, 10.0),
  (16, '2160-0', 'female', 6575, NULL, 0.59, 1.04, NULL, 10.0),
  (17, '2160-0', 'any', 6575, NULL, 0.59, 1.35, NULL, 10.0),
  (18, '17861-6', 'any', 0, NULL, 8.6, 10.3, 6.0, 13.0),
  (19, '2951-2', 'any', 0, NULL, 135.0, 145.0, 120.0, 160.0),
  (20, '2823-3', 'any', 0, NULL, 3.5, 5.1, 2.5, 6.5),
  (21, '2075-0', 'any', 0, NULL, 98.0, 107.0, 80.0, 120.0),
  (22, '2028-9', 'any', 0, NULL, 22.0, 29.0, 10.0, 40.0),
  (23, '10839-9', 'any', 0, NULL, NULL, 0.04, NULL, NULL)
    """,
]


def upgrade() -> None:
    for statement in TABLES:
        op.execute(statement)
    op.execute(IMMUTABLE_FUNCTION)
    op.execute(IMMUTABLE_TRIGGER)
    for statement in outbox.create_table_sql(SCHEMA) + inbox.create_table_sql(SCHEMA):
        op.execute(statement)
    for statement in SEED:
        op.execute(statement)


def downgrade() -> None:
    for statement in inbox.drop_table_sql(SCHEMA) + outbox.drop_table_sql(SCHEMA):
        op.execute(statement)
    op.execute("DROP TRIGGER report_versions_immutable ON lab.report_versions")
    op.execute("DROP FUNCTION lab.report_versions_immutable()")
    for statement in (
        "DROP TABLE lab.critical_results",
        "DROP TABLE lab.report_versions",
        "DROP TABLE lab.report_specimens",
        "DROP TABLE lab.observations",
        "DROP TABLE lab.specimen_orders",
        "DROP TABLE lab.reports",
        "DROP TABLE lab.reference_ranges",
        "DROP TABLE lab.panel_items",
        "DROP TABLE lab.specimens",
        "DROP TABLE lab.lab_tests",
        "DROP TABLE lab.lab_orders",
    ):
        op.execute(statement)
