"""The hostile corpus (tests/hostile): messages an attacker sends to make triage misbehave.

`tests/hostile/manifest.csv` drives every test here: one row per file with the attack, whether our
own server authenticated the From address, and what triage may do (`expect`):

- `reply`: an honest, authenticated inquiry; exactly one reply, to From (or a same-domain
  Reply-To);
- `once`: one of several messages from one canonical sender (+tag, case, Gmail dots); the group
  gets exactly one reply;
- `visitor`: a notification of an authenticated form relay; a reply may go to the visitor's
  single address, with fixed text only (the visitor's address and fields are anyone's input);
- `from`: a reply may go to the From address only: always when From is authenticated, with
  `unauthenticated = "fixed"` also otherwise (fixed text only); never to Reply-To, Cc, body fields;
- `none`: no reply at all.

Inbound mail goes straight into the mailbox over LMTP (as the receiving server hands it to
Dovecot), not through the harness Postfix: Postfix treats loopback clients as local submitters and
rewrites their address headers, which would repair many of the attacks before triage sees them.
Replies go out through a harness whose Postfix accepts every domain and delivers every address
outside example.test to one `catchall` mailbox, logging the original recipient (`orig_to`), so a
reply to bob@third.example is caught, not refused. Three records of what was sent are compared:
the store's `replies` table (every reply triage recorded, whatever its state), Postfix's log
(every envelope recipient it received or refused) and the mailboxes of every harness user.
"""

from __future__ import annotations

import csv
import email
import email.errors
import email.message
import email.parser
import email.policy
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from functools import cached_property
from pathlib import Path

import pytest

from devtools.mailharness import DEFAULT_USERS, HarnessConfig, MailHarness, unavailable_reason
from tests.hostile.make_corpus import build as build_generated
from tests.mailtools import ROOT, config_for, db, triage
from tests.test_model_cli import KEYS

HOSTILE = Path(__file__).resolve().parent / "hostile"
MANIFEST = HOSTILE / "manifest.csv"
MAX_FILE_BYTES = 300 * 1024
EXPECTATIONS = frozenset({"reply", "once", "visitor", "from", "none"})

HELLO = "hello@example.test"
DOMAIN = "example.test"
CATCHALL = "catchall"
FORM_RELAY = "forms@webforms.example"
MAX_PER_DOMAIN = 3
DOTLESS = frozenset({"gmail.com", "googlemail.com"})
# Never the From address of any corpus message: a reply to one of them is always a reflection.
VICTIMS = frozenset({"bob@example.test", "carol@example.test"})
VICTIM_DOMAINS = frozenset({"third.example"})
# Forged From addresses only: answered (with fixed text) at most in "fixed" mode.
FORGED_DOMAINS = frozenset({"victim.example"})

# Generous bounds for a whole-corpus run (the corpus is ~2 MB; triage reads ~600 msgs/s).
MAX_CPU_SECONDS = 60.0
MAX_PEAK_MIB = 400.0


def replies_settings(mode: str) -> dict[str, str]:
    """The [replies] settings of a corpus run (TOML values), on top of the demo's."""
    return {
        "mode": '"live"',
        "trusted_authserv_ids": '["mx.triage.test"]',
        "unauthenticated": f'"{mode}"',
        "form_senders": f'["{FORM_RELAY}"]',
        "max_per_hour": "500",
        "max_per_domain_per_hour": str(MAX_PER_DOMAIN),
        "dotless_domains": '["gmail.com", "googlemail.com"]',
    }


def with_replies_settings(toml: str, settings: Mapping[str, str]) -> str:
    """`toml` with `settings` in its [replies] table, replacing any value it had there."""
    out: list[str] = []
    section = ""
    for line in toml.splitlines(keepends=True):
        header = re.match(r"^\[([^\]]+)\]\s*$", line)
        if header:
            section = header.group(1).strip()
            out.append(line)
            if section == "replies":
                out += [f"{key} = {value}\n" for key, value in settings.items()]
            continue
        key = line.split("=", 1)[0].strip()
        if section == "replies" and "=" in line and key in settings:
            continue
        out.append(line)
    assert any(line.strip() == "[replies]" for line in out), "the config has a [replies] table"
    return "".join(out)


# --------------------------------------------------------------------------------------------
# The manifest and what each message says


