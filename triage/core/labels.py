"""The label table: for each label, everything triage does differently because of it.

One row per label: the reply template it is answered with, the kind of lead it makes, the IMAP
keyword that shows it in mail clients, and the folder (below `ingest.folder_prefix`) it is filed
in. Adding a label is one row here, its name in `triage.core.models.Label`, and its templates.

| label     | reply template | lead    | keyword              | folder    |
|-----------|----------------|---------|----------------------|-----------|
| sales     | `sales`        | hot     | `$Triage-Sales`      | Sales     |
| marketing | `marketing`    | nurture | `$Triage-Marketing`  | Marketing |
| other     | none           | none    | `$Triage-Other`      | Other     |
| (review)  | none, ever     | none    | `$Triage-Review`     | Review    |

`review` is not a label but the decision to let a person choose one; it has a row of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from triage.core.models import DECISIONS, LABELS, Decision, Label, LeadKind

KEYWORD_PREFIX = "$Triage-"


@dataclass(frozen=True, slots=True)
class LabelRow:
    """What one decision means for replies, leads and the mailbox."""

    decision: Decision
    reply_template: str | None
    lead_kind: LeadKind | None
    keyword: str
    folder: str


LABEL_TABLE: Mapping[Label, LabelRow] = MappingProxyType(
    {
        "sales": LabelRow("sales", "sales", LeadKind.HOT, "$Triage-Sales", "Sales"),
        "marketing": LabelRow(
            "marketing", "marketing", LeadKind.NURTURE, "$Triage-Marketing", "Marketing"
        ),
        "other": LabelRow("other", None, None, "$Triage-Other", "Other"),
    }
)
REVIEW_ROW = LabelRow("review", None, None, "$Triage-Review", "Review")
DECISION_TABLE: Mapping[str, LabelRow] = MappingProxyType(
    {**dict(LABEL_TABLE.items()), "review": REVIEW_ROW}
)

# The table and the `Label`/`Decision` names must agree; a label added to one only is a bug.
if tuple(LABEL_TABLE) != LABELS or tuple(DECISION_TABLE) != DECISIONS:
    raise AssertionError("triage.core.labels.LABEL_TABLE does not match triage.core.models.LABELS")


def row_for(decision: str) -> LabelRow:
    """The row of `decision` (a label or `review`); KeyError for anything else."""
    return DECISION_TABLE[decision]


def keyword_for(decision: str) -> str:
    """The IMAP keyword that shows `decision` in mail clients, e.g. `$Triage-Sales`.

    A state that is not a decision (quarantine) gets the same prefix and its capitalised name."""
    row = DECISION_TABLE.get(decision)
    return row.keyword if row else KEYWORD_PREFIX + decision.capitalize()


def lead_kind_for(label: str) -> LeadKind | None:
    """The kind of lead a message with `label` makes, or None (also for an unknown label)."""
    row = DECISION_TABLE.get(label)
    return row.lead_kind if row else None


def reply_templates() -> list[str]:
    """The templates some label is answered with (`marketing`, `sales`), sorted."""
    return sorted({r.reply_template for r in LABEL_TABLE.values() if r.reply_template})


def folder_for(decision: str) -> str:
    """The folder name (below `ingest.folder_prefix`) that `decision` is filed in, e.g. `Sales`."""
    row = DECISION_TABLE.get(decision)
    return row.folder if row else decision.capitalize()


# The replies that acknowledge a hot lead: they go out first when the caps hold replies back.
HOT_REPLY_TEMPLATES = frozenset(
    r.reply_template
    for r in LABEL_TABLE.values()
    if r.lead_kind is LeadKind.HOT and r.reply_template is not None
)
