"""Editing reply templates while triage runs: check, preview, save with history, roll back, test.

Whatever is tried out is rendered from a temporary copy of the templates directory with the
edited file replaced, in the same sandbox the daemon uses (`TemplateRenderer`), so a preview
never touches the real file. A save is refused unless the new text compiles, uses only the
documented variables and renders against sample data (for an authenticated sender and for a
stranger, whose name and subject are empty): a broken template never becomes the active version.
The file is then replaced atomically (a temporary file in the same directory, renamed over it,
with the file's mode), so the daemon's hot reload sees either the old or the new text, and the
text is recorded in `template_versions` with an `audit` entry in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from triage.act.compose import compose, make_reply, message_id_domain
from triage.act.replies import (
    Problem,
    ReplyVariables,
    TemplateContact,
    TemplateRenderer,
    parse_file_name,
)
from triage.core.errors import TemplateError, TriageError
from triage.core.models import Address, Contact, InboundMessage
from triage.core.sanitize import is_addr_spec
from triage.core.settings import RepliesSettings
from triage.store import audit
from triage.store import digests as notices
from triage.store import template_versions as versions
from triage.store.db import Database, timestamp
from triage.store.template_versions import SampleMessage

TEST_KIND = "template-test"  # the delivery-queue kind of "send a test to me" mails
TEST_SUBJECT_PREFIX = "[test] "
SAMPLE_OWNER = "Sam Seller"
DISK_AUTHOR = "(on disk)"  # saved_by of the text found on disk before the first save
# The guards' notes (recorded with the message) for a reply that may not repeat what the sender
# wrote: an unauthenticated sender, or a web form's visitor.
_UNTRUSTED_NOTES = ("unauthenticated:", "web-form:")


class TemplateFileError(TemplateError):
    """A file name that is not an editable template of the directory (a path, a link, unknown)."""


class TemplateConflict(TemplateError):
    """The file changed since the editor loaded it: saving would silently undo that change."""


class TemplateRefused(TemplateError):
    """A text that may not become the active version; `problems` says where and why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class TemplateFile:
    """One editable template file: its name, outcome, language ("" for the base) and part.

    A partial (`_footer.txt`) has the outcome of its name without the underscore; it is never
    an outcome of its own."""

    filename: str
    outcome: str
    language: str
    part: str
    partial: bool


def file_of(filename: str) -> TemplateFile | None:
    """The parts of a template file name (`NAME[.LANG].subject|txt|html`, or a partial `_…`)."""
    partial = filename.startswith("_")
    parsed = parse_file_name(filename[1:] if partial else filename)
    if parsed is None:
        return None
    return TemplateFile(filename, parsed[0], parsed[1], parsed[2], partial)


