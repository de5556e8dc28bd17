"""Nobody can steer the auto-responder: against the harness's real Dovecot and Postfix.

Each test replays one finding of an attack on the first release and states what must happen now:
a forged Reply-To gets no reply to the third party; a web-form spam gets a reply with fixed text
only; `+tag` and dot variants of one mailbox get one reply; a flood of forged inquiries that uses
up the hourly cap delays a real prospect's reply but does not cancel it.
"""

from __future__ import annotations

import smtplib
import sqlite3
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import format_datetime, localtime, make_msgid
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import config_for, db, replies_in, running_harness, triage

pytestmark = pytest.mark.mail

HELLO = "hello@example.test"
MX = "mx.example.test"  # the authserv-id our receiving server would stamp
TRUSTING = {"TRIAGE_REPLIES__TRUSTED_AUTHSERV_IDS": f'["{MX}"]'}
SPAM_WORDS = ("PILLS", "IPHONE", "spam.example", "WIN A FREE", "http")


def message(
    sender: str,
    subject: str,
    body: str,
    *,
    name: str = "",
    reply_to: str = "",
    authenticated_domain: str = "",
) -> bytes:
    """An inquiry to hello@; `authenticated_domain` adds our server's DMARC pass for it on top."""
    msg = EmailMessage()
    if authenticated_domain:
        msg["Authentication-Results"] = f"{MX}; dmarc=pass header.from={authenticated_domain}"
    msg["From"] = f"{name} <{sender}>" if name else sender
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["To"] = HELLO
    msg["Subject"] = subject
    msg["Date"] = format_datetime(localtime())
    msg["Message-ID"] = make_msgid("abuse", domain="client.example")
    msg.set_content(body)
    return msg.as_bytes()


QUOTE = (
    "Hello,\n\nwe need a quote for 40 pallets of your standard packaging delivered to Rotterdam"
    " next month. Our budget is approved; please call me to discuss pricing and delivery.\n\n"
    "Kind regards,\nAlice\nPurchasing"
)


def deliver(harness: MailHarness, messages: list[tuple[str, bytes]], user: str = "hello") -> None:
    """Send through Postfix and wait until Dovecot has them all."""
    with harness.imap(user) as client:
        client.select_folder("INBOX", readonly=True)
        before = len(client.search("ALL"))
    with smtplib.SMTP(harness.config.host, harness.config.smtp_port, timeout=30) as smtp:
        for sender, raw in messages:
            smtp.sendmail(sender, [f"{user}@{harness.config.domain}"], raw)
    harness.wait_for_messages(user, count=before + len(messages), timeout=60)


def outbox(base: Path) -> list[sqlite3.Row]:
    """Every reply row triage recorded: the authoritative list of whom it tried to write to."""
    with db(base) as conn:
        return list(conn.execute("SELECT * FROM replies ORDER BY id"))


def reasons(base: Path) -> list[str]:
    """Every reason recorded for every message."""
    with db(base) as conn:
        return [str(r[0]) for r in conn.execute("SELECT reasons FROM messages")]


@pytest.fixture
def started(mail_harness: MailHarness, clean_mail: None, tmp_path: Path) -> tuple[Path, Path]:
    """A config whose first start (on the empty mailbox) has already recorded the baseline."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    result = triage(config, "once", env=TRUSTING)
    assert result.returncode == 0, result.stderr
    return base, config


def test_forged_reply_to_gets_no_reply_to_the_third_party(
    mail_harness: MailHarness, started: tuple[Path, Path]
) -> None:
    """From alice, `Reply-To: bob`, a spam subject: alice (who may not even have written) gets a
    fixed-text reply, bob gets nothing, and the record says why Reply-To was passed over. An
    authenticated sender with a Reply-To in another domain is answered at its From as well."""
    base, config = started
    spam_subject = "BUY CHEAP PILLS http://spam.example/x quote for 40 pallets"
    deliver(
        mail_harness,
        [
            (
                "alice@example.test",
                message(
                    "alice@example.test",
                    spam_subject,
                    QUOTE,
                    reply_to='"WIN A FREE IPHONE http://spam.example" <bob@example.test>',
                ),
            ),
            (
                "carol@example.test",
                message(
                    "carol@example.test",
                    "Quote for 40 pallets",
                    QUOTE.replace("Alice", "Carol"),
                    name="Carol Buyer",
                    reply_to="carol@elsewhere.example",
                    authenticated_domain="example.test",
                ),
            ),
        ],
    )
    result = triage(config, "once", env=TRUSTING)
    assert result.returncode == 0, result.stderr
    assert replies_in(mail_harness, "bob") == []
    assert sorted(r["recipient"] for r in outbox(base)) == [
        "alice@example.test",
        "carol@example.test",
    ]
    [to_alice] = replies_in(mail_harness, "alice")
    assert str(to_alice["To"]) == "alice@example.test"  # no display name from the message
    rendered = to_alice.as_string()
    for word in SPAM_WORDS:
        assert word not in rendered, word
    # The authenticated sender is answered by name, with its own subject.
    [to_carol] = replies_in(mail_harness, "carol")
    assert str(to_carol["To"]) == "Carol Buyer <carol@example.test>"
    assert str(to_carol["Subject"]) == "Re: Quote for 40 pallets"
    recorded = "\n".join(reasons(base))
    assert "reply-to-ignored: Reply-To bob@example.test" in recorded
    assert "reply-to-ignored: Reply-To carol@elsewhere.example" in recorded


def test_web_form_spam_gets_a_reply_with_fixed_text_only(
    mail_harness: MailHarness, started: tuple[Path, Path]
) -> None:
    """A form relay's notification with `Name: WIN A FREE IPHONE at http://spam.example/claim`
    and a victim's address in `Email:` is answered (a form visitor is a prospect) with the
    template's own subject and text: nothing the form said reaches the victim."""
    base, config = started
    form = (
        "New submission from the contact form\n\n"
        "Name: WIN A FREE IPHONE at http://spam.example/claim\n"
        "Email: carol@example.test\n"
        "Company: http://spam.example/claim CLICK NOW\n"
        "Message: We need a quote for 40 pallets delivered to Rotterdam next month; budget"
        " approved, please call to discuss pricing.\n"
    )
    raw = message(
        "forms@webforms.example",
        "Contact form: WIN A FREE IPHONE http://spam.example",
        form,
        authenticated_domain="webforms.example",  # the relay's own notification
    )
    deliver(mail_harness, [("forms@webforms.example", raw)])
    env = {**TRUSTING, "TRIAGE_REPLIES__FORM_SENDERS": '["forms@webforms.example"]'}
    result = triage(config, "once", env=env)
    assert result.returncode == 0, result.stderr
    [row] = outbox(base)
    assert row["recipient"] == "carol@example.test"
    [reply] = replies_in(mail_harness, "carol")
    assert str(reply["To"]) == "carol@example.test"
    assert str(reply["Subject"]).endswith("Example Furniture Ltd")
    rendered = reply.as_string()
    for word in (*SPAM_WORDS, "CLICK"):
        assert word not in rendered, word


