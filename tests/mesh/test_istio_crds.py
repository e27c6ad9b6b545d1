"""The Istio schema the package carries: what it is (Istio 1.28, unaltered, every kind the
repository uses, CEL rules kept, license beside it), how it is built from Istio's CRD file
(deterministic, prose and status left out) and that a missing or damaged one is an error."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from his.mesh.istio_crds import (
    FORMAT,
    SchemaUnavailable,
    build,
    carried,
    dump,
    load,
    main,
    map_subschemas,
)
from his.mesh.sources import TREES, documents
from tests.mesh.conftest import REPOSITORY

# --- the carried artifact ---------------------------------------------------------------------


def test_the_carried_schema_is_istio_1_28_as_the_generator_wrote_it() -> None:
    istio = load()  # verifies content_sha256: the schemas are the ones built from the source
    assert istio.release.startswith("1.28.")
    assert len(istio.source_sha256) == 64
    int(istio.source_sha256, 16)
    text = carried().read_bytes()
    document = json.loads(text)
    assert document["format"] == FORMAT
    assert document["source"]["origin"].endswith(
        f"/istio/api/blob/{istio.release}/kubernetes/customresourcedefinitions.gen.yaml"
    )
    # Byte for byte what `dump` writes: nothing reformatted or edited by hand.
    assert dump(document) == text


def test_the_carried_schema_serves_every_istio_kind_the_repository_uses() -> None:
    served = {
        (crd.group, version.name, crd.kind)
        for crd in load().crds
        for version in crd.versions
        if version.served
    }
    used = {
        (api_version.rpartition("/")[0], api_version.rpartition("/")[2], manifest["kind"])
        for tree in TREES
        for path in sorted((REPOSITORY / tree).rglob("*.yaml"))
        for manifest in documents(path)
        if (api_version := str(manifest.get("apiVersion", ""))).split("/")[0].endswith(".istio.io")
    }
    assert {kind for _, _, kind in used} >= {
        "AuthorizationPolicy",
        "DestinationRule",
        "Gateway",
        "PeerAuthentication",
        "RequestAuthentication",
        "VirtualService",
    }
    assert used <= served, sorted(used - served)


def _keywords(schema: dict[str, Any]) -> set[str]:
    """Every keyword used anywhere in a schema (property names are not keywords)."""
    found: set[str] = set()

    def visit(node: dict[str, Any]) -> dict[str, Any]:
        for word, value in node.items():
            found.add(word)
            map_subschemas(word, value, visit)
        return node

    visit(schema)
    return found


def test_the_carried_schema_keeps_cel_rules_and_leaves_prose_out() -> None:
    words = set().union(
        *(_keywords(version.schema) for crd in load().crds for version in crd.versions)
    )
    assert {"x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields"} <= words
    assert {"oneOf", "enum", "required", "format"} <= words
    assert not words & {"description", "example", "externalDocs"}


def test_istios_license_and_notice_are_installed_beside_it() -> None:
    istio = load()
    folder = resources.files("his.mesh") / "crds"
    license_text = (folder / "ISTIO-LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text
    notice = (folder / "NOTICE").read_text(encoding="utf-8")
    assert f"at tag {istio.release}" in notice
    assert istio.source_sha256 in notice
    package_data = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))
    listed = package_data["tool"]["setuptools"]["package-data"]["his.mesh"]
    assert {"crds/istio.json", "crds/ISTIO-LICENSE", "crds/NOTICE"} <= set(listed)


# --- building it from Istio's CRD file --------------------------------------------------------

CRD_FILE = """\
# a CRD file in Istio's layout, two kinds, one with three versions
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.demo.istio.io, labels: {release: istio}}
spec:
  group: demo.istio.io
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      additionalPrinterColumns:
        - {name: Age, type: date, jsonPath: .metadata.creationTimestamp, description: Age.}
      subresources: {status: {}}
      schema: &widget
        openAPIV3Schema:
          description: A widget.
          type: object
          properties:
            spec:
              description: What the widget does.
              type: object
              x-kubernetes-validations:
                - {rule: "has(self.size)", message: size is required}
              properties:
                description: {description: A field named description., type: string}
                size: {type: integer, format: int32, minimum: 0, example: 3}
                mode:
                  oneOf:
                    - {not: {anyOf: [{required: [a]}]}}
                    - {required: [a]}
                  properties: {a: {type: string, externalDocs: {url: "https://x"}}}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
    - name: v1beta1
      served: true
      storage: false
      schema: *widget
    - name: v1alpha1
      served: false
      storage: false
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.demo.istio.io}
spec:
  group: demo.istio.io
  names: {kind: Gadget}
  scope: Cluster
  versions:
    - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}
