# Who may do what: the tables the rules in roles.rego and clinical.rego look things up in.
#
# Constants only, never `input` (see catalogue.rego). `actions` means every action: what the
# ADR calls "all".
package his.authz.tables

import rego.v1

# Unconditional permissions: role -> resource class -> actions. Anything not listed is refused.
permissions := {
	# Services acting on their own (no person behind the call): write the audit trail, look up
	# staff and departments, check that a patient exists and what they consented to. Nothing
	# clinical: a service relaying a person's call is authorized as that person.
	"SERVICE": {
		"audit.event": {"create"},
		"iam.department": {"read"},
		"iam.staff": {"read"},
		"iam.membership": {"read"},
		"iam.emergency_access": {"read"},
		"patient.demographics": {"read"},
		"patient.consent": {"read"},
		# Scheduling's relay opens the encounter of a check-in (the AppointmentCheckedIn event);
		# the emr service accepts a service caller only for an encounter from an appointment,
		# and the mesh lets only scheduling call CreateEncounter as itself.
		"emr.encounter": {"create"},
		# The formulary: orders copies a medication's code and price into a prescription.
		"pharmacy.medication": {"read"},
		# Billing reconciles its charges with what was rendered (ReconcileCharges): it lists
		# appointments, lab orders and dispenses as itself. The mesh lets only billing call those
		# List rpcs as a service (mesh/istio/authorization/{scheduling,orders,pharmacy}.yaml), and
		# it keeps only each one's name and code.
		"scheduling.appointment": {"read"},
		"orders.lab_order": {"read"},
		"pharmacy.dispense": {"read"},
	},
	# Registration desk: who the patient is, what they consented to, and all of scheduling in
	# every department. No clinical content.
	"REGISTRAR": {
		"patient.demographics": {"read", "create", "update", "merge"},
		"patient.consent": {"read", "create", "update"},
		"scheduling.schedule": actions,
		"scheduling.slot": actions,
		"scheduling.appointment": actions,
		"iam.department": {"read"},
		"iam.staff": {"read"},
		"iam.membership": {"read"},
	},
	# Clinicians, the parts that do not depend on the patient (the rest is care_permissions:
	# demographics too, which a clinician reads only with a care relationship or a grant).
	# They read consents but never record or revoke one: the patient's decision is taken at the
	# registration desk, so a clinician refused for CONSENT_REVOKED cannot lift it themselves.
	# Creating a break-the-glass grant is always allowed (it is audited as EMERGENCY); reading
	# or updating one needs `own` (own_permissions).
	"DOCTOR": {
		"patient.consent": {"read"},
		"pharmacy.medication": {"read"},
		"scheduling.schedule": {"read"},
		"scheduling.slot": {"read"},
		"iam.department": {"read"},
		"iam.staff": {"read"},
		"iam.membership": {"read"},
		"iam.emergency_access": {"create"},
	},
	"NURSE": {
		"patient.consent": {"read"},
		"pharmacy.medication": {"read"},
		"scheduling.schedule": {"read"},
		"scheduling.slot": {"read"},
		"iam.department": {"read"},
		"iam.staff": {"read"},
		"iam.membership": {"read"},
		"iam.emergency_access": {"create"},
	},
	# Pharmacy: reads and dispenses prescriptions, runs the pharmacy. Updating a prescription
	# depends on the fields changed (prescription_locked_fields: today every field there is).
	"PHARMACIST": {
		"patient.demographics": {"read"},
		"orders.medication_order": {"read", "dispense"},
		"pharmacy.medication": {"read", "create", "update"},
		"pharmacy.stock": actions,
		"pharmacy.dispense": actions,
		"iam.department": {"read"},
		"iam.staff": {"read"},
		"iam.membership": {"read"},
	},
	# The laboratory's own records are in department_permissions (its members only). Of the patient
	# they read the label view of demographics (the patient service strips the rest).
	"LAB_TECHNICIAN": {
		"patient.demographics": {"read"},
		"iam.department": {"read"},
		"iam.staff": {"read"},
		"iam.membership": {"read"},
	},
	# Billing sees appointments in every department (to bill them), not their clinical content.
	"BILLING_CLERK": {
		"patient.demographics": {"read"},
		"scheduling.appointment": {"read"},
		"billing.charge": actions,
		"billing.invoice": actions,
		"billing.payment": actions,
		# The formulary is no patient data: billing prices the medications it lists.
		"pharmacy.medication": {"read"},
		"iam.department": {"read"},
		"iam.staff": {"read"},
		"iam.membership": {"read"},
	},
	# Auditors read the trail and the break-the-glass grants it refers to, and may end a grant
	# that looks abused (RevokeEmergencyAccessGrant); no patient data.
	"AUDITOR": {
		"audit.event": {"read"},
		# Signed checkpoints of the chain: auditors list them and may seal the chain on demand
		# (harmless to repeat; the service also takes one every interval by itself).
		"audit.checkpoint": {"read", "create"},
		"iam.emergency_access": {"read", "update"},
		"iam.department": {"read"},
		"iam.staff": {"read"},
		"iam.membership": {"read"},
	},
	# A patient signed in by phone (iam's CompletePatientSignIn) chooses where to book: the
	# departments, their schedules and slots. None of these holds patient data (a slot shows how
	# many are booked, never who). Their own records are in patient_own_permissions.
	"PATIENT": {
		"iam.department": {"read"},
		"scheduling.schedule": {"read"},
		"scheduling.slot": {"read"},
	},
	# The privacy officer works the review queue of break-the-glass grants: lists them and
	# records each one's review (execute: ReviewEmergencyAccessGrant); no patient data.
	"PRIVACY_OFFICER": {
		"iam.emergency_access": {"read", "execute"},
		"iam.department": {"read"},
		"iam.staff": {"read"},
		"iam.membership": {"read"},
	},
	# Administrators run staff, departments and schedules and start research exports; no
	# patient data. They read and revoke (update) break-the-glass grants but never create or
	# review one: grants are for clinicians (ADR 0002, "Break-the-glass"), reviews for the
	# privacy officer.
	"ADMINISTRATOR": {
		"iam.department": actions,
		"iam.staff": actions,
		"iam.membership": actions,
		"iam.emergency_access": {"read", "update"},
		"scheduling.schedule": {"read", "create", "update"},
		"scheduling.slot": {"read", "create", "update"},
		"research.export": {"execute"},
	},
}

