"""Signed checkpoints anchor the chain against a database superuser (issue 17, part 4).

Each tampering test gets a database and an audit server of its own (the superuser's changes are
not put back), with its own checkpoint key and checkpoint log in the test's directory.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.audit import anchoring, offline
from his.audit.anchor import SignedCheckpoint, make_private_key_file
from his.audit.config import AuditConfig
from his.audit.mapping import event_from_columns
from his.audit.spec import SPEC as AUDIT
from his.audit.v1 import audit_service_pb2 as pb
from his.audit.v1 import audit_service_pb2_grpc as pb_grpc
from his.base.env import ConfigError
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService, start
from tests.audit.helpers import DOMAIN, Stub, behind_the_service, contract_hash, events, scalar
from tests.audit.helpers import write_request as request_of
from tests.conftest import service_config
from tests.identity import Issuer, channel_as
from tests.support import fails, fresh_database, invalid_in

FULL = pb.VerifyChainRequest()
INCREMENTAL = pb.VerifyChainRequest(incremental=True)
CREATE = pb.CreateChainCheckpointRequest()
_numbers = itertools.count(1)


@dataclass
class Hospital:
    """An audit server on a database of its own, as the tests call and tamper with it."""

    url: str
    env: dict[str, str]
    server: RunningService
    db: AsyncEngine
    writer: Stub
    auditor: Stub
    channels: list[grpc.aio.Channel]
    key_file: Path
    log_file: Path

    async def restart(self, issuer: Issuer, **env: str) -> None:
        """Stop the server and start a new process's worth of it (nothing kept in memory)."""
        await self.server.stop(grace_s=0.5)
        for channel in self.channels:
            await channel.close()
        self.env.update(env)
        self.server = await start(AUDIT, service_config("audit", **self.env), self.url)
        self._connect(issuer)

    def _connect(self, issuer: Issuer) -> None:
        writer = channel_as(self.server.address, issuer.service("patient"))
        auditor = channel_as(self.server.address, issuer.staff("AUDITOR"))
        self.channels = [writer, auditor]
        self.writer = pb_grpc.AuditServiceStub(writer)
        self.auditor = pb_grpc.AuditServiceStub(auditor)

    async def write(self, count: int) -> list[pb.AuditEvent]:
        """`count` events appended (in batches of at most 50)."""
        stored: list[pb.AuditEvent] = []
        while len(stored) < count:
            batch = events(min(50, count - len(stored)))
            stored.extend((await self.writer.WriteAuditEvents(request_of(*batch))).audit_events)
        return stored


@pytest.fixture
async def hospital(
    postgres: EmbeddedPostgres, issuer: Issuer, tmp_path: Path
) -> AsyncIterator[Hospital]:
    """A fresh audit database and server, with its own checkpoint key and log."""
    url = await fresh_database(postgres.url, f"his_audit_anchor_{next(_numbers)}", "audit")
    key_file = tmp_path / "checkpoint-key.pem"
    make_private_key_file(key_file)
    log_file = tmp_path / "checkpoints.jsonl"
    env = {
        "HIS_AUDIT_CHECKPOINT_KEY_FILE": str(key_file),
        "HIS_AUDIT_CHECKPOINT_LOG": str(log_file),
    }
    server = await start(AUDIT, service_config("audit", **env), url)
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    place = Hospital(url, env, server, engine, None, None, [], key_file, log_file)  # type: ignore[arg-type]
    place._connect(issuer)
    yield place
    await place.server.stop(grace_s=0.5)
    for channel in place.channels:
        await channel.close()
    await engine.dispose()


