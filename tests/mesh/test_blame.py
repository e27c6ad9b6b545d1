"""Which kustomize patch wrote a field of a rendered object, by the field's path: the patch an
SRE must edit, never one that wrote another field (or another route) of the same object."""

from __future__ import annotations

from typing import Any

from his.mesh.kustomize_lint import Patch, written_by

_VS: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "patient", "namespace": "his"},
    "spec": {
        "http": [
            {"name": "reads", "fault": {"abort": {"httpStatus": 503}}},
            {"name": "writes", "fault": {"delay": {"fixedDelay": "2s"}}},
        ]
    },
}
_TARGET = {"kind": "VirtualService", "name": "patient"}


def _json6902(path: str, value: Any, entry: str = "patches[0]") -> Patch:
    return Patch(
        "overlays/dev/kustomization.yaml",
        entry,
        "overlays/dev/drill.yaml",
        _TARGET,
        ([{"op": "add", "path": path, "value": value}],),
    )


def test_a_json_patch_is_blamed_for_the_route_it_adds_a_fault_to_only() -> None:
    patch = _json6902("/spec/http/1/fault", {"delay": {"fixedDelay": "2s"}})
    assert written_by([patch], _VS, ("spec", "http", 1, "fault")) is patch
    assert written_by([patch], _VS, ("spec", "http", 1, "fault", "delay")) is patch
    assert written_by([patch], _VS, ("spec", "http", 0, "fault")) is None
    assert written_by([patch], _VS, ("spec", "http", 1)) is None  # the route is the file's


def test_an_appending_json_patch_writes_the_last_item() -> None:
    patch = _json6902("/spec/http/-", {"name": "writes", "fault": {}})
    assert written_by([patch], _VS, ("spec", "http", 1, "fault")) is patch
    assert written_by([patch], _VS, ("spec", "http", 0, "fault")) is None


def test_a_json_patch_value_must_hold_the_rest_of_the_path() -> None:
    patch = _json6902("/spec/http/0", {"name": "reads"})
    assert written_by([patch], _VS, ("spec", "http", 0, "name")) is patch
    assert written_by([patch], _VS, ("spec", "http", 0, "fault")) is None


def test_a_strategic_merge_patch_writes_what_it_holds_matching_items_by_name() -> None:
    document = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "patient", "namespace": "his"},
        "spec": {"http": [{"name": "writes", "fault": {"delay": {"fixedDelay": "2s"}}}]},
    }
    patch = Patch("k.yaml", "patches[1]", "p.yaml", None, (document,))
    assert written_by([patch], _VS, ("spec", "http", 1, "fault")) is patch
    assert written_by([patch], _VS, ("spec", "http", 0, "fault")) is None
    assert written_by([patch], _VS, ()) is None  # the object itself is its file's


def test_the_overlay_patch_listed_last_wins() -> None:
    first = _json6902("/spec/http/1/fault", {}, "patches[0]")
    last = _json6902("/spec/http/1/fault", {}, "patches[1]")
    nested = Patch("base/kustomization.yaml", "patches[0]", None, _TARGET, first.content)
    # patches_of lists the overlay's kustomization first, then what it builds on.
    assert written_by([first, last, nested], _VS, ("spec", "http", 1, "fault")) is last


def test_a_patch_for_another_object_is_never_blamed() -> None:
    patch = Patch(
        "k.yaml",
        "patches[0]",
        "p.yaml",
        {"kind": "VirtualService", "name": "lab"},
        ([{"op": "add", "path": "/spec/http/1/fault", "value": {}}],),
    )
    assert written_by([patch], _VS, ("spec", "http", 1, "fault")) is None
