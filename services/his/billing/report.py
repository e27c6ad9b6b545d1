"""`his billing reconcile`: ask billing to reconcile its charges with what scheduling, orders and
pharmacy rendered in a period, print the counts and every discrepancy; exit code 1 when a
rendered service is not charged or charged twice."""

from __future__ import annotations

import datetime as dt
import os
from typing import TextIO

from google.protobuf.timestamp_pb2 import Timestamp

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his_client import HisClients, static_token


def instant(text: str) -> dt.datetime:
    """A date (`2026-12-01`, midnight UTC) or an ISO 8601 time; naive times are UTC."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _stamp(value: dt.datetime) -> Timestamp:
    made = Timestamp()
    made.FromDatetime(value)
    return made


async def reconcile(since: dt.datetime, until: dt.datetime, *, user: str, out: TextIO) -> int:
    """Print the report of [since, until); 1 when anything is missing or duplicated."""
    from his.login import issue_token  # noqa: PLC0415

    token = os.environ.get("HIS_TOKEN") or await issue_token(user)
    async with HisClients(token=static_token(token)) as his:
        report = await his.billing.ReconcileCharges(
            pb.ReconcileChargesRequest(
                period=types_pb2.Period(start_time=_stamp(since), end_time=_stamp(until))
            )
        )
    print(
        f"{since.isoformat()} to {until.isoformat()}: {report.rendered} rendered, "
        f"{report.charge_items} charge items, {report.missing} missing, "
        f"{report.duplicated} duplicated",
        file=out,
    )
    for found in report.discrepancies:
        kind = pb.ChargeDiscrepancy.Kind.Name(found.kind).removeprefix("KIND_")
        items = " ".join(found.charge_items) or "-"
        code = f"{found.code.system}|{found.code.code}"
        print(f"{kind:<11} {found.source}  {code}  {items}", file=out)
    return 1 if report.missing or report.duplicated else 0
