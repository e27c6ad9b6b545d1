"""Database rows of the scheduling schema as proto messages."""

from __future__ import annotations

import uuid
from typing import Any

from his.runtime import wire
from his.runtime.enums import EnumText
from his.scheduling.v1 import scheduling_service_pb2 as pb

APPOINTMENT_STATUS = EnumText(pb.AppointmentStatus.DESCRIPTOR)


def department_name(department_id: uuid.UUID) -> str:
    """`departments/{id}`."""
    return f"departments/{department_id}"


def practitioner_name(staff_id: uuid.UUID | None) -> str:
    """`staff/{id}`, or '' for a department-wide schedule."""
    return f"staff/{staff_id}" if staff_id else ""


def schedule_to_proto(row: Any) -> pb.Schedule:
    """A `scheduling.schedules` row as a Schedule."""
    schedule = pb.Schedule(
        name=f"schedules/{row.id}",
        department=department_name(row.department_id),
        practitioner=practitioner_name(row.practitioner_id),
        service_type=wire.coding(
            row.service_type_system, row.service_type_code, row.service_type_display
        ),
        create_time=wire.timestamp(row.create_time),
    )
    schedule.planning_horizon.start_time.FromDatetime(row.horizon_start)
    if row.horizon_end is not None:
        schedule.planning_horizon.end_time.FromDatetime(row.horizon_end)
    return schedule


def slot_status(row: Any) -> pb.SlotStatus.ValueType:
    """FREE / BUSY follow from the bookings; a block wins over both."""
    if row.block_reason is not None:
        return pb.SLOT_STATUS_BUSY_UNAVAILABLE
    return pb.SLOT_STATUS_BUSY if row.booked_count >= row.capacity else pb.SLOT_STATUS_FREE


def slot_to_proto(row: Any) -> pb.Slot:
    """A `scheduling.slots` row as a Slot."""
    return pb.Slot(
        name=f"slots/{row.id}",
        schedule=f"schedules/{row.schedule_id}",
        department=department_name(row.department_id),
        practitioner=practitioner_name(row.practitioner_id),
        service_type=wire.coding(
            row.service_type_system, row.service_type_code, row.service_type_display
        ),
        start_time=wire.timestamp(row.start_time),
        end_time=wire.timestamp(row.end_time),
        capacity=row.capacity,
        booked_count=row.booked_count,
        status=slot_status(row),
        block_reason=row.block_reason or "",
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
    )


def appointment_to_proto(row: Any) -> pb.Appointment:
    """A `scheduling.appointments` row as an Appointment."""
    return pb.Appointment(
        name=f"appointments/{row.id}",
        patient=f"patients/{row.patient_id}",
        slot=f"slots/{row.slot_id}",
        practitioner=practitioner_name(row.practitioner_id),
        department=department_name(row.department_id),
        service_type=wire.coding(
            row.service_type_system, row.service_type_code, row.service_type_display
        ),
        status=APPOINTMENT_STATUS.number(row.status),  # type: ignore[arg-type]
        start_time=wire.timestamp(row.start_time),
        end_time=wire.timestamp(row.end_time),
        arrive_time=wire.timestamp(row.arrive_time),
        cancel_time=wire.timestamp(row.cancel_time),
        cancel_reason=row.cancel_reason or "",
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
    )
