"""Demo schedules and a week of slots for `his up --demo`, through the public API.

The clinics are iam's demo departments and doctors (looked up by department code and username,
so iam's demo loads first). Every call carries a request id derived from what it makes, so
loading twice — the same day or a later one — creates nothing twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.duration_pb2 import Duration

from his.common.v1 import types_pb2
from his.iam import demo as iam_demo
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his_client import HisClients

# Loaded as this demo staff member (a registrar registers patients and books).
USER = "reg.amina"

TIME_ZONE = "Asia/Shanghai"
SERVICE_TYPES = "http://terminology.hl7.org/CodeSystem/service-type"


CARDIOLOGY = iam_demo.CARDIOLOGY  # department codes, resolved to names at load time
GENERAL_MEDICINE = iam_demo.GENERAL_MEDICINE
PEDIATRICS = iam_demo.PEDIATRICS
DR_CHEN = "dr.chen"  # cardiologist (username)
DR_SUN = "dr.sun"  # paediatrician

WEEKDAYS: tuple[int, ...] = (
    pb.DAY_OF_WEEK_MONDAY,
    pb.DAY_OF_WEEK_TUESDAY,
    pb.DAY_OF_WEEK_WEDNESDAY,
    pb.DAY_OF_WEEK_THURSDAY,
    pb.DAY_OF_WEEK_FRIDAY,
)


@dataclass(frozen=True)
class Clinic:
    """One demo schedule and the shape of its daily slots."""

    key: str
    # Department code and practitioner username in iam's demo data ("" = any practitioner).
    department: str
    practitioner: str
    service_code: str
    service_display: str
    days: tuple[int, ...]
    opens: tuple[int, int]
    closes: tuple[int, int]
    minutes: int
    capacity: int


CLINICS = (
    Clinic(
        "cardiology-chen", CARDIOLOGY, DR_CHEN, "17", "Cardiology", WEEKDAYS, (8, 0), (12, 0), 15, 1
    ),
    Clinic(
        "general-medicine",
        GENERAL_MEDICINE,
        "",
        "124",
        "General Practice",
        WEEKDAYS,
        (13, 30),
        (17, 0),
        20,
        3,
    ),
    Clinic(
        "pediatrics-sun",
        PEDIATRICS,
        DR_SUN,
        "353",
        "Paediatrics",
        (*WEEKDAYS, pb.DAY_OF_WEEK_SATURDAY),
        (8, 30),
        (11, 30),
        30,
        1,
    ),
)


def _date(day: dt.date) -> types_pb2.Date:
    return types_pb2.Date(year=day.year, month=day.month, day=day.day)


# Booked into Dr. Chen's first cardiology slots (by family name): Wang and Li, and the patients
# of the emr demo's visits, whom the cardiologist may then read (a care relationship: the patient
# service learns of the bookings from scheduling's events).
BOOKED = ("Wang", "Li", "Zhang", "Chen", "Liu")


async def load(his: HisClients) -> str:
    """Create the clinics' schedules, the next week of slots, and the demo bookings."""
    today = dt.datetime.now(ZoneInfo(TIME_ZONE)).date()
    horizon = types_pb2.Period()
    horizon.start_time.FromDatetime(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    created = 0
    first_slots: list[str] = []
    names = await iam_demo.directory(his)
    for clinic in CLINICS:
        schedule = await his.scheduling.CreateSchedule(
            pb.CreateScheduleRequest(
                schedule=pb.Schedule(
                    department=names.departments[clinic.department],
                    practitioner=names.staff[clinic.practitioner] if clinic.practitioner else "",
                    service_type=types_pb2.Coding(
                        system=SERVICE_TYPES,
                        code=clinic.service_code,
                        display=clinic.service_display,
                    ),
                    planning_horizon=horizon,
                ),
                request_id=f"demo-schedule-{clinic.key}",
            )
        )
        for offset in range(1, 8):
            day = today + dt.timedelta(days=offset)
            reply = await his.scheduling.GenerateSlots(
                pb.GenerateSlotsRequest(
                    parent=schedule.name,
                    start_date=_date(day),
                    end_date=_date(day),
                    days_of_week=clinic.days,  # type: ignore[arg-type]
                    daily_start_time=pb.TimeOfDay(hours=clinic.opens[0], minutes=clinic.opens[1]),
                    daily_end_time=pb.TimeOfDay(hours=clinic.closes[0], minutes=clinic.closes[1]),
                    slot_duration=Duration(seconds=clinic.minutes * 60),
                    capacity=clinic.capacity,
                    time_zone=TIME_ZONE,
                    request_id=f"demo-slots-{clinic.key}-{day.isoformat()}",
                )
            )
            created += len(reply.slots)
            wanted = len(BOOKED) - len(first_slots)
            if clinic.key == "cardiology-chen" and reply.slots and wanted > 0:
                first_slots.extend(slot.name for slot in reply.slots[:wanted])
    booked = await _book_demo_patients(his, first_slots, today)
    return f"3 clinic schedules, {created} slots over the next 7 days, {booked} bookings"


async def _book_demo_patients(his: HisClients, slots: list[str], today: dt.date) -> int:
    """Book the demo patients of BOOKED into the first cardiology slots."""
    booked = 0
    for family, slot in zip(BOOKED, slots, strict=False):
        found = await his.patient.ListPatients(patient_pb.ListPatientsRequest(name_prefix=family))
        if not found.patients:
            continue
        try:
            await his.scheduling.BookAppointment(
                pb.BookAppointmentRequest(
                    patient=found.patients[0].name,
                    slot=slot,
                    request_id=f"demo-booking-{family.lower()}-{today.isoformat()}",
                )
            )
            booked += 1
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise  # already booked at that time on an earlier load is fine; anything else not
    return booked
