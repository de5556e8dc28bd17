"""Hostile messages and a probe that measures what one costs to parse and classify.

`SHAPES` names every hostile shape an attacker can send within the 25 MiB a mail server accepts:
giant single-line and newline-only texts, deep and wide MIME trees, huge headers, pathological
HTML, encodings and quoting. Each is generated on demand; nothing big is stored.

Run as `python -m tests.bounded_probe`, the probe loads the shipped model once, warms it up,
then reads shape names from stdin, one per line. For each it generates the message, forks, and
the child parses and classifies it (parse, feature extraction, `classify_many`, the CLI's
etiquette verdict) and reports one JSON line on stdout: CPU seconds (`time.process_time`) and
the growth of the child's peak resident memory (`ru_maxrss`) over its start, where the model is
loaded and the raw message is already held (as the daemon holds it after fetching). A child
starts with a peak equal to its current size, not the parent's, so each shape is measured alone
and the model is loaded only once. After measuring, the child also runs the message through the
batch step of `triage classify --json` and reports the lines it printed.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
MAX_MESSAGE = 25 * MIB  # what a mail server typically accepts
CHILD_TIMEOUT = 60.0  # seconds; a regression should fail, not hang the suite
CHILD_EXTRA_ADDRESS_SPACE = 2048 * MIB  # a regression should fail, not exhaust the machine

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "classifiers" / "model.skops"

_HEAD = (
    "From: Jane Doe <jane@crestline.example>\n"
    "To: sales@ourcompany.example\n"
    "Subject: Quote request\n"
    "Message-ID: <hostile@crestline.example>\n"
    "Date: Mon, 4 Mar 2024 10:00:00 +0100\n"
    "MIME-Version: 1.0\n"
)


def _mail(
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: str = "",
    head: str = _HEAD,
) -> bytes:
    return f"{head}{headers}Content-Type: {content_type}\n\n".encode() + body


def _fill(unit: bytes, room: int, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """`unit` repeated to fill `room` bytes around `prefix` and `suffix`."""
    count = max(0, room - len(prefix) - len(suffix)) // len(unit)
    return prefix + unit * count + suffix


ROOM = MAX_MESSAGE - 1024  # the body's share of a 25 MiB message, leaving room for headers


def _text(unit: bytes, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    return _mail(_fill(unit, ROOM, prefix, suffix))


def _html(unit: bytes, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    return _mail(_fill(unit, ROOM, prefix, suffix), "text/html; charset=utf-8")


def _review_case() -> bytes:
    """The attack review's message: 196 KB, 8,000 nested quotes around 20,000 short lines."""
    return _mail(b"<blockquote>" * 8000 + b"w<br>" * 20_000, "text/html; charset=utf-8")


def _multipart_deep() -> bytes:
    depth = 20_000
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth)
    )
    closing = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth)))
    return _HEAD.encode() + opening + b"Content-Type: text/plain\n\ninnermost\n" + closing


def _multipart_siblings(part: bytes) -> bytes:
    closing = b"--b--\n"
    return _mail(_fill(b"--b\n" + part, ROOM, suffix=closing), 'multipart/mixed; boundary="b"')


def _rfc822_deep() -> bytes:
    depth = 5000
    inner = b"Content-Type: message/rfc822\n\n" * depth + b"Subject: inner\n\ninnermost text\n"
    return _HEAD.encode() + inner


