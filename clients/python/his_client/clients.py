"""`HisClients`: one resilient, typed client per HIS service, opened on first use."""

from __future__ import annotations

import os
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from his_client.channels import open_channel
from his_client.config import ClientConfig
from his_client.credentials import IdentityInterceptor, TokenSource
from his_client.resilience import ClientMetrics, ResilienceInterceptor
from his_client.tracing import tracing_interceptors

if TYPE_CHECKING:
    from his.audit.v1 import audit_service_pb2_grpc as audit
    from his.billing.v1 import billing_service_pb2_grpc as billing
    from his.emr.v1 import emr_service_pb2_grpc as emr
    from his.iam.v1 import iam_service_pb2_grpc as iam
    from his.lab.v1 import lab_service_pb2_grpc as lab
    from his.orders.v1 import orders_service_pb2_grpc as orders
    from his.patient.v1 import patient_service_pb2_grpc as patient
    from his.pharmacy.v1 import pharmacy_service_pb2_grpc as pharmacy
    from his.scheduling.v1 import scheduling_service_pb2_grpc as scheduling

_SERVICES = ("patient", "scheduling", "emr", "orders", "lab", "pharmacy", "billing", "iam", "audit")


class HisClients:
    """Typed async stubs for every service, each behind its own deadline/retry/breaker channel.

    `async with HisClients(token=static_token(t)) as his: await his.patient.GetPatient(...)`.
    Inside a server, build one per process with the server's metrics registry (breaker states on
    its /metrics) and its own token source; relayed calls carry the person being served.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        token: TokenSource | None = None,
    ) -> None:
        self.config = config or ClientConfig.from_env(os.environ)
        # Outbound calls carry the current trace (W3C traceparent), so one booking is one trace
        # across scheduling and patient; client spans only with a tracer provider (see tracing.py).
        self._tracing = tracing_interceptors(tracer_provider)
        self.metrics = ClientMetrics(registry)
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Who this process is when no person's call is being relayed (see credentials.py).
        self._identity = IdentityInterceptor(token)

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to `service`, created with its interceptor on first use."""
        if service not in self._channels:
            interceptor = ResilienceInterceptor(service, self.config, self.metrics)
            self._channels[service] = open_channel(
                self.config.address(service), [*self._tracing, self._identity, interceptor]
            )
        return self._channels[service]

    # Each service's generated stubs are imported when it is first called: a process that calls
    # two services does not load the stubs of nine at start-up.

    @cached_property
    def patient(self) -> patient.PatientServiceAsyncStub:
        """The patient service."""
        from his.patient.v1 import patient_service_pb2_grpc  # noqa: PLC0415

        return patient_service_pb2_grpc.PatientServiceStub(self.channel("patient"))

    @cached_property
    def scheduling(self) -> scheduling.SchedulingServiceAsyncStub:
        """The scheduling service."""
        from his.scheduling.v1 import scheduling_service_pb2_grpc  # noqa: PLC0415

        return scheduling_service_pb2_grpc.SchedulingServiceStub(self.channel("scheduling"))

    @cached_property
    def emr(self) -> emr.EmrServiceAsyncStub:
        """The EMR service."""
        from his.emr.v1 import emr_service_pb2_grpc  # noqa: PLC0415

        return emr_service_pb2_grpc.EmrServiceStub(self.channel("emr"))

    @cached_property
    def orders(self) -> orders.OrdersServiceAsyncStub:
        """The orders service."""
        from his.orders.v1 import orders_service_pb2_grpc  # noqa: PLC0415

        return orders_service_pb2_grpc.OrdersServiceStub(self.channel("orders"))

    @cached_property
    def lab(self) -> lab.LabServiceAsyncStub:
        """The lab service."""
        from his.lab.v1 import lab_service_pb2_grpc  # noqa: PLC0415

        return lab_service_pb2_grpc.LabServiceStub(self.channel("lab"))

    @cached_property
    def pharmacy(self) -> pharmacy.PharmacyServiceAsyncStub:
        """The pharmacy service."""
        from his.pharmacy.v1 import pharmacy_service_pb2_grpc  # noqa: PLC0415

        return pharmacy_service_pb2_grpc.PharmacyServiceStub(self.channel("pharmacy"))

    @cached_property
    def billing(self) -> billing.BillingServiceAsyncStub:
        """The billing service."""
        from his.billing.v1 import billing_service_pb2_grpc  # noqa: PLC0415

        return billing_service_pb2_grpc.BillingServiceStub(self.channel("billing"))

    @cached_property
    def iam(self) -> iam.IamServiceAsyncStub:
        """The identity service."""
        from his.iam.v1 import iam_service_pb2_grpc  # noqa: PLC0415

        return iam_service_pb2_grpc.IamServiceStub(self.channel("iam"))

    @cached_property
    def audit(self) -> audit.AuditServiceAsyncStub:
        """The audit service."""
        from his.audit.v1 import audit_service_pb2_grpc  # noqa: PLC0415

        return audit_service_pb2_grpc.AuditServiceStub(self.channel("audit"))

    async def close(self) -> None:
        """Close every channel opened so far."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        for service in _SERVICES:  # cached stubs are bound to the closed channels
            self.__dict__.pop(service, None)

    async def __aenter__(self) -> HisClients:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
