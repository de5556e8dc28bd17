"""A fast, bounded, tolerant MIME reader: raw bytes to a tree of entities with raw header values.

The stdlib feed parser walks every body line in Python; here header blocks and multipart bodies
are split with `bytes.find`, which keeps parsing linear and cheap. Every loop is bounded (header
bytes and count, part count, nesting depth), so no input can make a parse slow. What was wrong is
recorded as short defect strings instead of raised.
"""

from __future__ import annotations

import binascii
import itertools
import re
import urllib.parse
from dataclasses import dataclass, field

from triage.parsing import charsets

MAX_HEAD_BYTES = 256 * 1024  # a header block beyond this is spam or an attack; the rest is dropped
MAX_HEADERS = 500
MAX_PARTS = 200
MAX_DEPTH = 20

# One header field with its continuation lines; the name is any printable ASCII but the colon.
_FIELD_PATTERN = r"([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)"
_FIELD = re.compile(_FIELD_PATTERN)
_FIELDS = re.compile("^" + _FIELD_PATTERN, re.MULTILINE)  # every field of a block at once
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")
_GUESS_BOUNDARY = re.compile(rb"^--([^\s]{1,100}?)(?:--)?[ \t]*$", re.MULTILINE)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


@dataclass(slots=True)
class Entity:
    """One MIME entity: its headers (lower-cased name → first raw unfolded value) and content."""

    headers: dict[str, str]
    body: bytes
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

    def decoded(self, limit: int | None = None) -> tuple[bytes, str | None]:
        """The body (its first `limit` bytes) with its Content-Transfer-Encoding undone, and a
        defect or None."""
        body = self.body if limit is None else self.body[:limit]
        cte = (self.header("content-transfer-encoding") or "").strip().lower()
        if cte == "base64":
            return _base64(body)
        if cte == "quoted-printable":
            return binascii.a2b_qp(body), None
        return body, None


@dataclass(slots=True)
class Budget:
    """Work left for one message, shared by every entity, and the defects found so far."""

    parts: int = MAX_PARTS
    defects: list[str] = field(default_factory=list)

    def defect(self, text: str) -> None:
        """Record one defect, once."""
        if text not in self.defects and len(self.defects) < 50:
            self.defects.append(text)


def normalise(raw: bytes) -> bytes:
    """LF line endings (from CRLF or old-Mac CR), no byte-order mark, no mbox `From ` line."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\r" in raw:
        # CRLF first, so that a CRLF is one line break; then stray or old-Mac CRs.
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if raw.startswith(b"From "):
        newline = raw.find(b"\n")
        raw = raw[newline + 1 :] if newline != -1 else b""
    return raw


def _repair(value: str) -> str:
    """A header value decoded with surrogateescape: legacy 8-bit bytes re-read as cp1252."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("cp1252", "replace")
    return value


def split_headers(data: bytes, budget: Budget) -> tuple[dict[str, str], bytes]:
    """Split an entity into its header fields and its body.

    Returns the first value of each header (name lower-cased, value unfolded, 8-bit bytes read as
    UTF-8 or else cp1252) and the body bytes. Like the stdlib parser, the header block ends at
    the first empty line or at the first line that is neither a header nor a continuation; the
    latter is recorded as a defect.
    """
    if data.startswith(b"\n"):
        return {}, data[1:]
    end = data.find(b"\n\n")
    head, body = (data, b"") if end == -1 else (data[:end], data[end + 2 :])
    if len(head) > MAX_HEAD_BYTES:
        budget.defect("header block too long; truncated")
        cut = head.rfind(b"\n", 0, MAX_HEAD_BYTES)
        head = head[: cut if cut > 0 else MAX_HEAD_BYTES]
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
        return _first_values(pairs, legacy), body
    return _split_headers_slowly(text, head, body, end != -1, legacy, budget)


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
    text: str, head: bytes, body: bytes, separated: bool, legacy: bool, budget: Budget
) -> tuple[dict[str, str], bytes]:
    """Field by field, for header blocks with stray lines, too many fields or no separator."""
    pairs: list[tuple[str, str]] = []
    position = 0
    size = len(text)
    while position < size:
        match = _FIELD.match(text, position)
        if match is None:
            if text[position] in " \t" or text.startswith("From ", position):
                budget.defect("misplaced continuation or mbox From line in headers")
                newline = text.find("\n", position)
                position = size if newline == -1 else newline + 1
                continue
            budget.defect("missing blank line between headers and body")
            offset = len(text[:position].encode("utf-8", "surrogateescape"))
            rest = head[offset:]
            body = rest + b"\n\n" + body if separated else rest
            break
        if len(pairs) >= MAX_HEADERS:
            budget.defect("too many headers; the rest were dropped")
            break
        pairs.append((match.group(1), match.group(2)))
        position = match.end() + 1
    return _first_values(pairs, legacy), body


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
    data: bytes, budget: Budget, depth: int = 0, default: str = "text/plain"
) -> Entity:
    """Parse one entity and, for a multipart, its children (within the budget)."""
    headers, body = split_headers(data, budget)
    entity = Entity(headers, body)
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
        guess = _GUESS_BOUNDARY.search(entity.body, 0, 65_536)
        budget.defect("multipart without boundary")
        if guess is None:
            entity.as_text = True
            return
        boundary = guess.group(1).decode("ascii", "replace")
    pieces, closed = split_multipart(entity.body, boundary.encode("utf-8", "replace"))
    if not pieces:
        budget.defect("multipart boundary not found in body")
        entity.as_text = True
        return
    if not closed:
        budget.defect("multipart without closing boundary (truncated?)")
    default = "message/rfc822" if entity.content_type == "multipart/digest" else "text/plain"
    for piece in pieces:
        if budget.parts <= 0:
            budget.defect("too many MIME parts; the rest were ignored")
            break
        budget.parts -= 1
        entity.children.append(parse_entity(piece, budget, depth + 1, default))


def split_multipart(body: bytes, boundary: bytes) -> tuple[list[bytes], bool]:
    """The parts between `--boundary` lines, and whether the closing `--boundary--` was seen."""
    delimiter = b"--" + boundary
    size = len(delimiter)
    starts: list[tuple[int, int]] = []  # (start of delimiter line, start of the next line)
    closed = False
    if body.startswith(delimiter):
        position = 0
    else:
        found = body.find(b"\n" + delimiter)
        position = found + 1 if found != -1 else -1
    while position != -1 and len(starts) <= MAX_PARTS:
        eol = body.find(b"\n", position + size)
        if eol == -1:
            eol = len(body)
        tail = body[position + size : eol]
        is_close = tail.startswith(b"--")
        if not (tail[2:] if is_close else tail).strip():
            starts.append((position, eol + 1))
            if is_close:
                closed = True
                break
        found = body.find(b"\n" + delimiter, eol)
        position = found + 1 if found != -1 else -1
    pieces = []
    for (_, begin), (end, _) in itertools.pairwise(starts):
        pieces.append(body[begin : max(begin, end - 1)])
    if starts and not closed:
        pieces.append(body[starts[-1][1] :])
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
