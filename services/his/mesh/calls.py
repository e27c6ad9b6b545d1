"""Which workload calls which rpcs of which service: the calls the code makes, declared once.

The mesh AuthorizationPolicies and the NetworkPolicies must allow exactly these (plus the mobile
gateway's user-facing rpcs, which gateway/authorization.yaml lists); `his mesh check` holds them
to it, and tests/mesh/test_calls.py holds this table to the code: every rpc the code calls is
here, and every rpc here is called. A caller is a ServiceAccount and the pods' `app` label.
"""

from __future__ import annotations

import functools

from his.mesh.contracts import Rpc, rpcs

# Every service process, through the shared runtime and SDK (services/his/runtime, his_client):
# it verifies tokens with iam's key set (runtime/security.py), logs in as itself
# (his_client/credentials.py) and checks break-the-glass grants (runtime/access.py); it writes its
# audit trail (runtime/audit_trail.py) — except audit, which appends to its own trail.
_RUNTIME = {
    "iam": ("GetJwks", "IssueToken", "ListEmergencyAccessGrants"),
    "audit": ("WriteAuditEvents",),
}

CALLS: dict[str, dict[str, tuple[str, ...]]] = {
    # Record state changes feed scheduling's copy through the outbox relay (patient/events.py).
    "patient": {**_RUNTIME, "scheduling": ("DeliverEvents",)},
    # Booking checks the patient is active, from its copy of patient states or, for a patient it
    # has no copy of yet, by asking (scheduling/patient_states.py); research consents are read as
    # scheduling itself (scheduling/service.py).
    # Check-ins open their encounter in emr through the outbox relay (scheduling/check_in.py).
    "scheduling": {
        **_RUNTIME,
        # Appointment changes feed the patient service's care relationships through the relay
        # (scheduling/care_events.py).
        "patient": ("GetPatient", "ListConsents", "DeliverEvents"),
        "emr": ("CreateEncounter",),
        # Check-ins are charged: the relay delivers AppointmentCheckedIn to billing.
        "billing": ("DeliverEvents",),
    },
    # Opening an encounter checks the patient, department, practitioner and appointment; access
    # decisions read the patient's privacy consent as emr itself (emr/service.py).
    "emr": {
        **_RUNTIME,
        "iam": (*_RUNTIME["iam"], "GetDepartment", "GetStaffMember"),
        # Encounter changes feed the patient service's care relationships through the relay
        # (emr/care_events.py).
        "patient": ("GetPatient", "ListConsents", "DeliverEvents"),
        "scheduling": ("GetAppointment",),
    },
    # Placing an order checks the patient, the encounter (as the doctor), the performing
    # laboratory and the formulary; access decisions read the patient's privacy consent; the
    # relay delivers each order's Changed events to the lab and the pharmacy (orders/events.py).
    "orders": {
        **_RUNTIME,
        "iam": (*_RUNTIME["iam"], "GetDepartment"),
        "patient": ("GetPatient", "ListConsents"),
        "emr": ("GetEncounter",),
        "lab": ("DeliverEvents",),
        "pharmacy": ("GetMedication", "DeliverEvents"),
        # Completed lab orders are charged: the relay delivers ServiceRequestChanged to billing.
        "billing": ("DeliverEvents",),
    },
    # A report keeps the patient's sex and birth date (read as the caller: the label view) and the
    # ordering doctor's departments; access decisions read the patient's privacy consent as lab
    # itself (lab/service.py). Issued reports reach orders through the outbox relay
    # (lab/issued.py).
    "lab": {
        **_RUNTIME,
        "iam": (*_RUNTIME["iam"], "ListMemberships"),
        "patient": ("GetPatient", "ListConsents"),
        "orders": ("DeliverEvents",),
    },
    # Stock is received only into a pharmacy department; a clinician's access to a dispense asks
    # emr for its encounter on the clinician's behalf and reads the patient's privacy consent as
    # pharmacy itself (pharmacy/service.py); dispense changes reach orders through the outbox
    # relay (pharmacy/events.py).
    "pharmacy": {
        **_RUNTIME,
        "iam": (*_RUNTIME["iam"], "GetDepartment"),
        "patient": ("ListConsents",),
        "emr": ("GetEncounter",),
        "orders": ("DeliverEvents",),
        # Handed-over dispenses are charged: the relay delivers MedicationDispenseChanged too.
        "billing": ("DeliverEvents",),
    },
    # A manual charge names an active patient (his_client.patient.require_active);
    # ReconcileCharges asks, as billing itself, what the sources rendered in a period: checked-in
    # appointments, completed service requests and dispenses (billing/reconcile.py).
    "billing": {
        **_RUNTIME,
        "patient": ("GetPatient",),
        "scheduling": ("ListAppointments",),
        "orders": ("ListServiceRequests",),
        "pharmacy": ("ListMedicationDispenses",),
    },
    # A break-the-glass grant names an active patient (iam/service.py); a patient signing in is
    # found by phone number (iam/sign_in.py).
    "iam": {**_RUNTIME, "patient": ("GetPatient", "ListPatients")},
    # audit calls no one as itself: it only verifies callers' tokens with iam's key set.
    "audit": {"iam": ("GetJwks",)},
    # The research export job (services/his/research_export.py); it logs in unless given a token.
    "research-export": {
        "patient": ("ListResearchPatients",),
        "scheduling": ("ListResearchAppointments",),
        "iam": ("IssueToken",),
    },
}


@functools.cache
def calls_to(service: str) -> frozenset[tuple[str, Rpc]]:
    """(caller, rpc) pairs of every declared call to one service."""
    by_name = {rpc.method: rpc for rpc in rpcs(service)}
    return frozenset(
        (caller, by_name[method])
        for caller, callees in CALLS.items()
        for method in callees.get(service, ())
    )
