"""Admin pages for the reply templates: the list, the editor with a live preview, save, history
with diffs and rollback, and "send a test to me".

Every check, preview and write goes through `triage.act.template_edits` (the daemon's sandbox,
a temporary copy of the directory for previews, atomic writes with a version and an audit entry),
so the console can never make a broken template the active one. The rendered HTML part is shown
as its source, escaped, never as markup of the console page.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from triage.act import template_edits as edits
from triage.act.replies import Problem
from triage.core.errors import TemplateError
from triage.store import template_versions as versions
from triage.store.db import Database
from triage.store.template_versions import SampleMessage, TemplateVersion
from triage.web.app import Console, Page, user_of, whole_number

PARTS = ("subject", "txt", "html")
PART_TITLES = {"subject": "Subject", "txt": "Text", "html": "HTML"}
RECENT_MESSAGES = 20


def _directory(console: Console) -> Path:
    return Path(console.settings.replies.templates_dir)


def _file_param(value: Any) -> str:
    name = str(value or "")
    if not name:
        raise HTTPException(400, "which template? (file=NAME)")
    return name


def _resolved(console: Console, filename: str) -> edits.TemplateFile:
    """The editable file, or 400 for a path, a link or an unknown name."""
    try:
        return edits.resolve(_directory(console), filename)
    except edits.TemplateFileError as exc:
        raise HTTPException(400, str(exc)) from None


def _edit_url(filename: str, **extra: str | int) -> str:
    query = "".join(f"&{k}={quote(str(v), safe='')}" for k, v in extra.items())
    return f"/templates/edit?file={quote(filename, safe='')}{query}"


# --- the list -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One outcome in one language: its three parts (None where there is no file)."""

    outcome: str
    language: str
    parts: dict[str, edits.TemplateFile | None]


def _rows(files: list[edits.TemplateFile]) -> tuple[list[Row], list[edits.TemplateFile]]:
    sets: dict[tuple[str, str], dict[str, edits.TemplateFile | None]] = {}
    partials = []
    for f in files:
        if f.partial:
            partials.append(f)
            continue
        sets.setdefault((f.outcome, f.language), dict.fromkeys(PARTS))[f.part] = f
    rows = [Row(o, lang, parts) for (o, lang), parts in sorted(sets.items())]
    return rows, partials


async def list_page(request: Request, console: Console) -> Response:
    try:
        files = edits.editable_files(_directory(console))
    except TemplateError as exc:
        raise HTTPException(500, str(exc)) from None
    latest = await console.run(lambda db: versions.latest_by_file(db.reads))
    rows, partials = _rows(files)
    return console.render(
        request,
        "templates_list.html",
        {
            "rows": rows,
            "partials": partials,
            "parts": PARTS,
            "part_titles": PART_TITLES,
            "latest": latest,
            "directory": str(_directory(console)),
        },
    )


# --- the editor -----------------------------------------------------------------------------------


def _recent(db: Database) -> list[SampleMessage]:
    return versions.recent_messages(db.reads, RECENT_MESSAGES)


def _picked(db: Database, value: str) -> SampleMessage | None:
    if not value:
        return None
    number = whole_number(value)
    if number is None:
        raise HTTPException(400, "message must be a message number")
    found = versions.message(db.reads, number)
    if found is None:
        raise HTTPException(400, f"no sales or marketing message {value}")
    return found


async def _editor(
    request: Request,
    console: Console,
    filename: str,
    text: str,
    *,
    message: str = "",
    preview: edits.Preview | None = None,
    problems: list[Problem] | None = None,
    error: str = "",
    notice: str = "",
    base_form: str | None = None,
    status: int = 200,
) -> Response:
    target = _resolved(console, filename)
    try:
        # The text on disk now: a save from this page is refused once the file changes.
        base = edits.fingerprint(edits.read_text(_directory(console), filename))
    except edits.TemplateFileError as exc:
        raise HTTPException(400, str(exc)) from None
    recent = await console.run(_recent)
    history = await console.run(lambda db: versions.history(db.reads, filename))
    return console.render(
        request,
        "templates_edit.html",
        {
            "file": target,
            "text": text,
            "recent": recent,
            "message": message,
            "preview": preview,
            "problems": problems or [],
            "error": error,
            "notice": notice,
            "versions": history[:1],
            "base": base if base_form is None else base_form,
        },
        status=status,
    )


