"""Request validation shared by all servicers: collect every bad field, then fail once.

Each check records a FieldViolation with the field's path as the client wrote it
(`patient.birth_date.month`), so INVALID_ARGUMENT always names what to fix.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from his.base.errors import FieldViolation, InvalidArgument
from his.common.v1.types_pb2 import Period

# The range of instants and dates any service accepts: wider would overflow date arithmetic.
EARLIEST_DATE = dt.date(1900, 1, 1)
LATEST_DATE = dt.date(9000, 1, 1)
_EARLIEST = dt.datetime.combine(EARLIEST_DATE, dt.time(), tzinfo=dt.UTC)
_LATEST = dt.datetime.combine(LATEST_DATE, dt.time(), tzinfo=dt.UTC)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_REQUEST_ID = 64


class Violations:
    """Accumulates field violations of one request."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        """Record one bad field."""
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        """Raise INVALID_ARGUMENT naming every recorded field, if any."""
        if self.items:
            raise InvalidArgument(self.items)

    def text(
        self, field: str, value: str, *, max_len: int, required: bool = False, min_len: int = 1
    ) -> str | None:
        """A trimmed text field within length limits; None when optional and empty."""
        stripped = value.strip()
        if not stripped:
            if required:
                self.add(field, "is required")
            return None
        if len(stripped) < min_len:
            self.add(field, f"must be at least {min_len} characters")
        if len(stripped) > max_len:
            self.add(field, f"must be at most {max_len} characters")
        # isprintable() (C, fast) is False for every control, format and line/paragraph separator
        # character: only then is the per-character look needed.
        if not stripped.isprintable() and any(_invisible(ch) for ch in stripped):
            self.add(field, "must not contain control or invisible characters")
        return stripped

    def enum(
        self, field: str, value: int, descriptor: EnumDescriptor, *, required: bool = True
    ) -> int | None:
        """A known, non-zero enum value (proto3 lets unknown numbers through the wire)."""
        if value == 0:
            if required:
                self.add(field, f"is required (one of {_enum_names(descriptor)})")
            return None
        if value not in descriptor.values_by_number:
            self.add(field, f"unknown value {value} (one of {_enum_names(descriptor)})")
            return None
        return value

    def date(
        self,
        field: str,
        year: int,
        month: int,
        day: int,
        *,
        earliest: dt.date | None = None,
        latest: dt.date | None = None,
    ) -> dt.date | None:
        """A real calendar date within optional bounds."""
        try:
            value = dt.date(year, month, day)
        except ValueError as error:
            self.add(field, f"is not a valid date ({error})")
            return None
        if earliest is not None and value < earliest:
            self.add(field, f"must not be before {earliest.isoformat()}")
        if latest is not None and value > latest:
            self.add(field, f"must not be after {latest.isoformat()}")
        return value

    def instant(self, field: str, stamp: Timestamp) -> dt.datetime | None:
        """An aware UTC datetime from a Timestamp within a sane range (1900 to 9000)."""
        try:
            value = stamp.ToDatetime(tzinfo=dt.UTC)
        except (ValueError, OverflowError):
            self.add(field, "is not a valid timestamp")
            return None
        if not _EARLIEST <= value <= _LATEST:
            self.add(field, "is out of range (1900 to 9000)")
            return None
        return value

    def period(
        self, field: str, value: Period, *, max_span: dt.timedelta | None = None
    ) -> tuple[dt.datetime | None, dt.datetime | None]:
        """(start, end) of a Period filter, start inclusive, end exclusive, the end after the
        start. Either end may be unset, unless `max_span` is given: then both are required and
        at most that far apart (a filter that bounds a query on its own)."""
        start = end = None
        if value.HasField("start_time"):
            start = self.instant(f"{field}.start_time", value.start_time)
        elif max_span is not None:
            self.add(f"{field}.start_time", "is required")
        if value.HasField("end_time"):
            end = self.instant(f"{field}.end_time", value.end_time)
        elif max_span is not None:
            self.add(f"{field}.end_time", "is required")
        if start is not None and end is not None:
            if end <= start:
                self.add(f"{field}.end_time", "must be after the start")
            elif max_span is not None and end - start > max_span:
                self.add(
                    f"{field}.end_time", f"must be at most {max_span.days} days after the start"
                )
        return start, end

    def request_id(self, field: str, value: str) -> str | None:
        """An optional idempotency key: printable, at most 64 characters."""
        if not value:
            return None
        if len(value) > MAX_REQUEST_ID or not value.isprintable() or value != value.strip():
            self.add(field, f"must be 1 to {MAX_REQUEST_ID} printable characters without padding")
            return None
        return value

    def page_size(self, field: str, value: int) -> int:
        """AIP-158: 0 → default, above the maximum → the maximum, negative → rejected."""
        if value < 0:
            self.add(field, "must not be negative")
            return DEFAULT_PAGE_SIZE
        if value == 0:
            return DEFAULT_PAGE_SIZE
        return min(value, MAX_PAGE_SIZE)

    def resource_id(self, field: str, name: str, *, collection: str) -> uuid.UUID | None:
        """The id of `<collection>/<id>`; ids are UUIDs, anything else is a malformed name."""
        return self._id(field, name, prefix=f"{collection}/", pattern=f"{collection}/{{id}}")

    def child_id(
        self, field: str, name: str, *, parent: str, collection: str
    ) -> tuple[uuid.UUID, uuid.UUID] | None:
        """The two ids of `<parent>/<id>/<collection>/<id>`."""
        pattern = f"{parent}/{{id}}/{collection}/{{id}}"
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != parent or parts[2] != collection:
            self.add(field, f"must be of the form {pattern}")
            return None
        parent_id, child_id = _canonical_uuid(parts[1]), _canonical_uuid(parts[3])
        if parent_id is None or child_id is None:
            self.add(field, f"must be of the form {pattern} with valid ids")
            return None
        return parent_id, child_id

    def _id(self, field: str, name: str, *, prefix: str, pattern: str) -> uuid.UUID | None:
        if not name:
            self.add(field, f"is required ({pattern})")
            return None
        if not name.startswith(prefix) or "/" in name[len(prefix) :]:
            self.add(field, f"must be of the form {pattern}")
            return None
        parsed = _canonical_uuid(name[len(prefix) :])
        if parsed is None:
            self.add(field, f"must be of the form {pattern} with a valid id")
        return parsed


# Zero-width (non-)joiners are part of correct spelling in several scripts; other format
# characters (zero-width space, bidi overrides) only hide what a name really says.
_ALLOWED_FORMAT = frozenset("\u200c\u200d")


def _invisible(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category in ("Cc", "Zl", "Zp") or (category == "Cf" and ch not in _ALLOWED_FORMAT)


def _canonical_uuid(text: str) -> uuid.UUID | None:
    """A UUID written exactly as we write it (lower-case, hyphenated): one spelling per name."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    return parsed if str(parsed) == text else None


