"""`triage outbox list` and `triage outbox resolve` as an operator runs them: what waits or is in
doubt, and a person's decision on an uncertain reply or digest, recorded with who and when."""

from __future__ import annotations

import json
from pathlib import Path

from devtools.demo import store_toml
from tests.test_leads_cli import one_line_error, triage, write_config
from tests.test_outbox import Clock, Connector, enqueue, outbox
from triage.act.smtp import AmbiguousDeliveryError
from triage.core.settings import StoreSettings
from triage.store.db import Database


def uncertain_replies(db: Database, count: int) -> list[int]:
    """Queue `count` replies and lose the connection at each final dot: all uncertain."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    ids = [enqueue(box, n, f"p{n}@client.example") for n in range(1, count + 1)]
    connector.session.fail["commit"] = AmbiguousDeliveryError("connection reset after the dot")
    for _ in ids:
        box.deliver_due()
    assert [i.id for i in box.in_state("uncertain")] == ids
    return ids


def test_resolve_sent_settles_an_uncertain_reply(tmp_path: Path) -> None:
    """`list` shows the uncertain reply with its error; `resolve reply:N sent` marks it sent,
    records who and when, and hands it to filing (copy in Sent, original \\Answered)."""
    config = write_config(tmp_path)
    db = Database(tmp_path / "triage.db")
    [row_id] = uncertain_replies(db, 1)

    listed = triage(config, "outbox", "list")
    assert listed.returncode == 0, listed.stderr
    [header, line] = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "STATE", "TRIES", "AGE"]
    assert line.split()[:3] == [f"reply:{row_id}", "uncertain", "1"]
    assert "p1@client.example" in line and "connection reset after the dot" in line

    done = triage(config, "outbox", "resolve", f"reply:{row_id}", "sent", "--by", "ops")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"reply:{row_id} resolved: sent (by ops)"
    row = db.reads.execute(
        "SELECT state, resolution, resolved_by, resolved_at, sent_at FROM replies WHERE id = ?",
        (row_id,),
    ).fetchone()
    assert tuple(row)[:3] == ("sent", "sent", "ops")
    assert row["resolved_at"] is not None and row["sent_at"] is not None
    from triage.act.outbox import Outbox
    from triage.core.settings import SmtpSettings

    assert [i.id for i in Outbox(db, SmtpSettings()).pending_filing()] == [row_id]
    assert triage(config, "outbox", "list").stdout.strip() == "nothing in the outbox"
    db.close()


def test_resend_queues_again_and_drop_gives_up(tmp_path: Path) -> None:
    """`resend` puts the reply back in the queue, due now; `drop` fails it for good with who
    dropped it; `--state` and `--json` filter and describe the rows."""
    config = write_config(tmp_path)
    db = Database(tmp_path / "triage.db")
    first, second = uncertain_replies(db, 2)
    assert triage(config, "outbox", "resolve", str(first), "resend", "--by", "ops").returncode == 0
    assert (
        triage(config, "outbox", "resolve", f"reply:{second}", "drop", "--by", "ana").returncode
        == 0
    )

    queued = triage(config, "outbox", "list", "--state", "queued", "--json")
    assert queued.returncode == 0, queued.stderr
    [item] = json.loads(queued.stdout)
    # Queued afresh: no decision pending on it any more; the request stays readable as a note.
    assert (item["id"], item["state"], item["resolution"], item["resolved_by"]) == (
        f"reply:{first}",
        "queued",
        None,
        None,
    )
    assert item["error"].startswith("resend requested by ops at ")
    assert item["age"][:-1].isdigit() and item["age"][-1] in "mhd"
    failed = json.loads(triage(config, "outbox", "list", "-s", "failed", "--json").stdout)
    assert [(f["id"], f["error"]) for f in failed] == [(f"reply:{second}", "dropped by ana")]
    db.close()


def test_resolve_refuses_what_is_not_uncertain(tmp_path: Path) -> None:
    """Only an uncertain mail can be resolved; wrong ids and decisions are one-line errors."""
    config = write_config(tmp_path)
    db = Database(tmp_path / "triage.db")
    [row_id] = uncertain_replies(db, 1)
    assert triage(config, "outbox", "resolve", f"reply:{row_id}", "sent").returncode == 0
    again = triage(config, "outbox", "resolve", f"reply:{row_id}", "resend")
    one_line_error(again, 2, f"reply:{row_id} is sent, not uncertain")
    one_line_error(triage(config, "outbox", "resolve", "reply:99", "sent"), 2, "no reply 99")
    one_line_error(triage(config, "outbox", "resolve", "digest:1", "sent"), 2, "no digest 1")
    one_line_error(triage(config, "outbox", "resolve", "x:1", "sent"), 2, "is not a mail id")
    # Digits int() or SQLite cannot take: one line and exit 2, not a traceback.
    for odd in ("reply:²", "reply:١٢", "reply:99999999999999999999", "digest:-1", "reply:"):
        one_line_error(triage(config, "outbox", "resolve", odd, "sent"), 2, "is not a mail id")
    one_line_error(
        triage(config, "outbox", "resolve", str(row_id), "maybe"), 2, "unknown decision 'maybe'"
    )
    one_line_error(triage(config, "outbox", "list", "-s", "lost"), 2, "unknown state 'lost'")
    db.close()


def test_an_uncertain_digest_is_resolved_like_a_reply(tmp_path: Path) -> None:
    """Digests and alerts share the queue: `list` shows an uncertain digest with its recipients,
    `resolve digest:N resend` queues it again; the id's kind must match the row's."""
    from datetime import UTC, datetime

    from triage.store import outbox as queue
    from triage.store.digests import insert

    config = write_config(tmp_path)
    db = Database(tmp_path / "triage.db")
    now = datetime.now(UTC)
    with db.transaction() as tx:
        row_id = insert(
            tx,
            kind="digest",
            slot="s1",
            message_id="<d1@example.test>",
            raw=b"Subject: digest\r\n\r\nhi\r\n",
            recipients=["sales@example.test", "boss@example.test"],
            envelope_from="hello@example.test",
            now=now,
        )
        mine = queue.claim(tx, "digests", row_id, now, 0)
        assert mine is not None
        queue.mark_uncertain(tx, "digests", row_id, mine, "connection reset after the dot")
    listed = json.loads(triage(config, "outbox", "list", "--json").stdout)
    assert [(e["id"], e["state"], e["recipients"]) for e in listed] == [
        (f"digest:{row_id}", "uncertain", "sales@example.test, boss@example.test")
    ]
    one_line_error(
        triage(config, "outbox", "resolve", f"alert:{row_id}", "resend"), 2, f"no alert {row_id}"
    )
    done = triage(config, "outbox", "resolve", f"digest:{row_id}", "resend", "--by", "ops")
    assert done.returncode == 0, done.stderr
    row = db.reads.execute(
        "SELECT state, resolution, resolved_by, error FROM digests WHERE id = ?", (row_id,)
    ).fetchone()
    assert tuple(row)[:3] == ("queued", None, None)
    assert row["error"].startswith("resend requested by ops")
    db.close()


def test_a_missing_store_is_an_error_not_an_empty_outbox(tmp_path: Path) -> None:
    """With a wrong store.path, `outbox list` says so in one line instead of creating an empty
    store and reporting that nothing waits."""
    config = write_config(tmp_path)
    one_line_error(triage(config, "outbox", "list"), 2, "no store at")
    assert not (tmp_path / "triage.db").exists()


def test_a_server_store_is_never_missing(store: StoreSettings, tmp_path: Path) -> None:
    """The missing-file check is SQLite's: with `[store] url` there is no file to look for, and
    `outbox list` reads the database (migrating an empty one) instead of refusing."""
    config = tmp_path / "triage.toml"
    config.write_text('[imap]\nusername = "hello"\npassword = "pw"\n' + store_toml(store))
    listed = triage(config, "outbox", "list")
    if store.is_postgresql:
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip() == "nothing in the outbox"
    else:
        one_line_error(listed, 2, "no store at")
