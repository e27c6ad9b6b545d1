"""What every request is checked for before any servicer sees it: that it decodes, and that its
text can be stored.

Both used to escape as INTERNAL/UNKNOWN: grpc answers an undecodable body with UNKNOWN and the
deserializer's exception text, and PostgreSQL refuses a NUL character inside any `text` value.
Checking once here covers every string field of every request of every service, present and
future, instead of each validator remembering to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from his.base.errors import FieldViolation, HisError, InvalidArgument

# At most this many violations are reported: a crafted request must not make a huge status.
_MAX_VIOLATIONS = 10
_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


class Undecodable:
    """Stands in for a request whose bytes are not a valid message of the rpc's request type."""

    __slots__ = ()


UNDECODABLE = Undecodable()


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering UNDECODABLE instead of raising, so the call is refused with a
    proper INVALID_ARGUMENT by the error interceptor rather than by grpc with UNKNOWN."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return UNDECODABLE

    return decode


class UndecodableRequest(HisError):
    """The body is not a message of the rpc's request type: no field to name, no parser or class
    names and no echo of the bytes in the answer."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "UNDECODABLE_REQUEST"

    def __init__(self) -> None:
        super().__init__("the request body is not a valid message of this rpc's request type")


def check_request(request: Any) -> None:
    """Raise InvalidArgument if `request` did not decode or holds text PostgreSQL cannot store."""
    if request is UNDECODABLE:
        raise UndecodableRequest()
    if not isinstance(request, Message) or not _has_text(request.DESCRIPTOR):
        return
    violations: list[FieldViolation] = []
    for path in _nul_paths(request, ""):
        violations.append(FieldViolation(path, "must not contain the NUL character (U+0000)"))
        if len(violations) == _MAX_VIOLATIONS:
            break
    if violations:
        raise InvalidArgument(violations)


def nul_paths(message: Message, prefix: str = "") -> Iterator[str]:
    """The paths of `message`'s strings holding a NUL character, for messages the guard does not
    see itself (the payloads packed in an `Any`, such as delivered events)."""
    if _has_text(message.DESCRIPTOR):
        yield from _nul_paths(message, prefix)


@cache
def _has_text(descriptor: Descriptor) -> bool:
    """Whether a message type can hold a string anywhere (cached: most requests are walked only
    through the fields that can)."""
    return bool(_text_fields(descriptor))


@cache
def _text_fields(descriptor: Descriptor) -> frozenset[str]:
    """Names of the fields through which a string can be reached (cycles count as reachable)."""
    names: set[str] = set()
    visiting: set[str] = set()

    def reaches(message: Descriptor | None) -> bool:
        if message is None:
            return False
        if message.full_name in visiting:
            return True
        visiting.add(message.full_name)
        try:
            return any(
                field.type == _STRING or (field.type == _MESSAGE and reaches(field.message_type))
                for field in message.fields
            )
        finally:
            visiting.discard(message.full_name)

    for field in descriptor.fields:
        if field.type == _STRING or (field.type == _MESSAGE and reaches(field.message_type)):
            names.add(field.name)
    return frozenset(names)


def _nul_paths(message: Message, prefix: str) -> Iterator[str]:
    wanted = _text_fields(message.DESCRIPTOR)
    for field, value in message.ListFields():
        if field.name not in wanted:
            continue
        path = f"{prefix}{field.name}"
        if _is_map(field):
            entry: Any = field.message_type
            value_field = entry.fields_by_name["value"]
            for key, item in value.items():
                if isinstance(key, str) and "\0" in key:
                    yield f"{path}[{_shorten(key)}]"
                if value_field.type == _STRING and "\0" in item:
                    yield f"{path}[{_shorten(key)}]"
                elif value_field.type == _MESSAGE:
                    yield from _nul_paths(item, f"{path}[{_shorten(key)}].")
        elif field.is_repeated:
            for index, item in enumerate(value):
                if field.type == _STRING:
                    if "\0" in item:
                        yield f"{path}[{index}]"
                else:
                    yield from _nul_paths(item, f"{path}[{index}].")
        elif field.type == _STRING:
            if "\0" in value:
                yield path
        else:
            yield from _nul_paths(value, f"{path}.")


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and bool(entry.GetOptions().map_entry)


def _shorten(key: Any) -> str:
    text = str(key).replace("\0", "\\0")
    return text if len(text) <= 32 else text[:29] + "..."
