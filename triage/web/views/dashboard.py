"""The dashboard (`/dashboard`, both roles): how much mail was decided, how many hot leads came,
how fast people answered them, the review backlog and the replies sent, as server-drawn SVG
charts, each with its figures as text beside it.

Periods are UTC days and weeks (Monday to Sunday) ending today. "First human contact" of a hot
lead is its `contacted_at` (the workflow's `contacted` status, which every won or lost lead
passed through): claiming a lead only says somebody will answer it. The times are wall-clock
hours from the lead's arrival; the response target (`leads.response_target_hours`) counts
business hours, so the page also says how many leads were contacted by their due time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from triage.core.models import DECISIONS
from triage.store import console as figures
from triage.store.db import Database
from triage.web import charts
from triage.web.app import Console, Page

DAYS = 30
WEEKS = 12
FRESH_FOR = 30.0  # seconds the page shows the same figures
DECISION_COLOURS: dict[str, str] = dict(zip(DECISIONS, charts.PALETTE, strict=False))


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile of `values` by nearest rank (a value that occurred); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def day_range(today: date, count: int = DAYS) -> list[date]:
    """The `count` UTC days ending with `today`, oldest first."""
    return [today - timedelta(days=count - 1 - i) for i in range(count)]


def week_range(today: date, count: int = WEEKS) -> list[date]:
    """The Mondays of the `count` weeks ending with the one holding `today`, oldest first."""
    monday = today - timedelta(days=today.weekday())
    return [monday - timedelta(weeks=count - 1 - i) for i in range(count)]


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class WeekResponse:
    """The hot leads that arrived in one week and how fast they were first contacted."""

    week: date
    leads: int
    contacted: int
    on_time: int  # contacted by their due time (the target in business hours)
    median_hours: float | None
    p90_hours: float | None

    @property
    def waiting(self) -> int:
        """Leads of the week nobody has contacted yet."""
        return self.leads - self.contacted


def weekly_response(
    leads: Sequence[figures.HotLeadTimes], weeks: Sequence[date]
) -> list[WeekResponse]:
    """Per week of arrival: leads, contacted, on time, median and p90 hours to first contact."""
    hours: dict[date, list[float]] = {w: [] for w in weeks}
    counts = dict.fromkeys(weeks, 0)
    on_time = dict.fromkeys(weeks, 0)
    for lead in leads:
        day = lead.created_at.astimezone(UTC).date()
        week = day - timedelta(days=day.weekday())
        if week not in counts:
            continue
        counts[week] += 1
        if lead.contacted_at is not None:
            hours[week].append((lead.contacted_at - lead.created_at).total_seconds() / 3600)
            if lead.due_at is None or lead.contacted_at <= lead.due_at:
                on_time[week] += 1
    return [
        WeekResponse(
            week=w,
            leads=counts[w],
            contacted=len(hours[w]),
            on_time=on_time[w],
            median_hours=statistics.median(hours[w]) if hours[w] else None,
            p90_hours=percentile(hours[w], 90) if hours[w] else None,
        )
        for w in weeks
    ]


def review_backlog(
    spans: Sequence[figures.ReviewSpan], days: Sequence[date], now: datetime
) -> list[int]:
    """Messages waiting for review at the end of each day (at `now` for today).

    One pass over the spans with a difference array: a message counts on the days from its
    arrival to the day before its label (to the last day while it waits).
    """
    first = days[0]
    diff = [0] * (len(days) + 1)
    for span in spans:
        if span.created_at > now:
            continue
        start = max(0, (span.created_at.astimezone(UTC).date() - first).days)
        if span.reviewed_at is None:
            end = len(days) - 1
        else:
            end = min(len(days) - 1, (span.reviewed_at.astimezone(UTC).date() - first).days - 1)
        if start <= end:
            diff[start] += 1
            diff[end + 1] -= 1
    out = []
    running = 0
    for value in diff[:-1]:
        running += value
        out.append(running)
    return out


@dataclass(frozen=True, slots=True)
class Dashboard:
    """Every figure of the dashboard."""

    now: datetime
    days: list[date]
    weeks: list[date]
    decisions: dict[str, list[int]]  # per decision, one count per day
    hot_per_week: list[int]
    response: list[WeekResponse]
    target_hours: float
    backlog: list[int]
    pending_now: int
    replies_sent: list[int]

    @property
    def decision_totals(self) -> dict[str, int]:
        """Per decision, the messages of the whole period."""
        return {d: sum(v) for d, v in self.decisions.items()}


def collect(db: Database, now: datetime, target_hours: float) -> Dashboard:
    """The dashboard's figures from the store at `now` (five indexed queries)."""
    today = now.astimezone(UTC).date()
    days = day_range(today)
    weeks = week_range(today)
    start_day = _midnight(days[0])
    start_week = _midnight(weeks[0])
    end = _midnight(today + timedelta(days=1))
    c = db.reads
    by_day = figures.decisions_per_day(c, start_day, end)
    decisions: dict[str, list[int]] = {
        d: [by_day.get((day, d), 0) for day in days] for d in DECISIONS
    }
    leads = figures.hot_leads_since(c, start_week, end)
    response = weekly_response(leads, weeks)
    spans = figures.review_spans(c, start_day)
    sent = figures.replies_sent_per_day(c, start_day, end)
    return Dashboard(
        now=now,
        days=days,
        weeks=weeks,
        decisions=decisions,
        hot_per_week=[w.leads for w in response],
        response=response,
        target_hours=target_hours,
        backlog=review_backlog(spans, days, now),
        # The spans hold every message still waiting: no second pass over the review rows.
        pending_now=sum(1 for span in spans if span.reviewed_at is None),
        replies_sent=[sent.get(day, 0) for day in days],
    )


