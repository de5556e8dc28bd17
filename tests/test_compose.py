"""The MIME reply: addressing, threading, RFC 3834 markers, encoding, and no header injection."""

from __future__ import annotations

import email
from dataclasses import replace
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from triage.act.compose import (
    ComposedReply,
    compose,
    make_reply,
    message_id_domain,
    reply_message_id,
    reply_subject,
)
from triage.act.replies import RenderedReply, TemplateRenderer
from triage.core.errors import ConfigError, PermanentError
from triage.core.models import Address, Contact, InboundMessage
from triage.core.settings import RepliesSettings

SETTINGS = RepliesSettings(
    from_address="hello@example.test", from_name="Example Ltd", company_name="Example Ltd"
)
TEMPLATES = TemplateRenderer(Path(__file__).parents[1] / "templates")
INJECTION = "Eve\r\nBcc: victim@example.test"
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def inquiry(**changes: object) -> InboundMessage:
    """An inquiry from pat@client.example that is part of a thread."""
    data: dict[str, object] = {
        "message_id": "<inquiry-1@client.example>",
        "subject": "Quote for 40 units",
        "from_": Address("Pat Prospect", "pat@client.example"),
        "to": (Address("", "hello@example.test"),),
        "in_reply_to": "<root@client.example>",
        "references": ("<root@client.example>",),
        "contact": Contact(name="Pat Prospect", email="pat@client.example"),
    } | changes
    return InboundMessage(**data)  # type: ignore[arg-type]


def rendered(subject: str = "Quote for 40 units", html: str | None = "<p>Hi</p>") -> RenderedReply:
    return RenderedReply("sales", "", subject, "Hi Pat\n", html)


def reparse(reply: ComposedReply) -> EmailMessage:
    """What a receiving client sees: the serialised bytes parsed again."""
    msg = email.message_from_bytes(reply.raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


DEST = Address("Pat Prospect", "pat@client.example")


def test_reply_headers() -> None:
    """From, To, Subject, Date, a Message-ID on our domain, and the RFC 3834 markers."""
    reply = reparse(compose(inquiry(), DEST, rendered(), SETTINGS, trusted=True, now=NOW))
    assert reply["From"] == "Example Ltd <hello@example.test>"
    assert reply["To"] == "Pat Prospect <pat@client.example>"
    assert reply["Subject"] == "Re: Quote for 40 units"
    assert reply["Date"] == "Mon, 02 Mar 2026 09:30:00 +0000"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["X-Auto-Response-Suppress"] == "All"
    assert reply["Message-ID"] == reply_message_id("<inquiry-1@client.example>", "example.test")
    assert reply["Content-Language"] == "en"
    assert "Bcc" not in reply
    assert "Cc" not in reply


def test_reply_is_threaded() -> None:
    """In-Reply-To is the inquiry; References is the inquiry's References plus the inquiry."""
    reply = reparse(compose(inquiry(), DEST, rendered(), SETTINGS, trusted=True))
    assert reply["In-Reply-To"] == "<inquiry-1@client.example>"
    assert reply["References"] == "<root@client.example> <inquiry-1@client.example>"


def test_an_untrusted_reply_repeats_no_message_ids_of_the_sender() -> None:
    """`<WIN-A-FREE-IPHONE.call-555@spam.example>` is text a stranger chose: a fixed-text reply
    carries no In-Reply-To or References (it is not threaded)."""
    msg = inquiry(message_id="<WIN-A-FREE-IPHONE.call-555@spam.example>")
    reply = reparse(compose(msg, DEST, rendered(), SETTINGS))
    assert reply["In-Reply-To"] is None and reply["References"] is None
    assert "IPHONE" not in reply.as_string()


def test_references_fall_back_to_in_reply_to_and_are_capped() -> None:
    """Without References the parent's In-Reply-To starts the chain; long chains keep their root
    and newest ids."""
    reply = reparse(compose(inquiry(references=()), DEST, rendered(), SETTINGS, trusted=True))
    assert reply["References"] == "<root@client.example> <inquiry-1@client.example>"
    many = tuple(f"<r{i}@client.example>" for i in range(50))
    refs = str(
        reparse(compose(inquiry(references=many), DEST, rendered(), SETTINGS, trusted=True))[
            "References"
        ]
    )
    ids = refs.split()
    assert len(ids) == 20
    assert ids[0] == "<r0@client.example>"
    assert ids[-1] == "<inquiry-1@client.example>"


def test_invented_message_id_is_not_threaded_on() -> None:
    """An id the parser synthesised means nothing to the sender's client."""
    msg = inquiry(message_id="<synth@triage.invalid>", message_id_synthesised=True)
    reply = reparse(compose(msg, DEST, rendered(), SETTINGS))
    assert "In-Reply-To" not in reply
    assert "References" not in reply
    assert reply["Message-ID"].startswith("<triage.")


def test_message_id_is_deterministic() -> None:
    """The same inquiry always gets the same reply id (a resend is detectable); others differ."""
    first = reply_message_id("<a@x.example>", "example.test")
    assert first == reply_message_id(" <a@x.example> ", "example.test")
    assert first != reply_message_id("<b@x.example>", "example.test")
    assert first.startswith("<triage.")
    assert first.endswith("@example.test>")
    assert len(first.split("@")[0]) == len("<triage.") + 24


def test_message_id_domain_setting() -> None:
    """`message_id_domain` wins; otherwise the From domain; nonsense is a ConfigError."""
    assert message_id_domain(SETTINGS) == "example.test"
    assert message_id_domain(RepliesSettings(message_id_domain="Mail.Example.NET")) == (
        "mail.example.net"
    )
    with pytest.raises(ConfigError):
        message_id_domain(RepliesSettings(from_address="nobody", message_id_domain=""))


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("Quote", "Re: Quote"),
        ("Re: Quote", "Re: Quote"),
        ("RE: Quote", "RE: Quote"),
        ("re:Quote", "re:Quote"),
        ("AW: Angebot", "AW: Angebot"),
        ("Re[2]: Quote", "Re[2]: Quote"),
        ("Fwd: Quote", "Re: Fwd: Quote"),
        ("Reply needed", "Re: Reply needed"),
        ("", "Re: "),
    ],
)
def test_subject_prefix_is_not_doubled(original: str, expected: str) -> None:
    """`Re: ` is added once; a subject that already is a reply keeps its own prefix."""
    assert reply_subject(original) == expected


