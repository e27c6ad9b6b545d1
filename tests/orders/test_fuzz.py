"""Fuzzing orders from valid requests: one field at a time of a request that would succeed (a
doctor's order on a real encounter, a lab's or pharmacy's event of a real order) is set to a
random or hostile value; no call ends INTERNAL or UNKNOWN. (tests/runtime/test_bad_bytes.py
fuzzes every rpc from empty requests and sends undecodable bodies, orders among them.)"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from his.lab.v1 import lab_service_pb2 as lab_pb
from his.orders.v1 import orders_service_pb2 as pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.runtime.outbox import envelope
from tests.orders.events import (
    LAB,
    PHARMACY,
    deliver,
    dispense_changed,
    new_dispense,
    report_issued,
)
from tests.orders.formulary import Formulary
from tests.orders.helpers import (
    Emr,
    Hospital,
    Orders,
    Patients,
    dosage,
    lab_order,
    place_lab_order,
    prescribe,
    prescription,
    visit,
)
from tests.runtime.test_bad_bytes import _value

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
MUTATIONS = 30


def _leaves(message: Message, prefix: str = "") -> Iterator[tuple[Message, Any, str]]:
    """Every scalar field of `message` and of its set sub-messages (the mutation targets)."""
    for field in message.DESCRIPTOR.fields:
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                for item in getattr(message, field.name):
                    yield from _leaves(item, f"{path}[].")
            elif message.HasField(field.name):
                yield from _leaves(getattr(message, field.name), f"{path}.")
        elif not field.is_repeated:
            yield message, field, path


def _mutants(base: Message, seed: str) -> Iterator[tuple[str, Message]]:
    rng = random.Random(seed)
    for _ in range(MUTATIONS):
        mutant = type(base)()
        mutant.CopyFrom(base)
        leaves = list(_leaves(mutant))
        holder, field, path = rng.choice(leaves)
        try:
            setattr(holder, field.name, _value(rng, field, 0))
        except (ValueError, TypeError):
            continue
        yield path, mutant


async def _never_internal(
    call: Any, base: Message, md: Any, seed: str, seen: Counter[str]
) -> list[str]:
    """The mutants of `base` that ended INTERNAL or UNKNOWN; `seen` counts every answer by code
    (so a test can tell its mutants reached the servicer, not only the token check)."""
    bad = []
    for path, mutant in _mutants(base, seed):
        try:
            await call(mutant, metadata=md, timeout=20)
            seen["OK"] += 1
        except grpc.aio.AioRpcError as error:
            seen[error.code().name] += 1
            if error.code() in NEVER:
                bad.append(f"{seed} {path}: {error.code().name} for {str(mutant)[:200]!r}")
    return bad


async def test_mutated_requests_never_end_internal_or_unknown(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, formulary: Formulary
) -> None:
    assert hospital.doctor is not None
    md = hospital.doctor.md
    at = await visit(patients, emr, hospital)
    service_request = await place_lab_order(orders, hospital, at)
    medication_request = await prescribe(orders, hospital, at, formulary.active.name)
    sr, mr = service_request.name, medication_request.name
    bases: list[tuple[Any, Message, Any]] = [
        (
            orders.CreateServiceRequest,
            pb.CreateServiceRequestRequest(
                service_request=lab_order(at, hospital.lab), request_id="fuzz-sr"
            ),
            md,
        ),
        (
            orders.CreateMedicationRequest,
            pb.CreateMedicationRequestRequest(
                medication_request=prescription(at, formulary.active.name), request_id="fuzz-mr"
            ),
            md,
        ),
        (orders.GetServiceRequest, pb.GetServiceRequestRequest(name=sr), md),
        (orders.GetMedicationRequest, pb.GetMedicationRequestRequest(name=mr), md),
        (
            orders.ListServiceRequests,
            pb.ListServiceRequestsRequest(
                patient=at.patient, encounter=at.encounter, performer=hospital.lab, page_size=5
            ),
            md,
        ),
        (
            orders.ListMedicationRequests,
            pb.ListMedicationRequestsRequest(patient=at.patient, page_size=5),
            md,
        ),
        (
            orders.UpdateMedicationRequest,
            pb.UpdateMedicationRequestRequest(
                medication_request=pb.MedicationRequest(
                    name=mr,
                    medication=formulary.other.name,
                    dosage=dosage(),
                    dispense_quantity=medication_request.dispense_quantity,
                    refills=1,
                ),
                update_mask=FieldMask(paths=["medication", "dosage", "refills"]),
            ),
            md,
        ),
        (orders.HoldServiceRequest, pb.HoldServiceRequestRequest(name=sr, reason="r"), md),
        (orders.ResumeServiceRequest, pb.ResumeServiceRequestRequest(name=sr), md),
        (orders.HoldMedicationRequest, pb.HoldMedicationRequestRequest(name=mr, reason="r"), md),
        (orders.ResumeMedicationRequest, pb.ResumeMedicationRequestRequest(name=mr), md),
        (orders.CompleteServiceRequest, pb.CompleteServiceRequestRequest(name=sr), LAB),
        (orders.CompleteMedicationRequest, pb.CompleteMedicationRequestRequest(name=mr), PHARMACY),
        (orders.DeliverEvents, deliver(report_issued(sr)), LAB),
        (
            orders.DeliverEvents,
            deliver(
                dispense_changed(
                    mr, new_dispense(), 5, pharmacy_pb.MEDICATION_DISPENSE_STATUS_COMPLETED, 1
                )
            ),
            PHARMACY,
        ),
        # Revoking, cancelling and marking in error last: they end the orders' life.
        (orders.RevokeServiceRequest, pb.RevokeServiceRequestRequest(name=sr, reason="r"), md),
        (
            orders.CancelMedicationRequest,
            pb.CancelMedicationRequestRequest(name=mr, reason="r"),
            md,
        ),
        (
            orders.MarkServiceRequestEnteredInError,
            pb.MarkServiceRequestEnteredInErrorRequest(name=sr, reason="r"),
            md,
        ),
        (
            orders.MarkMedicationRequestEnteredInError,
            pb.MarkMedicationRequestEnteredInErrorRequest(name=mr, reason="r"),
            md,
        ),
    ]
    bad: list[str] = []
    seen: Counter[str] = Counter()
    for index, (call, base, caller) in enumerate(bases):
        bad += await _never_internal(call, base, caller, f"{type(base).__name__}/{index}", seen)
    assert not bad, "\n".join(bad)
    # The mutants got past the token and policy checks: some were accepted, some refused as bad.
    assert seen["OK"] > 0 and seen["INVALID_ARGUMENT"] > 0, seen
    assert sum(seen.values()) >= len(bases) * MUTATIONS // 2, seen


async def test_mutated_event_payloads_never_end_internal_or_unknown(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, formulary: Formulary
) -> None:
    at = await visit(patients, emr, hospital)
    sr = (await place_lab_order(orders, hospital, at)).name
    mr = (await prescribe(orders, hospital, at, formulary.active.name)).name
    issued = report_issued(sr)
    changed = dispense_changed(
        mr, new_dispense(), 5, pharmacy_pb.MEDICATION_DISPENSE_STATUS_IN_PROGRESS, 1
    )
    bad = []
    seen: Counter[str] = Counter()
    for source, event, md in (("lab", issued, LAB), ("pharmacy", changed, PHARMACY)):
        payload: Message = (
            lab_pb.DiagnosticReportIssued()
            if source == "lab"
            else pharmacy_pb.MedicationDispenseChanged()
        )
        assert event.payload.Unpack(payload)
        for path, mutant in _mutants(payload, f"payload/{source}"):
            try:
                await orders.DeliverEvents(
                    deliver(envelope(mutant, source=source)), metadata=md, timeout=20
                )
                seen["OK"] += 1
            except grpc.aio.AioRpcError as error:
                seen[error.code().name] += 1
                if error.code() in NEVER:
                    bad.append(f"{source} {path}: {error.code().name} {str(mutant)[:200]!r}")
    assert not bad, "\n".join(bad)
    assert seen["OK"] > 0 and seen["INVALID_ARGUMENT"] > 0, seen