def test_tag_case_and_dot_variants_of_one_mailbox_get_one_reply(
    mail_harness: MailHarness, started: tuple[Path, Path]
) -> None:
    """`alice+1@`, `ALICE@` and (with the domain configured as dotless) `a.lice@` reach one
    mailbox: one reply, the others recorded as already answered."""
    base, config = started
    variants = ["alice+1@example.test", "ALICE@example.test", "a.lice+x@example.test"]
    deliver(
        mail_harness,
        [(v, message(v, f"Quote {n}", QUOTE)) for n, v in enumerate(variants)],
    )
    env = {**TRUSTING, "TRIAGE_REPLIES__DOTLESS_DOMAINS": '["example.test"]'}
    result = triage(config, "once", env=env)
    assert result.returncode == 0, result.stderr
    assert len(outbox(base)) == 1
    assert len(replies_in(mail_harness, "alice")) == 1
    assert sum("already-replied" in r for r in reasons(base)) == 2


# --- the hourly cap, with a crowd of 61 real mailboxes --------------------------------------------

CROWD = 60


@pytest.fixture(scope="module")
def crowd_harness() -> Iterator[MailHarness]:
    """A second harness with a mailbox for each of 60 forgers and one real prospect."""
    users = {f"f{n:02d}": f"pw-f{n:02d}" for n in range(CROWD)}
    users |= {"hello": "pw-hello", "noreply": "pw-noreply", "prospect": "pw-prospect"}
    yield from running_harness(users)


def test_a_flood_of_forged_inquiries_defers_but_never_drops_a_real_reply(
    crowd_harness: MailHarness, tmp_path: Path
) -> None:
    """60 forged inquiries in an hour use up `max_per_hour = 60`; the real prospect who writes
    next is not dropped (as the first release did) but deferred, with the reason on record, and
    answered once the hour frees a slot."""
    harness = crowd_harness
    harness.clear_all_mailboxes()
    base = tmp_path / "triage"
    config = config_for(harness, base)
    env = {**TRUSTING, "TRIAGE_REPLIES__MAX_PER_DOMAIN_PER_HOUR": "1000"}
    assert triage(config, "once", env=env).returncode == 0
    forged = [
        (f"f{n:02d}@example.test", message(f"f{n:02d}@example.test", f"Quote {n}", QUOTE))
        for n in range(CROWD)
    ]
    deliver(harness, forged)
    result = triage(config, "once", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sum(r["state"] == "sent" for r in outbox(base)) == CROWD

    prospect = "prospect@example.test"
    deliver(harness, [(prospect, message(prospect, "Quote for 40 pallets", QUOTE))])
    assert triage(config, "once", env=env).returncode == 0
    [row] = [r for r in outbox(base) if r["recipient"] == prospect]
    assert row["state"] == "queued"
    assert row["deferrals"] >= 1
    assert str(row["error"]).startswith("deferred: 60 replies in the last hour")
    assert replies_in(harness, "prospect") == []

    # An hour passes (the sent replies' claim times move back by one hour and a minute).
    with db(base) as conn:
        conn.execute(
            "UPDATE replies SET claimed_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', claimed_at,"
            " '-61 minutes'), next_attempt = strftime('%Y-%m-%dT%H:%M:%f+00:00', next_attempt,"
            " '-61 minutes')"
        )
    assert triage(config, "once", env=env).returncode == 0
    [row] = [r for r in outbox(base) if r["recipient"] == prospect]
    assert row["state"] == "sent"
    assert len(replies_in(harness, "prospect")) == 1
