"""The Istio CRD schemas the project carries: built from Istio's CRD file, read from the package.

`his mesh check` validates Istio kinds against `crds/istio.json`, installed with the package
(`crds/NOTICE` says where it comes from; Istio is Apache-2.0, `crds/ISTIO-LICENSE`). The file is
produced by this module from Istio's own CRD file (istio/api,
`kubernetes/customresourcedefinitions.gen.yaml` at a release tag) and never edited by hand:

    python -m his.mesh.istio_crds customresourcedefinitions.gen.yaml --release 1.28.0
    make istio-schema SRC=customresourcedefinitions.gen.yaml RELEASE=1.28.0

Kept of each CRD: group, kind, scope, and per version its name, whether it is served and its
OpenAPI schema with every assertion and every `x-kubernetes-*` extension (CEL rules included);
a schema several versions share (Istio serves v1alpha3 and v1beta1 as v1) is kept once.
Left out: prose (`description`, `example`, `externalDocs`), `status` (istiod writes it), printer
columns and subresources. The output is canonical JSON, so the same input gives the same bytes.
It records the Istio release, the sha256 of the source file, and `content_sha256`, the sha256 of
the kept schemas, which `load` verifies: a hand edit is an error, not a silently different check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from his.mesh.sources import load_all

FORMAT = 1
ARTIFACT = "istio.json"
# In the source tree, where `python -m his.mesh.istio_crds` writes by default.
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "crds" / ARTIFACT
_RELEASE = re.compile(r"^\d+\.\d+\.\d+$")
# Documentation only: no validator reads it, and it is most of the upstream file's size.
_PROSE = frozenset({"description", "example", "externalDocs"})

Schema = dict[str, Any]


class SchemaUnavailable(Exception):
    """The carried Istio schema cannot be used (missing, unreadable, altered); says why."""


@dataclass(frozen=True)
class CrdVersion:
    """One version of an Istio kind: its name, whether istiod serves it, its OpenAPI schema."""

    name: str
    served: bool
    schema: Schema  # openAPIV3Schema of the whole object (without status)


@dataclass(frozen=True)
class Crd:
    """One Istio kind and its versions."""

    group: str
    kind: str
    versions: tuple[CrdVersion, ...]


@dataclass(frozen=True)
class IstioCrds:
    """The carried schema set: the Istio release it belongs to, where it came from, its kinds."""

    release: str  # `1.28.0`
    source_sha256: str  # of the upstream CRD file it was built from
    crds: tuple[Crd, ...]


def map_subschemas(word: str, value: Any, schema: Callable[[Schema], Schema]) -> Any:
    """The value of keyword `word` of an OpenAPI structural schema, with `schema` applied to each
    schema it holds (properties, items, not, a schema-valued additionalProperties, allOf/anyOf/
    oneOf); any other value as it is. The one place that knows where subschemas sit."""
    if word == "properties":
        return {name: schema(sub) for name, sub in value.items()}
    if word in ("items", "not") or (word == "additionalProperties" and isinstance(value, dict)):
        return schema(value)
    if word in ("allOf", "anyOf", "oneOf"):
        return [schema(sub) for sub in value]
    return value


# --- building from Istio's CRD file -----------------------------------------------------------


def build(source: bytes, *, name: str, release: str, origin: str) -> dict[str, Any]:
    """The artifact document of one Istio CRD file (`source`, its bytes; `name`, its file name).

    Raises ValueError when `release` is not `X.Y.Z` or the file holds no usable CRD.
    """
    if not _RELEASE.match(release):
        raise ValueError(f"release {release!r} is not an Istio release like 1.28.0")
    crds: list[dict[str, Any]] = []
    for document in load_all(source.decode("utf-8")):
        if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
            continue
        spec = document["spec"]
        # Istio serves old versions (v1alpha3, v1beta1) with the schema of v1: keep each schema
        # once, under the first version that has it, and let the others name that version.
        schemas: dict[str, Schema] = {}
        versions: list[dict[str, Any]] = []
        for version in spec.get("versions", []):
            schema = object_schema(version.get("schema", {}))
            same = next((first for first, kept in schemas.items() if kept == schema), None)
            if same is None:
                same = version["name"]
                schemas[same] = schema
            versions.append(
                {
                    "name": version["name"],
                    "served": bool(version.get("served", True)),
                    "schema": same,
                }
            )
        crds.append(
            {
                "group": spec["group"],
                "kind": spec["names"]["kind"],
                "scope": spec.get("scope", "Namespaced"),
                "schemas": schemas,
                "versions": versions,
            }
        )
    if not crds:
        raise ValueError(f"{name} holds no CustomResourceDefinition")
    crds.sort(key=lambda crd: (crd["group"], crd["kind"]))
    kinds = [(crd["group"], crd["kind"]) for crd in crds]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"{name} defines a kind twice")
    return {
        "format": FORMAT,
        "istio": release,
        "source": {"file": name, "sha256": hashlib.sha256(source).hexdigest(), "origin": origin},
        "license": "Apache-2.0: Istio Authors; see ISTIO-LICENSE and NOTICE beside this file",
        "generator": "python -m his.mesh.istio_crds (descriptions, status and printer columns "
        "left out; schemas and x-kubernetes-* extensions as upstream)",
        "content_sha256": content_digest(crds),
        "crds": _sorted(crds),
    }


def _sorted(value: Any) -> Any:
    """`value` with the keys of every mapping in it sorted (stable diffs between releases)."""
    if isinstance(value, dict):
        return {word: _sorted(value[word]) for word in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def object_schema(version_schema: Schema) -> Schema:
    """openAPIV3Schema without prose and without `status`."""
    root = _without_prose(version_schema.get("openAPIV3Schema", {}))
    properties = root.get("properties")
    if isinstance(properties, dict):
        root["properties"] = {name: sub for name, sub in properties.items() if name != "status"}
    return root


def _without_prose(node: Schema) -> Schema:
    return {
        word: map_subschemas(word, value, _without_prose)
        for word, value in node.items()
        if word not in _PROSE
    }


def content_digest(crds: Any) -> str:
    """sha256 of schemas as canonical JSON: what a carried file records and `load` verifies."""
    canonical = json.dumps(crds, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def dump(document: dict[str, Any]) -> bytes:
    """The bytes of an artifact document: one-space indent and a final newline (readable diffs
    when the release changes); `build` fixes the order of every key."""
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode()


# --- reading the carried schema ---------------------------------------------------------------


def carried() -> Traversable:
    """The artifact installed with the package."""
    return resources.files("his.mesh") / "crds" / ARTIFACT


def load(artifact: Traversable | None = None) -> IstioCrds:
    """The carried Istio schema (`carried()` unless another artifact is given).

    Raises SchemaUnavailable when the file is missing, is not a format-1 artifact, or its
    schemas do not match the `content_sha256` it records.
    """
    artifact = artifact or carried()
    fix = "reinstall his-mesh, or regenerate it with `make istio-schema`"
    try:
        document = json.loads(artifact.read_bytes())
    except FileNotFoundError as error:
        raise SchemaUnavailable(f"Istio schema missing: no {artifact}; {fix}") from error
    except (OSError, ValueError) as error:  # JSON and UTF-8 decoding errors are ValueErrors
        raise SchemaUnavailable(f"Istio schema unreadable: {artifact}: {error}; {fix}") from error
    try:
        if document["format"] != FORMAT:
            raise ValueError(f"format {document['format']!r}, this code reads {FORMAT}")
        crds = document["crds"]
        if document["content_sha256"] != content_digest(crds):
            raise ValueError("its schemas do not match its content_sha256 (edited by hand?)")
        return IstioCrds(
            release=str(document["istio"]),
            source_sha256=str(document["source"]["sha256"]),
            crds=tuple(
                Crd(
                    group=crd["group"],
                    kind=crd["kind"],
                    versions=tuple(
                        CrdVersion(v["name"], bool(v["served"]), crd["schemas"][v["schema"]])
                        for v in crd["versions"]
                    ),
                )
                for crd in crds
            ),
        )
    except (KeyError, TypeError, ValueError) as error:
        reason = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise SchemaUnavailable(f"Istio schema unreadable: {artifact}: {reason}; {fix}") from error


# --- the command ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m his.mesh.istio_crds SRC --release X.Y.Z [--output FILE] [--check]`."""
    parser = argparse.ArgumentParser(
        prog="python -m his.mesh.istio_crds",
        description="Build the Istio schema `his mesh check` carries from Istio's CRD file.",
    )
    parser.add_argument(
        "source", type=Path, help="istio/api kubernetes/customresourcedefinitions.gen.yaml"
    )
    parser.add_argument("--release", required=True, help="its Istio release tag, e.g. 1.28.0")
    parser.add_argument(
        "--origin",
        help="where the file comes from (default: its istio/api URL at the release tag)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="%(default)s")
    parser.add_argument(
        "--check", action="store_true", help="compare with --output instead of writing it"
    )
    args = parser.parse_args(argv)
    origin = args.origin or (
        f"https://github.com/istio/api/blob/{args.release}/kubernetes/"
        "customresourcedefinitions.gen.yaml"
    )
    try:
        source = args.source.read_bytes()
        document = build(source, name=args.source.name, release=args.release, origin=origin)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, KeyError) as error:
        print(f"istio_crds: cannot build from {args.source}: {error}", file=sys.stderr)
        return 2
    text = dump(document)
    versions = sum(len(crd["versions"]) for crd in document["crds"])
    summary = (
        f"Istio {args.release}, {len(document['crds'])} kinds, {versions} versions, "
        f"{len(text) // 1000} kB, source sha256 {document['source']['sha256']}"
    )
    if args.check:
        current = args.output.read_bytes() if args.output.is_file() else b""
        if current != text:
            print(f"{args.output} differs from what {args.source} gives ({summary})")
            return 1
        print(f"{args.output} is what {args.source} gives ({summary})")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(text)
    print(f"wrote {args.output}: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
