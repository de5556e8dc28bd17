"""The frozen blind sets: a set changed after it was frozen is refused when evaluating, and
training never reads a message of a frozen set, however the corpus names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from triage.core.errors import ConfigError
from triage.training import blind
from triage.training.corpus import load_corpus

EML = (
    b"From: a@client.example\nSubject: Quote\nMessage-ID: <%d@client.example>\n\n"
    b"Price for %d units?\n"
)


def write_set(root: Path) -> Path:
    """A frozen blind set of two messages below `root`; returns `root`."""
    folder = root / "messy"
    folder.mkdir(parents=True)
    for n in (1, 2):
        (folder / f"m{n}.eml").write_bytes(EML % (n, n))
    (folder / "labels.csv").write_text(
        "file,label,language,shape\nm1.eml,sales,en,plain\nm2.eml,sales,en,plain\n"
    )
    blind.freeze(root, "2026-01-01")
    return root


def test_an_untouched_set_loads_and_an_edited_one_is_refused(tmp_path: Path) -> None:
    root = write_set(tmp_path / "blind")
    assert [len(s.corpus) for s in blind.load_blind(root)] == [2]
    (root / "messy" / "m1.eml").write_bytes(EML % (1, 9))
    with pytest.raises(ConfigError, match="changed after it was frozen"):
        blind.load_blind(root)


def test_a_blind_message_of_another_file_type_is_refused(tmp_path: Path) -> None:
    """The fingerprint covers .eml files only, so a labels file naming any other file is
    refused (it could change after the set was frozen without anyone noticing)."""
    root = tmp_path / "blind"
    folder = root / "messy"
    folder.mkdir(parents=True)
    (folder / "m1.txt").write_bytes(EML % (1, 1))
    (folder / "labels.csv").write_text("file,label,language,shape\nm1.txt,sales,en,plain\n")
    blind.freeze(root, "2026-01-01")
    with pytest.raises(ConfigError, match=r"not a \.eml file inside the set"):
        blind.load_blind(root)


def test_a_blind_labels_file_cannot_name_a_message_outside_the_set(tmp_path: Path) -> None:
    """A message outside the frozen folder is not in its fingerprint: refused."""
    root = tmp_path / "blind"
    folder = root / "messy"
    folder.mkdir(parents=True)
    (tmp_path / "outside.eml").write_bytes(EML % (1, 1))
    (folder / "labels.csv").write_text(
        "file,label,language,shape\n../../outside.eml,sales,en,plain\n"
    )
    blind.freeze(root, "2026-01-01")
    with pytest.raises(ConfigError, match="outside"):
        blind.load_blind(root)


def test_training_refuses_a_frozen_set_and_its_folders(tmp_path: Path) -> None:
    root = write_set(tmp_path / "blind")
    for path in (root, root / "messy", tmp_path):
        with pytest.raises(ConfigError, match="frozen blind"):
            blind.refuse_frozen(path)
    blind.refuse_frozen(tmp_path / "elsewhere")  # nothing frozen there: no error


def test_a_corpus_cannot_name_a_message_of_a_frozen_set(tmp_path: Path) -> None:
    """A corpus labels file that reaches into a frozen set ("../blind/messy/m1.eml") is refused:
    the corpus folder itself holds no FROZEN file, so checking the folder is not enough."""
    write_set(tmp_path / "blind")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "own.eml").write_bytes(EML % (3, 3))
    (corpus / "labels.csv").write_text("file,label\nown.eml,sales\n../blind/messy/m1.eml,sales\n")
    blind.refuse_frozen(corpus)
    with pytest.raises(ConfigError, match="frozen blind"):
        load_corpus(corpus)


def test_an_unreadable_labels_file_is_one_clear_error(tmp_path: Path) -> None:
    """A labels file that is not UTF-8 is a ConfigError naming it, not a traceback."""
    root = write_set(tmp_path / "blind")
    labels = root / "messy" / "labels.csv"
    labels.write_bytes(b"file,label\n\xff\xfe.eml,sales\n")
    blind.freeze(root, "2026-01-01")
    with pytest.raises(ConfigError, match=r"labels\.csv cannot be read"):
        blind.load_blind(root)


def test_score_reports_the_set_and_each_language(tmp_path: Path) -> None:
    """`triage evaluate --blind`'s figures: the report over the set, the header-rule count and
    the per-language rows (here two English sales inquiries)."""
    from triage.core.settings import ClassifierSettings
    from triage.decide.classify import load_classifier

    [messy] = blind.load_blind(write_set(tmp_path / "blind"))
    found = blind.score(load_classifier(ClassifierSettings().model_path), messy)
    assert found["messages"] == 2 and found["labels"]["sales"]["support"] == 2
    assert list(found["by_language"]) == ["en"]
    assert found["by_language"]["en"]["messages"] == 2
