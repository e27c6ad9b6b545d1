"""The label view of a patient: what a laboratory needs to label a specimen and pick reference
ranges (name, MRN, sex, birth date), for callers whose only way to patient data is the laboratory.

A lab technician reads demographics (the policy allows it) but not the whole record: address,
phone, national identifier and the record's bookkeeping are cleared before the answer leaves.
"""

from __future__ import annotations

from his.base import identity
from his.patient.v1 import patient_service_pb2 as pb

# Roles that read the whole demographic record; a caller holding none of them but LAB_TECHNICIAN
# gets the label view.
_FULL_VIEW_ROLES = frozenset(
    {"SERVICE", "REGISTRAR", "DOCTOR", "NURSE", "PHARMACIST", "BILLING_CLERK"}
)


def label_view_only() -> bool:
    """Whether the caller is to see only the label view."""
    principal = identity.current_or_none()
    if principal is None:
        return False
    return "LAB_TECHNICIAN" in principal.roles and not principal.roles & _FULL_VIEW_ROLES


def as_label(patient: pb.Patient) -> pb.Patient:
    """`patient` with only the label fields (and where a merged record went)."""
    return pb.Patient(
        name=patient.name,
        mrn=patient.mrn,
        state=patient.state,
        family_name=patient.family_name,
        given_names=patient.given_names,
        gender=patient.gender,
        birth_date=patient.birth_date if patient.HasField("birth_date") else None,
        merged_into=patient.merged_into,
    )


def for_caller(patient: pb.Patient) -> pb.Patient:
    """`patient` as the caller may see it."""
    return as_label(patient) if label_view_only() else patient
