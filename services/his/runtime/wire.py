"""Database values as proto well-known and common types (timestamps, dates, codings)."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from his.common.v1 import types_pb2


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    """A proto Timestamp of an aware datetime (None stays unset)."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def date(value: dt.date) -> types_pb2.Date:
    """A his.common.v1.Date of a calendar date."""
    return types_pb2.Date(year=value.year, month=value.month, day=value.day)


def coding(system: str, code: str, display: str) -> types_pb2.Coding:
    """A his.common.v1.Coding."""
    return types_pb2.Coding(system=system, code=code, display=display)
