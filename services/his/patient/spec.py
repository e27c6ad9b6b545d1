"""How the runtime runs the patient service."""

from __future__ import annotations

from his.patient.care import CareConfig
from his.patient.events import deliverers
from his.patient.service import PatientService
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.server import ServiceResources, ServiceSpec


def make_servicer(resources: ServiceResources) -> PatientService:
    """The servicer with its care-relationship window (HIS_PATIENT_CARE_*)."""
    return PatientService(resources, CareConfig.from_env(resources.config.environment))


SPEC = ServiceSpec(
    name="patient",
    grpc_service="his.patient.v1.PatientService",
    add_to_server=pb_grpc.add_PatientServiceServicer_to_server,
    make_servicer=make_servicer,
    deliverers=deliverers,
)