def required_id(field: str, name: str, *, collection: str) -> uuid.UUID:
    """The id of one `<collection>/<id>` name, or INVALID_ARGUMENT naming `field` at once."""
    v = Violations()
    value = v.resource_id(field, name, collection=collection)
    v.raise_if_any()
    assert value is not None  # raise_if_any raised otherwise
    return value


def required_child_id(
    field: str, name: str, *, parent: str, collection: str
) -> tuple[uuid.UUID, uuid.UUID]:
    """The ids of one `<parent>/<id>/<collection>/<id>` name, or INVALID_ARGUMENT at once."""
    v = Violations()
    ids = v.child_id(field, name, parent=parent, collection=collection)
    v.raise_if_any()
    assert ids is not None  # raise_if_any raised otherwise
    return ids


def _enum_names(descriptor: EnumDescriptor) -> str:
    return ", ".join(v.name for v in descriptor.values if v.number != 0)


def require_paths(
    violations: Violations, field: str, paths: Iterable[str], allowed: frozenset[str]
) -> list[str]:
    """Update-mask paths: non-empty, each one allowed, no duplicates."""
    result: list[str] = []
    for path in paths:
        if path not in allowed:
            violations.add(
                field, f"path {path!r} cannot be updated (allowed: {', '.join(sorted(allowed))})"
            )
        elif path not in result:
            result.append(path)
    if not result and not violations.items:
        violations.add(field, "must name at least one field")
    return result


def time_zone(v: Violations, field: str, name: str, *, required: bool) -> ZoneInfo | None:
    """An IANA time zone such as Asia/Shanghai."""
    if not name:
        if required:
            v.add(field, "is required (an IANA time zone such as Asia/Shanghai)")
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        v.add(field, f"unknown time zone {name!r} (use an IANA name such as Asia/Shanghai)")
        return None


def full_date(v: Violations, field: str, date: Any, *, present: bool) -> dt.date | None:
    """A required, real calendar date from 1900 to 9000."""
    if not present:
        v.add(field, "is required")
        return None
    value = v.date(
        field, date.year, date.month, date.day, earliest=EARLIEST_DATE, latest=LATEST_DATE
    )
    # v.date records an out-of-range date but still returns it; arithmetic must not see it.
    return value if value is not None and EARLIEST_DATE <= value <= LATEST_DATE else None


def day_window(
    v: Violations, request: Any, *, day_field: str = "day", zone_field: str = "time_zone"
) -> tuple[dt.datetime, dt.datetime] | None:
    """[local midnight, next local midnight) of an optional `day` in `time_zone`, as UTC."""
    if not request.HasField(day_field):
        if getattr(request, zone_field):
            time_zone(v, zone_field, getattr(request, zone_field), required=False)
        return None
    zone = time_zone(v, zone_field, getattr(request, zone_field), required=True)
    day = full_date(v, day_field, getattr(request, day_field), present=True)
    if zone is None or day is None:
        return None
    start = dt.datetime.combine(day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def reference(v: Violations, field: str, name: str, collection: str) -> uuid.UUID | None:
    """An optional reference such as `departments/{id}`; None when empty."""
    return v.resource_id(field, name, collection=collection) if name else None
