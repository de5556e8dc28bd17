"""Did the sender in From really send this message? Read from our own server's verdict.

triage does not verify SPF, DKIM or DMARC itself: the receiving mail server does, and records
what it found in an `Authentication-Results` header (RFC 8601). Anyone can write such a header
into a message, so only those whose authserv-id is one of `replies.trusted_authserv_ids` (our own
servers) are read. The verdict is the topmost of them: our server adds its header above everything
the message arrived with, so a forged one with our id sits below it. And since a server that strips
nothing leaves such a forgery in place, any trusted header that reports a DMARC result other than
pass for the From domain vetoes the verdict; so does anything that keeps us from reading all of
them (too many, cut, unreadable): the veto fails closed.

A From address counts as authenticated when that header says:
- `dmarc=pass` with `header.from` equal to the From domain; or, without a DMARC result,
- `spf=pass` for an envelope domain aligned with the From domain, or
- `dkim=pass` for a signing domain (`header.d`, else the domain of `header.i`) aligned with it.
A `dmarc` result other than pass is final: it means neither SPF nor DKIM aligned.

Aligned means the same organisational domain (DMARC's relaxed mode): the same registrable domain
under the public suffix list, so `mail.acme.example` aligns with `acme.example` but
`attacker.eu.org` does not align with `eu.org`.

Exchange Online writes its header without an authserv-id; the trusted id `exchange-online` makes
an id-less topmost header count as Microsoft's (see docs/security.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import authres

from triage.core.models import InboundMessage

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

EXCHANGE_ONLINE = "exchange-online"
# authres parses with recursion and in quadratic time (90 ms for 4 KB): a real header is a few
# hundred characters, so a longer trusted one is not believed at all, and no more than a few
# trusted ones are read (one per milter of our own server).
MAX_PARSED_CHARS = 1500
MAX_PARSED_RESULTS = 64  # `=` signs in one header: a real one has a few dozen at most
MAX_TRUSTED_FIELDS = 4
# `(comment) mx.example.com 1; …`: comments may precede the id (RFC 8601 2.2 allows CFWS).
_AUTHSERV_ID = re.compile(r"\s*(?:\([^()]*\)\s*)*([^\s;()]+)")


@dataclass(frozen=True, slots=True)
class SenderAuth:
    """Whether the From address was authenticated, by which method, and why (for the record)."""

    verified: bool
    method: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Result:
    method: str
    result: str
    props: dict[str, str]


@cache
def _suffixes() -> PublicSuffixList:
    # Loaded once per process (0.1 s), and only by a process that checks a sender.
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def organisational_domain(domain: str) -> str:
    """`mail.acme.co.uk` → `acme.co.uk`; "" for a public suffix itself (`co.uk`, `eu.org`)."""
    domain = domain.strip().strip(".").lower()
    if not domain:
        return ""
    return str(_suffixes().privatesuffix(domain) or "")


def aligned(a: str, b: str) -> bool:
    """DMARC relaxed alignment: both domains lie under one registrable (organisational) domain."""
    org = organisational_domain(a)
    return bool(org) and org == organisational_domain(b)


def _domain_of(value: str) -> str:
    """`user@acme.example` or `@acme.example` or `acme.example` → `acme.example`."""
    return value.strip().rpartition("@")[2].strip().strip("<>").strip(".").lower()


def _authserv_id(value: str) -> str:
    """The authserv-id a header value starts with (`mx.example.com 1; …` → `mx.example.com`);
    `exchange-online` for a value that starts with a result (Exchange Online writes no id)."""
    head = value.split(";", 1)[0]
    if "=" in head:
        return EXCHANGE_ONLINE
    found = _AUTHSERV_ID.match(head)
    return found.group(1).lower() if found else ""


def _parse(value: str, authserv_id: str) -> list[_Result] | None:
    """The results of one header value, or None when it cannot be read (or is too long to)."""
    if len(value) > MAX_PARSED_CHARS or value.count("=") > MAX_PARSED_RESULTS:
        return None
    if authserv_id == EXCHANGE_ONLINE and "=" in value.split(";", 1)[0]:
        value = f"{EXCHANGE_ONLINE}; {value}"
    try:
        header = authres.AuthenticationResultsHeader.parse_value(value)
    except (authres.AuthResError, RecursionError, ValueError, IndexError, AttributeError):
        return None
    results = []
    for each in header.results:
        props = {
            f"{p.type}.{p.name}".lower(): str(p.value or "")
            for p in getattr(each, "properties", ())
            if getattr(p, "type", None) and getattr(p, "name", None)
        }
        results.append(_Result(str(each.method).lower(), str(each.result).lower(), props))
    return results


def _trusted_fields(msg: InboundMessage, trusted: frozenset[str]) -> list[tuple[str, str]]:
    """(authserv-id, value) of the trusted headers, topmost first (unparsed: parsing costs)."""
    return [
        (authserv_id, value)
        for value in msg.auth_results
        if (authserv_id := _authserv_id(value)) in trusted
    ]


def authenticate(msg: InboundMessage, trusted_ids: Iterable[str]) -> SenderAuth:
    """Whether `msg`'s From address was authenticated by one of our own servers. Never raises:
    anything unexpected in a header a stranger may have written means "not authenticated"."""
    trusted = frozenset(t.strip().lower() for t in trusted_ids if t.strip())
    try:
        return _authenticate(msg, trusted)
    except Exception as exc:  # noqa: BLE001 - a hostile header must not stop the message
        return SenderAuth(False, reason=f"Authentication-Results unreadable ({type(exc).__name__})")


def _authenticate(msg: InboundMessage, trusted: frozenset[str]) -> SenderAuth:
    refusal = _unverifiable(msg, trusted)
    if refusal is not None:
        return SenderAuth(False, reason=refusal)
    fields = _trusted_fields(msg, trusted)
    if not fields:
        return SenderAuth(False, reason="no Authentication-Results from a trusted server")
    if len(fields) > MAX_TRUSTED_FIELDS or msg.auth_results_cut:
        return SenderAuth(False, reason="too many Authentication-Results to read them all")
    authserv_id, first = fields[0]
    results = _parse(first, authserv_id)
    if results is None:
        return SenderAuth(False, reason=f"unreadable Authentication-Results by {authserv_id}")
    assert msg.from_ is not None
    domain = msg.from_.domain.strip(".")
    verdict = _evaluate(results, domain, f"by {authserv_id}")
    if not verdict.verified:
        return verdict
    veto = _dmarc_veto(fields[1:], domain)
    return SenderAuth(False, reason=veto) if veto else verdict


def _unverifiable(msg: InboundMessage, trusted: frozenset[str]) -> str | None:
    """Why no header could authenticate `msg`'s From, or None."""
    if not trusted:
        return "no trusted authserv-id is configured"
    if msg.from_ is None or not msg.from_.domain:
        return "the message has no From address"
    if msg.from_count != 1:
        return f"the message has {msg.from_count} From fields"
    if not msg.from_single:
        return "the From field names several mailboxes or a group"
    return None


