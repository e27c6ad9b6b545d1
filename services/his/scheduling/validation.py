"""Validation of scheduling requests, and the slot arithmetic of GenerateSlots."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from his.runtime.validation import (
    Violations,
    full_date,
    time_zone,
)
from his.scheduling.v1 import scheduling_service_pb2 as pb

MAX_SLOTS_PER_REQUEST = 2000
MAX_DAYS = 92
MAX_REASON = 500
# The longest arrive_period of ListAppointments: a month of the whole hospital's check-ins (what
# billing reconciles at once) is a bounded list; a longer period is a report, not a page.
MAX_ARRIVE_SPAN = dt.timedelta(days=31)


def _time_of_day(v: Violations, field: str, value: pb.TimeOfDay, present: bool) -> dt.time | None:
    if not present:
        v.add(field, "is required")
        return None
    if not (0 <= value.hours <= 23 and 0 <= value.minutes <= 59):
        v.add(field, "hours must be 0 to 23 and minutes 0 to 59")
        return None
    return dt.time(value.hours, value.minutes)


@dataclass(frozen=True)
class SlotPlan:
    """The slots one GenerateSlots request asks for, as UTC (start, end) pairs in time order."""

    slots: tuple[tuple[dt.datetime, dt.datetime], ...]
    capacity: int


def plan_slots(v: Violations, request: pb.GenerateSlotsRequest) -> SlotPlan | None:
    """Validate a GenerateSlots request and compute its slots (None when it is invalid)."""
    zone = time_zone(v, "time_zone", request.time_zone, required=True)
    first = full_date(v, "start_date", request.start_date, present=request.HasField("start_date"))
    last = full_date(v, "end_date", request.end_date, present=request.HasField("end_date"))
    if first and last:
        if last < first:
            v.add("end_date", "must not be before start_date")
        elif (last - first).days > MAX_DAYS:
            v.add("end_date", f"must be at most {MAX_DAYS} days after start_date")
    days: set[int] = set()
    if not request.days_of_week:
        v.add("days_of_week", "needs at least one day")
    for index, day in enumerate(request.days_of_week):
        number = v.enum(f"days_of_week[{index}]", day, pb.DayOfWeek.DESCRIPTOR)
        if number in days:
            v.add(f"days_of_week[{index}]", "is a duplicate")
        elif number:
            days.add(number)
    opens = _time_of_day(
        v, "daily_start_time", request.daily_start_time, request.HasField("daily_start_time")
    )
    closes = _time_of_day(
        v, "daily_end_time", request.daily_end_time, request.HasField("daily_end_time")
    )
    if opens and closes and closes <= opens:
        v.add("daily_end_time", "must be after daily_start_time")
    length = None
    if not request.HasField("slot_duration"):
        v.add("slot_duration", "is required")
    else:
        duration = request.slot_duration
        if duration.nanos or duration.seconds % 60 or not 5 * 60 <= duration.seconds <= 8 * 3600:
            v.add("slot_duration", "must be whole minutes from 5 minutes to 8 hours")
        else:
            length = dt.timedelta(seconds=duration.seconds)
    if not 1 <= request.capacity <= 200:
        v.add("capacity", "must be from 1 to 200")
    if v.items or not (zone and first and last and opens and closes and length):
        return None
    slots: list[tuple[dt.datetime, dt.datetime]] = []
    current: dt.date = first
    while current <= last:
        if current.isoweekday() in days:
            slots.extend(_day_slots(current, opens, closes, length, zone))
            if len(slots) > MAX_SLOTS_PER_REQUEST:
                v.add(
                    "end_date", f"the request would create more than {MAX_SLOTS_PER_REQUEST} slots"
                )
                return None
        current += dt.timedelta(days=1)
    return SlotPlan(tuple(slots), request.capacity)


def _day_slots(
    day: dt.date, opens: dt.time, closes: dt.time, length: dt.timedelta, zone: ZoneInfo
) -> list[tuple[dt.datetime, dt.datetime]]:
    """Back-to-back slots of one local day; a start that does not exist (DST gap) is skipped."""
    result: list[tuple[dt.datetime, dt.datetime]] = []
    wall = dt.datetime.combine(day, opens)
    day_end = dt.datetime.combine(day, closes)
    while wall + length <= day_end:
        local = wall.replace(tzinfo=zone)
        start = local.astimezone(dt.UTC)
        # A wall time in a spring-forward gap does not survive the round trip. A slot spanning the
        # gap ends an hour later on the wall clock, so the next start may fall inside it: skipped.
        exists = start.astimezone(zone).replace(tzinfo=None) == wall
        if exists and (not result or result[-1][1] <= start):
            result.append((start, start + length))
        wall += length
    return result
