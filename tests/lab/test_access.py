"""Who sees a laboratory's reports: its technicians, the ordering doctor, the clinicians of the
ordering team; nobody else, and lists leave the others out. Every read is audited."""

from __future__ import annotations

import grpc

from his.lab.v1 import lab_service_pb2 as pb
from tests.lab.helpers import (
    DOMAIN,
    HEMOGLOBIN,
    Hospital,
    Lab,
    Patients,
    changed,
    deliver,
    missing,
    order,
    quantity,
    reported,
    specimen,
)
from tests.support import fails, invalid_in


async def test_the_laboratory_and_the_ordering_team_read_a_report(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    for who in (hospital.tech, hospital.doctor, hospital.colleague, hospital.nurse):
        got = await lab.GetDiagnosticReport(
            pb.GetDiagnosticReportRequest(name=work.report.name), metadata=who.md
        )
        assert got == work.report, who
        listed = await lab.ListDiagnosticReports(
            pb.ListDiagnosticReportsRequest(patient=work.patient), metadata=who.md
        )
        assert list(listed.diagnostic_reports) == [work.report], who


async def test_strangers_read_no_report_and_lists_leave_it_out(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    for who in (hospital.stranger, hospital.other_tech):
        failure = await fails(
            lab.GetDiagnosticReport(
                pb.GetDiagnosticReportRequest(name=work.report.name), metadata=who.md
            )
        )
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "DEPARTMENT_MISMATCH",
        ), who
        listed = await lab.ListDiagnosticReports(
            pb.ListDiagnosticReportsRequest(patient=work.patient), metadata=who.md
        )
        assert not listed.diagnostic_reports
        failure = await fails(
            lab.ListDiagnosticReportVersions(
                pb.ListDiagnosticReportVersionsRequest(name=work.report.name), metadata=who.md
            )
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED


async def test_only_the_laboratorys_technicians_change_a_report(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    name = work.report.name
    for who, reason in (
        (hospital.other_tech, "DEPARTMENT_MISMATCH"),
        (hospital.doctor, "ROLE_NOT_PERMITTED"),
    ):
        for call in (
            lab.RecordObservations(
                pb.RecordObservationsRequest(
                    parent=name, observations=[quantity(HEMOGLOBIN, 13, "g/dL")]
                ),
                metadata=who.md,
            ),
            lab.FinalizeReport(pb.FinalizeReportRequest(name=name), metadata=who.md),
        ):
            failure = await fails(call)
            assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, reason)


async def test_report_requests_name_the_bad_field(lab: Lab, hospital: Hospital) -> None:
    md = hospital.tech.md
    assert await invalid_in(
        DOMAIN,
        lab.CreateDiagnosticReport(
            pb.CreateDiagnosticReportRequest(
                diagnostic_report=pb.DiagnosticReport(
                    service_request="x",
                    specimens=[],
                    results=[pb.Observation(code=pb.Observation().code.__class__(code="bad"))],
                )
            ),
            metadata=md,
        ),
    ) == [
        "diagnostic_report.service_request",
        "diagnostic_report.specimens",
        "diagnostic_report.results[0].code.system",
        "diagnostic_report.results[0].code.code",
    ]
    assert await invalid_in(
        DOMAIN, lab.CreateDiagnosticReport(pb.CreateDiagnosticReportRequest(), metadata=md)
    ) == ["diagnostic_report"]
    assert await invalid_in(
        DOMAIN,
        lab.GetDiagnosticReport(pb.GetDiagnosticReportRequest(name="reports/1"), metadata=md),
    ) == ["name"]
    assert await invalid_in(
        DOMAIN,
        lab.ListDiagnosticReports(
            pb.ListDiagnosticReportsRequest(page_size=-5, patient="p/1", statuses=[17]),  # type: ignore[list-item]
            metadata=md,
        ),
    ) == ["page_size", "statuses[0]", "patient"]
    assert await invalid_in(
        DOMAIN,
        lab.ListDiagnosticReportVersions(
            pb.ListDiagnosticReportVersionsRequest(name=""), metadata=md
        ),
    ) == ["name"]
    bad_result = pb.Observation(status=pb.OBSERVATION_STATUS_FINAL)
    bad_result.code.system = "http://loinc.org"
    bad_result.code.code = "718-7"
    bad_result.value_quantity.value = float("nan")
    assert await invalid_in(
        DOMAIN,
        lab.RecordObservations(
            pb.RecordObservationsRequest(
                parent=missing("diagnosticReports"),
                observations=[
                    bad_result,
                    pb.Observation(code=bad_result.code, status=pb.OBSERVATION_STATUS_CANCELLED),
                ],
            ),
            metadata=md,
        ),
    ) == [
        "observations[0].status",
        "observations[0].value_quantity.value",
        "observations[1].code",
        "observations[1].note",
    ]
    assert await invalid_in(
        DOMAIN,
        lab.FinalizeReport(pb.FinalizeReportRequest(name="x", conclusion="c" * 2001), metadata=md),
    ) == ["name", "conclusion"]
    assert await invalid_in(
        DOMAIN,
        lab.AmendReport(pb.AmendReportRequest(name=missing("diagnosticReports")), metadata=md),
    ) == ["reason", "observations"]


async def test_amending_before_release_and_unknown_codes_are_refused(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    amend = pb.AmendReportRequest(name=work.report.name, reason="x", conclusion="y")
    failure = await fails(lab.AmendReport(amend, metadata=hospital.tech.md))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "REPORT_NOT_RELEASED",
    )


async def test_reports_the_caller_may_not_see_never_end_a_list_early(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    # Three newer reports of the same patient in the other laboratory: hidden from this one.
    other = hospital.other_tech
    for _ in range(3):
        request = order(work.patient, hospital.other_laboratory, hospital.doctor.name)
        await deliver(lab, changed(request, 1))
        taken = await lab.CreateSpecimen(
            pb.CreateSpecimenRequest(specimen=specimen([request.name], other.name)),
            metadata=other.md,
        )
        await lab.CreateDiagnosticReport(
            pb.CreateDiagnosticReportRequest(
                diagnostic_report=pb.DiagnosticReport(
                    service_request=request.name, specimens=[taken.name]
                )
            ),
            metadata=other.md,
        )

    listed = await lab.ListDiagnosticReports(
        pb.ListDiagnosticReportsRequest(patient=work.patient, page_size=1),
        metadata=hospital.tech.md,
    )

    assert [r.name for r in listed.diagnostic_reports] == [work.report.name]
    assert not listed.next_page_token
