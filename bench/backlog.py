"""Backlog throughput: `triage run` working through N new messages, next to a bare IMAP fetch.

The messages are real mail: SpamAssassin ham, hard ham and spam from `../shared/corpora/other`
plus the project's own inquiries (`classifiers/corpus/batch_a`–`batch_e`), shuffled with a fixed
seed and cycled to N, each with a fresh Message-ID, addressed `To: hello@example.test` and given the
`Return-Path` that delivery over SMTP would have added, so the etiquette rules judge them as they
would real inbound mail. Without ../shared only the project corpus is used.

The run, on a private harness:
1. `triage run` starts on the empty INBOX (its first start records the baseline) and settles;
   its memory is read.
2. The N messages are seeded into a staging folder with MULTIAPPEND (100 per command), then moved
   into INBOX with one `UID MOVE 1:*`: they land at once, as a backlog of new mail, while triage
   is idle in IDLE.
3. The clock runs from the first message triage records (`seen`) to the last one it finishes
   (`done`), from the store's own timestamps; the wall time from the MOVE (which adds Dovecot's
   fixed ~0.5 s IDLE notification delay) is reported alongside. Replies are in dry-run mode.
4. After triage settles its memory is read again, and a bare imapclient `UID FETCH BODY.PEEK[]`
   of the same messages in batches (same IMAPS connection settings) gives the ceiling.

    python -m bench.backlog --size 10000 --workers 1
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path

from imapclient import IMAPClient

from bench.memory import MemoryResult, PeakSampler, cpu_seconds, descendants, snapshot
from bench.startup import REPO, Setup, TriageProcess, ensure_model, make_setup, private_harness
from devtools.mailharness import MailHarness
from triage.ingest.sources import iter_sources

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
SHARED_SOURCES = tuple(
    CORPORA / "other" / name
    for name in ("spamassassin_easy_ham", "spamassassin_hard_ham", "spamassassin_spam")
)
PROJECT_CORPUS = REPO / "classifiers" / "corpus"
# The project's messages in the mix: the first five batches (840 messages), as in every run since
# the benchmark began. The corpus grows; a mix that grew with it would change the share of
# inquiries, and so the number of replies composed, and no two runs would compare.
PROJECT_BATCHES = ("batch_a", "batch_b", "batch_c", "batch_d", "batch_e")
STAGING = "BenchStaging"
APPEND_CHUNK = 100  # MULTIAPPEND messages per command (MAILSERVERS.md: ~17x faster than one)
FETCH_BATCH = 200  # UIDs per bare FETCH, inside the 100-500 a real client would use
SEED = 20240601
DONE_TIMEOUT = 600.0
# How often the store is asked whether the backlog is done. The throughput comes from the store's
# own timestamps, so this bounds only the wall figure's precision; polling every 20 ms took ~10 %
# of a core from the two that triage and Dovecot share.
POLL_S = 0.1
# How long triage must stay idle before "steady" memory is read: longer than one poll pass.
SETTLE_S = 6.0

# Header fields replaced in every message; folded continuation lines go with them.
_REPLACED = re.compile(rb"^(message-id|to)[ \t]*:", re.IGNORECASE)


def source_messages() -> list[bytes]:
    """Every raw message of the benchmark's sources, in a stable order."""
    out: list[bytes] = []
    shared = [path for path in SHARED_SOURCES if path.exists()]
    for item in iter_sources(shared):
        if item.raw:
            out.append(item.raw)
    for batch in PROJECT_BATCHES:
        out.extend(path.read_bytes() for path in sorted((PROJECT_CORPUS / batch).glob("*.eml")))
    return out


