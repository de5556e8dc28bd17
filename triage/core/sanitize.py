"""Text a stranger wrote, made safe to show to staff or to send to a prospect.

Two small, pure helpers used wherever a value from a message leaves triage (a reply, the digest,
a lead export): `strip_invisible` removes the characters that make text display other than it
reads (bidirectional overrides, zero-width joiners), and `is_addr_spec` accepts only a plain
`local@domain` with nothing a URL or a header could be smuggled in with.
"""

from __future__ import annotations

import re

MAX_SINGLE_LINE = 200  # characters kept of a one-line value (name, company, subject)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")

# Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), marks
# (U+200E, U+200F, U+061C), zero-width characters (U+200B-U+200D, U+2060, U+FEFF) and the
# soft hyphen: they reorder or hide text ("Trojan Source", CVE-2021-42574) without being seen.
_INVISIBLE = re.compile(
    "[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)

# RFC 5321 4.1.2 Mailbox, restricted to what a reply may be sent to: a dot-atom local part
# (no quoted strings, no `?`, `&`, `%`, `#` — mailto and URL syntax) and a dotted
# host name of letters, digits and hyphens. Length limits of RFC 5321 4.5.3.1.
_ATEXT = r"[A-Za-z0-9!$'*+/=\-^_`{|}~]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_SPEC = re.compile(rf"{_DOT_ATOM}@{_LABEL}(?:\.{_LABEL})+")


def strip_invisible(text: str) -> str:
    """`text` without bidi controls, zero-width characters and soft hyphens."""
    return _INVISIBLE.sub("", text)


def one_line(value: str, limit: int = MAX_SINGLE_LINE) -> str:
    """`value` with every control character (CR, LF, TAB …) replaced by a space, trimmed.

    Values that come from a message may end up in a header; a line break there could forge one.
    """
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def shown(value: str, limit: int = MAX_SINGLE_LINE) -> str:
    """A value a stranger wrote as a reply or a person shows it: one line, nothing invisible."""
    return one_line(strip_invisible(value), limit)


def is_addr_spec(email: str) -> bool:
    """True when `email` is a plain `local@host.domain` a reply or a mailto link may use."""
    local, _, domain = email.rpartition("@")
    return (
        len(email) <= 254
        and 0 < len(local) <= 64
        and len(domain) <= 253
        and _ADDR_SPEC.fullmatch(email) is not None
    )
