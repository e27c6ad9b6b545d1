# LAB_TECHNICIAN and a laboratory's records: its copy of the lab orders, its specimens and its
# reports are open to the laboratory's members only. The servicer states the record's laboratory
# as its department, so department_match means "the caller is a member of this laboratory".
# Emergency access does not extend these (tables.lab_permissions), and consent is not asked: the
# tests were ordered by the patient's doctor, and the laboratory only carries the order out.
package his.authz

import data.his.authz.tables
import rego.v1

lab_request if {
	some role in input.roles
	input.action in tables.lab_permissions[role][input.resource]
}

grants contains {"role": role, "emergency": false} if {
	some role in input.roles
	input.action in tables.lab_permissions[role][input.resource]
	input.department_match == true
}

refusals contains "DEPARTMENT_MISMATCH" if {
	lab_request
	not input.department_match == true
}
