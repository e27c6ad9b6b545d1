"""ListResearchPatients: de-identified patients with an active research consent."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from dataclasses import dataclass, field

import grpc
import pytest

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.patient.v1 import patient_service_pb2 as pb
from his.runtime.pseudonyms import Pseudonyms
from his.runtime.server import RunningService
from tests.conftest import service_config
from tests.identity import ISSUER, channel_as, metadata
from tests.patient.helpers import DOMAIN, Stub, create, grant_request, invalid, make_patient
from tests.support import delivered, fails

DAY = dt.timedelta(days=1)
ADMIN_ID = str(uuid.uuid4())
ADMIN = ISSUER.staff("ADMINISTRATOR", staff_id=ADMIN_ID)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pseudonyms() -> Pseudonyms:
    """The pseudonyms the session's patient service makes (same configuration, same key)."""
    return Pseudonyms.from_config(service_config("patient").research)


async def _research_consent(
    stub: Stub, name: str, *, start: dt.datetime | None = None, end: dt.datetime | None = None
) -> pb.Consent:
    return await stub.GrantConsent(
        grant_request(
            name,
            scope=pb.CONSENT_SCOPE_RESEARCH,
            purpose=pb.PURPOSE_OF_USE_RESEARCH,
            start=start,
            end=end,
        )
    )


async def _consented(stub: Stub, **kwargs: object) -> pb.Patient:
    patient = await create(stub, make_patient(**kwargs))  # type: ignore[arg-type]
    await _research_consent(stub, patient.name)
    return patient


@dataclass
class Export:
    """Everything ListResearchPatients returned, page by page."""

    patients: list[pb.ResearchPatient] = field(default_factory=list)
    key_ids: set[str] = field(default_factory=set)
    pages: int = 0
    wire: bytes = b""

    @property
    def pseudonyms(self) -> list[str]:
        """The pseudonyms in the order they came."""
        return [p.pseudonym for p in self.patients]


async def _export(stub: Stub, *, page_size: int = 500) -> Export:
    """Every research patient, following next_page_token to the end."""
    export = Export()
    page_token = ""
    while True:
        reply = await stub.ListResearchPatients(
            pb.ListResearchPatientsRequest(page_size=page_size, page_token=page_token),
            metadata=metadata(ADMIN),
        )
        export.pages += 1
        export.patients.extend(reply.research_patients)
        export.key_ids.add(reply.pseudonym_key_id)
        export.wire += reply.SerializeToString()
        page_token = reply.next_page_token
        if not page_token:
            return export


async def test_only_patients_with_a_research_consent_in_force_are_listed(patients: Stub) -> None:
    consented = await _consented(patients, birth_date=(1984, 3, 12))
    inactive = await _consented(patients, gender=pb.ADMINISTRATIVE_GENDER_MALE)
    await patients.DeactivatePatient(pb.DeactivatePatientRequest(name=inactive.name))
    revoked = await create(patients)
    consent = await _research_consent(patients, revoked.name)
    await patients.RevokeConsent(pb.RevokeConsentRequest(name=consent.name))
    treatment_only = await create(patients)
    await patients.GrantConsent(grant_request(treatment_only.name))
    future = await create(patients)
    await _research_consent(patients, future.name, start=_now() + DAY)
    expired = await create(patients)
    await _research_consent(patients, expired.name, start=_now() - 2 * DAY, end=_now() - DAY)
    survivor = await create(patients)
    merged = await _consented(patients)
    await patients.MergePatients(
        pb.MergePatientsRequest(name=merged.name, survivor=survivor.name, reason="same person")
    )

    exported = (await _export(patients)).patients

    pseudonyms = _pseudonyms()
    by_pseudonym = {p.pseudonym: p for p in exported}
    assert by_pseudonym[pseudonyms.patient(consented.name.split("/")[1])] == pb.ResearchPatient(
        pseudonym=pseudonyms.patient(consented.name.split("/")[1]),
        birth_year=1984,
        gender=pb.ADMINISTRATIVE_GENDER_FEMALE,
        state=pb.PATIENT_STATE_ACTIVE,
    )
    shown_inactive = by_pseudonym[pseudonyms.patient(inactive.name.split("/")[1])]
    assert shown_inactive.state == pb.PATIENT_STATE_INACTIVE
    assert shown_inactive.gender == pb.ADMINISTRATIVE_GENDER_MALE
    for left_out in (revoked, treatment_only, future, expired, survivor, merged):
        assert pseudonyms.patient(left_out.name.split("/")[1]) not in by_pseudonym
    assert all(p.state != pb.PATIENT_STATE_MERGED for p in exported)
    assert len(by_pseudonym) == len(exported), "each patient once, however many consents"


