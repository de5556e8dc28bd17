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
import sqlite3
from collections.abc import Sequence

from triage.core.models import LABELS
from triage.core.settings import IngestSettings
from triage.decide.dispose import keyword_for
from triage.ingest.mailbox import ImapMailbox
from triage.parsing import parse
from triage.store.corrections import insert_correction
from triage.store.db import Database, utcnow

log = logging.getLogger(__name__)

_DECISION_KEYWORDS = [keyword_for(d) for d in (*LABELS, "review")]


class CorrectionScan:
    """Finds and records corrections in one account's mailbox."""

    def __init__(self, mailbox: ImapMailbox, db: Database, settings: IngestSettings) -> None:
        self.mailbox = mailbox
        self.db = db
        self.settings = settings

    def scan(self, watched: Sequence[str]) -> int:
        """Look through the label folders and the watched folders; returns corrections made."""
        found = 0
        if self.settings.move_to_folders:
            for label in LABELS:
                folder = self.mailbox.folder_path(self.settings.folder_prefix, label.capitalize())
                found += self._scan_label_folder(folder, label)
        if self.settings.keywords:
            for folder in watched:
                found += self._scan_keywords(folder)
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
            row = self.db.conn.execute(
                "SELECT * FROM messages WHERE account = ? AND message_id = ?"
                " ORDER BY id DESC LIMIT 1",
                (self.mailbox.account.name, msg.message_id),
            ).fetchone()
            old = (row["reviewed_label"] or row["decision"]) if row else None
            if old != label:
                count += self._record(
                    row["id"] if row else None,
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
        for label in LABELS:
            uids = self.mailbox.search_keyword(keyword_for(label))
            if not uids:
                continue
            changed = self._relabelled(folder, info.uidvalidity, uids, label)
            if not changed:
                continue
            raws = self.mailbox.fetch(list(changed))
            for uid, row in changed.items():
                count += self._record(
                    row["id"],
                    row["message_id"],
                    row["reviewed_label"] or row["decision"],
                    label,
                    "keyword",
                    row["subject"],
                    row["body"] or "",
                    raws.get(uid),
                )
                self._set_keyword([uid], label)
        return count

    def _relabelled(
        self, folder: str, uidvalidity: int, uids: Sequence[int], label: str
    ) -> dict[int, sqlite3.Row]:
        """The rows among `uids` whose label in the ledger differs from the keyword `label`.

        Filtered in SQL: a mailbox holds thousands of keyworded messages and almost none of them
        was re-labelled, so their bodies are never read into memory.
        """
        out: dict[int, sqlite3.Row] = {}
        decisions = (*LABELS, "review")
        for start in range(0, len(uids), 500):
            chunk = list(uids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            cur = self.db.conn.execute(
                "SELECT id, uid, message_id, decision, reviewed_label, subject, body"  # noqa: S608
                " FROM messages WHERE account = ? AND folder = ? AND uidvalidity = ?"
                f" AND uid IN ({marks})"
                " AND decision IN (?, ?, ?, ?) AND COALESCE(reviewed_label, decision) != ?",
                (self.mailbox.account.name, folder, uidvalidity, *chunk, *decisions, label),
            )
            out.update((r["uid"], r) for r in cur)
        return out

    def _record(
        self,
        row_id: int | None,
        message_id: str,
        old: str | None,
        new: str,
        source: str,
        subject: str,
        body: str,
        raw: bytes | None,
    ) -> int:
        with self.db.transaction() as c:
            added = insert_correction(
                c,
                message_row=row_id,
                message_id=message_id,
                old_label=old,
                new_label=new,
                source=source,
                subject=subject,
                body=body,
                raw=raw,
            )
            if row_id is not None:
                c.execute(
                    "UPDATE messages SET reviewed_label = ?, reviewed_by = ?, updated_at = ?"
                    " WHERE id = ?",
                    (new, f"mailbox {source}", utcnow(), row_id),
                )
        if added:
            log.info("correction: %s was %s, a person says %s (%s)", message_id, old, new, source)
        return int(added)

    def _set_keyword(self, uids: Sequence[int], label: str) -> None:
        """Leave exactly the person's label keyword on the messages."""
        others = [k for k in _DECISION_KEYWORDS if k != keyword_for(label)]
        self.mailbox.remove_flags(uids, others)
        self.mailbox.add_flags(uids, [keyword_for(label)])
