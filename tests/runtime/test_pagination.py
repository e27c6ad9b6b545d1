"""Page tokens are opaque, signed and bound to the query that made them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from his.base.errors import InvalidArgument
from his.runtime.pagination import Cursor, PageTokens

TOKENS = PageTokens(b"test-key")


def test_a_token_round_trips_its_cursor() -> None:
    when = dt.datetime(2026, 12, 5, 8, 30, tzinfo=dt.UTC)
    ident = uuid.uuid4()
    token = TOKENS.encode(
        {"f": "wang", "i": str(ident), "t": when.isoformat(), "s": 42}, query="q1"
    )
    cursor = TOKENS.decode(token, query="q1")
    assert cursor is not None
    assert cursor.text("f") == "wang"
    assert cursor.uuid("i") == ident
    assert cursor.time("t") == when
    assert cursor.integer("s") == 42


@pytest.mark.parametrize(
    ("values", "read"),
    [
        ({}, lambda c: c.text("f")),
        ({"f": 7}, lambda c: c.text("f")),
        ({"f": "a\0b"}, lambda c: c.text("f")),
        ({"f": "a" * 2000}, lambda c: c.text("f")),
        ({"i": "not-a-uuid"}, lambda c: c.uuid("i")),
        ({"i": ["x"]}, lambda c: c.uuid("i")),
        ({"t": "2026-12-05T08:30:00"}, lambda c: c.time("t")),
        ({"t": "yesterday"}, lambda c: c.time("t")),
        ({"s": "42"}, lambda c: c.integer("s")),
        ({"s": True}, lambda c: c.integer("s")),
        ({"s": 2**70}, lambda c: c.integer("s")),
    ],
)
def test_a_sealed_cursor_with_values_of_the_wrong_shape_is_invalid_argument(
    values: dict[str, Any], read: Callable[[Cursor], object]
) -> None:
    # What a token forged with a leaked key (or made by another release) could hold.
    cursor = TOKENS.decode(TOKENS.encode(values, query="q1"), query="q1")
    assert cursor is not None
    with pytest.raises(InvalidArgument) as caught:
        read(cursor)
    assert caught.value.violations[0].field == "page_token"


def test_an_empty_token_means_the_first_page() -> None:
    assert TOKENS.decode("", query="q1") is None


@pytest.mark.parametrize("token", ["garbage", "!!!", "AAAA", "x" * 500, "A" * 100_000, "é€", "\0"])
def test_garbage_is_invalid_argument_on_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TOKENS.decode(token, query="q1")
    assert caught.value.violations[0].field == "page_token"


def test_a_token_from_another_query_is_rejected() -> None:
    token = TOKENS.encode({"i": "1"}, query="q1")
    with pytest.raises(InvalidArgument):
        TOKENS.decode(token, query="q2")


def test_a_tampered_token_is_rejected() -> None:
    token = TOKENS.encode({"i": "1"}, query="q1")
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(InvalidArgument):
        TOKENS.decode(tampered, query="q1")


def test_a_token_signed_with_another_key_is_rejected() -> None:
    token = PageTokens(b"other-key").encode({"i": "1"}, query="q1")
    with pytest.raises(InvalidArgument):
        TOKENS.decode(token, query="q1")