def resolve(directory: Path, filename: str) -> TemplateFile:
    """The editable file `filename` of `directory`: a plain template file name of an existing
    regular file inside it. TemplateFileError for a path, a link, or any other name."""
    found = file_of(filename)
    if found is None or os.sep in filename or "/" in filename:
        raise TemplateFileError(
            f"{filename[:80]!r} is not a template file name (NAME[.LANG].subject|txt|html)"
        )
    path = directory / filename
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise TemplateFileError(f"there is no template file {filename}") from None
    except OSError as exc:
        raise TemplateFileError(f"cannot read template {filename}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise TemplateFileError(f"template {filename} is a symbolic link; edit the file itself")
    if not stat.S_ISREG(info.st_mode):
        raise TemplateFileError(f"template {filename} is not a regular file")
    root = os.path.realpath(directory)
    if os.path.commonpath([os.path.realpath(path), root]) != root:
        raise TemplateFileError(f"template {filename} lies outside the templates directory")
    return found


def editable_files(directory: Path) -> list[TemplateFile]:
    """Every editable template file of `directory`, sorted by name (links are left out)."""
    listed = []
    for name in TemplateRenderer(directory).files():
        found = file_of(name)
        if found is not None and not (directory / name).is_symlink():
            listed.append(found)
    return listed


def read_text(directory: Path, filename: str) -> str:
    """The text of editable template `filename` as it is on disk."""
    resolve(directory, filename)
    try:
        return (directory / filename).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateFileError(f"cannot read template {filename}: {exc}") from None


def fingerprint(text: str) -> str:
    """A short fingerprint of a file's text: the editor sends back the one it loaded, and a
    save is refused when the file no longer has it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def normalised(text: str) -> str:
    """A textarea's text with the line ends of a file: browsers send CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- trying a text out in a copy of the directory -------------------------------------------------


@contextmanager
def edited_copy(directory: Path, filename: str, text: str) -> Iterator[Path]:
    """A temporary copy of `directory` with `filename` holding `text`; removed afterwards.

    Links are copied as links, so one that leads out of the directory is still refused."""
    with tempfile.TemporaryDirectory(prefix="triage-templates-") as tmp:
        copy = Path(tmp) / "templates"
        try:
            shutil.copytree(directory, copy, symlinks=True)
            (copy / filename).write_text(normalised(text), encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"cannot copy the templates directory {directory}: {exc}") from None
        yield copy


def sample_variables(replies: RepliesSettings, language: str) -> list[ReplyVariables]:
    """The sample data a template must render for: an authenticated sender (name, company and
    subject filled in) and a stranger (those empty, as the daemon leaves them)."""
    trusted = replace(ReplyVariables.sample(replies), language=language or replies.default_language)
    stranger = replace(
        trusted,
        contact=TemplateContact(email=trusted.contact.email),
        original_subject="",
        lead_owner="",
        trusted=False,
    )
    return [trusted, stranger]


def _shown(problem: Problem, copy: Path) -> Problem:
    """`problem` naming the file without the temporary directory."""
    prefix = str(copy) + os.sep
    return Problem(
        problem.file.removeprefix(prefix), problem.line, problem.message.replace(prefix, "")
    )


def _problems(
    directory: Path, copy: Path, target: TemplateFile, replies: RepliesSettings
) -> list[Problem]:
    renderer = TemplateRenderer(copy, replies.default_language)
    found: list[Problem] = []
    for variables in sample_variables(replies, target.language):
        for problem in renderer.check_file(target.filename, variables):
            shown = _shown(problem, copy)
            if not variables.trusted:
                shown = replace(shown, message=f"{shown.message} (for an unauthenticated sender)")
            if shown not in found:
                found.append(shown)
        if found:
            return found  # the same syntax error or unknown variable would be reported twice
    if target.partial:
        return _partial_problems(directory, copy, renderer, replies)
    for variables in sample_variables(replies, target.language):
        try:
            rendered = renderer.render(target.outcome, variables, target.language)
        except TemplateError as exc:
            found.append(Problem(target.filename, None, _shown_text(str(exc), copy)))
            break
        # A reply with no words goes to a real person: the file must give its part some text.
        empty = [
            name
            for name, value in (("subject", rendered.subject), ("text", rendered.text))
            if not value.strip()
        ]
        if empty:
            who = "" if variables.trusted else " (for an unauthenticated sender)"
            found.append(
                Problem(target.filename, None, f"the reply's {' and '.join(empty)} is empty{who}")
            )
            break
    return found


def _partial_problems(
    directory: Path, copy: Path, renderer: TemplateRenderer, replies: RepliesSettings
) -> list[Problem]:
    """What a partial breaks in the files that include it, for both senders as a file of its
    own is checked: the problems of the copy the directory does not already have."""
    found: list[Problem] = []
    for variables in sample_variables(replies, ""):
        before = {_shown(p, directory) for p in TemplateRenderer(directory).check(variables)}
        for problem in renderer.check(variables):
            shown = _shown(problem, copy)
            if shown in before:
                continue
            if not variables.trusted:
                shown = replace(shown, message=f"{shown.message} (for an unauthenticated sender)")
            if shown not in found:
                found.append(shown)
        if found:
            return found
    return found


def _shown_text(message: str, copy: Path) -> str:
    return message.replace(str(copy) + os.sep, "")


def problems(directory: Path, filename: str, text: str, replies: RepliesSettings) -> list[Problem]:
    """What keeps `text` from becoming the active version of `filename`: syntax errors and
    unknown variables with their lines, render errors against sample data. Empty when none."""
    target = resolve(directory, filename)
    with edited_copy(directory, filename, text) as copy:
        return _problems(directory, copy, target, replies)


# --- preview --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preview:
    """The complete reply as the recipient would get it (or the problems that prevent one)."""

    problems: tuple[Problem, ...]
    source: str  # what it answers: the sample, or a message
    outcome: str = ""
    language: str = ""
    trusted: bool = False
    sender: str = ""
    recipient: str = ""
    subject: str = ""
    text: str = ""
    html: str | None = None
    files: tuple[str, ...] = ()


def sample_message(replies: RepliesSettings, language: str = "") -> InboundMessage:
    """The inquiry a sample preview answers (the one `triage templates preview` uses)."""
    return InboundMessage(
        message_id=f"<sample-inquiry.{secrets.token_hex(6)}@doe-logistics.example>",
        subject="Quote for 40 units",
        from_=Address("Jane Doe", "jane@doe-logistics.example"),
        to=(Address("", replies.from_address),),
        language=language or replies.default_language,
        contact=Contact(
            name="Jane Doe", company="Doe Logistics GmbH", email="jane@doe-logistics.example"
        ),
    )


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """What the daemon would answer: the message, where the reply goes, whether it may repeat
    the sender's words (`trusted`, the guards' `reflect`) and the lead owner it names."""

    msg: InboundMessage
    destination: Address
    trusted: bool
    lead_owner: str
    source: str


def sample_reply_to(replies: RepliesSettings, language: str = "") -> ReplyTo:
    """The sample inquiry, from an authenticated sender, with a lead owner."""
    msg = sample_message(replies, language)
    assert msg.from_ is not None
    return ReplyTo(msg, msg.from_, True, SAMPLE_OWNER, "sample data")


def stored_reply_to(found: SampleMessage) -> ReplyTo:
    """A stored message as the daemon answered it: the lead's contact (or the sender) as
    recipient, trusted unless the guards recorded that the reply carries fixed text only, and
    the owner of its hot lead."""
    try:
        reasons = json.loads(found.reasons)
    except ValueError:
        reasons = []
    trusted = not any(isinstance(r, str) and r.startswith(_UNTRUSTED_NOTES) for r in reasons or [])
    email = found.lead_email or found.sender
    msg = InboundMessage(
        message_id=found.message_id,
        subject=found.subject,
        from_=Address(found.lead_name, found.sender) if found.sender else None,
        language=found.language,
        contact=Contact(name=found.lead_name, email=found.lead_email, company=found.lead_company),
    )
    destination = Address(found.lead_name if trusted else "", email)
    owner = found.lead_owner if found.lead_kind == "hot" else ""
    return ReplyTo(msg, destination, trusted, owner, f"message {found.row_id}")


def _outcome_of(renderer: TemplateRenderer, target: TemplateFile) -> str:
    """The outcome whose reply shows `target`: its own, or for a partial one that exists."""
    outcomes = renderer.outcomes()
    if target.outcome in outcomes or not outcomes:
        return target.outcome
    return "sales" if "sales" in outcomes else next(iter(outcomes))


def _parts(parsed: EmailMessage) -> tuple[str, str | None]:
    text, html = "", None
    for part in parsed.walk():
        if part.get_content_maintype() != "text":
            continue
        content = part.get_content()
        if part.get_content_subtype() == "html":
            html = str(content)
        elif part.get_content_subtype() == "plain":
            text = str(content)
    return text, html


def preview(
    directory: Path,
    filename: str,
    text: str,
    replies: RepliesSettings,
    reply_to: ReplyTo | None = None,
) -> Preview:
    """The complete reply `text` (as `filename`) makes for `reply_to` (default: the sample),
    in the file's language, rendered from a copy of the directory."""
    target = resolve(directory, filename)
    where = reply_to or sample_reply_to(replies, target.language)
    with edited_copy(directory, filename, text) as copy:
        found = _problems(directory, copy, target, replies)
        renderer = TemplateRenderer(copy, replies.default_language)
        outcome = _outcome_of(renderer, target)
        language = target.language or replies.default_language
        msg = replace(where.msg, language=language)
        try:
            reply = make_reply(
                msg,
                where.destination,
                outcome,
                renderer,
                replies,
                lead_owner=where.lead_owner,
                trusted=where.trusted,
            )
        except TriageError as exc:
            problem = Problem(filename, None, _shown_text(str(exc), copy))
            return Preview(tuple(found) if found else (problem,), where.source, outcome, language)
        used = renderer.choose(outcome, language)
    parsed = reply.message()
    body, html = _parts(parsed)
    return Preview(
        problems=tuple(found),
        source=where.source,
        outcome=outcome,
        language=language,
        trusted=where.trusted,
        sender=str(parsed["From"] or ""),
        recipient=str(parsed["To"] or ""),
        subject=str(parsed["Subject"] or ""),
        text=body,
        html=html,
        files=tuple(f for f in (used.subject, used.text, used.html) if f),
    )


# --- saving ---------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Replace the file at `path` by `text` in one rename, keeping its mode: a reader (the
    daemon's hot reload) sees the old text or the new one, never a half-written file."""
    info = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, stat.S_IMODE(info.st_mode))
        with suppress(OSError):  # keep the owner where we may (as root): the daemon reads it
            if (info.st_uid, info.st_gid) != (os.getuid(), os.getgid()):
                os.chown(tmp, info.st_uid, info.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    with suppress(OSError):  # the rename itself survives a crash once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(
    db: Database,
    directory: Path,
    filename: str,
    text: str,
    replies: RepliesSettings,
    actor: str,
    *,
    action: str = "template.save",
    note: str = "",
    expected: str = "",
    now: datetime | None = None,
) -> int:
    """Make `text` the active version of `filename`; returns the new version's id.

    TemplateRefused (nothing written) when it does not compile or render against sample data.
    The first save of a file records the text that was on disk first, so it can be rolled back
    to; so does a save after the file was changed on disk since its last recorded version. The
    file is written inside the transaction that records the version and the audit entry: when
    writing fails, neither is recorded. With `expected` (the `fingerprint` of the text the
    editor loaded), TemplateConflict when the file holds another text now."""
    moment = now or datetime.now(UTC)
    text = normalised(text)
    found = problems(directory, filename, text, replies)
    if found:
        raise TemplateRefused(found)
    path = directory / filename
    with db.transaction() as c:
        # Read under the store's write lock: another save of this file (the check above takes
        # a while) either committed before this read or waits until this one commits.
        before = read_text(directory, filename)
        if expected and fingerprint(before) != expected:
            raise TemplateConflict(
                f"{filename} was changed since you opened it (see its history); "
                "your text is kept below: save again to replace the new version"
            )
        latest = versions.latest(c, filename)
        if latest is None or latest.text != before:
            on_disk = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            why = "on disk before the first save" if latest is None else "changed on disk"
            versions.add(c, filename, before, DISK_AUTHOR, min(on_disk, moment), why)
        version = versions.add(c, filename, text, actor, moment, note)
        audit.record(
            c,
            actor,
            action,
            "template",
            filename,
            {"version": version, "note": note, "changed": text != before},
            now=moment,
        )
        try:
            write_atomic(path, text)
        except OSError as exc:
            raise TemplateError(f"cannot write template {filename}: {exc.strerror}") from None
    return version


