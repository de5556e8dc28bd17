"""`triage.ingest.sources.iter_sources`: single files, directories, mbox files and Maildirs."""

from __future__ import annotations

import mailbox
from pathlib import Path

from triage.ingest.sources import SourceItem, is_mbox, iter_sources

ONE = b"From: a@b.example\nSubject: one\n\nfirst\n"
TWO = b"From: c@d.example\nSubject: two\n\nsecond\n"


def labels(items: list[SourceItem], base: Path) -> list[str]:
    return [str(Path(item.path).relative_to(base)) for item in items]


def test_single_eml_file(tmp_path: Path) -> None:
    """A single message file is one item with its bytes."""
    path = tmp_path / "inquiry.eml"
    path.write_bytes(ONE)
    assert list(iter_sources([path])) == [SourceItem(str(path), ONE)]


def test_spamassassin_style_file_is_one_message(tmp_path: Path) -> None:
    """A file starting with an mbox `From ` line but with no second separator is one message,
    even when its body has an unescaped line starting with "From "."""
    raw = b"From a@b.example  Mon Jun 24 17:03:24 2002\n" + ONE + b"From here on, we talk.\n"
    path = tmp_path / "00001.abcdef"
    path.write_bytes(raw)
    assert not is_mbox(path)
    assert list(iter_sources([path])) == [SourceItem(str(path), raw)]


def test_mbox_file_yields_every_message(tmp_path: Path) -> None:
    """An mbox file (a `From ` line and further separators) yields `path#n` items from 1."""
    path = tmp_path / "box.mbox"
    path.write_bytes(
        b"From a@b.example Mon Jun 24 17:03:24 2002\n" + ONE + b"\n"
        b"From c@d.example Tue Jun 25 09:00:00 2002\n" + TWO + b"\n"
        b"From - \n" + ONE
    )
    assert is_mbox(path)
    items = list(iter_sources([path]))
    assert [item.path for item in items] == [f"{path}#1", f"{path}#2", f"{path}#3"]
    assert items[1].raw is not None and items[1].raw.startswith(b"From: c@d.example")
    assert all(item.error is None for item in items)


def test_directory_is_walked_recursively_in_order_skipping_non_messages(tmp_path: Path) -> None:
    """A directory yields its messages depth first in name order; hidden files, labels files
    (*.csv, *.md) and licence files are skipped."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.eml").write_bytes(TWO)
    (tmp_path / "b" / "1.eml").write_bytes(ONE)
    (tmp_path / "a.eml").write_bytes(ONE)
    (tmp_path / "c.txt").write_bytes(TWO)
    for skipped in ("labels.csv", "README.md", "_LICENSE.MIT", ".hidden.eml"):
        (tmp_path / skipped).write_bytes(b"not a message")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.eml").write_bytes(ONE)
    items = list(iter_sources([tmp_path]))
    assert labels(items, tmp_path) == ["a.eml", "b/1.eml", "b/2.eml", "c.txt"]
    assert [item.raw for item in items] == [ONE, ONE, TWO, TWO]


def test_explicit_path_is_read_even_with_a_skipped_name(tmp_path: Path) -> None:
    """A file named on the command line is read even if a directory walk would skip it."""
    path = tmp_path / "notes.md"
    path.write_bytes(ONE)
    assert [item.raw for item in iter_sources([path])] == [ONE]


def test_maildir(tmp_path: Path) -> None:
    """A Maildir (cur/new/tmp) yields its messages labelled by their file paths."""
    box = mailbox.Maildir(tmp_path / "Mail", create=True)
    box.add(ONE)
    seen = mailbox.MaildirMessage(TWO)
    seen.set_subdir("cur")
    seen.add_flag("S")
    box.add(seen)
    items = list(iter_sources([tmp_path / "Mail"]))
    assert sorted(item.raw or b"" for item in items) == sorted([ONE, TWO])
    assert all(Path(item.path).is_file() for item in items)
    assert {Path(item.path).parent.name for item in items} == {"cur", "new"}


def test_maildir_inside_a_directory(tmp_path: Path) -> None:
    """A Maildir found while walking a directory is read as a Maildir, not as loose files."""
    (tmp_path / "archive").mkdir()
    box = mailbox.Maildir(tmp_path / "archive" / "Mail", create=True)
    box.add(ONE)
    (tmp_path / "archive" / "loose.eml").write_bytes(TWO)
    items = list(iter_sources([tmp_path]))
    assert sorted(item.raw or b"" for item in items) == sorted([ONE, TWO])


def test_missing_path_is_an_error_item(tmp_path: Path) -> None:
    """A path that does not exist yields one item with an error instead of raising."""
    (item,) = iter_sources([tmp_path / "nope.eml"])
    assert item.raw is None
    assert item.error == "no such file or directory"


def test_empty_file_is_a_message(tmp_path: Path) -> None:
    """An empty file is an (empty) message for the parser to judge, not an error."""
    path = tmp_path / "size-0"
    path.write_bytes(b"")
    assert list(iter_sources([path])) == [SourceItem(str(path), b"")]
