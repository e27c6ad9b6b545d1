"""The Rego policies decide as ADR 0002 says: every role x resource class x action, and each rule.

The expectations below are written from the ADR's rule list, not from the Rego: a grid of what each
role may do to each resource class, expanded over a few patient situations, plus one row per
special rule. Every case is decided three times (evaluate, then decide twice) and all must agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import pytest

from his.base.identity import SERVICE_ROLE, STAFF_ROLES
from his.runtime.policy import Decision, PolicyEngine, Request

ACTIONS = {
    "r": "read",
    "c": "create",
    "u": "update",
    "d": "delete",
    "m": "merge",
    "x": "dispense",
    "e": "execute",
}
ROLES = (SERVICE_ROLE, *STAFF_ROLES)

# What each role may do to each class (columns: SERVICE, REGISTRAR, DOCTOR, NURSE, PHARMACIST,
# LAB_TECHNICIAN, BILLING_CLERK, AUDITOR, ADMINISTRATOR, PRIVACY_OFFICER). A cell lists action letters (ACTIONS;
# * = all), allowed whatever the patient situation, then optionally:
#   ~letters   DOCTOR/NURSE: allowed with department match or care and consent not revoked;
#              otherwise only under break-the-glass (see SITUATIONS); demographics belong to
#              no department, so their refusal is NO_CARE_RELATIONSHIP
#   @letters   allowed only on the caller's own resource (break-the-glass grants)
#   &letters   NURSE: as ~, and only on the caller's own record (their own note)
#   !u         PHARMACIST: update allowed only away from the prescription's locked fields
#              (every field of a MedicationRequest there is today, status included)
#   ^letters   allowed only on a record of one of the caller's departments: a lab technician and
#              the records of a laboratory they are a member of (the lab orders it performs, its
#              specimens and reports); otherwise DEPARTMENT_MISMATCH, emergency or not
#   N          whatever is not allowed is refused with NO_CLINICAL_ACCESS, not ROLE_NOT_PERMITTED:
#              the role never sees this kind of patient data
#   -          nothing
# SERVICE reads appointments, lab orders and dispenses: billing lists them as itself to reconcile
# its charges (the mesh lets only billing call those List rpcs as a service).
# fmt: off
GRID: dict[str, tuple[str, ...]] = {
    #                           SRV    REG     DOC      NUR       PHA      LAB     BIL  AUD   ADM    PRV
    "patient.demographics":    ("r",   "rcum", "~r",    "~r",     "r",     "r",    "r", "N",  "N",   "N"),
    "patient.consent":         ("r",   "rcu",  "r",     "r",      "-",     "-",    "-", "N",  "N",   "N"),
    "scheduling.schedule":     ("-",   "*",    "r",     "r",      "-",     "-",    "-", "-",  "rcu", "-"),
    "scheduling.slot":         ("-",   "*",    "r",     "r",      "-",     "-",    "-", "-",  "rcu", "-"),
    "scheduling.appointment":  ("r",   "*",    "~r",    "~ru",    "-",     "-",    "r", "N",  "N",   "N"),
    "iam.department":          ("r",   "r",    "r",     "r",      "r",     "r",    "r", "r",  "*",   "r"),
    "iam.staff":               ("r",   "r",    "r",     "r",      "r",     "r",    "r", "r",  "*",   "r"),
    "iam.membership":          ("r",   "r",    "r",     "r",      "r",     "r",    "r", "r",  "*",   "r"),
    "iam.emergency_access":    ("r",   "-",    "c @ru", "c @ru",  "-",     "-",    "-", "ru", "ru",  "re"),
    "audit.event":             ("c",   "-",    "-",     "-",      "-",     "-",    "-", "r",  "-",   "-"),
    "research.export":         ("-",   "-",    "-",     "-",      "-",     "-",    "-", "-",  "e",   "-"),
    "emr.encounter":           ("c N", "N",    "~rcu",  "~r",     "-",     "-",    "-", "N",  "N",   "N"),
    "emr.note":                ("N",   "N",    "~rcu",  "~rc &u", "-",     "-",    "-", "N",  "N",   "N"),
    "emr.diagnosis":           ("N",   "N",    "~rcu",  "~r",     "-",     "-",    "-", "N",  "N",   "N"),
    "orders.lab_order":        ("r N", "N",    "~rcu",  "~r",     "-",     "^r",   "-", "N",  "N",   "N"),
    "orders.medication_order": ("N",   "N",    "~rcu",  "~r",     "rx !u", "-",    "-", "N",  "N",   "N"),
    "lab.order":               ("N",   "N",    "~r",    "~r",     "-",     "^r",   "-", "N",  "N",   "N"),
    "lab.specimen":            ("N",   "N",    "~r",    "~r",     "-",     "^rcu", "-", "N",  "N",   "N"),
    "lab.result":              ("N",   "N",    "~re",   "~r",     "-",     "^rcu", "-", "N",  "N",   "N"),
    "pharmacy.medication":     ("r",   "-",    "r",     "r",      "rcu",   "-",    "r", "-",  "-",   "-"),
    "pharmacy.stock":          ("N",   "N",    "~r",    "~r",     "*",     "-",    "-", "N",  "N",   "N"),
    "pharmacy.dispense":       ("r N", "N",    "~r",    "~r",     "*",     "-",    "-", "N",  "N",   "N"),
    "billing.charge":          ("N",   "N",    "-",     "-",      "-",     "-",    "*", "N",  "N",   "N"),
    "billing.invoice":         ("N",   "N",    "-",     "-",      "-",     "-",    "*", "N",  "N",   "N"),
    "billing.payment":         ("N",   "N",    "-",     "-",      "-",     "-",    "*", "N",  "N",   "N"),
}
# fmt: on

# Refusals that hold for a class/action whoever asks (unless the grid allows it): the audit trail
# is written by services only and never changed.
CLASS_REFUSALS = {
    ("audit.event", "create"): "AUDIT_WRITE_SERVICE_ONLY",
    ("audit.event", "update"): "AUDIT_IMMUTABLE",
    ("audit.event", "delete"): "AUDIT_IMMUTABLE",
    ("audit.event", "merge"): "AUDIT_IMMUTABLE",
}


class Attributes(TypedDict, total=False):
    """The record and relation attributes of a Request (everything but roles/action/resource)."""

    department_match: bool
    under_care: bool
    encounter_class: str
    surgical: bool
    consent: str
    emergency: bool
    own: bool
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Situation:
    """The patient/record attributes a matrix case is decided under, and what they mean."""

    name: str
    attributes: Attributes
    care: str  # "ALLOWED", "EMERGENCY" or the refusal for care= actions
    own: bool
    unlocked_fields: bool  # whether the update touches only unlocked prescription fields


SITUATIONS = (
    # The clinician's own department, consent given, their own grant, a pharmacist editing a note.
    Situation(
        "related",
        {"department_match": True, "consent": "active", "own": True, "fields": ("note",)},
        care="ALLOWED",
        own=True,
        unlocked_fields=True,
    ),
    # Nothing connects the caller to the record; an update with no fields replaces everything.
    Situation("stranger", {}, care="DEPARTMENT_MISMATCH", own=False, unlocked_fields=False),
    # The same stranger holding a break-the-glass grant for the patient; the pharmacist puts the
    # prescription on hold.
    Situation(
        "stranger_in_emergency",
        {"emergency": True, "fields": ("status", "status_reason")},
        care="EMERGENCY",
        own=False,
        unlocked_fields=False,
    ),
    # Under care, but the patient revoked consent; the pharmacist tries to change the dose.
    Situation(
        "consent_revoked",
        {"under_care": True, "consent": "revoked", "fields": ("dosage.dose", "note")},
        care="CONSENT_REVOKED",
        own=False,
        unlocked_fields=False,
    ),
)


@pytest.fixture(scope="module")
def policy_engine() -> PolicyEngine:
    """The engine over the policies shipped in `his/policies`."""
    return PolicyEngine.load()


ALLOW = Decision(allow=True, reason="ALLOWED", emergency=False)
ALLOW_IN_EMERGENCY = Decision(allow=True, reason="ALLOWED", emergency=True)


def deny(reason: str) -> Decision:
    """A refusal for `reason`."""
    return Decision(allow=False, reason=reason, emergency=False)


def letters(spec: str) -> set[str]:
    """The action names of a cell's letters."""
    return set(ACTIONS.values()) if spec == "*" else {ACTIONS[letter] for letter in spec}


