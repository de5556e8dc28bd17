"""The reply written from a cached skeleton is, byte for byte, the reply `EmailMessage` writes.

`compose` skips `EmailMessage.__setitem__` and `set_content` for speed; these tests build the same
reply through that public API (the reference below) and compare the serialised bytes, boundaries
aside, over names, subjects and bodies that exercise encoding, folding and header injection.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage

import pytest

from triage.act.compose import (
    ComposedReply,
    _is_msgid,
    _references,
    compose,
    message_id_domain,
    reply_message_id,
    reply_subject,
)
from triage.act.replies import RenderedReply
from triage.core.models import Address, Contact, InboundMessage
from triage.core.sanitize import one_line, strip_invisible
from triage.core.settings import RepliesSettings

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
BOUNDARY = re.compile(rb"={15}\d{19}==(?:\.\d+)?")


def reference(
    msg: InboundMessage,
    destination: Address,
    rendered: RenderedReply,
    replies: RepliesSettings,
    trusted: bool,
) -> EmailMessage:
    """The reply as `EmailMessage`'s own API builds it (what `compose` did before its skeleton)."""
    reply = EmailMessage(policy=policy.SMTP)
    reply["From"] = HeaderAddress(
        display_name=one_line(replies.from_name), addr_spec=replies.from_address
    )
    to_name = ""
    if trusted:
        same = msg.contact.email.strip().lower() == destination.email.strip().lower()
        to_name = strip_invisible(destination.name or (msg.contact.name if same else ""))
    reply["To"] = HeaderAddress(
        display_name=one_line(to_name), addr_spec=one_line(destination.email, 320)
    )
    reply["Subject"] = reply_subject(rendered.subject, replies.subject_prefix)
    reply["Date"] = "Mon, 02 Mar 2026 09:30:00 +0000"
    reply["Message-ID"] = reply_message_id(msg.message_id, message_id_domain(replies))
    if trusted and not msg.message_id_synthesised and _is_msgid(msg.message_id):
        reply["In-Reply-To"] = one_line(msg.message_id, 250)
        reply["References"] = " ".join(_references(msg))
    reply["Auto-Submitted"] = "auto-replied"
    reply["X-Auto-Response-Suppress"] = "All"

    def cte(text: str) -> str | None:
        return None if text.isascii() else "quoted-printable"

    reply.set_content(rendered.text, subtype="plain", charset="utf-8", cte=cte(rendered.text))
    if rendered.html is not None:
        reply.add_alternative(
            rendered.html, subtype="html", charset="utf-8", cte=cte(rendered.html)
        )
        for part in reply.iter_parts():
            del part["MIME-Version"]
    reply["Content-Language"] = rendered.language or replies.default_language
    return reply


def wire(reply: EmailMessage | ComposedReply) -> bytes:
    """The serialised reply with its multipart boundary (random) replaced by a fixed word."""
    raw = reply.raw if isinstance(reply, ComposedReply) else reply.as_bytes(policy=policy.SMTP)
    return BOUNDARY.sub(b"BOUNDARY", raw)


NAMES = ["Pat Prospect", "Jürgen Öfen-Bauer", "", 'Eve "the" <x@y>', "A" * 120, "Eve\r\nBcc: x@y"]
SUBJECTS = [
    "Quote for 40 units",
    "Anfrage für Öfen " * 8,
    "Re: x",
    "=?utf-8?q?hi?= there",
    "x" * 300,
    "Eve\r\nBcc: victim@example.test",
    "tab\there  and  spaces",
]
TEXTS = ["Hi Pat\n", "Grüße\nZeile 2\n", "long " * 40 + "\n", "a\r\nb\n\n", "x" * 200, "l\n" * 30]
HTMLS = [None, "<p>Hi</p>", "<p>Grüße</p>\n", "<p>" + "w " * 100 + "</p>", "=3D--" * 30]
CASES = list(itertools.product(NAMES, SUBJECTS, TEXTS))


@pytest.mark.parametrize(("name", "subject", "text"), CASES)
def test_skeleton_reply_is_the_email_package_reply(name: str, subject: str, text: str) -> None:
    """Same bytes as the `EmailMessage` API for each name, subject and body, trusted or not,
    with and without an HTML part, in two languages and under two sender names."""
    number = CASES.index((name, subject, text))
    msg = InboundMessage(
        message_id=f"<m{number}@client.example>",
        subject=subject,
        from_=Address(name, "pat@client.example"),
        references=tuple(f"<r{k}@c.example>" for k in range(number % 25)),
        contact=Contact(name=name, email="pat@client.example"),
    )
    replies = RepliesSettings(
        from_address="hello@example.test",
        from_name=["Example Ltd", "Exämple GmbH"][number % 2],
        company_name="Example Ltd",
    )
    for trusted, html in ((False, HTMLS[number % 5]), (True, HTMLS[(number + 1) % 5])):
        rendered = RenderedReply("sales", ["", "de"][number % 2], subject, text, html)
        dest = Address(name, "pat@client.example")
        ours = compose(msg, dest, rendered, replies, trusted=trusted, now=NOW)
        assert wire(ours) == wire(reference(msg, dest, rendered, replies, trusted))


def test_a_boundary_never_occurs_in_a_part() -> None:
    """Each multipart reply gets a boundary of its own, and none that a body contains."""
    msg = InboundMessage(message_id="<m@client.example>", contact=Contact(email="p@c.example"))
    replies = RepliesSettings(from_address="hello@example.test", company_name="Example Ltd")
    rendered = RenderedReply("sales", "", "Hi", "Hi\n", "<p>Hi</p>")
    seen = set()
    for _ in range(20):
        reply = compose(msg, Address("", "p@c.example"), rendered, replies).message()
        boundary = reply.get_boundary()
        assert boundary is not None
        assert all(boundary not in str(part.get_payload()) for part in reply.iter_parts())
        seen.add(boundary)
    assert len(seen) == 20
