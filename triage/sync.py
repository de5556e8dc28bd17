"""Syncing one folder: from new UIDs on the server to `done` rows in the ledger.

One pass (`FolderSync.sync`):
1. SELECT; on the first start record a baseline (older mail is backfill, never answered); on a new
   UIDVALIDITY rebaseline by Message-ID so nothing is handled twice.
2. Resume rows a crash left unfinished, then fetch new UIDs in batches.
3. For each batch: record `seen`, decide (pure), record outcome + lead + queued reply
   (`classified`), send due replies, file copies, mark the mailbox, record `done`.
A message whose handling fails is retried on the next passes and quarantined at the limit; the
loop goes on with the others.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from triage.dispose import KEYWORD_PREFIX, keyword_for
from triage.errors import TransientError
from triage.mailbox import ImapMailbox
from triage.parsing import parse
from triage.pipeline import Decided, Recorder
from triage.settings import IngestSettings
from triage.store.ledger import CLASSIFIED, DONE, QUARANTINED, Ledger, LedgerRow

log = logging.getLogger(__name__)
_MSGID = re.compile(r"<[^<>\s]+>")

Checkpoint = Callable[[str], None]
DecideBatch = Callable[[Sequence[tuple[int, bytes, bool]]], list[Decided]]
# Starts deciding a batch elsewhere (worker processes, `triage.workers`); the returned function
# waits for the result.
StartDecide = Callable[[Sequence[tuple[int, bytes, bool]]], Callable[[], list[Decided]]]
QUARANTINE = "Quarantine"


def _no_checkpoint(_name: str) -> None:
    """The default: no fault injection."""


def _nothing() -> None:
    """The default work to overlap with deciding: none."""


@dataclass
class SyncResult:
    """What one pass over a folder did."""

    fetched: int = 0
    decided: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    failed: int = 0
    corrections: int = 0
    # The folder and the UIDNEXT it had when the pass began: mail with a UID from there on may
    # have arrived after the pass looked (the daemon checks before it goes into IDLE).
    folder: str = ""
    uidnext: int = 0


@dataclass
class Effects:
    """The side effects after recording that are not the mailbox's: sending and filing."""

    deliver: Callable[[], None]
    file_replies: Callable[[ImapMailbox, str, int], None]
    # Told about each recorded message (account, folder, uid, decided) and each finished pass
    # (account, folder): for the outcome log line and metrics.
    observe: Callable[[str, str, int, Decided], None] = lambda _a, _f, _u, _d: None
    synced: Callable[[str, str], None] = lambda _a, _f: None


