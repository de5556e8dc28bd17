"""Header values to clean text and values: RFC 2047 words, addresses, message ids, dates.

Everything here works on plain strings (compat32-style raw values) and never raises: the
policy.default header objects are not used because they raise lazily on real mail
(`Message-Id: <>`, encoded words that decode to CRLF in an address, groups in a DSN).
"""

from __future__ import annotations

import binascii
import re
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime

from triage.core.models import Address
from triage.parsing import charsets

MAX_ADDRESS_HEADER = 16_384  # a To: with thousands of recipients is cut; nobody replies to all
MAX_ADDRESSES = 100
# What the stdlib's general address reader sees: it walks the value in Python (60 ms for 16 KB of
# junk like `a@a@a@…`), and 4 KB hold a hundred addresses of the odd shapes that need it.
MAX_GENERAL_ADDRESS_CHARS = 4096
MAX_REFERENCES_HEADER = 65_536
MAX_ID_HEADER = 998  # the RFC 5322 line limit; a longer Message-ID value is junk
# A value cleaned for display (subject, names, file names): more is no subject anyone wrote, and
# its encoded words would each cost a decode.
MAX_CLEAN_CHARS = 4096
# Charsets looked up per value: a real header uses one or two, and every unknown name costs a
# failed codec search (an import attempt); further words are decoded by their content.
MAX_CHARSETS_PER_VALUE = 4

# An RFC 2047 encoded word; the text part is allowed spaces because spammers' mailers put them
# there and every mail client still shows the decoded text.
_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?]*)\?=")
# Whitespace between two adjacent encoded words is not part of the text (RFC 2047 §6.2).
_BETWEEN_WORDS = re.compile(r"(\?=)\s+(=\?)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")
_SPACES = re.compile(r"\s+")
# The common shapes of a single mailbox, read without the slow general parser:
# `user@host`, `<user@host>`, `Name <user@host>`, `"Name" <user@host>`.
# Matched against a stripped item; no two parts can match the same characters, so a failed
# match costs one pass (an earlier, ambiguous form took seconds on a run of spaces).
_ADDR_SPEC = r'[^<>\s",;:()\\@]++@[^<>\s",;:()\\@]++'
_SIMPLE_MAILBOX = re.compile(
    rf'(?:"([^"\\]*)"[ \t]*|([^"<>,;:@()\\\[\]]*+))<({_ADDR_SPEC})>|<?({_ADDR_SPEC})>?'
)
_NOT_IN_ADDRESS = re.compile(r'[\s<>,;:"()\[\]]+')
_MSGID = re.compile(r"<([^<>\s]*)>")


