"""How the runtime runs the iam service."""

from __future__ import annotations

import os

from his.iam.config import IamConfig
from his.iam.service import IamService
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.runtime.server import ServiceResources, ServiceSpec


def make_servicer(resources: ServiceResources) -> IamService:
    """The servicer with its settings.

    Until `ServiceConfig` carries an `IamConfig` (built by `his.runtime.config.load`), they are
    read here from the process environment, once per start.
    """
    return IamService(resources, IamConfig.from_env(os.environ))


SPEC = ServiceSpec(
    name="iam",
    grpc_service="his.iam.v1.IamService",
    add_to_server=pb_grpc.add_IamServiceServicer_to_server,
    make_servicer=make_servicer,
)
