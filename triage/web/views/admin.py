"""The admins' read-only pages: the decisions log (`/decisions`, `/decisions/{id}`), the model
(`/model`) and the service's health (`/health`).

Everything here is read from the store and the model card; the console runs apart from the
daemon, so the health page shows what the store records and, when the daemon's own health
endpoint answers on this machine, what it says.
"""

from __future__ import annotations

import email
import email.policy
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from triage.core.errors import ModelError
from triage.core.models import DECISIONS
from triage.core.settings import Settings
from triage.decide.classify import ModelCard, read_card, rule_decided
from triage.store import console as store
from triage.store.corrections import CorrectionRow, list_corrections
from triage.store.db import Database
from triage.store.outbox import QueueEntry, entries
from triage.web.app import Console, Page, whole_number

CORRECTIONS_SHOWN = 100
HEALTH_TIMEOUT = 1.0  # seconds: the page must not wait on a daemon that does not answer
REPLY_TEXT_LIMIT = 20_000


# --- decisions -----------------------------------------------------------------------------------


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100_000:
        raise HTTPException(400, "page must be a whole number from 1")
    return int(raw)


async def decisions(request: Request, console: Console) -> Response:
    decision = request.query_params.get("decision") or None
    if decision is not None and decision not in DECISIONS:
        raise HTTPException(400, f"unknown decision; one of: {', '.join(DECISIONS)}")
    page = _page_number(request)
    rows, more = await console.run(lambda db: store.recent_decisions(db.reads, decision, page - 1))
    return console.render(
        request,
        "decisions.html",
        {
            "rows": rows,
            "more": more,
            "page": page,
            "decision": decision or "",
            "choices": DECISIONS,
        },
    )


def reply_text(raw: bytes) -> str:
    """The plain-text part of a composed reply, or "" when it has none (a person reads this)."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain",))
        text = part.get_content() if part is not None else ""
    except (LookupError, ValueError, TypeError, AttributeError):
        return ""
    return str(text)[:REPLY_TEXT_LIMIT]


async def decision(request: Request, console: Console) -> Response:
    raw_id = request.path_params["id"]
    row_id = whole_number(str(raw_id))
    if row_id is None:
        raise HTTPException(404, "no such message")
    found = await console.run(lambda db: store.decision_detail(db.reads, row_id))
    if found is None:
        raise HTTPException(404, f"no message {raw_id} in the store")
    probabilities = sorted(found.probabilities.items(), key=lambda kv: -kv[1])
    return console.render(
        request,
        "decision.html",
        {
            "m": found,
            "probabilities": probabilities,
            "by_rule": rule_decided(found.reasons),
            "reply_text": reply_text(found.reply.raw) if found.reply else "",
        },
    )


# --- model ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelView:
    """The live model's card (or why it cannot be read) and the corrections since it."""

    path: Path
    card: ModelCard | None
    error: str
    thresholds: dict[str, tuple[float, str]]  # label -> (value, "card" or "settings")
    corrections_total: int
    corrections_new: int
    corrections: list[CorrectionRow]
    created: datetime | None


def _created(card: ModelCard | None) -> datetime | None:
    if card is None:
        return None
    try:
        moment = datetime.fromisoformat(card.created)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def model_view(db: Database, settings: Settings) -> ModelView:
    """What `/model` shows. The model is the one the daemon loads: `classifier.model_path` as
    configured (the shipped model unless set), read the same way (`read_card`)."""
    path = settings.classifier.model_path
    card: ModelCard | None = None
    error = ""
    try:
        card = read_card(path)
    except ModelError as exc:
        error = str(exc)
    configured = dict(settings.classifier.thresholds)
    thresholds: dict[str, tuple[float, str]] = {}
    if card is not None:
        thresholds = {k: (float(v), "card") for k, v in card.thresholds.items()}
    thresholds.update({k: (float(v), "settings") for k, v in configured.items()})
    created = _created(card)
    total, new = store.corrections_since(db.reads, created)
    return ModelView(
        path=path,
        card=card,
        error=error,
        thresholds=thresholds,
        corrections_total=total,
        corrections_new=new,
        corrections=list_corrections(db.reads, CORRECTIONS_SHOWN),
        created=created,
    )


def cross_validation(card: ModelCard | None) -> dict[str, Any]:
    """The card's cross-validation figures, {} when it has none (an older card)."""
    if card is None:
        return {}
    found = card.evaluation.get("cross_validation")
    return found if isinstance(found, dict) else {}


async def model(request: Request, console: Console) -> Response:
    view = await console.run(model_view, console.settings)
    cv = cross_validation(view.card)
    labels = cv.get("labels")
    return console.render(
        request,
        "model.html",
        {
            "v": view,
            "cv": cv,
            "cv_labels": labels if isinstance(labels, dict) else {},
        },
    )


# --- health --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaemonHealth:
    """What the daemon's /healthz said, or why it could not be asked."""

    url: str
    reachable: bool
    healthy: bool
    text: str


def health_url(settings: Settings) -> str | None:
    """The daemon's /healthz at its configured address (`daemon.health_host`, loopback by
    default), or None when its endpoint is switched off. A wildcard address (listening
    everywhere) is asked on loopback."""
    daemon = settings.daemon
    if daemon.health_port == 0:
        return None
    host = daemon.health_host.strip("[]")
    if host in ("", "0.0.0.0"):  # noqa: S104 - the daemon's wildcard, asked on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{daemon.health_port}/healthz"


def ask_daemon(url: str, timeout: float = HEALTH_TIMEOUT) -> DaemonHealth:
    """GET `url` within `timeout` seconds: 200 is healthy, 503 names the failing mailboxes."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - http only
            body = answer.read(8192).decode("utf-8", "replace")
            return DaemonHealth(url, True, True, body.strip())
    except urllib.error.HTTPError as exc:
        body = exc.read(8192).decode("utf-8", "replace")
        return DaemonHealth(url, True, False, body.strip() or f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return DaemonHealth(url, False, False, f"not reachable: {reason}")


@dataclass(frozen=True, slots=True)
class HealthView:
    """What `/health` shows."""

    mailboxes: list[store.MailboxRow]
    outbox: list[store.OutboxState]
    uncertain: list[QueueEntry]
    daemon: DaemonHealth | None


def health_view(db: Database, settings: Settings) -> HealthView:
    """The store's mailboxes and delivery queue, and the daemon's own word when it answers."""
    url = health_url(settings)
    return HealthView(
        mailboxes=store.mailboxes(db.reads),
        outbox=store.outbox_states(db.reads),
        uncertain=entries(db.reads, ["uncertain"]),
        daemon=ask_daemon(url) if url is not None else None,
    )


def age(moment: datetime | None, now: datetime) -> str:
    """How long ago `moment` was, in the largest sensible unit ("–" for None)."""
    if moment is None:
        return "–"
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


async def health(request: Request, console: Console) -> Response:
    view = await console.run(health_view, console.settings)
    now = datetime.now(UTC)
    return console.render(
        request,
        "health.html",
        {
            "v": view,
            "now": now,
            "age": lambda moment: age(moment, now),
            "max_sync_age": console.settings.daemon.health_max_sync_age,
        },
    )


PAGES = [
    Page("/decisions", decisions, admin=True),
    Page("/decisions/{id}", decision, admin=True),
    Page("/model", model, admin=True),
    Page("/health", health, admin=True),
]