def readdress(raw: bytes, message_id: str, to: str) -> bytes:
    """`raw` with CRLF line ends, no mbox `From ` line, and new Message-ID and To fields."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if text.startswith(b"From "):
        text = text.partition(b"\n")[2]
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        head, body = text, b""
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = bool(_REPLACED.match(line))
        if not dropping and line:
            kept.append(line)
    fresh = [f"Message-ID: {message_id}".encode(), f"To: {to}".encode()]
    if not any(line.lower().startswith(b"return-path:") for line in kept):
        # Delivered over SMTP, the message would carry the envelope sender (Dovecot's LMTP adds
        # it; an APPEND does not), and the etiquette rules refuse to answer mail without one.
        sender = _from_address(kept)
        if sender:
            fresh.append(f"Return-Path: <{sender}>".encode())
    return b"\r\n".join([*fresh, *kept]) + b"\r\n\r\n" + body.replace(b"\n", b"\r\n")


def _from_address(lines: Sequence[bytes]) -> str:
    """The addr-spec of the From field among header `lines` (folded lines included), or ""."""
    value: list[str] = []
    for line in lines:
        if value and line[:1] in (b" ", b"\t"):
            value.append(line.decode("latin-1"))
        elif value:
            break
        elif line.lower().startswith(b"from:"):
            value.append(line.decode("latin-1")[5:])
    address = parseaddr(" ".join(value))[1]
    return address if "@" in address and address.isascii() else ""


def backlog_messages(size: int, to: str, tag: str) -> list[bytes]:
    """`size` messages: the sources shuffled with a fixed seed, cycled, each readdressed."""
    sources = source_messages()
    if not sources:
        raise RuntimeError(f"no messages under {PROJECT_CORPUS}")
    random.Random(SEED).shuffle(sources)
    return [
        readdress(sources[i % len(sources)], f"<bench-{tag}-{i}@bench.example.test>", to)
        for i in range(size)
    ]


def seed(harness: MailHarness, user: str, messages: Sequence[bytes], folder: str) -> float:
    """MULTIAPPEND `messages` into `folder` of `user` (created if needed); returns seconds."""
    started = time.perf_counter()
    with harness.imap(user, timeout=120) as client:
        if not client.folder_exists(folder):
            client.create_folder(folder)
        for start in range(0, len(messages), APPEND_CHUNK):
            client.multiappend(folder, messages[start : start + APPEND_CHUNK])
    return time.perf_counter() - started


def move_all(harness: MailHarness, user: str, source: str, target: str) -> None:
    """Move every message of `source` into `target` with one UID MOVE."""
    with harness.imap(user, timeout=120) as client:
        client.select_folder(source)
        # A UID set rather than a list: 10,000 UIDs would overflow the server's line limit.
        client.move("1:*", target)


@dataclass(frozen=True)
class FetchResult:
    """A bare batched fetch of a folder."""

    messages: int
    seconds: float
    megabytes: float

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds if self.seconds else 0.0


def bare_fetch(harness: MailHarness, user: str, folder: str = "INBOX") -> FetchResult:
    """`UID FETCH BODY.PEEK[]` of every message, FETCH_BATCH UIDs per command, over IMAPS.

    IMAPS like triage's config, so the ceiling includes the same TLS cost; login and SELECT are
    outside the clock, as triage's are.
    """
    client = IMAPClient(
        harness.config.host,
        port=harness.config.imaps_port,
        ssl=True,
        ssl_context=harness.ssl_context(),
        timeout=120,
    )
    try:
        client.login(user, harness.password(user))
        client.select_folder(folder, readonly=True)
        started = time.perf_counter()
        uids = client.search("ALL")
        total = 0
        count = 0
        for start in range(0, len(uids), FETCH_BATCH):
            data = client.fetch(uids[start : start + FETCH_BATCH], [b"BODY.PEEK[]"])
            for value in data.values():
                total += len(value[b"BODY[]"])
                count += 1
        seconds = time.perf_counter() - started
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    return FetchResult(count, seconds, total / 1e6)


@dataclass(frozen=True)
class TriageResult:
    """triage working through the backlog."""

    messages: int
    seconds: float  # first `seen` to last `done`, from the store's timestamps
    wall_seconds: float  # from the MOVE to the last `done` seen by polling
    decisions: dict[str, int]
    replies: int  # dry-run replies composed and stored
    main_cpu_ms: float  # CPU per message of the main process (all its threads)
    worker_cpu_ms: float  # CPU per message of the worker processes together

    @property
    def rate(self) -> float:
        """Messages per second over the store-measured span."""
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def wall_rate(self) -> float:
        """Messages per second including the IDLE wake-up."""
        return self.messages / self.wall_seconds if self.wall_seconds else 0.0


@dataclass(frozen=True)
class BacklogResult:
    """Everything the backlog run measured."""

    workers: int
    size: int
    seed_seconds: float
    triage: TriageResult
    bare: FetchResult
    memory: MemoryResult

    @property
    def ratio(self) -> float:
        """triage's rate over the bare fetch's rate."""
        return self.triage.rate / self.bare.rate if self.bare.rate else 0.0


def _store(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    return conn


def _finished(store: Path) -> int:
    with contextlib.closing(_store(store)) as conn:
        row = conn.execute("SELECT COUNT(*) FROM messages WHERE state IN ('done', 'quarantined')")
        return int(row.fetchone()[0])


def _span(store: Path) -> tuple[float, dict[str, int], int]:
    """Seconds from the first `seen` row to the last finished one, the decision counts, and
    how many (dry-run) replies were composed."""
    with contextlib.closing(_store(store)) as conn:
        first, last = conn.execute(
            "SELECT MIN(created_at), MAX(updated_at) FROM messages"
        ).fetchone()
        decisions = dict(
            conn.execute("SELECT COALESCE(decision, state), COUNT(*) FROM messages GROUP BY 1")
        )
        replies = int(conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0])
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return span, {str(k): int(v) for k, v in decisions.items()}, replies


def wait_done(
    store: Path, count: int, sampler: PeakSampler | None = None, timeout: float = DONE_TIMEOUT
) -> float:
    """Poll the store until `count` messages are finished; returns the perf_counter then."""
    deadline = time.perf_counter() + timeout
    while True:
        if _finished(store) >= count:
            return time.perf_counter()
        if sampler is not None:
            sampler.sample()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"triage finished {_finished(store)} of {count} in {timeout:g} s")
        time.sleep(POLL_S)


def _cpu(pid: int) -> dict[int, float]:
    return {p: cpu_seconds(p) for p in [pid, *descendants(pid)]}


def run(
    harness: MailHarness,
    work: Path,
    model: Path,
    size: int,
    workers: int = 0,
    settle: float = SETTLE_S,
) -> BacklogResult:
    """The whole backlog measurement on `harness` with `ingest.workers = workers`."""
    harness.clear_mailbox("hello")
    hello = harness.address("hello")
    messages = backlog_messages(size, hello, datetime.now(UTC).strftime("%H%M%S%f"))
    extra = f"\n[ingest]\nworkers = {workers}\n"
    setup: Setup = make_setup(harness, work / f"backlog-{workers}", model, "dry-run", extra)
    with TriageProcess(setup) as proc:
        proc.start()
        time.sleep(settle)
        before = snapshot(proc.pid)
        seed_seconds = seed(harness, "hello", messages, STAGING)
        cpu_before = _cpu(proc.pid)
        moved = time.perf_counter()
        sampler = PeakSampler(proc.pid)
        move_all(harness, "hello", STAGING, "INBOX")
        finished = wait_done(setup.store, size, sampler)
        cpu_after = _cpu(proc.pid)
        span, decisions, replies = _span(setup.store)
        time.sleep(settle)
        after = snapshot(proc.pid)
        # The ceiling, in the same run on the same messages; the median of three passes.
        bare = sorted((bare_fetch(harness, "hello") for _ in range(3)), key=lambda f: f.rate)[1]
        main_pid = proc.pid
    used = {p: cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after}
    main_ms = used.pop(main_pid) / size * 1000
    workers_ms = sum(used.values()) / size * 1000
    triage = TriageResult(size, span, finished - moved, decisions, replies, main_ms, workers_ms)
    memory = MemoryResult(before, after, sampler.peak_pss)
    return BacklogResult(workers, size, seed_seconds, triage, bare, memory)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the backlog measurement alone and print its figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.backlog", description=__doc__)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=0, help="ingest.workers for triage")
    args = parser.parse_args(argv)
    with _workdir() as work:
        model = ensure_model(work)
        with private_harness(work / "mail", {}) as harness:
            r = run(harness, work, model, args.size, args.workers)
    print(
        f"seeded {r.size} in {r.seed_seconds:.1f} s; triage {r.triage.rate:.0f} msgs/s "
        f"({r.triage.seconds:.2f} s; wall {r.triage.wall_rate:.0f} msgs/s), bare fetch "
        f"{r.bare.rate:.0f} msgs/s ({r.bare.megabytes:.1f} MB), ratio {r.ratio:.2f}; CPU "
        f"{r.triage.main_cpu_ms:.2f} ms/msg main + {r.triage.worker_cpu_ms:.2f} workers"
    )
    m = r.memory
    print(
        f"memory ({'PSS' if m.by_pss else 'RSS'}): before {m.steady_mib[0]:.0f} MiB, after "
        f"{m.steady_mib[1]:.0f} MiB, "
        f"peak {m.peak_mib:.0f} MiB, growth {m.growth:+.1%}; decisions {r.triage.decisions}, "
        f"{r.triage.replies} replies"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