@dataclass(frozen=True)
class Case:
    """One row of the manifest."""

    file: str
    attack: str
    authenticated: bool
    expect: str

    @property
    def path(self) -> Path:
        """The .eml file."""
        return HOSTILE / self.file

    @cached_property
    def raw(self) -> bytes:
        """The message as committed."""
        return self.path.read_bytes()

    @cached_property
    def text(self) -> str:
        """The raw message as UTF-8 text (invalid bytes replaced)."""
        return self.raw.decode("utf-8", "replace")

    @cached_property
    def parsed(self) -> email.message.Message:
        """The header section as the standard library reads it (lenient; the body is left
        alone: the stdlib parser recurses once per multipart level)."""
        parser = email.parser.BytesParser(policy=email.policy.compat32)
        return parser.parsebytes(self.raw, headersonly=True)

    def first_header(self, name: str) -> str:
        """The first `name` field, unfolded, as raw text ("" when absent)."""
        value = self.parsed.get(name)
        return "" if value is None else re.sub(r"\r?\n[ \t]", " ", str(value))

    @cached_property
    def from_address(self) -> str:
        """The address in the first From field: the last angle-addr, comments removed."""
        return angle_address(self.first_header("From"))

    @cached_property
    def reply_to_address(self) -> str:
        """The address in the first Reply-To field (last angle-addr or a bare address)."""
        return angle_address(self.first_header("Reply-To"))

    @cached_property
    def visitor(self) -> str:
        """For a form notification: the visitor's address (Reply-To, else the Email field)."""
        if self.reply_to_address:
            return self.reply_to_address
        # A bare CR ends the field as a line break does (the parser reads it as one).
        found = re.search(r"^Email:[ \t]*(\S+@\S+)[ \t]*(?=\r|$)", self.text, re.MULTILINE)
        return found.group(1) if found else ""

    def allowed_recipients(self, mode: str) -> frozenset[str]:
        """Canonical addresses a reply to this message may go to in `mode` ("none"/"fixed")."""
        if self.expect == "none":
            return frozenset()
        if self.expect == "visitor":
            return frozenset({canonical(self.visitor)} if self.authenticated else ())
        if self.expect == "from" and mode == "none" and not self.authenticated:
            return frozenset()
        allowed = {canonical(self.from_address)}
        reply_to = self.reply_to_address
        if self.authenticated and reply_to and domain_of(reply_to) == domain_of(self.from_address):
            allowed.add(canonical(reply_to))
        return frozenset(allowed)

    def needs_fixed_text(self, mode: str) -> bool:
        """True when a reply must repeat nothing of this message: the sender is unauthenticated
        (only answered in "fixed" mode) or a form visitor (whoever filled in the form)."""
        return self.expect == "visitor" or (mode == "fixed" and not self.authenticated)

    @cached_property
    def stranger_text(self) -> StrangerText:
        """What the sender wrote that a fixed-text reply must not contain."""
        return stranger_text(self)


def load_manifest() -> list[Case]:
    """Every row of manifest.csv, in file order."""
    with MANIFEST.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    cases = []
    for row in rows:
        assert set(row) == {"file", "attack", "authenticated", "expect"}, row
        assert row["authenticated"] in ("yes", "no"), row
        assert row["expect"] in EXPECTATIONS, row
        cases.append(Case(row["file"], row["attack"], row["authenticated"] == "yes", row["expect"]))
    return cases


CASES = load_manifest()
BY_FILE = {case.file: case for case in CASES}


def angle_address(value: str) -> str:
    """`"Bob <b@x>" <a@y> (c@z)` → `a@y`: the last angle-addr with comments removed, else the
    value itself when it is a single bare address; "" otherwise."""
    without_comments = re.sub(r"\([^()]*\)", "", value)
    found = re.findall(r"<([^<>]*)>", without_comments)
    if found:
        return str(found[-1]).strip()
    bare = without_comments.strip()
    return bare if re.fullmatch(r"[^\s<>,;:\"]+@[^\s<>,;:\"]+", bare) else ""


def domain_of(address: str) -> str:
    """The lower-cased domain of an address ("" when it has none)."""
    return address.rpartition("@")[2].strip().strip(">").lower()


def canonical(address: str) -> str:
    """One mailbox, one spelling: lower case, no +detail, no dots for Gmail-like domains."""
    address = address.strip().strip("<>").strip().lower()
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    local = local.split("+", 1)[0]
    if domain in DOTLESS:
        local = local.replace(".", "")
    return f"{local}@{domain}"


# --------------------------------------------------------------------------------------------
# Text a stranger wrote, and the reply's own text

INVISIBLE = re.compile(
    "[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\x00]"
)
WORD = re.compile(r"[^\W\d_]{4,}")
URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()]+", re.IGNORECASE)
FIELD = re.compile(
    r"^(?:Name|Company|Website|Firma|Organi[sz]ation)[ \t]*:[ \t]*(.+)$", re.IGNORECASE | re.M
)


def visible(text: str) -> str:
    """Lower-cased text without invisible characters, as a reader would see it."""
    return INVISIBLE.sub("", text).lower()


def decoded(value: str) -> str:
    """An RFC 2047 header value as text; the raw value when it cannot be decoded."""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return value


@dataclass(frozen=True)
class StrangerText:
    """The subject, names and field values of one inbound message, and the URLs it holds."""

    subject_words: frozenset[str]
    values: tuple[str, ...]
    value_words: frozenset[str]
    urls: tuple[str, ...]


