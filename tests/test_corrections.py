"""Learning from corrections on the real Dovecot: a person moves a message between Triage
folders, the daemon records the correction, and retraining with it changes the label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import ROOT, config_for, db, triage

pytestmark = [pytest.mark.mail, pytest.mark.slow]

HELLO = "hello@example.test"
# A brochure request that mentions a move: the shipped model leans marketing, this company's
# sales team counts it as a sales lead (a boundary case where a company's own view should win).
BROCHURE = b"""From: Marie Peeters <bob@example.test>
To: hello@example.test
Subject: Brochure for our new office
Message-ID: <brochure-new-office@example.test>
Date: Mon, 23 Nov 2026 10:00:00 +0100

Could you send me the brochure for your office chairs? We move in spring.
Marie Peeters
"""


def folder_named(harness: MailHarness, *parts: str) -> str:
    """The server's name for a folder path, with its own hierarchy delimiter."""
    with harness.imap("hello") as client:
        delimiter = client.list_folders()[0][1].decode()
    return str(delimiter.join(parts))


def test_a_folder_move_is_recorded_and_retraining_learns_it(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """Moved from Triage/Marketing to Triage/Sales by a person → a correction (marketing →
    sales) in the store → `train --with-corrections` classifies the message as sales."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base, "\n[ingest]\nmove_to_folders = true\n")
    # The operator trusts marketing decisions from 0.5 on, so the message is filed, not reviewed.
    env = {"TRIAGE_CLASSIFIER__THRESHOLDS": '{"marketing": 0.5}'}
    assert triage(config, "once", env=env).returncode == 0
    raw = BROCHURE
    mail_harness.send(raw, "bob@example.test", HELLO)
    mail_harness.wait_for_messages("hello", count=1, timeout=20)
    assert triage(config, "once", env=env).returncode == 0

    marketing = folder_named(mail_harness, "Triage", "Marketing")
    sales = folder_named(mail_harness, "Triage", "Sales")
    with mail_harness.imap("hello") as client:
        client.select_folder(marketing)
        uids = client.search("ALL")
        assert len(uids) == 1, "the message was filed under Triage/Marketing"
        # Answered before it was moved, so the flag travelled with it.
        assert b"\\Answered" in client.get_flags(uids)[uids[0]]
        client.create_folder(sales)
        client.move(uids, sales)  # what a person does in their mail client

    assert triage(config, "once", env=env).returncode == 0
    with db(base) as conn:
        rows = conn.execute("SELECT old_label, new_label, source FROM corrections").fetchall()
    assert [tuple(r) for r in rows] == [("marketing", "sales", "folder")]
    # Running again does not record it twice.
    assert triage(config, "once", env=env).returncode == 0
    with db(base) as conn:
        assert conn.execute("SELECT COUNT(*) FROM corrections").fetchone()[0] == 1

    model = tmp_path / "model" / "model.skops"
    model.parent.mkdir()
    shutil.copy(ROOT / "classifiers" / "model.skops", model)
    shutil.copy(ROOT / "classifiers" / "model-card.json", model.parent / "model-card.json")
    trained = triage(
        config,
        "train",
        "--with-corrections",
        "--store",
        str(base / "triage.db"),
        "--output",
        str(model),
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr
    sample = tmp_path / "message.eml"
    sample.write_bytes(raw)
    result = triage(config, "classify", "--json", "--model", str(model), str(sample))
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout.strip().splitlines()[0])
    assert verdict["label"] == "sales", (verdict, trained.stdout[-1500:])


def test_a_keyword_change_is_recorded_once_and_the_old_keyword_goes(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """A person gives a message `$Triage-Sales` in their client (it had `$Triage-Marketing`):
    one correction (marketing → sales, source keyword), and only the person's keyword remains."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    env = {"TRIAGE_CLASSIFIER__THRESHOLDS": '{"marketing": 0.5}'}
    assert triage(config, "once", env=env).returncode == 0
    mail_harness.send(BROCHURE, "bob@example.test", HELLO)
    mail_harness.wait_for_messages("hello", count=1, timeout=20)
    assert triage(config, "once", env=env).returncode == 0
    with mail_harness.imap("hello") as client:
        client.select_folder("INBOX")
        uids = client.search(["KEYWORD", "$Triage-Marketing"])
        assert len(uids) == 1
        client.add_flags(uids, ["$Triage-Sales"])

    for _run in range(2):
        assert triage(config, "once", env=env).returncode == 0
    with db(base) as conn:
        rows = conn.execute("SELECT old_label, new_label, source FROM corrections").fetchall()
    assert [tuple(r) for r in rows] == [("marketing", "sales", "keyword")]
    with mail_harness.imap("hello") as client:
        client.select_folder("INBOX", readonly=True)
        flags = next(iter(client.get_flags(client.search("ALL")).values()))
    assert b"$Triage-Sales" in flags and b"$Triage-Marketing" not in flags


# No label is sure enough: every message waits for a person.
FORCE_REVIEW = {"TRIAGE_CLASSIFIER__THRESHOLDS": '{"sales": 1.0, "marketing": 1.0, "other": 1.0}'}
STAFF = '\n[leads]\nstaff = ["ann", "ben"]\nassignment = "round-robin"\n'


@pytest.mark.parametrize("how", ["folder", "keyword"])
def test_a_review_item_relabelled_sales_in_the_mailbox_becomes_a_hot_lead(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, how: str
) -> None:
    """A message waiting for review that a person moves to Triage/Sales (or gives
    `$Triage-Sales`) in their mail client leaves the review queue AND becomes a hot lead on the
    next pass — owner assigned, due time set — exactly as `triage review label … sales` would."""
    base = tmp_path / "triage"
    extra = STAFF + ("\n[ingest]\nmove_to_folders = true\n" if how == "folder" else "")
    config = config_for(mail_harness, base, extra)
    assert triage(config, "once", env=FORCE_REVIEW).returncode == 0
    mail_harness.send(BROCHURE, "bob@example.test", HELLO)
    mail_harness.wait_for_messages("hello", count=1, timeout=20)
    assert triage(config, "once", env=FORCE_REVIEW).returncode == 0
    with db(base) as conn:
        [row] = conn.execute("SELECT decision FROM messages").fetchall()
        assert row["decision"] == "review"
        assert conn.execute("SELECT COUNT(*) FROM leads").fetchone()[0] == 0

    with mail_harness.imap("hello") as client:
        if how == "folder":
            client.select_folder(folder_named(mail_harness, "Triage", "Review"))
            uids = client.search("ALL")
            assert len(uids) == 1, "the message was filed under Triage/Review"
            sales = folder_named(mail_harness, "Triage", "Sales")
            client.create_folder(sales)
            client.move(uids, sales)
        else:
            client.select_folder("INBOX")
            uids = client.search(["KEYWORD", "$Triage-Review"])
            assert len(uids) == 1
            client.add_flags(uids, ["$Triage-Sales"])

    for _run in range(2):  # the second pass changes nothing
        assert triage(config, "once", env=FORCE_REVIEW).returncode == 0
    with db(base) as conn:
        corrections = conn.execute("SELECT old_label, new_label, source FROM corrections")
        assert [tuple(r) for r in corrections] == [("review", "sales", how)]
        message = conn.execute("SELECT id, reviewed_label FROM messages").fetchone()
        assert message["reviewed_label"] == "sales"
        leads = conn.execute(
            "SELECT l.*, lm.message_row FROM leads l JOIN lead_messages lm ON lm.lead_id = l.id"
        ).fetchall()
    assert len(leads) == 1, "one hot lead, made once"
    [lead] = leads
    assert lead["kind"] == "hot" and lead["status"] == "new"
    assert lead["message_row"] == message["id"]
    assert lead["email"] == "bob@example.test"
    assert lead["owner"] == "ann"
    assert lead["due_at"], "a hot lead has a response target"
    assert lead["label"] == "sales" and lead["confidence"] == 1.0
    assert f"labelled sales in the mailbox ({how})" in json.loads(lead["explanation"])
    assert triage(config, "review", "list").stdout == "nothing waits for review\n"


@pytest.mark.mail
def test_an_unchanged_folder_is_not_scanned_again(
    clean_mail: MailHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corrections scan asks one STATUS (CONDSTORE's HIGHESTMODSEQ) per folder and looks
    again only when something changed since its last look on this connection: a new message,
    or a keyword a person set."""
    from triage.core.labels import keyword_for
    from triage.core.settings import load_settings
    from triage.ingest.corrections import CorrectionScan
    from triage.ingest.mailbox import ImapMailbox
    from triage.store.db import Database

    settings = load_settings(config_for(clean_mail, tmp_path), environ={})
    mailbox = ImapMailbox(settings.imap.all_accounts()[0])
    mailbox.connect()
    db = Database(settings.store)
    scan = CorrectionScan(mailbox, db, settings)
    looked: list[str] = []
    real = scan._scan_keywords

    def counting(folder: str) -> int:
        looked.append(folder)
        return real(folder)

    monkeypatch.setattr(scan, "_scan_keywords", counting)
    try:
        scan.scan(["INBOX"])
        scan.scan(["INBOX"])
        assert looked == ["INBOX"]  # the second pass: one STATUS, nothing changed
        clean_mail.send(b"Subject: hi\r\n\r\nhello\r\n", "alice@example.test", "hello@example.test")
        clean_mail.wait_for_messages("hello")
        scan.scan(["INBOX"])
        assert looked == ["INBOX", "INBOX"]
        with clean_mail.imap("hello") as client:
            client.select_folder("INBOX")
            client.add_flags(client.search("ALL"), [keyword_for("sales").encode()])
        scan.scan(["INBOX"])
        scan.scan(["INBOX"])
        assert looked == ["INBOX", "INBOX", "INBOX"]
    finally:
        mailbox.close()
        db.close()
