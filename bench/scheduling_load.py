"""Load benchmark of registration (booking), the hospital's morning-rush path.

Real `his serve patient` and `his serve scheduling` processes on a private PostgreSQL. Measures:
booking distinct slots at a fixed concurrency (each booking asks the patient service first), free-
slot search, and the rush itself — many patients racing for the same few places, where every call
must end in one booking per place and a clean refusal for everyone else. Each is measured
alternating with the echo server (bench/echo.py) and also printed as a ratio to it. Run:
`make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
import uuid

from google.protobuf.duration_pb2 import Duration

from bench import harness
from bench.harness import (
    HEADER,
    Hospital,
    address,
    channel,
    compare,
    cpu_line,
    cpu_seconds,
    drive,
    echo_call,
    services,
    staff_token,
)
from bench.patient_load import patient
from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as ppb
from his.patient.v1 import patient_service_pb2_grpc as ppb_grpc
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his.scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc


async def _schedule(
    stub: pb_grpc.SchedulingServiceAsyncStub, capacity: int, days: int, *, first_day: int = 1
) -> list[str]:
    horizon = types_pb2.Period()
    horizon.start_time.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    schedule = await stub.CreateSchedule(
        pb.CreateScheduleRequest(
            schedule=pb.Schedule(
                department=f"departments/{uuid.uuid4()}",
                practitioner=f"staff/{uuid.uuid4()}",
                service_type=types_pb2.Coding(system="urn:bench", code="consult"),
                planning_horizon=horizon,
            )
        )
    )
    names: list[str] = []
    # One day per request: a generation is capped at 2000 slots (a day here has 287).
    for offset in range(first_day, first_day + days):
        day = dt.date.today() + dt.timedelta(days=offset)
        reply = await stub.GenerateSlots(
            pb.GenerateSlotsRequest(
                parent=schedule.name,
                start_date=types_pb2.Date(year=day.year, month=day.month, day=day.day),
                end_date=types_pb2.Date(year=day.year, month=day.month, day=day.day),
                days_of_week=[pb.DayOfWeek.Value(d) for d in pb.DayOfWeek.keys()[1:]],
                daily_start_time=pb.TimeOfDay(hours=0),
                daily_end_time=pb.TimeOfDay(hours=23, minutes=55),
                slot_duration=Duration(seconds=300),
                capacity=capacity,
                time_zone="UTC",
            ),
            timeout=60,
        )
        names += [slot.name for slot in reply.slots]
    return names


async def _bench(
    hospital: Hospital, bookings: int, concurrency: int, rush: int, rounds: int
) -> None:
    token = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    async with (
        channel(address("patient"), token) as patient_channel,
        channel(address("scheduling"), token) as scheduling_channel,
        channel(hospital.echo, token) as echo_channel,
    ):
        patients = ppb_grpc.PatientServiceStub(patient_channel)
        stub = pb_grpc.SchedulingServiceStub(scheduling_channel)
        names: list[str] = []

        async def register(i: int) -> None:
            created = await patients.CreatePatient(
                ppb.CreatePatientRequest(patient=patient(i)), timeout=10
            )
            names.append(created.name)

        print(HEADER)
        # Setup, not a measurement (patient_load measures registration).
        await drive("CreatePatient (setup)", max(bookings, rush), concurrency, register)
        slots = await _schedule(stub, capacity=1, days=(bookings // 287) + 1)
        book = pb.BookAppointmentRequest(patient=names[0], slot=slots[0])
        await compare(
            {
                "BookAppointment": lambda i: stub.BookAppointment(
                    pb.BookAppointmentRequest(patient=names[i], slot=slots[i]), timeout=10
                )
            },
            bookings // rounds,
            concurrency,
            echo_call(echo_channel, book),
            rounds=rounds,
        )
        # CPU per booking of every process (client included): steadier than calls/s on a
        # shared machine. New slots, on days after the compared run's (a patient's second booking).
        days = (bookings // 287) + 1
        more = await _schedule(stub, capacity=1, days=days, first_day=days + 1)
        before, client_before = cpu_seconds(hospital), time.process_time()
        measured = await drive(
            "BookAppointment (CPU)",
            bookings // rounds,
            concurrency,
            lambda i: stub.BookAppointment(
                pb.BookAppointmentRequest(patient=names[i], slot=more[i]), timeout=10
            ),
        )
        after = cpu_seconds(hospital)
        used = {name: after[name] - before.get(name, 0.0) for name in after}
        used["client"] = time.process_time() - client_before
        print(cpu_line("BookAppointment", {k: v / measured.calls * 1e6 for k, v in used.items()}))
        free = pb.ListSlotsRequest(only_free=True, page_size=20)
        await compare(
            {"ListSlots/free": lambda i: stub.ListSlots(free, timeout=10)},
            bookings // rounds,
            concurrency,
            echo_call(echo_channel, free),
            rounds=rounds,
        )
        rush_slots = await _schedule(stub, capacity=3, days=1)
        rushed = await compare(
            {
                "Book/rush 3 places": lambda i: stub.BookAppointment(
                    pb.BookAppointmentRequest(patient=names[i], slot=rush_slots[0]), timeout=30
                )
            },
            rush,
            rush,
            echo_call(echo_channel, book),
            rounds=1,
        )
        settled = rushed["Book/rush 3 places"][0].run.elapsed_s
        slot = await stub.GetSlot(pb.GetSlotRequest(name=rush_slots[0]))
        print(
            f"rush: {rush} patients for 3 places settled in {settled:.2f} s; "
            f"slot booked_count={slot.booked_count}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bookings", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rush", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="echo/service alternations per rpc")
    parser.add_argument(
        "--port-offset",
        type=int,
        default=harness.PORT_OFFSET,
        help="ports of the services and of the echo server above the local table (as "
        "HIS_BENCH_PORT_OFFSET), so two benchmarks can run side by side",
    )
    args = parser.parse_args()
    harness.PORT_OFFSET = args.port_offset
    with services("patient", "scheduling") as hospital:
        asyncio.run(_bench(hospital, args.bookings, args.concurrency, args.rush, args.rounds))


if __name__ == "__main__":
    main()
