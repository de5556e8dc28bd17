"""`triage leads …`, `triage review …` and `triage digest` as a person runs them: output, exit codes
and one-line errors. The store is filled the way the pipeline fills it (see test_leads.Store)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_leads import JANE, ROOT, Store
from triage.core.models import Contact
from triage.core.settings import load_settings

CONFIG = """\
[imap]
username = "hello"
password = "pw"
security = "plain"

[store]
path = "{base}/triage.db"

[replies]
templates_dir = "{root}/templates"
from_address = "hello@example.test"
company_name = "Example Ltd"

[digest]
recipients = [{recipients}]
timezone = "Europe/Berlin"
"""


def write_config(base: Path, recipients: str = '"sales@example.test"') -> Path:
    path = base / "triage.toml"
    path.write_text(CONFIG.format(base=base, root=ROOT, recipients=recipients))
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def store(config: Path) -> Iterator[Store]:
    s = Store(load_settings(config, environ={}))
    yield s
    s.close()


def triage(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    return subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """The command failed with `code` and exactly one stderr line containing `text`."""
    assert result.returncode == code, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("triage: ") and text in result.stderr, result.stderr


def test_list_show_claim_update(config: Path, store: Store) -> None:
    """The table lists open leads; show prints contact and conversation; claim and update move
    the lead on; --json is machine-readable."""
    _, jane = store.inquiry(JANE, "Quote for 40 racks", "We need 40 racks.\nBy June.")
    _, reader = store.inquiry(Contact("", "r@agency.example"), "Brochure", decision="marketing")

    listed = triage(config, "leads", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "KIND", "STATUS", "OWNER", "AGE", "DUE", "CONTACT", "SUBJECT"]
    assert rows[0].split()[:3] == [str(jane), "hot", "new"]
    assert "Jane Doe <jane@doe.example> (Doe Logistics GmbH)" in rows[0]
    assert rows[1].split()[:3] == [str(reader), "nurture", "new"]

    shown = triage(config, "leads", "show", str(jane))
    assert shown.returncode == 0, shown.stderr
    assert f"Lead {jane}: hot, new" in shown.stdout
    assert "Phone:     +49 30 1234" in shown.stdout
    assert "    We need 40 racks.\n    By June." in shown.stdout

    claimed = triage(config, "leads", "claim", str(jane), "--by", "alice")
    assert claimed.stdout == f"lead {jane} claimed by alice\n"
    updated = triage(config, "leads", "update", str(jane), "--status", "contacted", "--note", "hi")
    assert updated.stdout == f"lead {jane} is contacted (note added)\n"

    data = json.loads(triage(config, "leads", "list", "--status", "contacted", "--json").stdout)
    assert [(d["id"], d["owner"], d["email"]) for d in data] == [(jane, "alice", JANE.email)]
    nurture = json.loads(triage(config, "leads", "list", "--kind", "nurture", "--json").stdout)
    assert [d["id"] for d in nurture] == [reader]
    detail = json.loads(triage(config, "leads", "show", str(jane), "--json").stdout)
    assert detail["notes"][0]["text"] == "hi"
    assert detail["conversation"][0]["subject"] == "Quote for 40 racks"


def test_mistakes_exit_2_with_one_line(config: Path, store: Store) -> None:
    """Unknown ids, statuses, kinds and labels, and changes the workflow forbids."""
    _, lead = store.inquiry(JANE)
    one_line_error(triage(config, "leads", "show", "99"), 2, "no lead 99")
    one_line_error(triage(config, "leads", "claim", "99", "--by", "a"), 2, "no lead 99")
    one_line_error(
        triage(config, "leads", "update", str(lead), "--status", "sold"), 2, "unknown status 'sold'"
    )
    one_line_error(
        triage(config, "leads", "update", str(lead), "--status", "won"),
        2,
        f"lead {lead} is new; it can become claimed or dismissed, not won",
    )
    one_line_error(triage(config, "leads", "list", "--status", "open"), 2, "unknown status")
    one_line_error(triage(config, "leads", "list", "--kind", "warm"), 2, "unknown kind 'warm'")
    one_line_error(triage(config, "review", "label", "99", "sales"), 2, "no message 99")
    one_line_error(triage(config, "review", "label", "1", "spam"), 2, "unknown label 'spam'")
    one_line_error(triage(config, "digest", "--send", "--status"), 2, "choose one of")


def test_assign_gives_a_lead_to_a_colleague_and_is_audited(config: Path, store: Store) -> None:
    """`leads assign ID --to NAME --by NAME` changes the owner, not the status, and the audit
    log says who did it; claims and updates from the CLI are audited too."""
    from triage.store import audit

    _, lead = store.inquiry(JANE)
    assigned = triage(config, "leads", "assign", str(lead), "--to", "bob", "--by", "alice")
    assert assigned.returncode == 0, assigned.stderr
    assert assigned.stdout == f"lead {lead} assigned to bob\n"
    moved = triage(config, "leads", "assign", str(lead), "--to", "carol", "--by", "alice")
    assert moved.stdout == f"lead {lead} assigned to carol (was bob)\n"
    triage(config, "leads", "claim", str(lead), "--by", "carol")
    triage(config, "leads", "update", str(lead), "--status", "contacted", "--by", "carol")
    entries = audit.for_target(store.db.reads, "lead", lead)
    assert [(e.actor, e.action) for e in entries] == [
        ("alice", "lead.assign"),
        ("alice", "lead.assign"),
        ("carol", "lead.claim"),
        ("carol", "lead.status"),
    ]
    assert entries[1].detail == {"to": "carol", "was_owner": "bob"}
    shown = json.loads(triage(config, "leads", "show", str(lead), "--json").stdout)
    assert (shown["status"], shown["owner"]) == ("contacted", "carol")
    one_line_error(triage(config, "leads", "assign", "99", "--to", "bob"), 2, "no lead 99")
    triage(config, "leads", "update", str(lead), "--status", "won", "--by", "carol")
    one_line_error(
        triage(config, "leads", "assign", str(lead), "--to", "bob"),
        2,
        f"lead {lead} is won, which is final",
    )


def test_export_csv_round_trips_every_field(config: Path, store: Store, tmp_path: Path) -> None:
    """`leads export --csv` is RFC 4180: commas, quotes and newlines in any value come back
    unchanged through Python's csv module, on stdout and with --output."""
    tricky = Contact('Doe, "Jane"', "jane@doe.example", "Müller & Co,\nKG", "+49 30 1", "x.example")
    _, lead = store.inquiry(tricky, 'Quote, "urgent"', 'Line one,\nline "two"\r\nthree')
    store.inquiry(Contact("Kim Park", "kim@northwind.example"), "Plain")
    triage(config, "leads", "claim", str(lead), "--by", "al, the 'best'")
    triage(config, "leads", "update", str(lead), "--note", 'call "Tue",\nmorning', "--by", "al")

    result = subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), "leads", "export", "--csv"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == 2
    row = rows[0]
    assert list(row) == [
        "id",
        "kind",
        "status",
        "first_name",
        "last_name",
        "name",
        "email",
        "company",
        "phone",
        "website",
        "owner",
        "label",
        "confidence",
        "explanation",
        "created",
        "updated",
        "due",
        "overdue",
        "claimed",
        "contacted",
        "closed",
        "messages",
        "first_subject",
        "first_message",
        "last_message_at",
        "notes",
    ]
    expected = {
        "id": str(lead),
        "kind": "hot",
        "status": "claimed",
        "first_name": '"Jane"',
        "last_name": "Doe",
        "name": 'Doe, "Jane"',
        "email": "jane@doe.example",
        "company": "Müller & Co,\nKG",
        "phone": "+49 30 1",
        "website": "x.example",
        "owner": "al, the 'best'",
        "label": "sales",
        "confidence": "0.90",
        "explanation": "quote; units",
        "messages": "1",
        "first_subject": 'Quote, "urgent"',
        "first_message": 'Line one,\nline "two"\r\nthree',
        "notes": 'al: call "Tue",\nmorning',
        "contacted": "",
        "closed": "",
    }
    assert {k: row[k] for k in expected} == expected
    assert all(row[k] for k in ("created", "updated", "due", "claimed", "last_message_at"))
    assert rows[1]["name"] == "Kim Park"

    out = tmp_path / "leads.csv"
    written = triage(config, "leads", "export", "--csv", "--output", str(out))
    assert written.returncode == 0 and "2 leads written" in written.stderr
    with out.open(encoding="utf-8", newline="") as fh:
        assert list(csv.DictReader(fh)) == rows


