"""Alembic environment of the iam schema; the shared runtime does the work."""

from his.iam.tables import metadata
from his.runtime.migrations import run_env

run_env(metadata)
