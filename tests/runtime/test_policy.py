"""The policy engine: loads and compiles the Rego files, caches decisions, fails closed, reloads."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from his.base.errors import PermissionDenied
from his.runtime import policy
from his.runtime.policy import Decision, PolicyEngine, PolicyLoadError, Request

ALLOW_ALL = 'decision := {"allow": true, "reason": "ALLOWED", "emergency": false}\n'
DENY_ALL = 'decision := {"allow": false, "reason": "CLOSED_FOR_TODAY", "emergency": false}\n'
ALLOW = Decision(allow=True, reason="ALLOWED", emergency=False)
POLICY_ERROR = Decision(allow=False, reason="POLICY_ERROR", emergency=False)

ROLES = ("DOCTOR", "NURSE", "AUDITOR", "PHARMACIST")
NOTE = Request(roles=("DOCTOR",), action="read", resource="emr.note", department_match=True)


def write_policy(directory: Path, rules: str, name: str = "authz.rego") -> Path:
    """A policy directory whose package his.authz holds `rules`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(f"package his.authz\n\nimport rego.v1\n\n{rules}", "utf-8")
    return directory


def test_load_without_a_directory_reads_the_policies_shipped_in_the_package() -> None:
    engine = PolicyEngine.load()
    assert engine.directory == Path(policy.__file__).parent.parent / "policies"
    assert (engine.directory / "authz.rego").is_file()
    assert engine.decide(NOTE) == ALLOW


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[Request]:
    """Every request the policy is actually evaluated for, in order."""
    seen: list[Request] = []
    evaluate = policy._Compiled.evaluate

    def counting(self: policy._Compiled, request: Request) -> Decision | None:
        seen.append(request)
        return evaluate(self, request)

    monkeypatch.setattr(policy._Compiled, "evaluate", counting)
    return seen


def test_decide_evaluates_a_request_once_and_evaluate_every_time(
    evaluations: list[Request],
) -> None:
    engine = PolicyEngine.load()
    evaluations.clear()  # the load probe
    assert engine.decide(NOTE) == engine.decide(NOTE) == ALLOW
    assert evaluations == [NOTE]
    assert engine.evaluate(NOTE) == engine.evaluate(NOTE) == ALLOW
    assert evaluations == [NOTE, NOTE, NOTE]


def test_reload_reads_the_files_again_and_forgets_cached_decisions(tmp_path: Path) -> None:
    engine = PolicyEngine.load(write_policy(tmp_path, ALLOW_ALL))
    assert engine.decide(NOTE) == ALLOW
    write_policy(tmp_path, DENY_ALL)
    engine.reload()
    assert engine.decide(NOTE) == Decision(False, "CLOSED_FOR_TODAY", False)


def test_a_reload_that_does_not_compile_fails_loudly_and_keeps_the_old_policy(
    tmp_path: Path,
) -> None:
    engine = PolicyEngine.load(write_policy(tmp_path, ALLOW_ALL))
    write_policy(tmp_path, "decision := {\n")
    with pytest.raises(PolicyLoadError):
        engine.reload()
    assert engine.evaluate(NOTE) == ALLOW


def test_the_cache_is_emptied_when_it_reaches_its_bound(
    monkeypatch: pytest.MonkeyPatch, evaluations: list[Request]
) -> None:
    monkeypatch.setattr(policy, "CACHE_LIMIT", 3)
    engine = PolicyEngine.load()
    first, second, third, fourth = [Request((role,), "read", "emr.note") for role in ROLES[:4]]
    for request in (first, second, third, first):
        engine.decide(request)
    evaluations.clear()
    engine.decide(first)
    assert evaluations == []  # three entries: still cached
    engine.decide(fourth)  # the fourth entry empties the cache first
    engine.decide(first)
    assert evaluations == [fourth, first]


