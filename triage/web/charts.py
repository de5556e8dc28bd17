"""Charts as inline SVG, drawn on the server: bars, stacked bars and lines.

Pure functions from numbers and labels to an SVG fragment (a `markupsafe.Markup`, so a template
inserts it as it is). Every text that goes in — the title, the description, category and series
names — is XML-escaped here, so a label a prospect could influence is shown as text. No `style`
attribute anywhere (the console's Content-Security-Policy forbids inline styles): colours and
fonts are presentation attributes (`fill`, `stroke`, `font-size`). Each chart names itself with
`<title>` and `<desc>` (`aria-labelledby`) for screen readers; the page shows the same figures
as a table beside it, so the picture is never the only way to read them.

A chart without data (no categories, or nothing but zeros and gaps) is an empty-state chart:
the frame, the title and a line saying there is nothing to show, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH = 640
HEIGHT = 260
# The plot area inside the picture: room for the y labels at the left, the x labels below and
# the legend at the top.
LEFT = 48
RIGHT = 12
TOP = 34
BOTTOM = 44
FONT = "system-ui, sans-serif"
INK = "#1d2330"
MUTED = "#5b6475"
GRID = "#dde2ea"
TARGET = "#b91c1c"
# The colour of each decision, used by every chart that shows them (and the legend).
PALETTE = ("#1f5fbf", "#0891b2", "#9ca3af", "#d97706", "#15803d", "#7c3aed")


@dataclass(frozen=True, slots=True)
class Series:
    """One named row of values, one per category; None is a gap (a line is broken there)."""

    name: str
    values: Sequence[float | None]
    colour: str = PALETTE[0]


def _x(text: object) -> str:
    """Text or an attribute value, escaped for XML."""
    return escape(str(text), quote=True)


def _num(value: float) -> str:
    """A coordinate: short, and never in exponent form."""
    return f"{value:.1f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"


def format_value(value: float) -> str:
    """A figure as a person reads it on an axis or in a caption: 1,234 or 2.5."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Axis ticks from 0 to at least `top` in steps of 1, 2 or 5 times a power of ten."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    steps = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(steps + 1)]


def _ident(name: str) -> str:
    # An id attribute made only of safe characters, so it needs no escaping in a reference.
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)
    return cleaned or "chart"


def _open(ident: str, title: str, desc: str) -> list[str]:
    ident = _ident(ident)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}"'
        f' width="{WIDTH}" height="{HEIGHT}" role="img"'
        f' aria-labelledby="{ident}-title {ident}-desc" font-family="{FONT}" font-size="11">',
        f'<title id="{ident}-title">{_x(title)}</title>',
        f'<desc id="{ident}-desc">{_x(desc)}</desc>',
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="600" fill="{INK}">{_x(title)}</text>',
    ]


def _empty(ident: str, title: str, desc: str, message: str) -> Markup:
    parts = _open(ident, title, desc)
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}"'
        f' height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="{GRID}"/>'
    )
    parts.append(
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2:.0f}"'
        f' y="{TOP + (HEIGHT - TOP - BOTTOM) / 2:.0f}"'
        f' text-anchor="middle" fill="{MUTED}" class="chart-empty">{_x(message)}</text>'
    )
    return _finish(parts)


def _finish(parts: list[str]) -> Markup:
    parts.append("</svg>")
    # Every text in `parts` went through `_x` (escaped) and every number through formatting:
    # the joined SVG is markup as it stands.
    return Markup("\n".join(parts))  # noqa: S704


def _plot_height() -> float:
    return HEIGHT - TOP - BOTTOM


def _y(value: float, top: float) -> float:
    """The y coordinate of `value` on an axis from 0 to `top`."""
    return TOP + _plot_height() * (1 - value / top)


def _axes(parts: list[str], ticks: Sequence[float], unit: str) -> None:
    top = ticks[-1]
    for tick in ticks:
        y = _y(tick, top)
        parts.append(
            f'<line x1="{LEFT}" y1="{_num(y)}" x2="{WIDTH - RIGHT}" y2="{_num(y)}"'
            f' stroke="{GRID}" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{_num(y + 4)}" text-anchor="end" fill="{MUTED}">'
            f"{_x(format_value(tick))}</text>"
        )
    if unit:
        parts.append(f'<text x="4" y="{TOP - 6}" fill="{MUTED}">{_x(unit)}</text>')
    base = _y(0, top)
    parts.append(
        f'<line x1="{LEFT}" y1="{_num(base)}" x2="{WIDTH - RIGHT}" y2="{_num(base)}"'
        f' stroke="{INK}" stroke-width="1"/>'
    )
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{_num(base)}" stroke="{INK}"'
        ' stroke-width="1"/>'
    )


def _x_labels(parts: list[str], categories: Sequence[str], centres: Sequence[float]) -> None:
    # At most about ten labels fit under the axis; the others are left out (the table has all).
    every = max(1, math.ceil(len(categories) / 10))
    base = HEIGHT - BOTTOM
    for index, (name, x) in enumerate(zip(categories, centres, strict=True)):
        if (len(categories) - 1 - index) % every:  # counted from the last (today's) label
            continue
        parts.append(
            f'<text x="{_num(x)}" y="{base + 16}" text-anchor="middle" fill="{MUTED}">'
            f"{_x(name)}</text>"
        )


