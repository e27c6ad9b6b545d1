"""How the runtime runs the lab service."""

from __future__ import annotations

from his.lab.issued import deliverers
from his.lab.service import LabService
from his.lab.v1 import lab_service_pb2_grpc as pb_grpc
from his.runtime.server import ServiceSpec

SPEC = ServiceSpec(
    name="lab",
    grpc_service="his.lab.v1.LabService",
    add_to_server=pb_grpc.add_LabServiceServicer_to_server,
    make_servicer=LabService,
    deliverers=deliverers,
)
