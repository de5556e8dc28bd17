"""The lead workflow teaches the model: won/lost confirm a lead's label, dismissed as not a lead
and `leads relabel` correct it; each becomes a weighted correction, listed by `triage corrections
list` and weighted by training."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from devtools.demo import store_toml
from tests.stores import open_store, store_settings
from tests.test_leads import JANE, Store
from tests.test_leads_cli import write_config
from tests.test_model_cli import corpus  # noqa: F401  # the module-scoped fixture
from triage.cli.main import app
from triage.core.models import Contact
from triage.core.settings import load_settings
from triage.sales.leads import LeadError, claim, update
from triage.store.corrections import CORRECTION_WEIGHTS, PERSON_WEIGHT
from triage.store.db import Database
from triage.store.schema import MIGRATIONS
from triage.training import learn
from triage.training.corpus import Corpus, load_corpus, load_corrections

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

ACME = Contact("Ann Acme", "ann@acme.example", "Acme", "", "")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """test_leads_cli's configuration, its store on the test's backend."""
    path = write_config(tmp_path)
    sqlite = f'[store]\npath = "{tmp_path}/triage.db"\n'
    store = store_toml(store_settings(tmp_path / "triage.db"))
    path.write_text(path.read_text().replace(sqlite, store))
    return path


@pytest.fixture
def store(config: Path) -> Iterator[Store]:
    s = Store(load_settings(config, environ={}))
    yield s
    s.close()


@pytest.fixture
def runner() -> Iterator[CliRunner]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


def run(runner: CliRunner, config: Path, *args: str) -> Result:
    return runner.invoke(app, ["--config", str(config), *args])


def listed(runner: CliRunner, config: Path) -> list[dict[str, object]]:
    result = run(runner, config, "corrections", "list", "--json")
    assert result.exit_code == 0, result.output
    data: list[dict[str, object]] = json.loads(result.stdout)
    return data


def close(store: Store, lead_id: int, status: str) -> None:
    claim(store.db, lead_id, "al")
    update(store.db, lead_id, status="contacted")
    update(store.db, lead_id, status=status)


def test_the_weight_table_has_every_source_and_confirmations_count_less() -> None:
    assert set(CORRECTION_WEIGHTS) == {
        "review",
        "folder",
        "keyword",
        "relabel",
        "not-a-lead",
        "won",
        "lost",
    }
    assert CORRECTION_WEIGHTS["won"] == CORRECTION_WEIGHTS["lost"] == 1.0
    assert CORRECTION_WEIGHTS["relabel"] == CORRECTION_WEIGHTS["review"] == PERSON_WEIGHT


def test_won_and_lost_leads_confirm_their_label_with_a_low_weight(
    runner: CliRunner, config: Path, store: Store
) -> None:
    row, hot = store.inquiry(JANE, "Quote for 40 pumps", message_id="<hot@doe.example>")
    nurture_row, nurture = store.inquiry(
        ACME, "Your brochure?", "Send me a brochure.", decision="marketing"
    )
    close(store, hot, "won")
    close(store, nurture, "lost")
    found = listed(runner, config)
    assert [(c["message_id"], c["old_label"], c["new_label"], c["source"]) for c in found] == [
        (f"<m{nurture_row}@prospect.example>", "marketing", "marketing", "lost"),
        ("<hot@doe.example>", "sales", "sales", "won"),
    ]
    assert [c["weight"] for c in found] == [1.0, 1.0]
    assert found[1]["message_row"] == row and found[1]["subject"] == "Quote for 40 pumps"
    table = run(runner, config, "corrections", "list", "--limit", "1")
    assert table.exit_code == 0, table.output
    assert "marketing -> marketing" in table.stdout and "lost" in table.stdout
    assert len(table.stdout.splitlines()) == 2  # the header and one correction
    assert "won" not in table.stdout


def test_dismissed_not_a_lead_becomes_an_other_correction_in_the_same_change(
    runner: CliRunner, config: Path, store: Store
) -> None:
    _row, lead_id = store.inquiry(JANE, "Partnership?", "We sell SEO services.")
    result = run(
        runner, config, "leads", "update", str(lead_id), "--status", "dismissed", "--not-a-lead"
    )
    assert result.exit_code == 0, result.output
    assert f"lead {lead_id} is dismissed" in result.stdout
    assert "1 correction(s) recorded: other (not-a-lead, weight 8)" in result.stdout
    [found] = listed(runner, config)
    assert (found["old_label"], found["new_label"], found["source"], found["weight"]) == (
        "sales",
        "other",
        "not-a-lead",
        PERSON_WEIGHT,
    )
    # The ledger keeps the model's decision: the mailbox keyword scan must not take the
    # difference for a new correction back to sales.
    decision = store.db.reads.execute("SELECT decision, reviewed_label FROM messages").fetchone()
    assert tuple(decision) == ("sales", None)


def test_not_a_lead_needs_dismissed_and_a_refused_change_records_nothing(
    runner: CliRunner, config: Path, store: Store
) -> None:
    _row, lead_id = store.inquiry(JANE)
    result = run(runner, config, "leads", "update", str(lead_id), "--status", "won", "--not-a-lead")
    assert result.exit_code == 2
    assert "--not-a-lead goes with --status dismissed" in result.output
    with pytest.raises(LeadError, match="claim it first"):
        update(store.db, lead_id, status="won")
    assert listed(runner, config) == []


def test_relabel_records_the_right_label_and_a_note(
    runner: CliRunner, config: Path, store: Store
) -> None:
    _row, lead_id = store.inquiry(JANE, "Catalogue", "Just browsing, send a catalogue.")
    result = run(runner, config, "leads", "relabel", str(lead_id), "marketing", "--by", "al")
    assert result.exit_code == 0, result.output
    assert "1 correction(s) recorded: marketing (relabel, weight 8)" in result.stdout
    [found] = listed(runner, config)
    assert (found["new_label"], found["source"], found["weight"]) == ("marketing", "relabel", 8.0)
    shown = run(runner, config, "leads", "show", str(lead_id), "--json")
    notes = json.loads(shown.stdout)["notes"]
    assert notes[0]["author"] == "al" and "relabelled marketing" in notes[0]["text"]
    again = run(runner, config, "leads", "relabel", str(lead_id), "sales")
    assert again.exit_code == 2 and "already labelled sales" in again.output


def test_a_lead_whose_message_kept_no_text_still_closes(store: Store) -> None:
    """Retention removed the text: the lead is closed won all the same, and the command says
    which message taught nothing."""
    _row, lead_id = store.inquiry(JANE, "Quote please", "")
    with store.db.transaction() as c:
        c.execute("UPDATE messages SET body = NULL, raw = NULL")
    claim(store.db, lead_id, "al")
    update(store.db, lead_id, status="contacted")
    done = update(store.db, lead_id, status="won")
    assert done.lead.status == "won"
    assert done.corrections is not None and done.corrections.added == 0
    assert done.corrections.skipped and "no text left" in done.corrections.skipped[0]
    _row, other = store.inquiry(ACME, "Hello", "Is this the sales team?")
    with store.db.transaction() as c:
        c.execute("UPDATE messages SET message_id = '' WHERE id = ?", (_row,))
    dismissed = update(store.db, other, status="dismissed", not_a_lead=True)
    assert dismissed.lead.status == "dismissed"
    assert dismissed.corrections is not None and dismissed.corrections.added == 0
    assert dismissed.corrections.skipped == (f"message {_row} has no Message-ID",)


@pytest.mark.sqlite_only  # a file written by schema 4
def test_the_migration_weighs_older_corrections_as_a_persons(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 4")
    conn.execute(
        "INSERT INTO corrections (message_id, new_label, source, created_at)"
        " VALUES ('<a@b>', 'sales', 'folder', '2024-01-01T00:00:00+00:00')"
    )
    conn.commit()
    conn.close()
    db = Database(path)
    try:
        assert db.schema_version == len(MIGRATIONS)
        row = db.reads.execute("SELECT weight FROM corrections").fetchone()
        assert row[0] == PERSON_WEIGHT
    finally:
        db.close()


def test_training_weighs_each_correction_by_its_source(
    corpus: Path,  # noqa: F811
    store: Store,
) -> None:
    """load_corrections gives each example its stored weight, and the fit uses it: the same
    correction moves the model further at a person's weight than as a confirmation."""
    raw = (corpus / "other30.eml").read_bytes()
    for source in ("won", "review"):
        with store.db.transaction() as c:
            c.execute("DELETE FROM corrections")
            c.execute(
                "INSERT INTO corrections (message_id, new_label, source, weight, raw, created_at)"
                " VALUES ('<other30@client.example>', 'sales', ?, ?, ?, '2024-01-01')",
                (source, CORRECTION_WEIGHTS[source], raw),
            )
        loaded = load_corrections(store.settings.store)
        assert loaded.weights == [CORRECTION_WEIGHTS[source]]
    base = load_corpus(corpus)
    probabilities = {}
    for weight in (1.0, 8.0):
        corrected = load_corrections(store.settings.store)
        weighted = Corpus(tuple(replace(e, weight=weight) for e in corrected.examples))
        model = learn.fit(base.with_corrections(weighted))
        column = list(model.classes_).index("sales")
        probabilities[weight] = model.predict_proba([weighted.examples[0].message])[0][column]
    assert probabilities[8.0] > probabilities[1.0]


