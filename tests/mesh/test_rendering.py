"""The tests' rendering shortcut (tests/mesh/rendering.py) gives what kubectl gives: a spliced
render equals kubectl's, and edits the splice cannot follow go to kubectl. (The whole suite
also runs with HIS_MESH_TEST_RENDER=verify, which compares every splice with kubectl.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from his.mesh.check import OVERLAYS
from his.mesh.render import render as kubectl_render
from tests.mesh.conftest import REPOSITORY, edit, needs_kubectl
from tests.mesh.rendering import MODE, Renderer

pytestmark = [
    needs_kubectl,
    pytest.mark.skipif(MODE == "kubectl", reason="HIS_MESH_TEST_RENDER=kubectl: no splicing"),
]

Seed = Callable[[Path], None]
DEV = f"{OVERLAYS}/dev"


def _route_timeout(root: Path) -> None:
    edit(root, "mesh/istio/virtual-services/audit.yaml", "timeout: 10s", "timeout: 7s")


def _network_policy_port(root: Path) -> None:
    edit(root, "deploy/kustomize/components/network-policies/audit.yaml", "50051", "50052")


def _service_port_name(root: Path) -> None:
    edit(root, "deploy/kustomize/base/lab/service.yaml", "- name: grpc-web", "- name: http")


def _overlay_patch(root: Path) -> None:
    edit(root, f"{DEV}/hpa.yaml", "value: 1", "value: 2")


def _deployment_image(root: Path) -> None:
    # Images are rewritten by the overlay's `images` transformer: never spliced.
    edit(root, "deploy/kustomize/base/lab/deployment.yaml", "image: his", "image: his-other")


def _yaml_1_1_boolean(root: Path) -> None:
    # `on` is true to PyYAML and the string "on" to kustomize: never spliced.
    edit(
        root,
        "mesh/istio/virtual-services/audit.yaml",
        "timeout: 10s\n",
        "timeout: 10s\n      headers:\n        request:\n          set:\n            x-drill: on\n",
    )


@pytest.mark.parametrize(
    ("seed", "how"),
    [
        (_route_timeout, "spliced"),
        (_network_policy_port, "spliced"),
        (_service_port_name, "spliced"),
        (_overlay_patch, "kubectl"),
        (_deployment_image, "kubectl"),
        (_yaml_1_1_boolean, "kubectl"),
    ],
    ids=["route", "network-policy", "service", "overlay-patch", "image", "yaml-1.1-scalar"],
)
def test_a_render_equals_kubectl_and_only_plain_edits_are_spliced(
    policy_copy: Path, seed: Seed, how: str
) -> None:
    renderer = Renderer(REPOSITORY, kubectl_render)
    seed(policy_copy)
    got = renderer(policy_copy / DEV)
    assert got == kubectl_render(policy_copy / DEV)
    # The repository's render by kubectl, then the copy's: spliced, or by kubectl again.
    spliced = how == "spliced"
    assert renderer.counts["spliced"] == int(spliced), renderer.counts
    assert renderer.counts["kubectl"] == (1 if spliced else 2), renderer.counts
    assert renderer(REPOSITORY / DEV) == kubectl_render(REPOSITORY / DEV)
    assert renderer.counts["unchanged"] == 1, renderer.counts
