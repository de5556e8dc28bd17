"""Writes the generated files of the hostile corpus (see README.md and manifest.csv).

The generated files are those too large, too repetitive or too byte-exact to write by hand: the
resource attacks, the flood of one domain, and headers with bare CR, NUL, 8-bit or invisible
characters. The output is deterministic (no clock, no randomness, no compression library: the
zip bomb's deflate stream is built bit by bit), so running it again changes nothing, and
`--check` tells whether the committed files are what this script writes.

    python tests/hostile/make_corpus.py            # (re)write the files next to this script
    python tests/hostile/make_corpus.py --check    # exit 1 when a committed file differs
"""

from __future__ import annotations

import argparse
import base64
import struct
import sys
import zlib
from collections.abc import Callable, Sequence
from email.header import Header
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_FILE_BYTES = 300 * 1024  # every committed file stays below this

US = "hello@example.test"
RELAY_AUTH = (
    "Authentication-Results: mx.triage.test;\n"
    "\tspf=pass smtp.mailfrom=webforms.example;\n"
    "\tdmarc=pass header.from=webforms.example\n"
)

Headers = Sequence[tuple[str, str]]


def _date(n: int) -> str:
    return f"Wed, 02 Dec 2026 {8 + n // 60:02d}:{n % 60:02d}:00 +0000"


def _head(fields: Headers) -> str:
    return "".join(f"{name}: {value}\n" for name, value in fields)


def _plain(fields: Headers, body: str) -> bytes:
    """A text/plain message from header fields (in order) and a body, LF line ends."""
    mime = [("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=utf-8")]
    return (_head([*fields, *mime]) + "\n" + body).encode()


def _inquiry(n: int, signature: str) -> str:
    return (
        f"Hello,\n\nwe need a quote for {n} office chairs, delivered to our warehouse next month."
        " Our budget is approved; please send prices and delivery terms.\n\n"
        f"Kind regards,\n{signature}\n"
    )


def _encoded(text: str) -> str:
    """`text` as one RFC 2047 encoded-word (base64, UTF-8)."""
    return Header(text, "utf-8").encode(maxlinelen=10_000)


# --- reflection ----------------------------------------------------------------------------


def subject_998() -> bytes:
    """A Subject line of exactly 998 characters (RFC 5322's limit) full of spam and a URL."""
    start = "FREE IPHONE WINNER - claim now at http://prize-center.example/claim?ref=77 -"
    filler = " jackpot bonus casino"
    value = (start + filler * 60)[: 998 - len("Subject: ")]
    fields = [
        ("From", "Lottery Desk <desk@long-subject.example>"),
        ("To", US),
        ("Subject", value),
        ("Date", _date(7)),
        ("Message-ID", "<s998-1@long-subject.example>"),
    ]
    data = _plain(fields, _inquiry(57, "Lottery Desk"))
    assert len(f"Subject: {value}") == 998
    return data


def form_email_bare_cr() -> bytes:
    """A relayed form whose Email field hides a Bcc line behind a bare CR: the CR ends the
    field, so the visitor (noah, fixed text) may be answered, never the Bcc."""
    head = (
        RELAY_AUTH
        + _head(
            [
                ("From", "Website contact form <forms@webforms.example>"),
                ("To", US),
                ("Subject", "New contact form submission"),
                ("Date", _date(13)),
                ("Message-ID", "<form-20261202-0013@webforms.example>"),
                ("MIME-Version", "1.0"),
                ("Content-Type", "text/plain; charset=utf-8"),
            ]
        )
    ).encode()
    body = (
        b"You have a new submission from the contact form on your website.\n\n"
        b"Name: Noah Field\n"
        b"Email: noah@field-co.example\rBcc: carl@third.example\rSubject: WIN A FREE IPHONE\n"
        b"Company: Field & Co\n"
        b"Message: We need a quote for 44 office chairs and 10 desks, delivered to our office"
        b" next month. Our budget is approved; please call me to discuss prices and delivery"
        b" terms.\n"
    )
    return head + b"\n" + body


