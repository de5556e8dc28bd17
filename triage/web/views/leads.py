"""The sales pages of the console: the lead queue (`/leads`), a lead (`/leads/{id}`) and what
staff do with it (claim, assign, status, note, not a lead, wrong label).

Every action is a plain form POST answered with a redirect back to the lead page; a refused one
shows the lead page again with the domain's own words, the same the CLI prints. The changes go
through the same functions as `triage leads …` (`triage.sales.leads`), which write the audit log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from triage.core.models import LABELS
from triage.core.settings import Settings
from triage.sales import leads
from triage.sales.content import LeadView, lead_view, local_time, mailto, website_link
from triage.store.audit import AuditEntry
from triage.store.db import Database
from triage.store.leads import UNASSIGNED, LeadRecord, QueueFilter
from triage.store.leads import owners as lead_owners
from triage.web import accounts
from triage.web.app import Console, Page, user_of

STATUS_CHOICES = ("open", *leads.STATUSES, "all")
SORTS = {"activity": "newest activity first", "due": "due first"}
# What the lead page says after an action went through (`?done=`).
DONE = {
    "claim": "You claimed this lead.",
    "assign": "Lead assigned.",
    "status": "Status changed.",
    "note": "Note added.",
    "not-a-lead": "Dismissed as not a lead: its messages are labelled other for training.",
    "relabel": "Label corrected: its messages are relabelled for training.",
}


# --- the queue -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueForm:
    """The queue's filters as the GET form sends them (every value as typed, for the form)."""

    status: str = "open"
    kind: str = ""
    owner: str = ""
    overdue: bool = False
    q: str = ""
    sort: str = "activity"
    page: int = 1

    @classmethod
    def of(cls, params: Mapping[str, str]) -> QueueForm:
        """The filters of a request's query string; a page that is not a number is page 1."""
        page = params.get("page", "1")
        return cls(
            status=params.get("status", "open") or "open",
            kind=params.get("kind", ""),
            owner=params.get("owner", ""),
            overdue=params.get("overdue", "") not in ("", "0"),
            q=params.get("q", "")[:200],
            sort=params.get("sort", "activity") or "activity",
            page=int(page)
            if page.isascii() and page.isdigit() and 0 < int(page) < 1_000_000
            else 1,
        )

    def wanted(self) -> QueueFilter:
        """The store's filter (statuses and kind are checked by `leads.queue`)."""
        if self.status == "open":
            statuses: tuple[str, ...] = leads.OPEN_STATUSES
        elif self.status == "all":
            statuses = leads.STATUSES
        else:
            statuses = (self.status,)
        return QueueFilter(
            statuses=statuses,
            kind=self.kind or None,
            owner=self.owner or None,
            overdue=self.overdue,
            search=self.q,
            sort=self.sort,
        )

    def link(self, page: int) -> str:
        """The queue URL with these filters on `page`."""
        values: dict[str, str] = {
            "status": self.status,
            "kind": self.kind,
            "owner": self.owner,
            "overdue": "1" if self.overdue else "",
            "q": self.q,
            "sort": self.sort,
            "page": str(page),
        }
        return "/leads?" + urlencode({k: v for k, v in values.items() if v})


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One lead of the queue: the lead and its display values (as the digest shows them)."""

    lead: LeadRecord
    view: LeadView
    activity: str


def _queue(db: Database, form: QueueForm, settings: Settings) -> dict[str, Any]:
    now = datetime.now(UTC)
    found = leads.queue(db, form.wanted(), now, page=form.page)
    rows = [
        QueueRow(lead, lead_view(lead, now, settings), local_time(lead.updated_at, settings))
        for lead in found.leads
    ]
    return {"found": found, "rows": rows, "owners": lead_owners(db.reads)}


async def lead_queue(request: Request, console: Console) -> Response:
    form = QueueForm.of(request.query_params)
    context: dict[str, Any] = {
        "form": form,
        "statuses": STATUS_CHOICES,
        "kinds": leads.KINDS,
        "sorts": SORTS,
        "unassigned": UNASSIGNED,
        "error": "",
    }
    try:
        context.update(await console.run(_queue, form, console.settings))
    except leads.LeadError as exc:
        owners = await console.run(lambda db: lead_owners(db.reads))
        context.update(found=None, rows=[], owners=owners, error=str(exc))
        return console.render(request, "leads.html", context, status=400)
    return console.render(request, "leads.html", context)


# --- one lead ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a lead's timeline: when, who, what."""

    at: str
    actor: str
    text: str


def describe(entry: AuditEntry) -> str:
    """What an audit entry about a lead says, in words."""
    d = entry.detail
    if entry.action == "lead.claim":
        was = f" (was assigned to {d['was_owner']})" if d.get("was_owner") else ""
        return f"claimed it{was}"
    if entry.action == "lead.assign":
        was = f" (was {d['was_owner']})" if d.get("was_owner") else ""
        return f"assigned it to {d.get('to', '?')}{was}"
    if entry.action == "lead.status":
        extra = " as not a lead" if d.get("not_a_lead") else ""
        owner = f", owner {d['owner']}" if d.get("owner") else ""
        return f"status {d.get('from', '?')} → {d.get('to', '?')}{extra}{owner}"
    if entry.action == "lead.note":
        return "added a note"
    if entry.action == "lead.relabel":
        return f"relabelled it {d.get('label', '?')} (was {d.get('was', '?')}) for training"
    return entry.action


