"""How the runtime runs the patient service.

GetPatient answers as soon as the service is ready (his.patient.reads, no SQLAlchemy); the rest
of the servicer (his.patient.service: writes, searches, consents, research, events) is loaded on
a thread once the server listens, its first calls waiting for it (his.runtime.deferred).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from his.patient.care import CareConfig
from his.patient.events import deliverers
from his.patient.reads import PatientReads
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.deferred import Early
from his.runtime.server import ServiceResources, ServiceSpec

if TYPE_CHECKING:
    from his.patient.service import PatientService


def make_servicer(resources: ServiceResources) -> PatientService:
    """The servicer with its care-relationship window (HIS_PATIENT_CARE_*)."""
    from his.patient.service import PatientService  # noqa: PLC0415 (loaded by `load` first)

    return PatientService(resources, CareConfig.from_env(resources.config.environment))


def make_reads(resources: ServiceResources) -> PatientReads:
    """GetPatient's servicer, with the same care-relationship window."""
    return PatientReads(resources, CareConfig.from_env(resources.config.environment))


def load() -> None:
    """Import what the full servicer needs (SQLAlchemy with it)."""
    importlib.import_module("his.patient.service")


SPEC = ServiceSpec(
    name="patient",
    grpc_service="his.patient.v1.PatientService",
    add_to_server=pb_grpc.add_PatientServiceServicer_to_server,
    make_servicer=make_servicer,
    deliverers=deliverers,
    early=Early(methods=frozenset({"GetPatient"}), make=make_reads, load=load),
)
