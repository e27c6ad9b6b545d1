"""Page tokens are opaque, signed and bound to the query that made them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from his.base.errors import InvalidArgument
from his.runtime.pagination import Cursor, PageTokens, time_and_id, time_and_id_values

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


# --- the keyset page helper ---------------------------------------------------------------------

ROWS = list(range(1, 8))


def _read(after: int | None, limit: int) -> list[int]:
    """What a store does: up to `limit` rows above the cursor, in order."""
    return [row for row in ROWS if after is None or row > after][:limit]


def _page_of(token: str, limit: int, query: str = "numbers") -> tuple[list[int], str]:
    keyset = TOKENS.keyset(token, query=query, limit=limit, after=lambda c: c.integer("n"))
    page = keyset.page(_read(keyset.after, keyset.read_limit), lambda row: {"n": row})
    return page.rows, page.next_page_token


def test_the_first_page_reads_one_row_more_than_it_returns() -> None:
    keyset = TOKENS.keyset("", query="numbers", limit=3, after=lambda c: c.integer("n"))
    assert keyset.after is None
    assert keyset.read_limit == 4
    page = keyset.page(_read(keyset.after, keyset.read_limit), lambda row: {"n": row})
    assert page.rows == [1, 2, 3]
    assert page.next_page_token


def test_the_next_page_token_resumes_after_the_last_row_of_the_page() -> None:
    _, token = _page_of("", 3)
    cursor = TOKENS.decode(token, query="numbers")
    assert cursor is not None and cursor.integer("n") == 3
    rows, token = _page_of(token, 3)
    assert rows == [4, 5, 6]
    rows, token = _page_of(token, 3)
    assert (rows, token) == ([7], "")


def test_a_page_that_ends_exactly_at_the_last_row_has_no_token() -> None:
    assert _page_of("", 7) == (ROWS, "")
    assert _page_of("", 8) == (ROWS, "")


def test_a_next_page_token_is_bound_to_its_query() -> None:
    _, token = _page_of("", 3)
    with pytest.raises(InvalidArgument):
        _page_of(token, 3, query="other numbers")


@pytest.mark.parametrize("token", ["garbage", TOKENS.encode({"n": "3"}, query="numbers")])
def test_a_bad_token_is_invalid_argument_before_anything_is_read(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TOKENS.keyset(token, query="numbers", limit=3, after=lambda c: c.integer("n"))
    assert caught.value.violations[0].field == "page_token"


def test_a_keyset_makes_tokens_for_its_own_query() -> None:
    keyset = TOKENS.keyset("", query="numbers", limit=3, after=lambda c: c.integer("n"))
    rows, _ = _page_of(keyset.token({"n": 5}), 3)
    assert rows == [6, 7]


def test_a_time_and_id_cursor_round_trips() -> None:
    when = dt.datetime(2026, 12, 5, 8, 30, tzinfo=dt.UTC)
    ident = uuid.uuid4()
    cursor = TOKENS.decode(TOKENS.encode(time_and_id_values(when, ident), query="q1"), query="q1")
    assert cursor is not None
    assert time_and_id(cursor) == (when, ident)
