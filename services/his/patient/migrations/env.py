"""Alembic environment of the patient schema; the shared runtime does the work."""

from his.patient.tables import metadata
from his.runtime.migrations import run_env

run_env(metadata)
