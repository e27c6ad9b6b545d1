# HIS authorization: the one decision every servicer asks for (ADR 0002, "Authorization").
#
# Query: data.his.authz.decision  ->  {"allow": bool, "reason": "UPPER_SNAKE", "emergency": bool}
# Input: his.runtime.policy.Request as JSON:
#   roles (list of role names), action, resource (class, see catalogue.rego), department_match,
#   under_care, encounter_class, surgical, consent ("active" | "none" | "revoked"), emergency,
#   own, fields (names of the fields an update changes; empty = the whole resource, as in AIP-134).
#
# The files:
#   catalogue.rego    resource classes and actions                (package his.authz.tables)
#   permissions.rego  who may do what, as tables                  (package his.authz.tables)
#   roles.rego        table look-ups, pharmacist fields, refusals (package his.authz)
#   clinical.rego     DOCTOR/NURSE: department, care, consent,    (package his.authz)
#                     inpatient surgical records, break-the-glass
#   patients.rego     PATIENT: their own records only             (package his.authz)
#   authz.rego        how the roles' answers combine (this file)  (package his.authz)
# To change who may do what, edit the tables; the rules rarely need to change. Then update the
# matrix in tests/runtime/test_policy_matrix.py, which states the ADR independently of this code.
#
# Each role's rules add to two sets:
#   grants    {"role": ..., "emergency": false}  the role allows the request as it stands
#             {"role": ..., "emergency": true}   the role allows it only because input.emergency
#   refusals  "REASON"                           why a role that might have allowed it did not
# A staff member may hold several roles: the request is allowed if ANY role grants it, and it is
# an emergency access only if no role grants it without the emergency. Deny is the default; the
# reason is the first refusal in tables.reason_priority, ROLE_NOT_PERMITTED when no role had
# anything to say.
#
# Booleans are compared with `== true` on purpose: in Rego a bare `input.x` is also true for
# strings and numbers, and a malformed input must never open anything.
package his.authz

import data.his.authz.tables
import rego.v1

# Problems with the request itself, decided before any role is asked.
input_problem := "UNKNOWN_RESOURCE" if {
	not input.resource in tables.resource_classes
} else := "UNKNOWN_ACTION" if {
	not input.action in tables.actions
} else := "SERVICE_ROLE_MIXED" if {
	# A service token carries exactly ["SERVICE"] (ADR 0002). A token mixing it with staff roles
	# is forged or misissued; refusing it keeps "staff never write audit events" true.
	"SERVICE" in input.roles
	some role in input.roles
	role != "SERVICE"
} else := "PATIENT_ROLE_MIXED" if {
	# Likewise a patient token carries exactly ["PATIENT"]: a patient's own-record permissions
	# must never combine with a staff role's (the token verifier refuses such tokens first).
	"PATIENT" in input.roles
	some role in input.roles
	role != "PATIENT"
}

allowed if {
	some grant in grants
	grant.emergency == false
}

allowed_in_emergency if {
	some grant in grants
	grant.emergency == true
}

ranked_refusals := [reason |
	some reason in tables.reason_priority
	reason in (refusals | {"ROLE_NOT_PERMITTED"})
]

denial_reason := ranked_refusals[0]

decision := {"allow": false, "reason": input_problem, "emergency": false} if {
	input_problem
} else := {"allow": true, "reason": "ALLOWED", "emergency": false} if {
	allowed
} else := {"allow": true, "reason": "ALLOWED", "emergency": true} if {
	allowed_in_emergency
} else := {"allow": false, "reason": denial_reason, "emergency": false}
