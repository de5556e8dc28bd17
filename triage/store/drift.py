"""What the classifier decided lately against the weeks before: per label, how many messages,
their share and their mean confidence, in two windows — the last 7 days (`7d`) and the 4 weeks
before them (`28d`).

Reads only: one grouped query over the `messages_created` index. A message counts when the
classifier decided it (a label and a decision are stored, `review` included: leaving out the
messages it was unsure about would hide a fall in confidence), in the window of its arrival
(`created_at`). Backfill is left out: it arrived when triage first saw the folder, not when it was
written. Whether a change is alarming is decided elsewhere (`triage.sales.drift`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from triage.core.models import LABELS
from triage.store.db import Tx, timestamp

RECENT = "7d"
BASELINE = "28d"
RECENT_SPAN = timedelta(days=7)
BASELINE_SPAN = timedelta(days=28)


@dataclass(frozen=True, slots=True)
class LabelStats:
    """One label in one window."""

    count: int
    share: float  # of the window's decided messages; 0.0 when the window has none
    confidence_mean: float | None  # None when no message of the window has this label


@dataclass(frozen=True, slots=True)
class Window:
    """The decided messages that arrived in [start, end), by label (every label of LABELS)."""

    name: str
    start: datetime
    end: datetime
    total: int
    labels: Mapping[str, LabelStats]


@dataclass(frozen=True, slots=True)
class LabelWindows:
    """The last 7 days and the 4 weeks before them."""

    recent: Window
    baseline: Window

    @property
    def windows(self) -> tuple[Window, Window]:
        """Both windows, the recent one first."""
        return self.recent, self.baseline


def _window(
    name: str, start: datetime, end: datetime, found: Mapping[str, tuple[int, float | None]]
) -> Window:
    total = sum(count for count, _mean in found.values())
    labels: dict[str, LabelStats] = {
        label: LabelStats(
            count=found[label][0] if label in found else 0,
            share=found[label][0] / total if label in found and total else 0.0,
            confidence_mean=found[label][1] if label in found else None,
        )
        for label in LABELS
    }
    return Window(name, start, end, total, MappingProxyType(labels))


def label_windows(c: Tx, now: datetime) -> LabelWindows:
    """Per label: count, share and mean confidence of the messages decided in the 7 days before
    `now` and in the 28 days before those."""
    split = now - RECENT_SPAN
    start = split - BASELINE_SPAN
    labels, params = c.dialect.in_list("label", LABELS)
    rows = c.execute(
        "SELECT created_at >= ? AS recent, label, COUNT(*) AS n, AVG(confidence) AS mean"  # noqa: S608
        " FROM messages WHERE created_at >= ? AND created_at < ? AND backfill = 0"
        f" AND decision IS NOT NULL AND {labels} GROUP BY recent, label",
        (timestamp(split), timestamp(start), timestamp(now), *params),
    )
    found: dict[bool, dict[str, tuple[int, float | None]]] = {True: {}, False: {}}
    for r in rows:
        mean = None if r["mean"] is None else float(r["mean"])
        found[bool(r["recent"])][r["label"]] = (int(r["n"]), mean)
    return LabelWindows(
        recent=_window(RECENT, split, now, found[True]),
        baseline=_window(BASELINE, start, split, found[False]),
    )
