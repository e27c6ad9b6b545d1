"""The BillingService servicer: validate → authorize → one transaction (change + audit events in
the outbox) → respond.

Access is decided by the caller's role alone (billing clerks: `billing.charge`, `billing.invoice`,
`billing.payment`; clinicians nothing), so no record is loaded to decide; every read and write of
a patient's charges, invoices and payments is audited with the patient. The price list is no
patient data (it is `billing.charge` to change and read, audited without a patient).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import grpc
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from his.base import identity
from his.base.errors import Aborted, FailedPrecondition, InvalidArgument
from his.billing import store
from his.billing.config import BillingConfig
from his.billing.events import consumes
from his.billing.mapping import (
    CHARGE_STATUS,
    INVOICE_STATUS,
    PAYMENT_METHOD,
    balance_name,
    charge_item_name,
    charge_item_to_proto,
    invoice_name,
    invoice_to_proto,
    money,
    payment_name,
    payment_to_proto,
    tariff_item_name,
    tariff_item_to_proto,
)
from his.billing.reconcile import reconcile
from his.billing.tables import SCHEMA
from his.billing.v1 import billing_service_pb2 as pb
from his.billing.v1 import billing_service_pb2_grpc as pb_grpc
from his.billing.validation import (
    MAX_PAYMENT_MINOR,
    MAX_REFERENCE,
    amount,
    invoice_lines,
    new_charge,
    new_payment,
    new_tariff_item,
    period,
    reason,
)
from his.runtime.access import Permit
from his.runtime.database import Database
from his.runtime.idempotency import RequestKey
from his.runtime.inbox import apply_events
from his.runtime.pagination import PageTokens, time_and_id, time_and_id_values
from his.runtime.server import ServiceResources
from his.runtime.validation import Violations, reference, required_id
from his_client import HisClients
from his_client.patient import require_active

Context = grpc.aio.ServicerContext[Any, Any]
_CHARGE = pb.ChargeItem.DESCRIPTOR.full_name
_INVOICE = pb.Invoice.DESCRIPTOR.full_name
_PAYMENT = pb.Payment.DESCRIPTOR.full_name
_TARIFF = pb.TariffItem.DESCRIPTOR.full_name
_BALANCE = pb.PatientBalance.DESCRIPTOR.full_name


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _patient(row: Any) -> str:
    return f"patients/{row.patient_id}"


class BillingService(pb_grpc.BillingServiceServicer):
    """Charges, the price list, invoices and payments over the `billing` schema."""

    def __init__(self, resources: ServiceResources, config: BillingConfig) -> None:
        self._db: Database = resources.database
        self._clients: HisClients = resources.clients
        self._pages = PageTokens(resources.config.page_token_key)
        self._access = resources.access
        self._currency = config.currency
        self._consumes = consumes(config.currency)

    async def _audit(
        self, action: str, permit: Permit, name: str, kind: str, patient: str = ""
    ) -> None:
        await self._access.record(
            action, permit, patient=patient, resource_name=name, resource_type=kind
        )

    # --- charge items ------------------------------------------------------------------------

    async def CreateChargeItem(
        self, request: pb.CreateChargeItemRequest, context: Context
    ) -> pb.ChargeItem:
        v = Violations()
        if not request.HasField("charge_item"):
            raise InvalidArgument.field("charge_item", "is required")
        values = new_charge(v, request.charge_item, self._currency, _now())
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        permit = await self._access.require("create", "billing.charge")
        key = RequestKey.of(request, request_id)
        async with self._db.read() as session:
            earlier = await key.first(lambda used: store.charge_by_request(session, used))
        if earlier is None:
            await require_active(
                self._clients,
                request.charge_item.patient,
                when_merged="charge the surviving record",
            )
        try:
            async with self._db.transaction() as session:
                row = await key.create(
                    lambda: store.insert_charge(session, values, key.pair),
                    lambda used: store.charge_by_request(session, used),
                )
                await self._audit(
                    "create", permit, charge_item_name(row.id), _CHARGE, _patient(row)
                )
        except IntegrityError as error:
            async with self._db.read() as session:
                earlier = await key.first(lambda used: store.charge_by_request(session, used))
            if earlier is not None:
                return charge_item_to_proto(earlier)
            conflict = store.source_taken(error)
            if conflict is not None:
                raise conflict from None
            raise
        return charge_item_to_proto(row)

    async def GetChargeItem(
        self, request: pb.GetChargeItemRequest, context: Context
    ) -> pb.ChargeItem:
        charge_id = required_id("name", request.name, collection="chargeItems")
        permit = await self._access.require("read", "billing.charge")
        async with self._db.transaction() as session:
            row = await store.find_charge(session, charge_id)
            if row is None:
                raise store.not_found(request.name)
            await self._audit("read", permit, request.name, _CHARGE, _patient(row))
        return charge_item_to_proto(row)

    async def ListChargeItems(
        self, request: pb.ListChargeItemsRequest, context: Context
    ) -> pb.ListChargeItemsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        status = None
        if request.status:
            number = v.enum("status", request.status, pb.ChargeItemStatus.DESCRIPTOR)
            status = CHARGE_STATUS.text(number) if number else None
        where = store.ChargeFilter(
            patient_id=reference(v, "patient", request.patient, "patients"),
            encounter_id=reference(v, "encounter", request.encounter, "encounters"),
            source=v.text("source", request.source, max_len=200) if request.source else None,
            status=status,
        )
        v.raise_if_any()
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        permit = await self._access.require("read", "billing.charge")
        async with self._db.transaction() as session:
            rows = await store.list_charges(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
            page = keyset.page(rows, lambda r: time_and_id_values(r.create_time, r.id))
            await self._access.record_each(
                "read",
                [(permit, _patient(r), charge_item_name(r.id)) for r in page.rows],
                _CHARGE,
            )
        return pb.ListChargeItemsResponse(
            charge_items=[charge_item_to_proto(r) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    async def CancelChargeItem(
        self, request: pb.CancelChargeItemRequest, context: Context
    ) -> pb.ChargeItem:
        v = Violations()
        charge_id = v.resource_id("name", request.name, collection="chargeItems")
        why = reason(v, "reason", request.reason)
        v.raise_if_any()
        assert charge_id is not None and why is not None
        permit = await self._access.require("update", "billing.charge")
        async with self._db.transaction() as session:
            row, _ = await store.cancel_charge(session, charge_id, why, request.etag)
            await self._audit("update", permit, request.name, _CHARGE, _patient(row))
        return charge_item_to_proto(row)

    # --- invoices ----------------------------------------------------------------------------

    async def _invoice_proto(self, row: Any) -> pb.Invoice:
        async with self._db.read() as session:
            lines = await store.lines_of(session, [row.id])
        return invoice_to_proto(row, lines[row.id])

    async def CreateInvoice(self, request: pb.CreateInvoiceRequest, context: Context) -> pb.Invoice:
        v = Violations()
        if not request.HasField("invoice"):
            raise InvalidArgument.field("invoice", "is required")
        given = request.invoice
        patient_id = v.resource_id("invoice.patient", given.patient, collection="patients")
        encounter_id = reference(v, "invoice.encounter", given.encounter, "encounters")
        listed = invoice_lines(v, given.charge_items)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert patient_id is not None
        permit = await self._access.require("create", "billing.invoice")
        key = RequestKey.of(request, request_id)

        async def replay() -> Any:
            async with self._db.read() as session:
                return await key.first(lambda used: store.invoice_by_request(session, used))

        earlier = await replay()
        if earlier is None:
            ask = store.Invoicing(patient_id, encounter_id, listed, self._currency, key.pair)
            try:
                async with self._db.transaction() as session:
                    row = await store.create_invoice(session, ask)
                    if row is not None:
                        name = invoice_name(row.id)
                        await self._audit("create", permit, name, _INVOICE, _patient(row))
            except (IntegrityError, FailedPrecondition, Aborted):
                # A concurrent call with this request id may have billed the charges first: its
                # invoice is the answer. Otherwise the refusal stands.
                if await replay() is None:
                    raise
                row = None
            if row is not None:
                return await self._invoice_proto(row)
            async with self._db.read() as session:
                earlier = await key.taken(lambda used: store.invoice_by_request(session, used))
        await self._audit("create", permit, invoice_name(earlier.id), _INVOICE, _patient(earlier))
        return await self._invoice_proto(earlier)

    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: Context) -> pb.Invoice:
        invoice_id = required_id("name", request.name, collection="invoices")
        permit = await self._access.require("read", "billing.invoice")
        async with self._db.transaction() as session:
            row = await store.find_invoice(session, invoice_id)
            if row is None:
                raise store.not_found(request.name)
            lines = await store.lines_of(session, [invoice_id])
            await self._audit("read", permit, request.name, _INVOICE, _patient(row))
        return invoice_to_proto(row, lines[invoice_id])

    async def ListInvoices(
        self, request: pb.ListInvoicesRequest, context: Context
    ) -> pb.ListInvoicesResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        status = None
        if request.status:
            number = v.enum("status", request.status, pb.InvoiceStatus.DESCRIPTOR)
            status = INVOICE_STATUS.text(number) if number else None
        where = store.InvoiceFilter(
            patient_id=reference(v, "patient", request.patient, "patients"),
            encounter_id=reference(v, "encounter", request.encounter, "encounters"),
            status=status,
        )
        v.raise_if_any()
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        permit = await self._access.require("read", "billing.invoice")
        async with self._db.transaction() as session:
            rows = await store.list_invoices(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
            page = keyset.page(rows, lambda r: time_and_id_values(r.create_time, r.id))
            lines = await store.lines_of(session, [r.id for r in page.rows])
            await self._access.record_each(
                "read", [(permit, _patient(r), invoice_name(r.id)) for r in page.rows], _INVOICE
            )
        return pb.ListInvoicesResponse(
            invoices=[invoice_to_proto(r, lines[r.id]) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    async def IssueInvoice(self, request: pb.IssueInvoiceRequest, context: Context) -> pb.Invoice:
        invoice_id = required_id("name", request.name, collection="invoices")
        permit = await self._access.require("update", "billing.invoice")
        async with self._db.transaction() as session:
            row, _ = await store.issue_invoice(session, invoice_id, request.etag)
            lines = await store.lines_of(session, [invoice_id])
            await self._audit("update", permit, request.name, _INVOICE, _patient(row))
        return invoice_to_proto(row, lines[invoice_id])

    async def CancelInvoice(self, request: pb.CancelInvoiceRequest, context: Context) -> pb.Invoice:
        v = Violations()
        invoice_id = v.resource_id("name", request.name, collection="invoices")
        why = reason(v, "reason", request.reason)
        v.raise_if_any()
        assert invoice_id is not None and why is not None
        permit = await self._access.require("update", "billing.invoice")
        async with self._db.transaction() as session:
            row, _ = await store.cancel_invoice(session, invoice_id, why, request.etag)
            lines = await store.lines_of(session, [invoice_id])
            await self._audit("update", permit, request.name, _INVOICE, _patient(row))
        return invoice_to_proto(row, lines[invoice_id])

    # --- payments ----------------------------------------------------------------------------

    async def _payment_proto(self, row: Any) -> pb.Payment:
        async with self._db.read() as session:
            found = await store.refunds_of(session, [row.id])
        return payment_to_proto(row, found[row.id])

    async def _audit_payment(
        self, action: str, permit: Permit, row: Any, session: AsyncSession | None = None
    ) -> None:
        """Audit an access to a payment with its invoice's patient (read in `session`, the open
        transaction, when there is one: a second connection under a lock could starve the pool)."""
        if session is None:
            async with self._db.read() as reading:
                invoice = await store.find_invoice(reading, row.invoice_id)
        else:
            invoice = await store.find_invoice(session, row.invoice_id)
        patient = _patient(invoice) if invoice is not None else ""
        await self._audit(action, permit, payment_name(row.invoice_id, row.id), _PAYMENT, patient)

    async def RecordPayment(self, request: pb.RecordPaymentRequest, context: Context) -> pb.Payment:
        v = Violations()
        invoice_id = v.resource_id("parent", request.parent, collection="invoices")
        if not request.HasField("payment"):
            v.add("payment", "is required")
        values = new_payment(v, request.payment, self._currency, _now())
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        assert invoice_id is not None
        permit = await self._access.require("create", "billing.payment")
        key = RequestKey.of(request, request_id)
        try:
            async with self._db.transaction() as session:
                # A replay's insert is skipped on its request id (after a concurrent first one
                # committed); the first payment is then the answer.
                made = await store.record_payment(
                    session, invoice_id, values, identity.caller_staff_id(), key.pair
                )
                if made is not None:
                    row, patient = made
                    name = payment_name(invoice_id, row.id)
                    await self._audit("create", permit, name, _PAYMENT, patient)
                    return payment_to_proto(row, [])
                earlier = await key.taken(lambda used: store.payment_by_request(session, used))
        except IntegrityError:
            # No such invoice: the payment's foreign key (invoices are never deleted).
            async with self._db.read() as session:
                if await store.find_invoice(session, invoice_id) is None:
                    raise store.not_found(request.parent) from None
            raise
        await self._audit_payment("create", permit, earlier)
        return await self._payment_proto(earlier)

    async def ListPayments(
        self, request: pb.ListPaymentsRequest, context: Context
    ) -> pb.ListPaymentsResponse:
        v = Violations()
        invoice_id = None
        every = request.parent == "invoices/-"
        if not every:
            invoice_id = v.resource_id("parent", request.parent, collection="invoices")
        limit = v.page_size("page_size", request.page_size)
        received = period(
            v,
            "received_period",
            request.received_period,
            request.HasField("received_period"),
            required=every,
        )
        method = None
        if request.method:
            number = v.enum("method", request.method, pb.PaymentMethod.DESCRIPTOR)
            method = PAYMENT_METHOD.text(number) if number else None
        where = store.PaymentFilter(
            invoice_id=invoice_id,
            received_from=received[0] if received else None,
            received_before=received[1] if received else None,
            method=method,
            cashier_id=reference(v, "cashier", request.cashier, "staff"),
        )
        v.raise_if_any()
        keyset = self._pages.keyset(
            request.page_token, query=where.fingerprint(), limit=limit, after=time_and_id
        )
        permit = await self._access.require("read", "billing.payment")
        async with self._db.transaction() as session:
            if invoice_id is not None and await store.find_invoice(session, invoice_id) is None:
                raise store.not_found(request.parent)
            rows = await store.list_payments(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
            page = keyset.page(rows, lambda r: time_and_id_values(r.received_time, r.id))
            found = await store.refunds_of(session, [r.id for r in page.rows])
            patients = await store.patients_of(session, {r.invoice_id for r in page.rows})
            await self._access.record_each(
                "read",
                [
                    (permit, patients.get(r.invoice_id, ""), payment_name(r.invoice_id, r.id))
                    for r in page.rows
                ],
                _PAYMENT,
            )
        return pb.ListPaymentsResponse(
            payments=[payment_to_proto(r, found[r.id]) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    async def RefundPayment(self, request: pb.RefundPaymentRequest, context: Context) -> pb.Payment:
        v = Violations()
        ids = v.child_id("name", request.name, parent="invoices", collection="payments")
        why = reason(v, "reason", request.reason)
        refund_reference = v.text(
            "refund_reference", request.refund_reference, max_len=MAX_REFERENCE
        )
        part = None
        if request.HasField("amount"):
            part = amount(
                v, "amount", request.amount, self._currency, most=MAX_PAYMENT_MINOR, positive=True
            )
        request_id = v.request_id("request_id", request.request_id)
        if part is not None and request_id is None:
            v.add("request_id", "is required with an amount (a partial refund)")
        v.raise_if_any()
        assert ids is not None and why is not None
        permit = await self._access.require("update", "billing.payment")
        key = RequestKey.of(request, request_id)
        invoice_id, payment_id = ids

        async def replay() -> Any:
            async with self._db.read() as session:
                return await key.first(
                    lambda used: store.refund_by_request(session, used),
                    stored=lambda row: row.request_fingerprint,
                )

        earlier = await replay()
        ask = store.Refunding(
            invoice_id=invoice_id,
            payment_id=payment_id,
            amount_minor=part,
            reason=why,
            refund_reference=refund_reference or "",
            cashier_id=identity.caller_staff_id(),
            request=key.pair,
        )
        if earlier is None:
            try:
                async with self._db.transaction() as session:
                    row, changed = await store.refund(session, ask)
                    if changed:
                        await self._require_reference(row, refund_reference)
                    await self._audit_payment("update", permit, row, session)
            except (IntegrityError, FailedPrecondition):
                # A concurrent call with this request id may have refunded first (what is left
                # then looks too little): its refund is the answer. Otherwise the refusal stands.
                earlier = await replay()
                if earlier is None:
                    raise
        if earlier is not None:
            # The same request (the fingerprint says so): the payment as it is now.
            async with self._db.read() as session:
                found = await store.find_payment(session, invoice_id, earlier.payment_id)
            assert found is not None  # a refund's payment is never deleted
            row = found
            await self._audit_payment("update", permit, row)
        return await self._payment_proto(row)

    async def _require_reference(self, payment: Any, refund_reference: str | None) -> None:
        """A refund of a card, insurance or mobile payment names its transaction."""
        if payment.method != "cash" and not refund_reference:
            raise InvalidArgument.field(
                "refund_reference", "is required to refund a card, insurance or mobile payment"
            )

    # --- the price list ----------------------------------------------------------------------

    async def CreateTariffItem(
        self, request: pb.CreateTariffItemRequest, context: Context
    ) -> pb.TariffItem:
        v = Violations()
        if not request.HasField("tariff_item"):
            raise InvalidArgument.field("tariff_item", "is required")
        values = new_tariff_item(v, request.tariff_item, self._currency)
        request_id = v.request_id("request_id", request.request_id)
        v.raise_if_any()
        permit = await self._access.require("create", "billing.charge")
        key = RequestKey.of(request, request_id)
        try:
            async with self._db.transaction() as session:
                earlier = await key.first(lambda used: store.tariff_by_request(session, used))
                if earlier is not None:
                    return tariff_item_to_proto(earlier)
                if values["effective_time"] < _now() and await store.has_price(
                    session, values["code_system"], values["code"]
                ):
                    raise store.refused(
                        "PRICE_NOT_RETROACTIVE",
                        "the code already has a price; a new one takes effect from now on",
                    )
                row = await key.create(
                    lambda: store.insert_tariff_item(session, values, key.pair),
                    lambda used: store.tariff_by_request(session, used),
                )
                await store.price_planned(session, row)
                await self._audit("create", permit, tariff_item_name(row.id), _TARIFF)
        except (IntegrityError, FailedPrecondition) as error:
            # A concurrent call with this request id may have priced the code first.
            async with self._db.read() as session:
                earlier = await key.first(lambda used: store.tariff_by_request(session, used))
            if earlier is not None:
                return tariff_item_to_proto(earlier)
            if isinstance(error, FailedPrecondition):
                raise
            conflict = store.tariff_taken(error)
            if conflict is not None:
                raise conflict from None
            raise
        return tariff_item_to_proto(row)

    async def ListTariffItems(
        self, request: pb.ListTariffItemsRequest, context: Context
    ) -> pb.ListTariffItemsResponse:
        v = Violations()
        limit = v.page_size("page_size", request.page_size)
        system = v.text("code_system", request.code_system, max_len=200) or None
        code = v.text("code", request.code, max_len=200) or None
        if code is not None and system is None:
            v.add("code_system", "is required with code")
        at = None
        if request.HasField("effective_at"):
            at = v.instant("effective_at", request.effective_at)
        where = store.TariffFilter(code_system=system, code=code, effective_at=at)
        v.raise_if_any()
        keyset = self._pages.keyset(
            request.page_token,
            query=where.fingerprint(),
            limit=limit,
            after=lambda c: (c.text("s"), c.text("c"), c.time("t"), c.uuid("i")),
        )
        await self._access.require("read", "billing.charge")
        async with self._db.read() as session:
            rows = await store.list_tariff_items(
                session, where, after=keyset.after, limit=keyset.read_limit
            )
        page = keyset.page(
            rows,
            lambda r: {
                "s": r.code_system,
                "c": r.code,
                "t": r.effective_time.isoformat(),
                "i": str(r.id),
            },
        )
        return pb.ListTariffItemsResponse(
            tariff_items=[tariff_item_to_proto(r) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    # --- balance, reconciliation, events -----------------------------------------------------

    async def GetPatientBalance(
        self, request: pb.GetPatientBalanceRequest, context: Context
    ) -> pb.PatientBalance:
        patient_id = _balance_id(request.name)
        permit = await self._access.require("read", "billing.invoice")
        patient = f"patients/{patient_id}"
        async with self._db.transaction() as session:
            found = await store.balance(session, patient_id)
            await self._audit("read", permit, request.name, _BALANCE, patient)
        return pb.PatientBalance(
            name=balance_name(patient_id),
            unbilled=money(self._currency, found.unbilled),
            invoiced_due=money(self._currency, found.invoiced_due),
            total_due=money(self._currency, found.unbilled + found.invoiced_due),
            unpriced_charge_items=found.unpriced,
        )

    async def ReconcileCharges(
        self, request: pb.ReconcileChargesRequest, context: Context
    ) -> pb.ReconcileChargesResponse:
        v = Violations()
        window = period(v, "period", request.period, request.HasField("period"), required=True)
        v.raise_if_any()
        assert window is not None
        await self._access.require("read", "billing.charge")
        return await reconcile(self._db, self._clients, *window)

    async def DeliverEvents(
        self, request: pb.DeliverEventsRequest, context: Context
    ) -> pb.DeliverEventsResponse:
        outcome = await apply_events(self._db, SCHEMA, request.events, self._consumes)
        return pb.DeliverEventsResponse(applied=outcome.applied, duplicates=outcome.duplicates)


def _balance_id(name: str) -> uuid.UUID:
    """The patient id of `patients/{patient}/billingBalance`."""
    if not name.endswith("/billingBalance"):
        raise InvalidArgument.field("name", "must be patients/{patient}/billingBalance")
    return required_id("name", name.removesuffix("/billingBalance"), collection="patients")
