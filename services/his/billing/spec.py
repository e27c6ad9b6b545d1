"""How the runtime runs the billing service."""

from __future__ import annotations

from his.billing.config import BillingConfig
from his.billing.service import BillingService
from his.billing.v1 import billing_service_pb2_grpc as pb_grpc
from his.runtime.server import ServiceResources, ServiceSpec


def make_servicer(resources: ServiceResources) -> BillingService:
    """The servicer with its settings (HIS_BILLING_* among the service's configuration)."""
    return BillingService(resources, BillingConfig.from_env(resources.config.environment))


SPEC = ServiceSpec(
    name="billing",
    grpc_service="his.billing.v1.BillingService",
    add_to_server=pb_grpc.add_BillingServiceServicer_to_server,
    make_servicer=make_servicer,
)
