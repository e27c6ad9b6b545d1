"""Which workload a call came from, as the mesh proves it; service tokens are bound to it.

Under Istio every call arrives over mutual TLS through the pod's sidecar, which tells the app the
caller's certificate identity in `x-forwarded-client-cert` (XFCC), e.g.
`By=spiffe://cluster.local/ns/his/sa/audit;Hash=…;Subject="";URI=spiffe://cluster.local/ns/his/sa/patient`.
The inbound sidecar appends its own element (APPEND_FORWARD) and the outbound sidecar strips
whatever the app set (SANITIZE), so only the last element is vouched for; earlier ones may have
been written by anyone and are ignored.

A service's token (`services/<name>`) is then good only from the workload whose mTLS principal is
`<prefix><name>` (the ServiceAccount named like the service): a token copied out of one pod is
refused when another pod presents it, and iam issues `service:<name>` tokens only to that
workload. Off outside the mesh, where no sidecar vouches for the header.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from his.base.errors import Unauthenticated

XFCC = "x-forwarded-client-cert"
# Istio's principal of a ServiceAccount in namespace his, as a SPIFFE URI: the service follows.
DEFAULT_PREFIX = "spiffe://cluster.local/ns/his/sa/"


def _split(text: str, separator: str) -> list[str]:
    """`text` cut at `separator` outside double quotes (a quoted Subject may hold , and ;)."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def last_peer_uri(header: str) -> str | None:
    """The URI SAN of the last XFCC element (the one the local sidecar added); None when that
    element has none, or several (a principal must name one workload)."""
    elements = _split(header, ",")
    uris = []
    for pair in _split(elements[-1], ";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key.strip().lower() == "uri":
            uris.append(_unquote(value.strip()))
    return uris[0] if len(uris) == 1 and uris[0] else None


def _header(metadata: Iterable[Any] | None) -> str | None:
    # gRPC joins repeated headers into repeated entries; the sidecar's element is in the last.
    found = None
    for name, value in metadata or ():
        if name == XFCC:
            found = value.decode() if isinstance(value, bytes) else str(value)
    return found


@dataclass(frozen=True)
class PeerBinding:
    """Service tokens are accepted only from the workload whose mTLS principal names the service."""

    prefix: str = DEFAULT_PREFIX

    def peer_service(self, metadata: Iterable[Any] | None) -> str | None:
        """The service name in the caller's mTLS principal, None when the call has no principal
        of this namespace (plain text, another namespace, the sidecar did not vouch)."""
        header = _header(metadata)
        uri = last_peer_uri(header) if header is not None else None
        if uri is None or not uri.startswith(self.prefix):
            return None
        name = uri[len(self.prefix) :]
        return name if name and "/" not in name else None

    def require(self, metadata: Iterable[Any] | None, service: str, what: str) -> None:
        """UNAUTHENTICATED unless the call comes from `service`'s own workload."""
        peer = self.peer_service(metadata)
        if peer != service:
            # Names the expected principal and the seen one: neither is a secret, and an SRE
            # reading the error must see which Deployment runs under the wrong ServiceAccount.
            seen = f"{self.prefix}{peer}" if peer else "no mTLS principal"
            raise Unauthenticated(
                f"{what} of service {service!r} is only accepted from {self.prefix}{service}, "
                f"and this call comes from {seen}",
                reason="SERVICE_PEER_MISMATCH",
            )
