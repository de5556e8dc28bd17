"""`triage webhooks …`: the CRM endpoints, their queue and failures; replay an event; ping.

Mistakes (an unknown endpoint or event) end with one line on stderr and exit code 2; a ping
that gets no 2xx exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from triage.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    current_user,
    existing_store,
    fail,
    load,
    user_errors,
)

if TYPE_CHECKING:
    pass

app = typer.Typer(
    help="Signed lead webhooks to CRMs: list endpoints and failures, replay an event, ping.",
    no_args_is_help=True,
)


@contextmanager
def _mistakes() -> Iterator[None]:
    """A WebhookError (an unknown endpoint or event) is the user's mistake: exit 2."""
    from triage.act.webhooks import WebhookError

    try:
        yield
    except WebhookError as exc:
        fail(str(exc), EXIT_USAGE)


def _state(disabled_at: str | None, configured: bool) -> str:
    if not configured:
        return "not configured"
    return "disabled" if disabled_at else "enabled"


@app.command("list")
def list_command(
    ctx: typer.Context,
    failures: int = typer.Option(10, "--failures", help="How many recent failures to show."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of text."),
) -> None:
    """The endpoints (state, deliveries by state), then the latest failed deliveries."""
    from triage.store import webhooks as store

    with existing_store(ctx) as (settings, db):
        known = {e.name: e for e in store.endpoint_states(db.reads)}
        failed = store.recent(db.reads, ["failed"], max(0, failures))
    endpoints: list[dict[str, Any]] = []
    for w in settings.webhooks:
        state = known.get(w.name)
        endpoints.append(
            {
                "name": w.name,
                "url": w.url,
                "events": list(w.events),
                "state": _state(state.disabled_at if state else None, True),
                "disabled_reason": state.disabled_reason if state else None,
                "failing_since": state.failing_since if state else None,
                "deliveries": state.counts if state else {},
            }
        )
    configured = {w.name for w in settings.webhooks}
    for name, state in known.items():
        if name not in configured:
            endpoints.append(
                {
                    "name": name,
                    "url": state.url,
                    "events": list(state.events),
                    "state": _state(state.disabled_at, False),
                    "disabled_reason": state.disabled_reason,
                    "failing_since": state.failing_since,
                    "deliveries": state.counts,
                }
            )
    recent = [
        {
            "event": d.event_id,
            "type": d.type,
            "endpoint": d.endpoint,
            "attempts": d.attempts,
            "status": d.status_code,
            "error": d.error,
        }
        for d in failed
    ]
    if as_json:
        print(json.dumps({"endpoints": endpoints, "failures": recent}, indent=2))
        return
    if not endpoints:
        print("no webhooks configured")
    for e in endpoints:
        counts = e["deliveries"]
        queue = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no deliveries"
        print(f"{e['name']}  {e['state']}  {e['url']}")
        print(f"    events: {' '.join(e['events'])}")
        print(f"    queue: {queue}")
        if e.get("disabled_reason"):
            print(f"    disabled: {e['disabled_reason']}")
    if recent:
        print("recent failures:")
        for f in recent:
            error = " ".join(str(f["error"] or "").split())[:120]
            print(f"  {f['event']}  {f['type']}  {f['endpoint']}  tries {f['attempts']}  {error}")


@app.command("replay")
def replay_command(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(metavar="EVENT_ID", help="msg_… (webhook-id).")],
    by: str = typer.Option("", "--by", help="Who asks (default: your user name)."),
) -> None:
    """Queue an event again, with the same webhook-id, for every endpoint that takes it; the
    running service sends it."""
    from triage.act.webhooks import replay

    with existing_store(ctx) as (settings, db), _mistakes():
        queued = replay(db, settings, event_id, by or current_user())
    if not queued:
        fail(f"{event_id} is being sent right now; nothing queued", EXIT_USAGE)
    print(f"{event_id} queued again for {', '.join(queued)}")


@app.command("enable")
def enable_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The endpoint's name.")],
) -> None:
    """Send to an endpoint again after a 410 Gone disabled it."""
    from triage.act.webhooks import enable

    with existing_store(ctx) as (settings, db), _mistakes():
        enable(db, settings, name)
    print(f"webhook {name} enabled")


@app.command("test")
def test_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The endpoint's name.")],
) -> None:
    """Send a signed `ping` event to an endpoint now (outside the queue) and show its answer."""
    from triage.act.webhooks import configured_endpoint, ping
    from triage.sales.leads import new_event_id

    settings = load(ctx)
    with user_errors(), _mistakes():
        endpoint = configured_endpoint(settings, name)
        event_id = new_event_id()
        answer = ping(endpoint, event_id)
    if answer.status is not None and 200 <= answer.status < 300:
        print(f"{name}: {answer.error} (ping {event_id})")
        return
    fail(f"{name}: {answer.error or 'no answer'} (ping {event_id})", EXIT_FAILURE)
