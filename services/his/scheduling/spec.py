"""How the runtime runs the scheduling service."""

from __future__ import annotations

from his.runtime.server import ServiceSpec
from his.scheduling.check_in import deliverers
from his.scheduling.service import SchedulingService
from his.scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc

SPEC = ServiceSpec(
    name="scheduling",
    grpc_service="his.scheduling.v1.SchedulingService",
    add_to_server=pb_grpc.add_SchedulingServiceServicer_to_server,
    make_servicer=SchedulingService,
    deliverers=deliverers,
)
