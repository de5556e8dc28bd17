"""The composition root: builds the objects of one worker from settings and wires them.

Each thread that touches the store gets its own `Service` (SQLite connections are per thread);
the classifier and the template renderer are shared, read-only, across threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

from triage.act.compose import make_reply
from triage.act.outbox import UNVERIFIED, Outbox, OutboxItem, SendLimits
from triage.act.replies import TemplateRenderer
from triage.act.smtp import SmtpConnection, connect
from triage.core.checkpoint import Checkpoint, no_checkpoint
from triage.core.errors import PermanentError, TemplateError, TransientError
from triage.core.labels import HOT_REPLY_TEMPLATES, folder_for
from triage.core.settings import ImapAccount, Settings, SmtpSettings
from triage.decide import guards
from triage.decide.classify import ModelHandle
from triage.ingest.corrections import CorrectionScan
from triage.ingest.mailbox import ImapMailbox
from triage.ingest.sync import Effects, FolderSync, SyncResult
from triage.ops.logs import log_outcome
from triage.ops.metrics import Metrics
from triage.pipeline import Decided, Planned, Recorder, decide
from triage.sales.leads import assign_owner, response_target
from triage.store.db import STORE_ERRORS, Database, Guard, Tx
from triage.store.ledger import Ledger, LedgerRow

if TYPE_CHECKING:
    from triage.ingest.oauth.tokens import TokenProvider
    from triage.ingest.workers import DecidePool
    from triage.ops.daemon import SyncFactory

log = logging.getLogger(__name__)

# Passes in which filing one reply (its copy, \\Answered on its original) may fail before it is
# given up: filing is a courtesy, the reply itself went out.
FILING_TRIES = 3


def token_providers(settings: Settings) -> dict[str, TokenProvider]:
    """The OAuth2 token provider of every credential that signs in with OAuth2, by name (the
    IMAP account's name; `smtp` for the SMTP login); empty when every login uses a password."""
    if not any(a.auth == "oauth2" for a in settings.imap.all_accounts()) and (
        settings.smtp.auth != "oauth2"
    ):
        return {}  # msal and the HTTP stack are not even imported
    from triage.ingest.oauth.providers import build_providers

    return dict(build_providers(settings))


def smtp_connector(
    settings: Settings, tokens: TokenProvider | None = None
) -> Callable[[SmtpSettings], SmtpConnection]:
    """How every sender of this process connects to SMTP: with the password, or (auth =
    "oauth2") with `tokens` as the login of `smtp.username` or of the shared IMAP account."""
    if settings.smtp.auth != "oauth2":
        return connect
    if tokens is None:
        tokens = token_providers(settings).get("smtp")
    login = {"username": settings.smtp_username(), "oauth2": settings.smtp_oauth2()}

    def oauth2_connect(smtp: SmtpSettings) -> SmtpConnection:
        return connect(smtp.model_copy(update=login), tokens=tokens)

    return oauth2_connect


class Shared:
    """What every worker thread shares: settings, the model, the templates and the OAuth2
    token providers."""

    def __init__(
        self,
        settings: Settings,
        checkpoint: Checkpoint = no_checkpoint,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.model = ModelHandle(
            settings.classifier.model_path,
            settings.classifier.thresholds,
            spam_headers=settings.classifier.trusted_spam_headers,
        )
        self.renderer = TemplateRenderer.from_settings(settings.replies)
        self.checkpoint = checkpoint
        self.metrics = metrics or Metrics()
        self.workers: DecidePool | None = None
        # One provider per OAuth2 credential, shared by the account's thread and the senders
        # (`smtp.oauth2_account`): one token cache, one lock, one stored grant.
        self.tokens = token_providers(settings)
        self.smtp_connect = smtp_connector(settings, self.tokens.get("smtp"))
        # Failed filing tries by reply id (see `Service._filing_failed`), for the process's life.
        self.filing_failures: dict[int, int] = {}

    def start_workers(self) -> None:
        """Fork the `ingest.workers` decide processes, if any; call before starting threads."""
        count = self.settings.ingest.workers
        if count and self.workers is None:
            from triage.ingest.workers import DecidePool

            ctx = guards.GuardContext.from_settings(self.settings.replies, None)
            self.workers = DecidePool(count, self.model, ctx)

    def close(self) -> None:
        """Stop the worker processes."""
        workers, self.workers = self.workers, None
        if workers is not None:
            workers.close()


class Service:
    """One thread's store connection, outbox and pipeline, ready to sync folders.

    With a `guard` (fleet mode: a lease's `LeaseGuard`) every transaction of its store handle
    first checks that the lease is still held with that generation (`Database.guard`): an
    instance that lost the lease records nothing, queues nothing, claims no mail for sending
    (`LeaseLost`)."""

    def __init__(self, shared: Shared, guard: Guard | None = None) -> None:
        self.shared = shared
        self.settings = shared.settings
        self.db = Database(self.settings.store)
        self.db.guard = guard
        self.ledger = Ledger(self.db)
        smtp_settings = self.settings.smtp
        self.guard_context = guards.GuardContext.from_settings(self.settings.replies, None)
        self.outbox = Outbox(
            self.db,
            smtp_settings,
            connector=lambda: shared.smtp_connect(smtp_settings),
            checkpoint=shared.checkpoint,
            limits=SendLimits.from_settings(self.settings.replies, self.guard_context.canonical),
            on_cap=shared.metrics.reply_capped,
        )
        self.guard_context = replace(self.guard_context, history=self.outbox)
        self.recorder = Recorder(
            self.ledger,
            self._queue_reply,
            response_target=response_target(self.settings),
            assign_owner=partial(assign_owner, settings=self.settings.leads),
            prepare_reply=self._prepare_reply,
        )

    def close(self) -> None:
        """Close the store connection."""
        self.db.close()

    # -- the pure part -------------------------------------------------------------------------

    def decide_batch(self, items: Sequence[tuple[int, bytes, bool]]) -> list[Decided]:
        """Parse, check, classify and dispose a batch with the current model."""
        classifier = self.shared.model.get()
        self.shared.metrics.set_model_version(classifier.version)
        prefix = (
            self.settings.ingest.folder_prefix if self.settings.ingest.move_to_folders else None
        )
        return decide(
            items,
            check=partial(guards.check, ctx=self.guard_context),
            classify=classifier.classify_many,
            folder_prefix=prefix,
        )

    def start_decide(self, items: Sequence[tuple[int, bytes, bool]]) -> Callable[[], list[Decided]]:
        """`decide_batch` in a worker process; the returned function waits for the result."""
        assert self.shared.workers is not None
        classifier = self.shared.model.get()  # reloads here too when the file changed
        self.shared.metrics.set_model_version(classifier.version)
        prefix = (
            self.settings.ingest.folder_prefix if self.settings.ingest.move_to_folders else None
        )
        return self.shared.workers.start(items, self.guard_context, prefix)

    # -- recording -----------------------------------------------------------------------------

    def _prepare_reply(self, planned: Planned) -> Planned | str:
        """Render one reply, outside the recording transaction, or say why there is none."""
        dest = planned.verdict.destination
        if dest is None:
            return "no-destination: nowhere to send a reply"
        try:
            reply = make_reply(
                planned.msg,
                dest,
                planned.template,
                self.shared.renderer,
                self.settings.replies,
                lead_owner=planned.lead_owner,
                trusted=planned.verdict.reflect,
            )
        except (TemplateError, PermanentError) as exc:
            # Never a reply by accident: a template or address problem means no reply, recorded.
            log.warning("no reply to %s: %s", dest.email, exc)
            return f"reply-failed: {exc}"
        return replace(planned, reply=reply)

    def _queue_reply(self, _c: Tx, planned: Planned) -> str | None:
        """Queue one rendered reply inside the recording transaction, or say why not."""
        dest = planned.verdict.destination
        if dest is None or planned.reply is None:
            return "no-destination: nowhere to send a reply"
        replies = self.settings.replies
        # Checked again here, inside the transaction: an earlier message of this batch may have
        # earned the same mailbox a reply after the guards looked.
        window = timedelta(days=replies.window_days)
        if self.outbox.replied_recently(dest.email, window, verified=planned.verdict.reflect):
            return f"already-replied: {dest.email} got a reply within {replies.window_days:g} days"
        envelope = "" if replies.envelope_sender in ("", "<>") else replies.envelope_sender
        self.outbox.enqueue(
            planned.row_id,
            planned.reply,
            recipient=dest.email,
            envelope_from=envelope,
            template=planned.template,
            mode=replies.mode,
            priority=reply_priority(planned),
        )
        return None

    # -- effects -------------------------------------------------------------------------------

    def deliver(self, account: str | None = None) -> None:
        """Send every reply that is due (live mode queues; the others never reach SMTP); with
        `account`, those answering that account's messages."""
        sent = self.outbox.deliver_due(account=account)
        if sent:
            self.shared.metrics.reply_sent(len(sent))

    def observe(self, account: str, folder: str, uid: int, d: Decided) -> None:
        """One log line and the metrics for a recorded message."""
        replied = d.disposition.reply_template is not None
        reasons = d.disposition.reasons
        shown = (*reasons, *d.disposition.notes)
        log_outcome(
            log, account, folder, uid, d.msg.message_id, d.disposition.decision, replied, shown
        )
        # Only reasons against replying count as suppressions; routing notes do not.
        self.shared.metrics.observe_result(d.disposition.decision, replied=replied, reasons=reasons)

    def finished(self, seconds: Sequence[float]) -> None:
        """Observe each message's handling time, from its fetch to `done`."""
        for value in seconds:
            self.shared.metrics.observe_latency(value)

    def synced(self, account: str, folder: str) -> None:
        """Note a finished pass over a folder."""
        self.shared.metrics.set_sync(account, folder)

    def file_replies(
        self,
        mailbox: ImapMailbox,
        folder: str,
        uidvalidity: int,
        only: Collection[int] | None = None,
    ) -> None:
        """File sent replies in Sent and drafts in Drafts; mark answered originals \\Answered.

        `only`: the message rows whose replies to file (None: every reply waiting to be filed).
        """
        pending = [
            item
            for item in self.outbox.pending_filing()
            if only is None or item.message_row in only
        ]
        if not pending:
            return
        sent_folder = self.settings.replies.sent_folder or mailbox.special_folder("\\Sent")
        drafts = self.settings.replies.drafts_folder or mailbox.special_folder("\\Drafts")
        for item in pending:
            row = self.ledger.get(item.message_row)
            if row is None or (row.account, row.folder) != (mailbox.account.name, folder):
                continue
            try:
                self._file_one(mailbox, folder, uidvalidity, row, item, sent_folder, drafts)
            except STORE_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - filing is a courtesy: the reply was sent
                self._filing_failed(mailbox, row, item.id, exc)

    def _file_one(
        self,
        mailbox: ImapMailbox,
        folder: str,
        uidvalidity: int,
        row: LedgerRow,
        item: OutboxItem,
        sent_folder: str | None,
        drafts: str | None,
    ) -> None:
        """Flag one reply's original \\Answered and file its copy in Sent (or Drafts)."""
        if item.state == "sent":
            # First, while the row is unclaimed: setting a flag twice is harmless, so a crash
            # after this line costs nothing.
            self._flag_answered(mailbox, folder, uidvalidity, row)
        # Claimed before the APPEND, which cannot be undone or checked: another process, or
        # this one after a crash, never files a second copy (see `Outbox.claim_filing`).
        if not self.outbox.claim_filing(item.id):
            return
        target = sent_folder if item.state == "sent" else drafts
        if target:
            flags = ["\\Seen"] if item.state == "sent" else ["\\Draft"]
            mailbox.append(target, item.raw, flags)

    def _filing_failed(
        self, mailbox: ImapMailbox, row: LedgerRow, reply_id: int, exc: Exception
    ) -> None:
        """One reply could not be filed: try again in a later pass; after `FILING_TRIES` give
        it up, with the reason in its message's ledger row. Never stops the pass, unless the
        connection itself is gone (then the pass fails as for any other I/O error)."""
        error = f"{type(exc).__name__}: {exc}"[:400]
        failures = self.shared.filing_failures
        failures[reply_id] = failures.get(reply_id, 0) + 1
        if failures[reply_id] >= FILING_TRIES:
            failures.pop(reply_id, None)
            self.outbox.mark_filed(reply_id)
            self.ledger.note_error(row.id, f"filing the reply given up: {error}")
            log.warning(
                "%s: reply %d to message uid %d not filed, given up after %d tries: %s",
                mailbox.account.name,
                reply_id,
                row.uid,
                FILING_TRIES,
                error,
            )
        else:
            log.warning(
                "%s: filing reply %d to message uid %d failed, will retry: %s",
                mailbox.account.name,
                reply_id,
                row.uid,
                error,
            )
        if isinstance(exc, TransientError):
            # A refused command leaves the connection usable; a dropped one fails the pass.
            mailbox.noop()

    def _flag_answered(
        self, mailbox: ImapMailbox, folder: str, uidvalidity: int, row: LedgerRow
    ) -> None:
        """Flag the original \\Answered where it is now: under its UID, else found by its
        Message-ID in the folder, else in the triage folder its decision moved it to."""
        uids = self._locate(mailbox, folder, uidvalidity, row.uid, row.message_id)
        if uids:
            mailbox.add_flags(uids, ["\\Answered"])
            return
        ingest = self.settings.ingest
        if not (ingest.move_to_folders and row.decision and row.message_id):
            return
        # The reply went out after the pass that marked the original moved it (say, SMTP was
        # down then): look in its new home, then select the synced folder again.
        home = mailbox.folder_path(ingest.folder_prefix, folder_for(row.decision))
        if home == folder or not mailbox.folder_exists(home):
            return
        try:
            mailbox.select(home)
            mailbox.add_flags(mailbox.search_message_id(row.message_id), ["\\Answered"])
        finally:
            mailbox.select(folder)

    def _locate(
        self, mailbox: ImapMailbox, folder: str, uidvalidity: int, uid: int, message_id: str
    ) -> list[int]:
        """Where the original is now in `folder` (selected): its UID, or found by Message-ID
        after a move or a new UIDVALIDITY gave it another UID."""
        info = mailbox.folder
        if info is None or info.name != folder:
            return []
        if info.uidvalidity == uidvalidity and uid in mailbox.sizes([uid]):
            return [uid]
        return mailbox.search_message_id(message_id) if message_id else []

    def folder_syncs(
        self, account: ImapAccount, mailbox: ImapMailbox
    ) -> list[Callable[[], SyncResult]]:
        """One sync callable per watched folder of `account`."""
        effects = Effects(
            # An account's thread sends the replies to its own messages (the periodic work
            # sends every due one): threads, and a fleet's instances, rarely reach for the same
            # reply, and none of them hands a message to the server only to drop it unsent.
            deliver=partial(self._deliver_checked, account.name),
            file_replies=self.file_replies,
            observe=self.observe,
            synced=self.synced,
            finished=self.finished,
        )
        syncs: list[Callable[[], SyncResult]] = [
            FolderSync(
                account.name,
                folder,
                mailbox,
                self.ledger,
                self.decide_batch,
                self.recorder,
                effects,
                self.settings.ingest,
                self.shared.checkpoint,
                self.start_decide if self.shared.workers is not None else None,
            ).sync
            for folder in account.folders
        ]
        if self.settings.ingest.corrections:
            scan = CorrectionScan(mailbox, self.db, self.settings)

            def corrections() -> SyncResult:
                return SyncResult(corrections=scan.scan(account.folders))

            syncs.append(corrections)
        return syncs

    def _deliver_checked(self, account: str) -> None:
        try:
            self.deliver(account)
        except TransientError as exc:
            # The replies stay queued; the next pass tries again after their backoff.
            self.shared.metrics.smtp_error()
            log.error("sending replies failed: %s", exc)


def sync_factory(shared: Shared, guard: Guard | None = None) -> SyncFactory:
    """The account threads' sync factory: each thread gets its own `Service` (SQLite connections
    are per thread), built on first use and kept for the thread's life; guarded by `guard` in
    fleet mode (one factory per account lease generation)."""
    local = threading.local()

    def make(account: ImapAccount, mailbox: ImapMailbox) -> list[Callable[[], SyncResult]]:
        service: Service | None = getattr(local, "service", None)
        if service is None:
            service = local.service = Service(shared, guard)
        return service.folder_syncs(account, mailbox)

    return make


def reply_priority(planned: Planned) -> int:
    """The order in which replies held back by the caps go out: to a verified sender before an
    unverified one (a flood of forged inquiries cannot push a real prospect to the back), a
    sales acknowledgement before marketing information."""
    base = 0 if planned.verdict.reflect else UNVERIFIED
    return base + (0 if planned.template in HOT_REPLY_TEMPLATES else 1)