async def rewrite_with_recomputed_hashes(db: AsyncEngine, sequence_number: int) -> None:
    """What a database superuser can do: change one event, then recompute its hash, every later
    event's links and hashes, and the chain head, so that the chain's own links are intact."""
    async with behind_the_service(db) as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT * FROM audit.events WHERE sequence_number >= :n"
                    " ORDER BY sequence_number"
                ),
                {"n": sequence_number},
            )
        ).mappings()
        previous: bytes | None = None
        for row in list(rows):
            values = dict(row)
            if values["sequence_number"] == sequence_number:
                values["operation"] = "/his.patient.v1.PatientService/ListPatients"
            else:
                assert previous is not None
                values["previous_hash"] = previous
            event = event_from_columns(values)
            new_hash = contract_hash(event)
            await connection.execute(
                text(
                    "UPDATE audit.events SET operation = :op, previous_hash = :prev, hash = :h"
                    " WHERE sequence_number = :n"
                ),
                {
                    "op": values["operation"],
                    "prev": values["previous_hash"],
                    "h": new_hash,
                    "n": values["sequence_number"],
                },
            )
            previous = new_hash
        await connection.execute(
            text("UPDATE audit.chain_head SET last_hash = :h"), {"h": previous}
        )


async def cut_tail(db: AsyncEngine, keep: int) -> None:
    """Delete every event after `keep` and wind the head back to it, as a superuser could."""
    async with behind_the_service(db) as connection:
        await connection.execute(
            text("DELETE FROM audit.events WHERE sequence_number > :n"), {"n": keep}
        )
        await connection.execute(
            text(
                "UPDATE audit.chain_head SET last_sequence_number = :n,"
                " last_hash = (SELECT hash FROM audit.events WHERE sequence_number = :n)"
            ),
            {"n": keep},
        )


def public_key_only(key_file: Path) -> Ed25519PublicKey:
    """The public half, as an auditor would keep it (the private key goes no further)."""
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public = serialization.load_pem_public_key(pem)
    assert isinstance(public, Ed25519PublicKey)
    return public


def contract_message(checkpoint: pb.ChainCheckpoint) -> bytes:
    """The signed message exactly as the proto describes it, built here without service code."""
    micros = checkpoint.create_time.seconds * 1_000_000 + checkpoint.create_time.nanos // 1000
    key = checkpoint.key_id.encode()
    return (
        b"his.audit.v1.ChainCheckpoint\x00"
        + checkpoint.checkpoint_number.to_bytes(8, "big")
        + checkpoint.sequence_number.to_bytes(8, "big")
        + checkpoint.hash
        + micros.to_bytes(8, "big", signed=True)
        + len(key).to_bytes(2, "big")
        + key
        + checkpoint.previous_checkpoint_digest
        + checkpoint.events_digest
    )


# --- taking checkpoints ------------------------------------------------------------------------


async def test_checkpoint_on_demand_is_signed_and_verifies_with_the_public_key_only(
    hospital: Hospital,
) -> None:
    stored = await hospital.write(7)
    checkpoint = await hospital.auditor.CreateChainCheckpoint(CREATE)

    assert checkpoint.name == "chainCheckpoints/1" and checkpoint.checkpoint_number == 1
    assert checkpoint.sequence_number == stored[-1].sequence_number == 7
    assert checkpoint.hash == stored[-1].hash
    assert checkpoint.previous_checkpoint_digest == bytes(32)
    prefixes = b"".join(event.hash[:16] for event in stored)
    assert checkpoint.events_digest == hashlib.sha256(prefixes).digest()
    public = public_key_only(hospital.key_file)
    public.verify(checkpoint.signature, contract_message(checkpoint))  # raises if not genuine
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert checkpoint.key_id == hashlib.sha256(raw).hexdigest()[:16]

    # The chain did not move: the same checkpoint, none created.
    assert await hospital.auditor.CreateChainCheckpoint(CREATE) == checkpoint
    more = await hospital.write(3)
    second = await hospital.auditor.CreateChainCheckpoint(CREATE)
    assert second.checkpoint_number == 2 and second.sequence_number == more[-1].sequence_number
    first_message = contract_message(checkpoint) + checkpoint.signature
    assert second.previous_checkpoint_digest == hashlib.sha256(first_message).digest()
    public.verify(second.signature, contract_message(second))

    listed = await hospital.auditor.ListChainCheckpoints(pb.ListChainCheckpointsRequest())
    assert list(listed.chain_checkpoints) == [second, checkpoint]  # newest first
    # The copy outside the database: one line per checkpoint.
    assert len(hospital.log_file.read_text().splitlines()) == 2
    reply = await hospital.auditor.VerifyChain(FULL)
    assert reply.intact and reply.anchor == second