"""


def _build(text: str = CRD_FILE) -> dict[str, Any]:
    return build(text.encode(), name="crds.gen.yaml", release="1.28.0", origin="test")


def test_build_keeps_schemas_and_cel_rules_and_drops_prose_status_and_columns() -> None:
    document = _build()
    assert document["istio"] == "1.28.0"
    assert document["source"] == {
        "file": "crds.gen.yaml",
        "sha256": hashlib.sha256(CRD_FILE.encode()).hexdigest(),
        "origin": "test",
    }
    gadget, widget = document["crds"]  # sorted by group and kind
    assert (gadget["kind"], gadget["scope"], widget["kind"]) == ("Gadget", "Cluster", "Widget")
    assert widget["versions"] == [
        {"name": "v1", "schema": "v1", "served": True},
        {"name": "v1beta1", "schema": "v1", "served": True},  # the same schema, kept once
        {"name": "v1alpha1", "schema": "v1alpha1", "served": False},
    ]
    spec = widget["schemas"]["v1"]["properties"]["spec"]
    assert widget["schemas"]["v1"]["properties"].keys() == {"spec"}  # no status
    assert spec["x-kubernetes-validations"] == [
        {"message": "size is required", "rule": "has(self.size)"}
    ]
    assert spec["properties"]["description"] == {"type": "string"}  # a field, not prose
    assert spec["properties"]["size"] == {"format": "int32", "minimum": 0, "type": "integer"}
    assert spec["properties"]["mode"]["properties"]["a"] == {"type": "string"}
    assert "description" not in spec


def test_the_same_file_gives_the_same_bytes_and_check_says_whether_they_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = tmp_path / "crds.gen.yaml", tmp_path / "out" / "istio.json"
    source.write_text(CRD_FILE, encoding="utf-8")
    argv = [str(source), "--release", "1.28.0", "--output", str(output)]
    assert main(argv) == 0
    first = output.read_bytes()
    assert main(argv) == 0
    assert output.read_bytes() == first
    assert main([*argv, "--check"]) == 0
    output.write_bytes(first.replace(b'"minimum": 0', b'"minimum": 1'))
    assert main([*argv, "--check"]) == 1
    assert "differs" in capsys.readouterr().out


def test_load_resolves_shared_schemas(tmp_path: Path) -> None:
    artifact = tmp_path / "istio.json"
    artifact.write_bytes(dump(_build()))
    istio = load(artifact)
    assert istio.release == "1.28.0"
    widget = next(crd for crd in istio.crds if crd.kind == "Widget")
    v1, v1beta1, v1alpha1 = widget.versions
    assert (v1.name, v1beta1.name, v1alpha1.served) == ("v1", "v1beta1", False)
    assert v1beta1.schema == v1.schema != v1alpha1.schema


def test_a_release_that_is_no_release_and_a_file_without_crds_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "crds.gen.yaml"
    source.write_text(CRD_FILE, encoding="utf-8")
    output = tmp_path / "istio.json"
    assert main([str(source), "--release", "1.28", "--output", str(output)]) == 2
    source.write_text("kind: ConfigMap\n", encoding="utf-8")
    assert main([str(source), "--release", "1.28.0", "--output", str(output)]) == 2
    assert "holds no CustomResourceDefinition" in capsys.readouterr().err
    assert not output.exists()


# --- a missing or damaged artifact is an error ------------------------------------------------


def _altered(document: dict[str, Any]) -> None:
    widget = document["crds"][1]["schemas"]["v1"]
    widget["properties"]["spec"]["properties"]["size"]["minimum"] = 1


def _other_format(document: dict[str, Any]) -> None:
    document["format"] = FORMAT + 1


def _no_crds(document: dict[str, Any]) -> None:
    del document["crds"]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (_altered, "its schemas do not match its content_sha256"),
        (_other_format, f"format {FORMAT + 1}, this code reads {FORMAT}"),
        (_no_crds, "no 'crds'"),
    ],
)
def test_a_damaged_artifact_is_refused(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], said: str
) -> None:
    document = _build()
    change(document)
    artifact = tmp_path / "istio.json"
    artifact.write_bytes(dump(document))
    expected = re.escape(f"Istio schema unreadable: {artifact}: {said}")
    with pytest.raises(SchemaUnavailable, match=expected):
        load(artifact)


def test_a_missing_or_unparsable_artifact_is_refused(tmp_path: Path) -> None:
    artifact = tmp_path / "istio.json"
    with pytest.raises(SchemaUnavailable, match=re.escape(f"Istio schema missing: no {artifact}")):
        load(artifact)
    artifact.write_bytes(dump(_build())[:500])
    with pytest.raises(SchemaUnavailable, match=r"Istio schema unreadable: .*: line \d+ column"):
        load(artifact)
