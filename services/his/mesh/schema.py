"""Strict schema validation of rendered manifests: Kubernetes, Istio and CloudNativePG kinds.

Kubernetes kinds are checked against the strict JSON schemas that `kubernetes-validate` ships;
Istio kinds against the Istio CRD schemas the package carries (`his.mesh.istio_crds`: built from
Istio's CRD file of one release, installed with the package); the CloudNativePG `Cluster`
against the operator's CRD the package carries (`his.mesh.cnpg_crd`), and the rules its
admission webhook enforces in code (`his.mesh.cnpg_webhook`). All are made strict: an
unknown field is a finding, because the API server prunes it (Kubernetes, CloudNativePG) or Istio
ignores it, and the policy an SRE wrote silently does not apply. Kinds with no schema offline
(Flagger, other CloudNativePG kinds, ...) are listed as unchecked. A missing or damaged carried
schema is an error (`istio_crds.SchemaUnavailable`), never a pass.

The CRDs' own CEL rules (`x-kubernetes-validations`, kept in the carried schema: a duration of at
least 1ms, ports in range, only one of selector/targetRefs...) are evaluated too
(`his.mesh.cel_rules`): each rule the object breaks is a finding, as the API server would refuse
the object; a rule that cannot be evaluated here is listed as unchecked, never passed. Built-in
Kubernetes kinds carry no CEL rules in their OpenAPI schema (the API server validates them in
code), so for them the strict schema is the whole check.

Limits: `format` is not evaluated; cross-object references (a subset named in a VirtualService
but missing in the DestinationRule) are other checks' business.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

# jsonschema ships no type information; `unused-ignore` keeps mypy quiet once stubs are added.
from jsonschema import Draft202012Validator
from jsonschema.exceptions import (
    ValidationError,
    best_match,
)
from referencing import Registry, Resource

from his.mesh import cel_rules, cnpg_crd, cnpg_webhook, istio_crds, quantity
from his.mesh.findings import Finding, located, subject
from his.mesh.istio_crds import map_subschemas
from his.mesh.sources import Source

_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
_OBJECT_META = f"{_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_QUANTITY_DEFINITION = "io.k8s.apimachinery.pkg.api.resource.Quantity"
# OpenAPI annotations that are not JSON Schema assertions. CEL rules are left out of the JSON
# schema: his.mesh.cel_rules evaluates them on the carried schema itself.
_DROPPED = frozenset({"description", "format", "nullable", "example", "externalDocs"})
CNPG_GROUP = "postgresql.cnpg.io"
# What an unknown field does, said in its finding, by schema set.
_IGNORED_BY_ISTIO = " (Istio ignores unknown fields silently)"
_PRUNED = " (the API server drops it, or refuses the object under strict field validation)"
_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_SHORT_LIST = 8  # allowed field names listed in a fix when there are at most this many
_REPR_LIMIT = 60


@dataclass(frozen=True)
class Unchecked:
    """A manifest no schema was checked against, and why."""

    file: str
    subject: str  # `Kind namespace/name`
    reason: str  # `no schema offline`

    def __str__(self) -> str:
        return f"{self.subject} ({self.reason})"


@dataclass(frozen=True)
class SchemaResult:
    """What `validate` found.

    `findings`: one per schema error, in manifest order, each manifest's sorted by field path.
    `unchecked`: manifests no schema covered (print as `not schema-checked: {item}`).
    `checked`: how many manifests each schema set checked (`Kubernetes 1.32`, `Istio 1.28.0`).
    `rules_evaluated`: how many CEL rule evaluations the carried kinds' manifests went through.
    """

    findings: list[Finding] = field(default_factory=list)
    unchecked: list[Unchecked] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    rules_evaluated: int = 0


# --- locating and loading the schemas ---------------------------------------------------------


def _strict(node: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as a JSON schema that rejects unknown fields."""
    # type, enum, required, bounds: data, copied as written; subschemas made strict in turn.
    out: dict[str, Any] = {
        word: map_subschemas(word, value, _strict)
        for word, value in node.items()
        if word not in _DROPPED and not word.startswith("x-kubernetes-")
    }
    if node.get("x-kubernetes-int-or-string"):
        # The CRD spells it as anyOf integer/string; one type list gives a clearer message.
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    # Structural schemas let unknown fields through (the server prunes them); reject them here
    # unless the schema says unknown fields are kept on purpose (EnvoyFilter patch values).
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@dataclass(frozen=True)
class _Carried:
    """A carried schema set (Istio's, CloudNativePG's), made strict: one whole-object schema per
    served version."""

    release: str
    schemas: dict[tuple[str, str, str], dict[str, Any]]  # (group, version, kind) → schema
    # The same as carried (OpenAPI, CEL rules included), for his.mesh.cel_rules.
    openapi: dict[tuple[str, str, str], dict[str, Any]]


