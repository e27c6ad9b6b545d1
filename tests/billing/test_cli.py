"""`his billing reconcile`: the counts and every discrepancy printed, exit code 1 when a rendered
service is not charged, 2 for a bad period."""

from __future__ import annotations

import datetime as dt
import io

import pytest

from his.billing.report import instant, reconcile
from his.cli import main
from his.runtime.server import RunningService
from tests.billing.helpers import CLERK_TOKEN, handed_over, now
from tests.pharmacy.helpers import Pharmacy
from tests.support import relay_paused


async def test_a_handed_over_dispense_without_a_charge_fails_the_reconciliation(
    pharmacy: Pharmacy,
    iam_service: RunningService,
    billing_service: RunningService,
    pharmacy_service: RunningService,
    patient: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HIS_TOKEN", CLERK_TOKEN)
    monkeypatch.setenv("HIS_BILLING_ADDR", billing_service.address)
    out = io.StringIO()
    # The pharmacy's relay held: the hand-over's event has not reached billing, so no charge.
    async with relay_paused(pharmacy_service):
        dispense, _ = await handed_over(pharmacy, iam_service, patient)
        code = await reconcile(
            now() - dt.timedelta(hours=1), now() + dt.timedelta(minutes=5), user="", out=out
        )
    printed = out.getvalue()
    assert code == 1
    assert " missing" in printed.splitlines()[0]
    assert any(line.startswith("MISSING") and dispense in line for line in printed.splitlines()), (
        printed
    )


def test_a_period_is_read_as_utc_dates_or_times() -> None:
    assert instant("2026-12-01") == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert instant("2026-12-01T08:00:00+08:00").utcoffset() == dt.timedelta(hours=8)


def test_a_bad_date_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["billing", "reconcile", "--since", "yesterday", "--until", "2026-12-02"])
    assert done.value.code == 2
    assert "his billing reconcile" in capsys.readouterr().err
