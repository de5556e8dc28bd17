"""The review queue of the console (`/review`): messages the classifier was unsure about, each
with its text, the model's probabilities and explanation, and one button per label.

Labelling goes through `triage.sales.review.label`, as `triage review label` does: a sales label
makes the hot lead at once, and the label is a correction the model learns from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from triage.core.models import LABELS
from triage.core.sanitize import strip_invisible
from triage.core.settings import Settings
from triage.sales import review
from triage.sales.content import local_time
from triage.sales.leads import age
from triage.store.db import Database
from triage.web.app import Console, Page, user_of, whole_number

SHOWN = 50  # review items on the page; the rest are counted


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """One message waiting for review, as the page shows it (invisible characters removed)."""

    id: int
    sender: str
    subject: str
    body: str
    guess: str
    confidence: str
    uncertainty: str
    probabilities: list[tuple[str, str]]
    explanation: list[str]
    received: str
    age: str


def _row(item: review.ReviewItem, now: datetime, settings: Settings) -> ReviewRow:
    return ReviewRow(
        id=item.row_id,
        sender=strip_invisible(item.sender),
        subject=strip_invisible(item.subject),
        body=strip_invisible(item.body),
        guess=item.guess,
        confidence=f"{item.confidence:.0%}",
        uncertainty="" if item.uncertainty is None else f"{item.uncertainty:.2f}",
        probabilities=[(label, f"{p:.0%}") for label, p in item.probabilities],
        explanation=[strip_invisible(term) for term in item.explanation],
        received=local_time(item.received_at, settings),
        age=age(item.received_at, now),
    )


def _queue(db: Database, settings: Settings) -> dict[str, Any]:
    now = datetime.now(UTC)
    items = review.pending(db.reads, SHOWN)
    return {
        "waiting": [_row(item, now, settings) for item in items],
        "count": review.pending_count(db.reads),
    }


def notice(params: Any) -> tuple[str, int | None]:
    """The line shown after a label was given (`?labelled=ID&label=L[&lead=N]`), in the CLI's
    words, and the lead it made or joined; ("", None) when the query does not describe one."""
    row, label, lead = params.get("labelled", ""), params.get("label", ""), params.get("lead", "")
    if whole_number(row) is None or label not in LABELS:
        return "", None
    lead_id = whole_number(lead)
    made = f"; lead {lead_id}" if lead_id is not None else ""
    return f"message {row} labelled {label}{made}", lead_id


async def review_queue(
    request: Request, console: Console, error: str = "", status: int = 200
) -> Response:
    context = await console.run(_queue, console.settings)
    text, lead_id = ("", None) if error else notice(request.query_params)
    context.update(labels=LABELS, error=error, notice=text, notice_lead=lead_id)
    return console.render(request, "review.html", context, status=status)


async def give_label(request: Request, console: Console) -> Response:
    row_id: int = request.path_params["row_id"]
    new_label = str(request.state.form.get("label") or "").strip().lower()
    try:
        done = await console.run(
            review.label, row_id, new_label, console.settings, by=user_of(request).name
        )
    except review.ReviewError as exc:
        return await review_queue(request, console, error=str(exc), status=409)
    query = {"labelled": str(done.row_id), "label": done.label}
    if done.lead_id is not None:
        query["lead"] = str(done.lead_id)
    return RedirectResponse(f"/review?{urlencode(query)}", status_code=303)


PAGES: list[Page] = [
    Page("/review", review_queue),
    Page("/review/{row_id:int}/label", give_label, methods=("POST",)),
]
