# DOCTOR and NURSE access to a patient's records: the care relation, consent, break-the-glass.
#
#   normal access     the record's department is one of the clinician's (department_match) or the
#                     patient is under the clinician's care (under_care), and consent is not
#                     revoked, and the record is not an inpatient surgical record of another
#                     department (care alone does not open those: an outpatient clinician who
#                     follows the patient does not see the ward's surgical record).
#   break-the-glass   input.emergency (an active grant for this patient) opens all of the above;
#                     the decision then says emergency: true and the access is audited as such.
# What each clinician may do under these conditions is tables.care_permissions.
package his.authz

import data.his.authz.tables
import rego.v1

care_request if {
	some role in input.roles
	input.action in tables.care_permissions[role][input.resource]
}

related if input.department_match == true

related if input.under_care == true

surgical_elsewhere if {
	input.encounter_class == "inpatient"
	input.surgical == true
	not input.department_match == true
}

# "none" (nothing recorded) allows normal care; "revoked" and anything unexpected do not.
consent_allows if input.consent in {"active", "none"}

# The first reason that stops normal access. The care relation is checked before consent so a
# clinician with no relation to the patient does not learn the patient's consent status. A
# patient's demographics belong to no department: what is missing there is a care relationship
# (an appointment of the clinician's departments in the window, or the clinician as its
# practitioner: his.patient.care), so the refusal says so.
care_refusal := "NO_CARE_RELATIONSHIP" if {
	not related
	input.resource == "patient.demographics"
} else := "DEPARTMENT_MISMATCH" if {
	not related
} else := "INPATIENT_SURGICAL_OTHER_DEPARTMENT" if {
	surgical_elsewhere
} else := "CONSENT_REVOKED" if {
	not consent_allows
}

grants contains {"role": role, "emergency": false} if {
	some role in input.roles
	input.action in tables.care_permissions[role][input.resource]
	not care_refusal
}

grants contains {"role": role, "emergency": true} if {
	some role in input.roles
	input.action in tables.care_permissions[role][input.resource]
	input.emergency == true
}

refusals contains care_refusal if care_request

# The caller's own clinical record (a nurse's own note): the care checks and `own` both.
care_own_request if {
	some role in input.roles
	input.action in tables.care_own_permissions[role][input.resource]
}

grants contains {"role": role, "emergency": false} if {
	some role in input.roles
	input.action in tables.care_own_permissions[role][input.resource]
	input.own == true
	not care_refusal
}

grants contains {"role": role, "emergency": true} if {
	some role in input.roles
	input.action in tables.care_own_permissions[role][input.resource]
	input.own == true
	input.emergency == true
}

refusals contains care_refusal if care_own_request

refusals contains "NOT_OWN" if {
	care_own_request
	not input.own == true
}

# Break-the-glass grants: a clinician reads and revokes only their own.
grants contains {"role": role, "emergency": false} if {
	some role in input.roles
	input.action in tables.own_permissions[role][input.resource]
	input.own == true
}

refusals contains "NOT_OWN" if {
	some role in input.roles
	input.action in tables.own_permissions[role][input.resource]
	not input.own == true
}
