"""Validation of lab requests: specimens, reports and results, every bad field named."""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from his.common.v1 import types_pb2
from his.lab.mapping import LOINC, SNOMED
from his.lab.v1 import lab_service_pb2 as pb
from his.runtime.validation import Violations

MAX_REASON = 500
MAX_CONCLUSION = 2000
MAX_NOTE = 1000
MAX_VALUE_TEXT = 1000
MAX_DISPLAY = 200
MAX_UNIT = 20
MAX_ORDERS = 20
MAX_RESULTS = 200
# A clock a little ahead at the collection point is not a collection in the future.
CLOCK_SKEW = dt.timedelta(minutes=5)

_ACCESSION = re.compile(r"[A-Za-z0-9-]{1,64}")
# LOINC codes: up to 7 digits, a hyphen and a check digit (for example 11506-3).
_LOINC_CODE = re.compile(r"[0-9]{1,7}-[0-9]")
_SNOMED_CODE = re.compile(r"[0-9]{6,18}")


@dataclass(frozen=True)
class NewSpecimen:
    """The values of a valid CreateSpecimen request."""

    orders: list[uuid.UUID]
    type_code: str
    type_display: str
    accession_id: str
    collect_time: dt.datetime
    collector_id: uuid.UUID


@dataclass(frozen=True)
class Result:
    """One result of RecordObservations or AmendReport, as validated."""

    code: str
    display: str
    number: float | None
    unit: str | None
    text: str | None
    cancelled: bool
    note: str


def ids(v: Violations, field: str, names: Sequence[str], collection: str) -> list[uuid.UUID]:
    """1 to 20 distinct `<collection>/{id}` names."""
    if not names:
        v.add(field, "is required (at least one)")
    if len(names) > MAX_ORDERS:
        v.add(field, f"must have at most {MAX_ORDERS} entries")
    found: list[uuid.UUID] = []
    for index, name in enumerate(names):
        parsed = v.resource_id(f"{field}[{index}]", name, collection=collection)
        if parsed is not None and parsed in found:
            v.add(f"{field}[{index}]", "is a duplicate")
        elif parsed is not None:
            found.append(parsed)
    return found


def coding(
    v: Violations, field: str, value: types_pb2.Coding, *, system: str, pattern: re.Pattern[str]
) -> tuple[str, str]:
    """(code, display) of a required coding of one system."""
    if value.system != system:
        v.add(f"{field}.system", f"must be {system}")
    if not value.code:
        v.add(f"{field}.code", "is required")
    elif not pattern.fullmatch(value.code):
        v.add(f"{field}.code", "is not a valid code of the system")
    display = v.text(f"{field}.display", value.display, max_len=MAX_DISPLAY) or ""
    return value.code, display


def new_specimen(v: Violations, specimen: pb.Specimen, now: dt.datetime) -> NewSpecimen | None:
    """The values of CreateSpecimen's specimen (fields the service assigns are ignored)."""
    orders = ids(v, "specimen.service_requests", specimen.service_requests, "serviceRequests")
    if not specimen.HasField("specimen_type"):
        v.add("specimen.specimen_type", "is required")
    code, display = coding(
        v, "specimen.specimen_type", specimen.specimen_type, system=SNOMED, pattern=_SNOMED_CODE
    )
    if not _ACCESSION.fullmatch(specimen.accession_id):
        v.add("specimen.accession_id", "must be 1 to 64 letters, digits and hyphens")
    collected = None
    if not specimen.HasField("collect_time"):
        v.add("specimen.collect_time", "is required")
    else:
        collected = v.instant("specimen.collect_time", specimen.collect_time)
        if collected is not None and collected > now + CLOCK_SKEW:
            v.add("specimen.collect_time", "must not be in the future")
    collector = v.resource_id("specimen.collector", specimen.collector, collection="staff")
    if collected is None or collector is None or v.items:
        return None
    return NewSpecimen(orders, code, display, specimen.accession_id, collected, collector)


def reason(v: Violations, field: str, value: str) -> str | None:
    """A required reason of 1 to 500 characters."""
    return v.text(field, value, max_len=MAX_REASON, required=True)


def conclusion(v: Violations, field: str, value: str) -> str:
    """An optional conclusion of up to 2000 characters ("" when empty)."""
    return v.text(field, value, max_len=MAX_CONCLUSION) or ""


def extra_codes(v: Violations, results: Sequence[pb.Observation]) -> list[tuple[str, str]]:
    """The (code, display) of CreateDiagnosticReport's extra tests: 0 to 200, distinct."""
    if len(results) > MAX_RESULTS:
        v.add("diagnostic_report.results", f"must have at most {MAX_RESULTS} entries")
        return []
    codes: list[tuple[str, str]] = []
    for index, result in enumerate(results):
        field = f"diagnostic_report.results[{index}].code"
        code = coding(v, field, result.code, system=LOINC, pattern=_LOINC_CODE)
        if code[0] in (c for c, _ in codes):
            v.add(field, "is a duplicate")
        else:
            codes.append(code)
    return codes


def results(
    v: Violations, field: str, given: Sequence[pb.Observation], *, amend: bool
) -> list[Result]:
    """The results of RecordObservations (`amend` False) or AmendReport: distinct codes, each with
    a value (or, when recording, CANCELLED with a note saying why)."""
    if not amend and not given:
        v.add(field, "is required (at least one)")
    if len(given) > MAX_RESULTS:
        v.add(field, f"must have at most {MAX_RESULTS} entries")
        return []
    found: list[Result] = []
    seen: set[str] = set()
    for index, observation in enumerate(given):
        at = f"{field}[{index}]"
        code, display = coding(v, f"{at}.code", observation.code, system=LOINC, pattern=_LOINC_CODE)
        if code in seen:
            v.add(f"{at}.code", "is a duplicate")
        seen.add(code)
        note = v.text(f"{at}.note", observation.note, max_len=MAX_NOTE) or ""
        cancelled = False
        if not amend:
            if observation.status == pb.OBSERVATION_STATUS_CANCELLED:
                cancelled = True
            elif observation.status != pb.OBSERVATION_STATUS_PRELIMINARY:
                v.add(f"{at}.status", "must be OBSERVATION_STATUS_PRELIMINARY or _CANCELLED")
        kind = observation.WhichOneof("value")
        number = unit = text = None
        if cancelled:
            if kind is not None:
                v.add(f"{at}.value", "must be empty for a CANCELLED result")
            if not note:
                v.add(f"{at}.note", "is required for a CANCELLED result (say why)")
        elif kind is None:
            v.add(f"{at}.value", "is required (value_quantity or value_string)")
        elif kind == "value_quantity":
            quantity = observation.value_quantity
            if not math.isfinite(quantity.value):
                v.add(f"{at}.value_quantity.value", "must be a finite number")
            if len(quantity.unit) > MAX_UNIT or not quantity.unit.isprintable():
                v.add(f"{at}.value_quantity.unit", f"must be at most {MAX_UNIT} characters")
            number, unit = quantity.value, quantity.unit
        else:
            text = v.text(
                f"{at}.value_string", observation.value_string, max_len=MAX_VALUE_TEXT,
                required=True,
            )  # fmt: skip
        found.append(Result(code, display, number, unit, text, cancelled, note))
    return found
