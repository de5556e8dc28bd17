"""The plain values that flow through the pipeline.

Each step takes the value the previous step returned and returns a new one; none of these objects
does I/O. They are frozen so that a value recorded in the store is the value that was acted on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

Label = Literal["sales", "marketing", "other"]
LABELS: tuple[Label, ...] = ("sales", "marketing", "other")

Decision = Literal["sales", "marketing", "other", "review"]
DECISIONS: tuple[Decision, ...] = ("sales", "marketing", "other", "review")

# Shared read-only empty defaults. Fields use a factory returning them because dataclasses refuse
# an unhashable default such as a mappingproxy (ValueError at import time).
_EMPTY: Mapping[str, str] = MappingProxyType({})
_NO_PROBABILITIES: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox from an address header: display name and addr-spec (lower-cased domain)."""

    name: str
    email: str

    @property
    def local_part(self) -> str:
        """The part before the last `@` (the whole address when there is none)."""
        return self.email.rpartition("@")[0] or self.email

    @property
    def domain(self) -> str:
        """The part after the last `@`, lower-cased; empty when there is none."""
        return self.email.rpartition("@")[2].lower() if "@" in self.email else ""

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass(frozen=True, slots=True)
class Attachment:
    """A non-text part of a message, described but not kept."""

    filename: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class Contact:
    """Who the prospect is, as far as the message tells: for leads and reply greetings."""

    name: str = ""
    email: str = ""
    company: str = ""
    phone: str = ""
    website: str = ""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One parsed inbound message. Built by `triage.parsing.parse`, which never raises.

    `headers` holds the first value of every header, keyed by lower-cased name, decoded to text;
    the etiquette rules read it. `defects` lists what was wrong with the message while parsing.
    """

    message_id: str
    subject: str = ""
    from_: Address | None = None
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    return_path: str | None = None
    date: datetime | None = None
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    text: str = ""
    new_text: str = ""
    text_from_html: bool = False
    language: str = ""
    size: int = 0
    content_type: str = "text/plain"
    attachments: tuple[Attachment, ...] = ()
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    contact: Contact = field(default_factory=Contact)
    defects: tuple[str, ...] = ()
    message_id_synthesised: bool = False
    # Every Authentication-Results value, topmost first (RFC 8601: the receiving server adds its
    # own on top), and how many From fields the header block had (DMARC needs exactly one).
    auth_results: tuple[str, ...] = ()
    auth_results_cut: bool = False  # more of them than were kept, or one cut short
    from_count: int = 1
    # False when From names several mailboxes or a group: no single sender to answer.
    from_single: bool = True

    def header(self, name: str) -> str:
        """The first value of header `name` (any case), or "" when absent."""
        return self.headers.get(name.lower(), "")

    def has_header(self, name: str) -> bool:
        """True when header `name` is present, even with an empty value."""
        return name.lower() in self.headers


@dataclass(frozen=True, slots=True)
class Classification:
    """What the classifier (or a header rule before it) decided for one message.

    `decision` is the label when its probability clears the label's threshold, else "review".
    `rule` names the header rule that decided without the model, if one did.
    """

    label: Label
    confidence: float
    decision: Decision
    probabilities: Mapping[str, float] = field(default_factory=lambda: _NO_PROBABILITIES)
    explanation: tuple[str, ...] = ()
    rule: str | None = None
    model_version: str = ""

    @property
    def review(self) -> bool:
        """True when a person must decide; such a message is never auto-answered."""
        return self.decision == "review"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The etiquette verdict (RFC 3834 / RFC 5230): may we reply, to whom, and if not why.

    `verified` says the From address was authenticated by our own receiving server (DMARC, or
    SPF/DKIM aligned with the From domain); `reflect` says a reply may repeat what the sender
    wrote (name, company, subject) — only true for a verified sender answered at a verified
    address. `notes` records routing choices that did not stop the reply (an ignored Reply-To).
    """

    may_reply: bool
    reasons: tuple[str, ...] = ()
    destination: Address | None = None
    verified: bool = False
    reflect: bool = False
    notes: tuple[str, ...] = ()


class LeadKind(StrEnum):
    """How urgent a lead is for the sales staff."""

    HOT = "hot"
    NURTURE = "nurture"


@dataclass(frozen=True, slots=True)
class Disposition:
    """What to do with one message: the outcome of the pure decision steps."""

    decision: Decision
    reply_template: str | None = None
    lead_kind: LeadKind | None = None
    keyword: str = ""
    folder: str | None = None
    reasons: tuple[str, ...] = ()
    # How a reply is routed (a Reply-To passed over, fixed text only): on record, but not a
    # reason against replying.
    notes: tuple[str, ...] = ()
