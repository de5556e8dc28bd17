"""Spam verdicts of our own receiving server make a message `other` without the model, and only
for the header names the operator trusts; a verdict header nobody trusts changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from triage.core.settings import ClassifierSettings
from triage.decide.classify import load_classifier
from triage.decide.spam import says_spam, upstream_spam
from triage.parsing import parse

INQUIRY = (
    b"From: Pat <pat@client.example>\nTo: sales@example.test\nSubject: Quote for 40 pumps\n"
    b"Message-ID: <q1@client.example>\n{extra}\n"
    b"Hello, please send us a quotation for 40 pumps, delivery in March. Budget approved.\n"
)


def message(extra: bytes = b"") -> bytes:
    return INQUIRY.replace(b"{extra}\n", extra)


@pytest.mark.parametrize(
    ("name", "value", "spam"),
    [
        ("x-spam-flag", "YES", True),
        ("x-spam-flag", "NO", False),
        ("x-spam-status", "Yes, score=7.1 required=5.0 tests=...", True),
        ("x-spam-status", "No, score=-0.1 required=5.0", False),
        ("x-spam", "Yes", True),
        ("x-spamd-result", "default: True [12.30 / 15.00]; R_SPF_FAIL(1.0)", True),
        ("x-spamd-result", "default: False [0.40 / 15.00]", False),
        ("x-rspamd-action", "add header", True),
        ("x-rspamd-action", "no action", False),
        ("x-ms-exchange-organization-scl", "6", True),
        ("x-ms-exchange-organization-scl", "-1", False),
        ("x-ms-exchange-organization-scl", "junk", False),
    ],
)
def test_each_verdict_header_is_read(name: str, value: str, spam: bool) -> None:
    """SpamAssassin, rspamd and Exchange verdicts, spam and not spam."""
    assert says_spam(name, value) is spam


def test_only_trusted_headers_count() -> None:
    """The same `X-Spam-Flag: YES` is a verdict when trusted and nothing when not."""
    msg = parse(message(b"X-Spam-Flag: YES\n"))
    assert upstream_spam(msg, ("x-spam-flag",)) == "upstream-spam: X-Spam-Flag: YES"
    assert upstream_spam(msg, ()) is None
    assert upstream_spam(msg, ("x-spam-status",)) is None


def test_the_topmost_copy_is_the_verdict() -> None:
    """Our server's header is on top; a sender's forged copy further down is not read."""
    msg = parse(message(b"X-Spam-Flag: NO\nX-Spam-Flag: YES\n"))
    assert upstream_spam(msg, ("x-spam-flag",)) is None


def test_the_classifier_answers_other_without_the_model() -> None:
    """A sales inquiry that our server marked as spam is `other` by rule, at confidence 1."""
    classifier = load_classifier(ClassifierSettings().model_path)
    msg = parse(message(b"X-Spam-Status: Yes, score=9.0 required=5.0\n"))
    assert classifier.classify(msg).decision == "sales"
    classifier.spam_headers = ("x-spam-status",)
    result = classifier.classify(msg)
    assert (result.decision, result.confidence, result.rule) == (
        "other",
        1.0,
        "upstream-spam: X-Spam-Status: Yes, score=9.0 required=5.0",
    )


def test_an_unknown_header_name_is_a_config_error() -> None:
    """A header triage cannot read is refused when the settings load, naming the known ones."""
    with pytest.raises(ValueError, match="cannot read x-virus-flag; known: x-spam-flag"):
        ClassifierSettings(trusted_spam_headers=("X-Virus-Flag",))


def test_the_setting_reaches_the_daemons_classifier(tmp_path: Path) -> None:
    """`classifier.trusted_spam_headers` in the configuration is what the service's shared
    model handle applies to every model it loads."""
    from tests.test_leads_cli import write_config
    from triage.core.settings import load_settings
    from triage.ops.service import Shared

    config = write_config(tmp_path)
    config.write_text(
        config.read_text() + '\n[classifier]\ntrusted_spam_headers = ["X-Spam-Flag"]\n'
    )
    shared = Shared(load_settings(config))
    result = shared.model.get().classify(parse(message(b"X-Spam-Flag: YES\n")))
    assert result.rule == "upstream-spam: X-Spam-Flag: YES"
