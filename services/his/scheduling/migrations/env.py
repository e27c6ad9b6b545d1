"""Alembic environment of the scheduling schema; the shared runtime does the work."""

from his.runtime.migrations import run_env
from his.scheduling.tables import metadata

run_env(metadata)