def rollback(
    db: Database,
    directory: Path,
    filename: str,
    version_id: int,
    replies: RepliesSettings,
    actor: str,
    now: datetime | None = None,
) -> int:
    """Make version `version_id` of `filename` the active one again, as a new version (checked
    like any save); returns the new version's id."""
    resolve(directory, filename)
    version = versions.get(db.reads, version_id)
    if version is None or version.filename != filename:
        raise TemplateFileError(f"{filename} has no version {version_id}")
    return save(
        db,
        directory,
        filename,
        version.text,
        replies,
        actor,
        action="template.rollback",
        note=f"rollback to version {version_id}",
        now=now,
    )


# --- "send a test to me" --------------------------------------------------------------------------


def send_test(
    db: Database,
    directory: Path,
    filename: str,
    text: str,
    replies: RepliesSettings,
    actor: str,
    email: str,
    now: datetime | None = None,
) -> int:
    """Queue the reply `text` makes for the sample inquiry, addressed to `email` (the admin's
    own address), in the delivery queue the daemon sends from; returns the queued row's id.

    It goes as a staff notice (like a digest), not as a reply: a reply row belongs to an inbound
    message, whose original the daemon would then mark answered in the mailbox."""
    if not email.strip():
        raise TemplateError(f"user {actor} has no email address; set one with `triage users` first")
    if not is_addr_spec(email.strip()):
        raise TemplateError(
            f"the email address of user {actor} is not one plain address "
            f"({email.strip()[:80]!r}); set it with `triage users`"
        )
    moment = now or datetime.now(UTC)
    target = resolve(directory, filename)
    where = sample_reply_to(replies, target.language)
    with edited_copy(directory, filename, text) as copy:
        found = _problems(directory, copy, target, replies)
        if found:
            raise TemplateRefused(found)
        renderer = TemplateRenderer(copy, replies.default_language)
        outcome = _outcome_of(renderer, target)
        variables = ReplyVariables.for_message(
            where.msg,
            replies,
            destination=where.destination,
            lead_owner=where.lead_owner,
            trusted=True,
        )
        try:
            rendered = renderer.render(outcome, variables, target.language)
        except TemplateError as exc:
            raise TemplateError(_shown_text(str(exc), copy)) from None
    rendered = replace(rendered, subject=TEST_SUBJECT_PREFIX + rendered.subject)
    token = secrets.token_hex(8)
    msg = replace(
        where.msg,
        message_id=f"<template-test.{token}@{message_id_domain(replies)}>",
        message_id_synthesised=True,  # nothing to thread on
    )
    reply = compose(msg, Address("", email.strip()), rendered, replies, now=moment)
    envelope = "" if replies.envelope_sender in ("", "<>") else replies.envelope_sender
    with db.transaction() as c:
        row = notices.insert(
            c,
            kind=TEST_KIND,
            slot=f"{filename} {timestamp(moment)} {token}",
            message_id=reply.message_id,
            raw=reply.raw,
            recipients=[email.strip()],
            envelope_from=envelope,
            now=moment,
        )
        audit.record(
            c,
            actor,
            "template.test",
            "template",
            filename,
            {"to": email.strip(), "queued": row, "outcome": outcome},
            now=moment,
        )
    return row
