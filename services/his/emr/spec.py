"""How the runtime runs the emr service."""

from __future__ import annotations

from his.emr.care_events import deliverers
from his.emr.service import EmrService
from his.emr.v1 import emr_service_pb2_grpc as pb_grpc
from his.runtime.server import ServiceSpec

SPEC = ServiceSpec(
    name="emr",
    grpc_service="his.emr.v1.EmrService",
    add_to_server=pb_grpc.add_EmrServiceServicer_to_server,
    make_servicer=EmrService,
    deliverers=deliverers,
)