async def test_the_export_holds_no_name_identifier_phone_or_address(patients: Stub) -> None:
    patient = await create(
        patients,
        make_patient(
            family_name="Xuanwuresearch",
            given_names=["Qingyan"],
            address=pb.Address(lines=["12 Lotus Lane"], city="Kunmingresearch", country="CN"),
        ),
    )
    await _research_consent(patients, patient.name)
    await _research_consent(patients, patient.name)  # two consents: still one row

    export = await _export(patients)

    wire = export.wire
    patient_id = patient.name.split("/")[1]
    for secret in (
        "Xuanwuresearch",
        "Qingyan",
        patient.national_id.value,
        patient.phone,
        "Lotus",
        "Kunmingresearch",
        patient_id,
        patient.mrn,
    ):
        assert secret.encode() not in wire, secret
    assert set(pb.ResearchPatient.DESCRIPTOR.fields_by_name) == {
        "pseudonym",
        "birth_year",
        "gender",
        "state",
    }
    mine = [p for p in export.patients if p.pseudonym == _pseudonyms().patient(patient_id)]
    assert len(mine) == 1
    assert mine[0].birth_year == 1980


async def test_pseudonyms_are_stable_from_call_to_call_and_pages_cover_the_list(
    patients: Stub,
) -> None:
    for _ in range(3):
        await _consented(patients)

    first = await _export(patients)
    again = await _export(patients)
    paged = await _export(patients, page_size=2)

    assert again.pseudonyms == first.pseudonyms
    assert first.key_ids == again.key_ids == paged.key_ids == {_pseudonyms().key_id}
    assert paged.pseudonyms == first.pseudonyms
    assert paged.pages == math.ceil(len(first.patients) / 2)
    assert len(set(first.pseudonyms)) == len(first.pseudonyms)
    assert all(len(p) == 20 for p in first.pseudonyms)


async def test_every_exported_patient_is_audited_once(
    patients: Stub, audit_service: RunningService
) -> None:
    patient = await _consented(patients)
    pseudonym = _pseudonyms().patient(patient.name.split("/")[1])

    exported = await _export(patients)

    assert pseudonym in exported.pseudonyms
    await delivered()
    async with channel_as(audit_service.address, ISSUER.staff("AUDITOR")) as channel:
        reply = await audit_grpc.AuditServiceStub(channel).ListAuditEvents(
            audit_pb.ListAuditEventsRequest(
                patient=patient.name,
                agent_staff=f"staff/{ADMIN_ID}",
                action=audit_pb.AUDIT_EVENT_ACTION_EXECUTE,
            )
        )
    assert len(reply.audit_events) == 1
    event = reply.audit_events[0]
    assert event.operation == "his.patient.v1.PatientService/ListResearchPatients"
    assert event.entity.resource_type == "his.patient.v1.ResearchPatient"
    assert event.entity.resource_name == patient.name
    assert event.outcome == audit_pb.AUDIT_EVENT_OUTCOME_SUCCESS
    assert event.purpose_of_use == audit_pb.PURPOSE_OF_USE_RESEARCH


@pytest.mark.parametrize("role", ["REGISTRAR", "DOCTOR", "AUDITOR"])
async def test_only_administrators_may_list_research_patients(patients: Stub, role: str) -> None:
    failure = await fails(
        patients.ListResearchPatients(
            pb.ListResearchPatientsRequest(), metadata=metadata(ISSUER.staff(role))
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.domain == DOMAIN


async def test_a_negative_page_size_is_rejected(patients: Stub) -> None:
    fields = await invalid(
        patients.ListResearchPatients(
            pb.ListResearchPatientsRequest(page_size=-1), metadata=metadata(ADMIN)
        )
    )

    assert fields == ["page_size"]


async def test_a_page_token_of_another_list_is_rejected(patients: Stub) -> None:
    for _ in range(2):
        await create(patients)
    other = await patients.ListPatients(pb.ListPatientsRequest(page_size=1))
    assert other.next_page_token

    for token in (other.next_page_token, "not-a-token"):
        fields = await invalid(
            patients.ListResearchPatients(
                pb.ListResearchPatientsRequest(page_token=token), metadata=metadata(ADMIN)
            )
        )
        assert fields == ["page_token"]
