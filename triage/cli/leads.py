"""`triage leads …`, `triage review …` and `triage digest`: the sales team's side of triage.

Mistakes (an unknown lead or message id, an unknown status or label, a status change the workflow
does not allow) end with one line on stderr and exit code 2. Everything heavy is imported inside
the commands so that `triage --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from triage.cli.common import EXIT_FAILURE, EXIT_USAGE, current_user, fail, load, user_errors
from triage.core.sanitize import strip_invisible

if TYPE_CHECKING:
    from triage.core.settings import Settings
    from triage.store.corrections import LeadCorrections
    from triage.store.db import Database
    from triage.store.leads import LeadRecord

leads_app = typer.Typer(
    help="The lead queue: list, show, claim, assign, update, relabel and export leads.",
    no_args_is_help=True,
)
review_app = typer.Typer(
    help="Messages the classifier was unsure about: list them and give them a label.",
    no_args_is_help=True,
)


@contextmanager
def _store(ctx: typer.Context) -> Iterator[tuple[Settings, Database]]:
    """Settings and the open database; lead/review mistakes exit 2, other errors as usual."""
    settings = load(ctx)
    with user_errors():
        from triage.sales.leads import LeadError
        from triage.sales.review import ReviewError
        from triage.store.db import Database

        db = Database(settings.store)
        try:
            yield settings, db
        except (LeadError, ReviewError) as exc:
            fail(str(exc), EXIT_USAGE)
        finally:
            db.close()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print rows in aligned columns; the last column is not padded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(moment: datetime | None, settings: Settings) -> str:
    from triage.sales.digest import local_time

    return local_time(moment, settings)


def _contact(lead: LeadRecord) -> str:
    if lead.name and lead.email:
        who = f"{lead.name} <{lead.email}>"
    else:
        who = lead.name or lead.email or "(no valid address)"
    return f"{who} ({lead.company})" if lead.company else who


# --- triage leads --------------------------------------------------------------------------------


@leads_app.command("list")
def list_leads(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status", "-s", help="Only this status (repeatable). Default: the open ones."
        ),
    ] = None,
    kind: str | None = typer.Option(None, "--kind", "-k", help="hot or nurture."),
    every: bool = typer.Option(False, "--all", "-a", help="Every status, closed ones too."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table."),
) -> None:
    """List leads, oldest first: open ones unless --status or --all says otherwise."""
    from triage.sales import leads

    with _store(ctx) as (settings, db):
        statuses = leads.STATUSES if every else tuple(status or leads.OPEN_STATUSES)
        found = [leads.for_staff(lead) for lead in leads.list_leads(db, statuses, kind)]
        now = datetime.now(UTC)
        if as_json:
            _print_json([leads.lead_as_dict(lead, now) for lead in found])
            return
        if not found:
            print("no leads")
            return
        rows = [
            [
                str(lead.id),
                lead.kind,
                lead.status,
                lead.owner or "-",
                leads.age(lead.created_at, now),
                (_when(lead.due_at, settings) or "-")
                + (" OVERDUE" if leads.is_overdue(lead, now) else ""),
                _cut(_contact(lead), 48),
                _cut(lead.first_subject, 40),
            ]
            for lead in found
        ]
        _table(["ID", "KIND", "STATUS", "OWNER", "AGE", "DUE", "CONTACT", "SUBJECT"], rows)


@leads_app.command("show")
def show(
    ctx: typer.Context,
    lead_id: int = typer.Argument(..., metavar="ID", help="The lead's id."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of text."),
) -> None:
    """Show one lead: contact, status, why it is a lead, every message and note."""
    from triage.sales import leads

    with _store(ctx) as (settings, db):
        detail = leads.detail_for_staff(leads.show(db, lead_id))
        now = datetime.now(UTC)
        if as_json:
            _print_json(leads.detail_as_dict(detail, now))
            return
        lead = detail.lead
        late = (
            f" (overdue since {_when(lead.due_at, settings)})"
            if leads.is_overdue(lead, now)
            else ""
        )
        print(f"Lead {lead.id}: {lead.kind}, {lead.status}{late}")
        for label, value in (
            ("Name", lead.name),
            ("Email", lead.email),
            ("Company", lead.company),
            ("Phone", lead.phone),
            ("Website", lead.website),
            ("Owner", lead.owner or "unassigned"),
            ("Why", f"{lead.label}, {lead.confidence:.0%}: {', '.join(lead.explanation)}"),
            ("Created", _when(lead.created_at, settings)),
            ("Due", _when(lead.due_at, settings)),
            ("Claimed", _when(lead.claimed_at, settings)),
            ("Contacted", _when(lead.contacted_at, settings)),
            ("Closed", _when(lead.closed_at, settings)),
        ):
            if value:
                print(f"  {label + ':':<11}{value}")
        print(f"\nMessages ({len(detail.messages)}):")
        for m in detail.messages:
            print(
                f"  [{_when(m.received_at, settings)}] {m.subject or '(no subject)'} <{m.sender}>"
            )
            body = m.body.strip() or "(text removed by retention)"
            print("    " + body.replace("\n", "\n    "))
        if detail.notes:
            print(f"\nNotes ({len(detail.notes)}):")
            for n in detail.notes:
                by = f"{n.author}: " if n.author else ""
                print(f"  [{_when(n.created_at, settings)}] {by}{n.text}")


@leads_app.command("claim")
def claim(
    ctx: typer.Context,
    lead_id: int = typer.Argument(..., metavar="ID", help="The lead's id."),
    by: str = typer.Option(..., "--by", help="Who takes the lead (becomes its owner)."),
) -> None:
    """Take a new lead: it becomes claimed, with you as its owner."""
    from triage.sales import leads

    with _store(ctx) as (_settings, db):
        before = leads.show(db, lead_id).lead.owner
        lead = leads.claim(db, lead_id, by)
        was = f" (was assigned to {before})" if before and before != lead.owner else ""
        print(f"lead {lead.id} claimed by {lead.owner}{was}")


@leads_app.command("assign")
def assign(
    ctx: typer.Context,
    lead_id: int = typer.Argument(..., metavar="ID", help="The lead's id."),
    to: str = typer.Option(..., "--to", help="Who gets the lead (becomes its owner)."),
    by: str = typer.Option("", "--by", help="Who you are (default: your login name)."),
) -> None:
    """Give an open lead to a colleague: they become its owner; its status stays."""
    from triage.sales import leads

    with _store(ctx) as (_settings, db):
        before = leads.show(db, lead_id).lead.owner
        lead = leads.assign(db, lead_id, to, by or current_user())
        was = f" (was {before})" if before and before != lead.owner else ""
        print(f"lead {lead.id} assigned to {lead.owner}{was}")


@leads_app.command("update")
def update(
    ctx: typer.Context,
    lead_id: int = typer.Argument(..., metavar="ID", help="The lead's id."),
    status: str | None = typer.Option(
        None, "--status", "-s", help="claimed, contacted, won, lost or dismissed."
    ),
    note: str | None = typer.Option(None, "--note", "-n", help="Add a note to the lead."),
    by: str = typer.Option("", "--by", help="Who you are (default: your login name)."),
    not_a_lead: bool = typer.Option(
        False,
        "--not-a-lead",
        help="With --status dismissed: it was no lead at all; its messages are labelled other "
        "for training.",
    ),
) -> None:
    """Move a lead on (new → claimed → contacted → won/lost, or dismissed) and/or add a note.

    Won and lost confirm the lead's label for training; dismissed --not-a-lead corrects it to
    other."""
    from triage.sales import leads

    with _store(ctx) as (_settings, db):
        done = leads.update(
            db, lead_id, status=status, note=note, by=by or current_user(), not_a_lead=not_a_lead
        )
        lead = done.lead
        print(f"lead {lead.id} is {lead.status}" + (" (note added)" if note else ""))
        if done.corrections is not None:
            _print_corrections(done.corrections)


@leads_app.command("relabel")
def relabel(
    ctx: typer.Context,
    lead_id: int = typer.Argument(..., metavar="ID", help="The lead's id."),
    label: str = typer.Argument(..., metavar="LABEL", help="The right label: marketing or other."),
    by: str = typer.Option("", "--by", help="Who you are (default: your login name)."),
) -> None:
    """The lead's label was wrong: record the right one for training (its status stays)."""
    from triage.sales import leads

    with _store(ctx) as (_settings, db):
        done = leads.relabel(db, lead_id, label.strip().lower(), by=by or current_user())
        assert done.corrections is not None
        print(f"lead {done.lead.id} relabelled {done.corrections.label}")
        _print_corrections(done.corrections)


