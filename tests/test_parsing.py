"""`triage.parsing.parse`: every trap in KNOWN_TROUBLEMAKERS.md, decoding, text and new text.

Every fixture here is written for this project (inline bytes); the real troublemakers are read by
`test_corpus_parse.py` from `../shared/corpora`.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from triage.core.models import Address
from triage.parsing import parse
from triage.parsing.htmltext import to_text
from triage.parsing.language import detect
from triage.parsing.quotes import new_text

SIMPLE = (
    b"From: Jane Doe <jane@Acme.EXAMPLE>\n"
    b"To: info@shop.example, Sales <sales@shop.example>\n"
    b"Cc: boss@acme.example\n"
    b"Subject: Quote for 200 pallets\n"
    b"Date: Wed, 5 Jun 2024 14:58:02 +0200\n"
    b"Message-ID: <abc123@acme.example>\n"
    b"X-Mailer: Handwritten 1.0\n"
    b"\n"
    b"Hello,\n\nwe would like a quote for 200 pallets of stretch film.\n\nJane\n"
)


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r\n")


# --- the troublemakers -------------------------------------------------------------------------


def test_empty_message_id_is_synthesised_deterministically() -> None:
    """`Message-Id: <>` (which makes policy.default raise) yields a synthesised, stable id."""
    raw = SIMPLE.replace(b"<abc123@acme.example>", b"<>")
    first, second = parse(raw), parse(raw)
    assert first.message_id_synthesised
    assert first.message_id == second.message_id
    assert first.message_id.startswith("<") and first.message_id.endswith("@triage.invalid>")
    assert first.header("message-id") == "<>"
    assert first.subject == "Quote for 200 pallets"


@pytest.mark.parametrize(
    "header",
    [b"", b"Message-ID: this is not an id\n", b"Message-ID:\n"],
    ids=["missing", "unparseable", "blank"],
)
def test_missing_or_unparseable_message_id_is_synthesised(header: bytes) -> None:
    """A missing or unusable Message-ID is replaced by one derived from the content."""
    raw = b"From: a@b.example\n" + header + b"Subject: x\n\nbody\n"
    msg = parse(raw)
    assert msg.message_id_synthesised
    assert msg.message_id.endswith("@triage.invalid>")
    other = parse(raw.replace(b"body", b"other body"))
    assert other.message_id != msg.message_id


def test_bare_message_id_without_brackets_is_kept() -> None:
    """`Message-ID: id@host` without angle brackets is still the message's id."""
    msg = parse(b"Message-ID: 1234@host.example\nFrom: a@b.example\n\nx\n")
    assert msg.message_id == "<1234@host.example>"
    assert not msg.message_id_synthesised


def test_encoded_word_decoding_to_crlf_in_address_header() -> None:
    """An encoded word that decodes to CRLF in From/To (ValueError in policy.default) still
    gives the address, with the line break turned into a space in the display name."""
    raw = (
        b"From: =?UTF-8?Q?Evil=0D=0AName?= <evil@example.org>\n"
        b"To: =?UTF-8?Q?Line=0ABreak?= <to@example.org>, second@example.org\n"
        b"Subject: =?UTF-8?Q?Hello=0D=0A_World?=\n"
        b"\nbody\n"
    )
    msg = parse(raw)
    assert msg.from_ == Address("Evil Name", "evil@example.org")
    assert msg.to == (Address("Line Break", "to@example.org"), Address("", "second@example.org"))
    assert "\r" not in msg.subject and "\n" not in msg.subject
    assert msg.subject == "Hello World"


DSN = b"""From: Mail Delivery System <MAILER-DAEMON@mx.example>
To: undisclosed-recipients:;
Cc: Postmasters: admin@mx.example, root@mx.example;
Return-Path: <>
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
 boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain

This is the mail system. Your message could not be delivered.

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example
Final-Recipient: rfc822; nobody@shop.example
Action: failed
Status: 5.1.1

--BOUNDARY
Content-Type: message/rfc822

From: us@shop.example
To: nobody@shop.example
Subject: our reply

the original
--BOUNDARY--
"""


