"""The billing service: charges for services rendered (from the other services' events or by
hand), the price list that prices them, invoices, payments and refunds."""