def _whole_object(base: str, gvk: tuple[str, str, str], openapi: dict[str, Any]) -> dict[str, Any]:
    """The strict JSON schema of a whole custom object from its CRD's OpenAPI schema: the spec
    as the CRD says, apiVersion and kind fixed, metadata as Kubernetes' ObjectMeta."""
    group, version, kind = gvk
    object_spec = openapi.get("properties", {}).get("spec", {"type": "object"})
    spec_schema = _strict(object_spec)
    spec_schema["type"] = ["object", "null"]  # `spec:` left empty in YAML is null
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{base}/{group}/{version}/{kind}",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": f"{group}/{version}"},
            "kind": {"const": kind},
            "metadata": {"$ref": _OBJECT_META, "required": ["name"]},
            "spec": spec_schema,
            "status": {},  # written by the controller, never by us
        },
    }


@cache
def _istio() -> _Carried:
    """The carried Istio schemas, loaded once. Raises istio_crds.SchemaUnavailable."""
    carried = istio_crds.load()
    schemas: dict[tuple[str, str, str], dict[str, Any]] = {}
    openapi: dict[tuple[str, str, str], dict[str, Any]] = {}
    for crd in carried.crds:
        for version in crd.versions:
            if not version.served:
                continue
            gvk = (crd.group, version.name, crd.kind)
            openapi[gvk] = version.schema
            schemas[gvk] = _whole_object("https://istio.io/crds", gvk, version.schema)
    return _Carried(carried.release, schemas, openapi)


@cache
def _cnpg() -> _Carried:
    """The carried CloudNativePG Cluster schema, loaded once (same shape as the Istio set).
    Raises istio_crds.SchemaUnavailable."""
    carried = cnpg_crd.load()
    openapi = {
        (carried.group, version, carried.kind): schema
        for version, schema in carried.versions.items()
    }
    schemas = {
        gvk: _whole_object("https://cloudnative-pg.io/crds", gvk, schema)
        for gvk, schema in openapi.items()
    }
    return _Carried(carried.release, schemas, openapi)


def cnpg_release() -> str:
    """The CloudNativePG release of the carried Cluster CRD (`1.30.0`). Raises
    istio_crds.SchemaUnavailable."""
    return _cnpg().release


def istio_release() -> str:
    """The Istio release of the carried schema (`1.28.0`). Raises istio_crds.SchemaUnavailable."""
    return _istio().release


def _version_dir(kubernetes_version: str) -> str:
    """The strict schema folder of kubernetes-validate for a Kubernetes version: the newest
    it ships that is not newer than the version asked for (its own rule)."""
    wanted = _major_minor(kubernetes_version)
    shipped = sorted(
        (_major_minor(entry.name), entry.name)
        for entry in _schema_root().iterdir()
        if entry.name.endswith("-local-strict")
    )
    if not shipped:
        raise ValueError("kubernetes-validate ships no strict schemas")
    first, last = shipped[0][0], shipped[-1][0]
    if not first <= wanted <= last:
        raise ValueError(
            f"kubernetes-validate has schemas for Kubernetes {first[0]}.{first[1]} to "
            f"{last[0]}.{last[1]}, not {kubernetes_version}"
        )
    return [name for version, name in shipped if version <= wanted][-1]


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"^v?(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"not a Kubernetes version: {version!r}")
    return int(match[1]), int(match[2])


def _schema_root() -> Traversable:
    return resources.files("kubernetes_validate") / "kubernetes-json-schema"


def _read_json(directory: str, name: str) -> Any:
    return json.loads((_schema_root() / directory / name).read_text(encoding="utf-8"))


@cache
def _kubernetes(directory: str) -> tuple[Registry[Any], frozenset[str]]:
    """The definitions registry of one Kubernetes version, and its built-in API groups."""
    definitions = _read_json(directory, "_definitions.json")
    # kubernetes-validate types a quantity as any string; the API server parses it, and
    # refuses `10GB`: check it as the CRDs spell a quantity (a pattern applies to strings only).
    definitions["$defs"][_QUANTITY_DEFINITION] = {
        "type": ["string", "number", "null"],
        "pattern": quantity.PATTERN,
    }
    groups = frozenset(
        gvk.get("group", "")
        for definition in definitions["$defs"].values()
        for gvk in definition.get("x-kubernetes-group-version-kind", [])
    )
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    return registry, groups


