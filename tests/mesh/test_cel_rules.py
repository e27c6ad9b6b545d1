"""The CRDs' own CEL rules (`x-kubernetes-validations`): what the API server would refuse, the
check refuses first, each finding naming the file, the object, the field, the rule's message and
a fix; correct variants pass; a rule that cannot be evaluated is listed, never passed."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from his.mesh import cel_rules, istio_crds
from his.mesh import schema as mesh_schema
from his.mesh.check import run_check
from his.mesh.findings import Finding
from his.mesh.sources import Source
from tests.mesh.conftest import REPOSITORY, edit, needs_kubectl

FILE = "mesh/istio/policy.yaml"


def check(text: str) -> mesh_schema.SchemaResult:
    return mesh_schema.validate([Source(FILE, doc) for doc in yaml.safe_load_all(text) if doc])


def passes(text: str) -> int:
    """`text` must pass with nothing unchecked: how many rule evaluations it went through."""
    result = check(text)
    assert result.findings == [], "\n".join(map(str, result.findings))
    assert result.unchecked == []
    return result.rules_evaluated


def refused(text: str) -> Finding:
    """`text` must fail on exactly one CEL rule (and nothing else)."""
    result = check(text)
    assert result.unchecked == []
    assert len(result.findings) == 1, "\n".join(map(str, result.findings))
    finding = result.findings[0]
    assert finding.file == FILE
    assert "so the API server refuses the object" in finding.problem
    return finding


VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: patient, namespace: his}
spec:
  hosts: [patient]
  http:
    - timeout: 5s
      retries: {attempts: 2, perTryTimeout: 1500ms, retryOn: unavailable}
      route: [{destination: {host: patient, port: {number: 50051}}}]
"""

DESTINATION_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: patient, namespace: his}
spec:
  host: patient
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
    connectionPool: {tcp: {connectTimeout: 1ms}}
"""

AUTHORIZATION = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: patient, namespace: his}
spec:
  selector: {matchLabels: {app: patient}}
  action: ALLOW
  rules:
    - from: [{source: {principals: [cluster.local/ns/his/sa/scheduling]}}]
"""

REQUEST_AUTHENTICATION = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: his-jwt, namespace: his}
spec:
  jwtRules:
    - issuer: https://iam.his.example.org
      jwksUri: http://iam.his.svc.cluster.local:8080/.well-known/jwks.json
