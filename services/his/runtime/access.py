"""Authorization and audit for servicers: ask the policy, find break-the-glass grants, record.

Order inside an rpc (ADR 0002): authorize before existence, then read or write, then audit, and
only then answer. `authorize` decides from the caller alone when it can; when the answer depends
on the record it loads the record, and a missing record is decided with the least favourable
facts, so PERMISSION_DENIED never tells whether a record exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.base import identity
from his.base.errors import HisError, PermissionDenied
from his.base.identity import Principal
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.runtime.audit_trail import AuditTrail
from his.runtime.policy import Decision, PolicyEngine, Request
from his_client.clients import HisClients

log = logging.getLogger(__name__)

T = TypeVar("T")

# Audit action codes of each policy action (FHIR AuditEvent.action: C R U D E).
AUDIT_ACTION = {
    "read": audit_pb.AUDIT_EVENT_ACTION_READ,
    "create": audit_pb.AUDIT_EVENT_ACTION_CREATE,
    "update": audit_pb.AUDIT_EVENT_ACTION_UPDATE,
    "merge": audit_pb.AUDIT_EVENT_ACTION_UPDATE,
    "delete": audit_pb.AUDIT_EVENT_ACTION_DELETE,
    "dispense": audit_pb.AUDIT_EVENT_ACTION_EXECUTE,
    "execute": audit_pb.AUDIT_EVENT_ACTION_EXECUTE,
}

ALLOWED = Decision(allow=True, reason="ALLOWED", emergency=False)
# A break-the-glass grant found at iam is trusted for at most this long before asking again,
# so a revoked grant stops working within this time even if iam is not asked for every call.
GRANT_CACHE_S = 30.0


@dataclass(frozen=True)
class Facts:
    """What the policy may need to know about one record (see policy.Request)."""

    # `patients/{id}` the record belongs to; empty for records about no patient.
    patient: str = ""
    # `departments/{id}` the record belongs to, compared with the caller's departments.
    department: str = ""
    encounter_class: str = ""
    surgical: bool = False
    under_care: bool = False
    own: bool = False
    # The patient's privacy consent state, asked only when the decision depends on it.
    consent: Callable[[], Awaitable[str]] | None = None


@dataclass(frozen=True)
class Permit:
    """An allowed access: the decision, and the grant that allowed it in an emergency."""

    decision: Decision
    patient: str = ""
    emergency_grant: str = ""


def purpose_of_use(principal: Principal | None, permit: Permit) -> audit_pb.PurposeOfUse.ValueType:
    """Why the caller accesses the record, for the audit trail."""
    if permit.emergency_grant:
        return audit_pb.PURPOSE_OF_USE_EMERGENCY_TREATMENT
    roles = principal.roles if principal else frozenset()
    if roles & {"DOCTOR", "NURSE", "PHARMACIST", "LAB_TECHNICIAN"}:
        return audit_pb.PURPOSE_OF_USE_TREATMENT
    if "BILLING_CLERK" in roles:
        return audit_pb.PURPOSE_OF_USE_PAYMENT
    if principal is not None and principal.is_patient:
        return audit_pb.PURPOSE_OF_USE_PATIENT_REQUEST
    return audit_pb.PURPOSE_OF_USE_OPERATIONS


class Access:
    """One servicer's gate: policy decisions, emergency grants and the audit trail."""

    def __init__(
        self,
        *,
        enabled: bool,
        policy: PolicyEngine,
        audit: AuditTrail | None,
        clients: HisClients,
    ) -> None:
        self.enabled = enabled
        self.policy = policy
        self._audit = audit
        self._clients = clients
        self._grants: dict[tuple[str, str], tuple[str, float]] = {}

    def _request(
        self, principal: Principal, action: str, resource: str, **facts: object
    ) -> Request:
        return Request(roles=tuple(principal.roles), action=action, resource=resource, **facts)  # type: ignore[arg-type]

    async def require(
        self, action: str, resource: str, *, own: bool = False, fields: Sequence[str] = ()
    ) -> Permit:
        """Allow or refuse from the caller alone (when the class decides, as for demographics)."""
        if not self.enabled:
            return Permit(ALLOWED)
        principal = identity.current()
        decision = self.policy.decide(
            self._request(principal, action, resource, own=own, fields=tuple(fields))
        )
        if not decision.allow:
            await self._refuse(principal, action, resource, decision.reason, patient="")
        return Permit(decision)

    async def authorize(
        self,
        action: str,
        resource: str,
        load: Callable[[], Awaitable[T | None]],
        facts: Callable[[T], Facts],
        *,
        fields: Sequence[str] = (),
    ) -> tuple[Permit, T | None]:
        """Allow or refuse one record, loading it only when the answer depends on it.

        Returns the permit and the loaded record (None when it does not exist and the caller
        would have been allowed to see it: the servicer then answers NOT_FOUND).
        """
        if not self.enabled:
            return Permit(ALLOWED), await load()
        principal = identity.current()
        ask = self._request(principal, action, resource, fields=tuple(fields), consent="revoked")
        if self.policy.decide(ask).allow:
            record = await load()
            return Permit(ALLOWED, patient=facts(record).patient if record else ""), record
        best = replace(
            ask, department_match=True, under_care=True, consent="active", emergency=True, own=True
        )
        if not self.policy.decide(best).allow:
            reason = self.policy.decide(ask).reason
            await self._refuse(principal, action, resource, reason, patient="")
        record = await load()
        if record is None:
            await self._refuse(principal, action, resource, self.policy.decide(ask).reason, "")
            raise AssertionError("unreachable")  # _refuse always raises
        permit = await self.permit(principal, ask, facts(record))
        return permit, record

    async def permit(self, principal: Principal, ask: Request, facts: Facts) -> Permit:
        """The decision for one record's facts, with consent and emergency grants looked up;
        a refusal is audited and raised."""
        permit, reason = await self._decide(principal, ask, facts, {}, {})
        if permit is None:
            await self._refuse(principal, ask.action, ask.resource, reason, patient=facts.patient)
            raise AssertionError("unreachable")  # _refuse always raises
        return permit

    async def _decide(
        self,
        principal: Principal,
        ask: Request,
        facts: Facts,
        grants: dict[str, str],
        consents: dict[str, str],
        *,
        emergency: bool = True,
    ) -> tuple[Permit | None, str]:
        """(permit, "ALLOWED") or (None, the refusal's reason), without auditing anything.
        `grants` and `consents` remember, for one call, the break-the-glass and consent lookups
        by patient (a list of one patient's records asks once)."""
        request = replace(
            ask,
            department_match=bool(facts.department) and facts.department in principal.departments,
            under_care=facts.under_care,
            encounter_class=facts.encounter_class,
            surgical=facts.surgical,
            # A patient's own record is theirs whatever the servicer said: the record's patient
            # is the caller (the only way a PATIENT is ever allowed anything of a patient's).
            own=facts.own or (principal.is_patient and facts.patient == principal.subject),
            consent="active",
        )
        decision = self.policy.decide(request)
        if decision.allow and not self.policy.decide(replace(request, consent="revoked")).allow:
            # Consent matters for this answer: ask what it is. No way to ask means no way to
            # know: decide as if consent were revoked.
            if facts.consent is None:
                state = "revoked"
            elif facts.patient and facts.patient in consents:
                state = consents[facts.patient]
            else:
                state = await facts.consent()
                if facts.patient:
                    consents[facts.patient] = state
            request = replace(request, consent=state)
            decision = self.policy.decide(request)
        if decision.allow:
            return Permit(decision, patient=facts.patient), decision.reason
        if not emergency:
            return None, decision.reason
        in_emergency = self.policy.decide(replace(request, emergency=True))
        if in_emergency.allow and facts.patient and principal.is_staff:
            if facts.patient not in grants:
                grants[facts.patient] = await self._emergency_grant(principal, facts.patient)
            if grants[facts.patient]:
                grant = grants[facts.patient]
                return Permit(in_emergency, patient=facts.patient, emergency_grant=grant), "ALLOWED"
        return None, decision.reason

    def allowed_alone(self, action: str, resource: str) -> bool:
        """Whether the caller may do `action` on every record of the class, whatever its facts
        (the registration desk and demographics): then no fact need be looked up."""
        if not self.enabled:
            return True
        ask = self._request(identity.current(), action, resource, consent="revoked")
        return self.policy.decide(ask).allow

    def allowed_when_related(self, action: str, resource: str) -> bool:
        """Whether a care relation alone (department or care, consent given; no grant, not the
        caller's own) would let the caller do `action` on a record of the class: a clinician,
        whose lists show the related records."""
        if not self.enabled:
            return True
        related = self._request(
            identity.current(),
            action,
            resource,
            department_match=True,
            under_care=True,
            consent="active",
        )
        return self.policy.decide(related).allow

    def could_ever(self, action: str, resource: str) -> bool:
        """Whether the caller could do `action` on some record of the class (under the most
        favourable facts): when not, a list can answer empty without reading a row."""
        if not self.enabled:
            return True
        best = self._request(
            identity.current(),
            action,
            resource,
            department_match=True,
            under_care=True,
            consent="active",
            emergency=True,
            own=True,
        )
        return self.policy.decide(best).allow

    async def filter(
        self,
        action: str,
        resource: str,
        records: Sequence[T],
        facts: Callable[[T], Facts],
        *,
        emergency: bool = True,
    ) -> list[tuple[T, Permit]]:
        """The records of a list the caller may see, each with its permit (others left out).

        Quietly: a record left out is not audited as a refusal (the caller asked for a list, not
        for it), and a caller who could never see this class gets an empty list at once, so the
        time a list takes does not tell how many hidden records it passed over. Without
        `emergency`, break-the-glass grants are not looked up (a search over many patients
        would ask iam once per unrelated patient): only normal access shows a record.
        """
        if not self.enabled:
            return [(record, Permit(ALLOWED)) for record in records]
        if not self.could_ever(action, resource):
            return []
        principal = identity.current()
        ask = self._request(principal, action, resource, consent="revoked")
        grants: dict[str, str] = {}
        consents: dict[str, str] = {}
        kept: list[tuple[T, Permit]] = []
        for record in records:
            permit, _ = await self._decide(
                principal, ask, facts(record), grants, consents, emergency=emergency
            )
            if permit is not None:
                kept.append((record, permit))
        return kept

    async def _emergency_grant(self, principal: Principal, patient: str) -> str:
        key = (principal.subject, patient)
        cached = self._grants.get(key)
        now = time.time()
        if cached is not None and cached[1] > now:
            return cached[0]
        with identity.as_service():  # the service checks; the caller's token is not needed
            reply = await self._clients.iam.ListEmergencyAccessGrants(
                iam_pb.ListEmergencyAccessGrantsRequest(
                    staff=principal.subject, patient=patient, active_only=True, page_size=1
                )
            )
        if not reply.emergency_access_grants:
            self._grants.pop(key, None)
            return ""
        grant = reply.emergency_access_grants[0]
        until = min(grant.expire_time.ToMicroseconds() / 1e6, now + GRANT_CACHE_S)
        self._grants[key] = (grant.name, until)
        return grant.name

    async def _refuse(
        self, principal: Principal, action: str, resource: str, reason: str, patient: str
    ) -> None:
        """Audit the refusal (best effort: the caller is refused either way) and raise."""
        if self._audit is not None:
            try:
                await self._audit.record(
                    action=AUDIT_ACTION.get(action, audit_pb.AUDIT_EVENT_ACTION_EXECUTE),
                    operation=identity.current_method(),
                    patient=patient,
                    outcome=audit_pb.AUDIT_EVENT_OUTCOME_MINOR_FAILURE,
                    outcome_description=f"denied {action} on {resource}: {reason}",
                    purpose_of_use=purpose_of_use(principal, Permit(ALLOWED)),
                )
            except HisError:
                log.warning("refusal not audited", extra={"fields": {"reason": reason}})
        raise PermissionDenied(f"{action} on {resource} is not permitted", reason=reason)

    async def record(
        self,
        action: str,
        permit: Permit,
        *,
        resource_name: str,
        resource_type: str,
        patient: str | None = None,
        outcome_description: str = "",
        changes: Sequence[audit_pb.AuditFieldChange] = (),
    ) -> None:
        """Audit one access to patient data, or one change (`changes`: the changed fields before
        and after); raises UNAVAILABLE (fail closed) if it cannot. `outcome_description` says
        what came of it when the action alone does not (a review)."""
        if not self.enabled or self._audit is None:
            return
        await self._audit.record(
            action=AUDIT_ACTION[action],
            operation=identity.current_method(),
            patient=permit.patient if patient is None else patient,
            resource_name=resource_name,
            resource_type=resource_type,
            purpose_of_use=purpose_of_use(identity.current_or_none(), permit),
            emergency_access_grant=permit.emergency_grant,
            outcome_description=outcome_description,
            changes=changes,
        )

    async def record_each(
        self,
        action: str,
        items: Sequence[tuple[Permit, str, str]],
        resource_type: str,
        *,
        purpose: audit_pb.PurposeOfUse.ValueType | None = None,
    ) -> None:
        """Audit many accesses in one batch: (permit, patient, resource name) per item; the
        purpose of use follows from the caller's roles unless the rpc states it (research)."""
        if not self.enabled or self._audit is None or not items:
            return
        principal = identity.current_or_none()
        operation = identity.current_method()
        await self._audit.record_many(
            [
                self._audit.event(
                    action=AUDIT_ACTION[action],
                    operation=operation,
                    patient=patient,
                    resource_name=name,
                    resource_type=resource_type,
                    purpose_of_use=purpose or purpose_of_use(principal, permit),
                    emergency_access_grant=permit.emergency_grant,
                )
                for permit, patient, name in items
            ]
        )
