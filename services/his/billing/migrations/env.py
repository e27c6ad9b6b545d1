"""Alembic environment of the billing schema; the shared runtime does the work."""

from his.billing.tables import metadata
from his.runtime.migrations import run_env

run_env(metadata)
