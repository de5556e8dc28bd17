"""A fast, bounded, tolerant MIME reader: raw bytes to a tree of entities with raw header values.

The stdlib feed parser walks every body line in Python; here header blocks and multipart bodies
are split with `bytes.find`, which keeps parsing linear and cheap. Every loop is bounded (header
bytes and count, part count, nesting depth, lines that look like boundaries), so no input can
make a parse slow. Entities do not copy their bodies: each records where its body lies in the
message's bytes, so a part nested twenty multiparts deep costs no more memory than a top-level
one. What was wrong is recorded as short defect strings instead of raised.
"""

from __future__ import annotations

import binascii
import itertools
import re
import urllib.parse
from dataclasses import dataclass, field

from triage.parsing import charsets

MAX_HEAD_BYTES = 256 * 1024  # a header block beyond this is spam or an attack; the rest is dropped
# Header bytes read per message over all its entities; once they are used up, each further
# part's header block is read only as far as a real one reaches.
MAX_HEAD_BYTES_TOTAL = 1024 * 1024
MIN_HEAD_BYTES = 8 * 1024
MAX_HEADERS = 500
MAX_PARTS = 200
# Real mail nests multiparts four deep at most (mixed > alternative > related, a signed or
# forwarded wrapper); each level rescans its body for its boundary, so depth multiplies cost.
MAX_DEPTH = 10
# The start of a multipart body searched for a delimiter when the boundary parameter is missing.
GUESS_BOUNDARY_BYTES = 16 * 1024
# Lines that start like a delimiter but are not one ("--boundaryX"), looked at per message before
# the rest of a multipart is taken as its last part: each costs a Python loop turn.
MAX_DELIMITER_CANDIDATES = 10_000
# Text parts tried for the body (an empty one makes the parser try the next) and attached
# messages opened for their text, per message; real mail needs two or three.
MAX_TEXT_PARTS_READ = 8
# HTML characters converted to text per message, over every HTML part tried.
MAX_HTML_CHARS_READ = 400_000
# Transfer-encoded bytes of an attached message decoded to read its text: its headers and first
# text part are near its start, and decoding all of a 25 MB forward would double the memory.
MAX_ATTACHED_BYTES = 4 * 1024 * 1024

# One header field with its continuation lines; the name is any printable ASCII but the colon.
_FIELD_PATTERN = r"([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)"
_FIELD = re.compile(_FIELD_PATTERN)
_FIELDS = re.compile("^" + _FIELD_PATTERN, re.MULTILINE)  # every field of a block at once
# Possessive runs inside the quoted string: a long quoted value is one C-level step, not one
# backtracking point per character (a 250 KB file name took 70 ms).
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]++|\\.)*+"?|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")
_GUESS_BOUNDARY = re.compile(rb"^--([^\s]{1,100}?)(?:--)?[ \t]*$", re.MULTILINE)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_CR_TO_LF = bytes.maketrans(b"\r", b"\n")
# What may follow `--boundary` on a delimiter line: `--` for the closing one, then blanks.
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t\r\x0b\x0c]*\Z")


@dataclass(slots=True)
class Entity:
    """One MIME entity: its headers (lower-cased name → first raw unfolded value) and content.

    The body is `data[start:end]`: `data` is the whole message, shared by every entity of it, so
    nothing is copied until a part is decoded (and then only as much as is asked for).
    """

    headers: dict[str, str]
    data: bytes
    start: int = 0
    end: int = 0
    content_type: str = "text/plain"
    params: dict[str, str] = field(default_factory=dict)
    children: list[Entity] = field(default_factory=list)
    # A multipart whose boundary is missing or absent from the body: its body is read as text.
    as_text: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower-case), or None when absent."""
        return self.headers.get(name)

    @property
    def maintype(self) -> str:
        """The part of the content type before the slash."""
        return self.content_type.partition("/")[0]

    @property
    def disposition(self) -> str:
        """The Content-Disposition token, lower-cased ("" when absent)."""
        value = self.header("content-disposition") or ""
        return value.partition(";")[0].strip().lower()

    @property
    def filename(self) -> str:
        """The attachment's file name from Content-Disposition or the Content-Type name."""
        value = self.header("content-disposition")
        name = params(value).get("filename", "") if value else ""
        return name or self.params.get("name", "")

    @property
    def size(self) -> int:
        """The length of the (transfer-encoded) body in bytes."""
        return self.end - self.start

    def body(self, limit: int | None = None) -> bytes:
        """The transfer-encoded body, or its first `limit` bytes: a copy, so ask for no more."""
        end = self.end if limit is None else min(self.end, self.start + limit)
        return self.data[self.start : end]

    def count(self, sub: bytes) -> int:
        """How often `sub` occurs in the body, without copying it."""
        return self.data.count(sub, self.start, self.end)

    @property
    def transfer_encoding(self) -> str:
        """The Content-Transfer-Encoding, lower-cased ("" when absent)."""
        return (self.header("content-transfer-encoding") or "").strip().lower()

    def decoded(self, limit: int | None = None) -> tuple[bytes, str | None]:
        """The body (its first `limit` bytes) with its Content-Transfer-Encoding undone, and a
        defect or None."""
        body = self.body(limit)
        cte = self.transfer_encoding
        if cte == "base64":
            return _base64(body)
        if cte == "quoted-printable":
            return binascii.a2b_qp(body), None
        return body, None