def _print_corrections(found: LeadCorrections) -> None:
    """Say what a lead change taught the model, and which messages could not be used."""
    from triage.store.corrections import weight_for

    print(
        f"{found.added} correction(s) recorded: {found.label} ({found.source}, weight "
        f"{weight_for(found.source):g})"
    )
    for note in found.skipped:
        print(f"  skipped: {note}")


@leads_app.command("export")
def export(
    ctx: typer.Context,
    csv_format: bool = typer.Option(True, "--csv", help="CSV for a CRM import (the default)."),
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to FILE instead of stdout.", dir_okay=False),
    ] = None,
    excel_safe: bool = typer.Option(
        False,
        "--excel-safe",
        help="Prefix ' to values a spreadsheet would run as formulas (=, +, -, @).",
    ),
) -> None:
    """Export every lead as CSV (RFC 4180, UTF-8): one row per lead, a header row first."""
    import io

    from triage.sales import leads

    del csv_format  # the only format; the flag documents it
    with _store(ctx) as (_settings, db):
        rows = leads.export_rows(db)
        if output is not None:
            try:
                with output.open("w", encoding="utf-8", newline="") as fh:
                    count = leads.write_csv(rows, fh, excel_safe=excel_safe)
            except OSError as exc:
                fail(f"cannot write {output}: {exc.strerror}", EXIT_FAILURE)
            print(f"{count} leads written to {output}", file=sys.stderr)
            return
        # newline="": the CRLF row ends and the line breaks inside values go out untouched.
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
        try:
            leads.write_csv(rows, out, excel_safe=excel_safe)
            out.flush()
        finally:
            out.detach()


