"""Turn the verdicts about one message into what to do with it: a pure decision.

The reply template, lead kind, keyword and folder of each decision come from the label table
(`triage.core.labels`); a reply goes out only if etiquette allows, and a `review` decision is
never answered. Mail that was already in the mailbox before triage first started (backfill) is
never answered.
"""

from __future__ import annotations

from triage.core.labels import KEYWORD_PREFIX, keyword_for, row_for
from triage.core.models import Classification, Disposition, InboundMessage, Verdict

__all__ = ["KEYWORD_PREFIX", "dispose", "keyword_for"]


def dispose(
    msg: InboundMessage,
    verdict: Verdict,
    classification: Classification,
    *,
    backfill: bool,
    folder_prefix: str | None,
) -> Disposition:
    """Decide reply, lead, keyword and folder for one message; records why a reply is skipped."""
    decision = classification.decision
    row = row_for(decision)
    template = row.reply_template
    # A header rule that decided without the model is the first reason a person sees.
    reasons: list[str] = [classification.rule] if classification.rule else []
    if template is not None:
        if backfill:
            reasons.append("backfill: mail from before triage started is never answered")
            template = None
        elif not verdict.may_reply:
            reasons.extend(verdict.reasons)
            template = None
    elif decision == "review":
        reasons.append(
            f"review: confidence {classification.confidence:.2f} for {classification.label} "
            "is below its threshold"
        )
    lead_kind = row.lead_kind
    if lead_kind is not None and not (msg.contact.email or (msg.from_ and msg.from_.email)):
        reasons.append("no sender address: no lead recorded")
        lead_kind = None
    folder = f"{folder_prefix}/{row.folder}" if folder_prefix else None
    return Disposition(
        decision=decision,
        reply_template=template,
        lead_kind=lead_kind,
        keyword=row.keyword,
        folder=folder,
        reasons=tuple(reasons),
        # How the reply is routed (a Reply-To passed over, fixed text only) is on record too.
        notes=verdict.notes if template is not None else (),
    )
