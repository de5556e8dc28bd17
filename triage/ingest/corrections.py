"""Learning from people: a message moved into another `Triage/<Label>` folder, or given another
`$Triage-<Label>` keyword, is a correction of the model's decision.

triage always sets a message's keyword before moving it, so a message in `Triage/Sales` without
`$Triage-Sales` was put there by a person. In the watched folders, a message carrying a label
keyword that differs from the ledger's decision was re-labelled by a person. Either way the
correction is recorded with the message text (training data for `triage train
--with-corrections`), the keywords are set straight, and the ledger remembers the person's label
so the same correction is not recorded twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial

from triage.core.labels import DECISION_TABLE, LABEL_TABLE, keyword_for
from triage.core.settings import Settings
from triage.ingest.mailbox import ImapMailbox
from triage.parsing import parse
from triage.sales.review import relabel
from triage.store import review as ledger
from triage.store.corrections import insert_correction
from triage.store.db import Database
from triage.store.review import LedgerMessage

log = logging.getLogger(__name__)

_DECISION_KEYWORDS = [row.keyword for row in DECISION_TABLE.values()]


# How long an unchanged folder may go without a full look (see `_unless_unchanged`).
RESCAN_EVERY = 600.0


class CorrectionScan:
    """Finds and records corrections in one account's mailbox.

    `settings` are the whole settings: a correction to a label that makes a lead records the
    lead, which needs the staff, assignment and response target of `leads`.
    """

    def __init__(self, mailbox: ImapMailbox, db: Database, settings: Settings) -> None:
        self.mailbox = mailbox
        self.db = db
        self.settings = settings

    def scan(self, watched: Sequence[str]) -> int:
        """Look through the label folders and the watched folders; returns corrections made."""
        ingest = self.settings.ingest
        found = 0
        if ingest.move_to_folders:
            for label, row in LABEL_TABLE.items():
                folder = self.mailbox.folder_path(ingest.folder_prefix, row.folder)
                found += self._unless_unchanged(
                    folder, partial(self._scan_label_folder, label=label)
                )
        if ingest.keywords:
            for folder in watched:
                found += self._unless_unchanged(folder, self._scan_keywords)
        return found

    def _unless_unchanged(self, folder: str, scan: Callable[[str], int]) -> int:
        """`scan(folder)`, unless the folder is as the last scan on this connection left it
        (no message moved in or out, no keyword or flag changed): with a thousand mailboxes
        scanned every minute, one STATUS instead of a SELECT and three SEARCHes each is most of
        an idle instance's work."""
        before = self.mailbox.folder_state(folder)
        now = time.monotonic()
        seen = self.mailbox.scanned.get(folder)
        if before is not None and seen is not None:
            state, at = seen
            # Looked at fully every RESCAN_EVERY all the same: a server's fingerprint that
            # missed a change must not hide a person's correction for as long as the
            # connection lives.
            if state == before and now - at < RESCAN_EVERY:
                return 0
        found = scan(folder)
        # The state from before the scan: what the scan itself changed (the keywords it set)
        # makes the next pass look once more, and find nothing.
        if before is not None:
            self.mailbox.scanned[folder] = (before, now)
        return found

    def _scan_label_folder(self, folder: str, label: str) -> int:
        if not self.mailbox.client.folder_exists(folder):
            return 0
        self.mailbox.select(folder)
        moved_in = self.mailbox.search_keyword(keyword_for(label), present=False)
        if not moved_in:
            return 0
        raws = self.mailbox.fetch(moved_in)
        count = 0
        for uid, raw in raws.items():
            msg = parse(raw)
            row = ledger.latest_message(self.db.reads, self.mailbox.account.name, msg.message_id)
            old = row.current_label if row else None
            if old != label:
                count += self._record(
                    row,
                    msg.message_id,
                    old,
                    label,
                    "folder",
                    msg.subject,
                    msg.new_text or msg.text,
                    raw,
                )
            self._set_keyword([uid], label)
        return count

    def _scan_keywords(self, folder: str) -> int:
        info = self.mailbox.select(folder)
        count = 0
        for label in LABEL_TABLE:
            uids = self.mailbox.search_keyword(keyword_for(label))
            if not uids:
                continue
            changed = ledger.relabelled(
                self.db.reads, self.mailbox.account.name, folder, info.uidvalidity, uids, label
            )
            if not changed:
                continue
            raws = self.mailbox.fetch(list(changed))
            for uid, row in changed.items():
                count += self._record(
                    row,
                    row.message_id,
                    row.current_label,
                    label,
                    "keyword",
                    row.subject,
                    row.body,
                    raws.get(uid),
                )
                self._set_keyword([uid], label)
        return count

    def _record(
        self,
        row: LedgerMessage | None,
        message_id: str,
        old: str | None,
        new: str,
        source: str,
        subject: str,
        body: str,
        raw: bytes | None,
    ) -> int:
        """Record one correction; for a message in the ledger also the person's label and, when
        the label makes a lead and the message has none, the lead (as `triage review label`)."""
        lead_id = None
        with self.db.transaction() as c:
            if row is None:
                added = insert_correction(
                    c,
                    message_row=None,
                    message_id=message_id,
                    old_label=old,
                    new_label=new,
                    source=source,
                    subject=subject,
                    body=body,
                    raw=raw,
                )
            else:
                done = relabel(
                    c,
                    row,
                    new,
                    self.settings,
                    old_label=old,
                    source=source,
                    by=f"mailbox {source}",
                    reason=f"labelled {new} in the mailbox ({source})",
                    subject=subject,
                    body=body,
                    raw=raw,
                    now=datetime.now(UTC),
                )
                added, lead_id = done.correction_added, done.lead_id
        if added:
            log.info("correction: %s was %s, a person says %s (%s)", message_id, old, new, source)
        if lead_id is not None:
            log.info(
                "lead %d: %s labelled %s in the mailbox (%s)", lead_id, message_id, new, source
            )
        return int(added)

    def _set_keyword(self, uids: Sequence[int], label: str) -> None:
        """Leave exactly the person's label keyword on the messages."""
        others = [k for k in _DECISION_KEYWORDS if k != keyword_for(label)]
        self.mailbox.remove_flags(uids, others)
        self.mailbox.add_flags(uids, [keyword_for(label)])