def stranger_text(case: Case) -> StrangerText:
    """Subject words, display names, form/signature field values and URLs of `case`."""
    from triage.parsing import parse

    subject = visible(decoded(case.first_header("Subject")))
    values: list[str] = []
    for name in ("From", "Reply-To", "Sender"):
        for raw in case.parsed.get_all(name) or ():
            display = re.sub(r"<[^<>]*>\s*$", "", re.sub(r"\r?\n[ \t]", " ", str(raw)))
            values.append(decoded(display).strip(' "'))
    values += [m.group(1) for m in FIELD.finditer(case.text)]
    contact = parse(case.raw).contact
    values += [contact.name, contact.company, contact.website]
    cleaned = tuple(dict.fromkeys(v for v in (visible(v).strip() for v in values) if len(v) >= 4))
    urls = {u.rstrip(".,;") for u in URL.findall(visible(case.text) + " " + subject)}
    urls |= {u.rstrip(".,;") for v in cleaned for u in URL.findall(v)}
    return StrangerText(
        subject_words=frozenset(WORD.findall(subject)),
        values=cleaned,
        value_words=frozenset(w for v in cleaned for w in WORD.findall(v)),
        urls=tuple(sorted(urls)),
    )


def template_vocabulary(settings_text: str) -> frozenset[str]:
    """Every word of the reply templates (not the digest's) and of the reply settings: words a
    fixed-text reply may contain whatever the inbound message said."""
    words: set[str] = set()
    for path in (ROOT / "templates").rglob("*"):
        if path.is_file() and "digest" not in path.relative_to(ROOT / "templates").parts:
            words.update(WORD.findall(path.read_text(errors="replace").lower()))
    words.update(WORD.findall(settings_text.lower()))
    return frozenset(words)


@dataclass(frozen=True)
class ReplyText:
    """What a reader of a reply sees: subject, the To display name, every text part."""

    subject: str
    to_name: str
    to_count: int
    bodies: tuple[str, ...]
    html: tuple[str, ...]

    @property
    def all(self) -> str:
        """Subject, To name and bodies as one lower-cased visible text."""
        return visible("\n".join((self.subject, self.to_name, *self.bodies)))


