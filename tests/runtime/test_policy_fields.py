"""Every field path a policy names exists in the contract: a lock on a field that does not exist
locks nothing (the old `drug`, `dose`, `quantity`, `price` did exactly that)."""

from __future__ import annotations

import re

import pytest
from google.protobuf.descriptor import Descriptor

from his.orders.v1 import orders_service_pb2 as orders_pb
from his.orders.validation import MEDICATION_UPDATABLE
from his.runtime.policy import DEFAULT_DIRECTORY
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb

# Each policy constant that lists field paths, and the message of the resource class it is about.
FIELD_CONSTANTS: dict[str, Descriptor] = {
    "prescription_locked_fields": orders_pb.MedicationRequest.DESCRIPTOR,
    "patient_cancel_fields": scheduling_pb.Appointment.DESCRIPTOR,
}
_CONSTANT = re.compile(r"^(\w+_fields)\s*:=\s*\{(.*?)\}", re.MULTILINE | re.DOTALL)
_STRING = re.compile(r'"([^"]*)"')


def _constants() -> dict[str, list[str]]:
    """Every `<name>_fields := {...}` constant of the policy files, with its strings."""
    found: dict[str, list[str]] = {}
    for path in sorted(DEFAULT_DIRECTORY.glob("*.rego")):
        for name, body in _CONSTANT.findall(path.read_text(encoding="utf-8")):
            found[name] = _STRING.findall(body)
    return found


def resolves(message: Descriptor, path: str) -> bool:
    """Whether a dotted field path names a field of `message` (through message fields)."""
    descriptor: Descriptor | None = message
    for part in path.split("."):
        if descriptor is None or part not in descriptor.fields_by_name:
            return False
        descriptor = descriptor.fields_by_name[part].message_type
    return True


def test_every_field_constant_of_the_policies_is_checked_here() -> None:
    assert set(_constants()) == set(FIELD_CONSTANTS)


@pytest.mark.parametrize("constant", sorted(FIELD_CONSTANTS))
def test_every_path_a_policy_names_is_a_field_of_its_resource(constant: str) -> None:
    paths = _constants()[constant]
    assert paths, f"{constant} names no field"
    message = FIELD_CONSTANTS[constant]
    assert [path for path in paths if not resolves(message, path)] == []


def test_the_resolver_refuses_what_does_not_exist() -> None:
    message = orders_pb.MedicationRequest.DESCRIPTOR
    assert resolves(message, "dosage.dose.unit")
    assert not resolves(message, "dose")
    assert not resolves(message, "dosage.drug")
    assert not resolves(message, "refills.value")


def test_every_path_the_prescriber_may_update_is_locked_for_pharmacists() -> None:
    assert set(_constants()["prescription_locked_fields"]) >= MEDICATION_UPDATABLE