def _legend(
    parts: list[str], series: Sequence[Series], extra: Sequence[tuple[str, str]] = ()
) -> None:
    entries = [(s.name, s.colour) for s in series] + list(extra)
    if len(entries) < 2:
        return
    x = float(WIDTH - RIGHT)
    # Right-aligned, drawn right to left: each entry is a swatch and its name.
    for name, colour in reversed(entries):
        width = 18 + 6.5 * len(name)
        x -= width
        parts.append(
            f'<rect x="{_num(x)}" y="{TOP - 16}" width="10" height="10" fill="{_x(colour)}"/>'
        )
        parts.append(f'<text x="{_num(x + 14)}" y="{TOP - 7}" fill="{INK}">{_x(name)}</text>')


def _slots(count: int) -> tuple[float, list[float]]:
    """The width of one category's slot and the x of each slot's centre."""
    slot = (WIDTH - LEFT - RIGHT) / count
    return slot, [LEFT + slot * (i + 0.5) for i in range(count)]


def _top(values: Sequence[float]) -> list[float]:
    return nice_ticks(max(values, default=0.0))


def bar_chart(
    ident: str,
    title: str,
    desc: str,
    categories: Sequence[str],
    values: Sequence[float],
    *,
    unit: str = "",
    colour: str = PALETTE[0],
    empty: str = "No data for this period",
) -> Markup:
    """One bar per category, heights to scale from 0; each bar has a <title> with its figure."""
    return stacked_bars(
        ident, title, desc, categories, [Series(title, values, colour)], unit=unit, empty=empty
    )


def stacked_bars(
    ident: str,
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    empty: str = "No data for this period",
) -> Markup:
    """One bar per category made of one segment per series, bottom to top, with a legend."""
    for s in series:
        if len(s.values) != len(categories):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(categories)}")
    totals = [sum(s.values[i] or 0.0 for s in series) for i in range(len(categories))]
    if not categories or not any(totals):
        return _empty(ident, title, desc, empty)
    ticks = _top(totals)
    top = ticks[-1]
    parts = _open(ident, title, desc)
    _axes(parts, ticks, unit)
    slot, centres = _slots(len(categories))
    bar = max(1.0, slot * 0.7)
    for i, (name, centre) in enumerate(zip(categories, centres, strict=True)):
        below = 0.0
        for s in series:
            value = s.values[i] or 0.0
            if value <= 0:
                continue
            y_top = _y(below + value, top)
            height = _y(below, top) - y_top
            label = f"{name}: {format_value(value)}" + (f" {s.name}" if len(series) > 1 else "")
            parts.append(
                f'<rect x="{_num(centre - bar / 2)}" y="{_num(y_top)}" width="{_num(bar)}"'
                f' height="{_num(height)}" fill="{_x(s.colour)}"><title>{_x(label)}</title></rect>'
            )
            below += value
    _x_labels(parts, categories, centres)
    if len(series) > 1:
        _legend(parts, series)
    return _finish(parts)


def line_chart(
    ident: str,
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    target: float | None = None,
    target_label: str = "target",
    empty: str = "No data for this period",
) -> Markup:
    """One line per series over the categories (a gap where a value is None), a dot at each
    value, and an optional dashed horizontal target line."""
    for s in series:
        if len(s.values) != len(categories):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(categories)}")
    present = [v for s in series for v in s.values if v is not None]
    if not categories or not present:
        return _empty(ident, title, desc, empty)
    ticks = _top([*present, target or 0.0])
    top = ticks[-1]
    parts = _open(ident, title, desc)
    _axes(parts, ticks, unit)
    _slot, centres = _slots(len(categories))
    if target is not None:
        y = _num(_y(target, top))
        parts.append(
            f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="{TARGET}"'
            f' stroke-width="1.5" stroke-dasharray="6 4"><title>{_x(target_label)}:'
            f" {_x(format_value(target))}</title></line>"
        )
    for s in series:
        runs: list[list[tuple[float, float]]] = [[]]
        for value, x in zip(s.values, centres, strict=True):
            if value is None:
                runs.append([])
                continue
            runs[-1].append((x, _y(value, top)))
        for run in runs:
            if len(run) > 1:
                points = " ".join(f"{_num(x)},{_num(y)}" for x, y in run)
                parts.append(
                    f'<polyline points="{points}" fill="none" stroke="{_x(s.colour)}"'
                    ' stroke-width="2"/>'
                )
        for name, value, x in zip(categories, s.values, centres, strict=True):
            if value is None:
                continue
            parts.append(
                f'<circle cx="{_num(x)}" cy="{_num(_y(value, top))}" r="3" fill="{_x(s.colour)}">'
                f"<title>{_x(f'{name}: {s.name} {format_value(value)}')}</title></circle>"
            )
    _x_labels(parts, categories, centres)
    extra = [(target_label, TARGET)] if target is not None else []
    _legend(parts, series, extra)
    return _finish(parts)