def expected(cell: str, resource: str, action: str, situation: Situation) -> Decision:
    """What the grid cell says about one action in one situation."""
    plain: set[str] = set()
    care: set[str] = set()
    care_own: set[str] = set()
    own: set[str] = set()
    lock: set[str] = set()
    department: set[str] = set()
    fallback = "ROLE_NOT_PERMITTED"
    for token in cell.split():
        if token == "N":
            fallback = "NO_CLINICAL_ACCESS"
        elif token == "-":
            continue
        elif token[0] == "~":
            care = letters(token[1:])
        elif token[0] == "&":
            care_own = letters(token[1:])
        elif token[0] == "@":
            own = letters(token[1:])
        elif token[0] == "!":
            lock = letters(token[1:])
        elif token[0] == "^":
            department = letters(token[1:])
        else:
            plain = letters(token)
    if action in plain:
        return ALLOW
    if action in care:
        if situation.care == "ALLOWED":
            return ALLOW
        if situation.care == "EMERGENCY":
            return ALLOW_IN_EMERGENCY
        if situation.care == "DEPARTMENT_MISMATCH" and resource == "patient.demographics":
            return deny("NO_CARE_RELATIONSHIP")
        return deny(situation.care)
    if action in care_own:
        if situation.care == "ALLOWED":
            return ALLOW if situation.own else deny("NOT_OWN")
        if situation.care == "EMERGENCY":
            return ALLOW_IN_EMERGENCY if situation.own else deny("DEPARTMENT_MISMATCH")
        return deny(situation.care)
    if action in own:
        return ALLOW if situation.own else deny("NOT_OWN")
    if action in department:
        related = situation.attributes.get("department_match", False)
        return ALLOW if related else deny("DEPARTMENT_MISMATCH")
    if action in lock:
        return ALLOW if situation.unlocked_fields else deny("PRESCRIPTION_FIELDS_LOCKED")
    return deny(CLASS_REFUSALS.get((resource, action), fallback))


