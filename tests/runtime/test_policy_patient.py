"""The PATIENT role in the Rego policies: a signed-in patient's own records only (patients.rego).

Written from the rule, not from the Rego: what a patient may do at all (choose a department, a
schedule, a free slot), what only with their own record (read their demographics; book, read and
cancel their appointments), and that nothing else is ever allowed, emergency or not.
"""

from __future__ import annotations

import pytest

from his.base.identity import STAFF_ROLES
from his.runtime.policy import Decision, PolicyEngine, Request
from tests.runtime.test_policy_matrix import ACTIONS, GRID, assert_consistent

ALLOW = Decision(allow=True, reason="ALLOWED", emergency=False)

# Allowed whatever the record (no patient data in them).
ANYWAY = {
    ("iam.department", "read"),
    ("scheduling.schedule", "read"),
    ("scheduling.slot", "read"),
}
# Allowed on the caller's own record only; otherwise NOT_OWN.
OWN = {
    ("patient.demographics", "read"),
    ("scheduling.appointment", "read"),
    ("scheduling.appointment", "create"),
}
CANCEL = ("status", "cancel_reason")


def deny(reason: str) -> Decision:
    """A refusal for `reason`."""
    return Decision(allow=False, reason=reason, emergency=False)


def expected(resource: str, action: str, own: bool, fields: tuple[str, ...]) -> Decision:
    """What the rule says of one question."""
    if (resource, action) in ANYWAY:
        return ALLOW
    if (resource, action) in OWN:
        return ALLOW if own else deny("NOT_OWN")
    if (resource, action) == ("scheduling.appointment", "update") and set(fields) == set(CANCEL):
        return ALLOW if own else deny("NOT_OWN")
    if resource == "audit.event" and action == "create":
        return deny("AUDIT_WRITE_SERVICE_ONLY")
    if resource == "audit.event" and action in ("update", "delete", "merge"):
        return deny("AUDIT_IMMUTABLE")
    return deny("ROLE_NOT_PERMITTED")


@pytest.fixture(scope="module")
def policy_engine() -> PolicyEngine:
    """The engine over the policies shipped in `his/policies`."""
    return PolicyEngine.load()


@pytest.mark.parametrize("resource", sorted(GRID))
def test_a_patient_may_do_what_the_rule_says_and_nothing_else(
    policy_engine: PolicyEngine, resource: str
) -> None:
    wrong = []
    for action in ACTIONS.values():
        for own in (True, False):
            for fields in ((), ("status",), CANCEL, (*CANCEL, "patient")):
                # The most favourable other facts: none of them opens anything to a patient.
                request = Request(
                    ("PATIENT",),
                    action,
                    resource,
                    own=own,
                    fields=fields,
                    department_match=True,
                    under_care=True,
                    consent="active",
                    emergency=True,
                )
                want = expected(resource, action, own, fields)
                got = assert_consistent(policy_engine, request)
                if got != want:
                    wrong.append(f"{action} own={own} fields={fields}: want {want}, got {got}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("other", [*STAFF_ROLES, "SERVICE"])
def test_patient_mixed_with_any_other_role_is_refused_outright(
    policy_engine: PolicyEngine, other: str
) -> None:
    request = Request(("PATIENT", other), "read", "iam.department", own=True)
    want = "SERVICE_ROLE_MIXED" if other == "SERVICE" else "PATIENT_ROLE_MIXED"
    assert assert_consistent(policy_engine, request) == deny(want)
