"""Whether what the classifier decided lately has drifted far enough to tell people.

Pure: takes the two windows `triage.store.drift.label_windows` reads and the thresholds
(`classifier.drift_share_threshold`, `classifier.drift_confidence_threshold`). A label drifts when
its share of the decisions of the last 7 days moved by more than the share threshold from the 4
weeks before, or its mean confidence fell by more than the confidence threshold. Too few messages
give no verdict: both windows need `MIN_MESSAGES` decided messages, and a label's confidence is
compared only when it has that many in each window (a mean of a handful of messages is noise).
"""

from __future__ import annotations

from dataclasses import dataclass

from triage.core.models import LABELS
from triage.store.drift import LabelWindows

MIN_MESSAGES = 30
# Differences are rounded before comparing, so 0.31 - 0.16 is not "more than 0.15" by float error.
_PLACES = 9


@dataclass(frozen=True, slots=True)
class LabelDrift:
    """One label that drifted: its share and mean confidence before (the 4 weeks) and now (the
    last 7 days), and how far past its thresholds it went (the larger ratio; above 1)."""

    label: str
    share_before: float
    share_now: float
    confidence_before: float | None
    confidence_now: float | None
    severity: float


def _ratio(change: float, threshold: float) -> float:
    """How far `change` goes past `threshold` (above 1 when it does); 0 when it does not."""
    change = round(change, _PLACES)
    if change <= threshold:
        return 0.0
    return change / threshold if threshold > 0 else float("inf")


def verdict(
    windows: LabelWindows,
    share_threshold: float,
    confidence_threshold: float,
    minimum: int = MIN_MESSAGES,
) -> tuple[LabelDrift, ...] | None:
    """The labels that drifted, the worst first (ties in the order of LABELS); () when none did;
    None when either window has fewer than `minimum` decided messages (no verdict)."""
    recent, baseline = windows.recent, windows.baseline
    if recent.total < minimum or baseline.total < minimum:
        return None
    found = []
    for label in LABELS:
        now, before = recent.labels[label], baseline.labels[label]
        share = _ratio(abs(now.share - before.share), share_threshold)
        confidence = 0.0
        if (
            now.count >= minimum
            and before.count >= minimum
            and now.confidence_mean is not None
            and before.confidence_mean is not None
        ):
            confidence = _ratio(before.confidence_mean - now.confidence_mean, confidence_threshold)
        severity = max(share, confidence)
        if severity > 0:
            found.append(
                LabelDrift(
                    label,
                    before.share,
                    now.share,
                    before.confidence_mean,
                    now.confidence_mean,
                    severity,
                )
            )
    found.sort(key=lambda d: -d.severity)  # stable: equal severities keep the order of LABELS
    return tuple(found)


def _confidence(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f}"


def describe(drift: LabelDrift) -> str:
    """One label's drift as people read it: "sales share 12% -> 31% over the last 7 days; mean
    confidence 0.86 -> 0.71"."""
    return (
        f"{drift.label} share {drift.share_before:.0%} -> {drift.share_now:.0%} over the last "
        f"7 days; mean confidence {_confidence(drift.confidence_before)} -> "
        f"{_confidence(drift.confidence_now)}"
    )


def alert_line(drifts: tuple[LabelDrift, ...] | None) -> str:
    """The digest's one drift line: the worst label, the others named after it; "" when there is
    no verdict or nothing drifted."""
    if not drifts:
        return ""
    worst, *others = drifts
    also = f" (also drifting: {', '.join(d.label for d in others)})" if others else ""
    return f"Drift: {describe(worst)}{also}"