def reply_text(raw: bytes) -> ReplyText:
    """The readable parts of a reply as sent."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    to = msg.get_all("To") or []
    addresses = [a for header in to for a in getattr(header, "addresses", ())]
    bodies: list[str] = []
    html: list[str] = []
    for part in msg.walk():
        if part.get_content_maintype() != "text" or not isinstance(
            part, email.message.EmailMessage
        ):
            continue
        try:
            content = str(part.get_content())
        except (LookupError, ValueError, UnicodeError):
            payload = part.get_payload(decode=True)
            content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        bodies.append(content)
        if part.get_content_subtype() == "html":
            html.append(content)
    return ReplyText(
        subject=str(msg.get("Subject", "")),
        to_name=" ".join(a.display_name for a in addresses),
        to_count=len(addresses),
        bodies=tuple(bodies),
        html=tuple(html),
    )


# --------------------------------------------------------------------------------------------
# Running a process and measuring it


@dataclass(frozen=True)
class Measured:
    """Exit code, output, wall time, CPU time and peak resident memory of one process."""

    returncode: int
    stdout: str
    stderr: str
    wall: float
    cpu: float
    peak_mib: float

    def summary(self, what: str) -> str:
        """One line for the test output."""
        return (
            f"{what}: exit {self.returncode}, {self.wall:.1f} s wall, {self.cpu:.1f} s CPU,"
            f" peak RSS {self.peak_mib:.0f} MiB"
        )


def measured(args: Sequence[str], folder: Path, timeout: float) -> Measured:
    """Run `args` and read its own resource usage from wait4(2) (user + system CPU and
    ru_maxrss of exactly that process, unlike RUSAGE_CHILDREN, which mixes in earlier
    children)."""
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "stdout", folder / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr)
    killer = threading.Timer(timeout, proc.kill)
    started = time.monotonic()
    killer.start()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        returncode=proc.returncode,
        stdout=out.read_text(errors="replace"),
        stderr=err.read_text(errors="replace"),
        wall=time.monotonic() - started,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_mib=usage.ru_maxrss / 1024,
    )


# --------------------------------------------------------------------------------------------
# The corpus itself


def test_manifest_lists_every_file_and_the_files_look_like_real_mail() -> None:
    """manifest.csv names each .eml file exactly once (at least 45); every file is under
    300 KB, carries no marker header naming its case, and does not start like an mbox file."""
    files = sorted(p.name for p in HOSTILE.glob("*.eml"))
    assert [case.file for case in CASES] == files
    assert len(files) >= 45
    for case in CASES:
        assert len(case.raw) < MAX_FILE_BYTES, case.file
        assert not case.raw.startswith(b"From "), case.file
        assert b"x-hostile" not in case.raw.lower(), case.file
    groups = [c for c in CASES if c.expect == "once"]
    assert len({canonical(c.from_address) for c in groups}) < len(groups)


def test_generated_files_are_what_make_corpus_writes() -> None:
    """make_corpus.py is deterministic and its output is committed unchanged."""
    for name, data in build_generated().items():
        assert (HOSTILE / name).read_bytes() == data, f"run tests/hostile/make_corpus.py ({name})"
        assert name in BY_FILE


# --------------------------------------------------------------------------------------------
# 1. classify --json


@pytest.fixture(scope="module")
def classified(tmp_path_factory: pytest.TempPathFactory) -> Measured:
    """`triage classify --json` over the whole corpus in one process, measured."""
    folder = tmp_path_factory.mktemp("classify")
    args = [sys.executable, "-m", "triage", "classify", "--json"]
    return measured([*args, *(str(c.path) for c in CASES)], folder, timeout=600)


@pytest.mark.slow
def test_classify_prints_one_valid_json_line_per_message(classified: Measured) -> None:
    """Exit 0, no traceback, and exactly one JSON object per message, in order, with every
    field; an unreadable message says why and may not be answered."""
    assert classified.returncode == 0, classified.stderr[-3000:]
    assert "Traceback" not in classified.stderr
    lines = classified.stdout.splitlines()
    assert len(lines) == len(CASES)
    for case, line in zip(CASES, lines, strict=True):
        record = json.loads(line)
        assert Path(record["path"]).name == case.file
        assert set(record) == KEYS, case.file
        if record["error"] is not None:
            assert record["label"] is None and record["may_reply"] is False, case.file


@pytest.mark.slow
def test_classify_of_the_whole_corpus_stays_within_cpu_and_memory_bounds(
    classified: Measured,
) -> None:
    """The resource attacks (deep nesting, thousands of parts and headers, a zip bomb) cost
    the whole corpus < 60 s of CPU and < 400 MiB of peak memory in one classify process."""
    print(classified.summary(f"triage classify --json, {len(CASES)} messages"))
    assert classified.cpu < MAX_CPU_SECONDS
    assert classified.peak_mib < MAX_PEAK_MIB


# --------------------------------------------------------------------------------------------
# A harness whose Postfix catches mail to every domain


class CatchAllHarness(MailHarness):
    """The project's harness, except that its Postfix relays for loopback clients and hands
    every address outside example.test to the `catchall` user (Postfix logs `orig_to`)."""

    @property
    def catchall_map(self) -> Path:
        """The regexp table that rewrites foreign addresses."""
        return self.postfix_dir / "catchall.regexp"

    def _postfix_main_cf(self) -> str:
        text = super()._postfix_main_cf()
        before = "smtpd_relay_restrictions = reject_unauth_destination\n"
        assert before in text and "virtual_alias_maps =\n" in text
        text = text.replace(
            before, "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
        )
        # Without the empty virtual_alias_domains, Postfix would derive example.test from the map.
        return text.replace(
            "virtual_alias_maps =\n",
            f"virtual_alias_maps = regexp:{self.catchall_map}\nvirtual_alias_domains =\n",
        )

    def _prepare(self) -> None:
        super()._prepare()
        domain = re.escape(self.config.domain)
        table = f"if !/@{domain}$/\n/@/ {CATCHALL}@{self.config.domain}\nendif\n"
        if not self.catchall_map.exists() or self.catchall_map.read_text() != table:
            self.catchall_map.write_text(table)


@pytest.fixture(scope="module")
def catching_harness() -> Iterator[CatchAllHarness]:
    """Dovecot and a catch-all Postfix for this module; checks that mail to a foreign domain
    really lands in the catch-all mailbox with its original recipient logged."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="triage-hostile-"))
    users = {**DEFAULT_USERS, CATCHALL: f"pw-{CATCHALL}"}
    harness = CatchAllHarness(HarnessConfig(base_dir=base, users=users).with_free_ports())
    harness.start()
    try:
        probe = b"From: probe@example.test\nSubject: probe\n\ncatch-all probe\n"
        harness.send(probe, "probe@example.test", ["someone@third.example"])
        harness.wait_for_messages(CATCHALL, count=1, timeout=20)
        wait_for_empty_queue(harness, 20)
        assert "orig_to=<someone@third.example>" in harness.postfix_log.read_text()
        yield harness
    finally:
        harness.stop()
        shutil.rmtree(base, ignore_errors=True)


