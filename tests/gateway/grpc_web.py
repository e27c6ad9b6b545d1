"""A gRPC-web call as a browser makes it, over a raw HTTP/1.1 connection: length-prefixed frames
in `application/grpc-web+proto`, the status in the trailers frame (or in the headers when the
answer has no message)."""

from __future__ import annotations

import asyncio
import http.client
from dataclasses import dataclass, field

from google.protobuf.message import Message

_TRAILERS_FLAG = 0x80


@dataclass(frozen=True)
class Reply:
    """What came back: the HTTP status and headers, the messages, the gRPC status."""

    http_status: int
    headers: dict[str, str]
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_status(self) -> int | None:
        """The gRPC status code (trailers frame first, then a trailers-only header)."""
        raw = self.trailers.get("grpc-status") or self.headers.get("grpc-status")
        return None if raw is None else int(raw)

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message") or self.headers.get("grpc-message") or ""


def frame(message: Message) -> bytes:
    """One data frame: flag 0, big-endian length, the serialized message."""
    body = message.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def parse_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """(messages, trailers) of a gRPC-web response body."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset + 5 <= len(body):
        flag, length = body[offset], int.from_bytes(body[offset + 1 : offset + 5], "big")
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flag & _TRAILERS_FLAG:
            for line in payload.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name:
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def _request(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


async def http_request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 request (off the event loop): status, lower-cased headers, body."""
    return await asyncio.to_thread(_request, port, method, path, body, headers)


async def call(
    port: int,
    path: str,
    request: Message,
    *,
    token: str | None = None,
    origin: str | None = None,
) -> Reply:
    """POST one unary gRPC-web call to the gateway on 127.0.0.1:`port`."""
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "accept": "application/grpc-web+proto",
    }
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if origin is not None:
        headers["origin"] = origin
    status, got, body = await http_request(port, "POST", path, headers, frame(request))
    messages, trailers = parse_frames(body)
    return Reply(status, got, messages, trailers)
