"""Events stored by a data migration: what a service would have emitted for rows made before it
emitted anything (for example the care relationships' AppointmentChanged, issue 17).

A migration runs on alembic's synchronous connection, inside the migration's transaction, so the
events commit with the revision or not at all; the relay delivers them as any other outbox row.
Each event's id is derived from what it reports (`backfill_event_id`), so running the migration
again (a downgrade and an upgrade) stores nothing twice, and a receiver that saw the event
already drops it by its id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

from sqlalchemy import Connection, text

from his.runtime.outbox import Outgoing, row, table

# The namespace of backfilled events' ids (uuid5): fixed, so the same record and revision always
# make the same id.
_NAMESPACE = uuid.UUID("5b0c4f9e-8d0a-4f57-9a52-6c1a3e0b7d21")

# Rows read and events inserted per round trip: a migration over a large table must neither hold
# every row in memory nor pay one round trip per row (review rev17: 20k rows took ~42 s).
BATCH = 1000


def backfill_event_id(kind: str, record: str, revision: int) -> str:
    """The event id of a backfilled `kind` event of `record` at `revision` (a UUID)."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}\0{record}\0{revision}"))


def backfill(
    connection: Connection,
    schema: str,
    kind: str,
    *,
    query: str,
    params: Mapping[str, object],
    event_of: Callable[[Any, str], Outgoing],
) -> None:
    """Store in the schema's outbox the `kind` event `event_of(row, event_id)` of every row
    `query` selects (rows with `id` and `version`; the id derived from both). Rows are streamed
    (a server-side cursor, per statement: `Connection.execution_options` would change alembic's
    connection for good) and events inserted in batches, so only one batch is held at a time."""
    rows = connection.execute(
        text(query).execution_options(stream_results=True, yield_per=BATCH), dict(params)
    )
    events = (event_of(r, backfill_event_id(kind, str(r.id), r.version)) for r in rows)
    add_in_migration(connection, schema, events)


def _batches(events: Iterable[Outgoing], size: int) -> Iterator[list[Outgoing]]:
    it = iter(events)
    while batch := list(islice(it, size)):
        yield batch


def add_in_migration(connection: Connection, schema: str, events: Iterable[Outgoing]) -> None:
    """Store `events` in the schema's outbox on a migration's connection, in batches, skipping
    any already stored (same id and destination)."""
    statement = text(
        f"INSERT INTO {table(schema)} "  # noqa: S608 (a checked schema name, values bound)
        "(event_id, destination, event_type, envelope) "
        "VALUES (CAST(:event_id AS uuid), :destination, :event_type, :envelope) "
        "ON CONFLICT (event_id, destination) DO NOTHING"
    )
    for batch in _batches(events, BATCH):
        connection.execute(statement, [row(event) for event in batch])