FLOOD_SENDERS = ("accounts", "ceo", "info", "sales", "office", "hr", "press", "finance")


def victim_flood(index: int) -> Callable[[], bytes]:
    """One of eight inquiries with forged From addresses of one victim domain."""

    def build() -> bytes:
        local = FLOOD_SENDERS[index]
        fields = [
            ("From", f"{local.capitalize()} <{local}@victim.example>"),
            ("To", US),
            ("Subject", f"Quote for {60 + index} chairs"),
            ("Date", _date(23 + index)),
            ("Message-ID", f"<flood-{index + 1}@victim.example>"),
        ]
        return _plain(fields, _inquiry(60 + index, f"{local.capitalize()} team, Victim Inc"))

    return build


# --- header injection ------------------------------------------------------------------------


def bare_cr_headers() -> bytes:
    """Bare CRs inside Subject and the From display name, each followed by a header line."""
    head = (
        b'From: "Sia Lund\rCc: tina@third.example" <sia@bare-cr.example>\n'
        b"To: hello@example.test\n"
        b"Subject: Quote for 23 chairs\rBcc: uma@third.example\r\rWIN A FREE IPHONE\n"
        b"X-Note: first\rReply-To: vera@third.example\n"
        b"Date: " + _date(33).encode() + b"\n"
        b"Message-ID: <cr-1@bare-cr.example>\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\n"
    )
    return head + b"\n" + _inquiry(23, "Sia Lund").encode()


def nul_bytes() -> bytes:
    """NUL bytes in Subject, the From display name and the body."""
    head = (
        b'From: "Tao\x00 Wu\x00Bcc: wendy@third.example" <tao@nul-bytes.example>\n'
        b"To: hello@example.test\n"
        b"Subject: Quote for 34\x00 chairs\x00Bcc: xavier@third.example\n"
        b"Date: " + _date(34).encode() + b"\n"
        b"Message-ID: <nul-1@nul-bytes.example>\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\n"
    )
    body = _inquiry(34, "Tao Wu").encode().replace(b"quote", b"qu\x00ote", 1) + b"\x00" * 16
    return head + b"\n" + body


def eight_bit_headers() -> bytes:
    """Raw UTF-8 (no RFC 2047) in From and Subject, and a Latin-1 byte in another header."""
    head = (
        "From: Jürgen Müller <juergen@8bit.example>\n"
        "To: hello@example.test\n"
        "Subject: Anfrage für 30 Bürostühle – Gewinnspiel 🎁 http://gewinn.example/iphone\n"
        f"Date: {_date(35)}\n"
        "Message-ID: <8bit-1@8bit.example>\n"
    ).encode() + b"Organization: Caf\xe9 M\xfcller GmbH\n"
    mime = b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    body = (
        "Guten Tag,\n\nwir benötigen ein Angebot für 30 Bürostühle, Lieferung nächsten Monat"
        " nach München. Das Budget ist freigegeben.\n\nMit freundlichen Grüßen\nJürgen Müller\n"
    ).encode()
    return head + mime + b"\n" + body


def many_reply_to() -> bytes:
    """A Reply-To of 202 addresses: one reply would become a broadcast."""
    addresses = [f"r{n:03d}@third.example" for n in range(202)]
    folded = ",\n ".join(addresses)
    fields = [
        ("From", "Max Rowe <max@broadcast.example>"),
        ("Reply-To", folded),
        ("To", US),
        ("Subject", "Quote for 52 chairs"),
        ("Date", _date(52)),
        ("Message-ID", "<rt200-1@broadcast.example>"),
    ]
    return _plain(fields, _inquiry(52, "Max Rowe"))


def cc_many_victims() -> bytes:
    """Victims in Cc: a reply-all would reach them all."""
    addresses = [f"cc{n:02d}@third.example" for n in range(42)]
    fields = [
        ("From", "Nia Holt <nia@cc-list.example>"),
        ("To", US),
        ("Cc", ",\n ".join(addresses)),
        ("Subject", "Quote for 53 chairs"),
        ("Date", _date(53)),
        ("Message-ID", "<cc40-1@cc-list.example>"),
    ]
    return _plain(fields, _inquiry(53, "Nia Holt"))


