"""A real patient gRPC server that fails on purpose, following a per-test script.

`service.script("GetPatient", UNAVAILABLE, UNAVAILABLE, OK)` answers the first two attempts at
GetPatient with UNAVAILABLE and every later one with success (the last answer repeats). Every
attempt is counted and its request and remaining deadline are kept, per method.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from his.base.errors import HisError, to_status
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Answer:
    """What one attempt gets: wait `sleep_s`, then fail with `code` (None: succeed)."""

    code: grpc.StatusCode | None = None
    sleep_s: float = 0.0
    # An ErrorInfo reason to send with the failure, as a real HIS server would.
    reason: str | None = None


OK = Answer()
UNAVAILABLE = Answer(grpc.StatusCode.UNAVAILABLE)


def fail(code: grpc.StatusCode) -> Answer:
    """An attempt answered with `code`."""
    return Answer(code)


def sleep(seconds: float) -> Answer:
    """An attempt that takes `seconds` before it succeeds (if the caller still waits)."""
    return Answer(sleep_s=seconds)


class ScriptedPatientService(pb_grpc.PatientServiceServicer):
    """Every rpc of PatientService, answering as scripted (unscripted methods succeed)."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.requests: defaultdict[str, list[Message]] = defaultdict(list)
        self.time_remaining: defaultdict[str, list[float | None]] = defaultdict(list)
        self._scripts: dict[str, list[Answer]] = {}
        self._played: Counter[str] = Counter()

    def script(self, method: str, *answers: Answer) -> None:
        """Answer the next attempts at `method` in this order; the last answer repeats forever."""
        assert answers, "a script needs at least one answer"
        self._scripts[method] = list(answers)
        self._played[method] = 0

    async def _play(self, method: str, request: Message, context: Context) -> None:
        self.attempts[method] += 1
        self.requests[method].append(request)
        self.time_remaining[method].append(context.time_remaining())
        answers = self._scripts.get(method, [OK])
        answer = answers[min(self._played[method], len(answers) - 1)]
        self._played[method] += 1
        if answer.sleep_s:
            await asyncio.sleep(answer.sleep_s)
        if answer.code is not None and answer.reason is not None:
            error = HisError("scripted failure with a reason", reason=answer.reason)
            error.code = answer.code
            status = to_status(error, domain="fake.his")
            await context.abort(status.code, status.details, status.trailing_metadata)
        if answer.code is not None:
            await context.abort(answer.code, f"scripted {answer.code.name} from the fake upstream")

    async def GetPatient(self, request: pb.GetPatientRequest, context: Context) -> pb.Patient:
        await self._play("GetPatient", request, context)
        return pb.Patient(name=request.name)

    async def ListPatients(
        self, request: pb.ListPatientsRequest, context: Context
    ) -> pb.ListPatientsResponse:
        await self._play("ListPatients", request, context)
        return pb.ListPatientsResponse()

    async def CreatePatient(self, request: pb.CreatePatientRequest, context: Context) -> pb.Patient:
        await self._play("CreatePatient", request, context)
        return pb.Patient(name="patients/00000000-0000-4000-8000-000000000001")

    async def UpdatePatient(self, request: pb.UpdatePatientRequest, context: Context) -> pb.Patient:
        await self._play("UpdatePatient", request, context)
        return request.patient

    async def DeactivatePatient(
        self, request: pb.DeactivatePatientRequest, context: Context
    ) -> pb.Patient:
        await self._play("DeactivatePatient", request, context)
        return pb.Patient(name=request.name)

    async def ReactivatePatient(
        self, request: pb.ReactivatePatientRequest, context: Context
    ) -> pb.Patient:
        await self._play("ReactivatePatient", request, context)
        return pb.Patient(name=request.name)

    async def MergePatients(self, request: pb.MergePatientsRequest, context: Context) -> pb.Patient:
        await self._play("MergePatients", request, context)
        return pb.Patient(name=request.name)

    async def UnmergePatient(
        self, request: pb.UnmergePatientRequest, context: Context
    ) -> pb.Patient:
        await self._play("UnmergePatient", request, context)
        return pb.Patient(name=request.name)

    async def GrantConsent(self, request: pb.GrantConsentRequest, context: Context) -> pb.Consent:
        await self._play("GrantConsent", request, context)
        return pb.Consent()

    async def RevokeConsent(self, request: pb.RevokeConsentRequest, context: Context) -> pb.Consent:
        await self._play("RevokeConsent", request, context)
        return pb.Consent(name=request.name)

    async def GetConsent(self, request: pb.GetConsentRequest, context: Context) -> pb.Consent:
        await self._play("GetConsent", request, context)
        return pb.Consent(name=request.name)

    async def ListConsents(
        self, request: pb.ListConsentsRequest, context: Context
    ) -> pb.ListConsentsResponse:
        await self._play("ListConsents", request, context)
        return pb.ListConsentsResponse()

    async def ListResearchPatients(
        self, request: pb.ListResearchPatientsRequest, context: Context
    ) -> pb.ListResearchPatientsResponse:
        await self._play("ListResearchPatients", request, context)
        return pb.ListResearchPatientsResponse()

    async def DeliverEvents(
        self, request: pb.DeliverEventsRequest, context: Context
    ) -> pb.DeliverEventsResponse:
        await self._play("DeliverEvents", request, context)
        return pb.DeliverEventsResponse()


@dataclass
class Upstream:
    """The scripted service, served by a real grpc.aio server on a free port."""

    service: ScriptedPatientService
    server: grpc.aio.Server
    port: int

    @property
    def address(self) -> str:
        """Where clients reach it."""
        return f"localhost:{self.port}"


async def serve_upstream() -> Upstream:
    """Start a scripted patient server on any free port (stop it with `server.stop(0)`)."""
    service = ScriptedPatientService()
    server = grpc.aio.server()
    pb_grpc.add_PatientServiceServicer_to_server(service, server)
    port = server.add_insecure_port("[::]:0")
    assert port != 0, "could not bind a port for the fake upstream"
    await server.start()
    return Upstream(service, server, port)