"""


@pytest.mark.parametrize(
    "text", [VIRTUAL_SERVICE, DESTINATION_RULE, AUTHORIZATION, REQUEST_AUTHENTICATION]
)
def test_correct_policy_passes_and_its_rules_were_evaluated(text: str) -> None:
    assert passes(text) > 0


def test_per_try_timeout_below_one_millisecond_is_refused() -> None:
    finding = refused(VIRTUAL_SERVICE.replace("perTryTimeout: 1500ms", "perTryTimeout: 0.5ms"))
    assert finding.subject == "VirtualService his/patient spec.http[0].retries.perTryTimeout"
    assert finding.problem.startswith("must be a valid duration greater than 1ms (got '0.5ms')")
    assert "`duration(self) >= duration('1ms')` is false" in finding.problem
    assert finding.fix.startswith("write a duration of at least 1ms with its unit")


@pytest.mark.parametrize("bad", ["5", "5 seconds", "1d"])
def test_a_duration_istio_cannot_parse_is_refused(bad: str) -> None:
    finding = refused(VIRTUAL_SERVICE.replace("timeout: 5s", f"timeout: '{bad}'"))
    assert finding.subject == "VirtualService his/patient spec.http[0].timeout"
    assert f"(got '{bad}')" in finding.problem
    assert "fails: " in finding.problem  # the conversion error, as the API server gives it


@pytest.mark.parametrize("good", ["1ms", "0.001s", "1h30m", "250ms"])
def test_durations_of_at_least_one_millisecond_pass(good: str) -> None:
    passes(VIRTUAL_SERVICE.replace("perTryTimeout: 1500ms", f"perTryTimeout: {good}"))


def test_destination_rule_durations_are_checked_at_every_level() -> None:
    finding = refused(DESTINATION_RULE.replace("baseEjectionTime: 30s", "baseEjectionTime: 0s"))
    assert finding.subject == (
        "DestinationRule his/patient spec.trafficPolicy.outlierDetection.baseEjectionTime"
    )
    subset = DESTINATION_RULE + (
        "  subsets:\n"
        "    - name: v1\n"
        "      labels: {version: v1}\n"
        "      trafficPolicy: {connectionPool: {http: {idleTimeout: 0ms}}}\n"
    )
    finding = refused(subset)
    assert finding.subject.endswith("spec.subsets[0].trafficPolicy.connectionPool.http.idleTimeout")


def test_authorization_policy_with_selector_and_target_ref_is_refused() -> None:
    text = AUTHORIZATION.replace(
        "  action: ALLOW",
        "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, "
        "name: his}\n  action: ALLOW",
    )
    finding = refused(text)
    assert finding.subject == "AuthorizationPolicy his/patient spec"
    assert finding.problem.startswith("only one of targetRefs or selector can be set:")
    assert finding.fix == "keep only one of the fields the message names"


def test_authorization_policy_service_accounts_with_principals_is_refused() -> None:
    text = AUTHORIZATION.replace(
        "principals: [cluster.local/ns/his/sa/scheduling]",
        "principals: [cluster.local/ns/his/sa/scheduling], serviceAccounts: [his/scheduling]",
    )
    finding = refused(text)
    assert finding.subject == "AuthorizationPolicy his/patient spec.rules[0].from[0].source"
    assert finding.problem.startswith("Cannot set serviceAccounts with namespaces or principals")
    # Service accounts alone are the correct variant.
    passes(
        AUTHORIZATION.replace(
            "principals: [cluster.local/ns/his/sa/scheduling]", "serviceAccounts: [his/scheduling]"
        )
    )


def test_wildcard_in_a_selector_label_is_refused() -> None:
    finding = refused(AUTHORIZATION.replace("{app: patient}", "{app: 'patient-*'}"))
    assert finding.subject == "AuthorizationPolicy his/patient spec.selector.matchLabels.app"
    assert finding.problem.startswith("wildcard not allowed in label value match")
    assert "'*'" in finding.fix


@pytest.mark.parametrize(
    ("uri", "failed_by_error"),
    [
        ("ftp://iam.his.example.org/jwks", False),
        ("iam.his.svc:8080/jwks.json", False),
        ("iam/jwks.json", True),
    ],
)
def test_jwks_uri_without_http_scheme_is_refused(uri: str, failed_by_error: bool) -> None:
    text = REQUEST_AUTHENTICATION.replace(
        "http://iam.his.svc.cluster.local:8080/.well-known/jwks.json", uri
    )
    finding = refused(text)
    assert finding.subject == "RequestAuthentication his/his-jwt spec.jwtRules[0].jwksUri"
    assert finding.problem.startswith("url must have scheme http:// or https://")
    assert ("URL parse error" in finding.problem) is failed_by_error


def test_gateway_server_port_and_service_entry_rules() -> None:
    service_entry = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: his}
spec:
  hosts: [api.example.org]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
"""
    passes(service_entry)
    finding = refused(
        service_entry.replace(
            "[{number: 443, name: https, protocol: TLS}]",
            "[{number: 443, name: a, protocol: TLS}, {number: 443, name: b, protocol: TLS}]",
        )
    )
    assert finding.problem.startswith("port number cannot be duplicated")
    assert finding.subject == "ServiceEntry his/ext spec.ports"


def test_faults_in_drills_are_checked_too() -> None:
    text = VIRTUAL_SERVICE.replace(
        "    - timeout: 5s",
        "    - fault: {delay: {fixedDelay: 0s, percentage: {value: 100}}}\n      timeout: 5s",
    )
    finding = refused(text)
    assert finding.subject.endswith("spec.http[0].fault.delay.fixedDelay")


# --- the carried schema: every rule compiles ---------------------------------------------------


def test_every_rule_of_the_carried_istio_schema_is_evaluated_here() -> None:
    rules = [
        (crd.kind, version.name, place, rule["rule"])
        for crd in istio_crds.load().crds
        for version in crd.versions
        for place, rule in cel_rules.rules_in(version.schema)
    ]
    assert len(rules) > 300  # Istio 1.28 carries 352 rule places (33 distinct rules)
    not_evaluated = [
        (r, cel_rules.compile_error(r[3])) for r in rules if cel_rules.compile_error(r[3])
    ]
    assert not_evaluated == []