@cache
def _kubernetes_validator(directory: str, api_version: str, kind: str) -> Any:
    """A validator for one built-in kind, or None when this Kubernetes version has no such kind.

    `kubernetes_validate.validate` stops at the first error; its schema files are read here so
    that every error of a manifest is reported at once.
    """
    # kubernetes-validate's file naming: `apps/v1` → apps-v1, `networking.k8s.io/v1` →
    # networking-v1, core `v1` → v1.
    suffix = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = _read_json(directory, f"{kind.lower()}-{suffix}.json")
    except FileNotFoundError:
        return None
    registry, _ = _kubernetes(directory)
    return Draft202012Validator(schema, registry=registry)


@cache
def _custom_validator(directory: str, gvk: tuple[str, str, str]) -> Any:
    registry, _ = _kubernetes(directory)  # for ObjectMeta
    carried = _cnpg() if gvk[0] == CNPG_GROUP else _istio()
    return Draft202012Validator(carried.schemas[gvk], registry=registry)


# --- validating -------------------------------------------------------------------------------


def validate(manifests: Sequence[Source], *, kubernetes_version: str = "1.32.0") -> SchemaResult:
    """Check every manifest strictly against its schema.

    Built-in Kubernetes kinds use kubernetes-validate's strict schemas for `kubernetes_version`
    (ValueError when the package has none for it); `*.istio.io` kinds use the carried Istio
    schema and the CloudNativePG Cluster the carried CloudNativePG CRD
    (`istio_crds.SchemaUnavailable` when one is missing or damaged: never a silent pass). Any
    other kind is listed as unchecked.
    """
    directory = _version_dir(kubernetes_version)
    registry_groups = _kubernetes(directory)[1]
    istio, cnpg = _istio(), _cnpg()
    kubernetes_name, istio_name = f"Kubernetes {_dotted(directory)}", f"Istio {istio.release}"
    cnpg_name = f"CloudNativePG {cnpg.release}"
    cnpg_kinds = {k for _, _, k in cnpg.schemas}
    result = SchemaResult()
    evaluated = 0
    for source in manifests:
        manifest = source.manifest
        api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str) or not kind:
            result.findings.append(
                Finding(
                    source.file,
                    subject(manifest),
                    "missing apiVersion or kind",
                    "set both (`kubectl api-resources` lists them)",
                )
            )
            continue
        group, _, version = api_version.rpartition("/")
        carried = (
            (istio, istio_name, _IGNORED_BY_ISTIO)
            if group.endswith(".istio.io")
            else (cnpg, cnpg_name, _PRUNED)
            if group == CNPG_GROUP and kind in cnpg_kinds
            else None
        )
        if carried is not None:
            schemas, name, ignored = carried
            gvk = (group, version, kind)
            result.checked[name] = result.checked.get(name, 0) + 1
            result.findings.extend(
                _check_carried(source, schemas, name, directory, gvk, ignored=ignored)
            )
            if gvk in schemas.openapi:
                evaluated += _check_rules(source, schemas.openapi[gvk], result)
            if schemas is cnpg and kind == "Cluster":
                # What the operator's admission webhook refuses beyond its CRD schema.
                for parts, problem, fix in cnpg_webhook.check(manifest):
                    result.findings.extend(_located(source, parts, _path(parts), problem, fix))
        elif group in registry_groups:
            result.checked[kubernetes_name] = result.checked.get(kubernetes_name, 0) + 1
            validator = _kubernetes_validator(directory, api_version, kind)
            if validator is None:
                result.findings.append(
                    Finding(
                        source.file,
                        subject(manifest),
                        f"{kubernetes_name} has no kind {kind} in {api_version}",
                        "check apiVersion and kind against `kubectl api-resources`",
                    )
                )
                continue
            result.findings.extend(_errors(source, validator))
        else:
            result.unchecked.append(Unchecked(source.file, subject(manifest), "no schema offline"))
    return replace(result, rules_evaluated=evaluated)


def _dotted(directory: str) -> str:
    major, minor = _major_minor(directory)
    return f"{major}.{minor}"