def test_dsn_with_address_groups() -> None:
    """A DSN whose To/Cc are groups (AttributeError in policy.default) parses: empty groups
    vanish, members are kept, report-type and the null Return-Path are recorded."""
    msg = parse(DSN)
    assert msg.to == ()
    assert [a.email for a in msg.cc] == ["admin@mx.example", "root@mx.example"]
    assert msg.content_type == "multipart/report"
    assert msg.header("report-type") == "delivery-status"
    assert msg.header("Auto-Submitted") == "auto-replied"
    assert msg.return_path == ""
    assert msg.text.startswith("This is the mail system.")
    kinds = [a.content_type for a in msg.attachments]
    assert kinds == ["message/delivery-status", "message/rfc822"]


def test_return_path_absent_is_none() -> None:
    """Return-Path is None when the header is absent and the address when present."""
    assert parse(SIMPLE).return_path is None
    assert parse(b"Return-Path: <bounce@x.example>\n" + SIMPLE).return_path == "bounce@x.example"


def test_multipart_without_boundary_keeps_the_text() -> None:
    """A multipart with no boundary parameter (KeyError in get_content) is read as text, and a
    boundary that can be guessed from the body is used; both record a defect."""
    no_parts = b"Content-Type: multipart/mixed\nSubject: s\n\nJust some text.\n"
    msg = parse(no_parts)
    assert msg.text == "Just some text."
    assert "multipart without boundary" in msg.defects

    guessable = (
        b"Content-Type: multipart/alternative\n\n--XYZ\nContent-Type: text/plain\n\n"
        b"Plain part.\n--XYZ\nContent-Type: text/html\n\n<p>HTML part.</p>\n--XYZ--\n"
    )
    msg = parse(guessable)
    assert msg.text == "Plain part."
    assert "multipart without boundary" in msg.defects


def test_multipart_whose_boundary_is_absent_from_the_body() -> None:
    """A boundary parameter that never occurs in the body: the body is kept as text."""
    msg = parse(b'Content-Type: multipart/mixed; boundary="nope"\n\nHello there\n')
    assert msg.text == "Hello there"
    assert "multipart boundary not found in body" in msg.defects


def test_truncated_multipart_keeps_its_parts() -> None:
    """A multipart cut off before its closing boundary keeps the parts it has."""
    raw = b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nHi\n'
    msg = parse(raw)
    assert msg.text == "Hi"
    assert any("closing boundary" in defect for defect in msg.defects)


@pytest.mark.parametrize(
    ("charset", "body", "expected"),
    [
        (b"x-unknown", "Grüße aus Köln".encode(), "Grüße aus Köln"),
        (b"fakescii", "café".encode("cp1252"), "café"),
        (b'"us-ascii (sic)"', "naïve".encode(), "naïve"),
        (b"invalid-charset", b"plain ascii", "plain ascii"),
        (b"iso-8859-1", "déjà vu €".encode(), "déjà vu €"),  # the label lies: UTF-8 bytes
        (b"utf-8", "Stra\xdfe".encode("latin-1"), "Straße"),  # the label lies: latin-1 bytes
        (b"windows-1252", "“quoted” – dash".encode("cp1252"), "“quoted” – dash"),
        (b"gb2312", "你好".encode("gbk"), "你好"),
    ],
)
def test_unknown_and_lying_charsets_decode(charset: bytes, body: bytes, expected: str) -> None:
    """Unknown or wrong charset labels fall back (aliases → UTF-8 → cp1252), never raise."""
    raw = b"Content-Type: text/plain; charset=" + charset + b"\nSubject: c\n\n" + body + b"\n"
    assert parse(raw).text == expected


def test_unknown_charset_is_a_defect() -> None:
    """A charset name nobody knows is recorded as a defect."""
    msg = parse(b"Content-Type: text/plain; charset=fakescii\n\n\xe9t\xe9\n")
    assert any(defect.startswith("unknown charset: fakescii") for defect in msg.defects)


