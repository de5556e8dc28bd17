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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Protocol, runtime_checkable

from triage.core.models import Address, InboundMessage, Verdict
from triage.core.sanitize import is_addr_spec
from triage.core.settings import RepliesSettings
from triage.decide.sender_auth import aligned, authenticate

# RFC 5230 4.1: the minimum interval between two replies to one sender is one day.
MIN_WINDOW = timedelta(days=1)
DEFAULT_WINDOW = timedelta(days=7)


class ReplyHistory(Protocol):
    """What the rate rule needs to know about replies already made (the outbox implements it)."""

    def replied_recently(self, address: str, window: timedelta, *, verified: bool = False) -> bool:
        """True when a reply to canonical address `address` was made or queued within `window`;
        with `verified`, only replies to a verified sender count (a fixed-text reply to a
        message forged in someone's name must not use up that person's one reply)."""
        ...


@runtime_checkable
class BatchReplyHistory(ReplyHistory, Protocol):
    """A reply history that also answers for many addresses at once (the outbox does)."""

    def recent_recipients(self, addresses: Iterable[str], window: timedelta) -> dict[str, bool]:
        """Each of `addresses` that got a reply within `window`, with whether one counts for a
        verified sender too (`replied_recently` with and without `verified`)."""
        ...


@dataclass(frozen=True, slots=True)
class GuardContext:
    """What the rules need besides the message: who we are, and what we replied before.

    Addresses are compared in their `canonical` form. `history=None` switches the rate rule off
    (for `triage classify` on files, where there is no outbox). The hourly and per-domain caps
    are not etiquette: they defer sending (see `outbox`), they never refuse a reply.
    """

    our_addresses: frozenset[str] = frozenset()
    message_id_domains: frozenset[str] = frozenset()
    form_senders: frozenset[str] = frozenset()
    require_return_path: bool = True
    require_addressed_to_us: bool = True
    window: timedelta = DEFAULT_WINDOW
    dotless_domains: frozenset[str] = frozenset()
    trusted_authserv_ids: frozenset[str] = frozenset()
    unauthenticated: str = "fixed"
    history: ReplyHistory | None = field(default=None, compare=False)
    # Per message (see `for_route`): our server authenticated the From address; the reply would
    # go to that authenticated sender.
    sender_verified: bool = False
    recipient_verified: bool = False
    # `for_route`'s contexts by (verified, reflect), made once each: a context is routed for
    # every message, and it never changes (a new history makes a new context and a new cache).
    _routes: dict[tuple[bool, bool], GuardContext] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

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
        dotless = frozenset(d.strip().lower() for d in replies.dotless_domains if d.strip())
        return cls(
            our_addresses=frozenset(canonical(a, dotless) for a in ours if a),
            message_id_domains=frozenset({domain.lower()} if domain else set()),
            form_senders=frozenset(s.strip().lower() for s in replies.form_senders if s.strip()),
            require_return_path=require_return_path,
            require_addressed_to_us=replies.require_addressed_to_us,
            window=timedelta(days=replies.window_days),
            dotless_domains=dotless,
            trusted_authserv_ids=frozenset(
                t.strip().lower() for t in replies.trusted_authserv_ids if t.strip()
            ),
            unauthenticated=replies.unauthenticated,
            history=history,
        )

    def for_route(self, where: Route) -> GuardContext:
        """This context for one message routed as `where`: what the rules know of its sender."""
        key = (where.verified, where.reflect)
        routed = self._routes.get(key)
        if routed is None:
            routed = replace(self, sender_verified=where.verified, recipient_verified=where.reflect)
            self._routes[key] = routed
        return routed

    def canonical(self, email: str) -> str:
        """`email` in the form the rate limits count it in (see `canonical`)."""
        return canonical(email, self.dotless_domains)

    def is_ours(self, email: str) -> bool:
        """True when `email` is one of our own addresses."""
        return self.canonical(email) in self.our_addresses

    def is_form_sender(self, email: str) -> bool:
        """True when `email` is a configured web-form relay (`forms@x.example` or `@x.example`)."""
        addr = email.strip().lower()
        domain = addr.rpartition("@")[2]
        return addr in self.form_senders or f"@{domain}" in self.form_senders


# Providers that deliver `j.doe@` and `jdoe@` to one mailbox, and their alias domains.
_DOMAIN_ALIASES = {"googlemail.com": "gmail.com"}


def canonical(email: str, dotless_domains: frozenset[str] = frozenset()) -> str:
    """The mailbox an address reaches, as far as we can tell: `J.Doe+web@GoogleMail.com` →
    `jdoe@gmail.com` when gmail.com/googlemail.com are `dotless_domains`; case and `+detail`
    are ignored for every domain. What the per-recipient window and our own addresses compare."""
    local, at, domain = email.strip().lower().rpartition("@")
    if not at:
        return email.strip().lower()
    local = local.split("+", 1)[0]
    if domain in dotless_domains:
        local = local.replace(".", "")
        domain = _DOMAIN_ALIASES.get(domain, domain)
        if domain not in dotless_domains:  # an alias configured without its target
            domain = email.strip().lower().rpartition("@")[2]
    return f"{local}@{domain}"