async def edit_page(request: Request, console: Console) -> Response:
    filename = _file_param(request.query_params.get("file"))
    _resolved(console, filename)
    try:
        text = edits.read_text(_directory(console), filename)
    except edits.TemplateFileError as exc:
        raise HTTPException(400, str(exc)) from None
    notice = ""
    if request.query_params.get("saved", "").isdigit():
        notice = f"Saved as version {request.query_params['saved']}; the daemon uses it now."
    elif request.query_params.get("tested", "").isdigit():
        notice = "A test reply is queued to your address; the daemon sends it shortly."
    return await _editor(
        request,
        console,
        filename,
        text,
        message=request.query_params.get("message", ""),
        notice=notice,
    )


@dataclass(frozen=True, slots=True)
class Edit:
    """The editor's form: the file, the edited text, the message to preview against, and the
    fingerprint of the text the editor loaded (`base`)."""

    filename: str
    text: str
    message: str
    base: str


def _form(request: Request, console: Console) -> Edit:
    form = request.state.form
    filename = _file_param(form.get("file"))
    _resolved(console, filename)
    return Edit(
        filename,
        edits.normalised(str(form.get("text") or "")),
        str(form.get("message") or ""),
        str(form.get("base") or ""),
    )


async def _again(
    request: Request,
    console: Console,
    edit: Edit,
    *,
    status: int = 200,
    keep_base: bool = True,
    **context: Any,
) -> Response:
    """The editor again with the text as sent: the same base unless told otherwise."""
    return await _editor(
        request,
        console,
        edit.filename,
        edit.text,
        message=edit.message,
        base_form=edit.base if keep_base else None,
        status=status,
        **context,
    )


async def preview_post(request: Request, console: Console) -> Response:
    edit = _form(request, console)
    picked = await console.run(_picked, edit.message)
    replies = console.settings.replies
    reply_to = edits.stored_reply_to(picked) if picked is not None else None
    try:
        shown = await console.run(
            lambda _db: edits.preview(
                _directory(console), edit.filename, edit.text, replies, reply_to
            )
        )
    except TemplateError as exc:  # the directory could not be copied, say
        shown = edits.Preview((Problem(edit.filename, None, str(exc)),), "")
    if request.headers.get("hx-request") == "true":
        return console.render(request, "templates_preview.html", {"preview": shown})
    return await _again(request, console, edit, preview=shown)


async def save_post(request: Request, console: Console) -> Response:
    edit = _form(request, console)
    who = user_of(request).name
    replies = console.settings.replies
    try:
        version = await console.run(
            lambda db: edits.save(
                db, _directory(console), edit.filename, edit.text, replies, who, expected=edit.base
            )
        )
    except edits.TemplateRefused as exc:
        error = "Not saved: the template has problems."
        return await _again(request, console, edit, problems=exc.problems, error=error, status=400)
    except edits.TemplateConflict as exc:
        # Shown with the file's current fingerprint: saving again replaces it on purpose.
        return await _again(request, console, edit, error=str(exc), status=409, keep_base=False)
    except TemplateError as exc:
        return await _again(request, console, edit, error=str(exc), status=400)
    return RedirectResponse(_edit_url(edit.filename, saved=version), status_code=303)


async def test_post(request: Request, console: Console) -> Response:
    edit = _form(request, console)
    user = user_of(request)
    replies = console.settings.replies
    try:
        await console.run(
            edits.send_test,
            _directory(console),
            edit.filename,
            edit.text,
            replies,
            user.name,
            user.email,
        )
    except edits.TemplateRefused as exc:
        error = "No test sent: the template has problems."
        return await _again(request, console, edit, problems=exc.problems, error=error, status=400)
    except TemplateError as exc:
        return await _again(request, console, edit, error=str(exc), status=400)
    return RedirectResponse(_edit_url(edit.filename, tested=1), status_code=303)


