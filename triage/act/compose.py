"""Build the MIME reply to one inbound message from its rendered template parts.

Headers are built with `email.message.EmailMessage` under `policy.SMTP`, which encodes non-ASCII
text (RFC 2047) and folds long lines. Every value that came from a message or a template is made
single-line first, so a CR or LF in a name or subject can never start a header of its own.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime

from triage.act.replies import RenderedReply, ReplyVariables, TemplateRenderer
from triage.core.errors import ConfigError, PermanentError, TriageError
from triage.core.models import Address, InboundMessage
from triage.core.sanitize import is_addr_spec, one_line, strip_invisible
from triage.core.settings import RepliesSettings

# "Re:" in the languages we answer in, optionally numbered ("Re[2]:"): already a reply subject.
_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv|antw|vs|ref|rif|r)\s*(?:\[\d+\])?\s*:", re.IGNORECASE)
MAX_REFERENCES = 20  # keep the thread's root and the newest ids; enough for every client to thread


def message_id_domain(replies: RepliesSettings) -> str:
    """The domain of our Message-IDs: `message_id_domain`, else the domain of `from_address`."""
    from_domain = replies.from_address.rpartition("@")[2] if "@" in replies.from_address else ""
    domain = replies.message_id_domain or from_domain
    if not domain or not re.fullmatch(r"[A-Za-z0-9.-]+", domain):
        raise ConfigError("replies.message_id_domain (or the domain of from_address) is not valid")
    return domain.lower()


def reply_message_id(inbound_message_id: str, domain: str) -> str:
    """The Message-ID of our reply to `inbound_message_id`: the same input gives the same id, so a
    reply that was already made is recognised (unique in the outbox) instead of sent again."""
    digest = hashlib.sha256(inbound_message_id.strip().encode("utf-8")).hexdigest()[:24]
    return f"<triage.{digest}@{domain}>"


def reply_subject(subject: str, prefix: str = "Re: ") -> str:
    """`prefix` + `subject`, single-line, without doubling an existing `Re:`/`AW:`/`SV:` …"""
    subject = one_line(subject, 998)
    if not prefix.strip() or _REPLY_PREFIX.match(subject):
        return subject
    return f"{prefix}{subject}"


def _references(msg: InboundMessage) -> list[str]:
    # RFC 5322 3.6.4: the parent's References (or its In-Reply-To) followed by its Message-ID.
    refs = [r for r in msg.references if r.strip()]
    if not refs and msg.in_reply_to.strip():
        refs = [msg.in_reply_to.strip()]
    ids = [one_line(r, 250) for r in [*refs, msg.message_id] if _is_msgid(r)]
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return ids


def _is_msgid(value: str) -> bool:
    value = value.strip()
    return value.startswith("<") and value.endswith(">") and "@" in value and " " not in value


def _cte(text: str) -> str | None:
    # 7-bit clean on the wire: no reliance on the server's 8BITMIME for non-ASCII text.
    return None if text.isascii() else "quoted-printable"


def header_address(
    name: str,
    email: str,
    what: str = "a reply",
    error: type[TriageError] = PermanentError,
) -> HeaderAddress:
    """A From/To header address, each part one line: `error` (naming `what` is addressed) when
    `email` is no address — PermanentError for a reply, ConfigError for a configured address."""
    try:
        return HeaderAddress(display_name=one_line(name), addr_spec=one_line(email, 320))
    except (ValueError, IndexError) as exc:
        raise error(f"cannot address {what} to {email[:80]!r}: {exc}") from None


def compose(
    msg: InboundMessage,
    destination: Address,
    rendered: RenderedReply,
    replies: RepliesSettings,
    *,
    trusted: bool = False,
    now: datetime | None = None,
) -> EmailMessage:
    """The complete reply to `msg`, addressed to `destination` (the guards' verdict).

    The To header carries a display name only when `trusted` (an authenticated sender answered
    at its own address): otherwise a stranger's name, which could be an advertisement, would be
    the first thing the recipient reads. Raises PermanentError when `destination` is not a usable
    address, ConfigError when our own address settings are unusable.
    """
    reply = EmailMessage(policy=policy.SMTP)
    try:
        reply["From"] = HeaderAddress(
            display_name=one_line(replies.from_name), addr_spec=replies.from_address
        )
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"replies.from_address {replies.from_address!r}: {exc}") from None
    to_name = ""
    if trusted:
        # A Reply-To without a display name: greet the sender by the name the signature gave.
        same = msg.contact.email.strip().lower() == destination.email.strip().lower()
        to_name = strip_invisible(destination.name or (msg.contact.name if same else ""))
    if not is_addr_spec(destination.email):
        raise PermanentError(f"cannot address a reply to {destination.email[:80]!r}")
    reply["To"] = header_address(to_name, destination.email)
    reply["Subject"] = reply_subject(rendered.subject, replies.subject_prefix)
    reply["Date"] = format_datetime(now or datetime.now(UTC))
    reply["Message-ID"] = reply_message_id(msg.message_id, message_id_domain(replies))
    # A message id we invented ourselves means nothing to the sender's client: don't thread on it.
    # Nor do we repeat ids a stranger chose (`<WIN-A-FREE-IPHONE@spam.example>`) to an address
    # nobody vouched for: a fixed-text reply stands alone.
    if trusted and not msg.message_id_synthesised and _is_msgid(msg.message_id):
        reply["In-Reply-To"] = one_line(msg.message_id, 250)
        reply["References"] = " ".join(_references(msg))
    # RFC 3834 5: mark the reply as automatic, and ask Exchange not to answer it (loop brake).
    reply["Auto-Submitted"] = "auto-replied"
    reply["X-Auto-Response-Suppress"] = "All"
    reply.set_content(rendered.text, subtype="plain", charset="utf-8", cte=_cte(rendered.text))
    if rendered.html is not None:
        reply.add_alternative(
            rendered.html, subtype="html", charset="utf-8", cte=_cte(rendered.html)
        )
        for part in reply.iter_parts():
            del part["MIME-Version"]  # add_alternative copies it into the parts; it belongs on top
    # After set_content, which clears every Content-* header.
    reply["Content-Language"] = rendered.language or replies.default_language
    return reply


def make_reply(
    msg: InboundMessage,
    destination: Address,
    template: str,
    renderer: TemplateRenderer,
    replies: RepliesSettings,
    *,
    lead_owner: str = "",
    trusted: bool = False,
    now: datetime | None = None,
) -> EmailMessage:
    """Render outcome `template` in the message's language and compose the reply: what the
    pipeline calls for one planned reply. `trusted` (the verdict's `reflect`) lets the reply
    repeat the sender's name, company and subject. Raises TemplateError, PermanentError or
    ConfigError."""
    variables = ReplyVariables.for_message(
        msg, replies, destination=destination, lead_owner=lead_owner, trusted=trusted
    )
    rendered = renderer.render(template, variables, msg.language)
    return compose(msg, destination, rendered, replies, trusted=trusted, now=now)
