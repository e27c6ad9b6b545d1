"""Page tokens are opaque, signed and bound to the query that made them."""

from __future__ import annotations

import pytest

from his.runtime.errors import InvalidArgument
from his.runtime.pagination import PageTokens

TOKENS = PageTokens(b"test-key")


def test_a_token_round_trips_its_cursor() -> None:
    token = TOKENS.encode({"f": "wang", "i": "42"}, query="q1")
    assert TOKENS.decode(token, query="q1") == {"f": "wang", "i": "42"}


def test_an_empty_token_means_the_first_page() -> None:
    assert TOKENS.decode("", query="q1") is None


@pytest.mark.parametrize("token", ["garbage", "!!!", "AAAA", "x" * 500])
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
