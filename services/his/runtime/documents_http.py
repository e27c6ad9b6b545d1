"""A minimal HTTP/1.1 server on asyncio for a handful of read-only documents (GET and HEAD).

iam publishes its key set through it and `his up` serves the built web app through it. Nothing
else is needed there, so no web framework: one request per connection (`Connection: close`),
bounded header size and read time, 404 for unknown paths, 405 for any method but GET and HEAD.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

log = logging.getLogger("his.http")

_MAX_HEAD_BYTES = 16 * 1024
_READ_TIMEOUT_S = 10.0
_WRITE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Document:
    """One answer: its body and the headers that describe it."""

    body: bytes
    content_type: str
    cache_control: str = "no-store"
    status: int = 200
    # More headers (name, value), e.g. Access-Control-Allow-Origin.
    headers: tuple[tuple[str, str], ...] = field(default=())


# Maps a request path (percent-decoded, without the query) to its document; None: 404.
Resolver = Callable[[str], Document | None]

_NOT_FOUND = Document(b"not found\n", "text/plain; charset=utf-8", status=404)
_NOT_ALLOWED = Document(
    b"only GET and HEAD\n",
    "text/plain; charset=utf-8",
    status=405,
    headers=(("Allow", "GET, HEAD"),),
)
_BAD_REQUEST = Document(b"bad request\n", "text/plain; charset=utf-8", status=400)


class DocumentServer:
    """Serves what `resolve` answers on `host:port` (port 0: any free port) until closed."""

    def __init__(
        self, resolve: Resolver, *, host: str, port: int, name: str, blocking: bool = False
    ) -> None:
        self._resolve = resolve
        # A resolver that reads files runs on a thread, never on the event loop.
        self._blocking = blocking
        # HIS_HOST's "[::]" is gRPC's "every address": None here (see _listen).
        stripped = host.strip("[]")
        self._host = None if stripped in ("", "::") else stripped
        self._port = port
        self._name = name
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (after `start`)."""
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> DocumentServer:
        """Bind and begin accepting; raises OSError when the port is taken."""
        if self._host is None:
            self._server = await asyncio.start_server(
                self._handle, sock=_listen(self._port), limit=_MAX_HEAD_BYTES
            )
        else:
            self._server = await asyncio.start_server(
                self._handle, self._host, self._port, limit=_MAX_HEAD_BYTES
            )
        log.info("serving http", extra={"fields": {"endpoint": self._name, "port": self.port}})
        return self

    async def aclose(self) -> None:
        """Stop accepting and close the listening sockets."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, document = await asyncio.wait_for(self._answer(reader), _READ_TIMEOUT_S)
            writer.write(_head(document) + (b"" if method == "HEAD" else document.body))
            await asyncio.wait_for(writer.drain(), _WRITE_TIMEOUT_S)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a slow or vanished client: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, Document]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return "GET", _BAD_REQUEST
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "GET", _BAD_REQUEST
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return method, _NOT_ALLOWED
        path = unquote(urlsplit(target).path)
        try:
            document = (
                await asyncio.to_thread(self._resolve, path)
                if self._blocking
                else self._resolve(path)
            )
        except Exception:  # a broken resolver answers 500, and the server keeps serving
            log.exception("http resolver failed", extra={"fields": {"endpoint": self._name}})
            return method, Document(b"internal error\n", "text/plain; charset=utf-8", status=500)
        return method, document or _NOT_FOUND


def _listen(port: int) -> socket.socket:
    """One socket on every address, IPv6 and IPv4 alike. asyncio given no host would open one
    socket per family, and with port 0 each on a port of its own."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[str, int] = ("::", port)
    except OSError:  # no IPv6 on this machine
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _head(document: Document) -> bytes:
    reason = HTTPStatus(document.status).phrase
    lines = [
        f"HTTP/1.1 {document.status} {reason}",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {document.content_type}",
        f"Content-Length: {len(document.body)}",
        f"Cache-Control: {document.cache_control}",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
        *(f"{name}: {value}" for name, value in document.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
