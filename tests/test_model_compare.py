"""`triage train --with-corrections` writes a candidate; `triage model compare` shows what it would
change on the blind sets and the stored mail; `triage model promote` refuses a candidate that
answers more mail it should not, accepts an equal one, and keeps the previous model for rollback.

Two tiny models of the small corpus of test_model_cli: the live one, and a candidate that learned
"Lunch Friday?" as sales (so it newly answers such mail). The blind sets are replaced by one tiny
set made here.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.test_leads import Store, make_settings
from tests.test_model_cli import corpus  # noqa: F401  # the module-scoped fixture
from triage.cli.main import app
from triage.core.errors import ModelError
from triage.decide.classify import ModelHandle, card_path, load_classifier, read_card
from triage.training import blind, compare, learn
from triage.training.corpus import Corpus, load_corpus


@pytest.fixture(scope="module")
def models(
    corpus: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path]:
    """(live, lunch-is-sales candidate), trained once for the module."""
    root = tmp_path_factory.mktemp("models")
    data = load_corpus(corpus)
    learn.train(data, root / "live.skops")
    relabelled = Corpus(
        tuple(
            replace(e, label="sales") if e.message.subject == "Lunch Friday?" else e
            for e in data.examples
        )
    )
    learn.train(relabelled, root / "lunch.skops")
    return root / "live.skops", root / "lunch.skops"


def install(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    shutil.copy(card_path(source), card_path(target))
    return target


@pytest.fixture
def live(models: tuple[Path, Path], tmp_path: Path) -> Path:
    return install(models[0], tmp_path / "model.skops")


@pytest.fixture
def tiny_blind(
    corpus: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One blind set of corpus messages in place of the real blind sets."""
    data = load_corpus(corpus)
    sample = data.subset(range(0, len(data), 3))
    monkeypatch.setattr(
        blind, "load_blind", lambda _root: [blind.BlindSet("tiny", sample, ("en",) * len(sample))]
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(make_settings(tmp_path))
    s.message(
        "sam@client.example",
        "Lunch Friday?",
        "Are we still on for lunch on Friday?",
        decision="other",
    )
    s.message(
        "sam@client.example",
        "Quote for 200 units",
        "Please send a quote for 200 units, delivery by March.",
    )
    yield s
    s.close()


@pytest.fixture
def runner() -> Iterator[CliRunner]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


def run(runner: CliRunner, store: Store, live: Path, *args: str) -> Result:
    path = str(store.settings.store.path)
    return runner.invoke(app, ["model", *args, "--model", str(live), "--store", path])


@pytest.mark.usefixtures("tiny_blind")
def test_compare_lists_the_stored_messages_that_flip(
    runner: CliRunner, store: Store, live: Path, models: tuple[Path, Path]
) -> None:
    candidate = install(models[1], compare.candidate_path(live))
    result = run(runner, store, live, "compare", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["candidate"] == read_card(candidate).version
    assert [(b["set"], b["messages"]) for b in data["blind"]] == [("tiny", 12)]
    assert data["stored"]["messages"] == 2
    [flip] = data["stored"]["changed"]
    assert (flip["id"], flip["subject"], flip["live"], flip["candidate"]) == (
        1,
        "Lunch Friday?",
        "other",
        "sales",
    )
    assert data["stored"]["newly_auto_replied"] == 1
    assert data["stored"]["no_longer_auto_replied"] == 0
    assert sum(data["stored"]["live"].values()) == 2
    text = run(runner, store, live, "compare")
    assert text.exit_code == 0, text.output
    assert "other -> sales (new auto-reply)  Lunch Friday?" in text.stdout
    assert "blind set tiny (12 messages)" in text.stdout
    assert "promote would refuse" in text.stdout


def test_compare_without_blind_sets_says_so(
    runner: CliRunner,
    store: Store,
    live: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    install(live, compare.candidate_path(live))
    monkeypatch.setattr(blind, "resolve_blind_dir", lambda _path: tmp_path / "no-blind")
    result = run(runner, store, live, "compare", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["blind"] == [] and "blind sets left out" in data["notes"][0]
    assert data["stored"]["changed"] == []
    # What compare says promote would do is what promote does: refuse without a blind set.
    [refusal] = data["refusals"]
    assert refusal.startswith("no blind set to compare on") and "--without-blind" in refusal


def test_promote_without_a_blind_set_needs_to_be_asked_for(
    runner: CliRunner,
    store: Store,
    live: Path,
    models: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """With no blind set to compare on, the main guard is missing: promote refuses in one line
    and names `--without-blind`; given it, the stored-mail rule alone decides."""
    monkeypatch.setattr(blind, "resolve_blind_dir", lambda _path: tmp_path / "no-blind")
    learn.save_model(
        load_classifier(models[0]).pipeline,
        replace(read_card(models[0]), created="2030-01-01T00:00:00+00:00"),
        compare.candidate_path(live),
    )
    before = live.read_bytes()
    refused = run(runner, store, live, "promote")
    assert refused.exit_code == 1
    assert "no blind set to compare on" in refused.stderr and "--without-blind" in refused.stderr
    assert live.read_bytes() == before
    accepted = run(runner, store, live, "promote", "--without-blind")
    assert accepted.exit_code == 0, accepted.output
    assert live.read_bytes() != before


@pytest.mark.usefixtures("tiny_blind")
def test_promote_refuses_a_candidate_that_raises_wrong_auto_replies(
    runner: CliRunner, store: Store, live: Path, models: tuple[Path, Path]
) -> None:
    candidate = install(models[1], compare.candidate_path(live))
    before = live.read_bytes()
    result = run(runner, store, live, "promote")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("triage: "), result.stderr
    assert "not promoted" in result.stderr
    assert "more `other` mail answered on blind set tiny" in result.stderr
    assert "newly auto-reply to 1 stored messages and stop for only 0" in result.stderr
    assert live.read_bytes() == before and candidate.is_file()


@pytest.mark.usefixtures("tiny_blind")
def test_promote_accepts_an_equal_candidate_keeps_the_previous_and_rolls_back(
    runner: CliRunner, store: Store, live: Path, models: tuple[Path, Path]
) -> None:
    # The same model retrained (a new card) is equal on every figure: accepted.
    candidate = compare.candidate_path(live)
    learn.save_model(
        load_classifier(models[0]).pipeline,
        replace(read_card(models[0]), created="2030-01-01T00:00:00+00:00"),
        candidate,
    )
    old, new = read_card(live).version, read_card(candidate).version
    assert old != new
    daemon = ModelHandle(live)  # what the service asks for its classifier before each batch
    assert daemon.get().version == old
    result = run(runner, store, live, "promote")
    assert result.exit_code == 0, result.output
    assert daemon.get().version == new  # picked up without a restart
    assert f"promoted {candidate} to {live}" in result.stdout
    assert read_card(live).version == new and read_card(live).model_file == live.name
    assert load_classifier(live).version == new
    previous = compare.previous_path(live)
    assert read_card(previous).version == old and load_classifier(previous).version == old
    assert not candidate.exists() and not card_path(candidate).exists()
    back = runner.invoke(app, ["model", "rollback", "--model", str(live)])
    assert back.exit_code == 0, back.output
    assert load_classifier(live).version == old and read_card(previous).version == new


def test_promote_refuses_the_model_installed_with_triage(
    live: Path, models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    candidate = install(models[1], compare.candidate_path(live))
    monkeypatch.setattr(compare, "is_installed_file", lambda _path: True)
    with pytest.raises(ModelError, match="installed with triage"):
        compare.promote(live, candidate)
    assert candidate.is_file()


def test_train_with_corrections_writes_a_candidate_and_leaves_the_live_model(
    runner: CliRunner,
    corpus: Path,  # noqa: F811
    live: Path,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with store.db.transaction() as c:
        c.execute(
            "INSERT INTO corrections (message_id, new_label, source, weight, raw, created_at)"
            " VALUES ('<other30@client.example>', 'sales', 'review', 8.0, ?, '2024-01-01')",
            ((corpus / "other30.eml").read_bytes(),),
        )
    from triage.cli import model as model_cli

    monkeypatch.setattr(model_cli, "_model_path", lambda _settings, _model: live)
    before = live.read_bytes()
    store_path = str(store.settings.store.path)
    result = runner.invoke(
        app, ["train", "--corpus", str(corpus), "--with-corrections", "--store", store_path]
    )
    assert result.exit_code == 0, result.output
    candidate = compare.candidate_path(live)
    assert candidate.name == "model.candidate.skops"
    assert card_path(candidate).name == "model.candidate-card.json"
    assert f"wrote {candidate}" in result.stdout and "triage model promote" in result.stdout
    assert "without corrections" in result.stdout  # the held-out comparison is still shown
    assert live.read_bytes() == before
    assert load_classifier(candidate).card.training_size["sales"] == 13


def test_promote_refuses_the_live_model_or_its_previous_as_candidate(
    live: Path, models: tuple[Path, Path]
) -> None:
    """`--candidate` naming the live model (or the kept previous one) would remove it after
    "promoting" it: refused, both pairs left as they were."""
    previous = install(models[1], compare.previous_path(live))
    before = {p: p.read_bytes() for p in (live, card_path(live), previous, card_path(previous))}
    for wrong in (live, live.parent / ".." / live.parent.name / live.name, previous):
        with pytest.raises(ModelError, match="not a candidate"):
            compare.promote(live, wrong)
    assert {p: p.read_bytes() for p in before} == before