def _decode_word(match: re.Match[str], charset: str) -> str:
    encoding, payload = match.group(2), match.group(3)
    # Raw 8-bit bytes inside an encoded word reach here as U+0080..U+00FF; keep them as bytes.
    raw = payload.encode("latin-1", "replace")
    try:
        if encoding in "Bb":
            raw = binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
        else:
            raw = binascii.a2b_qp(raw, header=True)
    except (binascii.Error, ValueError):
        return match.group(0)  # not decodable: show it as it came, like mail clients do
    return charsets.decode(raw, charset)[0]


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words in `value`; undecodable words are kept literally."""
    if "=?" not in value:
        return value
    seen: set[str] = set()

    def word(match: re.Match[str]) -> str:
        charset = match.group(1)
        if charset not in seen:
            if len(seen) >= MAX_CHARSETS_PER_VALUE:
                charset = ""  # decoded by content, like an unknown charset
            else:
                seen.add(charset)
        return _decode_word(match, charset)

    return _WORD.sub(word, _BETWEEN_WORDS.sub(r"\1\2", value))


def _iso2022(text: str) -> str:
    """Raw ISO-2022-JP in a header (Japanese mailers send it unencoded) decoded to text."""
    try:
        return text.encode("ascii").decode("iso2022_jp")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def clean(value: str) -> str:
    """One line of display text: decoded, control characters and runs of space collapsed.

    Only the first `MAX_CLEAN_CHARS` of `value` are read (the parser records longer header values
    as defects).
    """
    text = decode_words(value[:MAX_CLEAN_CHARS])
    if "\x1b" in text:
        text = _iso2022(text)
    if not text.isprintable():  # tabs, line breaks, control characters (cheap C-level check)
        text = _SPACES.sub(" ", _CONTROL.sub(" ", text))
    return text.strip()


def addresses(value: str) -> tuple[Address, ...]:
    """The mailboxes in an address header; groups are flattened, empty entries dropped.

    Parsing happens on the encoded value so that a display name that decodes to a comma or to
    CRLF cannot change the structure; the names are decoded afterwards.
    """
    if not value or not value.strip():
        return ()
    value = _CONTROL.sub(" ", value[:MAX_ADDRESS_HEADER])
    found: list[Address] = []
    for raw_name, raw_email in _mailbox_pairs(value):
        name, email = _split_bare_name(raw_name, raw_email.strip().strip("<>"))
        if not email:
            continue
        local, _, domain = email.rpartition("@")
        if local:
            email = f"{local}@{domain.lower()}"
        found.append(Address(clean(name), email))
        if len(found) >= MAX_ADDRESSES:
            break
    return tuple(found)


def _split_bare_name(name: str, email: str) -> tuple[str, str]:
    """Repair `Big Bug bb@bug.com`, a display name written without angle brackets.

    Encoded words are not allowed in an addr-spec (RFC 2047 §5), so none is decoded there.
    """
    if " " not in email:
        return name, email
    words = email.split()
    for index in range(len(words) - 1, -1, -1):
        if "@" in words[index]:
            return name or " ".join(words[:index]), words[index]
    return name, "".join(words)


def _simple_mailboxes(value: str) -> list[tuple[str, str]] | None:
    """The (name, address) pairs of a simple comma-separated list, or None when the value has
    comments, groups, quoted commas or anything else that needs the general parser."""
    pairs = []
    for item in value.split(",") if "," in value else (value,):
        stripped = item.strip()
        if not stripped:
            continue
        match = _SIMPLE_MAILBOX.fullmatch(stripped)
        if match is None:
            return None
        name, bare_name, email, bare_email = match.groups()
        pairs.append((name or (bare_name or "").strip(), email or bare_email))
    return pairs


def _mailbox_pairs(value: str) -> list[tuple[str, str]]:
    """(display name, addr-spec) pairs: the fast reader, else the stdlib's, else bare tokens."""
    simple = _simple_mailboxes(value)
    if simple is not None:
        return simple
    if len(value) > MAX_GENERAL_ADDRESS_CHARS:
        # Cut after a comma where there is one, so that no address is cut in two.
        comma = value.rfind(",", 0, MAX_GENERAL_ADDRESS_CHARS)
        value = value[: comma if comma > 0 else MAX_GENERAL_ADDRESS_CHARS]
    try:
        return getaddresses([value])
    except (RecursionError, ValueError, IndexError, TypeError):
        # Deeply nested groups or comments ("::::", "((((") make the stdlib reader recurse
        # past the limit; the addr-specs alone are still worth having.
        return [("", token) for token in _NOT_IN_ADDRESS.split(value) if "@" in token]


# A group ("Team: a@x, b@y;"): a colon before any `<`, `@` or `,` outside a quoted string.
_GROUP = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^"<@:,])*:')


def is_group(value: str) -> bool:
    """True when an address header uses group syntax (RFC 5322 3.4): nobody to answer."""
    return _GROUP.match(value[:MAX_ADDRESS_HEADER]) is not None


def first_address(value: str) -> Address | None:
    """The first mailbox of an address header, or None."""
    found = addresses(value)
    return found[0] if found else None


def message_id(value: str) -> str:
    """The `<id>` in a Message-ID/In-Reply-To value, or "" when there is none usable."""
    value = value[:MAX_ID_HEADER]
    for found in _MSGID.findall(value):
        if found:
            return f"<{found}>"
    # `id@host` without brackets: one whitespace-separated token (no regex search, which would
    # rescan a long run without "@" from every position).
    for token in value.split():
        if "@" in token and "<" not in token and ">" not in token:
            return f"<{token}>"
    return ""


def message_ids(value: str, limit: int = 100) -> tuple[str, ...]:
    """Every `<id>` in a References value; when there are too many, the root and the newest."""
    ids = [f"<{found}>" for found in _MSGID.findall(value[:MAX_REFERENCES_HEADER]) if found]
    if len(ids) > limit:
        ids = ids[:1] + ids[-(limit - 1) :]
    return tuple(ids)


def return_path(value: str | None) -> str | None:
    """The Return-Path address: None when absent, "" for the null sender `<>`."""
    if value is None:
        return None
    inner = value.strip()
    if inner.startswith("<"):
        inner = inner[1 : inner.find(">")] if ">" in inner else inner[1:]
    return inner.strip()


def date(value: str) -> datetime | None:
    """An aware datetime for a Date value (UTC when the zone is missing or -0000), or None."""
    value = value.strip()[:200]
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