def test_14kb_header_line_is_fast_and_bounded() -> None:
    """A 14 KB header line (5 s with policy.default) parses fast, is truncated in `headers`
    and recorded as a defect; the other headers are intact."""
    long_value = b" ".join(b"token%05d" % i for i in range(1400))
    raw = b"X-Spam-Junk: " + long_value + b"\n" + SIMPLE
    assert len(long_value) > 14_000
    started = time.perf_counter()
    msg = parse(raw)
    assert time.perf_counter() - started < 0.1
    assert len(msg.header("x-spam-junk")) <= 4096
    assert any(defect.startswith("header too long: x-spam-junk") for defect in msg.defects)
    assert msg.subject == "Quote for 200 pallets"


def test_folded_14kb_address_header_is_bounded() -> None:
    """A huge folded To: header (thousands of recipients) is cut, not parsed for seconds."""
    recipients = b",\n ".join(b"user%d@example.org" % i for i in range(5000))
    started = time.perf_counter()
    msg = parse(b"From: a@b.example\nTo: " + recipients + b"\nSubject: s\n\nx\n")
    assert time.perf_counter() - started < 0.5
    assert 0 < len(msg.to) <= 100


def test_deep_nesting_is_bounded() -> None:
    """Multiparts nested 500 deep parse quickly; nesting beyond the limit is a defect."""
    depth = 500
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth)
    )
    tail = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth)))
    raw = b"Subject: deep\n" + head + b"Content-Type: text/plain\n\ninnermost\n" + tail
    started = time.perf_counter()
    msg = parse(raw)
    assert time.perf_counter() - started < 1.0
    assert msg.subject == "deep"
    assert "multipart nested too deeply; inner parts ignored" in msg.defects


def test_many_parts_are_bounded() -> None:
    """Ten thousand parts: the first ones are read, the rest ignored with a defect."""
    parts = b"".join(b"--b\nContent-Type: image/png\n\nxx\n" for _ in range(10_000))
    raw = b'Content-Type: multipart/mixed; boundary="b"\n\n' + parts + b"--b--\n"
    started = time.perf_counter()
    msg = parse(raw)
    assert time.perf_counter() - started < 1.0
    assert 0 < len(msg.attachments) <= 200
    assert "too many MIME parts; the rest were ignored" in msg.defects


@pytest.mark.parametrize("raw", [b"", b"\n", b"a\n\n"], ids=["0 bytes", "1 byte", "3 bytes"])
def test_tiny_files_parse(raw: bytes) -> None:
    """Files of 0, 1 and 3 bytes give a message with a synthesised id and their size."""
    msg = parse(raw)
    assert msg.message_id_synthesised
    assert msg.size == len(raw)
    assert msg.from_ is None


def test_empty_message_is_a_defect() -> None:
    """An empty file says so in its defects."""
    assert "empty message" in parse(b"").defects


def test_cr_only_and_crlf_endings_parse_like_lf() -> None:
    """CRLF (DOS) and CR-only (old Mac) line endings give the same message as LF."""
    raw = SIMPLE.replace(b"Subject: Quote for 200 pallets\n", b"Subject: Quote for\n 200 pallets\n")
    reference = parse(raw)
    for variant in (crlf(raw), raw.replace(b"\n", b"\r")):
        msg = parse(variant)
        assert msg.subject == reference.subject == "Quote for 200 pallets"
        assert msg.text == reference.text
        assert msg.from_ == reference.from_
        assert msg.message_id == reference.message_id
        assert msg.size == len(variant)


def test_mbox_from_line_and_byte_order_mark_are_skipped() -> None:
    """A leading mbox `From ` line (SpamAssassin files) and a UTF-8 BOM are not headers."""
    msg = parse(b"From jane@acme.example  Mon Jun 24 17:03:24 2002\n" + SIMPLE)
    assert msg.subject == "Quote for 200 pallets"
    assert msg.from_ is not None and msg.from_.email == "jane@acme.example"
    assert parse(b"\xef\xbb\xbf" + SIMPLE).subject == "Quote for 200 pallets"


TNEF = b"""From: Outlook User <user@corp.example>
Subject: Report attached
Content-Type: multipart/mixed; boundary="tnef"

--tnef
Content-Type: text/plain; charset=us-ascii

Please find the report attached.

--tnef
Content-Type: application/ms-tnef; name="winmail.dat"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="winmail.dat"

eJ8+IgEAAQaQCAAEAAAAAAABAAEAAQeQBgAIAAAA5AQAAAAAAADoAAEIgAcAGAAAAElQTS5NaWNy
b3NvZnQgTWFpbC5Ob3RlADEIAQ2ABAACAAAAAgACAAEFgAMADgAAANQHBgAYAAoAMAAAAAEAIQEB
--tnef--
"""


