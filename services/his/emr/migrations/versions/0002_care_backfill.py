"""Data: EncounterChanged for the encounters made before the EMR emitted it (care relationships,
issue 17), so that after an upgrade clinicians are related to the patients of encounters made
before it.

Each encounter that is neither cancelled nor entered in error, and is still open or ended no
longer ago than the care window's `after` (HIS_PATIENT_CARE_AFTER_DAYS, as the patient service
reads it: 30 days unless set), gets the event the service stores today
(his.emr.care_events.encounter_changed), in emr's own outbox; the relay delivers it to the patient
service, which keeps the newest revision per encounter. Event ids are derived from the encounter
and its revision, so running this again stores nothing twice and the patient service's inbox
drops what it has seen.

The event is built by today's code from the row as it is at this revision; a later change to
the encounters table or the mapping must keep that working or freeze a copy here.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from alembic import op

from his.emr.care_events import encounter_changed
from his.patient.care import CareConfig
from his.runtime.outbox_backfill import backfill

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "emr"


def upgrade() -> None:
    backfill(
        op.get_bind(),
        SCHEMA,
        "EncounterChanged",
        query=f'SELECT * FROM "{SCHEMA}".encounters '  # noqa: S608 (a constant schema)
        "WHERE status NOT IN ('cancelled', 'entered_in_error') "
        "AND (end_time IS NULL OR end_time >= now() - make_interval(secs => :after)) "
        "ORDER BY create_time, id",
        params={"after": CareConfig.from_env(os.environ).after_s},
        event_of=lambda row, event_id: encounter_changed(row, event_id=event_id),
    )


def downgrade() -> None:
    # Nothing to undo: the events describe encounters as they are; those delivered already are
    # the patient service's facts, and those not yet delivered may still go.
    pass
