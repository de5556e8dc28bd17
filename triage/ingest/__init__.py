"""From mailboxes to the ledger: IMAP adapter, folder sync, worker processes, corrections scan."""
