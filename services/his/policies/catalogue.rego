# The catalogue the rules speak about: every resource class and action a service may ask for.
#
# A class or action that is not listed here is refused (UNKNOWN_RESOURCE / UNKNOWN_ACTION), so a
# new RPC cannot be served before someone has decided who may call it. When you add a class, add
# it to its group below AND to the tables in permissions.rego, then to the matrix in
# tests/runtime/test_policy_matrix.py.
#
# Package his.authz.tables holds constants only and must never read `input`: the engine evaluates
# it once when it loads the policies and serves the result as data (rebuilding these sets on every
# decision would cost ten times the decision itself).
package his.authz.tables

import rego.v1

actions := {"read", "create", "update", "delete", "merge", "dispense", "execute"}

patient_classes := {"patient.demographics", "patient.consent"}

scheduling_classes := {"scheduling.schedule", "scheduling.slot", "scheduling.appointment"}

iam_classes := {"iam.department", "iam.staff", "iam.membership", "iam.emergency_access"}

# The patient's record of care and everything billed or dispensed for it (ADR 0002 "clinical").
emr_classes := {"emr.encounter", "emr.note", "emr.diagnosis"}

orders_classes := {"orders.lab_order", "orders.medication_order"}

# lab.order: the laboratory's copy of the lab orders (its worklist).
lab_classes := {"lab.order", "lab.specimen", "lab.result"}

pharmacy_classes := {"pharmacy.stock", "pharmacy.dispense"}

# The formulary: which medications the hospital stocks, their codes and prices. Not patient data:
# every clinician reads it to prescribe, and orders reads it as itself to copy code and price.
formulary_classes := {"pharmacy.medication"}

billing_classes := {"billing.charge", "billing.invoice", "billing.payment"}

clinical_classes := (((emr_classes | orders_classes) | lab_classes) | pharmacy_classes) | billing_classes

# What clinicians read about the patients in their care: the clinical record without billing.
care_classes := clinical_classes - billing_classes

resource_classes := ((((patient_classes | scheduling_classes) | iam_classes) | clinical_classes) | formulary_classes) | {
	"audit.event",
	"audit.checkpoint",
	"research.export",
}

# Everything that identifies a patient or tells something about one.
patient_data_classes := (patient_classes | {"scheduling.appointment"}) | clinical_classes