# --- invisible characters --------------------------------------------------------------------

RLO, PDF, ZWSP, ZWJ, ZWNJ, WJ, LRI, PDI = (
    "\u202e",
    "\u202c",
    "\u200b",
    "\u200d",
    "\u200c",
    "\u2060",
    "\u2066",
    "\u2069",
)


def bidi_name() -> bytes:
    """A display name that renders as `bob@example.test` through a right-to-left override."""
    name = f"{RLO}tset.elpmaxe@bob{PDF}"
    fields = [
        ("From", f"{_encoded(name)} <pia@bidi.example>"),
        ("To", US),
        ("Subject", "Quote for 55 chairs"),
        ("Date", _date(55)),
        ("Message-ID", "<bidi-1@bidi.example>"),
    ]
    return _plain(fields, _inquiry(55, f"{RLO}tset.elpmaxe@bob{PDF}\nPia"))


def zero_width_company() -> bytes:
    """A company in the signature split by zero-width characters, with a hidden URL."""
    company = (
        f"F{ZWSP}R{ZWSP}E{ZWSP}E i{ZWJ}P{ZWNJ}hone G{WJ}iveaway Ltd "
        f"www.{ZWSP}free-prize{ZWSP}.example"
    )
    fields = [
        ("From", "Quentin Ross <quentin@zero-width.example>"),
        ("To", US),
        ("Subject", "Quote for 56 chairs"),
        ("Date", _date(56)),
        ("Message-ID", "<zw-1@zero-width.example>"),
    ]
    return _plain(fields, _inquiry(56, f"Quentin Ross\nCompany: {company}"))


def bidi_subject() -> bytes:
    """A Subject whose right-to-left override displays `WIN A FREE IPHONE at www.free-…`."""
    subject = f"Quote for 57 chairs {RLO}elpmaxe.ezirp-eerf.www ta ENOHPI EERF A NIW{PDF}"
    fields = [
        ("From", "Rae Quist <rae@bidi-subject.example>"),
        ("To", US),
        ("Subject", _encoded(subject)),
        ("Date", _date(57)),
        ("Message-ID", "<bidi-2@bidi-subject.example>"),
    ]
    return _plain(fields, _inquiry(57, "Rae Quist"))


def zero_width_form() -> bytes:
    """A relayed form whose Name and Company hide spam behind zero-width and bidi controls."""
    head = RELAY_AUTH + _head(
        [
            ("From", "Website contact form <forms@webforms.example>"),
            ("To", US),
            ("Subject", "New contact form submission"),
            ("Date", _date(58)),
            ("Message-ID", "<form-20261202-0058@webforms.example>"),
            ("MIME-Version", "1.0"),
            ("Content-Type", "text/plain; charset=utf-8"),
        ]
    )
    body = (
        "You have a new submission from the contact form on your website.\n\n"
        f"Name: W{ZWSP}IN A F{ZWSP}REE I{ZWJ}PHONE {RLO}mialc/elpmaxe.retnec-ezirp//:ptth{PDF}\n"
        "Email: kim@visitor2.example\n"
        f"Company: {ZWSP}Casino{ZWSP} {LRI}Bonus{PDI} www.casino-bonus.example\n"
        "Message: We need a quote for 58 office chairs and 12 desks, delivered to our office"
        " next month. Our budget is approved; please call me to discuss prices and delivery"
        " terms.\n"
    )
    return (head + "\n" + body).encode()


# --- resource attacks ----------------------------------------------------------------------


def _resource(n: int, local: str, content_type: str, body: str, extra: Headers = ()) -> bytes:
    fields = [
        ("From", f"{local.capitalize()} <{local}@resource.example>"),
        ("To", US),
        ("Subject", f"Quote for {n} chairs"),
        ("Date", _date(n)),
        ("Message-ID", f"<res-{n}@resource.example>"),
        *extra,
        ("MIME-Version", "1.0"),
        ("Content-Type", content_type),
    ]
    return (_head(fields) + "\n" + body).encode()