def test_builtin_kubernetes_kinds_carry_no_cel_rules() -> None:
    """Why only CRD schemas go through CEL: the built-in kinds' OpenAPI has no rules (the API
    server validates them in code); only the CRD type itself describes the field."""
    definitions = json.loads(
        (
            mesh_schema._schema_root() / mesh_schema._version_dir("1.32.0") / "_definitions.json"
        ).read_text()
    )["$defs"]
    with_rules = [
        name
        for name, definition in definitions.items()
        if cel_rules.RULES in json.dumps(definition) and ".apiextensions." not in name
    ]
    assert with_rules == []


# --- semantics of the evaluator ---------------------------------------------------------------


def outcome(value: Any, schema: dict[str, Any]) -> cel_rules.Outcome:
    return cel_rules.evaluate(value, schema)


def rule(text: str, **extra: str) -> dict[str, Any]:
    return {cel_rules.RULES: [{"rule": text, **extra}]}


def test_rules_apply_to_each_item_and_map_value_and_skip_absent_and_null() -> None:
    schema = {
        "type": "object",
        "properties": {
            "list": {"type": "array", "items": {"type": "integer", **rule("self > 0")}},
            "map": {
                "type": "object",
                "additionalProperties": {"type": "string", **rule("self != ''")},
            },
            "absent": {"type": "string", **rule("false")},
            "null": {"type": "string", "nullable": True, **rule("false")},
        },
    }
    result = outcome({"list": [1, 0, 2], "map": {"a": "x", "b": ""}, "null": None}, schema)
    assert [v.place for v in result.violations] == [("list", 1), ("map", "b")]
    assert [v.message for v in result.violations] == [
        "failed rule: self > 0",
        "failed rule: self != ''",
    ]
    assert result.evaluated == 5


def test_message_expression_field_path_and_escaped_names() -> None:
    schema = {
        "type": "object",
        "properties": {"namespace": {"type": "string"}, "max-size": {"type": "number"}},
        **rule(
            "self.__namespace__ == 'his' && self.max__dash__size > 1.5",
            messageExpression="'namespace ' + self.__namespace__ + ' is not his'",
            fieldPath=".namespace",
        ),
    }
    assert outcome({"namespace": "his", "max-size": 2}, schema).violations == []
    (broken,) = outcome({"namespace": "other", "max-size": 2}, schema).violations
    assert broken.message == "namespace other is not his"
    assert broken.field_path == ".namespace"


def test_unknown_fields_are_pruned_before_the_rules_see_them() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, **rule("self.size() == 1")}
    assert outcome({"a": "x", "typo": "y"}, schema).violations == []


def test_rules_that_cannot_be_evaluated_are_listed_never_passed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", **rule("self == oldSelf")},
            "b": {"type": "string", **rule("self.noSuchFunction()")},
            "c": {"type": "string", **rule("self")},
        },
    }
    result = outcome({"a": "x", "b": "y", "c": "z"}, schema)
    assert result.violations == []
    reasons = {u.place: u.reason for u in result.unevaluated}
    assert reasons[("a",)].startswith("transition rule (reads oldSelf)")
    assert reasons[("b",)].startswith("does not compile here:")
    assert reasons[("c",)] == "returns string, not bool"
    # `oldSelf` inside a string literal is no transition rule.
    assert not cel_rules.is_transition("self != 'oldSelf'")


def test_unevaluated_rules_are_listed_by_the_schema_check() -> None:
    result = mesh_schema.SchemaResult()
    manifest = {"kind": "Thing", "metadata": {"name": "t", "namespace": "his"}, "spec": {"a": 1}}
    openapi = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {"a": {"type": "integer", **rule("self == oldSelf")}},
            }
        },
    }
    assert mesh_schema._check_rules(Source(FILE, manifest), openapi, result) == 0
    assert [str(u) for u in result.unchecked] == [
        "Thing his/t spec.a (CEL rule `self == oldSelf` not evaluated: transition rule (reads "
        "oldSelf): the API server runs it on update only)"
    ]