def wait_for_empty_queue(harness: MailHarness, timeout: float) -> list[dict[str, object]]:
    """Wait until Postfix has delivered everything; return what is still queued at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        queue = harness.mail_queue()
        if not queue or time.monotonic() > deadline:
            return queue
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Delivery into the watched mailbox


def envelope_sender(case: Case) -> str:
    """MAIL FROM for a message: its From address when that is a plain ASCII address."""
    sender = case.from_address
    if re.fullmatch(r"[A-Za-z0-9._+-]+@[A-Za-z0-9.-]+\.[A-Za-z]+", sender):
        return sender
    return "envelope@hostile-sender.example"


def deliver(harness: MailHarness, cases: Sequence[Case]) -> tuple[dict[int, Case], list[str]]:
    """Hand every message to Dovecot over LMTP (which adds Return-Path and Delivered-To, as
    for real mail); IMAP APPEND with a Return-Path for any LMTP refuses. Returns UID -> case
    and a note per message that needed APPEND."""
    by_uid: dict[int, Case] = {}
    notes: list[str] = []
    cfg = harness.config
    with harness.imap("hello") as client, smtplib.LMTP(cfg.host, cfg.lmtp_port) as lmtp:
        for case in cases:
            uid = int(client.folder_status("INBOX", [b"UIDNEXT"])[b"UIDNEXT"])
            sender = envelope_sender(case)
            try:
                lmtp.sendmail(sender, [HELLO], case.raw)
            except smtplib.SMTPException as exc:
                notes.append(f"{case.file}: LMTP refused ({exc}); delivered with IMAP APPEND")
                client.append("INBOX", f"Return-Path: <{sender}>\r\n".encode() + case.raw)
            by_uid[uid] = case
        client.select_folder("INBOX", readonly=True)
        present = sorted(int(u) for u in client.search("ALL"))
    assert present == sorted(by_uid), "every message is in the mailbox under its own UID"
    return by_uid, notes


# --------------------------------------------------------------------------------------------
# What triage sent: the store, Postfix's log, the mailboxes


@dataclass
class Attempt:
    """One recipient of one reply, as one of the three records saw it."""

    case: Case | None
    recipient: str
    source: str  # "store", "postfix", "postfix-refused", "queue", "mailbox:<user>"
    state: str
    reply_id: str = ""


@dataclass
class Sent:
    """A stored reply and its raw text."""

    case: Case
    reply_id: str
    recipient: str
    state: str
    raw: bytes


@dataclass
class Run:
    """Everything one corpus run produced."""

    mode: str
    once: Measured
    by_uid: dict[int, Case]
    ledger: dict[int, Mapping[str, object]]
    sent: list[Sent]
    attempts: list[Attempt]
    unattributed: list[str]
    notes: list[str] = field(default_factory=list)
    vocabulary: frozenset[str] = frozenset()


LOG_MESSAGE_ID = re.compile(r" ([0-9A-F]{6,}): message-id=<([^>]*)>")
LOG_FROM = re.compile(r" ([0-9A-F]{6,}): from=<([^>]*)>, size=")
LOG_TO = re.compile(
    r" ([0-9A-F]{6,}): to=<([^>]*)>(?:, orig_to=<([^>]*)>)?, relay=.*?, status=(\w+)"
)
LOG_REFUSED = re.compile(r"NOQUEUE: reject: RCPT from [^;]*; from=<([^>]*)> to=<([^>]*)>")


def postfix_attempts(
    log_text: str, queued: Iterable[Mapping[str, object]], by_reply_id: Mapping[str, Case]
) -> tuple[list[Attempt], list[str]]:
    """Every envelope recipient of mail triage handed to Postfix (delivered, bounced, still
    queued or refused at RCPT), attributed to the inbound message through the reply's
    Message-ID."""
    ids: dict[str, str] = {}
    senders: dict[str, str] = {}
    for match in LOG_MESSAGE_ID.finditer(log_text):
        ids[match.group(1)] = f"<{match.group(2)}>"
    for match in LOG_FROM.finditer(log_text):
        senders[match.group(1)] = match.group(2)
    attempts: list[Attempt] = []
    unattributed: list[str] = []
    for match in LOG_TO.finditer(log_text):
        qid, to, orig_to, status = match.groups()
        if not senders.get(qid):
            continue  # a bounce Postfix made itself (null sender)
        reply_id = ids.get(qid, "")
        recipient = orig_to or to
        case = by_reply_id.get(reply_id)
        if case is None:
            unattributed.append(f"Postfix {status} {reply_id or qid} to {recipient}")
        attempts.append(Attempt(case, recipient, "postfix", status, reply_id))
    for match in LOG_REFUSED.finditer(log_text):
        sender, recipient = match.groups()
        if sender:
            unattributed.append(f"Postfix refused RCPT TO:<{recipient}> from <{sender}>")
            attempts.append(Attempt(None, recipient, "postfix-refused", "refused"))
    for item in queued:
        recipients = item.get("recipients")
        for each in recipients if isinstance(recipients, list) else ():
            address = str(each.get("address", "")) if isinstance(each, dict) else ""
            attempts.append(Attempt(None, address, "queue", "queued"))
            unattributed.append(f"still in the Postfix queue: {address}")
    return attempts, unattributed


def mailbox_attempts(
    harness: MailHarness, inbound: set[int], by_reply_id: Mapping[str, Case]
) -> tuple[list[Attempt], list[str]]:
    """Every message in every harness user's INBOX that is not an inbound corpus message."""
    attempts: list[Attempt] = []
    unattributed: list[str] = []
    for user in sorted(harness.config.users):
        with harness.imap(user) as client:
            client.select_folder("INBOX", readonly=True)
            uids = [int(u) for u in client.search("ALL")]
            if user == "hello":
                uids = [u for u in uids if u not in inbound]
            if not uids:
                continue
            fetched = client.fetch(uids, [b"BODY.PEEK[HEADER]"])
        for uid in uids:
            head = email.message_from_bytes(fetched[uid][b"BODY[HEADER]"])
            reply_id = str(head.get("Message-ID", "")).strip()
            case = by_reply_id.get(reply_id)
            if user == CATCHALL:
                continue  # the Postfix log names the original recipient of these
            if case is None:
                unattributed.append(f"{user}'s INBOX holds {reply_id or uid} (not a stored reply)")
            attempts.append(Attempt(case, f"{user}@{DOMAIN}", f"mailbox:{user}", "delivered"))
    return attempts, unattributed