def test_review_list_and_label(config: Path, store: Store) -> None:
    """review list shows what waits; a sales label makes a hot lead and empties the queue."""
    row = store.message("kim@northwind.example", "Licences?", "25 licences?", decision="review")
    table = triage(config, "review", "list")
    assert table.returncode == 0
    assert "kim@northwind.example" in table.stdout and "Licences?" in table.stdout
    [item] = json.loads(triage(config, "review", "list", "--json").stdout)
    assert (item["id"], item["guess"], item["body"]) == (row, "sales", "25 licences?")

    labelled = triage(config, "review", "label", str(row), "sales", "--by", "ann")
    assert labelled.returncode == 0, labelled.stderr
    assert labelled.stdout.startswith(f"message {row} labelled sales; lead ")
    assert triage(config, "review", "list").stdout == "nothing waits for review\n"
    [lead] = json.loads(triage(config, "leads", "list", "--json").stdout)
    assert (lead["kind"], lead["email"]) == ("hot", "kim@northwind.example")
    one_line_error(
        triage(config, "review", "label", str(row), "other"), 2, "already labelled sales by ann"
    )


def test_digest_preview_prints_a_part_and_marks_nothing(config: Path, store: Store) -> None:
    """--preview prints subject and text, --html the HTML; a preview reports the same leads
    again; --send without recipients is a configuration mistake."""
    store.inquiry(JANE, "Quote for 40 racks", "We need 40 racks.")
    text = triage(config, "digest", "--preview")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("Subject: triage digest: 1 new hot leads\n\n")
    assert "NEW HOT LEADS: 1" in text.stdout and "Jane Doe, Doe Logistics GmbH" in text.stdout
    html = triage(config, "digest", "--html")
    assert html.stdout.startswith("<!DOCTYPE html>") and "Jane Doe" in html.stdout
    assert "NEW HOT LEADS: 1" in triage(config, "digest").stdout
    assert triage(config, "digest", "--status").stdout == ""

    empty = write_config(config.parent, recipients="")
    one_line_error(triage(empty, "digest", "--send"), 2, "digest.recipients is empty")
