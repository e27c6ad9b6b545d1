"""iam's downgrades with data in the tables: a rollback loses no staff member and puts no
access that was never approved into force."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.migrations import downgrade, upgrade
from tests.iam.conftest import fresh_database


async def _execute(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(sql), params)
            return list(result.fetchall()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def _pending_newcomer(url: str) -> uuid.UUID:
    """An administrator and a new staff member whose DOCTOR role waits for approval."""
    admin, newcomer = uuid.uuid4(), uuid.uuid4()
    await _execute(
        url,
        "INSERT INTO iam.staff (id, username, display_name, roles) "
        "VALUES (:a, :an, 'A', ARRAY['ADMINISTRATOR']), (:n, :nn, 'N', ARRAY[]::text[])",
        a=admin,
        an=f"adm-{admin.hex[:8]}",
        n=newcomer,
        nn=f"new-{newcomer.hex[:8]}",
    )
    await _execute(
        url,
        "INSERT INTO iam.access_changes (id, staff_id, kind, roles, state, proposer_id) "
        "VALUES (:c, :s, 'roles', ARRAY['DOCTOR'], 'pending', :p)",
        c=uuid.uuid4(),
        s=newcomer,
        p=admin,
    )
    return newcomer


async def test_downgrading_0006_keeps_staff_whose_roles_wait_for_approval(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres, f"iam_down6_{uuid.uuid4().hex[:8]}")
    newcomer = await _pending_newcomer(url)
    await _execute(
        url,
        "INSERT INTO iam.staff (id, username, display_name, roles) "
        "VALUES (:i, :u, 'P', ARRAY['PRIVACY_OFFICER'])",
        i=uuid.uuid4(),
        u=f"po-{uuid.uuid4().hex[:8]}",
    )

    await asyncio.to_thread(downgrade, "iam", url, "0005")

    staff = await _execute(url, "SELECT id, roles FROM iam.staff ORDER BY username")
    assert newcomer in {row[0] for row in staff}
    assert all("PRIVACY_OFFICER" not in row[1] for row in staff)
    assert len(staff) == 3


async def test_downgrading_0004_puts_no_pending_membership_into_force(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres, f"iam_down4_{uuid.uuid4().hex[:8]}")
    doctor, pending, approved = (uuid.uuid4() for _ in range(3))
    await _execute(
        url,
        "INSERT INTO iam.staff (id, username, display_name, roles) "
        "VALUES (:i, :u, 'D', ARRAY['DOCTOR'])",
        i=doctor,
        u=f"doc-{doctor.hex[:8]}",
    )
    for membership, state in ((pending, "pending"), (approved, "approved")):
        department = uuid.uuid4()  # one each: memberships of one department may not overlap
        await _execute(
            url,
            "INSERT INTO iam.departments (id, code, display_name, kind) "
            "VALUES (:d, :c, 'Clinic', 'outpatient')",
            d=department,
            c=f"C{department.hex[:8].upper()}",
        )
        await _execute(
            url,
            "INSERT INTO iam.memberships "
            "(id, staff_id, department_id, period_start, approval_state, access_change_id) "
            "VALUES (:m, :s, :d, now(), :state, :c)",
            m=membership,
            s=doctor,
            d=department,
            state=state,
            c=uuid.uuid4(),
        )

    await asyncio.to_thread(downgrade, "iam", url, "0003")

    ends = dict(await _execute(url, "SELECT id, period_end FROM iam.memberships"))
    assert ends[pending] is not None, "a never-approved membership is in force after the rollback"
    assert ends[approved] is None


async def test_downgrading_0007_retires_half_made_enrolments_and_keeps_credentials(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres, f"iam_down7_{uuid.uuid4().hex[:8]}")
    # Rows as 0007 and 0008 wrote them (before 0009's assurance).
    await asyncio.to_thread(downgrade, "iam", url, "0008")
    member, admin = uuid.uuid4(), uuid.uuid4()
    await _execute(
        url,
        "INSERT INTO iam.staff (id, username, display_name, roles) VALUES "
        "(:m, :mn, 'M', ARRAY['DOCTOR']), (:a, :an, 'A', ARRAY['ADMINISTRATOR'])",
        m=member,
        mn=f"doc-{member.hex[:8]}",
        a=admin,
        an=f"adm-{admin.hex[:8]}",
    )
    used, waiting = uuid.uuid4(), uuid.uuid4()
    await _execute(
        url,
        "INSERT INTO iam.staff_enrolments (id, staff_id, code_hash, created_by, create_time, "
        "expire_time, used_time, approval_required) VALUES "
        "(:u, :m, sha256('u'::bytea), :by, now(), now() + interval '1 day', now(), false), "
        "(:w, :m, sha256('w'::bytea), :by, now(), now() + interval '1 day', NULL, true)",
        u=used,
        w=waiting,
        m=member,
        by=f"staff/{admin}",
    )
    await _execute(
        url,
        "INSERT INTO iam.staff_credentials (staff_id, password_hash, totp_secret_enc, "
        "enrol_time, enrolment_id) VALUES (:m, '$argon2id$x', 'x'::bytea, now(), :u)",
        m=member,
        u=used,
    )

    await asyncio.to_thread(downgrade, "iam", url, "0006")

    credentials = await _execute(url, "SELECT staff_id FROM iam.staff_credentials")
    assert [row[0] for row in credentials] == [member]
    voided = await _execute(
        url, "SELECT void_time IS NOT NULL FROM iam.staff_enrolments WHERE id = :w", w=waiting
    )
    assert voided == [(True,)]
    # Without the trigger, 0006's rule (one administrator) holds again.
    await _execute(
        url,
        "UPDATE iam.staff_credentials SET password_hash = '$argon2id$y' WHERE staff_id = :m",
        m=member,
    )


async def test_0009_labels_existing_credentials_and_its_downgrade_keeps_them(
    postgres: EmbeddedPostgres,
) -> None:
    """Upgrading to 0009 labels what exists (an approved two-administrator enrolment's credential
    TWO_ADMINISTRATORS, a one-administrator one ONE_ADMINISTRATOR, one set directly DIRECT);
    downgrading to 0008 keeps every credential and 0008's trigger."""
    url = await fresh_database(postgres, f"iam_down9_{uuid.uuid4().hex[:8]}")
    await asyncio.to_thread(downgrade, "iam", url, "0008")
    two, one, direct, admin, other = (uuid.uuid4() for _ in range(5))
    await _execute(
        url,
        "INSERT INTO iam.staff (id, username, display_name, roles) "
        "SELECT id, 'u-' || left(id::text, 8), 'S', ARRAY['DOCTOR'] "
        "FROM unnest(CAST(:ids AS uuid[])) AS id",
        ids=[two, one, direct, admin, other],
    )
    by_two, by_one = uuid.uuid4(), uuid.uuid4()
    await _execute(
        url,
        "INSERT INTO iam.staff_enrolments (id, staff_id, code_hash, created_by, create_time, "
        "expire_time, approval_required, approved_by, approve_time, approval_code_hash) VALUES "
        "(:e2, :two, sha256('a'::bytea), :by, now(), now() + interval '1 day', true, :ok, now(), "
        "sha256('b'::bytea)), "
        "(:e1, :one, sha256('c'::bytea), :by, now(), now() + interval '1 day', false, NULL, "
        "NULL, NULL)",
        e2=by_two,
        e1=by_one,
        two=two,
        one=one,
        by=f"staff/{admin}",
        ok=f"staff/{other}",
    )
    await _execute(
        url,
        "INSERT INTO iam.staff_credentials (staff_id, password_hash, totp_secret_enc, "
        "enrol_time, enrolment_id) VALUES (:two, '$argon2id$x', 'x'::bytea, now(), :e2), "
        "(:one, '$argon2id$x', 'x'::bytea, now(), :e1), "
        "(:direct, '$argon2id$x', 'x'::bytea, now(), NULL)",
        two=two,
        one=one,
        direct=direct,
        e2=by_two,
        e1=by_one,
    )

    await asyncio.to_thread(upgrade, "iam", url)

    labels = dict(await _execute(url, "SELECT staff_id, assurance FROM iam.staff_credentials"))
    assert labels == {
        two: "TWO_ADMINISTRATORS",
        one: "ONE_ADMINISTRATOR",
        direct: "DIRECT",
    }
    enrolments = dict(await _execute(url, "SELECT id, assurance FROM iam.staff_enrolments"))
    assert enrolments == {by_two: "TWO_ADMINISTRATORS", by_one: "ONE_ADMINISTRATOR"}

    await asyncio.to_thread(downgrade, "iam", url, "0008")

    kept = await _execute(url, "SELECT staff_id FROM iam.staff_credentials")
    assert {row[0] for row in kept} == {two, one, direct}
    # 0008's trigger still holds: no plain update of the secrets.
    try:
        await _execute(
            url,
            "UPDATE iam.staff_credentials SET password_hash = '$argon2id$y' WHERE staff_id = :s",
            s=two,
        )
    except Exception as error:  # the driver's check_violation, whatever its class
        assert "replaced only through an enrolment approved" in str(error)
    else:
        raise AssertionError("0008's trigger is gone after the downgrade")