def collect(
    harness: CatchAllHarness, base: Path, by_uid: dict[int, Case], log_offset: int
) -> tuple[dict[int, Mapping[str, object]], list[Sent], list[Attempt], list[str]]:
    """The ledger rows, the stored replies and every recorded recipient of a run."""
    queued = wait_for_empty_queue(harness, 30)
    with db(base) as conn:
        ledger: dict[int, Mapping[str, object]] = {
            int(row["uid"]): dict(row)
            for row in conn.execute(
                "SELECT uid, state, label, decision, may_reply, reasons, error FROM messages"
            )
        }
        rows = conn.execute(
            "SELECT r.reply_message_id, r.recipient, r.state, r.raw, m.uid"
            " FROM replies r JOIN messages m ON m.id = r.message_row ORDER BY r.id"
        ).fetchall()
    sent = [
        Sent(
            case=by_uid[int(r["uid"])],
            reply_id=str(r["reply_message_id"]),
            recipient=str(r["recipient"]),
            state=str(r["state"]),
            raw=bytes(r["raw"]),
        )
        for r in rows
        if int(r["uid"]) in by_uid
    ]
    by_reply_id = {s.reply_id: s.case for s in sent}
    attempts = [Attempt(s.case, s.recipient, "store", s.state, s.reply_id) for s in sent]
    unattributed = [f"stored reply {r['reply_message_id']}" for r in rows if r["uid"] not in by_uid]
    log_text = harness.postfix_log.read_bytes()[log_offset:].decode(errors="replace")
    more, lost = postfix_attempts(log_text, queued, by_reply_id)
    attempts += more
    unattributed += lost
    more, lost = mailbox_attempts(harness, set(by_uid), by_reply_id)
    return ledger, sent, attempts + more, unattributed + lost


def run_corpus(harness: CatchAllHarness, base: Path, mode: str) -> Run:
    """Empty mailboxes and a fresh store; `triage once` on the empty mailbox (baseline); every
    message delivered; `triage once` measured; then everything collected."""
    harness.clear_all_mailboxes()
    config = config_for(harness, base)
    config.write_text(with_replies_settings(config.read_text(), replies_settings(mode)))
    baseline = triage(config, "once")
    assert baseline.returncode == 0, baseline.stdout[-2000:] + baseline.stderr[-2000:]
    log_offset = harness.postfix_log.stat().st_size
    by_uid, notes = deliver(harness, CASES)
    args = [sys.executable, "-m", "triage", "--config", str(config), "once"]
    once = measured(args, base / "once", timeout=280)
    print(once.summary(f"triage once ({mode}), {len(CASES)} messages"))
    ledger, sent, attempts, unattributed = collect(harness, base, by_uid, log_offset)
    run = Run(mode, once, by_uid, ledger, sent, attempts, unattributed, notes)
    run.vocabulary = template_vocabulary(config.read_text())
    print(report(run))
    (base / "report.txt").write_text(report(run))
    return run


def report(run: Run) -> str:
    """One line per message: its fate in the ledger and every recipient any record shows."""
    lines = [f"mode {run.mode}: " + run.once.summary("triage once"), *run.notes]
    recipients: dict[str, set[str]] = defaultdict(set)
    for attempt in run.attempts:
        if attempt.case is not None:
            recipients[attempt.case.file].add(f"{attempt.recipient} [{attempt.source}]")
    for uid, case in sorted(run.by_uid.items()):
        row = run.ledger.get(uid, {})
        reasons = json.loads(str(row.get("reasons") or "[]"))
        lines.append(
            f"{case.file:<46} {case.expect:<7} auth={'y' if case.authenticated else 'n'}"
            f" {row.get('state')!s:<11} {row.get('decision')!s:<9}"
            f" -> {', '.join(sorted(recipients[case.file])) or '-'}"
            + (f"   ({'; '.join(str(r)[:70] for r in reasons[:2])})" if reasons else "")
        )
    lines += [f"unattributed: {u}" for u in run.unattributed]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The checks


