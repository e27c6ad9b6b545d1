"""Alembic environment of the emr schema; the shared runtime does the work."""

from his.emr.tables import metadata
from his.runtime.migrations import run_env

run_env(metadata)