def test_loading_a_policy_with_a_syntax_error_fails_loudly(tmp_path: Path) -> None:
    write_policy(tmp_path, ALLOW_ALL)
    write_policy(tmp_path, "decision := {\n", name="broken.rego")
    with pytest.raises(PolicyLoadError, match=r"broken\.rego"):
        PolicyEngine.load(tmp_path)


def test_loading_a_directory_without_policies_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match=r"no \.rego files"):
        PolicyEngine.load(tmp_path)


def test_loading_a_policy_without_a_decision_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="no valid decision"):
        PolicyEngine.load(write_policy(tmp_path, "verdict := true\n"))


def test_opa_test_files_are_not_part_of_the_policy(tmp_path: Path) -> None:
    write_policy(tmp_path, ALLOW_ALL)
    write_policy(tmp_path, "this is not rego\n", name="authz_test.rego")
    assert PolicyEngine.load(tmp_path).decide(NOTE) == ALLOW


def test_the_tables_package_is_served_to_the_rules(tmp_path: Path) -> None:
    (tmp_path / "tables.rego").write_text(
        'package his.authz.tables\n\nimport rego.v1\n\nopen_classes := {"emr.note"}\n', "utf-8"
    )
    write_policy(
        tmp_path,
        "import data.his.authz.tables\n\n"
        'default decision := {"allow": false, "reason": "NOPE", "emergency": false}\n\n'
        'decision := {"allow": true, "reason": "ALLOWED", "emergency": false} if {\n'
        "\tinput.resource in tables.open_classes\n}\n",
    )
    engine = PolicyEngine.load(tmp_path)
    assert engine.decide(NOTE) == ALLOW
    assert engine.decide(Request(("DOCTOR",), "read", "emr.diagnosis")).reason == "NOPE"


def test_a_tables_package_that_reads_input_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "tables.rego").write_text(
        "package his.authz.tables\n\nimport rego.v1\n\nmine := input.roles\n", "utf-8"
    )
    write_policy(tmp_path, ALLOW_ALL)
    with pytest.raises(PolicyLoadError, match="must not read input"):
        PolicyEngine.load(tmp_path)


# Policies that answer the load probe (a read) properly but go wrong for a create.
BROKEN_FOR_CREATE = {
    "no decision": "",
    "allow is not a boolean": '{"allow": "yes", "reason": "ALLOWED", "emergency": false}',
    "emergency missing": '{"allow": true, "reason": "ALLOWED"}',
    "an extra key": '{"allow": true, "reason": "ALLOWED", "emergency": false, "why": 1}',
    "reason not upper snake": '{"allow": false, "reason": "no way", "emergency": false}',
    "allowed with a refusal's reason": '{"allow": true, "reason": "NOPE", "emergency": false}',
    "denied yet ALLOWED": '{"allow": false, "reason": "ALLOWED", "emergency": false}',
    "emergency on a denial": '{"allow": false, "reason": "NOPE", "emergency": true}',
    "not an object": '["ALLOWED"]',
}


@pytest.mark.parametrize("value", BROKEN_FOR_CREATE.values(), ids=BROKEN_FOR_CREATE.keys())
def test_an_evaluation_without_a_valid_decision_denies(tmp_path: Path, value: str) -> None:
    rules = 'decision := {"allow": false, "reason": "NOPE", "emergency": false} if {\n'
    rules += '\tinput.action == "read"\n}\n'
    if value:
        rules += f'\ndecision := {value} if {{\n\tinput.action == "create"\n}}\n'
    engine = PolicyEngine.load(write_policy(tmp_path, rules))
    create = Request(("DOCTOR",), "create", "emr.note")
    assert engine.evaluate(create) == POLICY_ERROR
    assert engine.decide(create) == POLICY_ERROR
    assert engine.decide(create) == POLICY_ERROR


