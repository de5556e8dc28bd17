"""The mail harness itself: real Dovecot and Postfix on loopback behave as other tests assume."""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import time
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from imapclient.exceptions import LoginError
from imapclient.imapclient import DRAFTS, JUNK, SENT, TRASH

from devtools.mailharness import HarnessError, MailHarness, main

pytestmark = pytest.mark.mail


def inquiry(sender: str, to: str, subject: str, body: str = "Hello there.\n") -> EmailMessage:
    """A minimal text message."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def fetch_all(harness: MailHarness, user: str, folder: str = "INBOX") -> list[EmailMessage]:
    """Every message in a folder of `user`, parsed, in UID order."""
    with harness.imap(user) as client:
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
    out = []
    for uid in sorted(fetched):
        msg = message_from_bytes(fetched[uid][b"BODY[]"], policy=policy.default)
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


def test_smtp_delivery_is_read_back_over_plain_imap(clean_mail: MailHarness) -> None:
    """A message sent over SMTP to hello@ arrives in hello's INBOX through Postfix and LMTP,
    with the headers Dovecot's LMTP delivery adds (Return-Path, Delivered-To)."""
    harness = clean_mail
    alice, hello = harness.address("alice"), harness.address("hello")
    refused = harness.send(inquiry(alice, hello, "Quote for 12 pallets", "Price?\n"), alice, hello)
    assert refused == {}
    harness.wait_for_messages("hello", count=1, timeout=10)
    [got] = fetch_all(harness, "hello")
    assert got["Subject"] == "Quote for 12 pallets"
    assert got["Return-Path"] == f"<{alice}>"
    assert got["Delivered-To"] == hello
    body = got.get_body()
    assert body is not None
    assert body.get_content().splitlines() == ["Price?"]


def test_imaps_verifies_the_server_against_the_harness_ca(clean_mail: MailHarness) -> None:
    """IMAPS with a verifying context that trusts only ca.pem (hostname 127.0.0.1 checked
    against the certificate's IP SAN) logs in and reads raw bytes sent by SMTP unchanged."""
    harness = clean_mail
    context = ssl.create_default_context(cafile=str(harness.ca_file))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    raw = (
        b"From: bob@example.test\r\nTo: other@example.test\r\nSubject: over TLS\r\n"
        b"Message-ID: <tls-1@example.test>\r\n\r\nread me over IMAPS\r\n"
    )
    harness.send(raw, harness.address("bob"), [harness.address("other")])
    [uid] = harness.wait_for_messages("other")
    with harness.imap("other", tls=True) as client:
        assert client.ssl
        client.select_folder("INBOX", readonly=True)
        data = client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    assert b"\r\nMessage-ID: <tls-1@example.test>\r\n" in data
    assert data.endswith(b"\r\n\r\nread me over IMAPS\r\n")


