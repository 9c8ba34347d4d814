"""Price plans, the append-only usage ledger and invoices arrive with the billing issue."""