@dataclass(slots=True)
class Budget:
    """Work left for one message, shared by every entity, and the defects found so far."""

    parts: int = MAX_PARTS
    head_bytes: int = MAX_HEAD_BYTES_TOTAL
    delimiter_candidates: int = MAX_DELIMITER_CANDIDATES
    text_parts: int = MAX_TEXT_PARTS_READ
    html_chars: int = MAX_HTML_CHARS_READ
    defects: list[str] = field(default_factory=list)

    def defect(self, text: str) -> None:
        """Record one defect, once."""
        if text not in self.defects and len(self.defects) < 50:
            self.defects.append(text)


def normalise(raw: bytes) -> bytes:
    """LF line endings (from CRLF or old-Mac CR), no byte-order mark, no mbox `From ` line."""
    data = raw
    if b"\r" in data:
        # CRLF first, so that a CRLF is one line break; then stray or old-Mac CRs, with
        # `translate` (one C loop) rather than `replace` (one search per CR, of millions).
        data = data.replace(b"\r\n", b"\n")
        if b"\r" in data:
            data = data.translate(_CR_TO_LF)
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    if data.startswith(b"From ", start):
        newline = data.find(b"\n", start)
        start = newline + 1 if newline != -1 else len(data)
    # One copy at most: a message is up to tens of megabytes.
    return data[start:] if start else data


