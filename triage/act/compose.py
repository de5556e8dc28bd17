"""Build the MIME reply to one inbound message from its rendered template parts.

The reply is written as `email`'s generator writes an `EmailMessage` under `policy.SMTP`, whose
header classes encode non-ASCII text (RFC 2047) and fold long lines. Every value that came from a
message or a template is made single-line first, so a CR or LF in a name or subject can never
start a header of its own.
"""

from __future__ import annotations

import binascii
import email
import functools
import hashlib
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy, quoprimime
from email.headerregistry import Address as HeaderAddress
from email.headerregistry import BaseHeader
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

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


@dataclass(frozen=True, slots=True)
class ComposedReply:
    """A reply as it goes on the wire: its Message-ID and its bytes (CRLF, 7-bit clean)."""

    message_id: str
    raw: bytes

    def message(self) -> EmailMessage:
        """The reply parsed again (for a preview or a test): what a receiving client sees."""
        parsed = email.message_from_bytes(self.raw, policy=_POLICY)
        assert isinstance(parsed, EmailMessage)
        return parsed


def compose(
    msg: InboundMessage,
    destination: Address,
    rendered: RenderedReply,
    replies: RepliesSettings,
    *,
    trusted: bool = False,
    now: datetime | None = None,
) -> ComposedReply:
    """The complete reply to `msg`, addressed to `destination` (the guards' verdict).

    The To header carries a display name only when `trusted` (an authenticated sender answered
    at its own address): otherwise a stranger's name, which could be an advertisement, would be
    the first thing the recipient reads. Raises PermanentError when `destination` is not a usable
    address, ConfigError when our own address settings are unusable.
    """
    skeleton = _skeleton(
        replies.from_name,
        replies.from_address,
        rendered.template,
        rendered.language or replies.default_language,
        html=rendered.html is not None,
    )
    to_name = ""
    if trusted:
        # A Reply-To without a display name: greet the sender by the name the signature gave.
        same = msg.contact.email.strip().lower() == destination.email.strip().lower()
        to_name = strip_invisible(destination.name or (msg.contact.name if same else ""))
    if not is_addr_spec(destination.email):
        raise PermanentError(f"cannot address a reply to {destination.email[:80]!r}")
    message_id = reply_message_id(msg.message_id, message_id_domain(replies))
    lines = [
        skeleton.sender,
        _to_line(to_name, destination.email),
        _line("Subject", reply_subject(rendered.subject, replies.subject_prefix)),
        _line("Date", format_datetime(now or datetime.now(UTC))),
        _line("Message-ID", message_id),
    ]
    # A message id we invented ourselves means nothing to the sender's client: don't thread on it.
    # Nor do we repeat ids a stranger chose (`<WIN-A-FREE-IPHONE@spam.example>`) to an address
    # nobody vouched for: a fixed-text reply stands alone.
    if trusted and not msg.message_id_synthesised and _is_msgid(msg.message_id):
        lines.append(_line("In-Reply-To", one_line(msg.message_id, 250)))
        lines.append(_line("References", " ".join(_references(msg))))
    lines += skeleton.head
    version, language = skeleton.tail
    if rendered.html is None:
        part = _text_part("plain", rendered.text)
        lines += [*part.head, version, language, _CRLF, part.body]
    else:
        text, html = _text_part("plain", rendered.text), _text_part("html", rendered.html)
        boundary = _boundary(text.body, html.body)
        lines += [version, _multipart_type(boundary), language, _CRLF]
        # What `email.generator` writes for a multipart/alternative without preamble/epilogue.
        for part in (text, html):
            lines += [f"--{boundary}{_CRLF}", *part.head, _CRLF, part.body, _CRLF]
        lines.append(f"--{boundary}--{_CRLF}")
    # Every line is ASCII: non-ASCII header text is RFC 2047-encoded, bodies 7-bit encoded.
    return ComposedReply(message_id, "".join(lines).encode("ascii"))


