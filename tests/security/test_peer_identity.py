"""Reading the caller's mTLS principal from the sidecar's x-forwarded-client-cert, and the setting
that binds service tokens to it (his.runtime.peer_identity, HIS_AUTH_SERVICE_PEERS)."""

from __future__ import annotations

import pytest

from his.base.env import ConfigError
from his.base.errors import Unauthenticated
from his.runtime.config import AuthConfig
from his.runtime.peer_identity import DEFAULT_PREFIX, XFCC, PeerBinding, last_peer_uri

SA = "spiffe://cluster.local/ns/his/sa/"


@pytest.mark.parametrize(
    ("header", "uri"),
    [
        (f'By={SA}iam;Hash=ab;Subject="";URI={SA}patient', f"{SA}patient"),
        # A quoted Subject may hold the separators; an earlier element (anyone's) is ignored.
        (f'URI={SA}iam,By={SA}iam;Subject="CN=a, O=b;c";URI={SA}audit', f"{SA}audit"),
        (f'By={SA}iam;Subject="say \\"hi\\", then";URI={SA}lab', f"{SA}lab"),
        (f"By={SA}iam;Hash=ab", None),  # the last element has no principal
        (f"URI={SA}iam,By={SA}iam;Hash=ab", None),
        (f"By={SA}iam;URI={SA}lab;URI={SA}audit", None),  # two principals name no one workload
        ("", None),
    ],
)
def test_the_principal_is_the_last_elements_uri(header: str, uri: str | None) -> None:
    assert last_peer_uri(header) == uri


def test_the_peer_service_is_named_by_a_principal_of_the_namespace() -> None:
    peers = PeerBinding(SA)
    assert peers.peer_service([(XFCC, f"By=x;URI={SA}patient")]) == "patient"
    assert (
        peers.peer_service([(XFCC, "By=x;URI=spiffe://cluster.local/ns/other/sa/patient")]) is None
    )
    assert peers.peer_service([(XFCC, f"By=x;URI={SA}a/b")]) is None
    assert peers.peer_service([("authorization", "Bearer x")]) is None


def test_a_mismatch_names_both_principals_and_nothing_secret() -> None:
    with pytest.raises(Unauthenticated) as raised:
        PeerBinding(SA).require([(XFCC, f"By=x;URI={SA}orders")], "patient", "the token")

    assert raised.value.reason == "SERVICE_PEER_MISMATCH"
    assert f"{SA}patient" in str(raised.value) and f"{SA}orders" in str(raised.value)


def test_service_peers_are_on_in_the_mesh_and_off_elsewhere() -> None:
    assert AuthConfig.from_env({"HIS_MESH": "istio"}).service_peer_prefix == DEFAULT_PREFIX
    assert AuthConfig.from_env({}).service_peer_prefix == ""
    other = "spiffe://hospital.example/ns/his/sa/"
    assert AuthConfig.from_env({"HIS_AUTH_SERVICE_PEERS": other}).service_peer_prefix == other


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HIS_MESH": "istio", "HIS_AUTH_SERVICE_PEERS": "off"}, "refused with HIS_MESH=istio"),
        ({"HIS_AUTH_SERVICE_PEERS": "cluster.local/ns/his/sa/"}, "must be spiffe://"),
        ({"HIS_AUTH_SERVICE_PEERS": "spiffe://cluster.local/ns/his/"}, "must be spiffe://"),
    ],
)
def test_service_peer_settings_that_would_not_bind_are_refused(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        AuthConfig.from_env(env)