@pytest.mark.parametrize(
    "rules",
    [
        # Two rules disagree: an evaluation error in Rego.
        'decision := {"allow": true, "reason": "ALLOWED", "emergency": false}'
        ' if input.action == "create"\n'
        'decision := {"allow": false, "reason": "NOPE", "emergency": false}'
        ' if input.resource == "emr.note"\n',
        # A builtin fails on the input (strict builtin errors: an error, not "undefined").
        'decision := {"allow": to_number(input.resource) > 0, "reason": "NOPE", "emergency": false}'
        ' if input.action == "create"\n',
    ],
    ids=["conflicting rules", "builtin error"],
)
def test_an_evaluation_error_denies_and_is_logged_without_the_input(
    tmp_path: Path, rules: str, caplog: pytest.LogCaptureFixture
) -> None:
    rules += 'decision := {"allow": false, "reason": "NOPE", "emergency": false}'
    rules += ' if input.action == "read"\n'
    engine = PolicyEngine.load(write_policy(tmp_path, rules))
    create = Request(("DOCTOR",), "create", "emr.note", fields=("Mrs Jane Example",))
    with caplog.at_level(logging.ERROR, logger="his.runtime.policy"):
        assert engine.decide(create) == POLICY_ERROR
    assert caplog.records, "a policy error must be logged"
    assert "create on emr.note" in caplog.text
    assert "Jane" not in caplog.text
    assert "DOCTOR" not in caplog.text


def test_require_returns_the_decision_when_allowed() -> None:
    engine = PolicyEngine.load()
    emergency = Request(("NURSE",), "read", "emr.note", consent="revoked", emergency=True)
    assert engine.require(emergency) == Decision(allow=True, reason="ALLOWED", emergency=True)


def test_require_raises_permission_denied_with_the_reason() -> None:
    engine = PolicyEngine.load()
    locked = Request(("PHARMACIST",), "update", "orders.medication_order", fields=("dosage",))
    with pytest.raises(PermissionDenied) as caught:
        engine.require(locked)
    assert caught.value.reason == "PRESCRIPTION_FIELDS_LOCKED"
    assert caught.value.message == "update on orders.medication_order is not permitted"


def test_require_names_no_attribute_of_the_record() -> None:
    engine = PolicyEngine.load()
    request = Request(("NURSE",), "read", "emr.note", under_care=True, consent="revoked")
    with pytest.raises(PermissionDenied) as caught:
        engine.require(request)
    assert caught.value.reason == "CONSENT_REVOKED"
    assert "consent" not in caught.value.message.lower()
    assert "revoked" not in caught.value.message.lower()


def test_a_policy_error_is_refused_by_require(tmp_path: Path) -> None:
    rules = 'decision := {"allow": true, "reason": "ALLOWED", "emergency": false}'
    rules += ' if input.action == "read"\n'
    engine = PolicyEngine.load(write_policy(tmp_path, rules))
    with pytest.raises(PermissionDenied) as caught:
        engine.require(Request(("DOCTOR",), "delete", "emr.note"))
    assert caught.value.reason == "POLICY_ERROR"


def test_requests_equal_up_to_the_order_of_roles_and_fields_share_one_cache_entry() -> None:
    one = Request(("REGISTRAR", "DOCTOR", "DOCTOR"), "update", "x", fields=("b", "a"))
    other = Request(("DOCTOR", "REGISTRAR"), "update", "x", fields=("a", "b", "a"))
    assert one == other
    assert hash(one) == hash(other)
    assert one.roles == ("DOCTOR", "REGISTRAR")


def test_decisions_from_many_threads_match_the_policy() -> None:
    engine = PolicyEngine.load()
    requests = [
        Request((role,), action, resource, department_match=match, emergency=emergency)
        for role in ROLES
        for action in ("read", "create", "update")
        for resource in ("emr.note", "orders.medication_order", "audit.event")
        for match in (False, True)
        for emergency in (False, True)
    ]
    expected = [engine.evaluate(request) for request in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            assert list(pool.map(engine.decide, requests)) == expected
