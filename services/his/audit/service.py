"""The AuditService servicer: validate → authorize → append (group commit) or read → respond.

Only HIS services write (the writer is the authenticated calling service, never a name in the
request); only auditors read and verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

import grpc

from his.audit import store
from his.audit.anchor import (
    CheckpointSigner as AnchorSigner,
)
from his.audit.anchor import (
    SignedCheckpoint,
    load_private_key,
    make_private_key_file,
)
from his.audit.chain import GENESIS_HASH
from his.audit.checkpoint import CheckpointSigner
from his.audit.checkpoint_log import CheckpointLog
from his.audit.config import AuditConfig
from his.audit.mapping import ACTION, COLLECTION, event_from_columns
from his.audit.v1 import audit_service_pb2 as pb
from his.audit.v1 import audit_service_pb2_grpc as pb_grpc
from his.audit.validation import MAX_VERIFY_RANGE, batch_violations, name_of
from his.audit.verification import ChainVerifier, Outcome
from his.audit.writer import GroupCommitWriter
from his.base import identity
from his.base.errors import InvalidArgument, PermissionDenied
from his.base.identity import Principal
from his.runtime.database import Database
from his.runtime.pagination import PageTokens
from his.runtime.policy import PolicyEngine, Request
from his.runtime.server import ServiceResources
from his.runtime.validation import Violations, required_id

Context = grpc.aio.ServicerContext[Any, Any]

RESOURCE = "audit.event"
CHECKPOINT_RESOURCE = "audit.checkpoint"
CHECKPOINT_COLLECTION = "chainCheckpoints"
log = logging.getLogger(__name__)
# Who wrote events when security is off (benchmarks only): no caller is known.
_ANONYMOUS_WRITER = "unauthenticated"


class AuditService(pb_grpc.AuditServiceServicer):
    """The append-only, hash-chained audit trail over the `audit` schema."""

    def __init__(self, resources: ServiceResources) -> None:
        self._db: Database = resources.database
        self._pages = PageTokens(resources.config.page_token_key)
        self._security = resources.access.enabled
        self._policy: PolicyEngine = resources.access.policy
        self.writer = GroupCommitWriter(self._db)
        self.config = AuditConfig.from_env(resources.config.environment)
        if not self.config.key_configured:
            make_private_key_file(self.config.key_file)  # local development only (config.py)
        self.verifier = ChainVerifier(
            self._db,
            CheckpointSigner(resources.config.page_token_key),
            AnchorSigner(load_private_key(self.config.key_file)),
            CheckpointLog(self.config.log_file) if self.config.log_file else None,
        )
        self.anchors = self.verifier.anchors
        self._timer = asyncio.create_task(self._checkpoint_every_interval(), name="checkpoints")
        resources.stop_hooks.append(self.close)

    async def close(self) -> None:
        """Stop the checkpoint timer and the verification worker."""
        self._timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._timer
        self.verifier.close()

    async def _checkpoint_every_interval(self) -> None:
        """Seal the chain every interval when it moved, having followed the checkpoints the
        other replicas signed (anchoring.Anchors.follow). A failure (the database not migrated
        yet, unreachable, or a chain found broken) is logged and tried again next time: the
        interval task never stops the service."""
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.anchors.create_if_moved()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # logged, retried next interval
                log.warning(
                    "audit checkpoint not taken",
                    extra={"fields": {"error": type(error).__name__, "detail": str(error)}},
                )

    def _authorize(self, action: str, resource: str = RESOURCE) -> Principal | None:
        """The caller, if allowed to `action` the resource; PERMISSION_DENIED otherwise."""
        if not self._security:
            return None
        principal = identity.current()
        self._policy.require(
            Request(roles=tuple(sorted(principal.roles)), action=action, resource=resource)
        )
        return principal

    async def WriteAuditEvents(
        self, request: pb.WriteAuditEventsRequest, context: Context
    ) -> pb.WriteAuditEventsResponse:
        v = Violations()
        batch_violations(v, request.audit_events, now=dt.datetime.now(dt.UTC))
        v.raise_if_any()
        if self._security and not identity.current().is_service:
            raise PermissionDenied("only HIS services write audit events", reason="NOT_A_SERVICE")
        principal = self._authorize("create")
        writer = principal.service_name if principal is not None else _ANONYMOUS_WRITER
        service_account = principal.subject if principal is not None else ""
        stored = await self.writer.write(
            request.audit_events, writer=writer, service_account=service_account
        )
        return pb.WriteAuditEventsResponse(audit_events=stored)

    async def GetAuditEvent(
        self, request: pb.GetAuditEventRequest, context: Context
    ) -> pb.AuditEvent:
        event_id = required_id("name", request.name, collection=COLLECTION)
        self._authorize("read")
        async with self._db.read() as session:
            row = await store.get_event(session, str(event_id))
        return event_from_columns(row._mapping)

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        name_of(v, "patient", request.patient, collection="patients")
        name_of(v, "agent_staff", request.agent_staff, collection="staff")
        period = request.event_period
        start = end = None
        if period.HasField("start_time"):
            start = v.instant("event_period.start_time", period.start_time)
        if period.HasField("end_time"):
            end = v.instant("event_period.end_time", period.end_time)
            if start is not None and end is not None and end <= start:
                v.add("event_period.end_time", "must be after the start")
        action = v.enum("action", request.action, pb.AuditEventAction.DESCRIPTOR, required=False)
        v.raise_if_any()
        self._authorize("read")
        where = store.EventFilter(
            patient=request.patient,
            agent_staff=request.agent_staff,
            start=start,
            end=end,
            action=ACTION.text(action) if action else None,
            emergency_only=request.emergency_access_only,
        )
        keyset = self._pages.keyset(
            request.page_token,
            query=where.fingerprint(),
            limit=limit,
            after=lambda c: c.integer("s"),
        )
        async with self._db.read() as session:
            rows = await store.list_events(
                session, where, after=keyset.after or 0, limit=keyset.read_limit
            )
        page = keyset.page(rows, lambda row: {"s": row.sequence_number})
        return pb.ListAuditEventsResponse(
            audit_events=[event_from_columns(row._mapping) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    async def VerifyChain(
        self, request: pb.VerifyChainRequest, context: Context
    ) -> pb.VerifyChainResponse:
        v = Violations()
        start, end = request.start_sequence_number, request.end_sequence_number
        if start < 0:
            v.add("start_sequence_number", "must not be negative")
        if end < 0:
            v.add("end_sequence_number", "must not be negative")
        first = max(start, 1)
        if request.incremental:
            for field, value in (("start_sequence_number", start), ("end_sequence_number", end)):
                if value:
                    v.add(field, "must be 0 with incremental (it continues from the checkpoint)")
        elif end > 0 and end < first:
            v.add("end_sequence_number", "must not be before start_sequence_number")
        elif end > 0 and end - first + 1 > MAX_VERIFY_RANGE:
            v.add("end_sequence_number", f"the range must hold at most {MAX_VERIFY_RANGE} events")
        v.raise_if_any()
        self._authorize("read")
        if request.incremental:
            outcome = await self.verifier.incremental()
        else:
            outcome = await self._verify_range(first, end)
        check = outcome.check
        first_break = outcome.first_break()
        response = pb.VerifyChainResponse(
            intact=first_break is None,
            start_sequence_number=outcome.first,
            end_sequence_number=outcome.last,
            end_hash=check.last_hash,
        )
        if first_break is not None:
            sequence, reason, through, checkpoint_number = first_break
            response.first_break.sequence_number = sequence
            response.first_break.reason = reason  # type: ignore[assignment]
            response.first_break.last_missing_sequence_number = through
            response.first_break.checkpoint_number = checkpoint_number
        if outcome.checkpoint_time is not None:
            response.checkpoint_time.FromDatetime(outcome.checkpoint_time)
        if outcome.finding is not None and outcome.finding.anchor is not None:
            response.anchor.CopyFrom(checkpoint_message(outcome.finding.anchor))
        return response

    async def CreateChainCheckpoint(
        self, request: pb.CreateChainCheckpointRequest, context: Context
    ) -> pb.ChainCheckpoint:
        v = Violations()
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        self._authorize("create", CHECKPOINT_RESOURCE)
        return checkpoint_message(await self.anchors.create(request_id))

    async def ListChainCheckpoints(
        self, request: pb.ListChainCheckpointsRequest, context: Context
    ) -> pb.ListChainCheckpointsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        self._authorize("read", CHECKPOINT_RESOURCE)
        keyset = self._pages.keyset(
            request.page_token,
            query="chain-checkpoints",
            limit=limit,
            after=lambda c: c.integer("n"),
        )
        async with self._db.read() as session:
            rows = await store.list_checkpoints(
                session, before=keyset.after, limit=keyset.read_limit
            )
        page = keyset.page(rows, lambda row: {"n": row.checkpoint_number})
        return pb.ListChainCheckpointsResponse(
            chain_checkpoints=[checkpoint_message(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    async def _verify_range(self, first: int, end: int) -> Outcome:
        """A pass over `first`..`end` (0: the head); from the first event to the head, the
        running full pass is joined."""
        async with self._db.read() as session:
            head = await store.read_head(session)
            if end == 0 and head.sequence_number - first + 1 > MAX_VERIFY_RANGE:
                raise InvalidArgument.field(
                    "end_sequence_number",
                    f"the chain from start_sequence_number holds more than {MAX_VERIFY_RANGE}"
                    " events; give an end",
                )
            # Nothing exists after the head: a range reaching past it ends at the head.
            last = min(end or head.sequence_number, head.sequence_number)
            if first == 1 and end == 0:
                return await self.verifier.full(last)
            previous = GENESIS_HASH if first == 1 else await store.hash_of(session, first - 1)
        return await self.verifier.range(first, last, previous)


def checkpoint_message(checkpoint: SignedCheckpoint) -> pb.ChainCheckpoint:
    """The contract's form of a signed checkpoint."""
    message = pb.ChainCheckpoint(
        name=f"{CHECKPOINT_COLLECTION}/{checkpoint.checkpoint_number}",
        checkpoint_number=checkpoint.checkpoint_number,
        sequence_number=checkpoint.sequence_number,
        hash=checkpoint.hash,
        key_id=checkpoint.key_id,
        previous_checkpoint_digest=checkpoint.previous_digest,
        events_digest=checkpoint.events_digest,
        signature=checkpoint.signature,
    )
    message.create_time.FromDatetime(checkpoint.create_time)
    return message
