"""Every way of deciding a message gives the same decision.

Two shortcuts must never change what happens to a message:
- mail a header rule decides (a list, a bounce, an auto-reply) is parsed only as far as its
  headers (`parse(raw, needs_body)`), so its body is never read;
- a worker process finds the machine rules' reason once, in the etiquette check, and hands it to
  the classifier instead of running the rules again;
- a worker process asks the header rules once, while parsing, and its etiquette check reuses
  their answers: sound only because those rules read neither the context nor the destination.

Both are checked against the plain path (a full parse, `guards.check`, `classify_many`) over the
project's corpus and, when `../shared` is present, real mail: bounces, lists, ham and spam, and
the parser torture set.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest

from triage.core.models import Address, InboundMessage
from triage.core.settings import SHIPPED_MODEL
from triage.decide import guards
from triage.decide.classify import ModelHandle, rule_decided
from triage.decide.dispose import dispose
from triage.ingest import workers
from triage.ingest.sources import iter_sources
from triage.parsing import parse
from triage.pipeline import Decided, Deciding, decide

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
SHARED = [
    CORPORA / "other" / "sisimai_bounces",
    CORPORA / "other" / "spamassassin_easy_ham",
    CORPORA / "other" / "spamassassin_hard_ham",
    CORPORA / "other" / "spamassassin_spam",
    CORPORA / "parser_torture",
]
PER_SOURCE = 250  # messages drawn from each shared folder (the whole run stays a few seconds)


class _NeverReplied:
    """A reply history with no replies: the history rules run and find nothing."""

    def replied_recently(self, address: str, window: timedelta, *, verified: bool = False) -> bool:
        return False


CTX = guards.GuardContext(
    our_addresses=frozenset({"hello@example.test"}),
    require_return_path=False,
    require_addressed_to_us=False,
    history=_NeverReplied(),
)


def _raws() -> list[bytes]:
    raws = [p.read_bytes() for p in sorted((REPO / "classifiers" / "corpus").rglob("*.eml"))]
    rng = random.Random(7)
    for folder in SHARED:
        if folder.is_dir():
            found = [item.raw for item in iter_sources([folder]) if item.raw]
            raws += rng.sample(found, min(PER_SOURCE, len(found)))
    return raws


@pytest.fixture(scope="module")
def raws() -> list[bytes]:
    return _raws()


@pytest.fixture(scope="module")
def model() -> ModelHandle:
    return ModelHandle(SHIPPED_MODEL)


def _plain(raw: bytes, model: ModelHandle) -> Decided:
    """The decision with nothing skipped: a full parse, every rule, the classifier's own rules."""
    msg = parse(raw)
    verdict = guards.check(msg, CTX)
    cls = model.get().classify(msg)
    return Decided(
        0, msg, verdict, cls, dispose(msg, verdict, cls, backfill=False, folder_prefix=None)
    )


def _essence(d: Decided) -> tuple[object, ...]:
    c = d.classification
    return (
        d.verdict.may_reply,
        d.verdict.reasons,
        d.verdict.destination,
        c.label,
        c.decision,
        c.rule,
        c.explanation,
        tuple(round(p, 9) for p in c.probabilities.values()),
        d.disposition,
    )


def test_mail_decided_by_its_headers_gets_the_same_decision_without_its_body_read(
    raws: list[bytes], model: ModelHandle
) -> None:
    """The pipeline (which parses lazily) decides every message as a full parse would, and the
    mail it did not read past the headers is exactly the mail a header rule decided."""
    items = [(i, raw, False) for i, raw in enumerate(raws)]
    lazy = decide(items, partial(guards.check, ctx=CTX), model.get().classify_many, None)
    skipped = 0
    for d, raw in zip(lazy, raws, strict=True):
        full = _plain(raw, model)
        assert _essence(d) == _essence(full), full.msg.subject
        unread = d.msg.text == "" and full.msg.text != ""
        if unread:
            skipped += 1
            assert d.classification.rule is not None, full.msg.subject
            assert rule_decided(d.verdict.reasons), full.msg.subject
    assert skipped > 0 if CORPORA.is_dir() else True


def test_a_worker_decides_every_message_as_the_main_process_would(
    raws: list[bytes], model: ModelHandle
) -> None:
    """A worker's half (parse, the rules without history, classify given the rules' reason) and
    the main process's half (history rules, dispose) together equal the in-process pipeline."""
    worker = workers._Worker(model, CTX)
    items = [(i, raw, False) for i, raw in enumerate(raws)]
    together = decide(items, partial(guards.check, ctx=CTX), model.get().classify_many, None)
    split: list[Decided] = []
    for start in range(0, len(items), 100):
        chunk = items[start : start + 100]
        partials = worker.decide([raw for _, raw, _ in chunk])
        split += workers.finish(chunk, partials, CTX, None)
    assert [_essence(d) for d in split] == [_essence(d) for d in together]


