"""The dashboard: the SVG chart module on its own, then `/dashboard` over a store filled as the
pipeline fills it, with figures checked against what was put in."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta

import pytest

from tests import web_support
from tests.test_leads import JANE
from tests.web_support import ConsoleFixture
from triage.core.models import Contact
from triage.sales import leads as lead_flow
from triage.sales import review as review_flow
from triage.store import outbox
from triage.store.console import HotLeadTimes, ReviewSpan
from triage.web import charts
from triage.web.views import dashboard

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

SVG = "{http://www.w3.org/2000/svg}"

# The `console` fixture: a client over a fresh store with users sam (sales) and ada (admin).
console = web_support.console


def parse(svg: str) -> ET.Element:
    """The chart as XML: it must be well-formed."""
    return ET.fromstring(svg)  # noqa: S314 - the console's own output, not a stranger's


def bars(svg: str) -> list[ET.Element]:
    return parse(svg).findall(f"{SVG}rect[{SVG}title]")


# --- the chart module ----------------------------------------------------------------------------


def test_bar_heights_are_to_scale_and_each_bar_says_its_figure() -> None:
    """A bar twice as high as another stands for twice the value; its <title> names it."""
    svg = charts.bar_chart("b", "Leads", "Leads per week", ["w1", "w2", "w3"], [5, 10, 0])
    found = bars(svg)
    assert len(found) == 2  # a zero draws no bar
    heights = [float(r.attrib["height"]) for r in found]
    assert abs(heights[1] - 2 * heights[0]) < 0.2
    titles = [r.find(f"{SVG}title").text for r in found]  # type: ignore[union-attr]
    assert titles == ["w1: 5", "w2: 10"]


def test_a_chart_names_itself_for_screen_readers() -> None:
    """<title> and <desc> come first, and the svg is labelled by both."""
    root = parse(charts.bar_chart("hot", "Hot leads", "12 weeks of hot leads", ["a"], [3]))
    assert root.attrib["role"] == "img"
    assert root.attrib["aria-labelledby"] == "hot-title hot-desc"
    assert root[0].tag == f"{SVG}title" and root[0].text == "Hot leads"
    assert root[1].tag == f"{SVG}desc" and root[1].text == "12 weeks of hot leads"


def test_axis_ticks_are_round_numbers_covering_the_largest_value() -> None:
    assert charts.nice_ticks(10) == [0, 5, 10]
    assert charts.nice_ticks(7) == [0, 2, 4, 6, 8]
    assert charts.nice_ticks(0) == [0.0, 1.0]
    ticks = charts.nice_ticks(1234)
    assert ticks[-1] >= 1234 and ticks[0] == 0


def test_empty_data_gives_an_empty_state_chart() -> None:
    """No categories, only zeros, or only gaps: a framed chart saying so, never an error."""
    for svg in (
        charts.bar_chart("e1", "Nothing", "none", [], []),
        charts.stacked_bars("e2", "Zeros", "zeros", ["a", "b"], [charts.Series("x", [0, 0])]),
        charts.line_chart("e3", "Gaps", "gaps", ["a", "b"], [charts.Series("x", [None, None])]),
    ):
        root = parse(svg)
        texts = [t.text for t in root.iter(f"{SVG}text")]
        assert "No data for this period" in texts
        assert not root.findall(f"{SVG}rect[{SVG}title]")


def test_labels_are_escaped_and_the_svg_still_parses() -> None:
    """A label `<script>` is text in the SVG (`&lt;script&gt;`), never an element."""
    hostile = "<script>alert(1)</script>"
    series = [charts.Series('"><img src=x onerror=alert(1)>', [1, 2])]
    for svg in (
        charts.bar_chart("x", hostile, hostile, [hostile, "b"], [1, 2]),
        charts.stacked_bars("x", "t", "d", [hostile, "b"], [*series, charts.Series("z", [3, 1])]),
        charts.line_chart("x", "t", "d", [hostile, "b"], series, target=1.5, target_label=hostile),
    ):
        assert "&lt;script&gt;" in svg
        assert "<script" not in svg and "<img" not in svg
        root = parse(svg)
        assert not list(root.iter(f"{SVG}script"))
        assert not list(root.iter("script"))


def test_no_style_attributes_only_presentation_attributes() -> None:
    """The console's CSP forbids inline styles: colours are fill/stroke attributes."""
    svg = charts.line_chart(
        "l", "t", "d", ["a", "b", "c"], [charts.Series("m", [1, None, 3])], target=2
    )
    root = parse(svg)
    assert all("style" not in el.attrib for el in root.iter())
    assert root.findall(f"{SVG}circle")[0].attrib["fill"].startswith("#")


