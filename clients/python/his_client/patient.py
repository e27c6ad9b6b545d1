"""A typed client of the patient service."""

from __future__ import annotations

from types import TracebackType

import grpc

from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his_client.channels import ServiceAddresses, open_channel

DEFAULT_TIMEOUT_S = 5.0


class PatientClient:
    """The patient service's stub on its own channel; use as `async with PatientClient() as c:`.

    `client.stub` exposes every rpc with full types, e.g. `await client.stub.GetPatient(...)`.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address or ServiceAddresses.from_env().of("patient")
        self._channel: grpc.aio.Channel = open_channel(self.address)
        self.stub = pb_grpc.PatientServiceStub(self._channel)

    async def __aenter__(self) -> PatientClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def create(self, patient: pb.Patient, *, request_id: str = "") -> pb.Patient:
        """Register a patient (CreatePatient)."""
        return await self.stub.CreatePatient(
            pb.CreatePatientRequest(patient=patient, request_id=request_id),
            timeout=DEFAULT_TIMEOUT_S,
        )

    async def get(self, name: str) -> pb.Patient:
        """One patient by resource name (GetPatient)."""
        return await self.stub.GetPatient(
            pb.GetPatientRequest(name=name), timeout=DEFAULT_TIMEOUT_S
        )

    async def search(self, **filters: object) -> list[pb.Patient]:
        """All patients matching ListPatients filters, following page tokens."""
        found: list[pb.Patient] = []
        request = pb.ListPatientsRequest(**filters)  # type: ignore[arg-type]
        while True:
            page = await self.stub.ListPatients(request, timeout=DEFAULT_TIMEOUT_S)
            found.extend(page.patients)
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token