def deep_html() -> bytes:
    """8,000 unclosed nested <blockquote> and 20,000 <br> around one sentence."""
    quotes = "\n".join("<blockquote>" * 100 for _ in range(80))
    body = (
        "<html><body>\n" + quotes + "\n<p>We need a quote for 68 chairs, delivered next month."
        "</p>\n" + "<br>\n" * 20_000 + "</body></html>\n"
    )
    return _resource(68, "nest", "text/html; charset=utf-8", body)


def many_parts() -> bytes:
    """3,000 small MIME parts in one multipart/mixed."""
    parts = "".join(
        f"--p\nContent-Type: text/plain\n\nQuote line {n}: one chair.\n" for n in range(3000)
    )
    body = "--p\nContent-Type: text/plain\n\n" + _inquiry(69, "Parts") + parts + "--p--\n"
    return _resource(69, "parts", 'multipart/mixed; boundary="p"', body)


def deep_multipart() -> bytes:
    """2,000 levels of multipart/mixed, each inside the previous one."""
    depth = 2000
    opening = "".join(
        f'--b{n}\nContent-Type: multipart/mixed; boundary="b{n + 1}"\n\n' for n in range(depth)
    )
    inner = f"--b{depth}\nContent-Type: text/plain\n\n{_inquiry(70, 'Deep')}--b{depth}--\n"
    closing = "".join(f"--b{n}--\n" for n in reversed(range(depth)))
    return _resource(70, "deep", 'multipart/mixed; boundary="b0"', opening + inner + closing)


def many_headers() -> bytes:
    """10,000 distinct header fields after the usual ones."""
    padding = tuple((f"X-Pad-{n:05d}", str(n)) for n in range(10_000))
    return _resource(71, "headers", "text/plain; charset=utf-8", _inquiry(71, "H"), padding)


def long_lines() -> bytes:
    """A 20,000-character unfolded header and a 200,000-character body line."""
    header = (("X-Long", "x" * 20_000),)
    body = "We need a quote for 72 chairs. " + "chair " * 33_300 + "\n"
    return _resource(72, "lines", "text/plain; charset=utf-8", body, header)


