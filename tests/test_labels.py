"""The label table: one row per label says its reply template, lead kind, keyword and folder, and
the decision step reads it (so a label added to the table is handled everywhere)."""

from __future__ import annotations

import pytest

from triage.core.labels import (
    DECISION_TABLE,
    LABEL_TABLE,
    keyword_for,
    lead_kind_for,
    reply_templates,
    row_for,
)
from triage.core.models import (
    DECISIONS,
    LABELS,
    Address,
    Classification,
    Decision,
    InboundMessage,
    LeadKind,
    Verdict,
)
from triage.decide.dispose import dispose


def test_every_label_and_decision_has_one_row() -> None:
    """The table lists exactly the labels and decisions of `triage.core.models`, in order."""
    assert tuple(LABEL_TABLE) == LABELS
    assert tuple(DECISION_TABLE) == DECISIONS


def test_the_rows_say_what_each_label_means() -> None:
    """sales → sales reply, hot lead; marketing → marketing reply, nurture lead; other → neither;
    each with its own keyword and folder."""
    sales, marketing, other = (LABEL_TABLE[label] for label in LABELS)
    assert (sales.reply_template, sales.lead_kind) == ("sales", LeadKind.HOT)
    assert (marketing.reply_template, marketing.lead_kind) == ("marketing", LeadKind.NURTURE)
    assert (other.reply_template, other.lead_kind) == (None, None)
    assert [keyword_for(d) for d in DECISIONS] == [
        "$Triage-Sales",
        "$Triage-Marketing",
        "$Triage-Other",
        "$Triage-Review",
    ]
    assert [row_for(d).folder for d in DECISIONS] == ["Sales", "Marketing", "Other", "Review"]
    assert reply_templates() == ["marketing", "sales"]
    assert lead_kind_for("review") is None and lead_kind_for("spam") is None


def test_a_state_that_is_no_decision_gets_a_keyword_of_the_same_form() -> None:
    """Quarantine is marked in the mailbox like a decision: prefix and capitalised name."""
    assert keyword_for("quarantine") == "$Triage-Quarantine"


@pytest.mark.parametrize("decision", DECISIONS)
def test_dispose_follows_the_table(decision: Decision) -> None:
    """The disposition of a decision is its row: template, lead kind, keyword and folder."""
    msg = InboundMessage(message_id="<m@x.example>", from_=Address("", "kim@x.example"))
    label = decision if decision != "review" else "sales"
    classification = Classification(label=label, confidence=0.5, decision=decision)
    got = dispose(
        msg, Verdict(may_reply=True), classification, backfill=False, folder_prefix="Triage"
    )
    row = row_for(decision)
    assert got.reply_template == row.reply_template
    assert got.lead_kind == row.lead_kind
    assert got.keyword == row.keyword
    assert got.folder == f"Triage/{row.folder}"
