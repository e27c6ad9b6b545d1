"""Alembic environment of the orders schema; the shared runtime does the work."""

from his.orders.tables import metadata
from his.runtime.migrations import run_env

run_env(metadata)
