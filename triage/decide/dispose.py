"""Turn the verdicts about one message into what to do with it: a pure decision.

| decision  | reply (if etiquette allows) | lead    | keyword              |
|-----------|-----------------------------|---------|----------------------|
| sales     | `sales` acknowledgement     | hot     | `$Triage-Sales`      |
| marketing | `marketing` information     | nurture | `$Triage-Marketing`  |
| other     | none                        | none    | `$Triage-Other`      |
| review    | none, ever                  | none    | `$Triage-Review`     |

Mail that was already in the mailbox before triage first started (backfill) is never answered.
"""

from __future__ import annotations

from triage.core.models import (
    Classification,
    Decision,
    Disposition,
    InboundMessage,
    LeadKind,
    Verdict,
)

KEYWORD_PREFIX = "$Triage-"

_REPLY_TEMPLATE: dict[Decision, str | None] = {
    "sales": "sales",
    "marketing": "marketing",
    "other": None,
    "review": None,
}
_LEAD_KIND: dict[Decision, LeadKind | None] = {
    "sales": LeadKind.HOT,
    "marketing": LeadKind.NURTURE,
    "other": None,
    "review": None,
}


def keyword_for(decision: str) -> str:
    """The IMAP keyword that shows a decision in mail clients, e.g. `$Triage-Sales`."""
    return KEYWORD_PREFIX + decision.capitalize()


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
    template = _REPLY_TEMPLATE[decision]
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
    lead_kind = _LEAD_KIND[decision]
    if lead_kind is not None and not (msg.contact.email or (msg.from_ and msg.from_.email)):
        reasons.append("no sender address: no lead recorded")
        lead_kind = None
    folder = f"{folder_prefix}/{decision.capitalize()}" if folder_prefix else None
    return Disposition(
        decision=decision,
        reply_template=template,
        lead_kind=lead_kind,
        keyword=keyword_for(decision),
        folder=folder,
        reasons=tuple(reasons),
        # How the reply is routed (a Reply-To passed over, fixed text only) is on record too.
        notes=verdict.notes if template is not None else (),
    )
