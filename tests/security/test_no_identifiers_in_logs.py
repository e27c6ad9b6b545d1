"""No identifying data in the logs: names, national ids, phone numbers and addresses never appear.

Everything the process logs while the demo data set is loaded, searched, read, refused and booked
through the session's servers is captured exactly as a service logs in production
(`his.runtime.logs.configure_logging`, JSON, level DEBUG), then searched for every identifying
value of the demo patients (and of a patient with a street address).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import grpc

from his.common.v1 import types_pb2
from his.patient import demo
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.config import TelemetryConfig
from his.runtime.logs import configure_logging
from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his_client import HisClients
from his_client.credentials import static_token
from tests.conftest import addresses, service_config
from tests.identity import ISSUER, REGISTRAR, metadata
from tests.patient.helpers import make_patient
from tests.scheduling.helpers import future_slots, tomorrow
from tests.security.helpers import Patients, Scheduling, outcome

# A patient with a street address (the demo people have a city only).
STREET_LINES = ("Room 1204, Building 7", "88 Jianguo Menwai Avenue")
# Identifiers searched for that nobody has.
UNKNOWN_NATIONAL_ID = "110101199001019995"
UNKNOWN_PHONE = "+8613912345678"


def _identifying_values() -> dict[str, tuple[str, bool]]:
    """label -> (value, whole words only). Names are matched as words, identifiers anywhere."""
    values: dict[str, tuple[str, bool]] = {}
    for family, given, _, _, national, phone, city in demo.PEOPLE:
        who = f"{given} {family}"
        values[f"family name of {who}"] = (family, True)
        for part in given.split():
            values[f"given name {part} of {who}"] = (part, True)
        values[f"full name of {who}"] = (who, True)
        values[f"city of {who}"] = (city, True)
        values[f"phone of {who}"] = (phone, False)
        values[f"phone digits of {who}"] = (phone.lstrip("+"), False)
        if phone.startswith("+86"):
            values[f"national phone number of {who}"] = (phone.removeprefix("+86"), False)
        if national:
            values[f"national id of {who}"] = (national, False)
    for index, line in enumerate(STREET_LINES):
        values[f"street line {index}"] = (line, False)
    values["unknown national id searched for"] = (UNKNOWN_NATIONAL_ID, False)
    values["unknown phone searched for"] = (UNKNOWN_PHONE, False)
    return values


IDENTIFYING = _identifying_values()


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    else:
        yield str(value)


def leaks(lines: Sequence[str], values: Mapping[str, tuple[str, bool]] = IDENTIFYING) -> list[str]:
    """Which identifying values occur in which captured lines (raw, and with JSON decoded)."""
    found = []
    for label, (value, words) in values.items():
        pattern = re.compile(rf"(?<!\w){re.escape(value)}(?!\w)" if words else re.escape(value))
        for line in lines:
            try:
                decoded = "\n".join(_strings(json.loads(line)))
            except ValueError:
                decoded = ""
            if pattern.search(line) or pattern.search(decoded):
                found.append(f"{label} ({value!r}) in: {line}")
    return found


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Everything logged meanwhile, as a service logs it: JSON lines at level DEBUG.

    The lines are in the list once the block ends. Root handlers already present (pytest's) stay;
    the root level and library levels configure_logging sets are put back afterwards.
    """
    root = logging.getLogger()
    kept_handlers, kept_level = list(root.handlers), root.level
    manager = logging.Logger.manager
    kept_levels = {
        name: logger.level
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    configure_logging(TelemetryConfig(service_name="his", log_format="json", log_level="DEBUG"))
    (ours,) = root.handlers
    assert isinstance(ours, logging.StreamHandler)
    buffer = io.StringIO()
    ours.setStream(buffer)
    for handler in kept_handlers:
        root.addHandler(handler)
    lines: list[str] = []
    try:
        yield lines
    finally:
        root.removeHandler(ours)
        for handler in kept_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(kept_level)
        for name, level in kept_levels.items():
            logging.getLogger(name).setLevel(level)
        lines.extend(buffer.getvalue().splitlines())


def _access_lines(lines: Sequence[str], method: str) -> int:
    count = 0
    for line in lines:
        entry = json.loads(line)
        if entry.get("logger") == "his.access" and entry.get("method", "").endswith(method):
            count += 1
    return count


def test_the_capture_finds_an_identifier_logged_at_debug_or_in_a_message() -> None:
    family, given, _, _, national, phone, _ = demo.PEOPLE[0]
    handlers, level = list(logging.getLogger().handlers), logging.getLogger().level
    with captured_logs() as lines:
        logging.getLogger("his.patient.service").debug("looked up", extra={"fields": {"by": phone}})
        logging.getLogger("his.scheduling.service").info("booked %s %s", given, family)
        logging.getLogger("his_client").warning("retrying", extra={"fields": {"key": [national]}})

    found = leaks(lines)

    assert len(lines) == 3
    assert any(f"phone of {given} {family}" in leak for leak in found), found
    assert any(f"full name of {given} {family}" in leak for leak in found), found
    assert any(f"national id of {given} {family}" in leak for leak in found), found
    # Nothing stays configured: later logging goes where it went before.
    assert (logging.getLogger().handlers, logging.getLogger().level) == (handlers, level)


async def test_loading_searching_reading_refusing_and_booking_the_demo_patients_logs_no_identifier(
    patient_service: RunningService, patients: Patients, scheduling: Scheduling
) -> None:
    config = service_config("patient", **addresses(patient_service)).clients
    as_auditor = metadata(ISSUER.staff("AUDITOR"))
    # A month ahead: the demo's own bookings of these patients (next week) never overlap.
    month_ahead = tomorrow() + dt.timedelta(days=30)
    slots = (await future_slots(scheduling, count=4, capacity=2, day=month_ahead)).slots

    with captured_logs() as lines:
        async with HisClients(config, token=static_token(REGISTRAR)) as his:
            await demo.load(his)
            # Loading again replays every request: nothing new, nothing logged about anyone.
            await demo.load(his)
        names = []
        for _, _, _, _, national, phone, _ in demo.PEOPLE:
            by_phone = await patients.ListPatients(patient_pb.ListPatientsRequest(phone=phone))
            assert len(by_phone.patients) == 1
            found = by_phone.patients[0]
            names.append(found.name)
            if national:
                identifier = types_pb2.Identifier(system=demo.RESIDENT_ID, value=national)
                by_id = await patients.ListPatients(
                    patient_pb.ListPatientsRequest(national_id=identifier)
                )
                assert [p.name for p in by_id.patients] == [found.name]
                # A second registration with the same national id is refused.
                twin = make_patient(national_id=identifier, phone=phone)
                refused = await outcome(
                    patients.CreatePatient(patient_pb.CreatePatientRequest(patient=twin))
                )
                assert refused.code == grpc.StatusCode.ALREADY_EXISTS, refused
            read = await patients.GetPatient(patient_pb.GetPatientRequest(name=found.name))
            assert read.phone == phone
            by_name = await patients.ListPatients(
                patient_pb.ListPatientsRequest(name_prefix=read.family_name)
            )
            assert found.name in [p.name for p in by_name.patients]
            # A malformed phone number (the real one with a letter) is named, not logged.
            bad = await outcome(
                patients.CreatePatient(
                    patient_pb.CreatePatientRequest(patient=make_patient(phone=f"{phone}x"))
                )
            )
            assert bad.code == grpc.StatusCode.INVALID_ARGUMENT, bad
            # An auditor may not search patients: refused, with the search in the request.
            denied = await outcome(
                patients.ListPatients(
                    patient_pb.ListPatientsRequest(phone=phone), metadata=as_auditor
                )
            )
            assert denied.code == grpc.StatusCode.PERMISSION_DENIED, denied
        unknown = await patients.ListPatients(
            patient_pb.ListPatientsRequest(
                national_id=types_pb2.Identifier(system=demo.RESIDENT_ID, value=UNKNOWN_NATIONAL_ID)
            )
        )
        assert list(unknown.patients) == []
        assert not (
            await patients.ListPatients(patient_pb.ListPatientsRequest(phone=UNKNOWN_PHONE))
        ).patients
        # A patient with a street address, registered and read.
        housed = make_patient(
            address=patient_pb.Address(lines=list(STREET_LINES), city="Beijing", country="CN")
        )
        created = await patients.CreatePatient(patient_pb.CreatePatientRequest(patient=housed))
        await patients.GetPatient(patient_pb.GetPatientRequest(name=created.name))
        # Bookings ask the patient service about each patient; a double booking is refused.
        for name, slot in zip(names, slots, strict=False):
            booked = await scheduling.BookAppointment(
                pb.BookAppointmentRequest(patient=name, slot=slot.name)
            )
            await scheduling.GetAppointment(pb.GetAppointmentRequest(name=booked.name))
        twice = await outcome(
            scheduling.BookAppointment(
                pb.BookAppointmentRequest(patient=names[0], slot=slots[0].name)
            )
        )
        assert twice.code == grpc.StatusCode.FAILED_PRECONDITION, twice

    # The capture saw the servers at work (each call's access-log line)...
    assert _access_lines(lines, "PatientService/CreatePatient") >= 2 * len(demo.PEOPLE)
    assert _access_lines(lines, "PatientService/GetPatient") >= len(demo.PEOPLE)
    assert _access_lines(lines, "SchedulingService/BookAppointment") == len(slots) + 1
    # ...and not one identifying value.
    assert leaks(lines) == []