def test_subject_prefix_is_configurable() -> None:
    """An empty prefix leaves the subject alone."""
    assert reply_subject("Quote", "") == "Quote"
    assert reply_subject("Quote", "Antwort: ") == "Antwort: Quote"


def test_non_ascii_subject_and_names_are_rfc2047_encoded() -> None:
    """Non-ASCII in headers is encoded words on the wire and decodes back to the original."""
    dest = Address("Jürgen Groß", "juergen@client.example")
    reply = compose(inquiry(), dest, rendered(subject="Anfrage für Öfen"), SETTINGS, trusted=True)
    raw = reply.raw
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"=?utf-8?" in head.lower()
    back = reparse(reply)
    assert back["Subject"] == "Re: Anfrage für Öfen"
    assert back["To"].addresses[0].display_name == "Jürgen Groß"


def test_text_and_html_make_multipart_alternative() -> None:
    """Text plus HTML is multipart/alternative; text alone is a single text/plain part."""
    both = reparse(compose(inquiry(), DEST, rendered(html="<p>Grüße</p>"), SETTINGS))
    assert both.get_content_type() == "multipart/alternative"
    parts = list(both.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all("MIME-Version" not in p for p in parts)
    html_part = both.get_body(("html",))
    assert html_part is not None
    assert html_part.get_content().rstrip() == "<p>Grüße</p>"
    text_only = reparse(compose(inquiry(), DEST, rendered(html=None), SETTINGS))
    assert text_only.get_content_type() == "text/plain"
    assert text_only.get_content().replace("\r\n", "\n") == "Hi Pat\n"


def test_lines_are_crlf_on_the_wire() -> None:
    """SMTP wants CRLF line ends; there is no bare LF anywhere in the serialised reply."""
    raw = compose(inquiry(), DEST, rendered(), SETTINGS).raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_reply_is_seven_bit_clean() -> None:
    """Non-ASCII bodies are quoted-printable: no server needs 8BITMIME to take the reply."""
    reply = compose(inquiry(), DEST, rendered(subject="Öfen", html="<p>Grüße</p>"), SETTINGS)
    assert reply.raw.isascii()


# --- header injection -----------------------------------------------------------------------------


def header_names(reply: ComposedReply) -> list[str]:
    return [name.lower() for name in reparse(reply)]


def test_contact_name_with_crlf_cannot_add_a_header() -> None:
    """A display name `Eve\\r\\nBcc: victim@example.test` stays inside the To header."""
    msg = inquiry(
        from_=Address(INJECTION, "eve@client.example"),
        contact=Contact(name=INJECTION, email="eve@client.example"),
    )
    reply = make_reply(
        msg, Address(INJECTION, "eve@client.example"), "sales", TEMPLATES, SETTINGS, trusted=True
    )
    names = header_names(reply)
    assert "bcc" not in names
    assert names.count("to") == 1
    raw = reply.raw
    assert b"\r\nBcc:" not in raw
    assert b"\nBcc:" not in raw
    assert [a.addr_spec for a in reparse(reply)["To"].addresses] == ["eve@client.example"]


def test_subject_with_crlf_cannot_add_a_header() -> None:
    """The original subject and a template's subject output are folded into one Subject."""
    msg = inquiry(subject="Hi\r\nBcc: victim@example.test\r\nX-Evil: 1")
    reply = make_reply(msg, DEST, "sales", TEMPLATES, SETTINGS, trusted=True)
    assert "bcc" not in header_names(reply)
    assert "x-evil" not in header_names(reply)
    assert reparse(reply)["Subject"] == "Re: Hi Bcc: victim@example.test X-Evil: 1"
    direct = compose(msg, DEST, rendered(subject="A\nBcc: victim@example.test"), SETTINGS)
    assert "bcc" not in header_names(direct)


def test_thread_ids_with_crlf_cannot_add_a_header() -> None:
    """A Message-ID or References value with a line break is dropped or flattened, never split."""
    msg = inquiry(
        message_id="<a@client.example>",
        references=("<r@client.example>\r\nBcc: victim@example.test",),
    )
    assert "bcc" not in header_names(compose(msg, DEST, rendered(), SETTINGS))


def test_destination_with_crlf_is_refused() -> None:
    """An address that is not one addr-spec cannot be sent to."""
    for bad in ["pat@client.example\r\nBcc: victim@example.test", "a@b.example, c@d.example"]:
        with pytest.raises(PermanentError):
            compose(inquiry(), Address("", bad), rendered(), SETTINGS)


def test_our_own_settings_with_crlf_are_flattened() -> None:
    """Even a From name from the settings cannot add a header."""
    settings = SETTINGS.model_copy(update={"from_name": "Us\r\nBcc: victim@example.test"})
    assert "bcc" not in header_names(compose(inquiry(), DEST, rendered(), settings))


# --- make_reply -----------------------------------------------------------------------------------


def test_make_reply_renders_in_the_message_language() -> None:
    """The pipeline's one call: template in the inquiry's language, composed to the destination."""
    reply = reparse(
        make_reply(inquiry(language="de"), DEST, "sales", TEMPLATES, SETTINGS, trusted=True)
    )
    assert reply["Content-Language"] == "de"
    body = reply.get_body(("plain",))
    assert body is not None
    assert "Guten Tag Pat Prospect" in body.get_content()


def test_reply_to_without_a_name_uses_the_contact_name() -> None:
    """A web form's Reply-To often has no display name; the form's Name field supplies it."""
    msg = inquiry(contact=Contact(name="Pat Prospect", email="pat@client.example"))
    reply = reparse(
        compose(msg, Address("", "pat@client.example"), rendered(), SETTINGS, trusted=True)
    )
    assert reply["To"] == "Pat Prospect <pat@client.example>"


def test_untrusted_reply_reflects_nothing_the_sender_wrote() -> None:
    """A form spam (`Name: WIN A FREE IPHONE at http://spam.example/claim`) answered at an
    address nobody vouched for: fixed subject and greeting, no display name in To."""
    spam = "WIN A FREE IPHONE at http://spam.example/claim"
    msg = inquiry(
        subject="BUY CHEAP PILLS http://spam.example/x quote for 40 pallets",
        from_=Address(spam, "victim@third.example"),
        contact=Contact(name=spam, email="victim@third.example", company="http://spam.example"),
    )
    for language in ("en", "de", "fr"):
        reply = reparse(
            make_reply(
                replace(msg, language=language),
                Address(spam, "victim@third.example"),
                "sales",
                TEMPLATES,
                SETTINGS,
            )
        )
        raw = reply.as_string()
        assert "spam.example" not in raw
        assert "IPHONE" not in raw and "PILLS" not in raw
        assert str(reply["To"]) == "victim@third.example"
        assert "Example Ltd" in str(reply["Subject"])


def test_invisible_characters_never_reach_a_reply() -> None:
    """Bidi overrides and zero-width characters in a trusted name are removed."""
    msg = inquiry(contact=Contact(name="Pat\u202e\u200bProspect", email="pat@client.example"))
    reply = reparse(make_reply(msg, DEST, "sales", TEMPLATES, SETTINGS, trusted=True))
    raw = reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "PatProspect" in raw
    assert "\u202e" not in raw and "\u200b" not in raw