def _base64_lines(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "".join(text[i : i + 76] + "\n" for i in range(0, len(text), 76))


def base64_repeated() -> bytes:
    """A base64 text part of 150 KB of one repeated spam line."""
    line = b"WIN A FREE IPHONE http://prize-center.example/claim - quote for 73 chairs\n"
    decoded = line * (150_000 // len(line))
    fields = [("Content-Transfer-Encoding", "base64")]
    return _resource(
        73, "repeat", "text/plain; charset=utf-8", _base64_lines(decoded), tuple(fields)
    )


class _Bits:
    """Bits packed least significant first, as deflate (RFC 1951) stores them."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0

    def put(self, value: int, width: int) -> None:
        self.acc |= value << self.count
        self.count += width
        while self.count >= 8:
            self.out.append(self.acc & 0xFF)
            self.acc >>= 8
            self.count -= 8

    def code(self, code: str) -> None:
        """A Huffman code, written most significant bit first (RFC 1951 3.1.1)."""
        for bit in code:
            self.put(int(bit), 1)

    def finish(self) -> bytes:
        if self.count:
            self.out.append(self.acc & 0xFF)
        return bytes(self.out)


def zero_deflate(repeats: int) -> tuple[bytes, int]:
    """A raw deflate stream of 1 + 258 * `repeats` zero bytes and its length.

    One dynamic-Huffman block: literal 0 (code 10), then `repeats` copies of <length 258,
    distance 1> (codes 0 and 0: two bits each, ~1,032:1), then end-of-block (11).
    """
    bits = _Bits()
    bits.put(1, 1)  # BFINAL
    bits.put(2, 2)  # BTYPE = dynamic Huffman
    bits.put(286 - 257, 5)  # HLIT: literal/length codes 0..285
    bits.put(0, 5)  # HDIST: one distance code
    bits.put(18 - 4, 4)  # HCLEN: code length codes up to symbol 1 in the permuted order
    order = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1)
    lengths = {18: 1, 2: 2, 1: 2}  # code-length alphabet: 18 -> 0, 1 -> 10, 2 -> 11
    for symbol in order:
        bits.put(lengths.get(symbol, 0), 3)
    code_of = {18: "0", 1: "10", 2: "11"}
    bits.code(code_of[2])  # literal 0: length 2
    for run in (138, 117):  # literals 1..255: unused
        bits.code(code_of[18])
        bits.put(run - 11, 7)
    bits.code(code_of[2])  # 256 (end of block): length 2
    bits.code(code_of[18])  # lengths 257..284: unused
    bits.put(28 - 11, 7)
    bits.code(code_of[1])  # 285 (length 258): length 1
    bits.code(code_of[1])  # distance code 0 (distance 1): length 1
    bits.code("10")  # the literal 0
    for _ in range(repeats):
        bits.put(0, 2)  # <258, distance 1>
    bits.code("11")  # end of block
    return bits.finish(), 1 + 258 * repeats


def zip_of_zeros(name: str, repeats: int) -> bytes:
    """A one-member zip archive whose member inflates to ~100 MiB of zeros."""
    data, size = zero_deflate(repeats)
    crc = 0
    chunk = bytes(1 << 20)
    left = size
    while left:
        piece = min(left, len(chunk))
        crc = zlib.crc32(chunk[:piece], crc)
        left -= piece
    dos_time, dos_date = 0x4800, 0x5D82  # 09:00:00, 2026-12-02
    encoded = name.encode()
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, dos_time, dos_date, crc, len(data), size,
        len(encoded), 0,
    )  # fmt: skip
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, dos_time, dos_date, crc, len(data),
        size, len(encoded), 0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    offset = len(local) + len(encoded) + len(data)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(encoded), offset, 0)
    return local + encoded + data + central + encoded + end


ZIP_REPEATS = 406_420  # 104,856,361 bytes once inflated


def zip_bomb() -> bytes:
    """An order list attached as a zip whose single member inflates to 100 MiB of zeros."""
    archive = zip_of_zeros("order-list.csv", ZIP_REPEATS)
    body = (
        "--z\nContent-Type: text/plain; charset=utf-8\n\n"
        "Hello,\n\nplease quote the 74 chairs in the attached order list.\n\nZed\n"
        '--z\nContent-Type: application/zip; name="order-list.zip"\n'
        'Content-Disposition: attachment; filename="order-list.zip"\n'
        "Content-Transfer-Encoding: base64\n\n" + _base64_lines(archive) + "--z--\n"
    )
    return _resource(74, "zed", 'multipart/mixed; boundary="z"', body)


def nested_rfc822() -> bytes:
    """500 messages, each attached (message/rfc822) to the one before."""
    depth = 500
    parts = [
        f"From: Level {n} <level{n}@resource.example>\nSubject: Fwd: level {n}\n"
        "MIME-Version: 1.0\nContent-Type: message/rfc822\n\n"
        for n in range(depth)
    ]
    inner = "From: Inner <inner@resource.example>\nContent-Type: text/plain\n\n" + _inquiry(
        75, "Inner"
    )
    return _resource(75, "nested", "message/rfc822", "".join(parts) + inner)


def broken_charsets() -> bytes:
    """Invalid UTF-8, unknown and exotic charsets, broken encoded-words, odd-length UTF-16."""
    head = (
        "From: =?utf-16?b?AEIAbwBi?= <ivy@charset.example>\n"
        "To: hello@example.test\n"
        "Subject: =?x-no-such-charset?q?Quote=20for?= =?utf-8?b?!!not-base64!!?= "
        "=?utf-8?q?=FF=FE_77_chairs?= =?iso-2022-jp?b?GyRCJDMbKEI=?=\n"
        f"Date: {_date(77)}\n"
        "Message-ID: <cs-1@charset.example>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="c"\n'
    ).encode()
    body = (
        b"--c\nContent-Type: text/plain; charset=utf-8\n\n"
        b"Hello, we need a quote for 77 chairs \xff\xfe\xc3\x28 delivered \xe2\x82 next month.\n"
        b'--c\nContent-Type: text/plain; charset="x-no-such-charset"\n\n'
        b"Price list please \x81\x8d\x8f\x90\x9d\n"
        b"--c\nContent-Type: text/plain; charset=utf-7\n\n"
        b"+ADw-script+AD4-alert(1)+ADw-/script+AD4- quote +AGEAYgBj-\n"
        b"--c\nContent-Type: text/html; charset=utf-16\n\n"
        b"\x00<\x00p\x00>\x00Q\x00u\x00o\x00t\x00e\x00\n"
        b"--c\nContent-Type: text/plain; charset*=utf-8''%FF%FE; charset=\"\"\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n"
        b"=FF=FE=C3=28 chairs =E2=82=\n"
        b"--c--\n"
    )
    return head + b"\n" + body


def truncated() -> bytes:
    """A multipart message cut off in the middle of a base64 line, with no final newline."""
    attachment = _base64_lines(bytes(range(256)) * 40)
    body = (
        "--t\nContent-Type: text/plain; charset=utf-8\n\n" + _inquiry(78, "Tim") + "--t\n"
        'Content-Type: application/pdf; name="order.pdf"\n'
        "Content-Transfer-Encoding: base64\n\n" + attachment
    )
    full = _resource(78, "tim", 'multipart/mixed; boundary="t"', body)
    return full[: len(full) - len(attachment) // 2 - 37]


# --- the list ------------------------------------------------------------------------------

GENERATED: dict[str, Callable[[], bytes]] = {
    "07-subject-998-chars-url.eml": subject_998,
    "13-form-relay-email-bare-cr.eml": form_email_bare_cr,
    **{
        f"{23 + i}-victim-domain-flood-{i + 1}.eml": victim_flood(i)
        for i in range(len(FLOOD_SENDERS))
    },
    "33-bare-cr-headers.eml": bare_cr_headers,
    "34-nul-bytes.eml": nul_bytes,
    "35-eight-bit-headers.eml": eight_bit_headers,
    "52-many-reply-to-addresses.eml": many_reply_to,
    "53-cc-many-victims.eml": cc_many_victims,
    "55-bidi-override-name.eml": bidi_name,
    "56-zero-width-company.eml": zero_width_company,
    "57-bidi-override-subject.eml": bidi_subject,
    "58-zero-width-form-fields.eml": zero_width_form,
    "68-deep-nested-html.eml": deep_html,
    "69-many-mime-parts.eml": many_parts,
    "70-deep-multipart-nesting.eml": deep_multipart,
    "71-huge-header-count.eml": many_headers,
    "72-long-lines.eml": long_lines,
    "73-base64-repeated-text.eml": base64_repeated,
    "74-zip-bomb-attachment.eml": zip_bomb,
    "75-nested-message-rfc822.eml": nested_rfc822,
    "77-broken-charsets.eml": broken_charsets,
    "78-truncated-message.eml": truncated,
}


def build() -> dict[str, bytes]:
    """File name -> content of every generated file."""
    files = {name: make() for name, make in GENERATED.items()}
    for name, data in files.items():
        assert len(data) < MAX_FILE_BYTES, f"{name} is {len(data)} bytes"
        assert not data.startswith(b"From "), f"{name} would read as an mbox file"
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """Write the generated files into the corpus folder, or check them with --check."""
    parser = argparse.ArgumentParser(description="Write the generated hostile messages.")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--dir", type=Path, default=HERE, help="corpus folder")
    args = parser.parse_args(argv)
    stale = []
    for name, data in build().items():
        path = args.dir / name
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
    for name in stale:
        print(f"{name} differs from what make_corpus.py writes", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
