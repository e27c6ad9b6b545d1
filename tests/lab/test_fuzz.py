"""Random but well-typed lab requests, about records that exist, and bodies that are not
protobuf at all: the answer is never INTERNAL or UNKNOWN."""

from __future__ import annotations

import collections
import random
from typing import Any

import grpc

from his.common.v1 import types_pb2
from his.lab.v1 import lab_service_pb2 as pb
from tests.identity import metadata
from tests.lab.helpers import (
    BLOOD,
    ORDERS_MD,
    Hospital,
    Lab,
    Patients,
    changed,
    missing,
    order,
    reported,
)

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
CASES = 300
UNDECODABLE = b"\xff\xff\xff\xff"


def _pick(rng: random.Random, *choices: Any) -> Any:
    return rng.choice(choices)


def _text(rng: random.Random) -> str:
    return str(
        _pick(
            rng,
            "",
            " ",
            "x" * rng.randint(1, 3000),
            "\0",
            "a\u202eb",
            "ÄÖÜ测试",
            "-1",
            "1e309",
            "specimens/",
            "diagnosticReports/-",
            str(rng.random()),
        )
    )


def _number(rng: random.Random) -> float:
    return float(_pick(
        rng, 0.0, -0.0, 1e308, -1e308, float("inf"), float("-inf"), float("nan"), 5e-324,
        rng.uniform(-1e6, 1e6), 7.0, 20.0,
    ))  # fmt: skip


def _coding(rng: random.Random) -> types_pb2.Coding:
    return types_pb2.Coding(
        system=_pick(rng, "http://loinc.org", "http://snomed.info/sct", "", _text(rng)),
        code=_pick(rng, "718-7", "2823-3", "58410-2", "119297000", "99999-9", "", _text(rng)),
        display=_pick(rng, "", _text(rng)),
    )


def _observation(rng: random.Random) -> pb.Observation:
    result = pb.Observation(
        code=_coding(rng),
        status=rng.randint(-1, 8),  # type: ignore[arg-type]
        interpretation=rng.randint(-1, 9),  # type: ignore[arg-type]
        note=_pick(rng, "", _text(rng)),
    )
    kind = rng.randint(0, 2)
    if kind == 1:
        result.value_quantity.CopyFrom(
            types_pb2.Quantity(value=_number(rng), unit=_pick(rng, "g/dL", "", _text(rng)))
        )
    elif kind == 2:
        result.value_string = _text(rng)
    return result


