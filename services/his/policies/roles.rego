# The rules that apply the tables of permissions.rego: unconditional grants, the pharmacist's
# locked prescription fields, and the refusals that say why a role may not.
package his.authz

import data.his.authz.tables
import rego.v1

grants contains {"role": role, "emergency": false} if {
	some role in input.roles
	input.action in tables.permissions[role][input.resource]
}

# Department-scoped permissions: the record must belong to one of the caller's departments.
grants contains {"role": role, "emergency": false} if {
	some role in input.roles
	input.action in tables.department_permissions[role][input.resource]
	input.department_match == true
}

refusals contains "DEPARTMENT_MISMATCH" if {
	some role in input.roles
	input.action in tables.department_permissions[role][input.resource]
	not input.department_match == true
}

# Pharmacists may change a prescription's fields that are not locked, never what was prescribed.
# An update without fields replaces the whole resource (AIP-134), so it touches the locked fields
# too.
locked_field(field) if field in tables.prescription_locked_fields

locked_field(field) if {
	some locked in tables.prescription_locked_fields
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

refusals contains "NO_CLINICAL_ACCESS" if {
	some role in input.roles
	role in tables.no_clinical_roles
	input.resource in tables.clinical_classes
}

refusals contains "NO_CLINICAL_ACCESS" if {
	some role in input.roles
	role in tables.no_patient_data_roles
	input.resource in tables.patient_data_classes
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