def test_tnef_attachment_is_listed_and_text_is_kept() -> None:
    """An application/ms-tnef part (winmail.dat) is an attachment with its decoded size; the
    message text is still read."""
    msg = parse(TNEF)
    assert msg.text == "Please find the report attached."
    (attachment,) = msg.attachments
    assert attachment.filename == "winmail.dat"
    assert attachment.content_type == "application/ms-tnef"
    assert 100 < attachment.size < 200


def test_random_bytes_never_raise() -> None:
    """Random garbage and mutilated real messages never make parse raise."""
    generator = random.Random(3834)
    seeds = [SIMPLE, DSN, TNEF]
    for _ in range(300):
        seed = bytearray(generator.choice(seeds))
        for _ in range(generator.randint(1, 30)):
            seed[generator.randrange(len(seed))] = generator.randrange(256)
        cut = generator.randint(0, len(seed))
        parse(bytes(seed[:cut]))
        parse(generator.randbytes(generator.randint(0, 2000)))


# --- headers ------------------------------------------------------------------------------------


def test_simple_message_fields() -> None:
    """The everyday fields: addresses (domain lower-cased), date, id, size and headers."""
    msg = parse(SIMPLE)
    assert msg.from_ == Address("Jane Doe", "jane@acme.example")
    assert msg.to == (Address("", "info@shop.example"), Address("Sales", "sales@shop.example"))
    assert msg.cc == (Address("", "boss@acme.example"),)
    assert msg.date == datetime(2024, 6, 5, 14, 58, 2, tzinfo=timezone(timedelta(hours=2)))
    assert msg.message_id == "<abc123@acme.example>"
    assert not msg.message_id_synthesised
    assert msg.size == len(SIMPLE)
    assert msg.content_type == "text/plain"
    assert msg.header("X-MAILER") == "Handwritten 1.0"
    assert msg.has_header("x-mailer") and not msg.has_header("precedence")
    assert msg.defects == ()


def test_headers_keep_the_first_value_of_each_name() -> None:
    """`headers` holds the first occurrence of a repeated header, keyed by lower-cased name."""
    msg = parse(b"Received: first\nRECEIVED: second\nPrecedence: bulk\n\nx\n")
    assert msg.header("received") == "first"
    assert msg.headers["precedence"] == "bulk"


def test_encoded_and_folded_subject_is_decoded_and_unfolded() -> None:
    """RFC 2047 words (Q and B, adjacent words joined) and folding make one clean line."""
    raw = (
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_?= =?utf-8?b?YXVz?=\n"
        b"\t K\xc3\xb6ln und =?iso-8859-1?Q?M=FCnchen?=\n\nx\n"
    )
    assert parse(raw).subject == "Grüße aus Köln und München"


def test_date_is_aware_or_none() -> None:
    """Dates come out timezone-aware (UTC when the zone is missing); garbage gives None."""
    assert parse(b"Date: Tue, 1 Jan 2002 10:00:00 -0000\n\nx").date == datetime(
        2002, 1, 1, 10, tzinfo=UTC
    )
    assert parse(b"Date: yesterday-ish\n\nx").date is None
    assert parse(b"Date: Tue, 99 Foo 20021 99:99:99\n\nx").date is None


def test_threading_headers() -> None:
    """In-Reply-To is one id; References lists every id in order."""
    raw = b"In-Reply-To: <p@x> (comment)\nReferences: <a@x>\n <b@x> <p@x>\n\nx\n"
    msg = parse(raw)
    assert msg.in_reply_to == "<p@x>"
    assert msg.references == ("<a@x>", "<b@x>", "<p@x>")


def test_reply_to_and_display_name_without_brackets() -> None:
    """Reply-To is parsed; `Big Bug bb@bug.com` is read as name and address."""
    msg = parse(b"From: Big Bug bb@bug.com\nReply-To: Desk <desk@bug.com>\n\nx\n")
    assert msg.from_ == Address("Big Bug", "bb@bug.com")
    assert msg.reply_to == (Address("Desk", "desk@bug.com"),)


