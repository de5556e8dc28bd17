"""`triage train|evaluate|classify` without a config file, on a small corpus written here."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from typer.testing import CliRunner

from triage.cli.main import app
from triage.decide.classify import card_path, load_classifier, read_card
from triage.store.db import Database, utcnow
from triage.training import learn
from triage.training.corpus import load_corpus

TEXTS = {
    "sales": [
        ("Quote for 200 units", "Please send a quote for 200 units, delivery by March."),
        ("Pricing for 50 seats", "We need pricing for 50 users and your contract terms."),
        ("RFQ: cable", "Our RFQ: best price and lead time for 1000 metres of cable."),
        ("Demo next week?", "Can we book a demo on Tuesday? Budget approved, buying soon."),
    ],
    "marketing": [
        ("What do you do?", "I found your website. What exactly does your company do?"),
        ("Brochure", "Could you send me your brochure and catalogue? Just gathering information."),
        ("Newsletter", "Please add me to your newsletter about new products."),
        ("Case studies", "Do you have case studies from retail customers? Early research only."),
    ],
    "other": [
        ("You won!", "Congratulations, you have won a prize. Click the link to claim it now."),
        ("SEO services", "We can boost your Google ranking with our cheap SEO packages."),
        ("Password changed", "Your password was changed. If this was not you, tell the admin."),
        ("Lunch Friday?", "Are we still on for lunch on Friday? Bring the holiday photos."),
    ],
}
KEYS = {
    "path",
    "message_id",
    "label",
    "confidence",
    "probabilities",
    "review",
    "may_reply",
    "reasons",
    "reply_to",
    "verified",
    "reflect",
    "notes",
    "contact",
    "explanation",
    "error",
}


def eml(subject: str, body: str, message_id: str, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Sam Writer <sam@client.example>"
    msg["To"] = "hello@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(f"{body}\n\nBest regards,\nSam Writer\nClient Ltd\n+44 20 7946 0000\n")
    return msg.as_bytes()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three labels × 4 texts × 3 copies as .eml files with one labels.csv (read-only)."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for label, texts in TEXTS.items():
        for i, (subject, body) in enumerate(texts):
            for copy in range(3):
                name = f"{label}{i}{copy}.eml"
                message_id = f"<{label}{i}{copy}@client.example>"
                (root / name).write_bytes(eml(subject, f"{body} ({copy})", message_id))
                rows.append((name, label))
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("file", "label"), *rows])
    return root


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CliRunner]:
    """A runner in an empty directory with no TRIAGE_* configuration; logging restored after."""
    monkeypatch.chdir(tmp_path)
    for name in ("TRIAGE_CONFIG", "TRIAGE_STORE__PATH"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of the corpus, trained once for the module (the CLI test trains its own)."""
    path = tmp_path_factory.mktemp("trained") / "model.skops"
    learn.train(load_corpus(corpus), path)
    return path


