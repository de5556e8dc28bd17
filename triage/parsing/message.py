"""Raw bytes to an InboundMessage: the one entry point of parsing, which never raises."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import quotequail

from triage.core.models import Address, Attachment, InboundMessage
from triage.parsing import charsets, contacts, headers, htmltext, language, mime, quotes, trace

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # beyond this only the start is read; nobody writes that
MAX_TEXT_BYTES = 2 * 1024 * 1024  # transfer-encoded text part bytes read for the body text
MAX_TEXT_CHARS = 100_000  # body text kept; classification and replies need far less
MAX_HEADER_VALUE = 4096  # per header in `headers`: etiquette rules read short tokens
MAX_HEADER_NAMES = 200
MAX_ATTACHED_NESTING = 3  # a message attached to a message attached to a message, no deeper
SIGNATURE_FALLBACK_LINES = 6  # without a signature marker, contacts read the last few lines


def synthesise_message_id(data: bytes) -> str:
    """A stable Message-ID for a message without a usable one, derived from its content."""
    return f"<{hashlib.sha256(data).hexdigest()[:32]}@triage.invalid>"


def _header_map(root: mime.Entity, budget: mime.Budget) -> dict[str, str]:
    """The first value of every header, decoded and bounded, keyed by lower-cased name."""
    found: dict[str, str] = {}
    for name, raw_value in root.headers.items():
        if len(found) >= MAX_HEADER_NAMES:
            budget.defect("too many distinct headers; the rest are not recorded")
            break
        value = raw_value
        if len(value) > MAX_HEADER_VALUE:
            budget.defect(f"header too long: {name[:40]} ({len(value)} chars)")
            value = value[:MAX_HEADER_VALUE]
        # Most values are plain printable text already: skip the call for them.
        found[name] = headers.clean(value) if "=?" in value or not value.isprintable() else value
    if root.content_type == "multipart/report":
        found["report-type"] = root.params.get("report-type", "").strip().lower()
    return found


def _body_candidates(entity: mime.Entity) -> list[mime.Entity]:
    """Inline text/plain and text/html parts in the order a mail client would show them.

    Within multipart/alternative the plain part comes first; attached messages and attachments
    are not candidates (like `EmailMessage.get_body`).
    """
    if entity.maintype == "multipart" and not entity.as_text:
        if entity.content_type == "multipart/alternative":
            found = [part for child in entity.children for part in _body_candidates(child)]
            return [p for p in found if p.content_type != "text/html"] + [
                p for p in found if p.content_type == "text/html"
            ]
        return [
            part
            for child in entity.children
            if child.disposition != "attachment"
            for part in _body_candidates(child)
        ]
    if entity.as_text or entity.content_type in ("text/plain", "text/html"):
        return [] if entity.disposition == "attachment" else [entity]
    return []


def _decode_text(entity: mime.Entity, budget: mime.Budget) -> str:
    """The text of a text part: transfer-decoded, charset-decoded, bounded."""
    if entity.size > MAX_TEXT_BYTES:
        budget.defect("text part too large; truncated")
    payload, defect = entity.decoded(MAX_TEXT_BYTES)
    if defect:
        budget.defect(defect)
    text, defect = charsets.decode(payload, entity.params.get("charset", ""))
    if defect:
        budget.defect(defect)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text


def _body_text(
    root: mime.Entity, budget: mime.Budget, nesting: int = 0
) -> tuple[str, bool, mime.Entity | None]:
    """The best text of the message, whether it came from HTML, and the part it came from.

    When the message has no text of its own (a forward as attachment, a digest, a bounce whose
    explanation is missing), the text of the first attached message is used instead.
    """
    for part in _body_candidates(root):
        if budget.text_parts <= 0:
            budget.defect("too many text parts without text; the rest were not read")
            break
        budget.text_parts -= 1
        text = _decode_text(part, budget)
        from_html = part.content_type == "text/html"
        if from_html:
            text = _html_text(text, budget)
        if text.strip():
            if len(text) > MAX_TEXT_CHARS:
                budget.defect("text too long; truncated")
                text = text[:MAX_TEXT_CHARS]
            return text.strip("\n"), from_html, part
    if nesting < MAX_ATTACHED_NESTING:
        for leaf in _leaves(root):
            if leaf.content_type in ("message/rfc822", "message/global"):
                if budget.text_parts <= 0:
                    budget.defect("too many text parts without text; the rest were not read")
                    break
                budget.text_parts -= 1
                inner = mime.attached_message(leaf, budget, depth=nesting + 1)
                text, from_html, _ = _body_text(inner, budget, nesting + 1)
                if text:
                    return text, from_html, None
    return "", False, None


def _html_text(markup: str, budget: mime.Budget) -> str:
    """The text of an HTML part, converted within what is left of the message's HTML budget."""
    if budget.html_chars < min(len(markup), htmltext.MAX_HTML_CHARS):
        budget.defect("too much HTML in the message; the rest was not converted")
        markup = markup[: max(0, budget.html_chars)]
    budget.html_chars -= min(len(markup), htmltext.MAX_HTML_CHARS)
    converted = htmltext.convert(markup, MAX_TEXT_CHARS)
    for defect in converted.defects:
        budget.defect(defect)
    return converted.text