def _dmarc_veto(fields: list[tuple[str, str]], domain: str) -> str | None:
    """A trusted header further down that says DMARC did not pass, or that cannot be read:
    then one of the trusted headers is a forgery, and we cannot tell which."""
    for authserv_id, value in fields:
        results = _parse(value, authserv_id)
        if results is None:
            return f"conflicting results: an unreadable Authentication-Results by {authserv_id}"
        for r in results:
            if r.method == "dmarc" and r.result != "pass":
                return f"conflicting results: dmarc={r.result} for {domain} by {authserv_id}"
    return None


def _evaluate(results: list[_Result], domain: str, by: str) -> SenderAuth:
    """DMARC first (final when present), else an aligned SPF or DKIM pass."""
    dmarc = [r for r in results if r.method == "dmarc"]
    if dmarc:
        for r in dmarc:
            checked = _domain_of(r.props.get("header.from", ""))
            if r.result == "pass" and checked == domain:
                return SenderAuth(True, "dmarc", f"dmarc=pass for {domain} {by}")
        first = dmarc[0]
        checked = _domain_of(first.props.get("header.from", "")) or "an unnamed domain"
        if checked != domain:
            return SenderAuth(
                False, reason=f"dmarc={first.result} is for {checked}, not the From domain {domain}"
            )
        return SenderAuth(False, reason=f"dmarc={first.result} for {domain} {by}")
    for r in results:
        if r.result != "pass" or r.method not in ("spf", "dkim"):
            continue
        if r.method == "spf":
            source = _domain_of(r.props.get("smtp.mailfrom", ""))
        else:
            source = _domain_of(r.props.get("header.d", "") or r.props.get("header.i", ""))
        if aligned(source, domain):
            return SenderAuth(True, r.method, f"{r.method}=pass for {source} ~ {domain} {by}")
    return SenderAuth(False, reason=f"no pass aligned with {domain} {by}")
