"""The header fields whose every occurrence matters, not only the first: sender authentication.

`mime.split_headers` keeps the first value of each field, which is what the etiquette rules read.
Authentication needs more: every `Authentication-Results` field in order (our receiving server
adds its own on top; a sender may have put forged ones further down) and the number of `From`
fields (a message with two is not DMARC-verifiable, and we must not pick the unverified one).
"""

from __future__ import annotations

import re

from triage.parsing.mime import MAX_HEAD_BYTES

MAX_AUTH_RESULTS = 20  # fields kept; a real message has one per receiving hop
MAX_AUTH_RESULT_CHARS = 4096  # per field: a real one is a few hundred characters

# Matched against the lower-cased header block (ASCII-only lowering keeps every offset).
_AUTH_RESULTS = re.compile(
    rb"^authentication-results[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.MULTILINE
)
# A From field after the first line; `^` with MULTILINE would be tried at every byte, a literal
# start is found by a fast search.
_FROM = re.compile(rb"\nfrom[ \t]*:")
_FIRST_FROM = re.compile(rb"from[ \t]*:")


def sender_fields(data: bytes) -> tuple[tuple[str, ...], bool, int]:
    """The unfolded `Authentication-Results` values (topmost first), whether any were left out
    or cut short, and the count of `From` fields in the top-level header block of normalised
    (LF) message bytes."""
    # Only the header block is read, and no more of it than the MIME reader reads.
    end = data.find(b"\n\n", 0, MAX_HEAD_BYTES)
    head = data[: end if end != -1 else MAX_HEAD_BYTES]
    lower = head.lower()
    values: list[str] = []
    cut = False
    if b"authentication-results" in lower:  # most mail of a backlog has none: skip the scan
        for match in _AUTH_RESULTS.finditer(lower):
            if len(values) >= MAX_AUTH_RESULTS:
                cut = True
                break
            start, stop = match.span(1)
            raw = head[start : min(stop, start + MAX_AUTH_RESULT_CHARS * 8)]
            value = raw.decode("utf-8", "replace")[: MAX_AUTH_RESULT_CHARS * 2]
            value = value.replace("\n", "").strip()
            cut = cut or len(value) > MAX_AUTH_RESULT_CHARS
            values.append(value[:MAX_AUTH_RESULT_CHARS])
    froms = len(_FROM.findall(lower)) + (_FIRST_FROM.match(lower) is not None)
    return tuple(values), cut, froms