async def test_random_lab_requests_never_end_internal_or_unknown(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    rng = random.Random(20261205)
    work = await reported(lab, patients, hospital)
    assert work.report is not None and work.specimen is not None
    reports = [work.report.name, missing("diagnosticReports"), "diagnosticReports/x", ""]
    specimens = [work.specimen.name, missing("specimens"), "specimens/1", ""]
    orders = [work.order.name, missing("serviceRequests"), "", "serviceRequests/-"]
    results = [r.name for r in work.report.results] + [missing("diagnosticReports") + "/x"]
    callers = [hospital.tech, hospital.doctor, hospital.other_tech, hospital.nurse]

    def make(index: int) -> tuple[str, Any]:
        kind = index % 10
        if kind == 0:
            return "RecordObservations", pb.RecordObservationsRequest(
                parent=rng.choice(reports),
                observations=[_observation(rng) for _ in range(rng.randint(0, 4))],
            )
        if kind == 1:
            return "AmendReport", pb.AmendReportRequest(
                name=rng.choice(reports),
                reason=_pick(rng, "", "why", _text(rng)),
                conclusion=_pick(rng, "", _text(rng)),
                observations=[_observation(rng) for _ in range(rng.randint(0, 3))],
                etag=_pick(rng, "", "1", _text(rng)),
            )
        if kind == 2:
            return "FinalizeReport", pb.FinalizeReportRequest(
                name=rng.choice(reports), conclusion=_text(rng), etag=_pick(rng, "", "2", "x")
            )
        if kind == 3:
            specimen = pb.Specimen(
                service_requests=rng.sample(orders, rng.randint(0, 3)),
                specimen_type=_pick(rng, BLOOD, _coding(rng)),
                accession_id=_pick(rng, "A-1", _text(rng)),
                collector=_pick(rng, hospital.tech.name, _text(rng)),
            )
            if rng.random() < 0.7:
                specimen.collect_time.seconds = rng.randint(-(2**40), 2**40)
            return "CreateSpecimen", pb.CreateSpecimenRequest(
                specimen=specimen, request_id=_pick(rng, "", _text(rng))
            )
        if kind == 4:
            return "CreateDiagnosticReport", pb.CreateDiagnosticReportRequest(
                diagnostic_report=pb.DiagnosticReport(
                    service_request=rng.choice(orders),
                    specimens=rng.sample(specimens, rng.randint(0, 3)),
                    results=[pb.Observation(code=_coding(rng)) for _ in range(rng.randint(0, 3))],
                ),
                request_id=_pick(rng, "", _text(rng)),
            )
        if kind == 5:
            return "ListLabOrders", pb.ListLabOrdersRequest(
                page_size=rng.randint(-5, 1000),
                page_token=_pick(rng, "", _text(rng)),
                laboratory=_pick(rng, hospital.laboratory, "", _text(rng)),
                statuses=[rng.randint(-2, 5) for _ in range(rng.randint(0, 3))],  # type: ignore[misc]
                priorities=[rng.randint(-2, 6) for _ in range(rng.randint(0, 3))],  # type: ignore[misc]
                patient=_pick(rng, work.patient, "", _text(rng)),
            )
        if kind == 6:
            return "ListSpecimens", pb.ListSpecimensRequest(
                page_size=rng.randint(-5, 1000),
                page_token=_pick(rng, "", _text(rng)),
                patient=_pick(rng, work.patient, _text(rng)),
                service_request=rng.choice(orders),
                accession_id=_pick(rng, "", _text(rng)),
                statuses=[rng.randint(-2, 5) for _ in range(rng.randint(0, 3))],  # type: ignore[misc]
            )
        if kind == 7:
            return "AcknowledgeCriticalResult", pb.AcknowledgeCriticalResultRequest(
                name=rng.choice(results + reports)
            )
        if kind == 8:
            return rng.choice(("RejectSpecimen", "MarkSpecimenEnteredInError")), (
                pb.RejectSpecimenRequest(name=rng.choice(specimens[1:]), reason=_text(rng))
            )
        request = order(
            _pick(rng, work.patient, _text(rng)), _pick(rng, hospital.laboratory, _text(rng)), ""
        )
        request.name = _pick(rng, missing("serviceRequests"), _text(rng))
        request.status = rng.randint(-1, 5)  # type: ignore[assignment]
        request.priority = rng.randint(-1, 6)  # type: ignore[assignment]
        request.code.CopyFrom(_coding(rng))
        request.create_time.seconds = _pick(rng, 0, -(2**40), 2**40, rng.randint(0, 2**31))
        return "DeliverEvents", pb.DeliverEventsRequest(
            events=[changed(request, rng.randint(-(2**62), 2**62))]
        )

    seen: collections.Counter[str] = collections.Counter()
    bad: list[str] = []
    for index in range(CASES):
        method, request = make(index)
        if method == "MarkSpecimenEnteredInError":
            request = pb.MarkSpecimenEnteredInErrorRequest(name=request.name, reason=request.reason)
        who = ORDERS_MD if method == "DeliverEvents" else callers[index % len(callers)].md
        try:
            await getattr(lab, method)(request, metadata=who, timeout=20)
            seen["OK"] += 1
        except grpc.aio.AioRpcError as error:
            seen[error.code().name] += 1
            if error.code() in NEVER:
                bad.append(f"{method}: {error.code().name} {error.details()} for {request!r:.300}")
    assert not bad, "\n".join(bad)
    assert seen["INVALID_ARGUMENT"] > 0 and seen["OK"] > 0, seen


async def test_undecodable_bodies_are_invalid_argument_on_every_lab_rpc(
    lab_channel: grpc.aio.Channel, hospital: Hospital
) -> None:
    wrong: list[str] = []
    for method in pb.DESCRIPTOR.services_by_name["LabService"].methods:
        call: Any = lab_channel.unary_unary(
            f"/his.lab.v1.LabService/{method.name}",
            request_serializer=None,
            response_deserializer=None,
        )
        for who in (hospital.tech.md, ORDERS_MD, metadata(hospital.doctor.token)):
            try:
                await call(UNDECODABLE, metadata=who, timeout=10)
                wrong.append(f"{method.name}: accepted")
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    wrong.append(f"{method.name}: {error.code().name}")
    assert not wrong, wrong