def test_header_block_without_blank_line_before_body() -> None:
    """A body that starts right after the headers (no blank line) is still the body."""
    msg = parse(b"From: a@b.example\nSubject: s\nHello, this is the body.\nSecond line.\n")
    assert msg.subject == "s"
    assert msg.text == "Hello, this is the body.\nSecond line."
    assert "missing blank line between headers and body" in msg.defects


# --- body text ----------------------------------------------------------------------------------


ALTERNATIVE = b"""From: a@b.example
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Plain version with =C3=BCmlaut and a soft=
 break.
--alt
Content-Type: text/html; charset=utf-8

<p>HTML version</p>
--alt--
"""


def test_plain_part_is_preferred_and_transfer_decoded() -> None:
    """In multipart/alternative the text/plain part wins; quoted-printable is decoded."""
    msg = parse(ALTERNATIVE)
    assert msg.text == "Plain version with ümlaut and a soft break."
    assert not msg.text_from_html
    assert msg.attachments == ()


def test_html_only_message_gives_text_from_html() -> None:
    """Without a text/plain part the text comes from the HTML, flagged as such."""
    raw = (
        b"Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + __import__("base64").encodebytes(
            b"<html><head><title>T</title><style>p{color:red}</style></head><body>"
            b"<p>Hello&nbsp;there &amp; welcome</p><div>Line two</div>"
            b"<script>alert(1)</script><ul><li>one</li><li>two</li></ul></body></html>"
        )
    )
    msg = parse(raw)
    assert msg.text_from_html
    assert msg.text == "Hello there & welcome\n\nLine two\n\n- one\n- two"


def test_empty_plain_alternative_falls_back_to_html() -> None:
    """A blank text/plain alternative does not hide the HTML one."""
    raw = ALTERNATIVE.replace(b"Plain version with =C3=BCmlaut and a soft=\n break.", b"   \n")
    msg = parse(raw)
    assert msg.text == "HTML version"
    assert msg.text_from_html


def test_attached_message_text_is_used_when_there_is_no_other() -> None:
    """A message that only wraps another (message/rfc822) takes the inner message's text."""
    raw = b"Content-Type: message/rfc822\n\nFrom: x@y.example\nSubject: inner\n\nInner text\n"
    assert parse(raw).text == "Inner text"


def test_attachments_are_described() -> None:
    """Non-text parts and attached text files are listed with name, type and size."""
    raw = (
        b'Content-Type: multipart/mixed; boundary="m"\n\n--m\nContent-Type: text/plain\n\nBody\n'
        b"--m\nContent-Type: application/pdf; name*=utf-8''Angebot%20M%C3%BCller.pdf\n"
        b"Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n"
        b'--m\nContent-Type: text/csv\nContent-Disposition: attachment; filename="a.csv"\n\n1,2\n'
        b"--m--\n"
    )
    msg = parse(raw)
    assert msg.text == "Body"
    assert [(a.filename, a.content_type, a.size) for a in msg.attachments] == [
        ("Angebot Müller.pdf", "application/pdf", 9),
        ("a.csv", "text/csv", 3),
    ]


def test_broken_base64_is_repaired() -> None:
    """Base64 with bad padding or junk still decodes, with a defect."""
    raw = b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\nSGVsbG8gd29ybGQ\n"
    msg = parse(raw)
    assert msg.text == "Hello world"


def test_large_text_is_truncated() -> None:
    """A multi-megabyte text body is cut to the text limit, quickly, with a defect."""
    raw = b"Subject: big\n\n" + b"All work and no play makes Jack a dull boy.\n" * 100_000
    started = time.perf_counter()
    msg = parse(raw)
    assert time.perf_counter() - started < 1.0
    assert len(msg.text) <= 100_000
    assert "text too long; truncated" in msg.defects or "text part too large; truncated" in (
        msg.defects
    )


def test_html_converter_is_linear_on_junk() -> None:
    """Pathological HTML (unclosed tags and comments, endless `<a<a<a`) converts quickly."""
    for junk in ("<a" * 200_000, "<!--" * 100_000, "<p>x" * 100_000, "<script>" + "x" * 300_000):
        started = time.perf_counter()
        to_text(junk)
        assert time.perf_counter() - started < 0.5