def _check_carried(
    source: Source,
    carried: _Carried,
    name: str,
    directory: str,
    gvk: tuple[str, str, str],
    *,
    ignored: str,
) -> list[Finding]:
    schemas = carried.schemas
    if gvk in schemas:
        return _errors(source, _custom_validator(directory, gvk), ignored=ignored)
    group, version, kind = gvk
    manifest = source.manifest
    served = sorted(v for g, v, k in schemas if (g, k) == (group, kind))
    if served:
        problem = f"{name} does not serve {kind} in {group}/{version}"
        fix = f"use apiVersion {group}/{_preferred(served)}"
    else:
        kinds = sorted({k for g, _, k in schemas if g == group})
        problem = f"{name} has no kind {kind} in {group}"
        fix = _suggest(kind, kinds) or f"kinds of {group}: {', '.join(kinds) or 'none'}"
    return [Finding(source.file, subject(manifest), problem, fix)]


def _check_rules(source: Source, openapi: dict[str, Any], result: SchemaResult) -> int:
    """The CRD's CEL rules on one manifest: each broken rule a finding, each rule that could not
    be evaluated listed as unchecked. Returns how many rule evaluations were made."""
    manifest = source.manifest
    outcome = cel_rules.evaluate(manifest, openapi)
    kind = str(manifest.get("kind", "")).lower()
    for broken in outcome.violations:
        # The rule's fieldPath (`.ports`) narrows the place, as in the API server's message.
        where = _path(broken.place) + broken.field_path if broken.place else broken.field_path
        got = "" if isinstance(broken.value, dict | list) else f" (got {_short(broken.value)})"
        outcome_text = f"fails: {broken.error}" if broken.error else "is false"
        result.findings.extend(
            _located(
                source,
                broken.place,
                where.lstrip("."),
                f"{broken.message}{got}: the CRD's rule `{broken.rule}` {outcome_text}, "
                "so the API server refuses the object",
                _rule_fix(broken.rule, kind, broken.place),
            )
        )
    for skipped in outcome.unevaluated:
        result.unchecked.append(
            Unchecked(
                source.file,
                subject(manifest, _path(skipped.place)),
                f"CEL rule `{skipped.rule}` not evaluated: {skipped.reason}",
            )
        )
    return outcome.evaluated


# How to satisfy the rules Istio's CRDs carry, by what the rule tests; others get the general fix.
_RULE_FIXES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"duration\(self\) >= duration\('([^']+)'\)"),
        "write a duration of at least {0} with its unit, e.g. 250ms, 2s, 1m (Go syntax)",
    ),
    (re.compile(r"0 < (?:self|int\(key\)) && "), "use a port number from 1 to 65535"),
    (re.compile(r"\? 1 : 0\) \+"), "keep only one of the fields the message names"),
    (re.compile(r"contains\(\"\*\"\)"), "remove the '*': name the labels and values exactly"),
    (re.compile(r"getScheme\(\)"), "write an absolute URL with a scheme the message allows"),
    (re.compile(r"^self\.size\(\) == 0$"), "leave it out"),
)


def _rule_fix(rule: str, kind: str, place: Sequence[int | str]) -> str:
    for pattern, fix in _RULE_FIXES:
        if match := pattern.search(rule):
            return fix.format(*match.groups())
    return f"change it so that the rule holds (see {_explain_command(kind, place)})"


def _preferred(versions: list[str]) -> str:
    """The most stable version name (v1 before v1beta1 before v1alpha3)."""
    return min(versions, key=lambda v: ("alpha" in v, "beta" in v, v))


def _errors(source: Source, validator: Any, *, ignored: str = "") -> list[Finding]:
    manifest = source.manifest
    kind = str(manifest.get("kind", "")).lower()
    found: dict[tuple[tuple[tuple[int, int | str], ...], str], tuple[list[int | str], str]] = {}
    for error in validator.iter_errors(manifest):
        for parts, problem, fix in _explain(error, kind, ignored=ignored):
            found.setdefault((_sort_key(parts), problem), (parts, fix))
    return [
        finding
        for (_, problem), (parts, fix) in sorted(found.items())
        for finding in _located(source, parts, _path(parts), problem, fix)
    ]


def _located(
    source: Source, parts: Sequence[int | str], where: str, problem: str, fix: str
) -> list[Finding]:
    """A finding about the field at `parts`: named in the patch that wrote it, if one did."""
    return located(
        source.file, source.manifest, where, problem, fix, writers=source.written_by(parts)
    )


Explained = tuple[list[int | str], str, str]  # field path, problem, fix


