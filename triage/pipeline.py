"""The flow of one message, written once, top to bottom, as two ordered tuples of named steps.

    DECIDE_STEPS  parse ─▶ guards ─▶ classify ─▶ dispose             (pure: `decide`)
    ACT_STEPS     record ─▶ send ─▶ file ─▶ mark ─▶ finish            (effects: `act`)

The decide steps do no I/O, so a crash before `record` simply redoes them. `record` renders the
replies first, outside any transaction (a slow or failing template never holds the store's write
lock), then writes everything the message causes in a single transaction and moves its ledger row
to `classified`; sending the queued reply, filing its copy, marking the mailbox and `done` come
after it, each recorded before it is made. `triage.ingest.sync` drives both halves over a batch
and puts one per-message failure boundary around them: retry, then quarantine (or, once the
message is recorded, `done` with its decision and the error), and the account goes on. The
worker processes (`triage.ingest.workers`) run the steps that need neither the store nor the
reply history (parse, most guards, classify); the main process finishes the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from triage.core.models import Classification, Disposition, InboundMessage, LeadKind, Verdict
from triage.decide import guards
from triage.decide.dispose import dispose
from triage.parsing import parse
from triage.sales.leads import record_lead_event
from triage.store.db import Tx
from triage.store.leads import NewLead, get_lead, record_lead
from triage.store.ledger import CLASSIFIED, Ledger, LedgerRow, Outcome

if TYPE_CHECKING:  # the act modules (Jinja2) stay out of the worker processes
    from triage.act.compose import ComposedReply

log = logging.getLogger(__name__)

Checker = Callable[[InboundMessage], Verdict]
Classify = Callable[[Sequence[InboundMessage]], list[Classification]]


@dataclass(frozen=True, slots=True)
class Decided:
    """Everything decided about one message, before any of it is recorded."""

    row_id: int
    msg: InboundMessage
    verdict: Verdict
    classification: Classification
    disposition: Disposition


@dataclass(frozen=True, slots=True)
class Planned:
    """A reply the pipeline wants queued for a decided message; `reply` once it is rendered."""

    row_id: int
    msg: InboundMessage
    template: str
    verdict: Verdict
    reply: ComposedReply | None = None
    # The salesperson the message's hot lead is assigned to, named in the reply ("" for none).
    lead_owner: str = ""


def _as_planned(planned: Planned) -> Planned:
    """The default preparation: none (the queue function renders, or the test needs no reply)."""
    return planned


@dataclass(slots=True)
class Deciding:
    """One message while the decide steps fill it in, field by field."""

    row_id: int
    raw: bytes
    backfill: bool
    msg: InboundMessage | None = None
    verdict: Verdict | None = None
    classification: Classification | None = None
    disposition: Disposition | None = None
    # The header rules' answers, asked while parsing (`guards.header_answers`), and the headers
    # they were asked of: they hold for `msg` only if it still has those very headers.
    header_answers: dict[int, str | None] | None = None
    answered_headers: Mapping[str, str] | None = None

    def needs_body(self, light: InboundMessage) -> bool:
        """Asked by the parser with the message as its headers give it: must the body be read?
        Not when a header rule decides it (keeps the rules' answers for the etiquette check)."""
        self.header_answers = guards.header_answers(light)
        self.answered_headers = light.headers
        return guards.first_header_reason(self.header_answers) is None

    def known_answers(self) -> dict[int, str | None] | None:
        """The header rules' answers for `msg`, if they were asked of its headers."""
        if self.msg is None or self.answered_headers is not self.msg.headers:
            return None  # a parser error replaced the message with a stand-in
        return self.header_answers

    def decided(self) -> Decided:
        """The finished decision (every step has run)."""
        assert self.msg and self.verdict and self.classification and self.disposition
        return Decided(self.row_id, self.msg, self.verdict, self.classification, self.disposition)


@dataclass(frozen=True, slots=True)
class DecideTools:
    """What the decide steps use: the etiquette check, the classifier and the folder layout."""

    check: Checker
    classify: Classify
    folder_prefix: str | None


def parse_step(batch: Sequence[Deciding], _tools: DecideTools) -> None:
    """Raw bytes → InboundMessage (never raises; bounded time and memory). Mail that a header
    rule decides (a list, a bounce, an auto-reply: about half of a real inbox) is not read past
    its headers: the classifier's header rules decide it the same way, and nothing else reads
    its body."""
    for m in batch:
        m.msg = parse(m.raw, m.needs_body)


def guards_step(batch: Sequence[Deciding], tools: DecideTools) -> None:
    """RFC 3834/5230 etiquette and sender authentication → may we reply, and to whom."""
    for m in batch:
        assert m.msg is not None
        m.verdict = tools.check(m.msg)


def classify_step(batch: Sequence[Deciding], tools: DecideTools) -> None:
    """Header rules, then the model, over the whole batch at once."""
    messages = [m.msg for m in batch if m.msg is not None]
    for m, cls in zip(batch, tools.classify(messages), strict=True):
        m.classification = cls


def dispose_step(batch: Sequence[Deciding], tools: DecideTools) -> None:
    """The label table: reply template, lead kind, keyword and folder."""
    for m in batch:
        assert m.msg and m.verdict and m.classification
        m.disposition = dispose(
            m.msg,
            m.verdict,
            m.classification,
            backfill=m.backfill,
            folder_prefix=tools.folder_prefix,
        )


DecideStep = Callable[[Sequence[Deciding], DecideTools], None]
DECIDE_STEPS: tuple[DecideStep, ...] = (parse_step, guards_step, classify_step, dispose_step)
# A worker process runs `parse_step`, the guards that need no reply history and the classifier
# (given the machine rules' reason the guards found); the main process finishes the guards and
# runs `dispose_step` (see `triage.ingest.workers`).


def run_decide_steps(
    batch: Sequence[Deciding], tools: DecideTools, steps: Sequence[DecideStep] = DECIDE_STEPS
) -> None:
    """Run `steps` in order over `batch`."""
    for step in steps:
        step(batch, tools)


def decide(
    items: Sequence[tuple[int, bytes, bool]],
    check: Checker,
    classify: Classify,
    folder_prefix: str | None,
) -> list[Decided]:
    """Run the decide steps over a batch of (row id, raw, backfill)."""
    batch = [Deciding(row, raw, backfill) for row, raw, backfill in items]
    run_decide_steps(batch, DecideTools(check, classify, folder_prefix))
    return [m.decided() for m in batch]


def prospect_contact(msg: InboundMessage, verdict: Verdict) -> str:
    """The prospect's address: the form's visitor for a web form, else the sender."""
    if msg.contact.email:
        return msg.contact.email
    if verdict.destination is not None:
        return verdict.destination.email
    return msg.from_.email if msg.from_ else ""


def outcome_of(d: Decided, reasons: Sequence[str]) -> Outcome:
    """The ledger record of a decided message."""
    msg, cls = d.msg, d.classification
    return Outcome(
        row_id=d.row_id,
        message_id=msg.message_id,
        sender=msg.from_.email if msg.from_ else "",
        subject=msg.subject[:500],
        language=msg.language,
        body=(msg.new_text or msg.text)[:20_000],
        label=cls.label,
        confidence=cls.confidence,
        decision=cls.decision,
        probabilities=dict(cls.probabilities),
        explanation=cls.explanation,
        may_reply=d.disposition.reply_template is not None,
        reasons=[*reasons, *d.disposition.notes],
    )


class _Rehearsed(Exception):
    """Ends the rehearsal transaction of `Recorder.owners`, rolling it back."""


class _OwnerChanged(Exception):
    """Rolls back a `Recorder.record` try whose replies name an owner their leads no longer
    have (another thread or process changed the leads after the rehearsal)."""

    def __init__(self, rows: set[int]) -> None:
        super().__init__(f"lead owner changed for rows {sorted(rows)}")
        self.rows = rows


# Tries of `Recorder.record` that render replies naming the rehearsed owner before the replies
# whose lead's owner keeps changing name none.
OWNER_RETRIES = 2


class Recorder:
    """Writes decided messages to the store: outcome, lead and the reply to queue."""

    def __init__(
        self,
        ledger: Ledger,
        queue_reply: Callable[[Tx, Planned], str | None],
        response_target: Callable[[datetime], datetime],
        assign_owner: Callable[[Tx], str],
        prepare_reply: Callable[[Planned], Planned | str] = _as_planned,
    ) -> None:
        self.ledger = ledger
        self.queue_reply = queue_reply
        self.response_target = response_target
        self.assign_owner = assign_owner
        self.prepare_reply = prepare_reply

    def record(self, batch: Sequence[Decided]) -> list[Decided]:
        """Record a batch in one transaction; returns the dispositions as finally recorded.

        `prepare_reply` renders each planned reply before the transaction and may refuse
        (returning a reason, e.g. a broken template). `queue_reply` runs inside the transaction
        and may refuse too, e.g. when an earlier message of the same batch already earned this
        sender a reply.

        A reply names the owner its hot lead had when rehearsed (`owners`); another thread or
        process may have changed that before the transaction (a lead created or claimed in
        between). The transaction then rolls back and the batch is rehearsed and rendered
        again; after `OWNER_RETRIES` such changes, the replies concerned name no owner. A reply
        never names someone other than its lead's owner.
        """
        unnamed: set[int] = set()
        for attempt in range(OWNER_RETRIES + 1):
            try:
                return self._record(batch, unnamed)
            except _OwnerChanged as changed:
                log.info(
                    "the owner of %d lead(s) changed while their replies were rendered;"
                    " rendering them again",
                    len(changed.rows),
                )
                if attempt + 1 >= OWNER_RETRIES:
                    unnamed |= changed.rows
        raise AssertionError("unreachable: the last try names no owner that could change")

    def _record(self, batch: Sequence[Decided], unnamed: Collection[int]) -> list[Decided]:
        """One try of `record`; raises _OwnerChanged (rolled back) when a queued reply would
        name another owner than its lead has. Rows in `unnamed` get replies naming no owner."""
        owners = self.owners(batch)
        prepared: dict[int, Planned | str] = {
            d.row_id: self.prepare_reply(
                Planned(
                    d.row_id,
                    d.msg,
                    d.disposition.reply_template,
                    d.verdict,
                    lead_owner="" if d.row_id in unnamed else owners.get(d.row_id, ""),
                )
            )
            for d in batch
            if d.disposition.reply_template is not None
        }
        final: list[Decided] = []
        changed: set[int] = set()
        with self.ledger.db.transaction() as c:
            for d in batch:
                reasons = list(d.disposition.reasons)
                disposition = d.disposition
                named: str | None = None
                if disposition.reply_template is not None:
                    planned = prepared[d.row_id]
                    refusal = planned if isinstance(planned, str) else self.queue_reply(c, planned)
                    if refusal is not None:
                        reasons.append(refusal)
                        disposition = replace(disposition, reply_template=None)
                    elif isinstance(planned, Planned) and d.row_id not in unnamed:
                        named = planned.lead_owner
                if disposition is d.disposition and len(reasons) == len(disposition.reasons):
                    done = d  # most messages: nothing was refused here, nothing to add
                else:
                    done = replace(d, disposition=replace(disposition, reasons=tuple(reasons)))
                self.ledger.record_outcome(c, outcome_of(done, reasons))
                if disposition.lead_kind is not None:
                    lead = get_lead(c, self._lead(c, done, owners.get(d.row_id)))
                    if lead is not None:
                        # In this transaction: a rollback (an owner changed) records no event.
                        record_lead_event(c, lead.id, "message")
                    if (
                        named is not None
                        and disposition.lead_kind is LeadKind.HOT
                        and lead is not None
                        and lead.owner != named
                    ):
                        changed.add(d.row_id)
                final.append(done)
            if changed:
                raise _OwnerChanged(changed)
        return final

    def owners(self, batch: Sequence[Decided]) -> dict[int, str]:
        """The owner each hot lead of `batch` will have once recorded, by row id, known before
        any reply is rendered so that the reply can name its owner.

        The batch's leads are recorded exactly as `record` will record them, in a transaction
        that is then rolled back: a message that joins an existing lead gets that lead's owner,
        and round-robin advances from one message of the batch to the next. `record` then
        writes the same owners, unless another account's thread (or `triage leads claim`)
        changed the leads in between: `record` checks, and tries again.
        """
        if not any(d.disposition.lead_kind is LeadKind.HOT for d in batch):
            return {}
        owners: dict[int, str] = {}
        try:
            with self.ledger.db.transaction() as c:
                for d in batch:
                    if d.disposition.lead_kind is None:
                        continue
                    lead = get_lead(c, self._lead(c, d, None))
                    if d.disposition.lead_kind is LeadKind.HOT and lead is not None:
                        owners[d.row_id] = lead.owner
                raise _Rehearsed
        except _Rehearsed:
            pass
        return owners

    def _lead(self, c: Tx, d: Decided, owner: str | None) -> int:
        """Record the message's lead; a hot one gets `owner`, or one assigned now (None)."""
        kind = d.disposition.lead_kind
        assert kind is not None
        email = prospect_contact(d.msg, d.verdict)
        contact = replace(d.msg.contact, email=email)
        if not contact.name and d.msg.from_ and d.msg.from_.email == email:
            contact = replace(contact, name=d.msg.from_.name)
        now = datetime.now(UTC)
        if kind is LeadKind.HOT and owner is None:
            owner = self.assign_owner(c)
        return record_lead(
            c,
            NewLead(
                message_row=d.row_id,
                kind=kind,
                contact=contact,
                label=d.classification.label,
                confidence=d.classification.confidence,
                explanation=d.classification.explanation,
                due_at=self.response_target(now) if kind is LeadKind.HOT else None,
                owner=(owner or "") if kind is LeadKind.HOT else "",
                thread_ids=(d.msg.in_reply_to, *d.msg.references),
            ),
        )


# -- the act half ---------------------------------------------------------------------------------


@dataclass
class Act:
    """One message in the act half of a pass: its ledger row, its decision (None until decided,
    and for a row a crash left `classified`), and how far acting on it got in this pass."""

    row: LedgerRow
    decided: Decided | None = None
    recorded: bool = False
    finished: bool = False

    def __post_init__(self) -> None:
        # A row found `classified` was recorded by an earlier pass: only its marks are left.
        self.recorded = self.recorded or self.row.state == CLASSIFIED


class ActPorts(Protocol):
    """What the act steps need from the folder being synced (`triage.ingest.sync.FolderSync`)."""

    recorder: Recorder
    checkpoint: Callable[[str], None]

    def recorded(self, act: Act) -> None:
        """Told about each message just recorded (outcome log line, counts, metrics)."""

    def send(self) -> None:
        """Send every reply that is due."""

    def file(self, work: Sequence[Act], alone: bool) -> None:
        """File sent replies and drafts, flag originals \\Answered (only `work`'s if `alone`)."""

    def mark(self, work: Sequence[Act]) -> None:
        """Keywords and folder moves for recorded messages."""

    def finish(self, work: Sequence[Act]) -> None:
        """Record the messages `done`."""


def record_step(ports: ActPorts, work: Sequence[Act], _alone: bool) -> None:
    """Outcome, lead and queued reply of every decided message, in one transaction."""
    pending = [w for w in work if w.decided is not None and not w.recorded]
    if pending:
        recorded = ports.recorder.record([w.decided for w in pending if w.decided is not None])
        # Every row is marked recorded before anyone is told: the transaction committed them
        # all, and a retry must never record one again.
        for w, d in zip(pending, recorded, strict=True):
            w.decided, w.recorded = d, True
        for w in pending:
            try:
                ports.recorded(w)
            except Exception:  # a log line or a metric never fails a message
                log.exception("telling about recorded message row %d failed", w.row.id)
    ports.checkpoint("after_record")


def send_step(ports: ActPorts, _work: Sequence[Act], _alone: bool) -> None:
    """The queued replies go out (live mode; the other modes never reach SMTP)."""
    ports.send()
    ports.checkpoint("after_send")


def file_step(ports: ActPorts, work: Sequence[Act], alone: bool) -> None:
    """Copies in Sent or Drafts and \\Answered, while the originals are still in the folder: a
    move by `mark_step` would give them new UIDs elsewhere."""
    ports.file(work, alone)


def mark_step(ports: ActPorts, work: Sequence[Act], _alone: bool) -> None:
    """Keyword per decision and, if configured, a move into Triage/<Decision>."""
    ports.mark([w for w in work if w.recorded and not w.finished])


def finish_step(ports: ActPorts, work: Sequence[Act], _alone: bool) -> None:
    """Every effect is recorded and applied: the messages are `done`."""
    ready = [w for w in work if w.recorded and not w.finished]
    ports.checkpoint("before_done")
    ports.finish(ready)
    for w in ready:
        w.finished = True


ActStep = Callable[[ActPorts, Sequence[Act], bool], None]
ACT_STEPS: tuple[ActStep, ...] = (record_step, send_step, file_step, mark_step, finish_step)


def act(ports: ActPorts, work: Sequence[Act], alone: bool = False) -> None:
    """Run the act steps in order over `work`; each skips what an earlier try in the same pass
    already did (a message recorded once is never recorded again). `alone`: `work` is one
    message being retried by itself, so filing touches only its replies."""
    for step in ACT_STEPS:
        step(ports, work, alone)