# --- triage review -------------------------------------------------------------------------------


@review_app.command("list")
def review_list(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table."),
) -> None:
    """Messages waiting for a person's label, the most uncertain first (the label that would teach
    the model most; ties oldest first)."""
    from triage.sales.leads import age
    from triage.sales.review import pending

    with _store(ctx) as (_settings, db):
        items = pending(db.reads)
        now = datetime.now(UTC)
        if as_json:
            _print_json(
                [
                    {
                        "id": i.row_id,
                        "message_id": i.message_id,
                        "sender": strip_invisible(i.sender),
                        "subject": strip_invisible(i.subject),
                        "received": i.received_at.astimezone(UTC).isoformat(timespec="seconds"),
                        "guess": i.guess,
                        "confidence": round(i.confidence, 4),
                        "uncertainty": None if i.uncertainty is None else round(i.uncertainty, 4),
                        "explanation": [strip_invisible(term) for term in i.explanation],
                        "body": strip_invisible(i.body),
                    }
                    for i in items
                ]
            )
            return
        if not items:
            print("nothing waits for review")
            return
        rows = [
            [
                str(i.row_id),
                "-" if i.uncertainty is None else f"{i.uncertainty:.2f}",
                age(i.received_at, now),
                f"{i.guess} {i.confidence:.0%}",
                _cut(strip_invisible(i.sender), 36),
                _cut(strip_invisible(i.subject), 50),
            ]
            for i in items
        ]
        _table(["ID", "UNCERTAINTY", "AGE", "GUESS", "SENDER", "SUBJECT"], rows)
        print(
            f"\n{len(items)} waiting; label one with: triage review label ID sales|marketing|other"
        )


@review_app.command("label")
def review_label(
    ctx: typer.Context,
    row_id: int = typer.Argument(..., metavar="ID", help="The id `triage review list` shows."),
    label: str = typer.Argument(..., metavar="LABEL", help="sales, marketing or other."),
    by: str = typer.Option("", "--by", help="Who you are (default: your login name)."),
) -> None:
    """Label a message waiting for review; sales and marketing make (or join) a lead."""
    from triage.sales.review import label as give_label

    with _store(ctx) as (settings, db):
        done = give_label(db, row_id, label, settings, by=by or current_user())
        lead = f"; lead {done.lead_id}" if done.lead_id is not None else ""
        print(f"message {done.row_id} labelled {done.label}{lead}")


# --- triage digest -------------------------------------------------------------------------------


def digest(
    ctx: typer.Context,
    preview: bool = typer.Option(
        False, "--preview", help="Print the digest's text part (default)."
    ),
    html: bool = typer.Option(False, "--html", help="Print the digest's HTML part instead."),
    send: bool = typer.Option(False, "--send", help="Send a digest to digest.recipients now."),
    status: bool = typer.Option(False, "--status", help="List recent digests and alerts."),
) -> None:
    """Preview the sales digest, send one now, or list what was sent. A preview marks nothing."""
    from triage.sales import digest as digests

    if sum((send, status, preview or html)) > 1:
        fail("choose one of --preview/--html, --send and --status")
    with _store(ctx) as (settings, db):
        if status:
            for row in digests.status(db):
                when = row.sent_at or row.created_at
                note = f"  {row.error}" if row.error else ""
                print(
                    f"{row.id:>4}  {row.kind:<6} {row.state:<9} {when[:19]}  {row.message_id}{note}"
                )
            return
        if send:
            from triage.ops.service import smtp_connector

            run = digests.send_now(settings, db, connector=smtp_connector(settings))
            state = run.delivered.get(run.prepared or 0, "queued")
            counts = ", ".join(f"{v} {k}" for k, v in run.counts.items())
            if state != "sent":
                fail(
                    f"digest {run.prepared} is {state}, not sent ({counts}); "
                    "see triage outbox list",
                    EXIT_FAILURE,
                )
            print(
                f"digest {run.prepared} sent to {', '.join(settings.digest.recipients)}: {counts}"
            )
            return
        rendered = digests.preview(settings, db)
        print(rendered.html if html else f"Subject: {rendered.subject}\n\n{rendered.text}", end="")
