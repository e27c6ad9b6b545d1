# HIS authorization: the one decision every servicer asks for (ADR 0002, "Authorization").
#
# Query: data.his.authz.decision  ->  {"allow": bool, "reason": "UPPER_SNAKE", "emergency": bool}
# Input: his.runtime.policy.Request as JSON:
#   roles (list of role names), action, resource (class, see resources.rego), department_match,
#   under_care, encounter_class, surgical, consent ("active" | "none" | "revoked"), emergency,
#   own, fields (names of the fields an update changes; empty = the whole resource, as in AIP-134).
#
# How the files fit together (all in package his.authz):
#   resources.rego  the catalogue of resource classes and actions
#   roles.rego      what each role may do without conditions (a table), plus the conditional rules
#                   of SERVICE, PHARMACIST, AUDITOR, ADMINISTRATOR and the audit-trail rules
#   clinical.rego   DOCTOR and NURSE: department, care relation, consent, break-the-glass
#   authz.rego      (this file) how the roles' answers combine into one decision
#
# Each role's rules add to two sets:
#   grants    {"role": ..., "emergency": false}  the role allows the request as it stands
#             {"role": ..., "emergency": true}   the role allows it only because input.emergency
#   refusals  "REASON"                           why a role that might have allowed it did not
# A staff member may hold several roles: the request is allowed if ANY role grants it. Deny is
# the default; the reason is the most useful refusal (see reason_priority), ROLE_NOT_PERMITTED
# when no role had anything to say.
#
# Booleans are compared with `== true` on purpose: in Rego a bare `input.x` is also true for
# strings and numbers, and a malformed input must never open anything.
package his.authz

import rego.v1

# Refusals in the order they are reported when roles disagree: the reasons that tell the caller
# what would change the answer come first, the blanket "this role never does that" last.
reason_priority := [
	"AUDIT_IMMUTABLE",
	"AUDIT_WRITE_SERVICE_ONLY",
	"DEPARTMENT_MISMATCH",
	"INPATIENT_SURGICAL_OTHER_DEPARTMENT",
	"CONSENT_REVOKED",
	"PRESCRIPTION_FIELDS_LOCKED",
	"NOT_OWN",
	"NO_CLINICAL_ACCESS",
	"ROLE_NOT_PERMITTED",
]

# Problems with the request itself, decided before any role is asked.
input_problem := "UNKNOWN_RESOURCE" if {
	not input.resource in resource_classes
} else := "UNKNOWN_ACTION" if {
	not input.action in actions
} else := "SERVICE_ROLE_MIXED" if {
	# A service token carries exactly ["SERVICE"] (ADR 0002). A token mixing it with staff roles
	# is forged or misissued; refusing it keeps "staff never write audit events" true.
	"SERVICE" in input.roles
	some role in input.roles
	role != "SERVICE"
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
	some reason in reason_priority
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
