"""Demo lab orders for `his up --demo`, through the public API: Dr. Chen's tests for the
cardiology visit still in progress (exertional chest tightness: a troponin, urgent, and a basic
metabolic panel: codes of the laboratory's test catalogue), performed by the hospital's laboratory.

Loaded as the cardiologist (`USER`), after emr's demo data. Every order carries a request id, so
loading twice orders nothing twice. The lab's copy follows through the outbox (at once when the
lab service runs, when it is back otherwise). All people are fictional.
"""

from __future__ import annotations

from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.iam import demo as iam_demo
from his.orders.v1 import orders_service_pb2 as pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his_client import HisClients

# Loaded as this demo staff member: the cardiologist who attends the visit.
USER = "dr.chen"

LOINC = "http://loinc.org"
# (family name of the patient, LOINC code, display, priority, note for the laboratory)
ORDERS = (
    (
        "Liu",
        "10839-9",
        "Troponin I.cardiac [Mass/volume] in Serum or Plasma",
        pb.REQUEST_PRIORITY_URGENT,
        "chest tightness on exertion",
    ),
    ("Liu", "51990-0", "Basic metabolic panel - Blood", pb.REQUEST_PRIORITY_ROUTINE, "fasting"),
)


async def load(his: HisClients) -> str:
    """Place the demo lab orders in the patients' open encounters; what was made, in one line."""
    names = await iam_demo.directory(his)
    laboratory = names.departments[iam_demo.LABORATORY]
    placed = 0
    for family, code, display, priority, note in ORDERS:
        found = await his.patient.ListPatients(patient_pb.ListPatientsRequest(name_prefix=family))
        patients = [p for p in found.patients if p.family_name == family]
        if not patients:
            continue
        visits = await his.emr.ListEncounters(
            emr_pb.ListEncountersRequest(
                patient=patients[0].name, statuses=[emr_pb.ENCOUNTER_STATUS_IN_PROGRESS]
            )
        )
        if not visits.encounters:
            continue
        await his.orders.CreateServiceRequest(
            pb.CreateServiceRequestRequest(
                service_request=pb.ServiceRequest(
                    patient=patients[0].name,
                    encounter=visits.encounters[0].name,
                    code=types_pb2.Coding(system=LOINC, code=code, display=display),
                    priority=priority,
                    performer=laboratory,
                    note=note,
                ),
                request_id=f"demo-orders-{family.lower()}-{code}",
            )
        )
        placed += 1
    return f"{placed} lab orders"