def test_imaps_is_not_trusted_without_the_harness_ca(mail_harness: MailHarness) -> None:
    """The certificate is self-signed by the harness CA: the system trust store rejects it, so
    a passing IMAPS test really verified something."""
    cfg = mail_harness.config
    context = ssl.create_default_context()
    with (
        socket.create_connection((cfg.host, cfg.imaps_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
        context.wrap_socket(raw, server_hostname=cfg.host),
    ):
        pass


def test_special_use_folders_are_listed_and_subscribed(clean_mail: MailHarness) -> None:
    """Every user has Sent, Drafts, Junk and Trash, found by their RFC 6154 flags in LIST and
    subscribed (so clients that show subscribed folders see them)."""
    with clean_mail.imap("sales") as client:
        found = {flag: client.find_special_folder(flag) for flag in (SENT, DRAFTS, JUNK, TRASH)}
        subscribed = {name for _flags, _delim, name in client.list_sub_folders()}
    assert found == {SENT: "Sent", DRAFTS: "Drafts", JUNK: "Junk", TRASH: "Trash"}
    assert {"Sent", "Drafts", "Junk", "Trash", "INBOX"} <= subscribed


def test_outside_domains_are_refused_never_relayed(clean_mail: MailHarness) -> None:
    """Postfix refuses any domain but example.test at RCPT TO (even from loopback), delivers
    the local recipients of the same message, and keeps nothing queued for outside."""
    harness = clean_mail
    hello = harness.address("hello")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused_all:
        harness.send(inquiry(hello, "x@example.com", "out"), hello, ["x@example.com"])
    code, reason = refused_all.value.recipients["x@example.com"]
    assert code == 554
    assert b"Relay access denied" in reason

    mixed = ["someone@elsewhere.invalid", harness.address("carol")]
    refused = harness.send(inquiry(hello, ", ".join(mixed), "mixed"), hello, mixed)
    assert list(refused) == ["someone@elsewhere.invalid"]
    harness.wait_for_messages("carol", count=1)
    deadline = time.monotonic() + 5
    while harness.mail_queue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert harness.mail_queue() == []


def test_unknown_local_user_is_refused(clean_mail: MailHarness) -> None:
    """A recipient in the harness domain that is not a harness user is refused at RCPT TO."""
    hello = clean_mail.address("hello")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        clean_mail.send(inquiry(hello, "nobody@example.test", "?"), hello, "nobody@example.test")
    assert refused.value.recipients["nobody@example.test"][0] == 550


def test_wrong_password_fails_fast(mail_harness: MailHarness) -> None:
    """A wrong IMAP password is refused quickly, every time: no 2 s auth_failure_delay and no
    penalty growing with repeated failures (Dovecot 2.3.19 still answers after ~0.5 s); the
    right password works afterwards."""
    from imapclient import IMAPClient

    cfg = mail_harness.config
    for _ in range(3):
        client = IMAPClient(cfg.host, port=cfg.imap_port, ssl=False, timeout=5)
        try:
            began = time.monotonic()
            with pytest.raises(LoginError):
                client.login("hello", "not-the-password")
            assert time.monotonic() - began < 1.0
        finally:
            client.logout()
    with mail_harness.imap("hello") as client:
        assert client.noop()


def test_submission_requires_starttls_then_auth(mail_harness: MailHarness) -> None:
    """The submission port offers AUTH only after STARTTLS (verified against the harness CA),
    takes Dovecot's users, refuses a wrong password quickly (smtplib tries PLAIN, then LOGIN)
    and refuses recipients to a client that has not logged in."""
    harness = mail_harness
    cfg = harness.config
    hello = harness.address("hello")
    with smtplib.SMTP(cfg.host, cfg.submission_port, timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        smtp.starttls(context=harness.ssl_context())
        smtp.ehlo()
        assert smtp.has_extn("auth")
        assert smtp.login("hello", harness.password("hello"))[0] == 235
        assert smtp.sendmail(hello, [hello], b"Subject: submitted\r\n\r\nhi\r\n") == {}
    with smtplib.SMTP(cfg.host, cfg.submission_port, timeout=10) as smtp:
        smtp.starttls(context=harness.ssl_context())
        began = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("hello", "wrong")
        assert time.monotonic() - began < 2.0
    with smtplib.SMTP(cfg.host, cfg.submission_port, timeout=10) as smtp:
        smtp.starttls(context=harness.ssl_context())
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail(hello, [hello], b"Subject: anonymous\r\n\r\nhi\r\n")


def test_inbound_port_offers_starttls_but_no_auth(mail_harness: MailHarness) -> None:
    """The inbound port (port 25's role) offers STARTTLS with the harness certificate and no
    SMTP AUTH: nothing there depends on Dovecot's auth socket."""
    harness = mail_harness
    cfg = harness.config
    with smtplib.SMTP(cfg.host, cfg.smtp_port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        smtp.starttls(context=harness.ssl_context())
        smtp.ehlo()
        assert not smtp.has_extn("auth")


def test_keywords_are_stored(clean_mail: MailHarness) -> None:
    """Custom IMAP keywords (how triage marks processed mail) are kept by the maildir."""
    harness = clean_mail
    hello = harness.address("hello")
    harness.send(inquiry(hello, hello, "flag me"), hello, hello)
    [uid] = harness.wait_for_messages("hello")
    with harness.imap("hello") as client:
        client.select_folder("INBOX")
        client.add_flags([uid], [b"$TriageDone"])
    with harness.imap("hello") as client:
        client.select_folder("INBOX", readonly=True)
        assert b"$TriageDone" in client.get_flags([uid])[uid]
        assert client.search(["KEYWORD", "$TriageDone"]) == [uid]


def test_clear_mailbox_empties_folders_and_removes_created_ones(clean_mail: MailHarness) -> None:
    """clear_mailbox leaves INBOX and the special-use folders empty and deletes user folders,
    nested ones included."""
    harness = clean_mail
    bob = harness.address("bob")
    harness.send(inquiry(bob, bob, "in inbox"), bob, bob)
    harness.wait_for_messages("bob")
    with harness.imap("bob") as client:
        sep = client.namespace().personal[0][1]
        nested = f"Projects{sep}2026"
        client.create_folder("Projects")
        client.create_folder(nested)
        client.subscribe_folder(nested)
        for folder in ("Sent", nested):
            client.append(folder, b"Subject: kept?\r\n\r\nno\r\n")
    harness.clear_mailbox("bob")
    with harness.imap("bob") as client:
        names = {name for _flags, _delim, name in client.list_folders()}
        subscribed = {name for _flags, _delim, name in client.list_sub_folders()}
        counts = {n: client.folder_status(n, [b"MESSAGES"])[b"MESSAGES"] for n in names}
    assert names == {"INBOX", "Sent", "Drafts", "Junk", "Trash"}
    assert subscribed == names
    assert set(counts.values()) == {0}


def test_delivery_waits_out_a_dovecot_outage(clean_mail: MailHarness) -> None:
    """With Dovecot stopped, open IMAP sessions drop and Postfix still accepts mail and defers
    it; once Dovecot is back and the queue is flushed, the message arrives."""
    harness = clean_mail
    alice, hello = harness.address("alice"), harness.address("hello")
    client = harness.imap("hello")
    try:
        harness.stop_dovecot()
        with pytest.raises((OSError, client.AbortError)):
            client.noop()
        harness.send(inquiry(alice, hello, "during outage"), alice, hello)
        deadline = time.monotonic() + 5
        while not any(q["recipients"][0].get("delay_reason") for q in harness.mail_queue()):
            assert time.monotonic() < deadline, harness.mail_queue()
            time.sleep(0.05)
    finally:
        client.shutdown()
        harness.start_dovecot()
    harness.flush_queue()
    harness.wait_for_messages("hello", count=1, timeout=10)
    assert harness.mail_queue() == []


def test_postfix_started_during_a_dovecot_outage_still_accepts_inbound_mail(
    clean_mail: MailHarness,
) -> None:
    """Every smtpd process is new (Postfix restarted while Dovecot is stopped): the inbound port
    still greets, accepts and queues the message, because it does not depend on Dovecot's auth
    socket; the message arrives once Dovecot is back."""
    harness = clean_mail
    alice, hello = harness.address("alice"), harness.address("hello")
    harness.stop_dovecot()
    try:
        harness.stop_postfix()
        harness.start_postfix()
        for n in range(3):
            assert harness.send(inquiry(alice, hello, f"outage {n}"), alice, hello) == {}
    finally:
        harness.start_dovecot()
    # A delivery begun before Dovecot was back may still be failing when the first flush comes
    # ("skipped, still being delivered"); on a loaded machine its retry can then wait for the
    # next queue run after Postfix's backoff, so ask again until everything arrived.
    deadline = time.monotonic() + 30
    while True:
        harness.flush_queue()
        try:
            harness.wait_for_messages("hello", count=3, timeout=3)
            break
        except HarnessError:
            if time.monotonic() > deadline:
                raise


def test_postfix_outage_refuses_connections(clean_mail: MailHarness) -> None:
    """stop_postfix closes the SMTP port; start_postfix brings it back and mail flows."""
    harness = clean_mail
    hello = harness.address("hello")
    harness.stop_postfix()
    try:
        assert not harness.is_running()
        with pytest.raises(ConnectionRefusedError):
            harness.send(inquiry(hello, hello, "lost"), hello, hello)
    finally:
        harness.start_postfix()
    assert harness.is_running()
    harness.send(inquiry(hello, hello, "back"), hello, hello)
    harness.wait_for_messages("hello", count=1)


def test_restart_dovecot_keeps_mail(clean_mail: MailHarness) -> None:
    """restart_dovecot drops clients but not stored mail; new logins see it."""
    harness = clean_mail
    sales = harness.address("sales")
    harness.send(inquiry(sales, sales, "persist"), sales, sales)
    harness.wait_for_messages("sales")
    harness.restart_dovecot()
    assert [m["Subject"] for m in fetch_all(harness, "sales")] == ["persist"]


def test_start_is_idempotent_and_status_reports(
    mail_harness: MailHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second start() is a no-op; the CLI's status reads the saved config of the folder."""
    pids = (mail_harness.dovecot_pid(), mail_harness.postfix_pid())
    mail_harness.start()
    assert (mail_harness.dovecot_pid(), mail_harness.postfix_pid()) == pids
    assert main(["status", "--dir", str(mail_harness.base_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ports"]["imap"] == mail_harness.config.imap_port
    assert info["users"]["hello@example.test"] == "pw-hello"
    assert info["ca_file"] == str(mail_harness.ca_file)


def test_unknown_user_is_a_harness_error(mail_harness: MailHarness) -> None:
    """Asking for a user the harness does not have fails with a clear HarnessError."""
    with pytest.raises(HarnessError, match="unknown harness user 'zoe'"):
        mail_harness.address("zoe")
