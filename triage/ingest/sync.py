"""Syncing one folder: from new UIDs on the server to `done` rows in the ledger.

One pass (`FolderSync.sync`):
1. SELECT; on the first start record a baseline (older mail is backfill, never answered); on a new
   UIDVALIDITY rebaseline: messages the ledger knows by Message-ID are duplicates, and every
   message the server received before the folder's first sync (INTERNALDATE) is backfill.
2. Resume rows a crash left unfinished, then fetch new UIDs in batches bounded by count
   (`batch_size`) and by bytes (`batch_bytes`, from RFC822.SIZE asked first): a message larger
   than `batch_bytes` is fetched on its own, one above `max_message_bytes` is quarantined unread.
3. For each batch: record `seen`, count an attempt, decide (pure), record outcome + lead + queued
   reply (`classified`), send due replies, file copies, mark the mailbox, record `done`.
An attempt is committed before a message is decided, so a message that kills the process (or a
worker process) counts as surely as one whose handling raises. A message with an unfinished
earlier attempt is decided alone; one that failed `max_attempts` times is quarantined (raw bytes
kept) and the loop goes on with the others. A failure after the record step (send, file, mark,
finish) never quarantines: the decision stands, so after `max_attempts` the message is `done`
with its decision and the error.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from triage.core.checkpoint import Checkpoint, no_checkpoint
from triage.core.errors import TransientError
from triage.core.labels import folder_for
from triage.core.settings import IngestSettings
from triage.decide.dispose import KEYWORD_PREFIX, keyword_for
from triage.ingest.mailbox import ImapMailbox
from triage.parsing import parse
from triage.pipeline import Act, Decided, Recorder, act
from triage.store.ledger import (
    CLASSIFIED,
    DONE,
    NOT_THE_MESSAGES_FAULT,
    QUARANTINED,
    SEEN,
    Ledger,
    LedgerRow,
)

log = logging.getLogger(__name__)
_MSGID = re.compile(r"<[^<>\s]+>")

DecideBatch = Callable[[Sequence[tuple[int, bytes, bool]]], list[Decided]]
# Starts deciding a batch elsewhere (worker processes,
# `triage.ingest.workers`); the returned function
# waits for the result.
StartDecide = Callable[[Sequence[tuple[int, bytes, bool]]], Callable[[], list[Decided]]]
QUARANTINE = "Quarantine"
# Batches fetched and handed to the worker processes beyond the one being recorded. With one,
# the workers idled whenever a batch took the main thread longer to record than the next took
# them to decide (a batch with many replies), and the main thread waited in the opposite case.
LOOKAHEAD = 2


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
    # (mailbox, folder, uidvalidity, only these message rows or None for all pending)
    file_replies: Callable[[ImapMailbox, str, int, Collection[int] | None], None]
    # Told about each recorded message (account, folder, uid, decided) and each finished pass
    # (account, folder): for the outcome log line and metrics.
    observe: Callable[[str, str, int, Decided], None] = lambda _a, _f, _u, _d: None
    synced: Callable[[str, str], None] = lambda _a, _f: None
    # Told the seconds each message took from its fetch to `done` (the handling-time metric).
    finished: Callable[[Sequence[float]], None] = lambda _seconds: None


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
        checkpoint: Checkpoint = no_checkpoint,
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
        # Rows whose attempt `_start_early` counted, not yet picked up by `_decide_together`.
        self._charged: set[int] = set()
        # What `_start_early` handed to the workers, by row ids, until `_decide_together` waits
        # for it: kept here rather than looked up in the pool, whose record of batches in flight
        # is bounded and shared by every account's thread.
        self._early: dict[tuple[int, ...], Callable[[], list[Decided]]] = {}
        # Every row whose attempt this pass counted and no failure explained yet: refunded when
        # the pass stops on a TransientError (a dropped connection is not the message's fault).
        self._counted: set[int] = set()
        # When each row of this pass was fetched (monotonic), until it is done.
        self._fetched_at: dict[int, float] = {}
        # The result of the pass in progress (the act steps count into it).
        self._result = SyncResult()

    # -- one pass ------------------------------------------------------------------------------

    def sync(self) -> SyncResult:
        """Handle everything new or unfinished in the folder; raises TransientError on I/O."""
        self._charged.clear()
        self._early.clear()
        self._counted.clear()
        self._fetched_at.clear()
        try:
            return self._sync()
        except NOT_THE_MESSAGES_FAULT:
            try:
                self.ledger.refund_attempt(self._counted)
            except NOT_THE_MESSAGES_FAULT as exc:
                # The store itself is failing: the attempts stay counted, the pass's error wins.
                log.warning("%s/%s: cannot refund attempts: %s", self.account, self.folder, exc)
            raise

    def _sync(self) -> SyncResult:
        info = self.mailbox.select(self.folder)
        result = SyncResult(folder=self.folder, uidnext=info.uidnext)
        state = self.ledger.folder_state(self.account, self.folder)
        if state is None:
            self._first_start(info.uidvalidity, info.uidnext)
        elif state.uidvalidity != info.uidvalidity:
            self._rebaseline(info.uidvalidity)
        state = self.ledger.folder_state(self.account, self.folder)
        assert state is not None
        uidvalidity = state.uidvalidity

        unfinished = self.ledger.unfinished(self.account, self.folder, uidvalidity)
        if unfinished:
            log.info("%s/%s: resuming %d unfinished", self.account, self.folder, len(unfinished))
            by_uid = {r.uid: r for r in unfinished}
            sizes = self._sizes([r.uid for r in unfinished if r.state == SEEN])
            big = [r for r in unfinished if r.state == SEEN and self._too_big(sizes, r.uid)]
            self._quarantine_too_big(big, sizes, result)
            unread = {r.uid for r in big}
            left = [r.uid for r in unfinished if r.uid not in unread]
            # Classified rows need no fetch (size 0 here): only their marks are left to do.
            for batch in self._batches(left, sizes):
                self._handle([by_uid[u] for u in batch], result)

        new = self.mailbox.uids_from(state.last_uid + 1)
        sizes = self._sizes(new)
        batches = self._batches(new, sizes)
        limit = self.settings.batch_bytes
        ahead: deque[tuple[list[int], list[LedgerRow], dict[int, bytes]]] = deque()
        fetched = 0  # batches[:fetched] are fetched (and, but for the first, started)
        for number, batch in enumerate(batches):
            if not ahead:
                ahead.append(
                    (
                        batch,
                        *self._fetch_and_record(
                            uidvalidity, batch, sizes, state.baseline_uid, result
                        ),
                    )
                )
                fetched = number + 1
            _, rows, raws = ahead.popleft()

            def fetch_following(current: list[int] = batch, number: int = number) -> None:
                # While worker processes decide this batch, the next ones (up to LOOKAHEAD) are
                # fetched, recorded `seen` and handed to them too, so that they always have a
                # batch to work on while this one is recorded: a batch that is slow to record
                # (many replies) or to decide (much HTML) then stalls neither side. The raw
                # batches held at once stay within batch_bytes. Without workers the next loop
                # turn fetches the next batch. (The pickled copies on their way to the workers and
                # the decided results come on top of batch_bytes.)
                nonlocal fetched
                held = current + [u for uids, _, _ in ahead for u in uids]
                while fetched < len(batches) and fetched <= number + LOOKAHEAD:
                    following = batches[fetched]
                    held += following
                    if self._weight(held, sizes) > limit:
                        break
                    ahead.append(
                        (
                            following,
                            *self._fetch_and_record(
                                uidvalidity, following, sizes, state.baseline_uid, result
                            ),
                        )
                    )
                    fetched += 1
                    self._start_early(*ahead[-1][1:])

            self._handle(rows, result, raws, fetch_following if self.start_decide else _nothing)
            # The batch's bytes go before the next batch is fetched.
            del rows, raws
        self.effects.deliver()
        self.effects.file_replies(self.mailbox, self.folder, uidvalidity, None)
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
        return [u for u in self.mailbox.uids_since(self._backfill_since()) if u <= baseline]

    def _backfill_since(self) -> date:
        return date.today() - timedelta(days=self.settings.backfill_days)

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

    def _rebaseline(self, uidvalidity: int) -> None:
        """UIDVALIDITY changed: every UID is new, but no message is handled twice and none that
        was in the folder before its first sync is answered.

        Known Message-IDs are duplicates. Every other message the server received before the
        folder's first sync is backfill, whatever its Message-ID: a folder recreated from old
        mail (or from copies with rewritten Message-IDs) is not new mail. The rows are written
        under the new UIDVALIDITY before the folder state switches to it, so a crash in between
        rebaselines again instead of answering the old mail.
        """
        log.warning(
            "%s/%s: UIDVALIDITY changed; rebaselining by Message-ID and by date",
            self.account,
            self.folder,
        )
        first_seen = self.ledger.first_seen(self.account, self.folder)
        uids = self.mailbox.all_uids()
        ids: dict[int, str] = {}
        received: dict[int, datetime] = {}
        for start in range(0, len(uids), self.settings.batch_size):
            chunk = uids[start : start + self.settings.batch_size]
            found = self.mailbox.fetch_message_ids(chunk)
            ids.update((u, normalize_message_id(v)) for u, v in found.items())
            received.update(self.mailbox.internal_dates(chunk))
        # Without a Message-ID header the ledger holds the id the parser synthesised from content.
        blank = [u for u, mid in ids.items() if not mid]
        sizes = self._sizes(blank)
        # A message too big to handle is never fetched, here either: it keeps no id (and is
        # quarantined unread if it turns out to be new).
        blank = [u for u in blank if not self._too_big(sizes, u)]
        for batch in self._batches(blank, sizes):
            for u, raw in self.mailbox.fetch(batch).items():
                ids[u] = parse(raw).message_id
        known = self.ledger.known_message_ids(self.account, self.folder, ids.values())
        dupes = [(u, mid, False) for u, mid in ids.items() if mid and mid in known]
        self.ledger.record_seen(
            self.account, self.folder, uidvalidity, dupes, state=DONE, decision="duplicate"
        )
        duplicate = {u for u, _, _ in dupes}
        old = [
            u
            for u in ids
            if u not in duplicate
            and first_seen is not None
            and u in received
            and received[u] < first_seen
        ]
        since = self._backfill_since()
        classify = [
            u
            for u in old
            if self.settings.backfill_classify
            and self.settings.backfill_days > 0
            and received[u].date() >= since
        ]
        to_classify = set(classify)
        backfill = [(u, ids[u] or f"<uid-{uidvalidity}-{u}@triage.invalid>", True) for u in old]
        self.ledger.record_seen(
            self.account,
            self.folder,
            uidvalidity,
            [item for item in backfill if item[0] in to_classify],
        )
        self.ledger.record_seen(
            self.account,
            self.folder,
            uidvalidity,
            [item for item in backfill if item[0] not in to_classify],
            state=DONE,
            decision="backfill",
        )
        self.ledger.start_folder(self.account, self.folder, uidvalidity, 0)
        log.info(
            "%s/%s: of %d messages, %d were handled before the change and %d are older than the"
            " folder's first sync (backfill, not answered)",
            self.account,
            self.folder,
            len(uids),
            len(dupes),
            len(old),
        )

    # -- fetching ------------------------------------------------------------------------------

    def _sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID that still exists, asked `batch_size` UIDs at a time."""
        sizes: dict[int, int] = {}
        for start in range(0, len(uids), self.settings.batch_size):
            sizes.update(self.mailbox.sizes(uids[start : start + self.settings.batch_size]))
        return sizes

    def _too_big(self, sizes: Mapping[int, int], uid: int) -> bool:
        return sizes.get(uid, 0) > self.settings.max_message_bytes

    def _batches(self, uids: Sequence[int], sizes: Mapping[int, int]) -> list[list[int]]:
        """`uids` in batches bounded by count and by the bytes a FETCH of them holds in memory."""
        weights = {u: self._weight([u], sizes) for u in uids}
        return byte_batches(uids, weights, self.settings.batch_size, self.settings.batch_bytes)

    def _weight(self, uids: Sequence[int], sizes: Mapping[int, int]) -> int:
        """The bytes fetching `uids` brings into memory (a message above `max_message_bytes` is
        never fetched: it weighs nothing)."""
        return sum(0 if self._too_big(sizes, u) else sizes.get(u, 0) for u in uids)

    def _fetch_and_record(
        self,
        uidvalidity: int,
        uids: Sequence[int],
        sizes: Mapping[int, int],
        baseline: int,
        result: SyncResult,
    ) -> tuple[list[LedgerRow], dict[int, bytes]]:
        """Fetch a batch, record every message as `seen`, advance the high-water mark.

        `sizes` are the RFC822.SIZE values the batch was planned with; a UID without one was
        gone by then and is skipped.
        """
        small = [u for u in uids if sizes.get(u, 0) > 0 and not self._too_big(sizes, u)]
        raws = self.mailbox.fetch(small)
        too_big = [u for u in uids if self._too_big(sizes, u)]
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
        fetched_at = time.monotonic()
        rows = self.ledger.rows_for(
            self.account, self.folder, uidvalidity, [u for u, _, _ in items]
        )
        big = [rows[u] for u in too_big if u in rows and rows[u].state == SEEN]
        self._quarantine_too_big(big, sizes, result)
        self._fetched_at.update((rows[u].id, fetched_at) for u in raws if u in rows)
        self.checkpoint("after_fetch")
        return [rows[u] for u, _, _ in items if u in rows and u not in too_big], raws

    def _quarantine_too_big(
        self, rows: Sequence[LedgerRow], sizes: Mapping[int, int], result: SyncResult
    ) -> None:
        """Quarantine messages above `max_message_bytes` unread: their bytes are never held."""
        for r in rows:
            self.ledger.quarantine(
                r.id, f"message of {sizes[r.uid]} bytes exceeds max_message_bytes", None
            )
            log.warning(
                "%s/%s: message uid %d quarantined: %d bytes exceed max_message_bytes",
                self.account,
                self.folder,
                r.uid,
                sizes[r.uid],
            )
        if rows:
            self._mark_quarantined([r.uid for r in rows])
            result.quarantined += len(rows)

    # -- handling ------------------------------------------------------------------------------

    def _handle(
        self,
        rows: Sequence[LedgerRow],
        result: SyncResult,
        fetched: dict[int, bytes] | None = None,
        meanwhile: Callable[[], None] = _nothing,
    ) -> None:
        """Decide, record, send, mark and finish `rows`; `meanwhile` runs once, while deciding."""
        self._result = result
        todo = [r for r in rows if r.state not in (DONE, QUARANTINED)]
        if not todo:
            meanwhile()
            return
        fresh = [r for r in todo if r.state != CLASSIFIED]
        raws = dict(fetched or {})
        raws.update(self.mailbox.fetch([r.uid for r in fresh if r.uid not in raws]))
        started = time.monotonic()
        for r in todo:
            self._fetched_at.setdefault(r.id, started)
        vanished = [r for r in fresh if r.uid not in raws]
        if vanished:
            # Deleted or moved by a person before we finished: nothing left to act on.
            self.ledger.mark_done([r.id for r in vanished])
        candidates = [r for r in fresh if r.uid in raws]
        exhausted = [r for r in candidates if r.attempts >= self.settings.max_attempts]
        self._quarantine_exhausted(exhausted, raws, result)
        first = self._first_tries(candidates, raws)
        # An earlier attempt began and never ended: perhaps this message killed the process.
        # Decided alone, so it cannot take the messages of its batch down with it again.
        again = [r for r in candidates if 0 < r.attempts < self.settings.max_attempts]
        by_id = {r.id: r for r in todo}
        # Rows a crash left classified need only their marks; the rest act on their decision.
        work = [Act(r) for r in todo if r.state == CLASSIFIED]
        try:
            decided = self._decide_together(first, raws, meanwhile)
            self.checkpoint("after_classification")
            work += [Act(by_id[d.row_id], d) for d in decided]
            act(self, work)
        except NOT_THE_MESSAGES_FAULT:
            raise
        except Exception as exc:  # noqa: BLE001 - find the message at fault one by one below
            log.info(
                "%s/%s: a batch failed (%s); handling its messages one at a time",
                self.account,
                self.folder,
                _describe(exc),
            )
            begun = {w.row.id for w in work}
            # The batch's attempt counts for this pass: no second one per message.
            work += [Act(r) for r in first if r.id not in begun]
            for w in work:
                if not w.finished:
                    self._handle_one(w, raws, result, count=False)
        for r in again:
            # An earlier attempt began and never ended: handled alone, so that a message that
            # kills the process cannot take the messages of its batch down with it again.
            self._handle_one(Act(r), raws, result, count=True)

    def _handle_one(
        self, one: Act, raws: Mapping[int, bytes], result: SyncResult, count: bool
    ) -> None:
        """Decide (unless decided already) and act on one message, inside the per-message failure
        boundary: a failure of its own is counted against it and, at `max_attempts`, quarantines
        it; a server, network or store fault stops the pass (and is not counted)."""
        r = one.row
        try:
            if one.decided is None and not one.recorded:
                if count:
                    self._begin_attempt([r.id])
                decided = self._decide_now([r], raws)
                if not decided:
                    return
                one.decided = decided[0]
            act(self, [one], alone=True)
        except NOT_THE_MESSAGES_FAULT:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the loop
            self._failed(one, exc, raws, result)

    def _failed(
        self, one: Act, exc: Exception, raws: Mapping[int, bytes], result: SyncResult
    ) -> None:
        """Count a failure against its message, whichever half it happened in; quarantine it
        (raw bytes kept) once the attempts reach the limit."""
        error = _describe(exc)
        row = one.row
        self._counted.discard(row.id)  # this attempt failed for a reason: it stays counted
        # A message decided in this pass had its attempt counted before deciding; one resumed
        # in state `classified` was not, so its failure counts one now.
        count = row.state == CLASSIFIED
        if one.recorded:
            self._act_failed(one, error, result, count)
            return
        raw = raws.get(row.uid)
        if raw is None:
            raw = self.mailbox.fetch([row.uid]).get(row.uid)
        if self.ledger.record_failure(
            row.id, error, self.settings.max_attempts, raw, count_attempt=count
        ):
            log.warning(
                "%s/%s: message uid %d quarantined after %d attempts: %s",
                self.account,
                self.folder,
                row.uid,
                self.settings.max_attempts,
                error,
            )
            self._mark_quarantined([row.uid])
            result.quarantined += 1
        else:
            log.warning(
                "%s/%s: message uid %d failed, will retry: %s",
                self.account,
                self.folder,
                row.uid,
                error,
            )
            result.failed += 1

    def _act_failed(self, one: Act, error: str, result: SyncResult, count: bool) -> None:
        """A step after `record` failed (send, file, mark, finish): the decision is recorded and
        a reply may be queued or sent, so the message is never quarantined. It is retried, and
        after `max_attempts` recorded `done` with its decision and the error."""
        row = one.row
        if self.ledger.record_act_failure(
            row.id, error, self.settings.max_attempts, count_attempt=count
        ):
            one.finished = True
            self._fetched_at.pop(row.id, None)
            log.warning(
                "%s/%s: message uid %d done after %d attempts; its marks are not all made: %s",
                self.account,
                self.folder,
                row.uid,
                self.settings.max_attempts,
                error,
            )
        else:
            log.warning(
                "%s/%s: acting on message uid %d failed, will retry: %s",
                self.account,
                self.folder,
                row.uid,
                error,
            )
        result.failed += 1

    # -- what the act steps use (`triage.pipeline.ActPorts`) --------------------------------------

    def recorded(self, one: Act) -> None:
        """Count a recorded message and tell the effects (log line, metrics)."""
        # No longer `seen`: a pass cut short has no attempt of its to refund. (Forgetting it
        # here keeps the set as small as the batches in hand, not the whole backlog.)
        self._counted.discard(one.row.id)
        assert one.decided is not None
        decision = one.decided.disposition.decision
        self._result.decided[decision] = self._result.decided.get(decision, 0) + 1
        self.effects.observe(self.account, self.folder, one.row.uid, one.decided)

    def send(self) -> None:
        """Send the replies that are due."""
        self.effects.deliver()

    def file(self, work: Sequence[Act], alone: bool) -> None:
        """File replies (all waiting ones, or only `work`'s when it is retried alone)."""
        only = {w.row.id for w in work} if alone else None
        self.effects.file_replies(self.mailbox, self.folder, work[0].row.uidvalidity, only)

    def finish(self, work: Sequence[Act]) -> None:
        """Record `done` and observe each message's time from fetch to done."""
        self.ledger.mark_done([w.row.id for w in work])
        done = time.monotonic()
        self.effects.finished([done - self._fetched_at.pop(w.row.id, done) for w in work])

    # -- deciding ------------------------------------------------------------------------------

    def _first_tries(self, rows: Sequence[LedgerRow], raws: Mapping[int, bytes]) -> list[LedgerRow]:
        """The rows of a batch never attempted before: these are decided together."""
        return [r for r in rows if r.state == SEEN and r.attempts == 0 and r.uid in raws]

    def _begin_attempt(self, row_ids: list[int]) -> None:
        self.ledger.begin_attempt(row_ids)
        self._counted.update(row_ids)

    def _start_early(self, rows: Sequence[LedgerRow], raws: dict[int, bytes]) -> None:
        """Start deciding a fetched batch; `_decide_together` later picks up the same batch."""
        assert self.start_decide is not None
        first = self._first_tries(rows, raws)
        if not first:
            return
        # Counted now, before a worker starts on them (see `_decide_together`).
        self._begin_attempt([r.id for r in first])
        self._charged.update(r.id for r in first)
        try:
            wait = self.start_decide([(r.id, raws[r.uid], r.backfill) for r in first])
        except Exception:  # noqa: BLE001 - _decide_together tries again and reports it
            return
        self._early[tuple(r.id for r in first)] = wait

    def _decide_together(
        self,
        rows: Sequence[LedgerRow],
        raws: Mapping[int, bytes],
        meanwhile: Callable[[], None] = _nothing,
    ) -> list[Decided]:
        """Decide rows never attempted before, together; `meanwhile` runs while they are."""
        if not rows:
            meanwhile()
            return []
        # The attempt is committed before deciding: if deciding kills the process, the count
        # survives it (unless `_start_early` counted this batch already).
        self._begin_attempt([r.id for r in rows if r.id not in self._charged])
        self._charged.difference_update(r.id for r in rows)
        wait = self._early.pop(tuple(r.id for r in rows), None) or self._start(
            [(r.id, raws[r.uid], r.backfill) for r in rows]
        )
        meanwhile()
        return wait() if wait is not None else self.decide(self._items(rows, raws))

    def _decide_now(self, rows: Sequence[LedgerRow], raws: Mapping[int, bytes]) -> list[Decided]:
        """Decide rows at once (in a worker process when there are any, so that a message that
        kills its process takes only a worker with it)."""
        wait = self._start(self._items(rows, raws))
        return wait() if wait is not None else self.decide(self._items(rows, raws))

    def _start(
        self, items: Sequence[tuple[int, bytes, bool]]
    ) -> Callable[[], list[Decided]] | None:
        """Hand `items` to the worker processes; None when there are none (or they cannot
        start: deciding in process still works)."""
        if self.start_decide is None:
            return None
        try:
            return self.start_decide(items)
        except Exception as exc:  # noqa: BLE001 - deciding in process still works
            log.warning("%s/%s: no worker processes: %s", self.account, self.folder, exc)
            return None

    @staticmethod
    def _items(
        rows: Sequence[LedgerRow], raws: Mapping[int, bytes]
    ) -> list[tuple[int, bytes, bool]]:
        return [(r.id, raws[r.uid], r.backfill) for r in rows]

    def _quarantine_exhausted(
        self, rows: Sequence[LedgerRow], raws: Mapping[int, bytes], result: SyncResult
    ) -> None:
        """Quarantine messages whose attempts reached the limit without an outcome.

        A failure that raised was quarantined when it happened; a row still `seen` at the limit
        had its last attempt end with the process, killed while deciding it (out of memory, say).
        Deciding it again would only kill the process again, on every restart.
        """
        for r in rows:
            if r.error:
                reason = (
                    f"the process died while deciding it; {r.attempts} attempts without an"
                    f" outcome (before: {r.error})"
                )
            else:
                reason = f"the process died {r.attempts} times while deciding it"
            self.ledger.quarantine(r.id, reason[:500], raws[r.uid])
            log.warning(
                "%s/%s: message uid %d quarantined: %s", self.account, self.folder, r.uid, reason
            )
        if rows:
            self._mark_quarantined([r.uid for r in rows])
            result.quarantined += len(rows)

    # -- marking -------------------------------------------------------------------------------

    def mark(self, work: Sequence[Act]) -> None:
        """Keyword per decision and, if configured, a move into Triage/<Decision>."""
        rows = [w.row for w in work]
        if not rows:
            return
        fresh = {r.id: r for r in rows}
        decisions = self.ledger.decisions([r.id for r in rows])
        by_decision: dict[str, list[int]] = {}
        for row_id, decision in decisions.items():
            if decision and row_id in fresh:
                by_decision.setdefault(decision, []).append(fresh[row_id].uid)
        for decision, uids in by_decision.items():
            if self.settings.keywords:
                self.mailbox.add_flags(uids, [keyword_for(decision)])
            if self.settings.move_to_folders:
                target = self.mailbox.folder_path(self.settings.folder_prefix, folder_for(decision))
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


def byte_batches(
    uids: Sequence[int], sizes: Mapping[int, int], count: int, limit: int
) -> list[list[int]]:
    """Consecutive runs of `uids`, each at most `count` long and `limit` bytes in total (by
    `sizes`; a UID without one weighs nothing). A message larger than `limit` is a run of its
    own: it is fetched alone."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for u in uids:
        size = sizes.get(u, 0)
        if current and (len(current) >= count or total + size > limit):
            out.append(current)
            current, total = [], 0
        current.append(u)
        total += size
    if current:
        out.append(current)
    return out


def _describe(exc: BaseException) -> str:
    """One line for the ledger's `error` column."""
    if isinstance(exc, BrokenProcessPool):
        return "a worker process died while deciding it"
    return f"{type(exc).__name__}: {exc}"[:500]


def normalize_message_id(value: str) -> str:
    """The `<…>` part of a Message-ID header value, as the parser records it."""
    match = _MSGID.search(value)
    return match.group(0) if match else value.strip()