def test_the_grid_names_every_role_and_resource_class_of_the_adr() -> None:
    adr_classes = {
        "patient.demographics", "patient.consent", "scheduling.schedule", "scheduling.slot",
        "scheduling.appointment", "iam.department", "iam.staff", "iam.membership",
        "iam.emergency_access", "audit.event", "research.export", "emr.encounter", "emr.note",
        "emr.diagnosis", "orders.lab_order", "orders.medication_order", "lab.order", "lab.specimen",
        "lab.result", "pharmacy.medication", "pharmacy.stock", "pharmacy.dispense",
        "billing.charge", "billing.invoice", "billing.payment",
    }  # fmt: skip
    assert set(GRID) == adr_classes
    assert all(len(cells) == len(ROLES) for cells in GRID.values())


def assert_consistent(engine: PolicyEngine, request: Request) -> Decision:
    """Evaluate once uncached and decide twice; all three must agree. Returns the decision."""
    evaluated = engine.evaluate(request)
    assert engine.decide(request) == evaluated
    assert engine.decide(request) == evaluated
    return evaluated


@pytest.mark.parametrize("resource", sorted(GRID))
@pytest.mark.parametrize("role", ROLES)
def test_role_on_resource_class_decides_as_the_grid_says(
    policy_engine: PolicyEngine, role: str, resource: str
) -> None:
    cell = GRID[resource][ROLES.index(role)]
    wrong = []
    for situation in SITUATIONS:
        for action in ACTIONS.values():
            request = Request((role,), action, resource, **situation.attributes)
            want = expected(cell, resource, action, situation)
            got = assert_consistent(policy_engine, request)
            if got != want:
                wrong.append(f"{situation.name} {action}: want {want}, got {got}")
    assert not wrong, "\n".join(wrong)


@dataclass(frozen=True)
class Case:
    """One hand-written special-rule case: who asks what about which record, and the answer."""

    why: str
    roles: tuple[str, ...]
    action: str
    resource: str
    want: Decision
    attributes: Attributes = field(default_factory=Attributes)

    def request(self) -> Request:
        """The policy request of this case."""
        return Request(self.roles, self.action, self.resource, **self.attributes)


INPATIENT_SURGICAL: Attributes = {"encounter_class": "inpatient", "surgical": True}