@pytest.mark.parametrize(
    ("text", "valid", "scheme", "host"),
    [
        ("https://iam.his.example.org/jwks", True, "https", "iam.his.example.org"),
        ("http://[::1]:8080/a", True, "http", "::1"),
        ("HTTP://h/", True, "http", "h"),
        ("/only/a/path", True, "", ""),
        ("mailto:someone", True, "mailto", ""),
        ("http://h:port/", False, "", ""),
        ("iam.his.svc/jwks", False, "", ""),
        ("http://h/%zz", False, "", ""),
        ("", False, "", ""),
        ("http://h/\n", False, "", ""),
    ],
)
def test_urls_parse_as_go_parses_request_uris(
    text: str, valid: bool, scheme: str, host: str
) -> None:
    assert cel_rules.is_url(text) is valid
    if valid:
        parts = cel_rules.parse_request_uri(text)
        assert (parts["scheme"], parts["hostname"]) == (scheme, host)


def test_url_getters_and_ip_functions_in_rules() -> None:
    schema = {
        "type": "string",
        **rule(
            "url(self).getHostname() == 'h' && url(self).getPort() == '80' && "
            "url(self).getEscapedPath() == '/p' && isIP('10.0.0.1') && !isIP('::ffff:10.0.0.1') && "
            "isCIDR('10.0.0.0/8') && !isCIDR('10.0.0.1')"
        ),
    }
    result = outcome("http://h:80/p", schema)
    assert result.unevaluated == []
    assert result.violations == []


# --- his mesh check on the repository --------------------------------------------------------


@needs_kubectl
def test_seeded_cel_mistake_in_the_real_policy_names_its_file(policy_copy: Path) -> None:
    edit(
        policy_copy,
        "mesh/istio/gateway/routes.yaml",
        "perTryTimeout: 1500ms",
        "perTryTimeout: 0.5ms",
    )
    report = run_check(policy_copy)
    broken = [f for f in report.findings if "duration(self)" in f.problem]
    assert broken, "\n".join(map(str, report.findings))
    assert {f.file for f in broken} == {"mesh/istio/gateway/routes.yaml"}
    assert all(f.subject.endswith("retries.perTryTimeout") for f in broken)


@needs_kubectl
def test_the_real_policy_passes_its_cel_rules() -> None:
    report = run_check(REPOSITORY)
    assert [f for f in report.findings if "CRD's rule" in f.problem] == []
    assert not [n for n in report.notes if "CEL rule" in n], report.notes


def test_values_reach_the_rules_as_the_api_server_gets_them() -> None:
    """A YAML date is the string written (kubectl sends JSON), not a value CEL cannot type."""
    schema = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        **rule("self.day == '2024-01-01'"),
    }
    result = outcome({"day": datetime.date(2024, 1, 1)}, schema)
    assert (result.violations, result.unevaluated, result.evaluated) == ([], [], 1)


@pytest.mark.parametrize(
    "text",
    [
        "self.isSorted() && ![3, 1].isSorted()",
        "self.sum() == 6 && [].sum() == 0",
        "self.min() == 1 && self.max() == 3",
        "[1, 2, 1].lastIndexOf(1) == 2 && self.indexOf(5) == -1",
        "sets.contains(self, [1]) && sets.equivalent([1, 2], [2, 1]) && !sets.intersects([1], [2])",
        "'abc123'.find('[0-9]+') == '123' && 'a1b2'.findAll('[0-9]', 1) == ['1']",
        "cel.bind(n, self.size(), n == 3)",
        "self.all(x, x > 0) && self.exists_one(x, x == 2) && self.map(x, x * 2) == [2, 4, 6]",
        "'a-b'.split('-') == ['a', 'b'] && 'AB'.lowerAscii() == 'ab'",
    ],
)
def test_kubernetes_list_set_regex_and_binding_functions(text: str) -> None:
    result = outcome([1, 2, 3], {"type": "array", "items": {"type": "integer"}, **rule(text)})
    assert (result.violations, result.unevaluated) == ([], [])


def test_an_error_inside_a_library_function_fails_the_rule() -> None:
    (broken,) = outcome([], {"type": "array", **rule("self.min() == 0")}).violations
    assert broken.error == "min called on empty list"