# -- the fast path ------------------------------------------------------------------------------
#
# `EmailMessage.__setitem__`, `set_content` and `as_bytes` cost about 5 ms per reply, most of it
# spent creating a new header class for every header (`HeaderRegistry.__getitem__`), re-parsing
# the Content-Type each time it is read and folding every header object again when serialising.
# The reply is written here as the SMTP policy's generator writes it (tests compare the bytes
# with the `EmailMessage` API's): a header value that the policy would write unchanged on one line
# is written as it is, every other one goes through the policy's own header class (which encodes
# non-ASCII text as RFC 2047 and folds it); the bodies are encoded exactly as `set_content`
# encodes them; and what is the same in every reply of one template and language (From, the
# RFC 3834 markers, the MIME headers) is built once.

_POLICY = policy.SMTP
_CRLF = "\r\n"
_NEWLINES = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class _Skeleton:
    """The header lines that are the same in every reply of one template and language."""

    # Each a complete header line, folded as the policy writes it, with its CRLF.
    sender: str  # From
    head: tuple[str, ...]  # after the addressing and threading headers
    tail: tuple[str, str]  # MIME-Version, Content-Language


@dataclass(frozen=True, slots=True)
class _Part:
    """One text body: its Content-Type and Content-Transfer-Encoding lines and its CRLF body."""

    head: tuple[str, str]
    body: str


@functools.cache
def _header_class(name: str) -> Callable[[str, Any], BaseHeader]:
    # The registry makes a new class on every lookup; the class is the same for one name.
    registry: Any = _POLICY.header_factory  # a HeaderRegistry under the default policies
    factory: Callable[[str, Any], BaseHeader] = registry[name]
    return factory


def _header(name: str, value: Any) -> BaseHeader:
    """The header `name: value` as `EmailMessage.__setitem__` would store it (the value parsed
    by the policy's header class); raises ValueError for a value with a line break."""
    if isinstance(value, str) and len(value.splitlines()) > 1:
        # What `policy.header_store_parse` refuses too: a line break would start a new header.
        raise ValueError(f"header value {value!r} contains a line break")
    return _header_class(name.lower())(name, value)


def _folded(name: str, value: Any) -> str:
    """The line `name: value` as the generator writes a header object: folded, with its CRLF."""
    return _header(name, value).fold(policy=_POLICY)


@functools.lru_cache(maxsize=64)
def _skeleton(
    from_name: str, from_address: str, template: str, language: str, *, html: bool
) -> _Skeleton:
    """The fixed header lines of the replies of `template` in `language` (`template` only keys
    the cache: one skeleton per template and language, like the template files)."""
    try:
        sender = _folded(
            "From", HeaderAddress(display_name=one_line(from_name), addr_spec=from_address)
        )
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"replies.from_address {from_address!r}: {exc}") from None
    head = (
        # RFC 3834 5: mark the reply as automatic, and ask Exchange not to answer it (loop brake).
        _folded("Auto-Submitted", "auto-replied"),
        _folded("X-Auto-Response-Suppress", "All"),
    )
    tail = (_folded("MIME-Version", "1.0"), _folded("Content-Language", language))
    return _Skeleton(sender, head, tail)


# Values that every header class below writes unchanged: printable ASCII words, single spaces,
# nothing that reads as an RFC 2047 encoded word.
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
_VERBATIM = frozenset({"subject", "in-reply-to", "references", "date", "message-id"})
# An address and a display name that the address header writes unchanged: a dot-atom
# addr-spec, a name of plain words (no specials that would need quoting).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM_ADDR = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")


def _fits(name: str, value: str) -> bool:
    return len(name) + 2 + len(value) <= (_POLICY.max_line_length or 78)


def _line(name: str, value: str) -> str:
    """The header line `name: value` as the policy writes it: the value itself when the policy
    would write it unchanged on one line (header `name` is one of _VERBATIM and `value` is short,
    plain ASCII), else as the policy's header class folds it."""
    plain = _fits(name, value) and "=?" not in value and _PLAIN.fullmatch(value)
    if plain and name.lower() in _VERBATIM:
        return f"{name}: {value}{_CRLF}"
    return _folded(name, value)


