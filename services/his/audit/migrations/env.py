"""Alembic environment of the audit schema; the shared runtime does the work."""

from his.audit.tables import metadata
from his.runtime.migrations import run_env

run_env(metadata)
