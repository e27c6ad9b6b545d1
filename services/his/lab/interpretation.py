"""Reference ranges and interpretations: which catalogue range applies to a patient, and how a
value compares with it. Pure functions; the catalogue rows come from store.ranges_of."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from his.lab.v1 import lab_service_pb2 as pb


@dataclass(frozen=True)
class Limits:
    """One catalogue range: normal limits and critical limits (each optional)."""

    sex: str
    age_from_days: int
    age_to_days: int | None
    low: float | None
    high: float | None
    critical_low: float | None
    critical_high: float | None


def age_in_days(birth_date: dt.date | None, on: dt.date) -> int | None:
    """The patient's age on a day, in days; None when the birth date is unknown."""
    return None if birth_date is None else (on - birth_date).days


def choose(ranges: Sequence[Limits], sex: str, age_days: int | None) -> Limits | None:
    """The range for a patient: one of their sex before one for any sex, then the narrowest age
    band containing their age. With no known age only a range for every age applies."""
    fitting = [
        r
        for r in ranges
        if r.sex in (sex, "any")
        and (
            (r.age_from_days == 0 and r.age_to_days is None)
            if age_days is None
            else r.age_from_days <= age_days and (r.age_to_days is None or age_days < r.age_to_days)
        )
    ]
    if not fitting:
        return None

    def rank(r: Limits) -> tuple[int, float]:
        span = float("inf") if r.age_to_days is None else r.age_to_days - r.age_from_days
        return (0 if r.sex == sex else 1, span)

    return min(fitting, key=rank)


def interpret(value: float, limits: Limits | None) -> int:
    """The interpretation of a value: at or beyond a critical limit is critical; below the
    normal low LOW, above the normal high HIGH; inside (limits included) NORMAL; UNSPECIFIED
    when there is no range at all."""
    if limits is None or (limits.low is None and limits.high is None):
        return pb.OBSERVATION_INTERPRETATION_UNSPECIFIED
    if limits.critical_low is not None and value <= limits.critical_low:
        return pb.OBSERVATION_INTERPRETATION_CRITICAL_LOW
    if limits.critical_high is not None and value >= limits.critical_high:
        return pb.OBSERVATION_INTERPRETATION_CRITICAL_HIGH
    if limits.low is not None and value < limits.low:
        return pb.OBSERVATION_INTERPRETATION_LOW
    if limits.high is not None and value > limits.high:
        return pb.OBSERVATION_INTERPRETATION_HIGH
    return pb.OBSERVATION_INTERPRETATION_NORMAL


CRITICAL = frozenset(
    {
        pb.OBSERVATION_INTERPRETATION_CRITICAL_LOW,
        pb.OBSERVATION_INTERPRETATION_CRITICAL_HIGH,
        pb.OBSERVATION_INTERPRETATION_CRITICAL_ABNORMAL,
    }
)
