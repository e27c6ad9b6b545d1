"""How the runtime runs the orders service."""

from __future__ import annotations

from his.orders.events import deliverers
from his.orders.service import OrdersService
from his.orders.v1 import orders_service_pb2_grpc as pb_grpc
from his.runtime.server import ServiceSpec

SPEC = ServiceSpec(
    name="orders",
    grpc_service="his.orders.v1.OrdersService",
    add_to_server=pb_grpc.add_OrdersServiceServicer_to_server,
    make_servicer=OrdersService,
    deliverers=deliverers,
)
