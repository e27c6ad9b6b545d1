"""Shared request validation: names every bad field, accepts one spelling of each id."""

from __future__ import annotations

import uuid

import pytest

from his.base.errors import InvalidArgument
from his.runtime.validation import MAX_PAGE_SIZE, Violations

ID = "7b0e6b1e-9a7e-4c4e-9a3e-0f6f1d2c3b4a"


@pytest.mark.parametrize(
    "text",
    ["Wang\x7f", "Wang\u200bFang", "Wang\u2028Fang", "Wang\u202eFang", "Wang\x00", "Wang\tFang"],
)
def test_control_and_invisible_characters_are_rejected(text: str) -> None:
    v = Violations()
    v.text("patient.family_name", text, max_len=100)
    assert [x.field for x in v.items] == ["patient.family_name"]


PERSIAN_WITH_ZWNJ = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"


@pytest.mark.parametrize("text", ["Wang", "O'Brien", "Müller", "ΟΔΥΣΣΕΥΣ", PERSIAN_WITH_ZWNJ])
def test_real_names_pass(text: str) -> None:
    v = Violations()
    assert v.text("patient.family_name", text, max_len=100) == text
    assert v.items == []


def test_only_the_canonical_spelling_of_an_id_is_accepted() -> None:
    v = Violations()
    assert v.resource_id("name", f"patients/{ID}", collection="patients") == uuid.UUID(ID)
    for spelling in (ID.upper(), ID.replace("-", ""), f"{{{ID}}}", f"urn:uuid:{ID}"):
        assert v.resource_id("name", f"patients/{spelling}", collection="patients") is None
    assert len(v.items) == 4


def test_child_names_need_both_ids_canonical() -> None:
    v = Violations()
    name = f"patients/{ID}/consents/{ID}"
    assert v.child_id("name", name, parent="patients", collection="consents") is not None
    assert v.child_id("name", name.upper(), parent="patients", collection="consents") is None
    assert v.child_id("name", f"patients/{ID}", parent="patients", collection="consents") is None
    assert [x.field for x in v.items] == ["name", "name"]


@pytest.mark.parametrize(("given", "used"), [(0, 50), (7, 7), (10_000, MAX_PAGE_SIZE)])
def test_page_size_follows_aip_158(given: int, used: int) -> None:
    v = Violations()
    assert v.page_size("page_size", given) == used
    assert v.items == []


def test_every_violation_is_reported_at_once() -> None:
    v = Violations()
    v.text("a", "", max_len=5, required=True)
    v.page_size("page_size", -1)
    v.request_id("request_id", "x" * 65)
    with pytest.raises(InvalidArgument) as caught:
        v.raise_if_any()
    assert [x.field for x in caught.value.violations] == ["a", "page_size", "request_id"]