def _leaves(entity: mime.Entity) -> list[mime.Entity]:
    if entity.maintype == "multipart" and entity.children:
        return [leaf for child in entity.children for leaf in _leaves(child)]
    return [entity]


def _attachments(root: mime.Entity, body: mime.Entity | None) -> tuple[Attachment, ...]:
    """Every non-text leaf and every attached text part, described by name, type and size."""
    found = []
    for leaf in _leaves(root):
        if leaf is body or leaf.maintype == "multipart":
            continue
        if leaf.maintype == "text" and leaf.disposition != "attachment":
            continue
        size = leaf.size
        if leaf.transfer_encoding == "base64":
            size = (size - leaf.count(b"\n")) * 3 // 4  # decoded size, without decoding
        found.append(Attachment(headers.clean(leaf.filename), leaf.content_type, size))
    return tuple(found)


def _forwarded_sender(original: str, budget: mime.Budget) -> Address | None:
    """The sender named in a forwarded or copied original's header block, read by quotequail.

    quotequail knows many clients' forward formats but walks lines times patterns in Python, so
    it only sees the few lines where our own cheap scan found a separator or header block.
    """
    try:
        unwrapped = quotequail.unwrap(original)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError, re.error) as exc:
        budget.defect(f"quotequail failed: {type(exc).__name__}")
        return None
    sender = str(unwrapped.get("from", "")) if isinstance(unwrapped, dict) else ""
    # Outlook writes "Jane Doe [mailto:jane@acme.example]".
    return headers.first_address(sender.replace("[mailto:", "<").replace("]", ">"))


def _trailing_block(text: str) -> str:
    """The run of signature-like lines that ends a text ("Jane Doe / Acme GmbH / +49 …"):
    where a signature without a delimiter or valediction would be. Prose ends the run."""
    block: list[str] = []
    for line in reversed(text.rsplit("\n", SIGNATURE_FALLBACK_LINES)[-SIGNATURE_FALLBACK_LINES:]):
        if not line.strip() or not quotes.is_signature_line(line.strip()):
            break
        block.append(line)
    return "\n".join(reversed(block))