# fmt: off
CASES = (
    # The care relation: department or care, either suffices.
    Case("doctor of the record's department", ("DOCTOR",), "read", "emr.note", ALLOW,
         {"department_match": True}),
    Case("nurse caring for the patient elsewhere", ("NURSE",), "read", "emr.note", ALLOW,
         {"under_care": True}),
    Case("doctor with no relation", ("DOCTOR",), "read", "emr.note", deny("DEPARTMENT_MISMATCH")),
    Case("doctor with no relation, emergency", ("DOCTOR",), "read", "emr.note",
         ALLOW_IN_EMERGENCY, {"emergency": True}),
    Case("emergency flag when access is normal anyway", ("DOCTOR",), "read", "emr.note", ALLOW,
         {"department_match": True, "emergency": True}),
    Case("doctor writes a diagnosis in another department, emergency", ("DOCTOR",), "create",
         "emr.diagnosis", ALLOW_IN_EMERGENCY, {"emergency": True}),
    Case("nurse checks in a patient of another department", ("NURSE",), "update",
         "scheduling.appointment", deny("DEPARTMENT_MISMATCH")),
    Case("nurse cannot write a diagnosis even in department", ("NURSE",), "create",
         "emr.diagnosis", deny("ROLE_NOT_PERMITTED"), {"department_match": True}),
    Case("doctor does not check patients in", ("DOCTOR",), "update", "scheduling.appointment",
         deny("ROLE_NOT_PERMITTED"), {"department_match": True}),
    Case("nobody deletes a clinical record", ("DOCTOR",), "delete", "emr.note",
         deny("ROLE_NOT_PERMITTED"), {"department_match": True}),
    # Inpatient surgical records of another department.
    Case("outpatient doctor caring for the patient, ward's surgical record", ("DOCTOR",), "read",
         "emr.encounter", deny("INPATIENT_SURGICAL_OTHER_DEPARTMENT"),
         {"under_care": True, **INPATIENT_SURGICAL}),
    Case("nurse caring for the patient, ward's surgical note", ("NURSE",), "read", "emr.note",
         deny("INPATIENT_SURGICAL_OTHER_DEPARTMENT"), {"under_care": True, **INPATIENT_SURGICAL}),
    Case("surgical ward's own doctor", ("DOCTOR",), "read", "emr.encounter", ALLOW,
         {"department_match": True, **INPATIENT_SURGICAL}),
    Case("surgical record of another department, emergency", ("DOCTOR",), "read",
         "emr.encounter", ALLOW_IN_EMERGENCY,
         {"under_care": True, "emergency": True, **INPATIENT_SURGICAL}),
    Case("outpatient surgical record under care is fine", ("DOCTOR",), "read", "emr.encounter",
         ALLOW, {"under_care": True, "encounter_class": "outpatient", "surgical": True}),
    Case("inpatient non-surgical record under care is fine", ("DOCTOR",), "read", "emr.encounter",
         ALLOW, {"under_care": True, "encounter_class": "inpatient"}),
    Case("no relation at all is a department mismatch first", ("DOCTOR",), "read",
         "emr.encounter", deny("DEPARTMENT_MISMATCH"), INPATIENT_SURGICAL),
    # Notes: nurses record, and edit and sign only their own (never a doctor's).
    Case("nurse edits her own note in her department", ("NURSE",), "update", "emr.note", ALLOW,
         {"department_match": True, "own": True}),
    Case("nurse does not sign a doctor's note in her department", ("NURSE",), "update",
         "emr.note", deny("NOT_OWN"), {"department_match": True}),
    Case("nurse's own note of a patient who revoked consent", ("NURSE",), "update", "emr.note",
         deny("CONSENT_REVOKED"), {"department_match": True, "own": True, "consent": "revoked"}),
    Case("nurse's own note elsewhere, emergency", ("NURSE",), "update", "emr.note",
         ALLOW_IN_EMERGENCY, {"own": True, "emergency": True}),
    Case("nurse never opens an encounter", ("NURSE",), "create", "emr.encounter",
         deny("ROLE_NOT_PERMITTED"), {"department_match": True}),
    # The check-in relay: a service opens an encounter, and reads nothing clinical.
    Case("service opens a check-in's encounter", ("SERVICE",), "create", "emr.encounter", ALLOW),
    Case("service reads no encounter", ("SERVICE",), "read", "emr.encounter",
         deny("NO_CLINICAL_ACCESS"), {"department_match": True}),
    Case("service changes no encounter", ("SERVICE",), "update", "emr.encounter",
         deny("NO_CLINICAL_ACCESS")),
    # Consent.
    Case("revoked consent, own department", ("DOCTOR",), "read", "emr.note",
         deny("CONSENT_REVOKED"), {"department_match": True, "consent": "revoked"}),
    Case("revoked consent, emergency", ("DOCTOR",), "read", "emr.note", ALLOW_IN_EMERGENCY,
         {"department_match": True, "consent": "revoked", "emergency": True}),
    Case("revoked consent hides appointments from clinicians", ("NURSE",), "read",
         "scheduling.appointment", deny("CONSENT_REVOKED"),
         {"department_match": True, "consent": "revoked"}),
    Case("revoked consent does not stop billing's appointment view", ("BILLING_CLERK",), "read",
         "scheduling.appointment", ALLOW, {"consent": "revoked"}),
    Case("no consent recorded allows normal care", ("NURSE",), "read", "emr.note", ALLOW,
         {"under_care": True, "consent": "none"}),
    Case("an unknown consent value counts as revoked", ("NURSE",), "read", "emr.note",
         deny("CONSENT_REVOKED"), {"under_care": True, "consent": "maybe"}),
    Case("stranger does not learn that consent is revoked", ("DOCTOR",), "read", "emr.note",
         deny("DEPARTMENT_MISMATCH"), {"consent": "revoked"}),
    Case("clinicians read consent even when revoked", ("DOCTOR",), "read", "patient.consent",
         ALLOW, {"consent": "revoked"}),
    # Pharmacist and the prescription's locked fields: every field there is, so a pharmacist
    # changes nothing in a prescription (UpdateMedicationRequest, Hold, Resume, Cancel, Mark).
    Case("a field no lock names could be annotated", ("PHARMACIST",), "update",
         "orders.medication_order", ALLOW, {"fields": ("note",)}),
    *(
        Case(f"pharmacist changes {name}", ("PHARMACIST",), "update", "orders.medication_order",
             deny("PRESCRIPTION_FIELDS_LOCKED"), {"fields": ("note", name)})
        for name in (
            "medication", "medication_code", "dosage", "dosage.dose.unit", "dispense_quantity",
            "refills", "unit_price", "status", "cancel_reason", "status_reason",
        )
    ),
    Case("a field that merely starts like a locked one", ("PHARMACIST",), "update",
         "orders.medication_order", ALLOW, {"fields": ("dosage_note",)}),
    Case("pharmacist update without fields replaces everything", ("PHARMACIST",), "update",
         "orders.medication_order", deny("PRESCRIPTION_FIELDS_LOCKED")),
    Case("pharmacist dispenses whatever the department", ("PHARMACIST",), "dispense",
         "orders.medication_order", ALLOW, {"consent": "revoked"}),
    Case("break-the-glass is not the pharmacist's", ("PHARMACIST",), "update",
         "orders.medication_order", deny("PRESCRIPTION_FIELDS_LOCKED"),
         {"fields": ("dosage",), "emergency": True}),
    Case("pharmacist who is also a doctor of the department edits the dose",
         ("DOCTOR", "PHARMACIST"), "update", "orders.medication_order", ALLOW,
         {"fields": ("dosage",), "department_match": True}),
    # Lab technicians and the lab orders of their laboratory.
    Case("lab technician of the performing laboratory", ("LAB_TECHNICIAN",), "read",
         "orders.lab_order", ALLOW, {"department_match": True, "consent": "revoked"}),
    Case("lab technician of another laboratory", ("LAB_TECHNICIAN",), "read",
         "orders.lab_order", deny("DEPARTMENT_MISMATCH"), {"under_care": True}),
    Case("no break-the-glass for a laboratory's orders", ("LAB_TECHNICIAN",), "read",
         "orders.lab_order", deny("DEPARTMENT_MISMATCH"), {"emergency": True}),
    Case("lab technician never changes a lab order", ("LAB_TECHNICIAN",), "update",
         "orders.lab_order", deny("ROLE_NOT_PERMITTED"), {"department_match": True}),
    Case("lab technician reads no prescription", ("LAB_TECHNICIAN",), "read",
         "orders.medication_order", deny("ROLE_NOT_PERMITTED"), {"department_match": True}),
    Case("pharmacist reads no lab order", ("PHARMACIST",), "read", "orders.lab_order",
         deny("ROLE_NOT_PERMITTED"), {"department_match": True}),
    Case("lab technician cannot prescribe", ("LAB_TECHNICIAN",), "create",
         "orders.medication_order", deny("ROLE_NOT_PERMITTED")),
    # Laboratories: their members only, no break-the-glass, consent not asked.
    Case("lab technician of the laboratory records a result", ("LAB_TECHNICIAN",), "update",
         "lab.result", ALLOW, {"department_match": True, "consent": "revoked"}),
    Case("lab technician of another laboratory, emergency", ("LAB_TECHNICIAN",), "read",
         "lab.specimen", deny("DEPARTMENT_MISMATCH"), {"emergency": True}),
    Case("lab technician does not acknowledge critical results", ("LAB_TECHNICIAN",), "execute",
         "lab.result", deny("ROLE_NOT_PERMITTED"), {"department_match": True}),
    Case("ordering doctor acknowledges a critical result", ("DOCTOR",), "execute", "lab.result",
         ALLOW, {"under_care": True}),
    Case("nurse of the ordering team does not acknowledge", ("NURSE",), "execute", "lab.result",
         deny("ROLE_NOT_PERMITTED"), {"department_match": True}),
    Case("a doctor who is also a lab technician reads another laboratory's report as a carer",
         ("DOCTOR", "LAB_TECHNICIAN"), "read", "lab.result", ALLOW, {"under_care": True}),
    # Auditors and administrators.
    Case("auditor reads the trail", ("AUDITOR",), "read", "audit.event", ALLOW),
    Case("auditor reads no note, even in emergency", ("AUDITOR",), "read", "emr.note",
         deny("NO_CLINICAL_ACCESS"), {"department_match": True, "emergency": True}),
    Case("auditor reads no demographics", ("AUDITOR",), "read", "patient.demographics",
         deny("NO_CLINICAL_ACCESS")),
    Case("administrator reads no appointment", ("ADMINISTRATOR",), "read",
         "scheduling.appointment", deny("NO_CLINICAL_ACCESS")),
    Case("administrator cannot grant themselves break-the-glass", ("ADMINISTRATOR",), "create",
         "iam.emergency_access", deny("ROLE_NOT_PERMITTED")),
    Case("administrator revokes anyone's grant", ("ADMINISTRATOR",), "update",
         "iam.emergency_access", ALLOW),
    # Own break-the-glass grants.
    Case("doctor reads own grant", ("DOCTOR",), "read", "iam.emergency_access", ALLOW,
         {"own": True}),
    Case("nurse reads a colleague's grant", ("NURSE",), "read", "iam.emergency_access",
         deny("NOT_OWN")),
    Case("emergency does not open another's grant", ("NURSE",), "update",
         "iam.emergency_access", deny("NOT_OWN"), {"emergency": True}),
    # The audit trail.
    *(
        Case(f"{role} cannot write an audit event", (role,), "create", "audit.event",
             deny("AUDIT_WRITE_SERVICE_ONLY"))
        for role in ROLES
        if role != "SERVICE"
    ),
    Case("auditor and administrator together cannot write one either",
         ("ADMINISTRATOR", "AUDITOR"), "create", "audit.event", deny("AUDIT_WRITE_SERVICE_ONLY")),
    Case("the service writes the trail", ("SERVICE",), "create", "audit.event", ALLOW),
    Case("nobody deletes an audit event", ("SERVICE",), "delete", "audit.event",
         deny("AUDIT_IMMUTABLE")),
    Case("nobody updates an audit event", ("AUDITOR",), "update", "audit.event",
         deny("AUDIT_IMMUTABLE")),
    Case("a service token mixed with a staff role is refused outright", ("DOCTOR", "SERVICE"),
         "create", "audit.event", deny("SERVICE_ROLE_MIXED")),
    Case("even for what each role could do alone", ("REGISTRAR", "SERVICE"), "read",
         "patient.demographics", deny("SERVICE_ROLE_MIXED")),
    # SERVICE on its own.
    Case("service checks a patient exists", ("SERVICE",), "read", "patient.demographics", ALLOW),
    Case("service reads no clinical content", ("SERVICE",), "read", "emr.note",
         deny("NO_CLINICAL_ACCESS"), {"department_match": True, "emergency": True}),
    Case("service writes no demographics", ("SERVICE",), "update", "patient.demographics",
         deny("ROLE_NOT_PERMITTED")),
    # Several roles: any role that allows wins; otherwise the most telling refusal.
    Case("registrar who is also a doctor of the department", ("DOCTOR", "REGISTRAR"), "read",
         "emr.note", ALLOW, {"department_match": True}),
    Case("registrar-doctor without relation hears about the department",
         ("DOCTOR", "REGISTRAR"), "read", "emr.note", deny("DEPARTMENT_MISMATCH")),
    Case("registrar-nurse with emergency", ("NURSE", "REGISTRAR"), "read", "emr.note",
         ALLOW_IN_EMERGENCY, {"emergency": True}),
    Case("auditor-doctor reads demographics as a doctor", ("AUDITOR", "DOCTOR"), "read",
         "patient.demographics", ALLOW, {"department_match": True}),
    Case("auditor-doctor with no relation: the doctor's refusal", ("AUDITOR", "DOCTOR"), "read",
         "patient.demographics", deny("NO_CARE_RELATIONSHIP")),
    Case("billing clerk who is a nurse reads charges of a stranger", ("BILLING_CLERK", "NURSE"),
         "read", "billing.charge", ALLOW),
    Case("duplicate roles change nothing", ("NURSE", "NURSE"), "read", "emr.note",
         deny("DEPARTMENT_MISMATCH")),
    # Requests the policy does not know.
    Case("no roles at all", (), "read", "patient.demographics", deny("ROLE_NOT_PERMITTED")),
    Case("an unknown role", ("JANITOR",), "read", "patient.demographics",
         deny("ROLE_NOT_PERMITTED")),
    Case("role names are case-sensitive", ("doctor",), "read", "patient.demographics",
         deny("ROLE_NOT_PERMITTED")),
    Case("an unknown resource class", ("ADMINISTRATOR",), "read", "iam.secrets",
         deny("UNKNOWN_RESOURCE")),
    Case("an unknown action", ("REGISTRAR",), "approve", "scheduling.slot",
         deny("UNKNOWN_ACTION")),
)
# fmt: on


