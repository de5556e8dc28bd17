"""Auto-reply etiquette (RFC 3834, RFC 5230): whether a message may be answered, and why not.

Each rule is a small named unit that looks at one inbound message (and the destination a reply
would go to) and returns a reason string, or None when it has no objection. `check` runs every rule
and returns all the reasons, so a human can see each one that applied. A reason always starts with
the rule's name (`list-header: List-Id …`), which is what reports group by.

Rules marked `machine` identify mail written by a machine (bounces, auto-replies, lists, bulk); the
classifier uses them through `automated_reason` to label such mail `other` without the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from triage.models import Address, InboundMessage, Verdict
from triage.settings import RepliesSettings

# RFC 5230 4.1: the minimum interval between two replies to one sender is one day.
MIN_WINDOW = timedelta(days=1)
DEFAULT_WINDOW = timedelta(days=7)


class ReplyHistory(Protocol):
    """What the rate rules need to know about replies already made (the outbox implements it)."""

    def replied_recently(self, address: str, window: timedelta) -> bool:
        """True when a reply to `address` was made or queued within `window`."""
        ...

    def replies_last_hour(self) -> int:
        """How many replies were made or queued during the last hour, to anyone."""
        ...


@dataclass(frozen=True, slots=True)
class GuardContext:
    """What the rules need besides the message: who we are, and what we replied before.

    Addresses are compared lower-cased with any `+detail` removed. `history=None` switches the two
    rate rules off (for `triage classify` on files, where there is no outbox).
    """

    our_addresses: frozenset[str] = frozenset()
    message_id_domains: frozenset[str] = frozenset()
    form_senders: frozenset[str] = frozenset()
    require_return_path: bool = True
    require_addressed_to_us: bool = True
    window: timedelta = DEFAULT_WINDOW
    max_per_hour: int = 60
    history: ReplyHistory | None = field(default=None, compare=False)

    @classmethod
    def from_settings(
        cls,
        replies: RepliesSettings,
        history: ReplyHistory | None,
        *,
        require_return_path: bool = True,
    ) -> GuardContext:
        """The context for the daemon (`require_return_path=True`: LMTP adds Return-Path) or for
        files (`False`: a message read from a file or APPENDed has none)."""
        ours = {replies.from_address, replies.envelope_sender, *replies.our_addresses}
        domain = replies.message_id_domain or Address("", replies.from_address).domain
        return cls(
            our_addresses=frozenset(canonical(a) for a in ours if a),
            message_id_domains=frozenset({domain.lower()} if domain else set()),
            form_senders=frozenset(s.strip().lower() for s in replies.form_senders if s.strip()),
            require_return_path=require_return_path,
            require_addressed_to_us=replies.require_addressed_to_us,
            window=timedelta(days=replies.window_days),
            max_per_hour=replies.max_per_hour,
            history=history,
        )

    def is_ours(self, email: str) -> bool:
        """True when `email` is one of our own addresses."""
        return canonical(email) in self.our_addresses

    def is_form_sender(self, email: str) -> bool:
        """True when `email` is a configured web-form relay (`forms@x.example` or `@x.example`)."""
        addr = email.strip().lower()
        domain = addr.rpartition("@")[2]
        return addr in self.form_senders or f"@{domain}" in self.form_senders


def canonical(email: str) -> str:
    """`Hello+Web@Example.COM` → `hello@example.com`: the form addresses are compared in."""
    local, at, domain = email.strip().lower().rpartition("@")
    if not at:
        return email.strip().lower()
    return f"{local.split('+', 1)[0]}@{domain}"


Check = Callable[[InboundMessage, GuardContext, Address | None], str | None]


@dataclass(frozen=True, slots=True)
class Rule:
    """One etiquette rule: `check(msg, ctx, destination)` returns a reason or None."""

    name: str
    check: Check
    machine: bool = False

    def __call__(self, msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
        reason = self.check(msg, ctx, dest)
        return None if reason is None else f"{self.name}: {reason}"


def rule(name: str, *, machine: bool = False) -> Callable[[Check], Rule]:
    """Decorator: turn a check function into a named `Rule`."""

    def wrap(check: Check) -> Rule:
        return Rule(name=name, check=check, machine=machine)

    return wrap


# --- helpers -------------------------------------------------------------------------------------

_DO_NOT_REPLY = re.compile(
    r"""^(?:
        mailer[-_.]?daemon | post[-_.]?master | listserv | majordomo | nobody
      | bounces? (?:[-_.+].*)?            # bounce, bounces, bounce-123-x (VERP)
      | owner-.+ | .+-owner | .+-request | .+-bounces(?:[-+].*)?   # list software
      | notifications? | .*-notifications?
    )$
    | no[-_.]?reply | do[-_.]?not[-_.]?reply    # anywhere: orders-noreply, noreply-billing
    """,
    re.IGNORECASE | re.VERBOSE,
)

# A plain addr-spec with a dotted domain: nothing a header could be smuggled in with.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_ADDR_SPEC = re.compile(rf"^[^@\s<>()\[\],;:\"\\]+@{_LABEL}(?:\.{_LABEL})+$")


def is_do_not_reply(email: str) -> bool:
    """True when the local part says replies go nowhere (`noreply`, `mailer-daemon`, `x-owner`)."""
    local = email.rpartition("@")[0] or email
    return bool(_DO_NOT_REPLY.search(local.strip()))


def _token(value: str) -> str:
    """The first token of a header value, lower-cased: `Auto-Replied; x=1` → `auto-replied`."""
    return value.split(";", 1)[0].strip().lower()


def _msgid_domain(msgid: str) -> str:
    return msgid.strip().strip("<>").rpartition("@")[2].lower()


# --- rules: the envelope -------------------------------------------------------------------------


@rule("null-return-path", machine=True)
def _null_return_path(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # RFC 3834 2: a message with an empty envelope sender is a bounce or an auto-reply itself.
    if msg.return_path is not None and msg.return_path.strip().strip("<>").strip() == "":
        return "Return-Path is <> (a bounce or an automatic message)"
    return None


@rule("no-return-path")
def _missing_return_path(
    msg: InboundMessage, ctx: GuardContext, dest: Address | None
) -> str | None:
    # Delivered mail always has one (Dovecot LMTP adds it); without it we cannot tell a null sender.
    if ctx.require_return_path and msg.return_path is None:
        return "the message has no Return-Path, so the envelope sender is unknown"
    return None


# --- rules: headers that mark machine mail -------------------------------------------------------


@rule("auto-submitted", machine=True)
def _auto_submitted(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # RFC 3834 5: any value but "no" means a machine sent it.
    if msg.has_header("auto-submitted") and _token(msg.header("auto-submitted")) != "no":
        return f"Auto-Submitted: {_token(msg.header('auto-submitted')) or '(empty)'}"
    return None


# Headers of list software that predates RFC 2369 (ezmlm, fml, Mailman 2, Sympa).
_LIST_EXTRA = (
    "mailing-list",
    "x-mailing-list",
    "x-list",
    "x-ml-name",
    "x-mlserver",
    "x-ml-count",
    "x-mailman-version",
    "x-beenthere",
)


@rule("list-header", machine=True)
def _list_header(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # RFC 2369/2919: mail from a list goes to many; a reply would go to the list or its owner.
    names = sorted(n for n in msg.headers if n.startswith("list-") or n in _LIST_EXTRA)
    if names:
        return "mailing list header " + ", ".join(_title(n) for n in names)
    return None


_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply", "auto-reply"})


@rule("precedence", machine=True)
def _precedence(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    for name in ("precedence", "x-precedence"):
        value = _token(msg.header(name))
        if value in _BULK_PRECEDENCE:
            return f"{_title(name)}: {value}"
    return None


_SUPPRESS = frozenset({"all", "oof", "autoreply"})


@rule("auto-response-suppress", machine=True)
def _auto_response_suppress(
    msg: InboundMessage, ctx: GuardContext, dest: Address | None
) -> str | None:
    # Microsoft's header: the sender asks for no out-of-office or auto-replies.
    values = {v.strip().lower() for v in msg.header("x-auto-response-suppress").split(",")}
    hit = sorted(values & _SUPPRESS)
    if hit:
        return "X-Auto-Response-Suppress: " + ", ".join(hit)
    return None


_AUTOREPLY_HEADERS = (
    "x-autoreply",
    "x-autorespond",
    "x-autoreply-from",
    "x-mail-autoreply",
    "x-autogenerated",
    "x-auto-reply",
    "x-autoresponder",
    "x-autoresponse",
    "x-vacation",
    "x-fc-machinegenerated",
    "x-cron-env",
    "x-ms-exchange-generated-message-source",
)
_AUTOREPLY_SUBJECT = re.compile(
    r"^\s*(?:automatic\s+reply|auto[-\s]?reply|auto[-\s]?response|out\s+of\s+(?:the\s+)?office\s*(?::|auto[-\s]?reply)"
    r"|abwesenheitsnotiz|automatische\s+antwort|r[ée]ponse\s+automatique|risposta\s+automatica"
    r"|respuesta\s+autom[áa]tica|automatisch\s+antwoord)(?:(?<=:)|(?!\w))",
    re.IGNORECASE,
)


@rule("autoreply", machine=True)
def _autoreply(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # Vacation programs and ticket systems that predate RFC 3834 mark themselves this way.
    names = [n for n in _AUTOREPLY_HEADERS if msg.has_header(n)]
    if names:
        return "autoresponder header " + ", ".join(_title(n) for n in names)
    if _AUTOREPLY_SUBJECT.match(msg.subject):
        return f"subject looks like an automatic reply: {msg.subject[:60]!r}"
    return None


_REPORT_PARTS = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/disposition-notification",
        "message/global-disposition-notification",
        "message/feedback-report",
        "text/rfc822-headers",
        "message/global-headers",
    }
)
_REPORT_TYPE = re.compile(r"report-type\s*=\s*\"?([\w.-]+)", re.IGNORECASE)
# Subjects that mail servers put on bounces, anchored at the start: people don't write these.
_BOUNCE_SUBJECT = re.compile(
    r"^\s*(?:(?:fwd?|wg|tr)\s*:\s*)?"  # a person forwarding a bounce is not asking us anything
    r"(?:complaint\s+about\s+message\s+from"  # Hotmail's feedback-loop report
    r"|undelivered\s+mail\s+returned\s+to\s+sender|delivery\s+status\s+notification"
    r"|undeliverable\s*:|undeliverable\s+(?:mail|message)|mail\s+delivery\s+failed"
    r"|mail\s+delivery\s+failure|returned\s+mail\s*:|failure\s+notice"
    r"|non[-\s]?delivery\s+(?:report|notification)|nondeliverable\s+mail"
    r"|mail\s+system\s+error\s*-\s*returned\s+mail|delivery\s+notification\s*:\s*delivery\s+has\s+failed"
    r"|delivery\s+failure\s*:|warning\s*:\s*could\s+not\s+send\s+message"
    r"|delayed\s+mail|message\s+delivery\s+failure|mail\s+could\s+not\s+be\s+delivered"
    r"|unzustellbar\s*:|non\s+remis\s*:|non\s+recapitabile\s*:)",
    re.IGNORECASE,
)


@rule("report", machine=True)
def _report(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # RFC 3464/8098/5965: delivery status, read receipts and abuse reports are never answered.
    content_type = msg.header("content-type") or msg.content_type
    if content_type.strip().lower().startswith("multipart/report") or msg.content_type.lower() == (
        "multipart/report"
    ):
        found = _REPORT_TYPE.search(content_type)
        return "multipart/report" + (f"; report-type={found.group(1).lower()}" if found else "")
    parts = sorted({a.content_type.lower() for a in msg.attachments} & _REPORT_PARTS)
    if parts:
        return "report part " + ", ".join(parts)
    if msg.has_header("x-failed-recipients"):
        return "X-Failed-Recipients header (a bounce)"
    if _BOUNCE_SUBJECT.match(msg.subject):
        return f"subject of a bounce: {msg.subject[:60]!r}"
    return None


@rule("do-not-reply-sender", machine=True)
def _do_not_reply_sender(
    msg: InboundMessage, ctx: GuardContext, dest: Address | None
) -> str | None:
    # Only when *every* address the message offers is a robot's: web forms send from no-reply@
    # but carry the prospect in Reply-To or in the form's Email field, and those are human mail.
    offered = [a.email for a in msg.reply_to] + [msg.contact.email]
    offered += [msg.from_.email] if msg.from_ else []
    offered = [a for a in offered if a]
    if offered and all(is_do_not_reply(a) for a in offered):
        return f"the sender {offered[-1]} does not take replies"
    return None


# --- rules: the destination and our own identity -------------------------------------------------


@rule("no-destination")
def _no_destination(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    if dest is None:
        if msg.from_ and ctx.is_form_sender(msg.from_.email):
            return f"web form from {msg.from_.email} carries no prospect address"
        return "the message has no sender address to reply to"
    if not _ADDR_SPEC.match(dest.email):
        return f"the reply address {dest.email[:80]!r} is not a valid address"
    return None


@rule("do-not-reply-destination")
def _do_not_reply_destination(
    msg: InboundMessage, ctx: GuardContext, dest: Address | None
) -> str | None:
    if dest is not None and is_do_not_reply(dest.email):
        return f"the reply would go to {dest.email}, which does not take replies"
    return None


@rule("own-address")
def _own_address(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # A relay configured as a form sender may legitimately send as one of our addresses.
    sender = msg.from_.email if msg.from_ else ""
    if sender and ctx.is_ours(sender) and not ctx.is_form_sender(sender):
        return f"the sender {sender} is one of our own addresses"
    if dest is not None and ctx.is_ours(dest.email):
        return f"the reply would go to our own address {dest.email}"
    return None


@rule("own-message-id")
def _own_message_id(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # Our own reply coming back (a forward, a loop through an autoresponder) must not be answered.
    if not ctx.message_id_domains:
        return None
    # Only ids we generate ourselves count: colleagues and test users may share our domain.
    own_id = msg.message_id.strip().strip("<>")
    if (
        not msg.message_id_synthesised
        and own_id.startswith("triage.")
        and _msgid_domain(own_id) in ctx.message_id_domains
    ):
        return f"the Message-ID {msg.message_id} is one of our own replies"
    for ref in (msg.in_reply_to, *msg.references):
        ref_id = ref.strip().strip("<>")
        if ref_id.startswith("triage.") and _msgid_domain(ref_id) in ctx.message_id_domains:
            return f"it answers our automatic reply {ref.strip()}"
    loop = msg.header("x-loop").lower()
    if loop and any(ours in loop for ours in ctx.our_addresses):
        return f"X-Loop names our address: {loop[:80]}"
    return None


@rule("not-addressed-to-us")
def _not_addressed_to_us(
    msg: InboundMessage, ctx: GuardContext, dest: Address | None
) -> str | None:
    # RFC 3834 3.1.1: reply only when one of our addresses is an explicit recipient (not Bcc,
    # not a list we are on).
    if not ctx.require_addressed_to_us:
        return None
    if any(ctx.is_ours(a.email) for a in (*msg.to, *msg.cc)):
        return None
    return "none of our addresses is in To or Cc"


# --- rules: rate limits (need the reply history) -------------------------------------------------


@rule("already-replied")
def _already_replied(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # RFC 5230 4.2: at most one automatic reply per sender per window (at least one day).
    if ctx.history is None or dest is None:
        return None
    window = max(ctx.window, MIN_WINDOW)
    if ctx.history.replied_recently(canonical(dest.email), window):
        return f"{dest.email} got an automatic reply within the last {_days(window)}"
    return None


@rule("hourly-cap")
def _hourly_cap(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # A global brake: a flood of inquiries (or a loop we failed to detect) cannot become a flood
    # of replies. max_per_hour = 0 stops every automatic reply.
    if ctx.history is None:
        return None
    made = ctx.history.replies_last_hour()
    if made >= ctx.max_per_hour:
        return f"{made} replies in the last hour reached the cap of {ctx.max_per_hour}"
    return None


# The order reasons are listed in: envelope, machine markers, destination, identity, rate.
RULES: tuple[Rule, ...] = (
    _null_return_path,
    _missing_return_path,
    _report,
    _auto_submitted,
    _autoreply,
    _auto_response_suppress,
    _list_header,
    _precedence,
    _do_not_reply_sender,
    _no_destination,
    _do_not_reply_destination,
    _own_address,
    _own_message_id,
    _not_addressed_to_us,
    _already_replied,
    _hourly_cap,
)
MACHINE_RULES: tuple[Rule, ...] = tuple(r for r in RULES if r.machine)

_MACHINE_CTX = GuardContext(require_return_path=False, require_addressed_to_us=False)


def destination(msg: InboundMessage, ctx: GuardContext) -> Address | None:
    """Where a reply would go: the prospect for a configured web form, else Reply-To, else From."""
    sender = msg.from_
    if sender is not None and ctx.is_form_sender(sender.email):
        for addr in msg.reply_to:
            if addr.email and canonical(addr.email) != canonical(sender.email):
                return addr
        contact = msg.contact.email
        if contact and canonical(contact) != canonical(sender.email):
            return Address(msg.contact.name, contact)
        return None
    for addr in msg.reply_to:
        if addr.email:
            return addr
    return sender if sender is not None and sender.email else None


def check(msg: InboundMessage, ctx: GuardContext, rules: Iterable[Rule] = RULES) -> Verdict:
    """Run every rule and return whether a reply may be sent, every reason against, and to whom."""
    dest = destination(msg, ctx)
    reasons: list[str] = []
    for each in rules:
        reason = each(msg, ctx, dest)
        if reason is not None:
            reasons.append(reason)
    return Verdict(may_reply=not reasons, reasons=tuple(reasons), destination=dest)


def automated_reason(msg: InboundMessage) -> str | None:
    """The reason `msg` was sent by a machine (bounce, auto-reply, list, bulk), or None."""
    for each in MACHINE_RULES:
        reason = each(msg, _MACHINE_CTX, None)
        if reason is not None:
            return reason
    return None


def _title(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))


def _days(window: timedelta) -> str:
    days = window / timedelta(days=1)
    return f"{days:g} day" + ("" if days == 1 else "s")