def recipient_address(recipient: str) -> str:
    """A recorded recipient as a bare address (the store may keep `Name <addr>`)."""
    return angle_address(recipient) or recipient.strip()


def recipient_problems(run: Run) -> list[str]:
    """Replies to anyone the manifest does not allow, to victims, ours or a relay; then the
    counts."""
    problems = [f"{u} (cannot be tied to an inbound message)" for u in run.unattributed]
    why: dict[tuple[str, str], set[str]] = defaultdict(set)
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for attempt in run.attempts:
        address = recipient_address(attempt.recipient)
        who = canonical(address)
        key = (attempt.case.file if attempt.case else "an unknown message", address)
        if who in VICTIMS or domain_of(who) in VICTIM_DOMAINS:
            why[key].add("a victim")
        elif run.mode == "none" and domain_of(who) in FORGED_DOMAINS:
            why[key].add("a forged sender")
        elif who in (HELLO, canonical(FORM_RELAY)):
            why[key].add("our own address or a relay")
        if attempt.case is not None and who not in attempt.case.allowed_recipients(run.mode):
            allowed = ", ".join(sorted(attempt.case.allowed_recipients(run.mode))) or "nobody"
            why[key].add(f"allowed: {allowed}")
        seen[key].add(f"{attempt.source} {attempt.state}")
    for (name, address), reasons in sorted(why.items()):
        where = ", ".join(sorted(seen[(name, address)]))
        problems.append(f"reply to {address} from {name} ({'; '.join(sorted(reasons))}; {where})")
    return problems + count_problems(run)


def count_problems(run: Run) -> list[str]:
    """More than one reply per mailbox, per reply, or more than the cap per domain."""
    problems = []
    per_recipient: dict[str, set[str]] = defaultdict(set)
    per_domain: dict[str, set[str]] = defaultdict(set)
    per_reply: dict[str, set[str]] = defaultdict(set)
    for attempt in run.attempts:
        if attempt.reply_id:
            who = canonical(recipient_address(attempt.recipient))
            per_recipient[who].add(attempt.reply_id)
            per_reply[attempt.reply_id].add(who)
            if attempt.state == "sent":
                per_domain[domain_of(who)].add(attempt.reply_id)
    for who, ids in sorted(per_recipient.items()):
        if len(ids) > 1:
            problems.append(f"{len(ids)} replies to one mailbox {who}")
    for domain, ids in sorted(per_domain.items()):
        if len(ids) > MAX_PER_DOMAIN:
            problems.append(f"{len(ids)} replies sent to {domain} (cap {MAX_PER_DOMAIN}/hour)")
    for reply_id, recipients in sorted(per_reply.items()):
        if len(recipients) > 1:
            problems.append(f"reply {reply_id} went to several recipients: {sorted(recipients)}")
    return problems


def expected_reply_problems(run: Run) -> list[str]:
    """The honest inquiries are answered: each `reply` case once, each `once` group once."""
    problems = []
    replies: dict[str, set[str]] = defaultdict(set)
    for item in run.sent:
        replies[item.case.file].add(item.reply_id)
    for case in CASES:
        if case.expect == "reply" and len(replies[case.file]) != 1:
            problems.append(f"{case.file}: {len(replies[case.file])} replies, expected 1")
    groups: dict[str, set[str]] = defaultdict(set)
    for case in CASES:
        if case.expect == "once":
            groups[canonical(case.from_address)] |= replies[case.file]
    for sender, ids in sorted(groups.items()):
        if len(ids) != 1:
            problems.append(f"the messages of {sender}: {len(ids)} replies, expected exactly 1")
    return problems


def content_problems(run: Run) -> list[str]:
    """Nothing injected, nothing executed; fixed text where the sender is not trusted."""
    problems = []
    for item in run.sent:
        name = f"reply to {item.case.file} ({item.recipient})"
        problems += [f"{name}: {p}" for p in header_problems(item.raw)]
        text = reply_text(item.raw)
        for html in text.html:
            for bad in ("<script", "javascript:", "onerror="):
                if bad in html.lower():
                    problems.append(f"{name}: HTML part contains {bad!r}")
        if "7*7" in item.case.text and re.search(r"\b49\b", text.all):
            problems.append(f"{name}: a template expression of the message was evaluated (49)")
        if "root:x:0:0" in text.all:
            problems.append(f"{name}: a file was included")
        if item.case.needs_fixed_text(run.mode):
            problems += [f"{name}: {p}" for p in fixed_text_problems(item, text, run.vocabulary)]
    return problems


