"""How the runtime runs the iam service."""

from __future__ import annotations

from his.iam import jwks_http
from his.iam.config import IamConfig
from his.iam.service import IamService
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.runtime.server import ServiceResources, ServiceSpec


def make_servicer(resources: ServiceResources) -> IamService:
    """The servicer with its settings (HIS_IAM_* among the service's configuration)."""
    return IamService(resources, IamConfig.from_env(resources.config.environment))


SPEC = ServiceSpec(
    name="iam",
    grpc_service="his.iam.v1.IamService",
    add_to_server=pb_grpc.add_IamServiceServicer_to_server,
    make_servicer=make_servicer,
    companion=jwks_http.serve,
)
