# A patient signed in by phone (role PATIENT, subject `patients/{id}`): their own records only.
#
# `own` is true when the record's patient is the caller (his.runtime.access decides it from the
# record, never from the request). What a patient may do with their own records is the table
# patient_own_permissions; an update must be one the patient may make (patient_cancel_fields:
# cancelling an appointment, which names cancel_reason). Anything else, and anything of another
# patient, is refused: NOT_OWN for another patient's record, ROLE_NOT_PERMITTED otherwise.
package his.authz

import data.his.authz.tables
import rego.v1

patient_request if {
	"PATIENT" in input.roles
	input.action in tables.patient_own_permissions[input.resource]
}

patient_update_allowed if input.action != "update"

patient_update_allowed if {
	input.action == "update"
	input.resource == "scheduling.appointment"
	"cancel_reason" in input.fields
	every field in input.fields {
		field in tables.patient_cancel_fields
	}
}

grants contains {"role": "PATIENT", "emergency": false} if {
	patient_request
	patient_update_allowed
	input.own == true
}

refusals contains "NOT_OWN" if {
	patient_request
	patient_update_allowed
	not input.own == true
}