def header_problems(raw: bytes) -> list[str]:
    """A reply's header section: one To, no Cc/Bcc, no name twice, no CR, NUL or 8-bit byte."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    problems = []
    if b"\x00" in head or re.search(rb"\r(?!\n)", head):
        problems.append("NUL or bare CR in the header section")
    if re.search(rb"[\x80-\xff]", head):
        problems.append("8-bit byte in the header section")
    names = [
        line.split(b":", 1)[0].strip().lower().decode("latin-1")
        for line in re.split(rb"\r?\n", head)
        if line and line[:1] not in (b" ", b"\t")
    ]
    for name in ("bcc", "cc", "x-injected"):
        if name in names:
            problems.append(f"has a {name} header")
    repeated = sorted({n for n in names if names.count(n) > 1 and n != "received"})
    if repeated:
        problems.append(f"header fields more than once: {repeated}")
    if reply_text(raw).to_count != 1:
        problems.append(f"To holds {reply_text(raw).to_count} addresses")
    return problems


def fixed_text_problems(item: Sent, text: ReplyText, vocabulary: frozenset[str]) -> list[str]:
    """A fixed-text reply: no display name in To, no URL, no subject word or name/company
    value of the inbound message (words of the templates and settings excepted)."""
    problems = []
    seen = text.all
    words = set(WORD.findall(seen))
    stranger = item.case.stranger_text
    if text.to_name.strip():
        problems.append(f"To has a display name {text.to_name[:60]!r}")
    any_url = URL.search(seen)
    if any_url is not None:
        problems.append(f"contains a URL {any_url.group(0)[:60]!r}")
    for url in stranger.urls:
        host = re.sub(r"^(?:https?://)?(?:www\.)?", "", url.lower()).split("/", 1)[0]
        if url.lower() in seen or (len(host) > 4 and host in seen):
            problems.append(f"repeats the URL {url[:60]!r}")
    reflected = sorted((stranger.subject_words - vocabulary) & words)
    if reflected:
        problems.append(f"repeats words of the subject: {reflected[:8]}")
    own = set(WORD.findall(item.recipient.lower()))
    for value in stranger.values:
        if value in seen and any(w not in vocabulary for w in WORD.findall(value)):
            problems.append(f"repeats {value[:60]!r}")
    reflected = sorted((stranger.value_words - vocabulary - own) & words)
    if reflected:
        problems.append(f"repeats words of names/company fields: {reflected[:8]}")
    return problems


def ledger_problems(run: Run) -> list[str]:
    """`triage once` exits 0 without a traceback, and every message ends done or quarantined."""
    problems = []
    if run.once.returncode != 0:
        problems.append(f"triage once exited {run.once.returncode}: {run.once.stderr[-1500:]}")
    output = run.once.stdout + run.once.stderr
    if "Traceback" in output:
        start = output.index("Traceback")
        problems.append(f"traceback in the output of triage once: {output[start : start + 1500]}")
    for uid, case in sorted(run.by_uid.items()):
        row = run.ledger.get(uid)
        if row is None:
            problems.append(f"{case.file}: not in the ledger (lost)")
        elif row["state"] not in ("done", "quarantined"):
            problems.append(f"{case.file}: ended in state {row['state']}")
    return problems


def check(run: Run) -> None:
    """Every check; one failure listing every problem, so a run shows all of them at once."""
    problems = ledger_problems(run)
    problems += recipient_problems(run)
    problems += expected_reply_problems(run)
    problems += content_problems(run)
    if run.once.cpu >= MAX_CPU_SECONDS or run.once.peak_mib >= MAX_PEAK_MIB:
        problems.append(run.once.summary("over the CPU or memory bound: triage once"))
    print(f"{len(problems)} problems", *problems, sep="\n  ")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------
# 2 and 3. The whole corpus through the mailbox


@pytest.mark.mail
@pytest.mark.slow
def test_without_authentication_nothing_is_answered(
    catching_harness: CatchAllHarness, tmp_path: Path
) -> None:
    """`unauthenticated = "none"`: every reply goes to the From address of a message our server
    authenticated (or its same-domain Reply-To, or an authenticated form relay's visitor, with
    fixed text); nothing reaches bob, carol, third.example or a forged victim.example sender; one
    reply per mailbox; no more than the per-domain cap; the honest inquiries are answered once;
    `triage once` exits 0 without a traceback and every message ends done or quarantined."""
    check(run_corpus(catching_harness, tmp_path / "triage", "none"))


@pytest.mark.mail
@pytest.mark.slow
def test_unauthenticated_senders_get_fixed_text_at_their_from_address(
    catching_harness: CatchAllHarness, tmp_path: Path
) -> None:
    """`unauthenticated = "fixed"`: a reply goes only to the message's own From address (or an
    authenticated same-domain Reply-To, or an authenticated relay's visitor); for an
    unauthenticated sender or a form visitor its Subject, To display name and body repeat no
    subject word, URL, name or company of the inbound message; plus every check of the "none"
    run (victims, one per mailbox, domain cap, ledger, exit status)."""
    check(run_corpus(catching_harness, tmp_path / "triage", "fixed"))
