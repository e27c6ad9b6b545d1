"""Names of the patient schema that the hot read needs without SQLAlchemy (tables.py declares the
tables themselves; a test checks the two agree)."""

from __future__ import annotations

SCHEMA = "patient"

# The columns of `patient.patients`, in tables.py's order (GetPatient's one statement reads them).
PATIENT_COLUMNS = (
    "id",
    "mrn_number",
    "state",
    "family_name",
    "given_names",
    "family_key",
    "given_key",
    "gender",
    "birth_date",
    "national_id_system_enc",
    "national_id_value_enc",
    "national_id_bidx",
    "phone_enc",
    "phone_bidx",
    "address_enc",
    "merged_into",
    "create_request_id",
    "create_request_fingerprint_enc",
    "version",
    "create_time",
    "update_time",
)
