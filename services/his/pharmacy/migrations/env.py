"""Alembic environment of the pharmacy schema; the shared runtime does the work."""

from his.pharmacy.tables import metadata
from his.runtime.migrations import run_env

run_env(metadata)