# What clinicians may do to a patient's records once the care checks of clinical.rego pass.
# Both read the patient's demographics (who the patient is, identifiers included: least
# privilege, issue 17), every clinical class except billing (what was charged is not care) and
# appointments; doctors write the record and the orders; nurses write notes and check patients
# in (update appointments). Nobody deletes a clinical record.
care_permissions := {
	"DOCTOR": object.union({class: {"read"} | some class in care_classes}, {
		"patient.demographics": {"read"},
		"scheduling.appointment": {"read"},
		"emr.encounter": {"read", "create", "update"},
		"emr.note": {"read", "create", "update"},
		"emr.diagnosis": {"read", "create", "update"},
		"orders.lab_order": {"read", "create", "update"},
		"orders.medication_order": {"read", "create", "update"},
		# Acknowledging a critical result (execute): the ordering doctor or the ordering team.
		"lab.result": {"read", "execute"},
	}),
	"NURSE": object.union({class: {"read"} | some class in care_classes}, {
		"patient.demographics": {"read"},
		"scheduling.appointment": {"read", "update"},
		"emr.note": {"read", "create"},
	}),
}

# Allowed only on the caller's own record AND under the care checks of clinical.rego: nurses
# record notes (care_permissions) and edit and sign the ones they wrote, never a doctor's.
care_own_permissions := {"NURSE": {"emr.note": {"update"}}}

# Allowed only on the caller's own resource: a clinician reads and revokes their own grants.
own_permissions := {
	"DOCTOR": {"iam.emergency_access": {"read", "update"}},
	"NURSE": {"iam.emergency_access": {"read", "update"}},
}

# What a patient may do with their own records only (`own`: the record's patient is the caller,
# patients.rego): read their demographics, and book, read and cancel their appointments. Nothing
# else of theirs (clinical records, bills) and nothing of anyone else.
patient_own_permissions := {
	"patient.demographics": {"read"},
	"scheduling.appointment": {"read", "create", "update"},
}

# The only change a patient makes to a record of theirs: cancelling an appointment, which sets
# its status and its cancel_reason (field paths of his.scheduling.v1.Appointment). An update must
# name cancel_reason: check-in, no-show and completion change the status alone (the desk's and
# the clinic's, never the patient's).
patient_cancel_fields := {"status", "cancel_reason"}

# Allowed only when the record belongs to one of the caller's departments (department_match,
# roles.rego): a laboratory's records are open to its members only — the lab orders it performs
# (the order's performer, in orders and in the laboratory's own copy), its specimens and reports —
# whoever the patient is. No care relation, consent or break-the-glass applies: the tests were
# ordered by the patient's doctor, the laboratory only carries the order out, and no technician
# needs another laboratory's work in an emergency.
department_permissions := {"LAB_TECHNICIAN": {
	"orders.lab_order": {"read"},
	"lab.order": {"read"},
	"lab.specimen": {"read", "create", "update"},
	"lab.result": {"read", "create", "update"},
}}

# What a pharmacist may never change in a prescription (nor any part of, e.g. "dosage.dose"):
# field paths of his.orders.v1.MedicationRequest (tests/runtime/test_policy_fields.py proves they
# exist). What was prescribed and by whom is the prescriber's; its status too (holding,
# cancelling, marking in error are the prescriber's decisions; the pharmacy's dispenses complete
# it). So a pharmacist changes nothing in a prescription today: a field the pharmacy may annotate
# would be one left out of this set.
prescription_locked_fields := {
	"medication",
	"medication_code",
	"dosage",
	"dispense_quantity",
	"refills",
	"unit_price",
	"status",
	"cancel_reason",
	"status_reason",
}

# Roles that never see clinical content, and those that see no patient data at all: refused
# with NO_CLINICAL_ACCESS rather than ROLE_NOT_PERMITTED.
no_clinical_roles := {"SERVICE", "REGISTRAR", "AUDITOR", "PRIVACY_OFFICER", "ADMINISTRATOR"}

no_patient_data_roles := {"AUDITOR", "PRIVACY_OFFICER", "ADMINISTRATOR"}

# Roles that only a patient token carries (runtime/tokens.py refuses mixing at authentication).
patient_roles := {"PATIENT"}

# Refusals in the order they are reported when roles disagree: the reasons that tell the caller
# what would change the answer come first, the blanket "this role never does that" last.
reason_priority := [
	"AUDIT_IMMUTABLE",
	"AUDIT_WRITE_SERVICE_ONLY",
	"DEPARTMENT_MISMATCH",
	"NO_CARE_RELATIONSHIP",
	"INPATIENT_SURGICAL_OTHER_DEPARTMENT",
	"CONSENT_REVOKED",
	"PRESCRIPTION_FIELDS_LOCKED",
	"NOT_OWN",
	"NO_CLINICAL_ACCESS",
	"ROLE_NOT_PERMITTED",
]
