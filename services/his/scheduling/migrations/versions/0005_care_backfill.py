"""Data: AppointmentChanged for the appointments made before scheduling emitted it (care
relationships, issue 17), so that after an upgrade clinicians are related to the patients of
appointments booked before it.

Each appointment that is not cancelled and did not end longer ago than the care window's `after`
(HIS_PATIENT_CARE_AFTER_DAYS, as the patient service reads it: 30 days unless set) gets the event
the service stores today (his.scheduling.care_events.appointment_changed), in scheduling's own
outbox; the relay delivers it to the patient service, which keeps the newest revision per
appointment. Appointments further ahead than the window's `before` are included too: the patient
service judges the window when it reads, so their relationship must exist by the time they enter
it. Event ids are derived from the appointment and its revision, so running this again stores
nothing twice and the patient service's inbox drops what it has seen.

The event is built by today's code from the row as it is at this revision; a later change to
the appointments table or the mapping must keep that working or freeze a copy here.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from alembic import op

from his.patient.care import CareConfig
from his.runtime.outbox_backfill import backfill
from his.scheduling.care_events import appointment_changed

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "scheduling"


def upgrade() -> None:
    backfill(
        op.get_bind(),
        SCHEMA,
        "AppointmentChanged",
        query=f'SELECT * FROM "{SCHEMA}".appointments '  # noqa: S608 (a constant schema)
        "WHERE status <> 'cancelled' AND end_time >= now() - make_interval(secs => :after) "
        "ORDER BY start_time, id",
        params={"after": CareConfig.from_env(os.environ).after_s},
        event_of=lambda row, event_id: appointment_changed(row, event_id=event_id),
    )


def downgrade() -> None:
    # Nothing to undo: the events describe appointments as they are; those delivered already are
    # the patient service's facts, and those not yet delivered may still go.
    pass
