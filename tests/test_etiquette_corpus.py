"""Etiquette rules against real mail: bounces, auto-replies and mailing lists are never answered.

Reads `../shared/corpora` (real public mail that must not be copied into the repository) and skips
when it is absent. The rules run in the context of `triage classify` on files: no Return-Path
requirement (files have none), no "addressed to us" requirement (the corpora were sent to other
people), no reply history, so only what the messages themselves say decides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from triage.core.models import InboundMessage
from triage.decide.guards import GuardContext, automated_reason, check
from triage.parsing import parse

pytestmark = pytest.mark.corpus

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
BOUNCES = CORPORA / "other" / "sisimai_bounces"
SPAMASSASSIN = [
    CORPORA / "other" / name
    for name in ("spamassassin_easy_ham", "spamassassin_hard_ham", "spamassassin_spam")
]
# sisimai keeps a few messages that are deliberately *not* bounces, to test its own detector.
NOT_BOUNCES = "not"
CTX = GuardContext(require_return_path=False, require_addressed_to_us=False, history=None)

if not CORPORA.is_dir():
    pytest.skip(f"corpora not found at {CORPORA}", allow_module_level=True)


def messages(folder: Path) -> Iterator[tuple[Path, InboundMessage]]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(("_", ".")):
            yield path, parse(path.read_bytes())


def tally(reasons: Counter[str], title: str, total: int) -> None:
    """Print how often each rule fired (visible with `pytest -s` or `-rA`)."""
    print(f"\n{title}: {total} messages")
    for name, count in reasons.most_common():
        print(f"  {count:5d}  {name}")


def test_no_bounce_or_auto_reply_may_be_answered() -> None:
    """Every delivery report, abuse report and auto-reply in the sisimai set is refused, and the
    machine rules alone (what the classifier uses) recognise each one."""
    reasons: Counter[str] = Counter()
    answered: list[str] = []
    unrecognised: list[str] = []
    total = 0
    for path, msg in messages(BOUNCES):
        if path.parent.name == NOT_BOUNCES:
            continue
        total += 1
        verdict = check(msg, CTX)
        reasons.update({r.split(":", 1)[0] for r in verdict.reasons})
        if verdict.may_reply:
            answered.append(str(path.relative_to(BOUNCES)))
        if automated_reason(msg) is None:
            unrecognised.append(str(path.relative_to(BOUNCES)))
    tally(reasons, "sisimai bounces and auto-replies", total)
    assert total > 800
    assert answered == []
    assert unrecognised == []


def test_sisimai_non_bounces_are_not_refused_as_machine_mail() -> None:
    """The rules are not simply "no": the set's deliberate non-bounces (a person forwarding a
    message as an attachment) pass."""
    folder = BOUNCES / NOT_BOUNCES
    people = [p.name for p, msg in messages(folder) if p.name.startswith("is-not-bounce")]
    assert people
    for path, msg in messages(folder):
        if path.name in people:
            assert automated_reason(msg) is None, path.name
            assert check(msg, CTX).may_reply, (path.name, check(msg, CTX).reasons)


def test_no_mailing_list_message_may_be_answered() -> None:
    """Every SpamAssassin message with a List-* header is refused with a list-header reason."""
    reasons: Counter[str] = Counter()
    listed = answered = 0
    for folder in SPAMASSASSIN:
        for path, msg in messages(folder):
            if not any(name.startswith("list-") for name in msg.headers):
                continue
            listed += 1
            verdict = check(msg, CTX)
            reasons.update({r.split(":", 1)[0] for r in verdict.reasons})
            assert not verdict.may_reply, path
            assert any(r.startswith("list-header:") for r in verdict.reasons), path
            answered += verdict.may_reply
    tally(reasons, "SpamAssassin messages with List-* headers", listed)
    assert listed > 1000
    assert answered == 0


def test_reason_counts_over_all_spamassassin_mail() -> None:
    """For the record: how the rules split the SpamAssassin folders (ham is mostly lists and bulk;
    spam mostly passes etiquette, which is why the classifier, not the guards, must stop it)."""
    for folder in SPAMASSASSIN:
        reasons: Counter[str] = Counter()
        total = allowed = 0
        for _path, msg in messages(folder):
            total += 1
            verdict = check(msg, CTX)
            allowed += verdict.may_reply
            reasons.update({r.split(":", 1)[0] for r in verdict.reasons})
        reasons["(may reply)"] = allowed
        tally(reasons, folder.name, total)
        assert total > 0