async def test_a_replayed_request_id_returns_the_first_checkpoint(hospital: Hospital) -> None:
    await hospital.write(2)
    request = pb.CreateChainCheckpointRequest(request_id="c0ffee-1")
    first = await hospital.auditor.CreateChainCheckpoint(request)
    await hospital.write(2)

    assert await hospital.auditor.CreateChainCheckpoint(request) == first
    assert (await hospital.auditor.CreateChainCheckpoint(CREATE)).checkpoint_number == 2


async def test_an_empty_chain_has_nothing_to_checkpoint(hospital: Hospital) -> None:
    failure = await fails(hospital.auditor.CreateChainCheckpoint(CREATE))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "CHAIN_EMPTY"


async def test_checkpoints_are_taken_by_interval_when_the_chain_moved(
    hospital: Hospital, issuer: Issuer
) -> None:
    await hospital.restart(issuer, HIS_AUDIT_CHECKPOINT_INTERVAL_S="0.2")
    stored = await hospital.write(5)

    async def newest() -> pb.ChainCheckpoint | None:
        listed = await hospital.auditor.ListChainCheckpoints(pb.ListChainCheckpointsRequest())
        return listed.chain_checkpoints[0] if listed.chain_checkpoints else None

    checkpoint = await newest()
    while checkpoint is None or checkpoint.sequence_number < stored[-1].sequence_number:
        await asyncio.sleep(0.1)
        checkpoint = await newest()
    assert checkpoint.hash == stored[-1].hash
    # The chain stands still: no more checkpoints however many intervals pass.
    await asyncio.sleep(1)
    assert await newest() == checkpoint


async def test_concurrent_writers_while_checkpointing_lose_nothing(
    hospital: Hospital, issuer: Issuer
) -> None:
    """Writers on two replicas, each replica checkpointing at the same time."""
    writers, rounds, batch = 4, 8, 20
    replica = await start(AUDIT, service_config("audit", **hospital.env), hospital.url)
    async with channel_as(replica.address, issuer.staff("AUDITOR")) as channel:
        replica_auditor = pb_grpc.AuditServiceStub(channel)

        async def write() -> None:
            for _ in range(rounds):
                await hospital.write(batch)

        async def seal(auditor: Stub) -> None:
            for _ in range(rounds):
                try:
                    await auditor.CreateChainCheckpoint(CREATE)
                except grpc.aio.AioRpcError as error:
                    # The contract's answer to replicas racing: retry.
                    assert error.code() == grpc.StatusCode.ABORTED
                await asyncio.sleep(0.01)

        await hospital.write(1)  # an empty chain has nothing to checkpoint
        await asyncio.gather(
            *(write() for _ in range(writers)),
            seal(hospital.auditor),
            seal(replica_auditor),
        )
    await replica.stop(grace_s=0.5)

    total = 1 + writers * rounds * batch
    assert await scalar(hospital.db, "SELECT count(*) FROM audit.events") == total
    listed = await hospital.auditor.ListChainCheckpoints(pb.ListChainCheckpointsRequest())
    checkpoints = list(reversed(listed.chain_checkpoints))
    assert [c.checkpoint_number for c in checkpoints] == list(range(1, len(checkpoints) + 1))
    assert len(checkpoints) >= 2
    previous = 0
    for checkpoint in checkpoints:
        # Each one seals a real prefix of the chain: the event it names has its hash, and its
        # events digest is that of the events since the previous checkpoint.
        async with hospital.db.connect() as connection:
            hashes = [
                bytes(h)
                for (h,) in await connection.execute(
                    text(
                        "SELECT hash FROM audit.events WHERE sequence_number > :a"
                        " AND sequence_number <= :b ORDER BY sequence_number"
                    ),
                    {"a": previous, "b": checkpoint.sequence_number},
                )
            ]
        assert len(hashes) == checkpoint.sequence_number - previous
        assert hashes[-1] == checkpoint.hash
        assert checkpoint.events_digest == hashlib.sha256(b"".join(h[:16] for h in hashes)).digest()
        previous = checkpoint.sequence_number
    reply = await hospital.auditor.VerifyChain(FULL)
    assert reply.intact and reply.end_sequence_number == total