@pytest.mark.parametrize("case", [pytest.param(case, id=case.why) for case in CASES])
def test_special_rule(policy_engine: PolicyEngine, case: Case) -> None:
    assert assert_consistent(policy_engine, case.request()) == case.want


# What each PharmacyService rpc asks the policy (his/pharmacy/service.py); DeliverEvents asks
# nothing: his.runtime.inbox lets only the source service (orders) deliver.
PHARMACY_RPCS = {
    "CreateMedication": ("create", "pharmacy.medication"),
    "GetMedication": ("read", "pharmacy.medication"),
    "ListMedications": ("read", "pharmacy.medication"),
    "UpdateMedication": ("update", "pharmacy.medication"),
    "ReceiveStock": ("create", "pharmacy.stock"),
    "ListStockItems": ("read", "pharmacy.stock"),
    "GetStockItem": ("read", "pharmacy.stock"),
    "AdjustStock": ("update", "pharmacy.stock"),
    "DispenseMedication": ("create", "pharmacy.dispense"),
    "HandOverMedicationDispense": ("update", "pharmacy.dispense"),
    "GetMedicationDispense": ("read", "pharmacy.dispense"),
    "ListMedicationDispenses": ("read", "pharmacy.dispense"),
    "CancelMedicationDispense": ("update", "pharmacy.dispense"),
    "DeliverEvents": None,
}


def test_the_pharmacy_table_names_every_rpc_of_the_contract() -> None:
    from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb  # noqa: PLC0415

    service = pharmacy_pb.DESCRIPTOR.services_by_name["PharmacyService"]
    assert set(PHARMACY_RPCS) == {method.name for method in service.methods}


@pytest.mark.parametrize(
    ("rpc", "role", "situation"),
    [
        pytest.param(rpc, role, situation, id=f"{rpc}-{role}-{situation.name}")
        for rpc, asks in PHARMACY_RPCS.items()
        if asks is not None
        for role in ROLES
        for situation in SITUATIONS
    ],
)
def test_pharmacy_rpc_by_role(
    policy_engine: PolicyEngine, rpc: str, role: str, situation: Situation
) -> None:
    asks = PHARMACY_RPCS[rpc]
    assert asks is not None
    action, resource = asks
    request = Request(roles=(role,), action=action, resource=resource, **situation.attributes)
    cell = GRID[resource][ROLES.index(role)]
    assert assert_consistent(policy_engine, request) == expected(cell, resource, action, situation)