def test_html_blockquote_becomes_quoted_lines() -> None:
    """<blockquote> content is prefixed with `> ` so quote stripping can see it."""
    text = to_text("<div>Mine</div><blockquote><div>theirs</div></blockquote>")
    assert text.splitlines() == ["Mine", "", "> theirs"]


# --- new text -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "thread",
    [
        "On Wed, Jun 5, 2024 at 2:58 PM Jane Doe <jane@acme.example> wrote:\n> old text\n",
        "On Wed, Jun 5, 2024 at 2:58 PM Jane Doe <\njane@acme.example> wrote:\n> old text\n",
        "Am 05.06.2024 um 14:58 schrieb Jane Doe <jane@acme.example>:\n> alter Text\n",
        "Le mer. 5 juin 2024 à 14:58, Jane Doe <jane@acme.example> a écrit :\n> ancien\n",
        "El mié, 5 jun 2024 a las 14:58, Jane Doe (<jane@acme.example>) escribió:\n> viejo\n",
        "Op wo 5 jun. 2024 om 14:58 schreef Jane Doe <jane@acme.example>:\n> oud\n",
        "Il giorno mer 5 giu 2024 alle ore 14:58 Jane Doe <jane@acme.example> ha scritto:\n"
        "> vecchio\n",
        "-----Original Message-----\nFrom: Jane\nSent: Wednesday\nTo: us\n\nold text\n",
        "-----Ursprüngliche Nachricht-----\nVon: Jane\nGesendet: Mittwoch\n\nalter Text\n",
        "________________________________\nFrom: Jane Doe <jane@acme.example>\n"
        "Sent: Wednesday, June 5, 2024 2:58 PM\nTo: Sales\nSubject: RE: quote\n\nold text\n",
        "From: Jane Doe [mailto:jane@acme.example]\nSent: Wednesday, June 5, 2024 2:58 PM\n"
        "To: Sales\nSubject: quote\n\nold text\n",
        "De : Jane Doe\nEnvoyé : mercredi 5 juin 2024 14:58\nÀ : Ventes\nObjet : devis\n\nancien\n",
        "---------- Forwarded message ---------\nFrom: Jane <jane@acme.example>\n\nold text\n",
        "> plain quoted line\n> another one\n",
    ],
    ids=[
        "gmail",
        "gmail-wrapped",
        "german",
        "french",
        "spanish",
        "dutch",
        "italian",
        "outlook-original",
        "outlook-german",
        "outlook-underscores",
        "outlook-header-block",
        "outlook-french-block",
        "gmail-forward",
        "quote-marks",
    ],
)
def test_new_text_drops_the_quoted_thread(thread: str) -> None:
    """Every attribution style and separator in the list ends the new text."""
    body = "Yes, please send the offer for 300 units.\n\n" + thread
    assert new_text(body)[0] == "Yes, please send the offer for 300 units."


def test_new_text_keeps_interleaved_answers() -> None:
    """Bottom-posted and interleaved replies keep every unquoted line, drop the quotes."""
    body = (
        "Jane Doe wrote:\n> Do you ship to Norway?\n\nYes, we do.\n\n> And to Iceland?\n\n"
        "Also yes.\n"
    )
    assert new_text(body)[0] == "Yes, we do.\n\nAlso yes."


def test_new_text_drops_signatures() -> None:
    """`-- ` signatures, phone footers and valediction blocks are not new text; the signature
    block is returned separately for contact extraction."""
    body = "Please call me.\n\n-- \nJane Doe\nAcme GmbH\n+49 30 1234567\n"
    assert new_text(body)[:2] == ("Please call me.", "Jane Doe\nAcme GmbH\n+49 30 1234567")
    assert new_text("Sounds good.\n\nSent from my iPhone\n")[0] == "Sounds good."
    assert new_text("Klingt gut.\n\nVon meinem iPhone gesendet\n")[0] == "Klingt gut."
    text, signature, _ = new_text("We need 20 units.\n\nBest regards,\nJane Doe\nHead of Ops\n")
    assert text == "We need 20 units."
    assert signature == "Jane Doe\nHead of Ops"
    text, _, _ = new_text("Bitte um Angebot.\n\nMit freundlichen Grüßen\nMax Mustermann\n")
    assert text == "Bitte um Angebot."


