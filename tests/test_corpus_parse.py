"""Every real message in `../shared/corpora` parses, quickly, into usable fields.

The corpora (real public mail that must not be copied into the repository) are read from a
`shared` folder beside the repository; the tests skip when it is absent. One test walks every
file and reports all failures at once, instead of thousands of parametrized cases.

What "usable" means is decided by a tolerant reference reading of the same bytes with the
stdlib's compat32 policy (which never raises on headers): where it finds a From address, a
Subject or a non-empty text part, `parse` must find them too.
"""

from __future__ import annotations

import email
import re
import time
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses
from pathlib import Path

import pytest

from triage.core.models import InboundMessage
from triage.parsing import parse

pytestmark = pytest.mark.corpus

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
FOLDERS = (CORPORA / "parser_torture", CORPORA / "other")
MAX_SECONDS = 1.0

if not CORPORA.is_dir():
    pytest.skip(f"corpora not found at {CORPORA}", allow_module_level=True)

_INVISIBLE_HTML = re.compile(
    rb"<(head|style|script|title)\b.*?</\1\s*>|<!--.*?-->|<[^>]*>|&nbsp;|&#160;|\s",
    re.DOTALL | re.IGNORECASE,
)


def corpus_files() -> list[Path]:
    return [
        path
        for folder in FOLDERS
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(("_", ".")) and path.suffix != ".md"
    ]


def _plain(text: str) -> bool:
    """True when the reference's text is trustworthy: ASCII, printable, nothing undecoded
    (compat32 leaves encoded words and escaped undecodable bytes in place)."""
    return text.isascii() and text.isprintable() and "=?" not in text and "\\u" not in text


def reference_from(ref: Message) -> str | None:
    value = ref.get("From")
    if value is None:
        return None
    for _, address in getaddresses([str(value)]):
        if "@" in address and " " not in address and _plain(address):
            return address.lower()
    return None


def reference_subject(ref: Message) -> str | None:
    value = ref.get("Subject")
    if value is None:
        return None
    try:
        return str(make_header(decode_header(str(value))))
    except (LookupError, ValueError, UnicodeError):
        return str(value)


def reference_has_text(ref: Message) -> bool:
    for part in ref.walk():
        if part.get_content_type() not in ("text/plain", "text/html"):
            continue
        if str(part.get("Content-Disposition", "")).lower().startswith("attachment"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if part.get_content_subtype() == "html":
            payload = _INVISIBLE_HTML.sub(b"", payload)
        if payload.strip():
            return True
    return False


def problems(path: Path, raw: bytes, msg: InboundMessage, seconds: float) -> list[str]:
    """What is wrong with one parse result, judged against the reference reading."""
    found = []
    if seconds > MAX_SECONDS:
        found.append(f"took {seconds:.2f} s")
    found += [defect for defect in msg.defects if defect.startswith("parser error")]
    ref = email.message_from_bytes(raw, policy=policy.compat32)
    sender = reference_from(ref)
    if sender is not None and (msg.from_ is None or msg.from_.email.lower() != sender):
        found.append(f"From: expected {sender}, got {msg.from_}")
    subject = reference_subject(ref)
    if subject is not None and subject.strip():
        if _plain(subject):
            if "".join(msg.subject.split()) != "".join(subject.split()):
                found.append(f"Subject: expected {subject!r}, got {msg.subject!r}")
        elif not msg.subject.strip():
            found.append("Subject: missing")
    if reference_has_text(ref) and not msg.text.strip():
        found.append("text: missing")
    return found


def test_every_corpus_file_parses_fast_into_usable_fields() -> None:
    """No exception escapes, no file takes a second, and From, Subject and text are found
    wherever the reference reading finds them. All failures are listed together."""
    files = corpus_files()
    assert len(files) > 4000
    failures: list[str] = []
    slowest = (0.0, "")
    for path in files:
        raw = path.read_bytes()
        started = time.perf_counter()
        msg = parse(raw)
        seconds = time.perf_counter() - started
        slowest = max(slowest, (seconds, str(path.relative_to(CORPORA))))
        failures += [
            f"{path.relative_to(CORPORA)}: {problem}"
            for problem in problems(path, raw, msg, seconds)
        ]
    print(f"\n{len(files)} files; slowest {slowest[0] * 1000:.1f} ms: {slowest[1]}")
    assert failures == [], f"{len(failures)} problems:\n" + "\n".join(failures)


def test_known_troublemakers_parse() -> None:
    """The files KNOWN_TROUBLEMAKERS.md names each give the fields the stdlib chokes on."""
    torture = CORPORA / "parser_torture"
    crlf = parse((torture / "enmime" / "mail" / "qp-utf8-header-recursed.raw").read_bytes())
    assert crlf.from_ is not None and crlf.from_.email == "jamehi03@jamehi03lx.noa.com"
    assert crlf.subject == "MIME UTF8 Test ¢ More Text"
    for name in ("delivery-status.txt", "delivery-status.anonymized.eml"):
        dsn = parse((torture / "mimekit" / "messages" / name).read_bytes())
        assert dsn.content_type == "multipart/report"
        assert dsn.has_header("report-type")
        assert dsn.from_ is not None
    for name in ("size-0", "size-1", "size-2"):
        assert parse((torture / "sisimai_edge" / name).read_bytes()).message_id_synthesised
    stack = parse((torture / "mimekit" / "messages" / "stack-overflow.txt").read_bytes())
    assert stack.from_ is not None and stack.from_.email == "test@test.com"


def test_line_ending_variants_of_bounces_parse_alike() -> None:
    """sisimai's CR-only (mac/) and CRLF (dos/) copies parse like the LF originals (bsd/)."""
    bounces = CORPORA / "other" / "sisimai_bounces"
    compared = 0
    for variant in ("mac", "dos"):
        for path in sorted((bounces / variant).glob("*.eml")):
            original = bounces / "bsd" / path.name
            if not original.exists():
                continue
            ours, theirs = parse(path.read_bytes()), parse(original.read_bytes())
            assert (ours.subject, ours.from_, ours.message_id) == (
                theirs.subject,
                theirs.from_,
                theirs.message_id,
            ), path.name
            compared += 1
    assert compared >= 100


def test_bench_smoke() -> None:
    """`bench.parse.run` measures both parsers on a few messages and reports the ratio."""
    from bench.parse import run

    ours, stdlib = run(limit=20)
    assert ours["messages"] == stdlib["messages"] == 20
    assert float(ours["msgs_per_s"]) > 0 and float(stdlib["msgs_per_s"]) > 0
    assert float(ours["ratio"]) > 0