def test_stacked_bars_stack_the_series_and_show_a_legend() -> None:
    svg = charts.stacked_bars(
        "s",
        "Decisions",
        "d",
        ["mon"],
        [charts.Series("sales", [2], "#111111"), charts.Series("other", [6], "#222222")],
    )
    found = bars(svg)
    assert [r.attrib["fill"] for r in found] == ["#111111", "#222222"]
    low, high = found
    # The second segment sits on top of the first, three times as tall.
    assert (
        abs(float(high.attrib["y"]) + float(high.attrib["height"]) - float(low.attrib["y"])) < 0.2
    )
    assert abs(float(high.attrib["height"]) - 3 * float(low.attrib["height"])) < 0.3
    texts = [t.text for t in parse(svg).iter(f"{SVG}text")]
    assert "sales" in texts and "other" in texts


def test_a_line_breaks_at_a_gap_and_draws_the_target() -> None:
    svg = charts.line_chart(
        "l",
        "t",
        "d",
        ["a", "b", "c", "d"],
        [charts.Series("median", [1, 2, None, 4])],
        target=3,
        target_label="target",
    )
    root = parse(svg)
    assert len(root.findall(f"{SVG}polyline")) == 1  # a-b; the lone d has only its dot
    assert len(root.findall(f"{SVG}circle")) == 3
    dashed = [el for el in root.findall(f"{SVG}line") if "stroke-dasharray" in el.attrib]
    assert len(dashed) == 1


def test_series_of_the_wrong_length_are_refused() -> None:
    try:
        charts.stacked_bars("x", "t", "d", ["a", "b"], [charts.Series("s", [1])])
    except ValueError as exc:
        assert "1 values for 2" in str(exc)
    else:
        raise AssertionError("no error")


# --- the figures, pure ---------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert dashboard.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == 9
    assert dashboard.percentile([4.0], 90) == 4.0


def test_weeks_start_on_monday_and_end_with_this_one() -> None:
    weeks = dashboard.week_range(date(2026, 12, 5))  # a Saturday
    assert weeks[-1] == date(2026, 11, 30) and all(w.weekday() == 0 for w in weeks)
    assert len(weeks) == 12


def test_weekly_response_counts_contacted_on_time_and_waiting() -> None:
    monday = datetime(2026, 11, 30, 9, tzinfo=UTC)
    leads = [
        HotLeadTimes(monday, monday + timedelta(hours=1), monday + timedelta(hours=4)),
        HotLeadTimes(monday, monday + timedelta(hours=3), monday + timedelta(hours=4)),
        HotLeadTimes(monday, monday + timedelta(hours=10), monday + timedelta(hours=4)),
        HotLeadTimes(monday, None, monday + timedelta(hours=4)),
        HotLeadTimes(monday - timedelta(days=400), None, None),  # outside the weeks
    ]
    week = dashboard.weekly_response(leads, [date(2026, 11, 30)])[0]
    assert (week.leads, week.contacted, week.on_time, week.waiting) == (4, 3, 2, 1)
    assert week.median_hours == 3.0 and week.p90_hours == 10.0


def test_review_backlog_counts_what_waited_at_the_end_of_each_day() -> None:
    days = [date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 3)]
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    spans = [
        ReviewSpan(datetime(2026, 11, 20, tzinfo=UTC), None),  # waits all along
        ReviewSpan(datetime(2026, 12, 1, 8, tzinfo=UTC), datetime(2026, 12, 2, 9, tzinfo=UTC)),
        ReviewSpan(datetime(2026, 12, 3, 8, tzinfo=UTC), None),
        ReviewSpan(datetime(2026, 12, 3, 20, tzinfo=UTC), None),  # after now: not yet
    ]
    assert dashboard.review_backlog(spans, days, now) == [2, 1, 2]


# --- /dashboard ----------------------------------------------------------------------------------