def timeline(lead: LeadRecord, history: list[AuditEntry], settings: Settings) -> list[Event]:
    """The lead's creation, then every recorded change with who made it, oldest first."""
    events = [Event(local_time(lead.created_at, settings), "triage", f"{lead.kind} lead created")]
    for entry in history:
        at = datetime.fromisoformat(entry.at)
        events.append(Event(local_time(at, settings), entry.actor or "?", describe(entry)))
    return events


def staff_choices(db: Database, settings: Settings) -> list[str]:
    """Who a lead may be given to: the console's users and `leads.staff`, each once."""
    names = [*accounts.staff_names(db), *(s.strip() for s in settings.leads.staff)]
    return sorted({name for name in names if name}, key=str.lower)


def _lead_page(db: Database, lead_id: int, settings: Settings) -> dict[str, Any]:
    now = datetime.now(UTC)
    try:
        found = leads.page(db, lead_id)
    except leads.LeadError as exc:
        raise HTTPException(404, str(exc)) from None
    lead = found.detail.lead
    website_url, website_host = website_link(lead.website)
    return {
        "lead": lead,
        "view": lead_view(lead, now, settings),
        "messages": found.detail.messages,
        "total_messages": found.total_messages,
        # The reasons of every message's decision, each once, in order.
        "reasons": list(dict.fromkeys(r for m in found.detail.messages for r in m.reasons)),
        "notes": found.detail.notes,
        "replies": found.replies,
        "events": timeline(lead, found.history, settings),
        "mailto": mailto(lead.email),
        "website_url": website_url,
        "website_host": website_host,
        "next_statuses": leads.TRANSITIONS[lead.status],
        "other_labels": [label for label in LABELS if label != lead.label],
        "staff": staff_choices(db, settings),
        "when": lambda moment: local_time(moment, settings),
    }


async def show_lead(
    request: Request, console: Console, error: str = "", status: int = 200
) -> Response:
    lead_id: int = request.path_params["lead_id"]
    context = await console.run(_lead_page, lead_id, console.settings)
    done = request.query_params.get("done", "") if not error else ""
    context.update(error=error, notice=DONE.get(done, ""))
    return console.render(request, "lead.html", context, status=status)


# --- actions -------------------------------------------------------------------------------------

# (store, lead id, the user's name, the form, the settings) → the changed lead.
Action = Callable[[Database, int, str, Mapping[str, str], Settings], object]


def _field(form: Mapping[str, str], name: str) -> str:
    return str(form.get(name) or "").strip()


def _claim(
    db: Database, lead_id: int, by: str, form: Mapping[str, str], settings: Settings
) -> object:
    return leads.claim(db, lead_id, by)


def _assign(
    db: Database, lead_id: int, by: str, form: Mapping[str, str], settings: Settings
) -> object:
    to = _field(form, "to")
    staff = staff_choices(db, settings)
    if to and to not in staff:
        raise leads.LeadError(f"unknown colleague {to!r}; one of: {', '.join(staff)}")
    return leads.assign(db, lead_id, to, by)


def _status(
    db: Database, lead_id: int, by: str, form: Mapping[str, str], settings: Settings
) -> object:
    status = _field(form, "status")
    if not status:
        raise leads.LeadError("nothing to update: give --status and/or --note")
    return leads.update(db, lead_id, status=status, by=by)


def _note(
    db: Database, lead_id: int, by: str, form: Mapping[str, str], settings: Settings
) -> object:
    return leads.update(db, lead_id, note=str(form.get("note") or ""), by=by)


def _not_a_lead(
    db: Database, lead_id: int, by: str, form: Mapping[str, str], settings: Settings
) -> object:
    return leads.update(db, lead_id, status="dismissed", not_a_lead=True, by=by)


def _relabel(
    db: Database, lead_id: int, by: str, form: Mapping[str, str], settings: Settings
) -> object:
    return leads.relabel(db, lead_id, _field(form, "label").lower(), by=by)


def action(name: str, act: Action) -> Callable[[Request, Console], Awaitable[Response]]:
    """The POST handler of one lead action: do it as the logged-in user, then back to the lead
    page (303); a refusal shows the lead page with the domain's words (409)."""

    async def handler(request: Request, console: Console) -> Response:
        lead_id: int = request.path_params["lead_id"]
        form = {k: str(v) for k, v in request.state.form.items()}
        try:
            await console.run(act, lead_id, user_of(request).name, form, console.settings)
        except leads.LeadError as exc:
            # An unknown lead is a missing page, not a refused action.
            if str(exc) == f"no lead {lead_id}":
                raise HTTPException(404, str(exc)) from None
            return await show_lead(request, console, error=str(exc), status=409)
        return RedirectResponse(f"/leads/{lead_id}?done={name}", status_code=303)

    return handler


ACTIONS: dict[str, Action] = {
    "claim": _claim,
    "assign": _assign,
    "status": _status,
    "note": _note,
    "not-a-lead": _not_a_lead,
    "relabel": _relabel,
}

PAGES: list[Page] = [
    Page("/leads", lead_queue),
    Page("/leads/{lead_id:int}", show_lead),
    *(
        Page(f"/leads/{{lead_id:int}}/{name}", action(name, act), methods=("POST",))
        for name, act in ACTIONS.items()
    ),
]
