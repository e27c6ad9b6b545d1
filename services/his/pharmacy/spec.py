"""How the runtime runs the pharmacy service."""

from __future__ import annotations

from his.pharmacy.events import deliverers
from his.pharmacy.service import PharmacyService
from his.pharmacy.v1 import pharmacy_service_pb2_grpc as pb_grpc
from his.runtime.server import ServiceSpec

SPEC = ServiceSpec(
    name="pharmacy",
    grpc_service="his.pharmacy.v1.PharmacyService",
    add_to_server=pb_grpc.add_PharmacyServiceServicer_to_server,
    make_servicer=PharmacyService,
    deliverers=deliverers,
)