def _day(days_ago: int, hour: int = 1) -> datetime:
    """`hour` o'clock UTC `days_ago` days before today: always in the past for days_ago >= 1."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago) + timedelta(hours=hour)


def _sent_reply(fx: ConsoleFixture, row: int, at: datetime) -> None:
    with fx.store.db.transaction() as c:
        reply_id = outbox.insert_reply(
            c,
            message_row=row,
            reply_message_id=f"<r{row}@example.test>",
            recipient="jane@doe.example",
            envelope_from="hello@example.test",
            template="sales",
            mode="live",
            state="queued",
            raw=b"Subject: Thanks\r\n\r\nThank you.\r\n",
            now=at,
            recipient_key="jane@doe.example",
            recipient_domain="doe.example",
            priority=0,
        )
        mine = outbox.claim(c, "replies", reply_id, at, 0)
        assert mine is not None
        outbox.mark_sent(c, "replies", reply_id, mine, at + timedelta(seconds=2), None)


def test_dashboard_needs_a_login_and_is_open_to_both_roles(console: ConsoleFixture) -> None:
    response = console.client.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    console.login("sam")
    assert console.client.get("/dashboard").status_code == 200
    console.login("ada")  # a new session replaces sam's
    assert console.client.get("/dashboard").status_code == 200


def test_dashboard_of_an_empty_store_shows_empty_charts(console: ConsoleFixture) -> None:
    console.login("sam")
    page = console.client.get("/dashboard")
    assert page.status_code == 200
    assert page.text.count("<svg") == 5
    assert "No data for this period" in page.text
    assert "style=" not in page.text


def test_dashboard_figures_match_the_store(console: ConsoleFixture) -> None:
    """Decisions per day by decision, hot leads, time to contact, backlog, replies sent."""
    store = console.store
    for _ in range(3):
        store.message("a@x.example", decision="marketing", at=_day(2))
    store.message("b@x.example", decision="other", at=_day(2))
    store.message("c@x.example", decision="other", at=_day(40))  # before the 30 days
    waiting = store.message("d@x.example", decision="review", at=_day(3))
    labelled = store.message("e@x.example", decision="review", at=_day(3))
    review_flow.label(store.db, labelled, "other", store.settings, by="sam", now=_day(1))
    row, lead = store.inquiry(JANE, at=_day(2, hour=8))
    lead_flow.claim(store.db, lead, "sam", now=_day(2, hour=9))
    lead_flow.update(store.db, lead, status="contacted", by="sam", now=_day(2, hour=10))
    _other_row, _lead2 = store.inquiry(
        Contact("Joe", "joe@acme.example", "", "", ""), at=_day(1, hour=8)
    )
    _sent_reply(console, row, _day(2, hour=8))
    assert waiting

    fixed = dashboard.collect(store.db, datetime.now(UTC), 4.0)
    index = fixed.days.index(_day(2).date())
    assert fixed.decisions["marketing"][index] == 3
    assert fixed.decisions["other"][index] == 1
    assert fixed.decisions["sales"][index] == 1
    assert sum(fixed.decisions["other"]) == 1  # the 40-day-old one is outside
    assert sum(fixed.decisions["review"]) == 2
    assert sum(fixed.hot_per_week) == 2
    contacted = [w for w in fixed.response if w.contacted]
    assert len(contacted) == 1 and contacted[0].median_hours == 2.0
    assert fixed.pending_now == 1
    assert fixed.backlog[fixed.days.index(_day(3).date())] == 2
    assert fixed.backlog[fixed.days.index(_day(1).date())] == 1
    assert fixed.replies_sent[index] == 1 and sum(fixed.replies_sent) == 1

    console.login("sam")
    page = console.client.get("/dashboard").text
    assert page.count("<svg") == 5
    day = _day(2).date().isoformat()
    # The figures table shows the day's row as text: sales 1, marketing 3, other 1, review 0.
    cells = re.search(rf"<th scope=\"row\">{day}</th>(.*?)</tr>", page, re.S)
    assert cells is not None
    assert re.findall(r'class="num">([^<]*)<', cells.group(1)) == ["1", "3", "1", "0"]
    assert "<strong>1</strong> messages wait for review now" in page
    assert "<strong>2</strong> hot leads in the last 12 weeks" in page
    assert "<strong>1</strong> replies sent in the last 30 days" in page


def test_the_figures_are_recomputed_at_most_every_few_seconds(
    console: ConsoleFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload within FRESH_FOR shows the same figures (they read every review row); after
    it, the new ones."""
    console.login("sam")
    console.store.message("a@x.example", decision="review", at=_day(1))
    assert (
        "<strong>1</strong> messages wait for review now" in console.client.get("/dashboard").text
    )
    console.store.message("b@x.example", decision="review", at=_day(1))
    assert (
        "<strong>1</strong> messages wait for review now" in console.client.get("/dashboard").text
    )
    monkeypatch.setattr(dashboard, "FRESH_FOR", 0.0)
    assert (
        "<strong>2</strong> messages wait for review now" in console.client.get("/dashboard").text
    )