def _repair(value: str) -> str:
    """A header value decoded with surrogateescape: legacy 8-bit bytes re-read as cp1252."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("cp1252", "replace")
    return value


def split_headers(
    data: bytes, budget: Budget, start: int = 0, end: int | None = None
) -> tuple[dict[str, str], int]:
    """Split the entity `data[start:end]` into its header fields and its body.

    Returns the first value of each header (name lower-cased, value unfolded, 8-bit bytes read as
    UTF-8 or else cp1252) and where the body starts (it runs to `end`). Like the stdlib parser,
    the header block ends at the first empty line or at the first line that is neither a header
    nor a continuation; the latter is recorded as a defect.
    """
    end = len(data) if end is None else end
    if data.startswith(b"\n", start, end):
        return {}, start + 1
    blank = data.find(b"\n\n", start, end)
    head_end, body_start = (end, end) if blank == -1 else (blank, blank + 2)
    allowed = max(MIN_HEAD_BYTES, min(MAX_HEAD_BYTES, budget.head_bytes))
    if head_end - start > allowed:
        budget.defect("header block too long; truncated")
        cut = data.rfind(b"\n", start, start + allowed)
        head_end = cut if cut > start else start + allowed
    budget.head_bytes -= head_end - start
    head = data[start:head_end]
    try:
        text, legacy = head.decode("utf-8"), False
    except UnicodeDecodeError:
        text, legacy = head.decode("utf-8", "surrogateescape"), True
    pairs = _FIELDS.findall(text)
    continuations = text.count("\n ") + text.count("\n\t")
    if (
        len(pairs) == text.count("\n") + 1 - continuations
        and len(pairs) <= MAX_HEADERS
        and text[:1] not in (" ", "\t")
    ):
        # The common case: every line is a field or a continuation, found in one C-level pass.
        return _first_values(pairs, legacy), body_start
    fields, body_offset = _split_headers_slowly(text, legacy, budget)
    if body_offset is None:
        return fields, body_start
    # The body starts at the first line that is not a header; what follows it (the blank line
    # and the rest) is body too.
    return fields, start + body_offset


def _first_values(pairs: list[tuple[str, str]], legacy: bool) -> dict[str, str]:
    """The first value of each (name, raw value) pair, names lower-cased, values unfolded."""
    fields: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name = raw_name.lower()
        if name not in fields:
            # Unfolding: the line break goes, the whitespace that began the next line stays.
            value = raw_value.replace("\n", "") if "\n" in raw_value else raw_value
            fields[name] = (_repair(value) if legacy else value).strip()
    return fields


def _split_headers_slowly(
    text: str, legacy: bool, budget: Budget
) -> tuple[dict[str, str], int | None]:
    """Field by field, for header blocks with stray lines, too many fields or no separator.

    Returns the fields and, when a line that is no header ends the block early, its byte offset
    in the block (None otherwise).
    """
    pairs: list[tuple[str, str]] = []
    position = 0
    size = len(text)
    body_offset = None
    misplaced = 0
    while position < size:
        match = _FIELD.match(text, position)
        if match is None:
            if text[position] in " \t" or text.startswith("From ", position):
                budget.defect("misplaced continuation or mbox From line in headers")
                misplaced += 1
                if misplaced > MAX_HEADERS:
                    break  # junk, not headers: each line costs a loop turn
                newline = text.find("\n", position)
                position = size if newline == -1 else newline + 1
                continue
            budget.defect("missing blank line between headers and body")
            body_offset = len(text[:position].encode("utf-8", "surrogateescape"))
            break
        if len(pairs) >= MAX_HEADERS:
            budget.defect("too many headers; the rest were dropped")
            break
        pairs.append((match.group(1), match.group(2)))
        position = match.end() + 1
    return _first_values(pairs, legacy), body_offset


def params(value: str) -> dict[str, str]:
    """The parameters of a Content-Type or Content-Disposition value, RFC 2231 joined and decoded.

    Keys are lower-cased; a malformed value yields whatever parameters could be read.
    """
    if ";" not in value:
        return {}
    found: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[str, bool]]] = {}
    for match in _PARAM.finditer(value):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"'):
            raw = raw[1:-1] if len(raw) > 1 and raw.endswith('"') else raw[1:]
            if "\\" in raw:
                raw = _QUOTED_PAIR.sub(r"\1", raw)
        if "*" not in key:
            found.setdefault(key, raw)
            continue
        base, _, section = key.partition("*")
        encoded = section.endswith("*") or section == ""
        number = section.rstrip("*")
        extended.setdefault(base, {})[int(number) if number.isdigit() else 0] = (raw, encoded)
    for base, sections in extended.items():
        found[base] = _join_rfc2231(sections)
    return found


def _join_rfc2231(sections: dict[int, tuple[str, bool]]) -> str:
    """Join RFC 2231 sections `name*0*=utf-8''a%20b; name*1*=c` into decoded text."""
    charset = ""
    pieces: list[str] = []
    for number in sorted(sections)[:100]:
        raw, encoded = sections[number]
        if encoded and number == 0 and raw.count("'") >= 2:
            charset, _language, raw = raw.split("'", 2)
        pieces.append(raw if not encoded else "\x00" + raw)
    data = b"".join(
        urllib.parse.unquote_to_bytes(piece[1:]) if piece.startswith("\x00") else piece.encode()
        for piece in pieces
    )
    return charsets.decode(data, charset or "utf-8")[0]


def _content_type(value: str | None, default: str) -> tuple[str, dict[str, str]]:
    """The lower-cased `type/subtype` (the default when missing or malformed) and parameters."""
    if value is None:
        return default, {}
    kind = value.partition(";")[0].strip().lower()
    maintype, slash, subtype = kind.partition("/")
    if not slash or not maintype or not subtype or " " in kind:
        return "text/plain", params(value)
    return kind, params(value)


def parse_entity(
    data: bytes,
    budget: Budget,
    depth: int = 0,
    default: str = "text/plain",
    start: int = 0,
    end: int | None = None,
) -> Entity:
    """Parse the entity `data[start:end]` and, for a multipart, its children (within the
    budget)."""
    end = len(data) if end is None else end
    headers, body_start = split_headers(data, budget, start, end)
    entity = Entity(headers, data, body_start, end)
    entity.content_type, entity.params = _content_type(entity.header("content-type"), default)
    if entity.maintype == "multipart":
        _split_children(entity, budget, depth)
    return entity


def _split_children(entity: Entity, budget: Budget, depth: int) -> None:
    """Fill `entity.children`, or mark a multipart whose parts cannot be found `as_text`."""
    if depth >= MAX_DEPTH:
        budget.defect("multipart nested too deeply; inner parts ignored")
        return
    boundary = entity.params.get("boundary", "").strip()
    if not boundary:
        guess = _GUESS_BOUNDARY.search(
            entity.data, entity.start, min(entity.end, entity.start + GUESS_BOUNDARY_BYTES)
        )
        budget.defect("multipart without boundary")
        if guess is None:
            entity.as_text = True
            return
        boundary = guess.group(1).decode("ascii", "replace")
    pieces, closed = split_multipart(
        entity.data, boundary.encode("utf-8", "replace"), budget, entity.start, entity.end
    )
    if not pieces:
        budget.defect("multipart boundary not found in body")
        entity.as_text = True
        return
    if not closed:
        budget.defect("multipart without closing boundary (truncated?)")
    default = "message/rfc822" if entity.content_type == "multipart/digest" else "text/plain"
    for begin, end in pieces:
        if budget.parts <= 0:
            budget.defect("too many MIME parts; the rest were ignored")
            break
        budget.parts -= 1
        entity.children.append(parse_entity(entity.data, budget, depth + 1, default, begin, end))


def attached_message(entity: Entity, budget: Budget, depth: int) -> Entity:
    """The message attached as `entity` (message/rfc822), parsed; when it is transfer-encoded,
    only its first `MAX_ATTACHED_BYTES` are decoded (else it is read in place, without a copy)."""
    if entity.transfer_encoding not in ("base64", "quoted-printable"):
        return parse_entity(entity.data, budget, depth, start=entity.start, end=entity.end)
    if entity.size > MAX_ATTACHED_BYTES:
        budget.defect("attached message too large; only its start is read")
    payload, defect = entity.decoded(MAX_ATTACHED_BYTES)
    if defect:
        budget.defect(defect)
    return parse_entity(payload, budget, depth)


def split_multipart(
    data: bytes, boundary: bytes, budget: Budget, start: int = 0, end: int | None = None
) -> tuple[list[tuple[int, int]], bool]:
    """Where the parts between `--boundary` lines of the body `data[start:end]` lie, as
    (start, end) offsets in `data`, and whether the closing `--boundary--` was seen."""
    end = len(data) if end is None else end
    delimiter = b"--" + boundary
    size = len(delimiter)
    starts: list[tuple[int, int]] = []  # (start of delimiter line, start of the next line)
    closed = False
    if data.startswith(delimiter, start, end):
        position = start
    else:
        found = data.find(b"\n" + delimiter, start, end)
        position = found + 1 if found != -1 else -1
    while position != -1 and len(starts) <= MAX_PARTS:
        eol = data.find(b"\n", position + size, end)
        if eol == -1:
            eol = end
        tail = _DELIMITER_TAIL.match(data, position + size, eol)
        if tail is not None:
            starts.append((position, eol + 1))
            if tail.group(1):
                closed = True
                break
        else:
            budget.delimiter_candidates -= 1
            if budget.delimiter_candidates < 0:
                budget.defect("too many lines that look like MIME boundaries; the rest ignored")
                break
        found = data.find(b"\n" + delimiter, eol, end)
        position = found + 1 if found != -1 else -1
    pieces = [(begin, max(begin, stop - 1)) for (_, begin), (stop, _) in itertools.pairwise(starts)]
    if starts and not closed:
        pieces.append((min(starts[-1][1], end), end))
    return pieces, closed


def _base64(body: bytes) -> tuple[bytes, str | None]:
    """Decode base64 leniently: junk characters are skipped and broken padding is repaired."""
    try:
        return binascii.a2b_base64(body), None
    except binascii.Error:
        pass  # bad padding or a truncated quantum: repaired below
    clean = _NOT_BASE64.sub(b"", body.partition(b"=")[0])
    clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    try:
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4)), "bad base64 repaired"
    except binascii.Error:
        return b"", "undecodable base64"