# --- what a database superuser can no longer hide ----------------------------------------------


async def test_superuser_rewrite_with_recomputed_hashes_and_head_is_tampered_at_that_event(
    hospital: Hospital,
) -> None:
    await hospital.write(30)
    await hospital.auditor.CreateChainCheckpoint(CREATE)
    await hospital.write(10)
    await hospital.auditor.VerifyChain(INCREMENTAL)  # the routine check has seen it all

    await rewrite_with_recomputed_hashes(hospital.db, 12)

    for request in (FULL, INCREMENTAL):
        reply = await hospital.auditor.VerifyChain(request)
        assert not reply.intact, request
        assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_ALTERED
        assert reply.first_break.sequence_number == 12
        assert reply.first_break.checkpoint_number == 1
    # The service also refuses to seal the rewritten chain.
    failure = await fails(hospital.auditor.CreateChainCheckpoint(CREATE))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_rewrite_between_two_checkpoints_is_located_in_that_stretch(
    hospital: Hospital,
) -> None:
    await hospital.write(10)
    await hospital.auditor.CreateChainCheckpoint(CREATE)
    await hospital.write(10)
    await hospital.auditor.CreateChainCheckpoint(CREATE)

    await rewrite_with_recomputed_hashes(hospital.db, 17)

    reply = await hospital.auditor.VerifyChain(FULL)
    assert (reply.first_break.reason, reply.first_break.sequence_number) == (
        pb.CHAIN_BREAK_REASON_ALTERED,
        17,
    )
    assert reply.first_break.checkpoint_number == 2


async def test_tail_cut_with_head_wound_back_is_missing_not_a_shorter_chain(
    hospital: Hospital, issuer: Issuer
) -> None:
    await hospital.write(20)
    await hospital.auditor.CreateChainCheckpoint(CREATE)
    await hospital.write(5)
    await hospital.auditor.VerifyChain(INCREMENTAL)

    await cut_tail(hospital.db, 15)

    def assert_missing(reply: pb.VerifyChainResponse) -> None:
        assert not reply.intact
        assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_MISSING
        assert reply.first_break.sequence_number == 16
        # At least up to the checkpoint's sequence number is known to be gone.
        assert reply.first_break.last_missing_sequence_number >= 20

    for request in (FULL, INCREMENTAL, pb.VerifyChainRequest(start_sequence_number=5)):
        assert_missing(await hospital.auditor.VerifyChain(request))

    # Removing the checkpoint too does not help: the service keeps it outside the database...
    async with behind_the_service(hospital.db) as connection:
        await connection.execute(text("DELETE FROM audit.chain_checkpoints"))
    assert_missing(await hospital.auditor.VerifyChain(FULL))
    # ... in its log file too, which a new process reads.
    await hospital.restart(issuer)
    assert_missing(await hospital.auditor.VerifyChain(FULL))


async def test_edited_checkpoint_row_is_reported(hospital: Hospital) -> None:
    stored = await hospital.write(10)
    await hospital.auditor.CreateChainCheckpoint(CREATE)
    await hospital.write(2)

    # Make the checkpoint agree with a (future) rewrite of event 10.
    async with behind_the_service(hospital.db) as connection:
        await connection.execute(
            text("UPDATE audit.chain_checkpoints SET hash = :h"), {"h": bytes(32)}
        )

    reply = await hospital.auditor.VerifyChain(FULL)
    assert not reply.intact
    assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_CHECKPOINT_INVALID
    assert reply.first_break.checkpoint_number == 1
    assert reply.first_break.sequence_number == stored[-1].sequence_number
    failure = await fails(hospital.auditor.CreateChainCheckpoint(CREATE))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CHECKPOINT_INVALID",
    )