def _to_line(name: str, email: str) -> str:
    """The To line for `name <email>` (PermanentError when `email` is no address)."""
    name, email = one_line(name), one_line(email, 320)
    if _DOT_ATOM_ADDR.fullmatch(email) and (not name or _PLAIN_NAME.fullmatch(name)):
        value = f"{name} <{email}>" if name else email
        if _fits("To", value):
            return f"To: {value}{_CRLF}"
    return _folded("To", header_address(name, email))


def _boundary(*bodies: str) -> str:
    """A multipart boundary that occurs in none of `bodies`."""
    while True:
        # The generator's own form of boundary (`email.generator._make_boundary`).
        boundary = f"{'=' * 15}{random.randrange(sys.maxsize):019d}=="
        if not any(boundary in body for body in bodies):
            return boundary


_BOUNDARY_SHAPE = "=" * 15 + "0" * 19 + "=="


def _multipart_type(boundary: str) -> str:
    """The Content-Type line of a multipart/alternative with `boundary` (of `_boundary`'s form)."""
    # Every boundary has the same length and characters of the same kinds, so it folds the same
    # way: the line is folded once, for a stand-in, and the boundary put in its place.
    if len(boundary) != len(_BOUNDARY_SHAPE):
        return _folded("Content-Type", f'multipart/alternative; boundary="{boundary}"')
    return _multipart_line().replace(_BOUNDARY_SHAPE, boundary)


@functools.cache
def _multipart_line() -> str:
    return _folded("Content-Type", f'multipart/alternative; boundary="{_BOUNDARY_SHAPE}"')


@functools.cache
def _content_type(subtype: str) -> str:
    return _folded("Content-Type", f'text/{subtype}; charset="utf-8"')


@functools.cache
def _transfer_encoding(cte: str) -> str:
    return _folded("Content-Transfer-Encoding", cte)


def _text_part(subtype: str, text: str) -> _Part:
    """What `set_content(text, subtype=subtype, charset="utf-8", cte=...)` sets, as the generator
    writes it: the body encoded 7-bit clean (no reliance on the server's 8BITMIME)."""
    cte, payload = _encode_text(text)
    head = (_content_type(subtype), _transfer_encoding(cte))
    return _Part(head, _NEWLINES.sub(_CRLF, payload))


def _encode_text(text: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, body) as `email.contentmanager` encodes `text` in UTF-8 under
    the SMTP policy: quoted-printable for non-ASCII text, else 7bit when every line fits, else
    whichever of quoted-printable and base64 is shorter."""
    width = _POLICY.max_line_length or 78
    lines = text.encode("utf-8").splitlines()
    ascii_text = text.isascii()
    if ascii_text and max((len(line) for line in lines), default=0) <= width:
        return "7bit", b"\n".join(lines).decode("ascii") + "\n"
    cte = "quoted-printable"
    if ascii_text:
        sniff = b"\r\n".join(lines[:10]) + b"\r\n"
        sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), width)
        if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
            cte = "base64"
        elif len(lines) <= 10:
            return cte, sniff_qp
    if cte == "base64":
        data = b"\r\n".join(lines) + b"\r\n"
        step = width // 4 * 3
        return cte, "".join(
            binascii.b2a_base64(data[i : i + step]).decode("ascii")
            for i in range(0, len(data), step)
        )
    return cte, quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), width)


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
) -> ComposedReply:
    """Render outcome `template` in the message's language and compose the reply: what the
    pipeline calls for one planned reply. `trusted` (the verdict's `reflect`) lets the reply
    repeat the sender's name, company and subject. Raises TemplateError, PermanentError or
    ConfigError."""
    variables = ReplyVariables.for_message(
        msg, replies, destination=destination, lead_owner=lead_owner, trusted=trusted
    )
    rendered = renderer.render(template, variables, msg.language)
    return compose(msg, destination, rendered, replies, trusted=trusted, now=now)