Check = Callable[[InboundMessage, GuardContext, Address | None], str | None]


@dataclass(frozen=True, slots=True)
class Rule:
    """One etiquette rule: `check(msg, ctx, destination)` returns a reason or None.

    A `machine` rule without `body` is a header rule (`HEADER_RULES`): it may read only what the
    message's headers and MIME structure give (`headers`, the address and id fields, `subject`,
    `content_type`, `attachments`), never the context, the destination, or anything the body
    gives (`text`, `new_text`, `language`, `contact`, `defects`): its answer is asked before the
    body is read and reused for the whole message.
    """

    name: str
    check: Check
    machine: bool = False
    body: bool = False  # reads what the body gives (the contact from a form's fields)

    def __call__(self, msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
        reason = self.check(msg, ctx, dest)
        return None if reason is None else f"{self.name}: {reason}"


def rule(name: str, *, machine: bool = False, body: bool = False) -> Callable[[Check], Rule]:
    """Decorator: turn a check function into a named `Rule`."""

    def wrap(check: Check) -> Rule:
        return Rule(name=name, check=check, machine=machine, body=body)

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
# One C-level match per header name (a list of a hundred names is read for every message).
_LIST_NAME = re.compile("list-|(?:" + "|".join(map(re.escape, _LIST_EXTRA)) + ")$")


@rule("list-header", machine=True)
def _list_header(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # RFC 2369/2919: mail from a list goes to many; a reply would go to the list or its owner.
    names = sorted(filter(_LIST_NAME.match, msg.headers))
    if names:
        return "mailing list header " + ", ".join(header_title(n) for n in names)
    return None


_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply", "auto-reply"})


@rule("precedence", machine=True)
def _precedence(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    for name in ("precedence", "x-precedence"):
        value = _token(msg.header(name))
        if value in _BULK_PRECEDENCE:
            return f"{header_title(name)}: {value}"
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
        return "autoresponder header " + ", ".join(header_title(n) for n in names)
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


@rule("do-not-reply-sender", machine=True, body=True)
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
        if msg.from_ and not msg.from_single:
            return "the From field names several mailboxes or a group: nobody to answer"
        return "the message has no sender address to reply to"
    # The same test the reply's To header and a lead's stored address pass.
    if not is_addr_spec(dest.email):
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
    key = ctx.canonical(dest.email)
    if ctx.history.replied_recently(key, window, verified=ctx.recipient_verified):
        return f"{dest.email} got an automatic reply within the last {_days(window)}"
    return None


@rule("unauthenticated")
def _unauthenticated(msg: InboundMessage, ctx: GuardContext, dest: Address | None) -> str | None:
    # replies.unauthenticated = "none": only a sender our own server authenticated is answered,
    # and a web form's visitor never is. A form notification must come from the relay itself
    # (authenticated), or anyone could pose as the form and pick whom we write to.
    if dest is None:
        return None
    form = msg.from_ is not None and ctx.is_form_sender(msg.from_.email)
    if form and ctx.unauthenticated == "none":
        return "a web-form visitor's address cannot be authenticated"
    if form and not ctx.sender_verified:
        return "the web-form relay is not authenticated by our server"
    if ctx.unauthenticated == "none" and not ctx.recipient_verified:
        return "the sender is not authenticated by our server"
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
    _unauthenticated,
    _already_replied,
)
MACHINE_RULES: tuple[Rule, ...] = tuple(r for r in RULES if r.machine)

_MACHINE_CTX = GuardContext(require_return_path=False, require_addressed_to_us=False)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a reply would go and how much of the message it may repeat.

    `reflect` is True only for a sender our own server authenticated, answered at its From or at
    a Reply-To in the same domain; a reply that is not `reflect` carries fixed text only and no
    display name from the message. `notes` say why a Reply-To was passed over.
    """

    address: Address | None
    verified: bool = False
    reflect: bool = False
    notes: tuple[str, ...] = ()


def route(msg: InboundMessage, ctx: GuardContext) -> Route:
    """Whom a reply may go to: an authenticated From (or its same-domain Reply-To), a configured
    web form's visitor (fixed text), else the From address (fixed text) — never a Reply-To that a
    stranger could point at somebody else."""
    sender = msg.from_
    if sender is not None and ctx.is_form_sender(sender.email):
        return _form_visitor(msg, ctx, sender)
    auth = authenticate(msg, ctx.trusted_authserv_ids)
    if sender is None or not sender.email or not msg.from_single:
        # "From: Team: a@x, b@y;" or "From: a@x, b@y": answering any of them is a guess.
        return Route(None)
    reply_to = next((a for a in msg.reply_to if a.email), None)
    if auth.verified:
        if reply_to is not None and aligned(reply_to.domain, sender.domain):
            return Route(reply_to, verified=True, reflect=True)
        passed_over: tuple[str, ...] = ()
        if reply_to is not None and ctx.canonical(reply_to.email) != ctx.canonical(sender.email):
            passed_over = (
                f"reply-to-ignored: Reply-To {reply_to.email[:80]} is outside the authenticated "
                f"domain {sender.domain}; the reply goes to From",
            )
        return Route(sender, verified=True, reflect=True, notes=passed_over)
    notes = [f"unauthenticated: {auth.reason}; the reply carries fixed text only"]
    if reply_to is not None and ctx.canonical(reply_to.email) != ctx.canonical(sender.email):
        notes.append(
            f"reply-to-ignored: Reply-To {reply_to.email[:80]} of an unauthenticated sender; "
            "the reply goes to From"
        )
    return Route(Address("", sender.email), notes=tuple(notes))


def _form_visitor(msg: InboundMessage, ctx: GuardContext, relay: Address) -> Route:
    # Whoever filled in the form typed this address: it may be anybody's, so fixed text only.
    # `verified` says the notification came from the relay itself.
    relay_auth = authenticate(msg, ctx.trusted_authserv_ids)
    visitor = ""
    for addr in msg.reply_to:
        if addr.email and ctx.canonical(addr.email) != ctx.canonical(relay.email):
            visitor = addr.email
            break
    contact = msg.contact.email
    if not visitor and contact and ctx.canonical(contact) != ctx.canonical(relay.email):
        visitor = contact
    if not visitor:
        return Route(None, verified=relay_auth.verified)
    note = "web-form: the visitor's address is not authenticated; the reply carries fixed text only"
    if not relay_auth.verified:
        note = f"web-form: the relay is not authenticated ({relay_auth.reason})"
    return Route(Address("", visitor), verified=relay_auth.verified, notes=(note,))


def check(msg: InboundMessage, ctx: GuardContext, rules: Iterable[Rule] = RULES) -> Verdict:
    """Run every rule and return whether a reply may be sent, every reason against, and to whom."""
    where = route(msg, ctx)
    ctx = ctx.for_route(where)
    reasons: list[str] = []
    for each in rules:
        reason = each(msg, ctx, where.address)
        if reason is not None:
            reasons.append(reason)
    return verdict_of(where, reasons)


def verdict_of(where: Route, reasons: Iterable[str]) -> Verdict:
    """The verdict for a route and the reasons the rules gave against replying."""
    found = tuple(reasons)
    return Verdict(
        may_reply=not found,
        reasons=found,
        destination=where.address,
        verified=where.verified,
        reflect=where.reflect,
        notes=where.notes,
    )


def automated_reason(msg: InboundMessage) -> str | None:
    """The reason `msg` was sent by a machine (bounce, auto-reply, list, bulk), or None."""
    for each in MACHINE_RULES:
        reason = each(msg, _MACHINE_CTX, None)
        if reason is not None:
            return reason
    return None


# The rules that read a message's headers and nothing else (neither the context nor where a
# reply would go), by index in RULES: the machine rules that do not read the body. Their answers
# are the same for the message as its headers alone give it and for the whole message, in any
# context: the worker processes ask them once, before reading the body, and reuse the answers in
# their etiquette check (`triage.ingest.workers`).
HEADER_RULES: tuple[int, ...] = tuple(i for i, r in enumerate(RULES) if r.machine and not r.body)


def header_answers(msg: InboundMessage) -> dict[int, str | None]:
    """The answer of every header rule for `msg`, by rule index (None: no reason against)."""
    return {i: RULES[i](msg, _MACHINE_CTX, None) for i in HEADER_RULES}


def first_header_reason(answers: Mapping[int, str | None]) -> str | None:
    """The reason a header rule gives that a message was sent by a machine, from the header
    rules' `answers` (`header_answers`): the first machine rule's reason, unless a machine rule
    that reads the body comes before it. The same as `automated_reason` whenever it is not None
    (the header rules come first), so the body need not be read then."""
    for index, each in enumerate(RULES):
        if not each.machine:
            continue
        if each.body:
            return None  # what follows may depend on the body
        reason = answers[index]
        if reason is not None:
            return reason
    return None


def header_title(header: str) -> str:
    """A header name as people write it: "list-id" → "List-Id"."""
    return "-".join(part.capitalize() for part in header.split("-"))


def _days(window: timedelta) -> str:
    days = window / timedelta(days=1)
    return f"{days:g} day" + ("" if days == 1 else "s")