async def test_checkpoint_forged_with_another_key_is_reported(
    hospital: Hospital, issuer: Issuer
) -> None:
    await hospital.write(10)
    # The superuser's own checkpoint of a chain they rewrote, signed with a key of their own;
    # the service (a new process, with no log) has never seen a checkpoint.
    await hospital.restart(issuer, HIS_AUDIT_CHECKPOINT_LOG="")
    forger = Ed25519PrivateKey.generate()
    forged = pb.ChainCheckpoint(
        checkpoint_number=1,
        sequence_number=10,
        hash=bytes.fromhex(
            await scalar(hospital.db, "SELECT encode(last_hash, 'hex') FROM audit.chain_head")
        ),
        key_id="0123456789abcdef",
        previous_checkpoint_digest=bytes(32),
        events_digest=bytes(32),
    )
    forged.create_time.FromDatetime(dt.datetime.now(dt.UTC).replace(microsecond=0))
    signature = forger.sign(contract_message(forged))
    async with behind_the_service(hospital.db) as connection:
        await connection.execute(
            text("INSERT INTO audit.chain_checkpoints VALUES (1, 10, :h, :t, :k, :p, :e, :x, :s)"),
            {
                "h": forged.hash,
                "t": forged.create_time.ToDatetime(tzinfo=dt.UTC),
                "k": forged.key_id,
                "p": forged.previous_checkpoint_digest,
                "e": forged.events_digest,
                "x": b"",
                "s": signature,
            },
        )

    reply = await hospital.auditor.VerifyChain(FULL)
    assert not reply.intact
    assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_CHECKPOINT_INVALID
    assert reply.first_break.checkpoint_number == 1
    assert not reply.HasField("anchor")  # a forged checkpoint anchors nothing


# --- start-up ---------------------------------------------------------------------------------


async def test_missing_checkpoint_key_file_is_a_clear_start_up_error(
    audit_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "key.pem"
    with pytest.raises(ConfigError, match=r"HIS_AUDIT_CHECKPOINT_KEY_FILE: cannot read .*key\.pem"):
        await start(
            AUDIT, service_config("audit", HIS_AUDIT_CHECKPOINT_KEY_FILE=str(missing)), audit_url
        )
    assert not missing.exists()  # never silently replaced by a new key


async def test_a_key_file_that_is_not_ed25519_is_refused(audit_url: str, tmp_path: Path) -> None:
    wrong = tmp_path / "key.pem"
    wrong.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="HIS_AUDIT_CHECKPOINT_KEY_FILE"):
        await start(
            AUDIT, service_config("audit", HIS_AUDIT_CHECKPOINT_KEY_FILE=str(wrong)), audit_url
        )


def test_in_the_mesh_the_checkpoint_key_must_be_configured() -> None:
    with pytest.raises(ConfigError, match="HIS_AUDIT_CHECKPOINT_KEY_FILE is required"):
        AuditConfig.from_env({"HIS_MESH": "istio"})


# --- contract: bad input and permissions ---------------------------------------------------------


@pytest.mark.parametrize("request_id", [" padded", "x" * 65, "tab\there"])
async def test_malformed_request_id_is_invalid(auditor: Stub, request_id: str) -> None:
    request = pb.CreateChainCheckpointRequest(request_id=request_id)
    assert await invalid_in(DOMAIN, auditor.CreateChainCheckpoint(request)) == ["request_id"]


async def test_negative_page_size_of_checkpoints_is_invalid(auditor: Stub) -> None:
    request = pb.ListChainCheckpointsRequest(page_size=-1)
    assert await invalid_in(DOMAIN, auditor.ListChainCheckpoints(request)) == ["page_size"]


async def test_foreign_page_token_of_checkpoints_is_invalid(auditor: Stub) -> None:
    request = pb.ListChainCheckpointsRequest(page_token="bm90LWEtdG9rZW4")
    assert await invalid_in(DOMAIN, auditor.ListChainCheckpoints(request)) == ["page_token"]