@pytest.fixture
def model(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained model and card that a test may replace."""
    path = tmp_path / "out" / "model.skops"
    path.parent.mkdir()
    shutil.copy(trained, path)
    shutil.copy(card_path(trained), card_path(path))
    return path


def test_train_writes_the_model_and_its_card(
    runner: CliRunner, corpus: Path, tmp_path: Path
) -> None:
    model = tmp_path / "new" / "model.skops"
    result = runner.invoke(app, ["train", "--corpus", str(corpus), "--output", str(model)])
    assert result.exit_code == 0, result.output
    assert model.exists() and card_path(model).exists()
    card = read_card(model)
    assert card.training_size == {"sales": 12, "marketing": 12, "other": 12}
    assert card.sources and card.sources[0].startswith(f"corpus {corpus}")
    assert "macro-F1" in result.output
    assert "suggested thresholds" in result.output
    assert f"wrote {model}" in result.output


def test_train_refuses_a_missing_corpus_in_one_line(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--corpus", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "does not exist" in result.output


def test_classify_json_prints_one_line_per_message(
    runner: CliRunner, model: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "quote.eml").write_bytes(
        eml("Quote for 300 units", "Please send a quote for 300 units.", "<q@client.example>")
    )
    (inbox / "garbage.eml").write_bytes(bytes(range(256)) * 3)
    (inbox / "empty.eml").write_bytes(b"")
    (inbox / "auto.eml").write_bytes(
        eml("Out of office", "I am away.", "<ooo@client.example>", auto_submitted="auto-replied")
    )
    mbox = tmp_path / "two.mbox"
    mbox.write_bytes(
        b"From sam@client.example Mon Jan  6 10:00:00 2025\n"
        + eml("Brochure", "Could you send your brochure?", "<b1@client.example>")
        + b"\nFrom sam@client.example Mon Jan  6 11:00:00 2025\n"
        + eml("Newsletter", "Add me to your newsletter.", "<b2@client.example>")
    )
    missing = tmp_path / "missing.eml"
    paths = [str(inbox), str(mbox), str(missing)]
    result = runner.invoke(app, ["classify", "--json", "--model", str(model), *paths])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 7
    for line in lines:
        assert set(line) == KEYS
        assert set(line["contact"]) == {"name", "email", "company", "phone"}
    by_path = {Path(line["path"]).name: line for line in lines}
    quote = by_path["quote.eml"]
    assert quote["label"] == "sales" and quote["error"] is None
    assert quote["message_id"] == "<q@client.example>"
    assert set(quote["probabilities"]) == {"sales", "marketing", "other"}
    assert quote["contact"]["email"] == "sam@client.example"
    assert quote["may_reply"] is True and quote["reasons"] == []
    # No trusted Authentication-Results: answered at From, with fixed text, and it says why.
    assert quote["reply_to"] == "sam@client.example"
    assert quote["verified"] is False and quote["reflect"] is False
    assert any(n.startswith("unauthenticated: ") for n in quote["notes"])
    assert quote["explanation"]
    for bad in ("garbage.eml", "empty.eml", "missing.eml"):
        assert by_path[bad]["label"] is None
        assert by_path[bad]["error"]
        assert by_path[bad]["may_reply"] is False
    auto = by_path["auto.eml"]
    assert auto["label"] == "other" and auto["may_reply"] is False
    assert any(r.startswith("auto-submitted") for r in auto["reasons"])
    assert sum(1 for line in lines if "two.mbox#" in line["path"]) == 2


def test_classify_text_output(runner: CliRunner, model: Path, corpus: Path) -> None:
    result = runner.invoke(app, ["classify", "-m", str(model), str(corpus / "sales00.eml")])
    assert result.exit_code == 0, result.output
    assert "\tsales\t" in result.stdout


def test_classify_without_a_model_fails_in_one_line(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["classify", "-m", str(tmp_path / "none.skops"), str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("triage: model card")


def test_evaluate_cross_validates_the_corpus(runner: CliRunner, model: Path, corpus: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", "--json", "--corpus", str(corpus), "--model", str(model)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["cross_validation"]
    assert report["messages"] == 36
    assert report["thresholds"] == dict(read_card(model).thresholds)
    assert set(report["labels"]) == {"sales", "marketing", "other"}
    text = runner.invoke(app, ["evaluate", "--corpus", str(corpus), "--model", str(model)])
    assert "confusion" in text.output and "review rate" in text.output


def test_evaluate_paths_with_and_without_rules(
    runner: CliRunner, model: Path, corpus: Path, tmp_path: Path
) -> None:
    others = tmp_path / "others"
    others.mkdir()
    (others / "a.eml").write_bytes(
        eml("Weekly digest", "Our news this week.", "<n@x>", list_id="<news.x>")
    )
    (others / "b.eml").write_bytes(eml("Prize", "You won a prize, click now.", "<p@x>"))
    result = runner.invoke(
        app,
        ["evaluate", "--json", "-m", str(model), str(others), f"{corpus / 'sales00.eml'}:sales"],
    )
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert len(reports) == 2
    other_report = next(v for k, v in reports.items() if "true label other" in k)
    assert other_report["with_header_rules"]["rule_decided"] == 1
    assert other_report["model_only"]["rule_decided"] == 0
    assert other_report["with_header_rules"]["other_auto_reply_rate"] is not None


def add_correction(store: Path, message_id: str, label: str, raw: bytes) -> None:
    db = Database(store)
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO corrections (message_id, new_label, source, raw, created_at) "
            "VALUES (?, ?, 'review', ?, ?)",
            (message_id, label, sqlite3.Binary(raw), utcnow()),
        )
    db.close()


def test_train_with_corrections_flips_a_label(
    runner: CliRunner, model: Path, corpus: Path, tmp_path: Path
) -> None:
    # other30.eml ("Lunch Friday?") was in fact a sales inquiry by an old customer: a person
    # corrected it. The correction replaces the corpus example with the same Message-ID.
    store = tmp_path / "triage.db"
    raw = (corpus / "other30.eml").read_bytes()
    add_correction(store, "<other30@client.example>", "sales", raw)
    before = read_card(model)
    result = runner.invoke(
        app,
        [
            "train",
            "--corpus",
            str(corpus),
            "--with-corrections",
            "--store",
            str(store),
            "--output",
            str(model),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "without corrections" in result.output
    assert "with 1 corrections" in result.output
    after = read_card(model)
    assert after.training_size["sales"] == before.training_size["sales"] + 1
    assert after.training_size["other"] == before.training_size["other"] - 1
    assert after.corpus_sha256 != before.corpus_sha256
    assert any(s.startswith(f"corrections {store}") for s in after.sources)
    assert load_classifier(model).pipeline is not None


def test_train_with_corrections_keeps_the_model_when_they_score_worse(
    runner: CliRunner,
    model: Path,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "triage.db"
    add_correction(
        store, "<sales00@client.example>", "other", (corpus / "sales00.eml").read_bytes()
    )
    good = {"macro_f1": 0.9, "labels": {"sales": {"recall": 0.9}}, "sales_recall": 0.9}
    bad = {"macro_f1": 0.5, "labels": {"sales": {"recall": 0.5}}, "sales_recall": 0.5}
    monkeypatch.setattr(
        learn,
        "compare_corrections",
        lambda *_a: learn.Comparison(held_out=8, corrected_held_out=1, current=good, candidate=bad),
    )
    before = model.read_bytes()
    args = ["train", "--corpus", str(corpus), "--with-corrections", "--store", str(store)]
    result = runner.invoke(app, [*args, "--output", str(model)])
    assert result.exit_code == 0, result.output
    assert "model not replaced" in result.output
    assert "macro-F1 90.0%" in result.output and "macro-F1 50.0%" in result.output
    assert model.read_bytes() == before
