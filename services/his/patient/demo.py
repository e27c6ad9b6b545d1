"""A small, realistic demo data set for `his up --demo`, loaded through the public API.

Every call carries a fixed request id, so loading twice changes nothing. All people are fictional.
"""

from __future__ import annotations

from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as pb
from his_client import HisClients

# Loaded as this demo staff member (a registrar registers patients and books).
USER = "reg.amina"

RESIDENT_ID = "urn:oid:2.16.156.10011.1.1"  # PRC resident identity card
G = pb.AdministrativeGender

# (family, given, gender, birth date, national id, phone, city)
PEOPLE: tuple[tuple[str, str, int, tuple[int, int, int], str, str, str], ...] = (
    (
        "Wang",
        "Fang",
        G.ADMINISTRATIVE_GENDER_FEMALE,
        (1984, 3, 12),
        "110101198403120023",
        "+8613800000001",
        "Beijing",
    ),
    (
        "Li",
        "Wei",
        G.ADMINISTRATIVE_GENDER_MALE,
        (1975, 11, 2),
        "310104197511020036",
        "+8613800000002",
        "Shanghai",
    ),
    (
        "Zhang",
        "Min",
        G.ADMINISTRATIVE_GENDER_FEMALE,
        (1992, 7, 30),
        "440106199207300041",
        "+8613800000003",
        "Guangzhou",
    ),
    (
        "Liu",
        "Yang",
        G.ADMINISTRATIVE_GENDER_MALE,
        (2016, 1, 18),
        "510107201601180057",
        "+8613800000004",
        "Chengdu",
    ),
    (
        "Chen",
        "Jing",
        G.ADMINISTRATIVE_GENDER_FEMALE,
        (1958, 9, 5),
        "330106195809050068",
        "+8613800000005",
        "Hangzhou",
    ),
    (
        "Yang",
        "Lei",
        G.ADMINISTRATIVE_GENDER_MALE,
        (1988, 5, 21),
        "420102198805210079",
        "+8613800000006",
        "Wuhan",
    ),
    (
        "Huang",
        "Xiu Ying",
        G.ADMINISTRATIVE_GENDER_FEMALE,
        (1941, 12, 24),
        "320102194112240085",
        "+8613800000007",
        "Nanjing",
    ),
    (
        "Zhao",
        "Qiang",
        G.ADMINISTRATIVE_GENDER_MALE,
        (2001, 4, 9),
        "610103200104090091",
        "+8613800000008",
        "Xi'an",
    ),
    (
        "Müller",
        "Anna",
        G.ADMINISTRATIVE_GENDER_FEMALE,
        (1979, 6, 14),
        "",
        "+4915100000009",
        "Berlin",
    ),
    ("O'Brien", "Sean", G.ADMINISTRATIVE_GENDER_MALE, (1966, 2, 28), "", "+35380000010", "Dublin"),
)

# The demo patient who signs in on the patient app (the first one, booked by the scheduling demo,
# so "my appointments" is not empty): StartPatientSignIn with this number, then the code the local
# sender wrote (`his up --demo` prints the number and where the code goes, never the name).
SIGN_IN_PHONE = PEOPLE[0][5]


# The first this many people also consent to the use of their data for research
# (`his export research` exports only them).
RESEARCH_CONSENTS = 7


async def load(his: HisClients) -> str:
    """Register the demo patients, their treatment consents and, for most of them, a research
    consent; returns a one-line summary."""
    for index, (family, given, gender, born, national, phone, city) in enumerate(PEOPLE, 1):
        patient = pb.Patient(
            family_name=family,
            given_names=given.split(),
            gender=gender,  # type: ignore[arg-type]
            birth_date=types_pb2.Date(year=born[0], month=born[1], day=born[2]),
            phone=phone,
            address=pb.Address(city=city, country="CN" if national else "DE"),
        )
        if national:
            patient.national_id.CopyFrom(types_pb2.Identifier(system=RESIDENT_ID, value=national))
        created = await his.patient.CreatePatient(
            pb.CreatePatientRequest(patient=patient, request_id=f"demo-patient-{index:02d}")
        )
        await his.patient.GrantConsent(
            pb.GrantConsentRequest(
                parent=created.name,
                consent=pb.Consent(
                    scope=pb.CONSENT_SCOPE_TREATMENT,
                    purpose=pb.PURPOSE_OF_USE_TREATMENT,
                    note="signed admission form",
                ),
                request_id=f"demo-consent-{index:02d}",
            )
        )
        if index <= RESEARCH_CONSENTS:
            await his.patient.GrantConsent(
                pb.GrantConsentRequest(
                    parent=created.name,
                    consent=pb.Consent(
                        scope=pb.CONSENT_SCOPE_RESEARCH,
                        purpose=pb.PURPOSE_OF_USE_RESEARCH,
                        note="signed research consent form R-1",
                    ),
                    request_id=f"demo-research-consent-{index:02d}",
                )
            )
    return (
        f"{len(PEOPLE)} patients with treatment consent, "
        f"{min(RESEARCH_CONSENTS, len(PEOPLE))} of them with research consent"
    )
