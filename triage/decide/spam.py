"""Spam verdicts that our own receiving server wrote into a message: `other` without the model.

SpamAssassin, rspamd and Exchange Online Protection add a header with their verdict. Anyone can
write the same header into a message they send, so a verdict counts only for header names the
operator lists in `classifier.trusted_spam_headers`: names their own server adds to every
message and removes from incoming mail first (SpamAssassin replaces its `X-Spam-*` headers;
rspamd's milter_headers module does with `remove`). Only the first (topmost, so newest) copy of a
header is read. A forged verdict could only make its own sender go unanswered, never earn a
reply: a "not spam" verdict is never used.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from triage.core.models import InboundMessage
from triage.core.settings import SPAM_VERDICT_HEADERS as KNOWN
from triage.decide.guards import header_title

__all__ = ["KNOWN", "RULE_NAME", "says_spam", "upstream_spam"]

RULE_NAME = "upstream-spam"

_YES = re.compile(r"\s*(?:yes|true|spam)\b", re.IGNORECASE)
_SPAMD = re.compile(r"\s*[\w-]+\s*:\s*true\b", re.IGNORECASE)
_RSPAMD_SPAM_ACTIONS = frozenset({"add header", "rewrite subject", "reject", "soft reject"})
SPAM_SCL = 5  # Exchange: 5 and 6 are spam, 7-9 high-confidence spam; -1 (safe sender)..4 not


def upstream_spam(msg: InboundMessage, trusted: Collection[str]) -> str | None:
    """The header rule's reason when a trusted header of `msg` says spam, else None."""
    for name in trusted:
        value = msg.headers.get(name)
        if value is not None and says_spam(name, value):
            return f"{RULE_NAME}: {header_title(name)}: {value.strip()[:60]}"
    return None


def says_spam(name: str, value: str) -> bool:
    """True when header `name` (lower-case) with `value` is a spam verdict."""
    if name == "x-spamd-result":
        return bool(_SPAMD.match(value))
    if name == "x-rspamd-action":
        return value.strip().lower() in _RSPAMD_SPAM_ACTIONS
    if name == "x-ms-exchange-organization-scl":
        try:
            return int(value.strip()) >= SPAM_SCL
        except ValueError:
            return False
    return bool(_YES.match(value))
