"""The SQLite store: ledger, outbox, leads, corrections, digests."""
