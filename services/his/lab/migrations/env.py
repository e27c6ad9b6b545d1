"""Alembic environment of the lab schema; the shared runtime does the work."""

from his.lab.tables import metadata
from his.runtime.migrations import run_env

run_env(metadata)
