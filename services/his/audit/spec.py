"""How the runtime runs the audit service."""

from __future__ import annotations

from his.audit.service import AuditService
from his.audit.v1 import audit_service_pb2_grpc as pb_grpc
from his.runtime.server import ServiceSpec

SPEC = ServiceSpec(
    name="audit",
    grpc_service="his.audit.v1.AuditService",
    add_to_server=pb_grpc.add_AuditServiceServicer_to_server,
    make_servicer=AuditService,
)
