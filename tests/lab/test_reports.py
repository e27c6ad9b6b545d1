"""Reports: registered → preliminary → final → amended, results interpreted by the service, every
released version kept readable, DiagnosticReportIssued stored for the orders service."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from tests.lab.helpers import (
    BMP,
    DOMAIN,
    GLUCOSE,
    HEMOGLOBIN,
    POTASSIUM,
    Hospital,
    Lab,
    Patients,
    changed,
    collected,
    deliver,
    loinc,
    missing,
    ordered,
    quantity,
    reported,
    request_id,
)
from tests.support import fails, invalid_in

CBC_TESTS = ["718-7", "4544-3", "6690-2", "777-3"]


def cbc_values(hemoglobin: float = 13.0) -> list[pb.Observation]:
    """Normal values of a CBC (an adult woman's), with the given hemoglobin."""
    return [
        quantity(HEMOGLOBIN, hemoglobin, "g/dL"),
        quantity(loinc("4544-3"), 40, "%"),
        quantity(loinc("6690-2"), 6, "10*3/uL"),
        quantity(loinc("777-3"), 250, "10*3/uL"),
    ]


async def test_a_report_registers_the_catalogues_tests_of_the_panel(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    report = work.report
    assert report is not None
    assert report.status == pb.DIAGNOSTIC_REPORT_STATUS_REGISTERED
    assert [r.code.code for r in report.results] == CBC_TESTS
    assert all(r.status == pb.OBSERVATION_STATUS_REGISTERED for r in report.results)
    assert report.patient == work.patient
    assert report.encounter == work.order.encounter
    assert report.requester == hospital.doctor.name
    assert report.laboratory == hospital.laboratory
    assert report.version == 0


@pytest.mark.usefixtures("lab_outbox_held")
async def test_release_then_amend_keeps_every_version_readable(
    lab: Lab, patients: Patients, hospital: Hospital, lab_db: AsyncEngine
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    name = work.report.name
    recorded = await lab.RecordObservations(
        pb.RecordObservationsRequest(parent=name, observations=cbc_values(13.0)),
        metadata=hospital.tech.md,
    )
    assert recorded.status == pb.DIAGNOSTIC_REPORT_STATUS_PRELIMINARY
    final = await lab.FinalizeReport(
        pb.FinalizeReportRequest(name=name, conclusion="Normal.", etag=recorded.etag),
        metadata=hospital.tech.md,
    )
    assert final.status == pb.DIAGNOSTIC_REPORT_STATUS_FINAL
    assert final.version == 1 and final.performer == hospital.tech.name
    assert all(r.status == pb.OBSERVATION_STATUS_FINAL for r in final.results)
    amended = await lab.AmendReport(
        pb.AmendReportRequest(
            name=name,
            reason="Transcription error",
            observations=[quantity(HEMOGLOBIN, 11.0, "g/dL")],
        ),
        metadata=hospital.tech.md,
    )
    assert amended.status == pb.DIAGNOSTIC_REPORT_STATUS_AMENDED
    assert amended.version == 2 and amended.amend_reason == "Transcription error"
    hb = next(r for r in amended.results if r.code.code == "718-7")
    assert hb.status == pb.OBSERVATION_STATUS_CORRECTED
    assert hb.interpretation == pb.OBSERVATION_INTERPRETATION_LOW
    versions = await lab.ListDiagnosticReportVersions(
        pb.ListDiagnosticReportVersionsRequest(name=name), metadata=hospital.doctor.md
    )
    assert [v.version for v in versions.diagnostic_reports] == [1, 2]
    first = next(r for r in versions.diagnostic_reports[0].results if r.code.code == "718-7")
    assert first.value_quantity.value == 13.0
    assert first.interpretation == pb.OBSERVATION_INTERPRETATION_NORMAL
    assert versions.diagnostic_reports[1] == amended
    # Each release stored its DiagnosticReportIssued for the orders service, newest revision last.
    async with lab_db.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT envelope FROM lab.outbox WHERE destination = 'orders' "
                    "AND event_type = 'his.lab.v1.DiagnosticReportIssued' ORDER BY id"
                )
            )
        ).all()
    events = []
    for (body,) in rows:
        item = EventEnvelope.FromString(body)
        event = pb.DiagnosticReportIssued()
        assert item.payload.Unpack(event)
        if event.diagnostic_report.name == name:
            events.append(event)
    assert [e.diagnostic_report.version for e in events] == [1, 2]
    assert events[0].revision < events[1].revision
    assert events[1].diagnostic_report == amended


