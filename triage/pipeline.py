"""The flow of one message, written once, top to bottom.

    raw bytes ─▶ parse ─▶ guards ─▶ classify ─▶ dispose      (pure: `decide`)
              ─▶ record outcome + lead + queued reply         (one transaction: `record`)

`decide` does no I/O, so a crash before `record` simply redoes it. `record` renders the replies
first, outside any transaction (a slow or failing template never holds the store's write lock),
then writes everything the message causes in a single transaction and moves its ledger row to
`classified`; sending the queued reply and marking the mailbox happen afterwards and are
themselves recorded (see `sync`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage

from triage.core.models import Classification, Disposition, InboundMessage, LeadKind, Verdict
from triage.decide.dispose import dispose
from triage.parsing import parse
from triage.store.db import Tx
from triage.store.leads import NewLead, get_lead, record_lead
from triage.store.ledger import Ledger, Outcome

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
    reply: EmailMessage | None = None
    # The salesperson the message's hot lead is assigned to, named in the reply ("" for none).
    lead_owner: str = ""


def _as_planned(planned: Planned) -> Planned:
    """The default preparation: none (the queue function renders, or the test needs no reply)."""
    return planned


def decide(
    items: Sequence[tuple[int, bytes, bool]],
    check: Checker,
    classify: Classify,
    folder_prefix: str | None,
) -> list[Decided]:
    """Parse, check etiquette, classify and dispose a batch of (row id, raw, backfill)."""
    messages = [parse(raw) for _row, raw, _bf in items]
    verdicts = [check(m) for m in messages]
    classes = classify(messages)
    return [
        Decided(
            row_id=row,
            msg=msg,
            verdict=verdict,
            classification=cls,
            disposition=dispose(msg, verdict, cls, backfill=backfill, folder_prefix=folder_prefix),
        )
        for (row, _raw, backfill), msg, verdict, cls in zip(
            items, messages, verdicts, classes, strict=True
        )
    ]


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
        """
        owners = self.owners(batch)
        prepared: dict[int, Planned | str] = {
            d.row_id: self.prepare_reply(
                Planned(
                    d.row_id,
                    d.msg,
                    d.disposition.reply_template,
                    d.verdict,
                    lead_owner=owners.get(d.row_id, ""),
                )
            )
            for d in batch
            if d.disposition.reply_template is not None
        }
        final: list[Decided] = []
        with self.ledger.db.transaction() as c:
            for d in batch:
                reasons = list(d.disposition.reasons)
                disposition = d.disposition
                if disposition.reply_template is not None:
                    planned = prepared[d.row_id]
                    refusal = planned if isinstance(planned, str) else self.queue_reply(c, planned)
                    if refusal is not None:
                        reasons.append(refusal)
                        disposition = replace(disposition, reply_template=None)
                done = replace(d, disposition=replace(disposition, reasons=tuple(reasons)))
                self.ledger.record_outcome(c, outcome_of(done, reasons))
                if disposition.lead_kind is not None:
                    self._lead(c, done, owners.get(d.row_id))
                final.append(done)
        return final

    def owners(self, batch: Sequence[Decided]) -> dict[int, str]:
        """The owner each hot lead of `batch` will have once recorded, by row id, known before
        any reply is rendered so that the reply can name its owner.

        The batch's leads are recorded exactly as `record` will record them, in a transaction
        that is then rolled back: a message that joins an existing lead gets that lead's owner,
        and round-robin advances from one message of the batch to the next. `record` then
        writes the same owners. One process holds the store, so nothing changes in between.
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
