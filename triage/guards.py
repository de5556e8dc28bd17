"""Auto-reply etiquette (RFC 3834, RFC 5230): whether a message may be answered, and why not."""

from __future__ import annotations

from triage.models import InboundMessage


def automated_reason(msg: InboundMessage) -> str | None:
    """The reason `msg` was sent by a machine (bounce, auto-reply, list, bulk), or None."""
    return None
