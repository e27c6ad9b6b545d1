"""iam's keys over HTTP: the JWKS and OIDC discovery documents read with a real HTTP client, the
same keys GetJwks answers, GET and HEAD only, 404 elsewhere."""

from __future__ import annotations

import asyncio
import http.client
import json
from dataclasses import dataclass

from his.iam.v1 import iam_service_pb2 as pb
from his.runtime.documents_http import DocumentServer
from his.runtime.server import RunningService
from tests.iam.helpers import LOCAL_ISSUER, Stub


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _fetch(port: int, path: str, method: str) -> Reply:
    connection = http.client.HTTPConnection("localhost", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()


async def fetch(server: RunningService, path: str, method: str = "GET") -> Reply:
    assert isinstance(server.companion, DocumentServer)
    return await asyncio.to_thread(_fetch, server.companion.port, path, method)


async def test_jwks_over_http_is_the_key_set_getjwks_answers(
    iam_server: RunningService, iam: Stub
) -> None:
    reply = await fetch(iam_server, "/.well-known/jwks.json")

    assert reply.status == 200
    assert reply.headers["content-type"] == "application/jwk-set+json"
    assert reply.headers["cache-control"] == "public, max-age=300"
    published = await iam.GetJwks(pb.GetJwksRequest())
    assert json.loads(reply.body) == {
        "keys": [
            {"kty": k.kty, "kid": k.kid, "use": k.use, "alg": k.alg, "n": k.n, "e": k.e}
            for k in published.keys
        ]
    }
    assert len(published.keys) == 2


async def test_discovery_names_the_issuer_and_where_its_keys_are(
    iam_server: RunningService,
) -> None:
    reply = await fetch(iam_server, "/.well-known/openid-configuration")

    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    document = json.loads(reply.body)
    assert document["issuer"] == LOCAL_ISSUER
    assert document["jwks_uri"] == LOCAL_ISSUER + "/.well-known/jwks.json"
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert document["subject_types_supported"] == ["public"]


async def test_head_answers_the_headers_without_the_body(iam_server: RunningService) -> None:
    got = await fetch(iam_server, "/.well-known/jwks.json")
    head = await fetch(iam_server, "/.well-known/jwks.json", "HEAD")

    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(got.body))


async def test_other_paths_are_not_found(iam_server: RunningService) -> None:
    for path in ("/", "/.well-known/jwks.json/x", "/metrics", "/../etc/passwd"):
        reply = await fetch(iam_server, path)
        assert (path, reply.status) == (path, 404)


async def test_methods_other_than_get_and_head_are_refused(iam_server: RunningService) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        reply = await fetch(iam_server, "/.well-known/jwks.json", method)
        assert (method, reply.status, reply.headers["allow"]) == (method, 405, "GET, HEAD")


async def test_a_garbled_request_is_answered_400_and_the_server_keeps_serving(
    iam_server: RunningService,
) -> None:
    assert isinstance(iam_server.companion, DocumentServer)
    reader, writer = await asyncio.open_connection("localhost", iam_server.companion.port)
    writer.write(b"NONSENSE\r\n\r\n")
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()

    assert status_line.startswith(b"HTTP/1.1 400")
    assert (await fetch(iam_server, "/.well-known/jwks.json")).status == 200