def _explain(error: ValidationError, kind: str, *, ignored: str) -> Iterator[Explained]:
    """One validation error as findings (an object with two unknown fields gives two)."""
    parts: list[int | str] = list(error.absolute_path)
    # jsonschema types these as unions with its Unset marker; here they are always set.
    schema: Any = error.schema
    value: Any = error.validator_value
    instance, word = error.instance, error.validator
    explain = _explain_command(kind, parts)
    if word in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        for name in instance:
            if name in allowed or any(re.search(pattern, name) for pattern in patterns):
                continue
            fix = _suggest(name, allowed)
            if not fix:
                fix = (
                    f"remove it; allowed here: {', '.join(allowed)}"
                    if 0 < len(allowed) <= _SHORT_LIST
                    else f"remove it, or check the spelling against {explain}"
                )
            yield [*parts, name], f"unknown field {name!r}{ignored}", fix
    elif word == "required" and isinstance(instance, dict):
        for name in value:
            if name not in instance:
                yield parts, f"missing required field {name!r}", f"add {name!r} (see {explain})"
    elif word == "type":
        types = [t for t in _types(value) if t != "null"]
        wanted = " or ".join(types)
        fix = f"write it as {_a(wanted)}"
        if isinstance(instance, str) and "integer" in types and instance.strip().isdigit():
            fix = "remove the quotes: it is a number"
        yield parts, f"expected {wanted}, got {_short(instance)}", fix
    elif word == "enum":
        options = [str(v) for v in value if v is not None]
        fix = _suggest(str(instance), options) or f"use one of: {', '.join(options)}"
        yield parts, f"{_short(instance)} is not an allowed value", fix
    elif word in ("minimum", "maximum") and isinstance(instance, int | float):
        bound = "at least" if word == "minimum" else "at most"
        yield parts, f"{_short(instance)} is not {bound} {value}", f"use a value of {bound} {value}"
    elif word == "pattern" and value == quantity.PATTERN:
        yield parts, f"{_short(instance)} is {quantity.MESSAGE}", quantity.fix(str(instance))
    elif word in ("oneOf", "anyOf"):
        yield from _explain_choice(error, parts, kind, ignored=ignored)
    else:
        yield parts, _shorten(error.message), f"see {explain}"


def _explain_choice(
    error: ValidationError, parts: list[int | str], kind: str, *, ignored: str
) -> Iterator[Explained]:
    """A failed oneOf/anyOf, as the most specific thing that is wrong."""
    branches: Any = error.validator_value
    instance = error.instance
    # Istio's mutually exclusive fields: oneOf [not anyOf required..., required [a], ...].
    exclusive = [
        name
        for branch in branches
        for name in branch.get("required", [])
        if set(branch) == {"required"}
    ]
    if exclusive and all(set(b) <= {"required", "not"} for b in branches):
        present = [name for name in exclusive if isinstance(instance, dict) and name in instance]
        listed = ", ".join(repr(name) for name in exclusive)
        if len(present) > 1:
            yield (
                parts,
                f"only one of {listed} may be set (found {', '.join(map(repr, present))})",
                "keep one of them",
            )
        else:
            yield parts, f"exactly one of {listed} must be set", "set one of them"
        return
    if not error.context:  # a oneOf valid under several branches
        yield parts, _shorten(error.message), f"see {_explain_command(kind, parts)}"
        return
    if all(sub.validator == "type" for sub in error.context):
        types = sorted({t for sub in error.context for t in _types(sub.validator_value)} - {"null"})
        wanted = " or ".join(types)
        yield parts, f"expected {wanted}, got {_short(instance)}", f"write it as {_a(wanted)}"
        return
    yield from _explain(best_match(error.context), kind, ignored=ignored)


def _explain_command(kind: str, parts: Sequence[int | str]) -> str:
    """`kubectl explain` of the field at `parts` (list indices dropped, as kubectl wants)."""
    return f"`kubectl explain {'.'.join([kind, *(p for p in parts if isinstance(p, str))])}`"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _types(value: Any) -> list[str]:
    return [str(t) for t in value] if isinstance(value, list) else [str(value)]


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _path(parts: Sequence[int | str]) -> str:
    """`spec.http[0].retries`; keys that are not plain names are quoted (`labels["app.io/x"]`)."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _SIMPLE_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text


def _sort_key(parts: Sequence[int | str]) -> tuple[tuple[int, int | str], ...]:
    # Indices sort numerically (http[2] before http[10]); names and indices never compare.
    return tuple((0, p) if isinstance(p, int) else (1, p) for p in parts)


def _short(value: Any) -> str:
    return _shorten(repr(value), _REPR_LIMIT)


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
