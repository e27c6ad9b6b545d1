"""Conveniences over the patient stub: for scripts and the walk-through (`PatientClient`), for
services that must know a patient exists and is active before they act (`require_active`), and
for services whose access decisions depend on the patient's privacy consent (`privacy_consent`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from types import TracebackType

import grpc

from his.base import identity
from his.base.errors import FailedPrecondition
from his.patient.v1 import patient_service_pb2 as pb
from his_client.clients import HisClients
from his_client.config import ClientConfig
from his_client.credentials import static_token
from his_client.errors import UpstreamError


class PatientClient:
    """`async with PatientClient(token) as c:` then `c.create`, `c.get`, `c.search`; `c.stub` has
    every rpc, with the SDK's deadlines, safe retries and breaker. `token` is the caller's bearer
    token (`his token --user reg.amina` prints one locally)."""

    def __init__(self, token: str, address: str | None = None) -> None:
        config = ClientConfig.from_env(os.environ)
        if address is not None:
            config = dataclasses.replace(config, addresses={**config.addresses, "patient": address})
        self._clients = HisClients(config, token=static_token(token))
        self.stub = self._clients.patient

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
        await self._clients.close()

    async def create(self, patient: pb.Patient, *, request_id: str = "") -> pb.Patient:
        """Register a patient (CreatePatient); with a request id it is safe to retry."""
        return await self.stub.CreatePatient(
            pb.CreatePatientRequest(patient=patient, request_id=request_id)
        )

    async def get(self, name: str) -> pb.Patient:
        """One patient by resource name (GetPatient)."""
        return await self.stub.GetPatient(pb.GetPatientRequest(name=name))

    async def search(self, **filters: object) -> list[pb.Patient]:
        """All patients matching ListPatients filters, following page tokens."""
        found: list[pb.Patient] = []
        request = pb.ListPatientsRequest(**filters)  # type: ignore[arg-type]
        while True:
            page = await self.stub.ListPatients(request)
            found.extend(page.patients)
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token


async def require_active(clients: HisClients, name: str, *, when_merged: str) -> pb.Patient:
    """The patient `name` if it exists and is active, else FAILED_PRECONDITION (PATIENT_NOT_FOUND,
    PATIENT_MERGED with `when_merged` as the advice, PATIENT_INACTIVE); an outage of the patient
    service surfaces as UNAVAILABLE naming it (runtime).

    Asked as the calling service: whether a record exists and may be acted on is the service's
    question, and the caller's access to the patient is decided by the service's own policy
    (a clinician opening an encounter, or breaking the glass, for a patient they have no care
    relationship with yet may not read the demographics, and need not)."""
    with identity.as_service():
        patient = await require_existing(clients, name)
    require_state(patient.state, patient.merged_into, when_merged=when_merged)
    return patient


async def require_existing(clients: HisClients, name: str) -> pb.Patient:
    """The patient `name` in whatever state, else FAILED_PRECONDITION PATIENT_NOT_FOUND."""
    try:
        patient = await clients.patient.GetPatient(pb.GetPatientRequest(name=name))
    except UpstreamError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise FailedPrecondition(
                "the patient does not exist",
                reason="PATIENT_NOT_FOUND",
                metadata={"patient": name},
            ) from None
        raise
    return patient


def require_state(state: int, merged_into: str, *, when_merged: str) -> None:
    """FAILED_PRECONDITION unless `state` is PATIENT_STATE_ACTIVE (PATIENT_MERGED with `when_merged`
    as the advice and the survivor named, or PATIENT_INACTIVE): the refusal of `require_active`,
    for a service that knows the state from its own copy."""
    if state == pb.PATIENT_STATE_MERGED:
        raise FailedPrecondition(
            f"the patient record was merged; {when_merged}",
            reason="PATIENT_MERGED",
            metadata={"merged_into": merged_into},
        )
    if state != pb.PATIENT_STATE_ACTIVE:
        raise FailedPrecondition("the patient is not active", reason="PATIENT_INACTIVE")


async def privacy_consent(clients: HisClients, patient: str, *, missing: str | None = None) -> str:
    """The patient's privacy consent as the policies see it: "active" (one in force now),
    "revoked" (given once, none in force now) or "none" (never given). Asked as the calling
    service, not as its caller: the answer decides the caller's access, so it must not depend on
    what the caller may read. Every page counts (a privacy consent on page 2 too). A patient the
    patient service does not know is NOT_FOUND, or `missing` when given (a clinical record names
    a patient that no longer resolves: no consent on record)."""
    consents: list[pb.Consent] = []
    request = pb.ListConsentsRequest(parent=patient, page_size=500)
    with identity.as_service():
        while True:
            try:
                reply = await clients.patient.ListConsents(request)
            except UpstreamError as error:
                if missing is None or error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return missing
            consents += reply.consents
            if not reply.next_page_token:
                break
            request.page_token = reply.next_page_token
    privacy = [c for c in consents if c.scope == pb.CONSENT_SCOPE_PATIENT_PRIVACY]
    now = dt.datetime.now(dt.UTC)
    if any(c.status == pb.CONSENT_STATUS_ACTIVE and _in_period(c, now) for c in privacy):
        return "active"
    return "revoked" if privacy else "none"


def _in_period(consent: pb.Consent, now: dt.datetime) -> bool:
    """Whether a consent's period covers `now` (an unset end means until revoked)."""
    period = consent.period
    if period.HasField("start_time") and period.start_time.ToDatetime(dt.UTC) > now:
        return False
    return not (period.HasField("end_time") and period.end_time.ToDatetime(dt.UTC) <= now)
