# What each role may do, by resource class. DOCTOR and NURSE access to patient records depends on
# the patient (department, care, consent, break-the-glass) and lives in clinical.rego.
package his.authz

import rego.v1

# Unconditional permissions: role -> resource class -> actions. Anything not listed is refused.
# `actions` (every action, see resources.rego) is what the ADR calls "all".
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
	},
	# Registration desk: who the patient is, what they consented to, and all of scheduling in
	# every department. No clinical content.
	"REGISTRAR": {
		"patient.demographics": {"read", "create", "update", "merge"},
		"patient.consent": {"read", "create", "update"},
		"scheduling.schedule": actions,
		"scheduling.slot": actions,
		"scheduling.appointment": actions,
	},
	# Clinicians, the parts that do not depend on the patient. Creating a break-the-glass grant
	# is always allowed (it is audited as EMERGENCY); reading or updating one needs `own`.
	"DOCTOR": {
		"patient.demographics": {"read"},
		"patient.consent": {"read", "create", "update"},
		"scheduling.schedule": {"read"},
		"scheduling.slot": {"read"},
		"iam.emergency_access": {"create"},
	},
	"NURSE": {
		"patient.demographics": {"read"},
		"patient.consent": {"read", "create", "update"},
		"scheduling.schedule": {"read"},
		"scheduling.slot": {"read"},
		"iam.emergency_access": {"create"},
	},
	# Pharmacy: reads and dispenses prescriptions, runs the pharmacy. Updating a prescription is
	# conditional on the fields (see below).
	"PHARMACIST": {
		"patient.demographics": {"read"},
		"orders.medication_order": {"read", "dispense"},
		"pharmacy.stock": actions,
		"pharmacy.dispense": actions,
	},
	"LAB_TECHNICIAN": {
		"patient.demographics": {"read"},
		"orders.lab_order": {"read"},
		"lab.specimen": {"read", "create", "update"},
		"lab.result": {"read", "create", "update"},
	},
	# Billing sees appointments in every department (to bill them), not their clinical content.
	"BILLING_CLERK": {
		"patient.demographics": {"read"},
		"scheduling.appointment": {"read"},
		"billing.charge": actions,
		"billing.invoice": actions,
		"billing.payment": actions,
	},
	# Auditors read the trail and the break-the-glass grants it refers to; no patient data.
	"AUDITOR": {
		"audit.event": {"read"},
		"iam.emergency_access": {"read"},
	},
	# Administrators run staff, departments and schedules, and start research exports (which
	# are pseudonymised by the export itself); no patient data. They may read and revoke
	# (update) break-the-glass grants but not create one: grants are for clinicians (ADR 0002,
	# "Break-the-glass").
	"ADMINISTRATOR": {
		"iam.department": actions,
		"iam.staff": actions,
		"iam.membership": actions,
		"iam.emergency_access": actions - {"create"},
		"scheduling.schedule": {"read", "create", "update"},
		"scheduling.slot": {"read", "create", "update"},
		"research.export": {"execute"},
	},
}

grants contains {"role": role, "emergency": false} if {
	some role in input.roles
	input.action in permissions[role][input.resource]
}

# Pharmacists may correct a prescription's other fields (status, note, ...) but never what was
# prescribed: drug, dose, quantity or price, nor any part of them (e.g. "dose.unit"). An update
# without fields replaces the whole resource (AIP-134), so it touches the locked fields too.
prescription_locked_fields := {"drug", "dose", "quantity", "price"}

locked_field(field) if field in prescription_locked_fields

locked_field(field) if {
	some locked in prescription_locked_fields
	startswith(field, concat("", [locked, "."]))
}

changes_locked_field if {
	some field in input.fields
	locked_field(field)
}

changes_locked_field if count(input.fields) == 0

pharmacist_updates_prescription if {
	"PHARMACIST" in input.roles
	input.action == "update"
	input.resource == "orders.medication_order"
}

grants contains {"role": "PHARMACIST", "emergency": false} if {
	pharmacist_updates_prescription
	not changes_locked_field
}

refusals contains "PRESCRIPTION_FIELDS_LOCKED" if {
	pharmacist_updates_prescription
	changes_locked_field
}

# Roles that never see clinical content, and those that see no patient data at all.
no_clinical_roles := {"SERVICE", "REGISTRAR", "AUDITOR", "ADMINISTRATOR"}

no_patient_data_roles := {"AUDITOR", "ADMINISTRATOR"}

refusals contains "NO_CLINICAL_ACCESS" if {
	some role in input.roles
	role in no_clinical_roles
	input.resource in clinical_classes
}

refusals contains "NO_CLINICAL_ACCESS" if {
	some role in input.roles
	role in no_patient_data_roles
	input.resource in patient_data_classes
}

# The audit trail is written only by services (the AuditTrail client), never by a person, and
# nobody changes or removes what is written.
refusals contains "AUDIT_WRITE_SERVICE_ONLY" if {
	input.resource == "audit.event"
	input.action == "create"
}

refusals contains "AUDIT_IMMUTABLE" if {
	input.resource == "audit.event"
	input.action in {"update", "delete", "merge"}
}