class _Bulk:
    """A reply history that answers for a whole batch at once; counts how it was asked."""

    def __init__(self, replied: set[str]) -> None:
        self.replied = replied
        self.single = 0
        self.bulk = 0

    def replied_recently(self, address: str, window: timedelta, *, verified: bool = False) -> bool:
        self.single += 1
        return address in self.replied

    def recent_recipients(self, addresses: Iterable[str], window: timedelta) -> dict[str, bool]:
        self.bulk += 1
        return {a: True for a in addresses if a in self.replied}


def test_a_batch_asks_the_reply_history_once_and_decides_as_one_by_one(
    raws: list[bytes], model: ModelHandle
) -> None:
    """The main process's half asks a history that can answer for many addresses once per
    batch, about every destination of it, and decides exactly as asking address by address;
    half the senders got a reply already, so the history rule refuses some."""
    worker = workers._Worker(model, CTX)
    items = [(i, raw, False) for i, raw in enumerate(raws)]
    senders = sorted({m.from_.email.lower() for raw in raws if (m := parse(raw)).from_})
    replied = set(senders[::2])
    # A plain ReplyHistory (no recent_recipients) is asked address by address.
    one_by_one = dataclasses.replace(CTX, history=_Single(replied))
    together = decide(items, partial(guards.check, ctx=one_by_one), model.get().classify_many, None)
    bulk = _Bulk(replied)
    ctx = dataclasses.replace(one_by_one, history=bulk)
    split: list[Decided] = []
    batches = 0
    for start in range(0, len(items), 100):
        chunk = items[start : start + 100]
        split += workers.finish(chunk, worker.decide([raw for _, raw, _ in chunk]), ctx, None)
        batches += 1
    assert [_essence(d) for d in split] == [_essence(d) for d in together]
    assert any("already-replied" in r for d in split for r in d.verdict.reasons)
    assert bulk.single == 0 and 0 < bulk.bulk <= batches


class _Single:
    """A reply history that answers one address at a time."""

    def __init__(self, replied: set[str]) -> None:
        self.replied = replied

    def replied_recently(self, address: str, window: timedelta, *, verified: bool = False) -> bool:
        return address in self.replied


def test_header_rules_answer_from_the_headers_alone_whatever_the_context(
    raws: list[bytes],
) -> None:
    """Each header rule gives the same answer in the lenient context the parser asks it in and
    in a strict one with a destination (what the etiquette check passes), so the worker may
    reuse the parser's answers; and the worker's check with them equals its check without."""
    strict = guards.GuardContext(
        our_addresses=frozenset({"hello@example.test"}),
        form_senders=frozenset({"forms@example.test"}),
        require_return_path=True,
        require_addressed_to_us=True,
        history=_NeverReplied(),
    )
    dest = Address("Jane", "jane@acme.example")
    assert guards.HEADER_RULES, "no header rules: the worker's shortcut is never taken"
    worker = workers._Worker(ModelHandle(SHIPPED_MODEL), strict)
    for raw in raws:
        deciding = Deciding(0, raw, False)
        msg = deciding.msg = parse(raw, deciding.needs_body)
        answers = deciding.known_answers()
        assert answers is not None, msg.subject  # asked while parsing, of this message
        for index in guards.HEADER_RULES:
            rule = guards.RULES[index]
            assert rule(msg, strict, dest) == answers[index], (rule.name, msg.subject)
            assert rule(msg, strict.for_route(guards.route(msg, strict)), None) == answers[index]
        first = guards.first_header_reason(answers)
        assert first is None or first == guards.automated_reason(msg), msg.subject
        assert worker.check(msg, answers) == worker.check(msg), msg.subject


def test_the_classifier_given_the_rules_reason_decides_as_it_would_alone(
    raws: list[bytes], model: ModelHandle
) -> None:
    """`classify_many(automated=…)` with the machine rules' reasons equals running them itself."""
    messages = [parse(raw) for raw in raws[:400]]
    classifier = model.get()
    reasons = [guards.automated_reason(m) for m in messages]
    assert classifier.classify_many(messages, automated=reasons) == classifier.classify_many(
        messages
    )
    with pytest.raises(ValueError, match="one automated reason per message"):
        classifier.classify_many(messages, automated=reasons[:-1])


def test_header_only_parse_keeps_what_the_rules_read() -> None:
    """A list message parsed only as far as its headers: no text, the addresses and headers kept."""
    raw = (
        b"From: Announce <news@lists.example.org>\r\nTo: hello@example.test\r\n"
        b"Subject: Weekly digest\r\nList-Id: <news.lists.example.org>\r\n"
        b"Message-ID: <d1@lists.example.org>\r\n\r\nPlease send me a quote for 40 seats.\r\n"
    )
    msg = parse(raw, lambda m: guards.first_header_reason(guards.header_answers(m)) is None)
    assert msg.text == msg.new_text == ""
    assert msg.from_ == Address("Announce", "news@lists.example.org")
    assert msg.subject == "Weekly digest"
    assert msg.header("list-id") == "<news.lists.example.org>"
    reason = guards.first_header_reason(guards.header_answers(msg))
    assert reason == "list-header: mailing list header List-Id" == guards.automated_reason(msg)
    assert isinstance(parse(raw), InboundMessage) and "quote" in parse(raw).text
