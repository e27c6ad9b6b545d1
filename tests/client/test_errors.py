"""his_client.rich_status / describe: a failed call's rich status, readable without a traceback."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from his_client import describe, rich_status
from his_client.errors import FieldViolation


def _failed(code: grpc.StatusCode, message: str, *details: object) -> grpc.aio.AioRpcError:
    """An AioRpcError as a HIS server sends it: a google.rpc.Status in the trailing metadata."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message)


def test_bad_input_is_described_by_code_domain_and_each_bad_field() -> None:
    error = _failed(
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request has invalid fields",
        error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="patient.his"),
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="patient.birth_date", description="not a date in the calendar"
                )
            ]
        ),
    )
    status = rich_status(error)
    assert status.field_violations == (
        FieldViolation("patient.birth_date", "not a date in the calendar"),
    )
    assert describe(error) == (
        "INVALID_ARGUMENT (patient.his): the request has invalid fields\n"
        "  patient.birth_date: not a date in the calendar"
    )


def test_a_field_the_message_already_names_is_not_repeated() -> None:
    said = "patient.birth_date: not a date in the calendar"
    error = _failed(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{said}; patient.phone: not a phone number",
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="patient.birth_date", description="not a date in the calendar"
                ),
                error_details_pb2.BadRequest.FieldViolation(
                    field="patient.national_id", description="required"
                ),
            ]
        ),
    )
    assert describe(error) == (
        f"INVALID_ARGUMENT: {said}; patient.phone: not a phone number\n"
        "  patient.national_id: required"
    )


def test_a_refusal_names_its_reason_and_metadata() -> None:
    error = _failed(
        grpc.StatusCode.PERMISSION_DENIED,
        "not allowed",
        error_details_pb2.ErrorInfo(
            reason="DEPARTMENT_MISMATCH", domain="scheduling.his", metadata={"action": "read"}
        ),
    )
    status = rich_status(error)
    assert (status.reason, status.domain, dict(status.metadata)) == (
        "DEPARTMENT_MISMATCH",
        "scheduling.his",
        {"action": "read"},
    )
    assert describe(error) == "PERMISSION_DENIED DEPARTMENT_MISMATCH (scheduling.his): not allowed"


def test_a_plain_status_is_code_and_message() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused"
    )
    assert describe(error) == "UNAVAILABLE: connection refused"
    assert rich_status(error).reason == ""


def test_details_contradicting_the_call_are_ignored() -> None:
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="other")
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailing, "trace 0af7"
    )
    assert describe(error) == "INTERNAL: trace 0af7"