def test_closing_a_relabelled_lead_does_not_undo_the_persons_label(
    config: Path, store: Store
) -> None:
    """A lead relabelled marketing, then closed lost: training still learns marketing. The
    close only confirms the model's label (weight 1); it must not become the message's latest
    correction over a person's (training keeps the latest per Message-ID)."""
    from triage.sales.leads import relabel

    _row, lead_id = store.inquiry(JANE, "Brochure please", message_id="<relabel@doe.example>")
    relabel(store.db, lead_id, "marketing", by="al")
    close(store, lead_id, "lost")
    labels = {
        e.message.message_id: (e.label, e.weight)
        for e in load_corrections(store.settings.store).examples
    }
    assert labels["<relabel@doe.example>"] == ("marketing", PERSON_WEIGHT)


def test_a_label_given_again_after_another_becomes_the_latest_again(tmp_path: Path) -> None:
    """sales, then marketing, then sales again (folder moves back and forth): training keeps the
    latest correction of a message, and that is sales, not the marketing in between. Giving the
    latest label once more records nothing."""
    from triage.store.corrections import insert_correction, read_corrections
    from triage.training.corpus import load_corrections

    path = store_settings(tmp_path / "triage.db")
    db = open_store(tmp_path / "triage.db")
    raw = b"From: Pat <pat@client.example>\nSubject: Chairs\nMessage-ID: <m1@c.example>\n\nHi\n"

    def give(label: str) -> bool:
        with db.transaction() as c:
            return insert_correction(
                c,
                message_row=None,
                message_id="<m1@c.example>",
                old_label=None,
                new_label=label,
                source="folder",
                subject="Chairs",
                body="Hi",
                raw=raw,
            )

    assert [give("sales"), give("marketing"), give("sales"), give("sales")] == [
        True,
        True,
        True,
        False,
    ]
    db.close()
    assert read_corrections(path)[-1].new_label == "sales"
    assert [e.label for e in load_corrections(path).examples] == ["sales"]