def _base64_lines(size: int, newline: bytes = b"\n") -> bytes:
    """About `size` bytes of base64 text in 76-character lines (one line repeated: the parser
    does not look at the content, and encoding 25 MiB would cost more than parsing it)."""
    line = base64.b64encode(bytes(range(57))) + newline
    return line * (size // len(line))


def _rfc822_base64(levels: int) -> bytes:
    """A forward-as-attachment `levels` deep, each level base64-encoded, 25 MiB in all."""
    size = ROOM * 99 // 100
    for _ in range(levels):
        size = size * 3 // 4 * 76 // 77 - 200
    message = b"Content-Type: text/plain\n\n" + b"All work and no play. " * (size // 22)
    for _ in range(levels):
        message = b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" + (
            base64.encodebytes(message)
        )
    return _HEAD.encode() + message


def _base64_attachment(newline: bytes = b"\n") -> bytes:
    head = _mail(
        b"--m\nContent-Type: text/plain\n\nPlease find the drawings attached.\n"
        b"--m\nContent-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n\n",
        'multipart/mixed; boundary="m"',
    ).replace(b"\n", newline)
    data = _base64_lines(ROOM - 2 * len(head), newline)
    return head + data + b"--m--".replace(b"\n", newline) + newline


def _header_lines(unit: bytes) -> bytes:
    """A header block of `unit` lines filling the message, then a short body."""
    return _fill(unit, ROOM - 100) + b"\nContent-Type: text/plain\n\nhello\n"


def _big_header(name: str, value: bytes) -> bytes:
    """The usual headers with field `name` holding `value`, first, where a cut keeps most."""
    rest = "".join(line + "\n" for line in _HEAD.splitlines() if not line.startswith(name + ":"))
    return (
        name.encode()
        + b": "
        + value
        + b"\n"
        + rest.encode()
        + b"Content-Type: text/plain\n\nPlease send a quote.\n"
    )


def _header_value(unit: bytes, size: int = ROOM - 1000) -> bytes:
    """A header value of `unit` repeated, as long as the message allows by default."""
    return _fill(unit, size)


def _hostile_addresses() -> bytes:
    """Every address header at the length the parser reads, in a shape that needs the slow
    general address parser."""
    value = _fill(b"a@", 16_384)
    rest = "".join(
        line + "\n"
        for line in _HEAD.splitlines()
        if not line.startswith(("From:", "To:", "Reply-To:", "Cc:"))
    )
    fields = b"".join(name + b": " + value + b"\n" for name in (b"From", b"Reply-To", b"To", b"Cc"))
    return fields + rest.encode() + b"Content-Type: text/plain\n\nPlease send a quote.\n"


def _nested_attachment(newline: bytes) -> bytes:
    """A base64 attachment filling the message inside nine nested multiparts, as deep as the
    parser reads (each level scans the bytes inside for its own boundary)."""
    depth = 9
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth)
    )
    closing = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth)))
    attachment = b"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
    head = _HEAD.encode() + opening + attachment
    room = ROOM - (len(head) + len(closing)) * len(newline) - 2000
    data = _base64_lines(room, newline)
    return (head + data.replace(newline, b"\n") + closing).replace(b"\n", newline)


def _many_charset_words(count: int) -> bytes:
    return b" ".join(b"=?x-bogus-%d?q?a?=" % i for i in range(count))


def _encoded_headers() -> bytes:
    """Every kept header full of encoded words in distinct unknown charsets."""
    lines = b"".join(
        b"X-H%d: " % i + b" ".join(b"=?x%d-%d?q?a?=" % (i, j) for j in range(400)) + b"\n"
        for i in range(500)
    )
    return _HEAD.encode() + lines + b"Content-Type: text/plain\n\nhello\n"


def _forwarded_original() -> bytes:
    """Sender and recipient share a domain, so the forwarded original's sender is read."""
    head = _HEAD.replace("sales@ourcompany.example", "sales@crestline.example")
    body = b"FYI\n\n-----Original Message-----\n" + _fill(b"From: a\n> ", ROOM - 100)
    return _mail(body, head=head)


def _forwarded_junk() -> bytes:
    """A forwarded original whose header block is runs of blanks, read by quotequail."""
    head = _HEAD.replace("sales@ourcompany.example", "sales@crestline.example")
    body = (
        b"FYI\n\n-----Original Message-----\nFrom: " + b"a " * 3000 + b"\nSent: " + (b"\t" * 3000)
    )
    return _mail(_fill(b"x", ROOM, body), head=head)