def _day(day: date) -> str:
    return day.strftime("%d %b")


def draw(d: Dashboard) -> dict[str, Markup]:
    """The five charts of `d`, by name."""
    day_names = [_day(x) for x in d.days]
    week_names = [_day(x) for x in d.weeks]
    totals = d.decision_totals
    return {
        "decisions": charts.stacked_bars(
            "chart-decisions",
            f"Decisions per day, last {DAYS} days",
            "Messages decided per day, stacked by decision: "
            + ", ".join(f"{k} {v:,}" for k, v in totals.items())
            + " in all.",
            day_names,
            [charts.Series(k, v, DECISION_COLOURS[k]) for k, v in d.decisions.items()],
            unit="messages",
        ),
        "hot": charts.bar_chart(
            "chart-hot",
            f"Hot leads per week, last {WEEKS} weeks",
            f"New hot leads per week (weeks start on Monday): {sum(d.hot_per_week):,} in all.",
            week_names,
            d.hot_per_week,
            unit="leads",
            colour="#c2410c",
        ),
        "response": charts.line_chart(
            "chart-response",
            "Hours to first contact of hot leads",
            f"Median and 90th percentile hours from arrival to first contact, per week of"
            f" arrival, against the response target of {charts.format_value(d.target_hours)}"
            " hours.",
            week_names,
            [
                charts.Series("median", [w.median_hours for w in d.response], "#1f5fbf"),
                charts.Series("p90", [w.p90_hours for w in d.response], "#d97706"),
            ],
            unit="hours",
            target=d.target_hours,
            target_label="target",
            empty="No hot lead was contacted in these weeks",
        ),
        "backlog": charts.line_chart(
            "chart-backlog",
            "Review backlog",
            f"Messages waiting for review at the end of each day; {d.pending_now:,} wait now.",
            day_names,
            [charts.Series("waiting", [float(v) for v in d.backlog], "#d97706")],
            unit="messages",
            empty="Nothing waited for review in this period",
        ),
        "replies": charts.bar_chart(
            "chart-replies",
            f"Auto-replies sent per day, last {DAYS} days",
            f"Replies sent per day: {sum(d.replies_sent):,} in all.",
            day_names,
            d.replies_sent,
            unit="replies",
            colour="#15803d",
        ),
    }


@dataclass
class Cached:
    """The figures last computed, kept for FRESH_FOR: a dashboard people reload need not be
    live to the second, and the figures read every review row of the store."""

    figures: Dashboard | None = None
    at: float = 0.0


async def dashboard(request: Request, console: Console) -> Response:
    cached: Cached = getattr(request.app.state, "dashboard", None) or Cached()
    request.app.state.dashboard = cached
    target = console.settings.leads.response_target_hours
    if cached.figures is None or time.monotonic() - cached.at > FRESH_FOR:
        cached.figures = await console.run(collect, datetime.now(UTC), target)
        cached.at = time.monotonic()
    data = cached.figures
    return console.render(
        request,
        "dashboard.html",
        {
            "d": data,
            "charts": draw(data),
            "decisions": DECISIONS,
            "fmt": charts.format_value,
            "fresh_for": FRESH_FOR,
        },
    )


PAGES = [Page("/dashboard", dashboard)]