def _parse(raw: bytes, needs_body: NeedsBody | None = None) -> InboundMessage:
    data = mime.normalise(raw)
    budget = mime.Budget()
    if not data or data.isspace():
        budget.defect("empty message")
    if len(data) > MAX_MESSAGE_BYTES:
        budget.defect("message too large; truncated")
        data = data[:MAX_MESSAGE_BYTES]
    root = mime.parse_entity(data, budget)
    if not root.headers and data and not data.isspace():
        budget.defect("no headers")
    header = root.header
    message_id = headers.message_id(header("message-id") or "")
    senders = headers.addresses(header("from") or "")
    from_ = senders[0] if senders else None
    reply_to = headers.addresses(header("reply-to") or "")
    to = headers.addresses(header("to") or "")
    header_map = _header_map(root, budget)
    auth_results, auth_results_cut, from_count = trace.sender_fields(data)
    # The message as its headers (and its parts' types) give it. Built from one dict of fields,
    # and again with its body's fields, rather than with `dataclasses.replace` (twice as slow).
    fields: dict[str, Any] = {
        "message_id": message_id or synthesise_message_id(data),
        "message_id_synthesised": not message_id,
        "subject": headers.clean(header("subject") or ""),
        "from_": from_,
        "reply_to": reply_to,
        "to": to,
        "cc": headers.addresses(header("cc") or ""),
        "return_path": headers.return_path(header("return-path")),
        "date": headers.date(header("date") or ""),
        "in_reply_to": headers.message_id(header("in-reply-to") or ""),
        "references": headers.message_ids(header("references") or ""),
        "size": len(raw),
        "content_type": root.content_type,
        "headers": MappingProxyType(header_map),
        "auth_results": auth_results,
        "auth_results_cut": auth_results_cut,
        "from_count": from_count,
        "from_single": len(senders) == 1 and not headers.is_group(header("from") or ""),
    }
    if needs_body is not None:
        # The contact comes below: from the addresses alone for mail decided by its headers,
        # else from the text too (no header rule reads it).
        light = InboundMessage(
            **fields, attachments=_attachments(root, None), defects=tuple(budget.defects)
        )
        if not needs_body(light):
            # Decided by its headers: its text, quotes, signature and form fields are never read.
            return InboundMessage(
                **fields,
                attachments=light.attachments,
                defects=light.defects,
                contact=contacts.extract(from_, reply_to, "", "", to=to),
            )
    text, from_html, body = _body_text(root, budget)
    reply = quotes.new_text(text)
    forwarded = None
    if reply.original and contacts.forwarded_within_company(from_, to):
        # Only then does the original's sender matter, and quotequail costs a millisecond.
        forwarded = _forwarded_sender(reply.original, budget)
    contact = contacts.extract(
        from_,
        reply_to,
        text,
        reply.signature or _trailing_block(reply.text),
        to=to,
        forwarded_from=forwarded,
        from_html=from_html,
    )
    return InboundMessage(
        **fields,
        text=text,
        new_text=reply.text,
        text_from_html=from_html,
        language=language.detect(reply.text or text),
        attachments=_attachments(root, body),
        contact=contact,
        defects=tuple(budget.defects),
    )


# Asked with the message as its headers alone give it: must the body be read too?
NeedsBody = Callable[[InboundMessage], bool]


def parse(raw: bytes, needs_body: NeedsBody | None = None) -> InboundMessage:
    """Parse one raw message into an InboundMessage; never raises, bounded in time.

    With `needs_body`, the message built from the headers alone (no text, no language, the
    contact from the address headers) is returned when `needs_body(it)` is false: for mail a
    header rule decides (a list, a bounce), whose body nothing reads.

    A message that trips an unexpected error in the parser still yields a value: a synthesised
    Message-ID, its size and the error as a defect, so the pipeline can quarantine it.
    """
    try:
        return _parse(raw, needs_body)
    except Exception as exc:
        # Only a parser bug gets here (mail problems become defects): the caller is promised a
        # value, so keep the message, log the bug with its traceback and record it as a defect.
        log.exception("parser error on a %d-byte message", len(raw))
        return InboundMessage(
            message_id=synthesise_message_id(bytes(raw)),
            message_id_synthesised=True,
            size=len(raw),
            defects=(f"parser error: {type(exc).__name__}: {str(exc)[:200]}",),
        )