async def test_checkpoints_page_newest_first(hospital: Hospital) -> None:
    for _ in range(3):
        await hospital.write(1)
        await hospital.auditor.CreateChainCheckpoint(CREATE)
    first = await hospital.auditor.ListChainCheckpoints(pb.ListChainCheckpointsRequest(page_size=2))
    rest = await hospital.auditor.ListChainCheckpoints(
        pb.ListChainCheckpointsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert [c.checkpoint_number for c in first.chain_checkpoints] == [3, 2]
    assert [c.checkpoint_number for c in rest.chain_checkpoints] == [1]
    assert rest.next_page_token == ""


async def test_only_auditors_create_and_list_checkpoints(doctor: Stub, writer: Stub) -> None:
    for stub in (doctor, writer):
        for call in (
            stub.CreateChainCheckpoint(CREATE),
            stub.ListChainCheckpoints(pb.ListChainCheckpointsRequest()),
        ):
            assert (await fails(call)).code == grpc.StatusCode.PERMISSION_DENIED


async def test_checkpoint_rpcs_need_a_token(anonymous: Stub) -> None:
    failure = await fails(anonymous.CreateChainCheckpoint(CREATE))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED


# --- auditors outside the system --------------------------------------------------------------


async def test_the_checkpoint_log_verifies_offline_with_the_public_key_only(
    hospital: Hospital, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        await hospital.write(2)
        await hospital.auditor.CreateChainCheckpoint(CREATE)
    assert offline.main(["public-key", str(hospital.key_file)]) == 0
    public_file = tmp_path / "public.pem"
    public_file.write_text(capsys.readouterr().out)
    assert "PRIVATE" not in public_file.read_text()

    assert offline.main(["verify", str(public_file), str(hospital.log_file)]) == 0
    assert "3 checkpoints genuine" in capsys.readouterr().out

    # A copy someone edited: the second checkpoint's hash.
    lines = hospital.log_file.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["hash"] = base64.b64encode(bytes(32)).decode()
    lines[1] = json.dumps(edited)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    assert offline.main(["verify", str(public_file), str(tampered)]) == 1
    report = capsys.readouterr().out
    assert "line 2 (checkpoint 2): the signature does not verify" in report
    assert "line 3 (checkpoint 3): does not link to checkpoint 2" in report


async def test_edited_older_checkpoint_is_found_by_the_worker_link_check(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older checkpoints' links are checked in the verification worker, off the event loop."""
    monkeypatch.setattr(anchoring, "IN_PROCESS_CHECKPOINTS", 1)
    for _ in range(4):
        await hospital.write(3)
        await hospital.auditor.CreateChainCheckpoint(CREATE)
    assert (await hospital.auditor.VerifyChain(FULL)).intact

    async with behind_the_service(hospital.db) as connection:
        await connection.execute(
            text("UPDATE audit.chain_checkpoints SET hash = :h WHERE checkpoint_number = 2"),
            {"h": bytes(32)},
        )

    reply = await hospital.auditor.VerifyChain(FULL)
    assert not reply.intact
    assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_CHECKPOINT_INVALID
    assert (reply.first_break.checkpoint_number, reply.first_break.sequence_number) == (2, 6)


@pytest.mark.parametrize("in_process", [100, 1], ids=["in-process", "worker"])
async def test_deleted_older_checkpoints_are_reported(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch, in_process: int
) -> None:
    """A superuser deleting the oldest checkpoints (to hide a rewrite below them) is caught,
    whether the service checks them itself or its worker does."""
    monkeypatch.setattr(anchoring, "IN_PROCESS_CHECKPOINTS", in_process)
    for _ in range(3):
        await hospital.write(3)
        await hospital.auditor.CreateChainCheckpoint(CREATE)
    first = await hospital.auditor.VerifyChain(FULL)
    assert first.intact, str(first.first_break)

    async with behind_the_service(hospital.db) as connection:
        await connection.execute(
            text("DELETE FROM audit.chain_checkpoints WHERE checkpoint_number = 1")
        )

    reply = await hospital.auditor.VerifyChain(FULL)
    assert not reply.intact
    assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_CHECKPOINT_INVALID
    assert (reply.first_break.checkpoint_number, reply.first_break.sequence_number) == (1, 1)


async def test_a_checkpoint_row_that_no_longer_fits_the_signed_layout_is_invalid_not_a_crash(
    hospital: Hospital,
) -> None:
    """A superuser who drops the table's CHECKs can store what no signature could cover (a
    negative sequence number here): it is a forged checkpoint, reported as such, not an
    INTERNAL error."""
    await hospital.write(4)
    await hospital.auditor.CreateChainCheckpoint(CREATE)
    await hospital.write(2)
    await hospital.auditor.CreateChainCheckpoint(CREATE)

    async with behind_the_service(hospital.db) as connection:
        await connection.execute(
            text("ALTER TABLE audit.chain_checkpoints DROP CONSTRAINT checkpoint_covers_events")
        )
        await connection.execute(
            text(
                "UPDATE audit.chain_checkpoints SET sequence_number = -1 "
                "WHERE checkpoint_number = 1"
            )
        )

    reply = await hospital.auditor.VerifyChain(FULL)
    assert not reply.intact
    assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_CHECKPOINT_INVALID
    assert reply.first_break.checkpoint_number == 1


# --- replicas follow each other's checkpoints --------------------------------------------------


@asynccontextmanager
async def second_replica(
    hospital: Hospital, issuer: Issuer, log_file: Path, **env: str
) -> AsyncIterator[Stub]:
    """Another audit server on the same database and key, with a checkpoint log of its own; its
    stub as an auditor calls it."""
    env = {**hospital.env, "HIS_AUDIT_CHECKPOINT_LOG": str(log_file), **env}
    replica = await start(AUDIT, service_config("audit", **env), hospital.url)
    try:
        async with channel_as(replica.address, issuer.staff("AUDITOR")) as channel:
            yield pb_grpc.AuditServiceStub(channel)
    finally:
        await replica.stop(grace_s=0.5)


def logged_numbers(log_file: Path) -> list[int]:
    """The checkpoint numbers in a checkpoint log, in file order."""
    if not log_file.exists():
        return []
    lines = log_file.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["checkpoint_number"] for line in lines if line.strip()]


async def test_a_cut_under_another_replicas_checkpoint_is_missing_on_the_replica_that_followed(
    hospital: Hospital, issuer: Issuer, tmp_path: Path
) -> None:
    log_b = tmp_path / "replica-b.jsonl"
    async with second_replica(hospital, issuer, log_b) as replica_b:
        await hospital.write(10)
        await replica_b.CreateChainCheckpoint(CREATE)  # B signs checkpoint 1
        await hospital.write(10)
        signed = await hospital.auditor.CreateChainCheckpoint(CREATE)  # A signs checkpoint 2
        assert (signed.checkpoint_number, signed.sequence_number) == (2, 20)
        assert logged_numbers(hospital.log_file) == [1, 2]  # A followed B's first
        await hospital.write(5)
        assert (await replica_b.VerifyChain(INCREMENTAL)).intact  # B follows A's checkpoint
        assert logged_numbers(log_b) == [1, 2]

        # The superuser removes A's checkpoint and the tail it covered, and winds the head back.
        async with behind_the_service(hospital.db) as connection:
            await connection.execute(
                text("DELETE FROM audit.chain_checkpoints WHERE checkpoint_number = 2")
            )
        await cut_tail(hospital.db, 15)

        def assert_missing(reply: pb.VerifyChainResponse) -> None:
            assert not reply.intact
            assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_MISSING
            assert reply.first_break.sequence_number == 16
            assert reply.first_break.last_missing_sequence_number >= 20
            assert reply.anchor.checkpoint_number == 2

        for request in (FULL, INCREMENTAL):
            assert_missing(await replica_b.VerifyChain(request))
        # B refuses to seal the cut chain on top of the checkpoint below the removed one.
        failure = await fails(replica_b.CreateChainCheckpoint(CREATE))
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "CHECKPOINT_INVALID",
        )

    # A new process of B still knows it from its own log.
    async with second_replica(hospital, issuer, log_b) as replica_b:
        assert_missing(await replica_b.VerifyChain(FULL))


async def test_a_forged_checkpoint_row_is_not_followed(
    hospital: Hospital, issuer: Issuer, tmp_path: Path
) -> None:
    log_b = tmp_path / "replica-b.jsonl"
    async with second_replica(hospital, issuer, log_b) as replica_b:
        await hospital.write(10)
        genuine = await hospital.auditor.CreateChainCheckpoint(CREATE)
        assert (await replica_b.VerifyChain(INCREMENTAL)).intact
        assert logged_numbers(log_b) == [1]
        await hospital.write(5)

        # Checkpoint 2 as the superuser would make it: the right key id, linked to checkpoint
        # 1, covering the head, signed with a key of their own.
        previous = SignedCheckpoint(
            checkpoint_number=genuine.checkpoint_number,
            sequence_number=genuine.sequence_number,
            hash=genuine.hash,
            create_time=genuine.create_time.ToDatetime(tzinfo=dt.UTC),
            key_id=genuine.key_id,
            previous_digest=genuine.previous_checkpoint_digest,
            events_digest=genuine.events_digest,
            signature=genuine.signature,
        )
        head = bytes.fromhex(
            await scalar(hospital.db, "SELECT encode(last_hash, 'hex') FROM audit.chain_head")
        )
        unsigned = SignedCheckpoint(
            checkpoint_number=2,
            sequence_number=15,
            hash=head,
            create_time=dt.datetime.now(dt.UTC).replace(microsecond=0),
            key_id=genuine.key_id,
            previous_digest=previous.digest(),
            events_digest=bytes(32),
        )
        signature = Ed25519PrivateKey.generate().sign(unsigned.message())
        async with behind_the_service(hospital.db) as connection:
            await connection.execute(
                text(
                    "INSERT INTO audit.chain_checkpoints VALUES (2, 15, :h, :t, :k, :p, :e, :x, :s)"
                ),
                {
                    "h": unsigned.hash,
                    "t": unsigned.create_time,
                    "k": unsigned.key_id,
                    "p": unsigned.previous_digest,
                    "e": unsigned.events_digest,
                    "x": b"",
                    "s": signature,
                },
            )

        reply = await replica_b.VerifyChain(INCREMENTAL)
        assert not reply.intact
        assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_CHECKPOINT_INVALID
        assert reply.first_break.checkpoint_number == 2
        assert reply.anchor.checkpoint_number == 1  # the forged one anchors nothing
        assert logged_numbers(log_b) == [1]

        # Never adopted, so its removal is no loss: B finds the chain intact again.
        async with behind_the_service(hospital.db) as connection:
            await connection.execute(
                text("DELETE FROM audit.chain_checkpoints WHERE checkpoint_number = 2")
            )
        assert (await replica_b.VerifyChain(FULL)).intact
        assert logged_numbers(log_b) == [1]


async def test_a_replica_follows_on_its_interval_without_being_called(
    hospital: Hospital, issuer: Issuer, tmp_path: Path
) -> None:
    log_b = tmp_path / "replica-b.jsonl"
    async with second_replica(hospital, issuer, log_b, HIS_AUDIT_CHECKPOINT_INTERVAL_S="0.2"):
        await hospital.write(10)
        await hospital.auditor.CreateChainCheckpoint(CREATE)
        # B's interval task follows A's checkpoint (and, the chain not having moved, signs
        # none of its own); bounded by the test timeout.
        followed = logged_numbers(log_b)
        while followed != [1]:
            await asyncio.sleep(0.05)
            followed = logged_numbers(log_b)
        await asyncio.sleep(0.5)
        assert logged_numbers(log_b) == [1]
        assert await scalar(hospital.db, "SELECT count(*) FROM audit.chain_checkpoints") == 1
