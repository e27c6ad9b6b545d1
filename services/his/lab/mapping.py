"""Database rows of the lab schema as proto messages."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from his.common.v1 import types_pb2
from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.runtime import wire
from his.runtime.enums import EnumText

SPECIMEN_STATUS = EnumText(pb.SpecimenStatus.DESCRIPTOR)
REPORT_STATUS = EnumText(pb.DiagnosticReportStatus.DESCRIPTOR)
OBSERVATION_STATUS = EnumText(pb.ObservationStatus.DESCRIPTOR)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def specimen_name(specimen_id: uuid.UUID) -> str:
    """`specimens/{id}`."""
    return f"specimens/{specimen_id}"


def report_name(report_id: uuid.UUID) -> str:
    """`diagnosticReports/{id}`."""
    return f"diagnosticReports/{report_id}"


def observation_name(report_id: uuid.UUID, observation_id: uuid.UUID) -> str:
    """`diagnosticReports/{id}/observations/{id}`."""
    return f"diagnosticReports/{report_id}/observations/{observation_id}"


def order_name(order_id: uuid.UUID) -> str:
    """`serviceRequests/{id}`."""
    return f"serviceRequests/{order_id}"


def _ref(collection: str, value: uuid.UUID | None) -> str:
    return f"{collection}/{value}" if value else ""


def specimen_to_proto(row: Any, orders: Sequence[uuid.UUID]) -> pb.Specimen:
    """A `lab.specimens` row (and its orders, in the order given) as a Specimen."""
    return pb.Specimen(
        name=specimen_name(row.id),
        patient=f"patients/{row.patient_id}",
        service_requests=[order_name(o) for o in orders],
        specimen_type=wire.coding(row.type_system, row.type_code, row.type_display),
        accession_id=row.accession_id,
        collect_time=wire.timestamp(row.collect_time),
        receive_time=wire.timestamp(row.receive_time),
        status=SPECIMEN_STATUS.number(row.status),  # type: ignore[arg-type]
        reject_reason=row.reject_reason or "",
        update_time=wire.timestamp(row.update_time),
        collector=f"staff/{row.collector_id}",
        laboratory=f"departments/{row.laboratory_id}",
        entered_in_error_reason=row.entered_in_error_reason or "",
    )


def observation_to_proto(row: Any) -> pb.Observation:
    """A `lab.observations` row as an Observation."""
    result = pb.Observation(
        name=observation_name(row.report_id, row.id),
        code=wire.coding(row.code_system, row.code, row.code_display),
        interpretation=row.interpretation,
        status=OBSERVATION_STATUS.number(row.status),  # type: ignore[arg-type]
        note=row.note,
        update_time=wire.timestamp(row.update_time),
    )
    if row.value_number is not None:
        result.value_quantity.CopyFrom(
            types_pb2.Quantity(value=row.value_number, unit=row.value_unit or "")
        )
    elif row.value_text is not None:
        result.value_string = row.value_text
    unit = row.value_unit or ""
    if row.range_low is not None:
        result.reference_range.low.CopyFrom(types_pb2.Quantity(value=row.range_low, unit=unit))
    if row.range_high is not None:
        result.reference_range.high.CopyFrom(types_pb2.Quantity(value=row.range_high, unit=unit))
    if row.range_text:
        result.reference_range.text = row.range_text
    return result


def report_to_proto(
    row: Any, specimens: Sequence[uuid.UUID], results: Sequence[Any]
) -> pb.DiagnosticReport:
    """A `lab.reports` row with its specimens and observation rows as a DiagnosticReport."""
    return pb.DiagnosticReport(
        name=report_name(row.id),
        patient=f"patients/{row.patient_id}",
        service_request=order_name(row.service_request_id),
        code=wire.coding(row.code_system, row.code, row.code_display),
        specimens=[specimen_name(s) for s in specimens],
        results=[observation_to_proto(r) for r in results],
        conclusion=row.conclusion,
        status=REPORT_STATUS.number(row.status),  # type: ignore[arg-type]
        issue_time=wire.timestamp(row.issue_time),
        performer=_ref("staff", row.performer_id),
        amend_reason=row.amend_reason or "",
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
        encounter=_ref("encounters", row.encounter_id),
        laboratory=f"departments/{row.laboratory_id}",
        version=row.released_version,
        requester=_ref("staff", row.requester_id),
    )


def order_to_proto(row: Any) -> orders_pb.ServiceRequest:
    """A `lab.lab_orders` row as the ServiceRequest delivered."""
    return orders_pb.ServiceRequest.FromString(row.body)


def critical_to_proto(row: Any, report: Any) -> pb.CriticalResult:
    """A `lab.critical_results` row (with its report row) as a CriticalResult."""
    observation = pb.Observation.FromString(row.body)
    return pb.CriticalResult(
        name=observation.name,
        patient=f"patients/{report.patient_id}",
        service_request=order_name(report.service_request_id),
        requester=_ref("staff", row.requester_id),
        observation=observation,
        report_version=row.report_version,
        issue_time=wire.timestamp(row.issue_time),
        acknowledge_time=wire.timestamp(row.acknowledge_time),
        acknowledged_by=_ref("staff", row.acknowledged_by),
    )
