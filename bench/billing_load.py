"""Load benchmark of the billing service: RecordPayment, as a ratio to echo.

Starts its own embedded PostgreSQL and real `his serve` processes (billing with iam and audit:
every call is authenticated, authorized and audited). It charges `--seed` patients one CBC each
(seeded price 40.00 CNY) as orders' relay would (DeliverEvents as `services/orders`), invoices and
issues each as a billing clerk, then drives RecordPayment — one transaction inserting the payment
under its request id and counting it towards the invoice by one conditional UPDATE (never beyond
the balance due), with its audit event — alternating with the echo server (bench/echo.py).
Payments of 0.01 CNY spread over the invoices (`--seed`), so rows contend only as often as a
cashier's desk would.

Then the charge-delivery rate: `--events` completed-order events are put in the orders service's
outbox at once (as if orders had just completed that many lab orders), and the clock runs until
billing holds a charge for each — orders' real relay claiming and delivering batches, billing's
DeliverEvents applying each event once with its inbox row and pricing it. Printed as events/s
and as a ratio to the echo server driven one call at a time (a relay is one stream of calls).
Run: `python -m bench.billing_load`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
import uuid

import asyncpg
from google.protobuf.message import Message

from bench.harness import (
    HEADER,
    Call,
    Hospital,
    address,
    channel,
    compare,
    drive,
    echo_call,
    service_token,
    services,
    staff_token,
)
from his.billing.v1 import billing_service_pb2 as pb
from his.billing.v1 import billing_service_pb2_grpc as pb_grpc
from his.common.v1 import types_pb2
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.runtime.outbox import envelope

# The charge-delivery run gives up (and says how far it got) after this long.
DELIVERY_DEADLINE_S = 300.0
CBC = types_pb2.Coding(system="http://loinc.org", code="58410-2")


def _completed(patient: str) -> orders_pb.ServiceRequestChanged:
    order = orders_pb.ServiceRequest(
        name=f"serviceRequests/{uuid.uuid4()}",
        patient=patient,
        code=CBC,
        status=orders_pb.SERVICE_REQUEST_STATUS_COMPLETED,
    )
    order.update_time.FromDatetime(dt.datetime.now(dt.UTC))
    return orders_pb.ServiceRequestChanged(service_request=order, revision=1)


async def _bench(hospital: Hospital, calls: int, concurrency: int, seed: int, rounds: int) -> None:
    clerk = await staff_token(hospital, "bench.clerk", "BILLING_CLERK")
    orders = await service_token(hospital, "orders")
    async with (
        channel(address("billing"), clerk) as billing_channel,
        channel(address("billing"), orders) as orders_channel,
        channel(hospital.echo, clerk) as echo_channel,
    ):
        billing = pb_grpc.BillingServiceStub(billing_channel)
        invoices: list[str] = []
        for _ in range(seed):
            patient = f"patients/{uuid.uuid4()}"
            await pb_grpc.BillingServiceStub(orders_channel).DeliverEvents(
                pb.DeliverEventsRequest(events=[envelope(_completed(patient), source="orders")]),
                timeout=10,
            )
            draft = await billing.CreateInvoice(
                pb.CreateInvoiceRequest(invoice=pb.Invoice(patient=patient)), timeout=10
            )
            await billing.IssueInvoice(pb.IssueInvoiceRequest(name=draft.name), timeout=10)
            invoices.append(draft.name)

        def paying(i: int) -> pb.RecordPaymentRequest:
            return pb.RecordPaymentRequest(
                parent=invoices[i % len(invoices)],
                payment=pb.Payment(
                    amount=types_pb2.Money(currency_code="CNY", amount_minor=1),
                    method=pb.PAYMENT_METHOD_CASH,
                ),
                request_id=f"bench-payment-{uuid.uuid4()}",
            )

        def like(message: Message) -> Call:
            return echo_call(echo_channel, message)

        print(HEADER)
        await compare(
            {"RecordPayment": lambda i: billing.RecordPayment(paying(i), timeout=10)},
            calls // rounds,
            concurrency,
            like(paying(0)),
            rounds=rounds,
        )


async def _delivery_rate(hospital: Hospital, events: int, echo_calls: int) -> None:
    """Events/s from the orders outbox to billing's charges, against echo at one in flight."""
    clerk = await staff_token(hospital, "bench.clerk", "BILLING_CLERK")
    async with channel(hospital.echo, clerk) as echo_channel:
        sample = _completed(f"patients/{uuid.uuid4()}")
        echo = await drive("echo (1 in flight)", echo_calls, 1, echo_call(echo_channel, sample))
    envelopes = [
        envelope(_completed(f"patients/{uuid.uuid4()}"), source="orders") for _ in range(events)
    ]
    connection = await asyncpg.connect(hospital.env["HIS_DATABASE_URL"])
    try:
        before = await connection.fetchval("SELECT count(*) FROM billing.charge_items")
        started = time.perf_counter()
        await connection.executemany(
            "INSERT INTO orders.outbox (event_id, destination, event_type, envelope) "
            "VALUES ($1, 'billing', $2, $3)",
            [(uuid.UUID(e.event_id), e.event_type, e.SerializeToString()) for e in envelopes],
        )
        while True:
            charged = await connection.fetchval("SELECT count(*) FROM billing.charge_items")
            if charged - before >= events:
                break
            if time.perf_counter() - started > DELIVERY_DEADLINE_S:
                raise SystemExit(
                    f"charge delivery: only {charged - before} of {events} events charged "
                    f"after {DELIVERY_DEADLINE_S:.0f} s (dead letters in orders.outbox?)"
                )
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    rate = events / elapsed
    print(
        f"charge delivery: {events} events from orders' outbox to billing's charges in "
        f"{elapsed:.2f} s = {rate:.0f} events/s; echo at 1 in flight {echo.rate:.0f} calls/s; "
        f"ratio {rate / echo.rate:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=50, help="patients, each with an invoice")
    parser.add_argument("--rounds", type=int, default=2, help="echo/service alternations")
    parser.add_argument(
        "--events", type=int, default=5000, help="events for the charge-delivery rate"
    )
    args = parser.parse_args()
    with services("billing", "orders") as hospital:
        asyncio.run(_bench(hospital, args.calls, args.concurrency, args.seed, args.rounds))
        asyncio.run(_delivery_rate(hospital, args.events, 2000))


if __name__ == "__main__":
    main()
