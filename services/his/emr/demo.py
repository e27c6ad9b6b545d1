"""Demo encounters for `his up --demo`, through the public API: visits to Dr. Chen's cardiology
clinic with signed notes (one amended) and ICD-10 diagnoses, and one visit still in progress.

Loaded as the cardiologist (`USER`), after iam's, patient's and scheduling's demo data. Every
create carries a request id derived from what it makes, and start, finish and sign repeat as
no-ops, so loading twice creates nothing twice. All people are fictional.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as pb
from his.iam import demo as iam_demo
from his.patient.v1 import patient_service_pb2 as patient_pb
from his_client import HisClients

# Loaded as this demo staff member: the cardiologist who attends the visits.
USER = "dr.chen"
# How often a visit's patient is looked for (0.2 s apart) before the visit is left out.
RELATION_WAIT_TRIES = 50

LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
PROGRESS_NOTE = types_pb2.Coding(system=LOINC, code="11506-3", display="Progress note")


@dataclass(frozen=True)
class Visit:
    """One demo visit: whose, what was written, what was found, and whether it is over."""

    family: str
    note: str
    diagnoses: tuple[tuple[str, str, int], ...]  # (ICD-10 code, display, rank)
    finished: bool = True
    amendment: str = ""


VISITS = (
    Visit(
        "Zhang",
        "Palpitations for two weeks, worse at night. BP 148/92, pulse 96 irregular. "
        "ECG: atrial fibrillation. Plan: Holter, echocardiogram, review in one week.",
        (("I48.9", "Atrial fibrillation, unspecified", 1), ("I10", "Essential hypertension", 2)),
        amendment="Palpitations for two weeks, worse at night. BP 148/92, pulse 96 irregular. "
        "ECG: atrial fibrillation. Started bisoprolol 2.5 mg daily. Plan: Holter, "
        "echocardiogram, review in one week.",
    ),
    Visit(
        "Chen",
        "Follow-up of hypertension. Home readings 130-135/85. Tolerating amlodipine. "
        "Lipids raised. Plan: continue, add atorvastatin 20 mg, review in three months.",
        (("I10", "Essential hypertension", 1), ("E78.5", "Hyperlipidaemia, unspecified", 2)),
    ),
    Visit(
        "Liu",
        "Exertional chest tightness for a month. Resting ECG normal. Plan: exercise test.",
        (("R07.4", "Chest pain, unspecified", 1),),
        finished=False,
    ),
)


async def _related(his: HisClients, family: str) -> list[patient_pb.Patient]:
    """The demo patients of `family` the cardiologist may read: those booked into the clinic by
    the scheduling demo, once the patient service has heard of the booking (the relay's delay,
    a moment; a few seconds at most are waited for)."""
    for _ in range(RELATION_WAIT_TRIES):
        found = await his.patient.ListPatients(patient_pb.ListPatientsRequest(name_prefix=family))
        patients = [p for p in found.patients if p.family_name == family]
        if patients:
            return patients
        await asyncio.sleep(0.2)
    return []


async def load(his: HisClients) -> str:
    """Open, document and (mostly) finish the demo visits; what was made, in one line."""
    names = await iam_demo.directory(his)
    cardiology = names.departments[iam_demo.CARDIOLOGY]
    chen = names.staff[USER]
    encounters = notes = diagnoses = 0
    for visit in VISITS:
        patients = await _related(his, visit.family)
        if not patients:
            continue
        key = f"demo-emr-{visit.family.lower()}"
        encounter = await his.emr.CreateEncounter(
            pb.CreateEncounterRequest(
                encounter=pb.Encounter(
                    patient=patients[0].name,
                    encounter_class=pb.ENCOUNTER_CLASS_AMBULATORY,
                    status=pb.ENCOUNTER_STATUS_ARRIVED,
                    department=cardiology,
                    attending_practitioner=chen,
                ),
                request_id=f"{key}-encounter",
            )
        )
        encounters += 1
        if encounter.status in (pb.ENCOUNTER_STATUS_PLANNED, pb.ENCOUNTER_STATUS_ARRIVED):
            encounter = await his.emr.StartEncounter(pb.StartEncounterRequest(name=encounter.name))
        note = await his.emr.CreateNote(
            pb.CreateNoteRequest(
                parent=encounter.name,
                note=pb.ClinicalNote(note_type=PROGRESS_NOTE, text=visit.note),
                request_id=f"{key}-note",
            )
        )
        note = await his.emr.SignNote(pb.SignNoteRequest(name=note.name))
        notes += 1
        if visit.amendment:
            await his.emr.AmendNote(
                pb.AmendNoteRequest(
                    name=note.name,
                    text=visit.amendment,
                    reason="medication started at the visit was left out",
                    request_id=f"{key}-amendment",
                )
            )
        for code, display, rank in visit.diagnoses:
            await his.emr.AddDiagnosis(
                pb.AddDiagnosisRequest(
                    parent=encounter.name,
                    diagnosis=pb.Diagnosis(
                        code=types_pb2.Coding(system=ICD10, code=code, display=display),
                        clinical_status=pb.CONDITION_CLINICAL_STATUS_ACTIVE,
                        verification_status=pb.CONDITION_VERIFICATION_STATUS_CONFIRMED,
                        rank=rank,
                    ),
                    request_id=f"{key}-diagnosis-{code}",
                )
            )
            diagnoses += 1
        if visit.finished and encounter.status != pb.ENCOUNTER_STATUS_FINISHED:
            await his.emr.FinishEncounter(pb.FinishEncounterRequest(name=encounter.name))
    return (
        f"{encounters} encounters with {notes} signed notes (1 amended) and {diagnoses} diagnoses"
    )