async def test_finalizing_again_with_the_same_conclusion_changes_nothing(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    name = work.report.name
    await lab.RecordObservations(
        pb.RecordObservationsRequest(parent=name, observations=cbc_values()),
        metadata=hospital.tech.md,
    )
    first = await lab.FinalizeReport(
        pb.FinalizeReportRequest(name=name, conclusion="ok"), metadata=hospital.tech.md
    )
    again = await lab.FinalizeReport(
        pb.FinalizeReportRequest(name=name, conclusion="ok", etag="stale"),
        metadata=hospital.tech.md,
    )
    assert again == first
    failure = await fails(
        lab.FinalizeReport(
            pb.FinalizeReportRequest(name=name, conclusion="other"), metadata=hospital.tech.md
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_report_with_a_registered_result_is_not_finalized(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    await lab.RecordObservations(
        pb.RecordObservationsRequest(
            parent=work.report.name, observations=[quantity(HEMOGLOBIN, 13, "g/dL")]
        ),
        metadata=hospital.tech.md,
    )
    failure = await fails(
        lab.FinalizeReport(
            pb.FinalizeReportRequest(name=work.report.name), metadata=hospital.tech.md
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "RESULTS_PENDING"


async def test_a_stale_etag_is_aborted(lab: Lab, patients: Patients, hospital: Hospital) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    await lab.RecordObservations(
        pb.RecordObservationsRequest(parent=work.report.name, observations=cbc_values()),
        metadata=hospital.tech.md,
    )
    failure = await fails(
        lab.FinalizeReport(
            pb.FinalizeReportRequest(name=work.report.name, etag=work.report.etag),
            metadata=hospital.tech.md,
        )
    )
    assert failure.code == grpc.StatusCode.ABORTED


async def test_the_interpretation_is_computed_and_a_client_value_ignored(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital, code=BMP)
    assert work.report is not None
    sent = quantity(POTASSIUM, 6.8, "mmol/L")
    sent.interpretation = pb.OBSERVATION_INTERPRETATION_NORMAL
    sent.reference_range.text = "anything"
    recorded = await lab.RecordObservations(
        pb.RecordObservationsRequest(
            parent=work.report.name, observations=[sent, quantity(GLUCOSE, 65, "mg/dL")]
        ),
        metadata=hospital.tech.md,
    )
    potassium = next(r for r in recorded.results if r.code.code == "2823-3")
    glucose = next(r for r in recorded.results if r.code.code == "2345-7")
    assert potassium.interpretation == pb.OBSERVATION_INTERPRETATION_CRITICAL_HIGH
    assert potassium.reference_range.low.value == 3.5
    assert potassium.reference_range.high.value == 5.1
    assert not potassium.reference_range.text
    assert glucose.interpretation == pb.OBSERVATION_INTERPRETATION_LOW


@pytest.mark.parametrize(
    ("gender", "born", "hemoglobin", "want"),
    [
        # Adult woman: 12.0 to 15.5 normal, critical at or below 7.0 and at or above 20.0.
        (patient_pb.ADMINISTRATIVE_GENDER_FEMALE, (1980, 1, 1), 12.0, "NORMAL"),
        (patient_pb.ADMINISTRATIVE_GENDER_FEMALE, (1980, 1, 1), 11.9, "LOW"),
        (patient_pb.ADMINISTRATIVE_GENDER_FEMALE, (1980, 1, 1), 15.5, "NORMAL"),
        (patient_pb.ADMINISTRATIVE_GENDER_FEMALE, (1980, 1, 1), 16.0, "HIGH"),
        (patient_pb.ADMINISTRATIVE_GENDER_FEMALE, (1980, 1, 1), 7.0, "CRITICAL_LOW"),
        (patient_pb.ADMINISTRATIVE_GENDER_FEMALE, (1980, 1, 1), 20.0, "CRITICAL_HIGH"),
        # The same 13.0 is low for an adult man (13.5 to 17.5) ...
        (patient_pb.ADMINISTRATIVE_GENDER_MALE, (1980, 1, 1), 13.0, "LOW"),
        (patient_pb.ADMINISTRATIVE_GENDER_MALE, (1980, 1, 1), 17.0, "NORMAL"),
        # ... and a child's range (11.0 to 16.0) holds whatever the sex.
        (patient_pb.ADMINISTRATIVE_GENDER_MALE, (2020, 1, 1), 11.5, "NORMAL"),
        (patient_pb.ADMINISTRATIVE_GENDER_FEMALE, (2020, 1, 1), 16.5, "HIGH"),
        # Sex unknown: the adult range for any sex (12.0 to 17.5).
        (patient_pb.ADMINISTRATIVE_GENDER_UNKNOWN, (1980, 1, 1), 17.0, "NORMAL"),
    ],
)
async def test_reference_ranges_follow_the_patients_sex_and_age(
    lab: Lab,
    patients: Patients,
    hospital: Hospital,
    gender: int,
    born: tuple[int, int, int],
    hemoglobin: float,
    want: str,
) -> None:
    work = await reported(lab, patients, hospital, gender=gender, birth_date=born)
    assert work.report is not None
    recorded = await lab.RecordObservations(
        pb.RecordObservationsRequest(
            parent=work.report.name, observations=[quantity(HEMOGLOBIN, hemoglobin, "g/dL")]
        ),
        metadata=hospital.tech.md,
    )
    hb = next(r for r in recorded.results if r.code.code == "718-7")
    assert (
        pb.ObservationInterpretation.Name(hb.interpretation) == f"OBSERVATION_INTERPRETATION_{want}"
    )


async def test_recording_the_same_results_again_changes_nothing(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    request = pb.RecordObservationsRequest(parent=work.report.name, observations=cbc_values())
    first = await lab.RecordObservations(request, metadata=hospital.tech.md)
    again = await lab.RecordObservations(request, metadata=hospital.tech.md)
    assert again == first


async def test_a_unit_other_than_the_catalogues_is_refused(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    fields = await invalid_in(
        DOMAIN,
        lab.RecordObservations(
            pb.RecordObservationsRequest(
                parent=work.report.name, observations=[quantity(HEMOGLOBIN, 130, "g/L")]
            ),
            metadata=hospital.tech.md,
        ),
    )
    assert fields == ["observations[0].value_quantity.unit"]


async def test_a_second_report_of_an_order_already_exists(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None and work.specimen is not None
    failure = await fails(
        lab.CreateDiagnosticReport(
            pb.CreateDiagnosticReportRequest(
                diagnostic_report=pb.DiagnosticReport(
                    service_request=work.order.name, specimens=[work.specimen.name]
                )
            ),
            metadata=hospital.tech.md,
        )
    )
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS


async def test_a_repeated_create_returns_the_first_report(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await collected(lab, hospital, await ordered(lab, patients, hospital))
    assert work.specimen is not None
    request = pb.CreateDiagnosticReportRequest(
        diagnostic_report=pb.DiagnosticReport(
            service_request=work.order.name, specimens=[work.specimen.name]
        ),
        request_id=request_id(),
    )
    first = await lab.CreateDiagnosticReport(request, metadata=hospital.tech.md)
    again = await lab.CreateDiagnosticReport(request, metadata=hospital.tech.md)
    assert again == first


async def test_a_revoked_order_refuses_new_specimens_and_reports(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await collected(lab, hospital, await ordered(lab, patients, hospital))
    assert work.specimen is not None
    revoked = orders_pb.ServiceRequest()
    revoked.CopyFrom(work.order)
    revoked.status = orders_pb.SERVICE_REQUEST_STATUS_REVOKED
    await deliver(lab, changed(revoked, 2))
    failure = await fails(
        lab.CreateDiagnosticReport(
            pb.CreateDiagnosticReportRequest(
                diagnostic_report=pb.DiagnosticReport(
                    service_request=work.order.name, specimens=[work.specimen.name]
                )
            ),
            metadata=hospital.tech.md,
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "ORDER_NOT_ACTIVE"


async def test_an_unknown_order_is_a_failed_precondition(lab: Lab, hospital: Hospital) -> None:
    failure = await fails(
        lab.CreateDiagnosticReport(
            pb.CreateDiagnosticReportRequest(
                diagnostic_report=pb.DiagnosticReport(
                    service_request=missing("serviceRequests"), specimens=[missing("specimens")]
                )
            ),
            metadata=hospital.tech.md,
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "ORDER_NOT_KNOWN"
