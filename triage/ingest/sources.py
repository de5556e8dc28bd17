"""Raw messages for batch commands from files, directories, mbox files and Maildirs.

Each message comes out as a `SourceItem` with a label a person can find it by again
(`mail/a.eml`, `box.mbox#12`, `Maildir/cur/1700000000.M1P2.host:2,S`); a message that cannot be
read is an item with an error instead of an exception, so one bad file never stops a batch.
"""

from __future__ import annotations

import mailbox
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 64 * 1024 * 1024  # larger files are not single messages worth reading whole
SNIFF_BYTES = 1024 * 1024  # the part of a file searched for a second mbox separator

# Files that live beside messages in corpora but are not messages.
_NOT_MESSAGES = frozenset(
    {".csv", ".md", ".json", ".yaml", ".yml", ".toml", ".py", ".pyc", ".gitattributes"}
)
_NOT_MESSAGE_PREFIXES = ("_", "LICENSE", "COPYING", "README")

# A later mbox `From ` separator line: with a date or a time, or Netscape's bare `From -`.
# Requiring one keeps a single message whose body has an unescaped "From here on…" line whole.
_SEPARATOR = re.compile(rb"\nFrom (?:-[ \t]*\n|\S++[^\n]*?(?:\d{1,2}:\d\d|\d{4}))")


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One message from a source: its label, its bytes, or why it could not be read."""

    path: str
    raw: bytes | None
    error: str | None = None


def is_maildir(path: Path) -> bool:
    """True for a directory with the `cur` and `new` subdirectories of a Maildir."""
    return (path / "cur").is_dir() and (path / "new").is_dir()


def is_mbox(path: Path) -> bool:
    """True for a file that starts with an mbox `From ` line and has a second separator.

    SpamAssassin corpus files start with a `From ` line too but hold one message.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return False
    return head.startswith(b"From ") and _SEPARATOR.search(head) is not None


def _is_message_name(name: str) -> bool:
    if name.startswith(".") or name.startswith(_NOT_MESSAGE_PREFIXES):
        return False
    return os.path.splitext(name)[1].lower() not in _NOT_MESSAGES


def _read(path: Path) -> SourceItem:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return SourceItem(str(path), None, f"file too large ({size} bytes)")
        return SourceItem(str(path), path.read_bytes())
    except OSError as exc:
        return SourceItem(str(path), None, exc.strerror or type(exc).__name__)


def _mbox(path: Path) -> Iterator[SourceItem]:
    """Every message of an mbox file, labelled `path#n` (n counts from 1)."""
    try:
        box = mailbox.mbox(path, create=False)
        keys = list(box.keys())
    except (OSError, mailbox.Error) as exc:
        yield SourceItem(str(path), None, f"unreadable mbox: {exc}")
        return
    try:
        for number, key in enumerate(keys, start=1):
            label = f"{path}#{number}"
            try:
                yield SourceItem(label, box.get_bytes(key))
            except (OSError, KeyError, mailbox.Error) as exc:
                yield SourceItem(label, None, f"unreadable message: {exc}")
    finally:
        box.close()


def _maildir(path: Path) -> Iterator[SourceItem]:
    """Every message of a Maildir (cur and new), in path order, labelled by its file path."""
    try:
        box = mailbox.Maildir(path, factory=None, create=False)
        # The label is the file's path; Maildir keys drop the `:2,FLAGS` suffix of the name.
        files = {
            name.split(box.colon, 1)[0]: path / subdir / name
            for subdir in ("new", "cur")
            for name in os.listdir(path / subdir)
            if not name.startswith(".")
        }
        keys = sorted(box.keys(), key=lambda key: str(files.get(key, key)))
    except (OSError, mailbox.Error) as exc:
        yield SourceItem(str(path), None, f"unreadable Maildir: {exc}")
        return
    for key in keys:
        label = str(files.get(key, path / key))
        try:
            yield SourceItem(label, box.get_bytes(key))
        except (OSError, KeyError, mailbox.Error) as exc:
            yield SourceItem(label, None, f"unreadable message: {exc}")


def _directory(path: Path) -> Iterator[SourceItem]:
    """Every message below a directory, depth first in name order, skipping hidden files."""
    try:
        entries = sorted(os.scandir(path), key=lambda entry: entry.name)
    except OSError as exc:
        yield SourceItem(str(path), None, exc.strerror or type(exc).__name__)
        return
    for entry in entries:
        if not _is_message_name(entry.name):
            continue
        yield from _source(Path(entry.path))


def _source(path: Path) -> Iterator[SourceItem]:
    if path.is_dir():
        yield from _maildir(path) if is_maildir(path) else _directory(path)
    elif path.is_file():
        yield from _mbox(path) if is_mbox(path) else (_read(path),)
    else:
        yield SourceItem(str(path), None, "no such file or directory")


def iter_sources(paths: Sequence[Path]) -> Iterator[SourceItem]:
    """The messages in `paths`: .eml files, directories of them, mbox files and Maildirs.

    A path given explicitly is read even when its name would be skipped inside a directory.
    """
    for path in paths:
        yield from _source(Path(path))