SHAPES: dict[str, Callable[[], bytes]] = {
    # The attack review's message and its relatives.
    "html_review_case": _review_case,
    "html_deep_quotes": lambda: _html(b"w<br>", b"<blockquote>" * 200_000),
    "html_quote_entities": lambda: _mail(
        b"&#1;" * 8000 + b"w<br>" * 20_000, "text/html; charset=utf-8"
    ),
    "html_quote_control_chars": lambda: _mail(
        b"\x01" * 8000 + b"w<br>" * 20_000, "text/html; charset=utf-8"
    ),
    # HTML.
    "html_million_tags": lambda: _html(b"<span>x</span>"),
    "html_br_lines": lambda: _html(b"a<br>"),
    "html_list_items": lambda: _html(b"<li>a"),
    "html_cells": lambda: _html(b"<td>a"),
    "html_unclosed_tags": lambda: _html(b"<a"),
    "html_deep_divs": lambda: _html(b"<div>", suffix=b"hello"),
    "html_giant_attribute": lambda: _html(b"x", b'<a href="', b'">click</a> hello'),
    "html_unterminated_attribute": lambda: _html(b"x", b"<div title='"),
    "html_huge_style": lambda: _html(b"p{color:red}", b"<style>", b"</style><p>Hello</p>"),
    "html_unclosed_script": lambda: _html(b"x", b"<script>"),
    "html_unclosed_comment": lambda: _html(b"x", b"<!--"),
    "html_many_comments": lambda: _html(b"<!---->a"),
    "html_entities": lambda: _html(b"&amp;"),
    "html_unknown_entities": lambda: _html(b"&zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz;"),
    "html_huge_numeric_entity": lambda: _html(b"9", b"&#"),
    "html_huge_hex_entity": lambda: _html(b"f", b"&#x"),
    "html_pre_lines": lambda: _html(b"a\n", b"<pre>"),
    "html_unclosed_head": lambda: _html(b"<title>x</title>", b"<head>"),
    "html_zero_width": lambda: _html("\u200b".encode()),
    "html_whitespace": lambda: _html(b" \n\t"),
    "html_empty_parts": lambda: _multipart_siblings(
        b"Content-Type: text/html\n\n" + b"<p> </p>" * 4000 + b"\n"
    ),
    # Plain text.
    "plain_one_line_words": lambda: _text(b"word "),
    "plain_one_token": lambda: _text(b"a"),
    "plain_tiny": lambda: _mail(b"Could you send a quote for 500 units?\n"),
    "plain_newlines": lambda: _text(b"\n"),
    "plain_crlf_blank_lines": lambda: _text(b"\r\n"),
    "plain_carriage_returns": lambda: _text(b"\r"),
    "plain_short_lines": lambda: _text(b"a\n"),
    "plain_spaces": lambda: _text(b" \t"),
    "plain_nul": lambda: _text(b"\x00"),
    "plain_quoted_lines": lambda: _text(b"> quoted\n", b"Hello\n"),
    "plain_attributions": lambda: _text(
        b"On Mon, 4 Mar 2024 at 10:00, Jane <jane@x.example> wrote:\n", b"Hello\n"
    ),
    "plain_colon_lines": lambda: _text(b"a@b:\n", b"Hello\n"),
    "plain_header_labels": lambda: _text(b"From: x\n", b"Hello\n"),
    "plain_separators": lambda: _text(b"-- \n__\n", b"Hello\n"),
    "plain_valedictions": lambda: _text(b"Best regards,\nJane\n", b"Hello\n"),
    "plain_signature_digits": lambda: _text(b"+1 (555) 123-4567 | ", b"Hello\n-- \n"),
    "plain_form_fields": lambda: _text(b"Name: x\nEmail: a@b.example\nPhone: 1234567\n"),
    "plain_colons": lambda: _text(b":"),
    "plain_at_signs": lambda: _text(b"a@"),
    "plain_urls": lambda: _text(b"http://a.b/", b"Hello\n-- \n"),
    "plain_colons_at_line_ends": lambda: _text(b"a:\n", b"Hello\n"),
    "plain_wrote_lines": lambda: _text(b"Jane wrote:\n", b"Hello\n"),
    "plain_forwarded_original": _forwarded_original,
    "plain_forwarded_junk": _forwarded_junk,
    # MIME structure and transfer encodings.
    "multipart_deep": _multipart_deep,
    "multipart_nested_attachment": lambda: _nested_attachment(b"\n"),
    "multipart_nested_attachment_crlf": lambda: _nested_attachment(b"\r\n"),
    "multipart_part_headers": lambda: _multipart_siblings(
        b'Content-Type: image/png\nContent-Disposition: attachment; filename="'
        + b"x" * 250_000
        + b'"\n\nxx\n'
    ),
    "multipart_parts_without_boundary": lambda: _multipart_siblings(
        b"Content-Type: multipart/mixed\n\n" + b"no boundary here " * 7000 + b"\n"
    ),
    "multipart_attached_messages": lambda: _multipart_siblings(
        b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(b"Subject: inner\n\n" + b" \n" * 60_000)
    ),
    "multipart_siblings": lambda: _multipart_siblings(b"Content-Type: image/png\n\nxx\n"),
    "multipart_empty_text_parts": lambda: _multipart_siblings(b"Content-Type: text/plain\n\n \n"),
    "multipart_no_boundary": lambda: _mail(_fill(b"--x\nhello\n", ROOM), "multipart/mixed"),
    "multipart_false_boundaries": lambda: _mail(
        _fill(b"--bx\n", ROOM), 'multipart/mixed; boundary="b"'
    ),
    "multipart_digest": lambda: _mail(
        _fill(b"--b\n\nSubject: s\n\n \n", ROOM, suffix=b"--b--\n"),
        'multipart/digest; boundary="b"',
    ),
    "rfc822_deep": _rfc822_deep,
    "rfc822_base64_one": lambda: _rfc822_base64(1),
    "rfc822_base64_nested": lambda: _rfc822_base64(3),
    "base64_attachment": _base64_attachment,
    "base64_attachment_crlf": lambda: _base64_attachment(b"\r\n"),
    "base64_text": lambda: _mail(
        base64.encodebytes(_fill(b"All work and no play. ", ROOM * 3 // 4 * 76 // 77 - 1000)),
        headers="Content-Transfer-Encoding: base64\n",
    ),
    "base64_junk": lambda: _mail(
        _fill(b"!!!=", ROOM), headers="Content-Transfer-Encoding: base64\n"
    ),
    "qp_equals": lambda: _mail(
        _fill(b"=", ROOM), headers="Content-Transfer-Encoding: quoted-printable\n"
    ),
    "qp_soft_breaks": lambda: _mail(
        _fill(b"=\n", ROOM), headers="Content-Transfer-Encoding: quoted-printable\n"
    ),
    "qp_escapes": lambda: _mail(
        _fill(b"=E2=80=8B", ROOM), headers="Content-Transfer-Encoding: quoted-printable\n"
    ),
    # Headers.
    "headers_many": lambda: _HEAD.encode() + _header_lines(b"X-Spam: v\n"),
    "headers_many_distinct": lambda: (
        _HEAD.encode() + b"".join(b"X-H%d: v\n" % i for i in range(1_000_000)) + b"\nhello\n"
    ),
    "headers_continuations": lambda: _header_lines(b" x\n"),
    "headers_no_colon": lambda: _HEAD.encode() + _header_lines(b"junk\n"),
    "subject_10mb": lambda: _big_header("Subject", _header_value(b"x", 10 * MIB)),
    "subject_encoded_words": lambda: _big_header("Subject", _header_value(b"=?utf-8?q?a?= ")),
    "subject_bogus_charsets": lambda: _big_header("Subject", _many_charset_words(500_000)),
    "subject_iso2022": lambda: _big_header("Subject", _header_value(b"\x1b$B\x1b(B")),
    "headers_encoded_words": _encoded_headers,
    "to_100k_addresses": lambda: _big_header(
        "To", b"".join(b"user%d@example.org, " % i for i in range(100_000))
    ),
    "to_parens": lambda: _big_header("To", _header_value(b"(")),
    "to_quotes": lambda: _big_header("To", _header_value(b'"\\')),
    "to_angles": lambda: _big_header("To", _header_value(b"<")),
    "to_group_colons": lambda: _big_header("To", _header_value(b"a:")),
    "to_at_signs": lambda: _big_header("To", _header_value(b"a@")),
    "addresses_all_hostile": _hostile_addresses,
    "to_name_words": lambda: _big_header("To", _header_value(b"Aa ")),
    "from_long_display_name": lambda: _big_header(
        "From", _header_value(b"Aaaa ", 200_000) + b"<jane@crestline.example>"
    ),
    "references_many": lambda: _big_header("References", _header_value(b"<a@b> ")),
    "date_junk": lambda: _big_header("Date", _header_value(b"1 ")),
    "content_type_params": lambda: (
        _HEAD.encode() + b"Content-Type: text/plain; " + _fill(b"a=b; ", 200_000) + b"\n\nhello\n"
    ),
    "content_type_rfc2231": lambda: (
        _HEAD.encode()
        + b"Content-Type: text/plain; "
        + b"".join(b"name*%d*=%%41; " % i for i in range(20_000))
        + b"\n\nhello\n"
    ),
    # Charsets.
    "charset_utf16": lambda: _mail(
        _fill("ab\n".encode("utf-16-le"), ROOM), "text/plain; charset=utf-16"
    ),
    "charset_utf7": lambda: _mail(_fill(b"+AGEAYgBj-", ROOM), "text/plain; charset=utf-7"),
    "charset_lying": lambda: _mail(_fill("ü".encode("latin-1"), ROOM), "text/plain; charset=utf-8"),
    "charset_html_utf16": lambda: _mail(
        _fill("<blockquote>w<br>".encode("utf-16-le"), ROOM), "text/html; charset=utf-16-le"
    ),
    # Mailbox framing.
    "mbox_from_line_only": lambda: b"From " + b"x" * ROOM,
    "bom_mbox_line_crlf_and_cr": lambda: (
        b"\xef\xbb\xbfFrom a@b Mon Mar  4 10:00:00 2024\r\n"
        + _text(b"word\r").replace(b"\n", b"\r\n")
    ),
}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load() -> tuple[Any, Any]:
    """The shipped classifier and the CLI's guard context, warmed up on a small message."""
    from triage.decide import guards
    from triage.decide.classify import load_classifier
    from triage.parsing import parse

    classifier = load_classifier(MODEL)
    context = guards.GuardContext(require_return_path=False, require_addressed_to_us=False)
    warm = parse(_mail(b"Could you send a quote for 500 units?\n\nJane Doe\nCrestline Ltd\n"))
    classifier.classify_many([warm])
    guards.check(warm, context)
    return classifier, context


def measure(classifier: Any, context: Any, raw: bytes) -> dict[str, Any]:
    """Parse, classify and check one message; its CPU seconds and peak memory growth."""
    from triage.decide import guards
    from triage.parsing import parse

    start_peak = _peak_mib()
    started = time.process_time()
    msg = parse(raw)
    parsed = time.process_time()
    result = classifier.classify_many([msg])[0]
    classified = time.process_time()
    guards.check(msg, context)
    checked = time.process_time()
    return {
        "cpu_s": round(checked - started, 4),
        "parse_s": round(parsed - started, 4),
        "classify_s": round(classified - parsed, 4),
        "guards_s": round(checked - classified, 4),
        "memory_mib": round(_peak_mib() - start_peak, 1),
        "raw_mib": round(len(raw) / MIB, 2),
        "text_chars": len(msg.text),
        "label": result.label,
        "defects": list(msg.defects),
    }


def cli_lines(classifier: Any, context: Any, name: str, raw: bytes) -> list[str]:
    """What `triage classify --json` prints for the message (its per-batch step, in process)."""
    from triage.cli.model import _classify_batch
    from triage.ingest.sources import SourceItem

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _classify_batch([SourceItem(name, raw)], classifier, context, json_output=True)
    return printed.getvalue().splitlines()


def _limit_child_memory() -> None:
    with open("/proc/self/statm") as statm:
        virtual = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = virtual + CHILD_EXTRA_ADDRESS_SPACE
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_forked(classifier: Any, context: Any, name: str) -> dict[str, Any]:
    """Generate shape `name`, then measure it in a forked child; the child's report."""
    raw = SHAPES[name]()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report, exit without running the parent's cleanup
        os.close(reader)
        try:
            _limit_child_memory()
            report = measure(classifier, context, raw)
            report["cli_lines"] = cli_lines(classifier, context, name, raw)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, never raised
            report = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        os.write(writer, json.dumps(report).encode())
        os._exit(0)
    os.close(writer)
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([reader], [], [], left)
        if not ready:
            break
        chunk = os.read(reader, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    else:
        os.kill(pid, signal.SIGKILL)
    os.close(reader)
    _, status = os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks)) if chunks else {}
    if not report:
        report = {"error": f"child ended without a report (wait status {status})"}
    report["shape"] = name
    report["size"] = len(raw)
    return report


def main() -> None:
    """Serve measurements: one shape name per stdin line, one JSON report per stdout line."""
    started = time.process_time()
    classifier, context = load()
    ready = {"ready": True, "load_s": round(time.process_time() - started, 2)}
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name:
            print(json.dumps(run_forked(classifier, context, name)), flush=True)


if __name__ == "__main__":
    main()