class FolderSync:
    """Brings one folder of one account up to date with the ledger."""

    def __init__(
        self,
        account: str,
        folder: str,
        mailbox: ImapMailbox,
        ledger: Ledger,
        decide: DecideBatch,
        recorder: Recorder,
        effects: Effects,
        settings: IngestSettings,
        checkpoint: Checkpoint = _no_checkpoint,
        start_decide: StartDecide | None = None,
    ) -> None:
        self.account = account
        self.folder = folder
        self.mailbox = mailbox
        self.ledger = ledger
        self.decide = decide
        self.recorder = recorder
        self.effects = effects
        self.settings = settings
        self.checkpoint = checkpoint
        self.start_decide = start_decide

    # -- one pass ------------------------------------------------------------------------------

    def sync(self) -> SyncResult:
        """Handle everything new or unfinished in the folder; raises TransientError on I/O."""
        info = self.mailbox.select(self.folder)
        result = SyncResult(folder=self.folder, uidnext=info.uidnext)
        state = self.ledger.folder_state(self.account, self.folder)
        if state is None:
            self._first_start(info.uidvalidity, info.uidnext)
        elif state.uidvalidity != info.uidvalidity:
            self._rebaseline(info.uidvalidity, info.uidnext, state.last_uid)
        state = self.ledger.folder_state(self.account, self.folder)
        assert state is not None
        uidvalidity = state.uidvalidity

        unfinished = self.ledger.unfinished(self.account, self.folder, uidvalidity)
        if unfinished:
            log.info("%s/%s: resuming %d unfinished", self.account, self.folder, len(unfinished))
            for start in range(0, len(unfinished), self.settings.batch_size):
                self._handle(unfinished[start : start + self.settings.batch_size], result)

        new = self.mailbox.uids_from(state.last_uid + 1)
        size = self.settings.batch_size
        batches = [new[start : start + size] for start in range(0, len(new), size)]
        ahead: list[tuple[list[LedgerRow], dict[int, bytes]]] = []
        for number, batch in enumerate(batches):
            if not ahead:
                ahead.append(self._fetch_and_record(uidvalidity, batch, state.baseline_uid, result))
            rows, raws = ahead.pop()
            following = batches[number + 1] if number + 1 < len(batches) else None

            def fetch_following(following: list[int] | None = following) -> None:
                # While worker processes decide this batch, the next one is fetched, recorded
                # `seen` and handed to them too, so they work on it while this one is recorded:
                # both cores stay busy. Without workers the next loop turn fetches it.
                if following is not None:
                    ahead.append(
                        self._fetch_and_record(uidvalidity, following, state.baseline_uid, result)
                    )
                    self._start_early(*ahead[-1])

            self._handle(rows, result, raws, fetch_following if self.start_decide else _nothing)
        self.effects.deliver()
        self.effects.file_replies(self.mailbox, self.folder, uidvalidity)
        self.ledger.touch(self.account, self.folder)
        self.effects.synced(self.account, self.folder)
        return result

    # -- baselines -----------------------------------------------------------------------------

    def _first_start(self, uidvalidity: int, uidnext: int) -> None:
        """First sight of this folder: what is there already is backfill, never answered."""
        baseline = max(uidnext - 1, 0)
        self.ledger.start_folder(self.account, self.folder, uidvalidity, baseline)
        old = self._backfill_uids(baseline)
        log.info(
            "%s/%s: first start; %d messages already present are backfill (not answered)",
            self.account,
            self.folder,
            len(old),
        )
        self._record_backfill(uidvalidity, old)
        self.ledger.advance(self.account, self.folder, baseline)

    def _backfill_uids(self, baseline: int) -> list[int]:
        if baseline == 0:
            return []
        if self.settings.backfill_days <= 0:
            return []
        since = date.today() - timedelta(days=self.settings.backfill_days)
        return [u for u in self.mailbox.uids_since(since) if u <= baseline]

    def _record_backfill(self, uidvalidity: int, uids: Sequence[int]) -> None:
        for start in range(0, len(uids), self.settings.batch_size):
            chunk = uids[start : start + self.settings.batch_size]
            ids = self.mailbox.fetch_message_ids(chunk)
            items = [
                (u, ids.get(u, "") or f"<uid-{uidvalidity}-{u}@triage.invalid>", True)
                for u in chunk
                if u in ids
            ]
            if self.settings.backfill_classify:
                # Recorded as `seen`: the normal path classifies and queues leads; the backfill
                # flag keeps any reply from being sent.
                self.ledger.record_seen(self.account, self.folder, uidvalidity, items)
            else:
                self.ledger.record_seen(
                    self.account, self.folder, uidvalidity, items, state=DONE, decision="backfill"
                )

    def _rebaseline(self, uidvalidity: int, uidnext: int, old_last_uid: int) -> None:
        """UIDVALIDITY changed: every UID is new, but messages we know are not handled again."""
        log.warning(
            "%s/%s: UIDVALIDITY changed; rebaselining by Message-ID", self.account, self.folder
        )
        self.ledger.start_folder(self.account, self.folder, uidvalidity, 0)
        uids = self.mailbox.all_uids()
        ids = {u: normalize_message_id(v) for u, v in self.mailbox.fetch_message_ids(uids).items()}
        # Without a Message-ID header the ledger holds the id the parser synthesised from content.
        blank = [u for u, mid in ids.items() if not mid]
        for start in range(0, len(blank), self.settings.batch_size):
            for u, raw in self.mailbox.fetch(
                blank[start : start + self.settings.batch_size]
            ).items():
                ids[u] = parse(raw).message_id
        known = self.ledger.known_message_ids(self.account, self.folder, ids.values())
        dupes = [(u, mid, False) for u, mid in ids.items() if mid and mid in known]
        self.ledger.record_seen(
            self.account, self.folder, uidvalidity, dupes, state=DONE, decision="duplicate"
        )
        log.info(
            "%s/%s: %d of %d messages were handled before the change",
            self.account,
            self.folder,
            len(dupes),
            len(uids),
        )

    # -- fetching ------------------------------------------------------------------------------

    def _fetch_and_record(
        self, uidvalidity: int, uids: Sequence[int], baseline: int, result: SyncResult
    ) -> tuple[list[LedgerRow], dict[int, bytes]]:
        """Fetch a batch, record every message as `seen`, advance the high-water mark."""
        sizes = self.mailbox.sizes(uids)
        limit = self.settings.max_message_bytes
        small = [u for u in uids if 0 < sizes.get(u, 0) <= limit]
        raws = self.mailbox.fetch(small)
        too_big = [u for u in uids if sizes.get(u, 0) > limit]
        # The Message-ID is filled in when the message is classified (parsing happens once,
        # there); a row found `seen` after a crash is simply fetched and parsed again.
        ids = {u: "" for u in raws}
        if too_big:
            big_ids = self.mailbox.fetch_message_ids(too_big)
            ids.update({u: big_ids.get(u, "") for u in too_big})
        items = [(u, ids[u], u <= baseline) for u in uids if u in ids]
        self.ledger.record_seen(self.account, self.folder, uidvalidity, items)
        if uids:
            self.ledger.advance(self.account, self.folder, max(uids))
        result.fetched += len(items)
        rows = self.ledger.rows_for(
            self.account, self.folder, uidvalidity, [u for u, _, _ in items]
        )
        for u in too_big:
            if u in rows:
                self.ledger.quarantine(
                    rows[u].id, f"message of {sizes[u]} bytes exceeds max_message_bytes", None
                )
                self._mark_quarantined([u])
                result.quarantined += 1
        self.checkpoint("after_fetch")
        return [rows[u] for u, _, _ in items if u in rows and u not in too_big], raws

    # -- handling ------------------------------------------------------------------------------

    def _handle(
        self,
        rows: Sequence[LedgerRow],
        result: SyncResult,
        fetched: dict[int, bytes] | None = None,
        meanwhile: Callable[[], None] = _nothing,
    ) -> None:
        """Decide, record, send, mark and finish `rows`; `meanwhile` runs once, while deciding."""
        todo = [r for r in rows if r.state not in (DONE, "quarantined")]
        if not todo:
            meanwhile()
            return
        fresh = [r for r in todo if r.state != CLASSIFIED]
        raws = dict(fetched or {})
        raws.update(self.mailbox.fetch([r.uid for r in fresh if r.uid not in raws]))
        vanished = [r for r in fresh if r.uid not in raws]
        if vanished:
            # Deleted or moved by a person before we finished: nothing left to act on.
            self.ledger.mark_done([r.id for r in vanished])
        decided: list[Decided] = []
        candidates = [r for r in fresh if r.uid in raws]
        if candidates:
            decided = self._decide_each(candidates, raws, result, meanwhile)
        else:
            meanwhile()
        self.checkpoint("after_classification")
        recorded = self.recorder.record(decided) if decided else []
        uids = {r.id: r.uid for r in todo}
        for d in recorded:
            decision = d.disposition.decision
            result.decided[decision] = result.decided.get(decision, 0) + 1
            self.effects.observe(self.account, self.folder, uids[d.row_id], d)
        self.checkpoint("after_record")
        self.effects.deliver()
        self.checkpoint("after_send")
        # File copies and set \Answered while the originals are still here: a move below would
        # give them new UIDs in another folder.
        self.effects.file_replies(self.mailbox, self.folder, todo[0].uidvalidity)
        # Mark the mailbox for everything classified: this batch and rows resumed after a crash.
        classified = {r.id: r for r in todo if r.state == CLASSIFIED}
        by_id = {r.id: r for r in todo}
        classified.update({d.row_id: by_id[d.row_id] for d in recorded})
        self._mark(list(classified.values()))
        self.checkpoint("before_done")
        self.ledger.mark_done(list(classified))

    def _start_early(self, rows: Sequence[LedgerRow], raws: dict[int, bytes]) -> None:
        """Start deciding a fetched batch; `_decide_each` later picks up the same batch."""
        assert self.start_decide is not None
        pending = [r for r in rows if r.state not in (DONE, CLASSIFIED, QUARANTINED)]
        items = [(r.id, raws[r.uid], r.backfill) for r in pending if r.uid in raws]
        if items:
            try:
                self.start_decide(items)
            except Exception:  # noqa: BLE001 - _decide_each tries again and reports it
                return

    def _decide_each(
        self,
        rows: Sequence[LedgerRow],
        raws: dict[int, bytes],
        result: SyncResult,
        meanwhile: Callable[[], None] = _nothing,
    ) -> list[Decided]:
        items = [(r.id, raws[r.uid], r.backfill) for r in rows]
        wait = None
        if self.start_decide is not None:
            try:
                wait = self.start_decide(items)
            except Exception as exc:  # noqa: BLE001 - deciding in process below still works
                log.warning("%s/%s: no worker processes: %s", self.account, self.folder, exc)
        meanwhile()
        try:
            return wait() if wait is not None else self.decide(items)
        except TransientError:
            raise
        except Exception:  # noqa: BLE001 - find the poison message one by one below
            log.info("%s/%s: a batch failed; retrying one by one", self.account, self.folder)
        out: list[Decided] = []
        for r in rows:
            try:
                out.extend(self.decide([(r.id, raws[r.uid], r.backfill)]))
            except TransientError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the loop
                error = f"{type(exc).__name__}: {exc}"[:500]
                if self.ledger.record_failure(r.id, error, self.settings.max_attempts, raws[r.uid]):
                    log.warning(
                        "%s/%s: message uid %d quarantined after %d attempts: %s",
                        self.account,
                        self.folder,
                        r.uid,
                        self.settings.max_attempts,
                        error,
                    )
                    self._mark_quarantined([r.uid])
                    result.quarantined += 1
                else:
                    result.failed += 1
        return out

    # -- marking -------------------------------------------------------------------------------

    def _mark(self, rows: Sequence[LedgerRow]) -> None:
        """Keyword per decision and, if configured, a move into Triage/<Decision>."""
        if not rows:
            return
        fresh = {r.id: r for r in rows}
        decisions = self._decisions(rows)
        by_decision: dict[str, list[int]] = {}
        for row_id, decision in decisions.items():
            if decision and row_id in fresh:
                by_decision.setdefault(decision, []).append(fresh[row_id].uid)
        for decision, uids in by_decision.items():
            if self.settings.keywords:
                self.mailbox.add_flags(uids, [keyword_for(decision)])
            if self.settings.move_to_folders:
                target = self.mailbox.folder_path(
                    self.settings.folder_prefix, decision.capitalize()
                )
                self.mailbox.ensure_folder(target)
                self.mailbox.move(uids, target)

    def _mark_quarantined(self, uids: Sequence[int]) -> None:
        try:
            if self.settings.keywords:
                self.mailbox.add_flags(uids, [KEYWORD_PREFIX + QUARANTINE])
            if self.settings.move_to_folders:
                target = self.mailbox.folder_path(self.settings.folder_prefix, QUARANTINE)
                self.mailbox.ensure_folder(target)
                self.mailbox.move(uids, target)
        except TransientError as exc:
            # The store already holds the message and its reason; the mark is a courtesy.
            log.warning("%s/%s: cannot mark quarantined mail: %s", self.account, self.folder, exc)

    def _decisions(self, rows: Sequence[LedgerRow]) -> dict[int, str | None]:
        """The recorded decision of each row: one narrow query per 500 rows, not one per row
        (and not `SELECT *`, which would read back every body just written)."""
        ids = [r.id for r in rows]
        out: dict[int, str | None] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found = self.ledger.db.conn.execute(
                f"SELECT id, decision FROM messages WHERE id IN ({marks})",  # noqa: S608
                chunk,
            )
            out.update((row[0], row[1]) for row in found)
        return out


def normalize_message_id(value: str) -> str:
    """The `<…>` part of a Message-ID header value, as the parser records it."""
    match = _MSGID.search(value)
    return match.group(0) if match else value.strip()


def now_utc() -> datetime:
    """The current time, aware."""
    return datetime.now(UTC)
