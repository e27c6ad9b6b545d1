"""Lab technicians read a patient's label view only: name, MRN, sex and birth date, not the
address, phone, national identifier or the record's bookkeeping."""

from __future__ import annotations

import grpc

from his.patient.v1 import patient_service_pb2 as pb
from tests.identity import ISSUER, metadata
from tests.lab.helpers import Patients
from tests.patient.helpers import make_patient
from tests.support import fails

LAB_TECHNICIAN = metadata(ISSUER.staff("LAB_TECHNICIAN"))
DOCTOR_AND_TECHNICIAN = metadata(ISSUER.staff("DOCTOR", "LAB_TECHNICIAN"))


async def _patient(patients: Patients) -> pb.Patient:
    address = pb.Address(lines=["1 Lab Street"], city="Springfield", country="US")
    made: pb.Patient = await patients.CreatePatient(
        pb.CreatePatientRequest(patient=make_patient(address=address))
    )
    return made


async def test_a_lab_technician_gets_the_label_view(patients: Patients) -> None:
    made = await _patient(patients)
    got: pb.Patient = await patients.GetPatient(
        pb.GetPatientRequest(name=made.name), metadata=LAB_TECHNICIAN
    )
    assert got.name == made.name and got.mrn == made.mrn
    assert (got.family_name, list(got.given_names)) == (made.family_name, list(made.given_names))
    assert (got.gender, got.birth_date) == (made.gender, made.birth_date)
    assert not got.HasField("address") and not got.HasField("national_id")
    assert not got.phone and not got.etag and not got.HasField("create_time")
    listed = await patients.ListPatients(
        pb.ListPatientsRequest(name_prefix=made.family_name), metadata=LAB_TECHNICIAN
    )
    assert list(listed.patients) == [got]


async def test_a_technician_who_is_also_a_doctor_sees_the_whole_record(patients: Patients) -> None:
    made = await _patient(patients)
    got = await patients.GetPatient(
        pb.GetPatientRequest(name=made.name), metadata=DOCTOR_AND_TECHNICIAN
    )
    assert got == made


async def test_the_label_view_is_not_searched_by_phone_or_national_id(patients: Patients) -> None:
    made = await _patient(patients)
    for request in (
        pb.ListPatientsRequest(phone=made.phone),
        pb.ListPatientsRequest(national_id=made.national_id),
    ):
        failure = await fails(patients.ListPatients(request, metadata=LAB_TECHNICIAN))
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "LABEL_VIEW_ONLY",
        )
