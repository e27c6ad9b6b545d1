"""Who may bill: billing clerks everything, clinicians and everyone else nothing (refused before
existence); every read and write of a patient's billing is audited with the patient, for the
purpose of payment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.billing.v1 import billing_service_pb2 as pb
from his.runtime.server import RunningService
from tests.billing.helpers import (
    CLERK,
    Billing,
    charge,
    charge_item,
    get_invoice,
    invoice,
    issued,
    missing,
    pay,
)
from tests.identity import ISSUER, channel_as, metadata
from tests.security.helpers import Audit
from tests.support import fails

AUDITOR = ISSUER.staff("AUDITOR")
OUTSIDERS = {
    role: metadata(ISSUER.staff(role))
    for role in ("DOCTOR", "NURSE", "PHARMACIST", "REGISTRAR", "LAB_TECHNICIAN", "AUDITOR")
}


@pytest.fixture(scope="module")
async def auditor(audit_service: RunningService) -> AsyncIterator[Audit]:
    async with channel_as(audit_service.address, AUDITOR) as channel:
        yield audit_grpc.AuditServiceStub(channel)


async def _trail(auditor: Audit, patient: str, want: set[str]) -> list[audit_pb.AuditEvent]:
    """The patient's audit events once events of every resource in `want` arrived (bounded wait
    for the relay)."""
    for _ in range(200):
        reply = await auditor.ListAuditEvents(
            audit_pb.ListAuditEventsRequest(patient=patient, page_size=500)
        )
        if want <= {event.entity.resource_name for event in reply.audit_events}:
            return list(reply.audit_events)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no audit event of some of {want} arrived for the patient")


async def test_nobody_but_billing_clerks_reads_or_writes_billing(
    billing: Billing, patient: str
) -> None:
    item = await charge(billing, patient)
    for role, caller in OUTSIDERS.items():
        for call in (
            billing.GetChargeItem(pb.GetChargeItemRequest(name=item.name), metadata=caller),
            # The same refusal for a charge that does not exist: nothing tells which exists.
            billing.GetChargeItem(
                pb.GetChargeItemRequest(name=missing("chargeItems")), metadata=caller
            ),
            billing.CreateChargeItem(
                pb.CreateChargeItemRequest(charge_item=charge_item(patient)), metadata=caller
            ),
            billing.ListInvoices(pb.ListInvoicesRequest(patient=patient), metadata=caller),
            billing.GetPatientBalance(
                pb.GetPatientBalanceRequest(name=f"{patient}/billingBalance"), metadata=caller
            ),
        ):
            failure = await fails(call)
            assert failure.code == grpc.StatusCode.PERMISSION_DENIED, role


async def test_every_read_and_write_is_audited_with_the_patient(
    billing: Billing, patient: str, auditor: Audit
) -> None:
    item = await charge(billing, patient)
    await billing.GetChargeItem(pb.GetChargeItemRequest(name=item.name), metadata=CLERK)
    made = await issued(billing, patient, 100)
    await get_invoice(billing, made.name)
    paid = await pay(billing, made.name, 100)
    await billing.ListPayments(pb.ListPaymentsRequest(parent=made.name), metadata=CLERK)
    await billing.GetPatientBalance(
        pb.GetPatientBalanceRequest(name=f"{patient}/billingBalance"), metadata=CLERK
    )
    await invoice(billing, patient, item.name)
    trail = await _trail(
        auditor, patient, {item.name, made.name, paid.name, f"{patient}/billingBalance"}
    )
    billed = [e for e in trail if "his.billing.v1." in e.operation]
    assert {e.purpose_of_use for e in billed} == {audit_pb.PURPOSE_OF_USE_PAYMENT}
    reads = [e for e in billed if e.action == audit_pb.AUDIT_EVENT_ACTION_READ]
    assert {e.entity.resource_name for e in reads} >= {item.name, made.name, paid.name}