def test_valediction_followed_by_more_message_is_kept() -> None:
    """ "Thanks!" followed by a question is part of the message, not a signature."""
    body = "Hi,\nThanks!\nCould you send me a quote for 200 units by Friday?\nJohn\n"
    assert "quote for 200 units" in new_text(body)[0]


def test_parse_fills_new_text() -> None:
    """parse() fills new_text from the best text part."""
    raw = SIMPLE.replace(
        b"Jane\n", b"Jane\n\nOn Tue, 4 Jun 2024, Sales <sales@shop.example> wrote:\n> Hi Jane\n"
    )
    msg = parse(raw)
    assert (
        msg.new_text == "Hello,\n\nwe would like a quote for 200 pallets of stretch film.\n\nJane"
    )
    assert "wrote:" in msg.text


# --- language -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "text"),
    [
        ("en", "Hello, we would like to get a quote for the machine and the film."),
        ("de", "Sehr geehrte Damen und Herren, wir haben eine Frage zu Ihrem Angebot und bitte."),
        ("fr", "Bonjour, nous avons besoin d'un devis pour votre machine avec les options."),
        ("es", "Hola, estamos interesados en su producto y quisiera saber el precio, gracias."),
        ("nl", "Goedemiddag, wij hebben graag een offerte voor de machine en ook de folie."),
        ("it", "Buongiorno, vorrei sapere il prezzo della macchina per la nostra azienda."),
        ("", "OK"),
        ("", "Добрый день, мы хотели бы получить предложение."),
    ],
)
def test_language_detection(language: str, text: str) -> None:
    """The six business languages are told apart; too little or unknown text gives ""."""
    assert detect(text) == language


def test_language_detection_costs_microseconds() -> None:
    """Detecting a long text's language costs well under a millisecond."""
    text = "We would like to order the machine for our plant, please send the offer. " * 200
    started = time.perf_counter()
    for _ in range(100):
        detect(text)
    assert (time.perf_counter() - started) / 100 < 0.0005


def test_parse_sets_language_and_contact() -> None:
    """parse() fills language from the new text and the contact from the headers."""
    msg = parse(SIMPLE)
    assert msg.language == "en"
    assert msg.contact.email == "jane@acme.example"
    assert msg.contact.name == "Jane Doe"
    assert msg.contact.company == "Acme"


@pytest.mark.parametrize(
    "run",
    [
        " " * 50_000,
        "<" + "a" * 50_000,
        ":" * 50_000,
        "(" * 20_000,
        "@" * 50_000,
        "From:" * 10_000,
        "=?" * 25_000,
        "\n>" * 25_000,
        "<blockquote>" * 5_000,
        "a@" * 25_000,
    ],
    ids=[
        "spaces",
        "unclosed-tag",
        "colons",
        "parens",
        "ats",
        "labels",
        "word-starts",
        "quotes",
        "blockquotes",
        "at-runs",
    ],
)
def test_pathological_runs_are_linear(run: str) -> None:
    """Long runs of one troublesome character in every header and in the body neither raise
    (the stdlib address reader recurses on nested groups) nor take long (no regex backtracking
    blow-up)."""
    raw = (
        f"From: {run}\nTo: {run}\nSubject: {run}\nMessage-ID: {run}\nReferences: {run}\n"
        f"Content-Type: text/html; {run}\n\n{run}\n"
    ).encode()
    started = time.perf_counter()
    msg = parse(raw)
    assert time.perf_counter() - started < 1.0
    assert not [defect for defect in msg.defects if defect.startswith("parser error")]


def test_html_drops_invisible_and_reordering_characters_written_or_referenced() -> None:
    """A bidi override or zero-width character, literal or as `&#x…;`, does not reach the text."""
    from triage.parsing.htmltext import to_text

    assert to_text("<p>Pat&#x202E;&#x200B;Pro\u2066spect \u202egh&shy;i</p>") == "PatProspect ghi"