# --- history and rollback -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One version with its diff against the version before it."""

    version: TemplateVersion
    diff: str
    current: bool

    @property
    def lines(self) -> list[tuple[str, str]]:
        """The diff's lines with a class each: added, removed, a hunk header, or context."""
        kinds = []
        for line in self.diff.splitlines(keepends=True):
            if line.startswith(("+++", "---")):
                kind = "diff-file"
            elif line.startswith("@@"):
                kind = "diff-hunk"
            elif line.startswith("+"):
                kind = "diff-add"
            elif line.startswith("-"):
                kind = "diff-del"
            else:
                kind = "diff-same"
            kinds.append((kind, line))
        return kinds


def _changes(history: list[TemplateVersion], on_disk: str) -> list[Change]:
    changes = []
    for i, version in enumerate(history):
        before = history[i + 1] if i + 1 < len(history) else None
        if before is None:
            diff = ""
        else:
            # One line each, whether or not a text ends with a newline.
            diff = "\n".join(
                difflib.unified_diff(
                    before.text.splitlines(),
                    version.text.splitlines(),
                    fromfile=f"version {before.id}",
                    tofile=f"version {version.id}",
                    lineterm="",
                )
            )
        changes.append(Change(version, diff, i == 0 and version.text == on_disk))
    return changes


async def _history(
    request: Request,
    console: Console,
    filename: str,
    *,
    error: str = "",
    notice: str = "",
    base_form: str | None = None,
    status: int = 200,
) -> Response:
    target = _resolved(console, filename)
    history = await console.run(lambda db: versions.history(db.reads, filename))
    try:
        on_disk = edits.read_text(_directory(console), filename)
    except edits.TemplateFileError as exc:
        raise HTTPException(400, str(exc)) from None
    return console.render(
        request,
        "templates_history.html",
        {
            "file": target,
            "changes": _changes(history, on_disk),
            "error": error,
            "notice": notice,
        },
        status=status,
    )


async def history_page(request: Request, console: Console) -> Response:
    filename = _file_param(request.query_params.get("file"))
    notice = ""
    if request.query_params.get("restored", "").isdigit():
        notice = f"Rolled back: version {request.query_params['restored']} is the active text."
    return await _history(request, console, filename, notice=notice)


async def rollback_post(request: Request, console: Console) -> Response:
    form = request.state.form
    filename = _file_param(form.get("file"))
    _resolved(console, filename)
    raw_version = str(form.get("version") or "")
    version_id = whole_number(raw_version)
    if version_id is None:
        raise HTTPException(400, "version must be a version number")
    who = user_of(request).name
    replies = console.settings.replies
    try:
        version = await console.run(
            edits.rollback, _directory(console), filename, version_id, replies, who
        )
    except edits.TemplateFileError as exc:
        raise HTTPException(400, str(exc)) from None
    except edits.TemplateRefused as exc:
        lines = "; ".join(str(p) for p in exc.problems)
        return await _history(
            request, console, filename, error=f"Not rolled back: {lines}", status=400
        )
    except TemplateError as exc:
        return await _history(request, console, filename, error=str(exc), status=400)
    target = f"/templates/history?file={quote(filename, safe='')}&restored={version}"
    return RedirectResponse(target, status_code=303)


PAGES: list[Page] = [
    Page("/templates", list_page, admin=True),
    Page("/templates/edit", edit_page, admin=True),
    Page("/templates/preview", preview_post, methods=("POST",), admin=True),
    Page("/templates/save", save_post, methods=("POST",), admin=True),
    Page("/templates/test", test_post, methods=("POST",), admin=True),
    Page("/templates/history", history_page, admin=True),
    Page("/templates/rollback", rollback_post, methods=("POST",), admin=True),
]
